"""The coarse-graining stage: ``biojax coarse-grain CONFIG.toml [--out DIR] [--resume]
[--set KEY=VALUE]``.

From mapped fine-grained frames (or frames mapped here) to a CG model, CG MD and a
comparison with the reference. ``method``:

- ``prior-only``: the prior fitted by Boltzmann inversion, nothing learned;
- ``force-matching``: prior + ``[model]`` trained on mapped − prior forces through
  ``biojax.train`` (forces-only loss, held-out validation and test frames);
- ``relative-entropy``: starts from ``init_model`` (e.g. a force-matched model) or from
  force matching, then minimises the relative entropy to the mapped frames by reweighting
  CG MD (``[reweighting]``, ``biojax.cg.trainer``);
- ``difftre``: trains through CG MD to match target observables (``[reweighting]``).

Run directory: ``data/`` (the residual-force datasets), ``prior.json``, ``train/`` (force
matching), ``reweight/``, ``model/`` (the CG model: ``biojax.cg.potential``),
``simulate/`` (CG MD, if ``[simulate]`` asks for steps), ``evaluation.json`` and plots,
``summary.json``. Every part is checkpointed by the stage that writes it; ``--resume``
continues a killed run and keeps what was finished.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

import numpy as np

from biojax.cg.config import CoarseGrainConfig as Config
from biojax.core.config import add_override_option, cli_overrides
from biojax.core.registry import stages

NAME = "coarse-grain"


def load_config(path: str | os.PathLike, overrides=()) -> Config:
    """The coarse-grain config in ``path`` with ``"section.key=value"`` overrides."""
    from biojax.cg.config import load_cg_config

    return load_cg_config(path, overrides)


def _print(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def _json_default(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x).__name__)


def _write_json(path: str, data: dict) -> None:
    from biojax.core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default))


def run(config: Config, workdir: str | os.PathLike, *, resume: bool = False,
        log: Callable[[str], None] | None = None, progress: bool = False) -> dict:
    """Coarse-grain as ``config`` says into ``workdir`` (see module); returns the summary
    (also ``workdir/summary.json``)."""
    from biojax.cg import forcematch
    from biojax.cg.potential import CGPotential, load_cg_potential, save_cg_potential
    from biojax.core.rundir import RunLock, check_output_dir
    from biojax.core.units import KB

    log = log or _print
    out = os.fspath(workdir)
    check_output_dir(out, "coarse-grain output directory")
    os.makedirs(out, exist_ok=True)
    model_dir = os.path.join(out, "model")
    if not resume and os.path.exists(os.path.join(out, "summary.json")):
        from biojax.core.errors import SimulationError

        raise SimulationError(f"{out} already holds a coarse-grained run (summary.json); "
                              "use --resume to continue it or choose another --out")
    times: dict[str, float] = {}
    with RunLock(out, "coarse-grain"):
        t = time.perf_counter()
        kT = KB * config.temperature_K
        data = forcematch.load_bead_data(config)
        F, B = data.positions.shape[:2]
        log(f"coarse-grain: {F} frames of {B} beads from {data.source}")
        train_idx, valid_idx, test_idx = forcematch.split(F, config)
        prior = forcematch.prior_from_config(config, data.positions[train_idx], kT)
        _write_json(os.path.join(out, "prior.json"), prior.to_dict())
        log(f"prior: {len(prior.bonds)} bonds, {len(prior.angles)} angles, "
            f"{len(prior.dihedrals)} dihedrals, {len(prior.repulsive_pairs)} repulsive pairs "
            f"(Boltzmann inversion at {config.temperature_K:g} K)")
        times["prior_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if config.init_model:
            cg = load_cg_potential(config.init_model)
            log(f"starting from the CG model in {config.init_model}")
        elif config.method == "prior-only" or (config.method == "difftre"):
            cg = CGPotential(_zero_or_model(config, data.mapping), prior, data.mapping,
                             config.temperature_K)
        else:
            cg = _force_match(config, data, prior, (train_idx, valid_idx, test_idx), out,
                              resume, log, progress)
        times["force_matching_s"] = time.perf_counter() - t
        summary: dict = {"method": config.method, "frames": F, "beads": B,
                         "temperature_K": config.temperature_K}
        if data.forces is not None and len(test_idx):
            summary["held_out_forces"] = _force_errors(cg, data, test_idx)
            summary["held_out_forces_prior_only"] = _force_errors(
                cg, data, test_idx, with_learned=False)
            e = summary["held_out_forces"]
            log(f"held-out forces ({len(test_idx)} frames): RMSE {e['rmse_eV_A']:.4f} eV/Å "
                f"(prior alone {summary['held_out_forces_prior_only']['rmse_eV_A']:.4f})")

        if config.method in ("relative-entropy", "difftre"):
            t = time.perf_counter()
            cg, metrics = _reweight(config, cg, data, train_idx, out, resume, log, progress)
            summary["reweighting"] = metrics
            times["reweighting_s"] = time.perf_counter() - t
        save_cg_potential(cg.replace(info={"method": config.method}), model_dir)
        log(f"CG model written to {model_dir}")

        if config.simulate is not None and config.simulate.steps > 0:
            t = time.perf_counter()
            samples, sim_summary = _simulate(config, cg, data, out, resume, progress)
            summary["simulation"] = {k: sim_summary[k] for k in (
                "steps_run", "replicas", "wall_s", "steps_per_s", "ns_per_day",
                "aggregate_ns_per_day") if k in sim_summary}
            times["simulation_s"] = time.perf_counter() - t
            summary["evaluation"] = _evaluate(config, data, samples, out, log)
        summary["wall_s"] = times
        _write_json(os.path.join(out, "summary.json"), summary)
    return summary


def _zero_or_model(config: Config, mapping):
    """The learned part before any training: the zero model for prior-only, else
    ``[model]`` freshly initialised on the beads' species."""
    from biojax.nn.models import init_potential

    elements = sorted(set(mapping.bead_numbers))
    arch = {"name": "zero"} if config.method == "prior-only" else config.architecture
    return init_potential(arch, elements, config.cutoff,
                          key=__import__("jax").random.PRNGKey(config.training.seed))


def _force_match(config: Config, data, prior, splits, out, resume, log, progress):
    """Train ``[model]`` on the residual forces; returns the CGPotential."""
    import dataclasses

    from biojax.cg import forcematch
    from biojax.cg.potential import CGPotential, bead_forces_fn
    from biojax.data.io import write_extxyz
    from biojax.nn.io import load_potential
    from biojax.train.config import DataConfig, TrainConfig
    from biojax.train.loop import train_and_evaluate

    if data.forces is None:
        from biojax.core.errors import DataError

        raise DataError(f"{data.source}: force matching needs forces ([data] forces)")
    probe = CGPotential(_zero_or_model(dataclasses.replace(config, method="prior-only"),
                                       data.mapping), prior)
    prior_forces = bead_forces_fn(probe, data.mapping.bead_numbers, with_learned=False)
    folder = os.path.join(out, "data")
    os.makedirs(folder, exist_ok=True)
    files = {}
    for name, idx in zip(("train", "valid", "test"), splits):
        path = os.path.join(folder, f"{name}.extxyz")
        files[name] = path
        if len(idx) and not (resume and os.path.isfile(path)):
            x = data.positions[idx]
            write_extxyz(forcematch.residual_structures(
                x, data.forces[idx], data.mapping, prior_forces(x)), path)
    if config.training.loss or config.training.energy_weight:
        log("force matching: a forces-only loss is used ([training] energy and custom loss "
            "terms are ignored)")
    training = dataclasses.replace(config.training, energy_weight=0.0, loss=(),
                                   stress_weight=0.0)
    train_cfg = TrainConfig(
        data=DataConfig(train_file=files["train"], valid_file=files["valid"],
                        test_file=files["test"] if len(splits[2]) else "",
                        seed=config.data.seed),
        model=dict(config.model), training=training)
    workdir = os.path.join(out, "train")
    train_and_evaluate(train_cfg, workdir, resume=resume and os.path.isdir(workdir),
                       log=log, progress=progress)
    learned = load_potential(os.path.join(workdir, "model"))
    return CGPotential(learned, prior, data.mapping, config.temperature_K)


def _force_errors(cg, data, idx, with_learned=True) -> dict:
    """Force errors (eV/Å and kcal/mol/Å) of ``cg`` on frames ``idx`` (mapped forces)."""
    from biojax.cg.forcematch import _FORCE_UNITS
    from biojax.cg.potential import bead_forces_fn

    pred = bead_forces_fn(cg, data.mapping.bead_numbers, with_learned)(data.positions[idx])
    d = pred - data.forces[idx]
    rmse, mae = float(np.sqrt(np.mean(d ** 2))), float(np.mean(np.abs(d)))
    kcal = _FORCE_UNITS["kcal/mol/A"]
    return {"rmse_eV_A": rmse, "mae_eV_A": mae, "rmse_kcal_mol_A": rmse / kcal,
            "mae_kcal_mol_A": mae / kcal,
            "loss_mean_sq_eV2_A2": float(np.mean(d ** 2)), "frames": int(len(idx))}


def _reweight(config, cg, data, train_idx, out, resume, log, progress):
    """Relative entropy or DiffTRe through ``biojax.cg.trainer``; returns the trained
    CGPotential and a summary of the updates."""
    import dataclasses

    from biojax.cg.config import reweight_config
    from biojax.cg.trainer import train_by_reweighting

    rw = dataclasses.replace(reweight_config(config), method=config.method,
                             temperature_K=config.temperature_K)
    starts = _start_atoms(config, data, rw.replicas)
    reference = data.positions[train_idx] if config.method == "relative-entropy" else None
    result = train_by_reweighting(cg, starts, rw, os.path.join(out, "reweight"),
                                  resume=resume, progress=progress, log=log,
                                  reference_frames=reference)
    rows = result["metrics"]
    summary = {"updates": len(rows), "completed": result["completed"],
               "wall_s": result["wall_s"], "first": rows[0] if rows else None,
               "last": rows[-1] if rows else None}
    return result["model"], summary


def _start_atoms(config: Config, data, n: int, seed_offset: int = 0):
    """``n`` bead Atoms started from reference frames picked at random (seeded)."""
    from biojax.cg.mapping import to_atoms

    rng = np.random.default_rng(config.data.seed + seed_offset)
    picks = rng.choice(len(data.positions), size=n, replace=n > len(data.positions))
    return [to_atoms(data.mapping, data.positions[k], data.cell, data.cell is not None)
            for k in picks]


def _simulate(config: Config, cg, data, out, resume, progress):
    """CG MD from reference frames; returns per-replica bead frames and the summary."""
    import ase.io

    from biojax.md import output

    sim_cfg = config.simulate
    folder = os.path.join(out, "simulate")
    starts = _start_atoms(config, data, sim_cfg.replicas, seed_offset=1)
    sim = cg.simulation(starts, sim_cfg, progress=progress)
    has_ckpt = os.path.isfile(os.path.join(folder, "checkpoint.npz"))
    summary = sim.run(folder, resume=resume and has_ckpt,
                      overwrite=resume and not has_ckpt)
    R = sim_cfg.replicas
    samples = []
    for r in range(R):
        path = os.path.join(output.replica_dir(folder, r, R),
                            f"trajectory.{sim_cfg.trajectory_format}")
        frames = ase.io.read(path, ":")
        samples.append(np.stack([a.positions for a in frames[1:]]))  # drop the start
    return samples, summary


def _evaluate(config: Config, data, samples, out, log) -> dict:
    """Compare CG samples with the reference; write evaluation.json and the plots."""
    from biojax.cg import evaluate

    ev = config.evaluate
    metrics = evaluate.compare(data.positions, samples, ev.dihedrals, ev.bins,
                               ev.basins == "ramachandran", ev.structure_metrics,
                               config.temperature_K, ev.n_blocks)
    plots = []
    hist = metrics.pop("histograms", None)
    if hist is not None:
        names = tuple(ev.names) if len(ev.names) >= 2 else ("φ", "ψ")
        plots.append(evaluate.plot_fes_side_by_side(
            {"reference": hist["reference"], f"CG ({config.method})": hist["model"]},
            os.path.join(out, "fes_comparison.png"), names, config.temperature_K))
        np.savez(os.path.join(out, "histograms.npz"), **hist)
        log(f"φ/ψ on a {ev.bins}×{ev.bins} grid: JS divergence {metrics['js_divergence']:.4f} "
            f"(reference split-half {metrics['reference_split_half_js']:.4f}), free-energy "
            f"RMSE {metrics['fes_rmse_kT']:.2f} kT")
        for name, b in metrics.get("basins", {}).items():
            log(f"  {name:9s} reference {b['reference']:.3f} ± {b['reference_error']:.3f}   "
                f"CG {b['model']:.3f} ± {b['model_error']:.3f}")
    values = metrics.pop("structure_values", None)
    if values is not None:
        plots.append(evaluate.plot_distributions(values, os.path.join(out,
                                                                      "rmsd_rg.png")))
        for key in ("rmsd", "rg"):
            m = metrics[key]
            log(f"{key}: reference {m['reference_mean_A']:.2f} ± {m['reference_std_A']:.2f} Å, "
                f"CG {m['model_mean_A']:.2f} ± {m['model_std_A']:.2f} Å, JS "
                f"{m['js_divergence']:.3f}")
    metrics["plots"] = [os.path.basename(p) for p in plots]
    _write_json(os.path.join(out, "evaluation.json"), metrics)
    return metrics


def _coarse_grain(args) -> int:
    config = load_config(args.config, cli_overrides(args))
    if config.training.precision == "float64":
        from biojax.core.precision import enable_x64

        enable_x64()
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    from biojax.data.io import os_errors

    with os_errors("coarse-grain"):
        run(config, out, resume=args.resume, progress=not args.quiet)
    print(f"summary: {os.path.join(out, 'summary.json')}")
    return 0


def register(subparsers) -> None:
    """Add the ``coarse-grain`` subcommand to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "coarse-grain", help="learn a coarse-grained model from fine-grained data",
        description="Fit a CG prior, learn a CG model (force matching, relative entropy or "
                    "DiffTRe), run CG MD and compare it with the reference; writes DIR/model/, "
                    "DIR/summary.json, evaluation.json and plots.")
    p.add_argument("config", help="coarse-grain config (TOML; see examples/cg_ala2/)")
    add_override_option(p, "method=prior-only")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_coarse_grain)


stages.register(NAME, sys.modules[__name__])
