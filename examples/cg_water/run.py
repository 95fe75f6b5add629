"""CG water by DiffTRe: train a spline pair potential on the experimental O-O RDF.

    python examples/cg_water/run.py [--config cg_water.toml] [--out DIR] [--resume]

Steps: (1) read the 901-site water box and the targets; (2) train the spline-pair model
(fixed ε(σ/r)^12 prior) with ``biojax.cg.trainer.train_by_reweighting``; (3) validate
the initial and the trained model by plain (unreweighted) NVT runs: RDF RMSE over
0.2-1.0 nm, ADF RMSE, virial pressure; (4) write ``results.json`` and plots
(``training.png``, ``rdf.png``, ``adf.png``, ``potential.png``) into the output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import ase.io
import numpy as np

from biojax.core.atomic import atomic_path, atomic_write_text
from biojax.core.config import from_dict, load_toml, resolve_path
from biojax.core.units import KB, KJ_PER_MOL
from biojax.cg import observables as obs
from biojax.cg.sampler import Sampler, make_energy
from biojax.cg.spline import spline_pair_potential
from biojax.cg.trainer import load_config, train_by_reweighting
from biojax.md.system import make_space

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class SystemConfig:
    structure: str
    bead_number: int = 8
    bead_mass: float = 18.0154


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    cutoff: float = 7.0
    n_knots: int = 25
    r_min: float = 2.2
    prior_epsilon_kJ_mol: float = 1.0
    prior_sigma: float = 3.165


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    replicas: int = 2
    equilibration_steps: int = 1000
    production_steps: int = 5000
    frame_every: int = 50


def water_box(path: str, number: int, mass: float):
    """The CG water sites as ase.Atoms (Å), all one bead type with the molecule's mass."""
    atoms = ase.io.read(path)  # GROMACS .gro, read in nm and converted to Å by ASE
    atoms.numbers[:] = number
    atoms.set_masses([mass] * len(atoms))
    atoms.pbc = True
    atoms.wrap()
    return atoms


def validate(pot, atoms, reweight_cfg, vcfg: ValidationConfig, rdf_t, adf_t, seed: int,
             log=print) -> dict:
    """Plain NVT runs of ``pot``: averaged RDF, ADF and pressure (no reweighting)."""
    space = make_space(atoms, False)
    energy = make_energy(pot, space.displacement_fn, atoms.numbers)
    sampler = Sampler(energy, atoms, pot.cutoff, replicas=vcfg.replicas,
                      temperature_K=reweight_cfg.temperature_K,
                      timestep_fs=reweight_cfg.timestep_fs,
                      friction_per_ps=reweight_cfg.friction_per_ps)
    t0 = time.perf_counter()
    state = sampler.init(pot.params, seed)
    _, _, state = sampler.run(pot.params, state, 1, vcfg.equilibration_steps)
    frames, _, _ = sampler.run(pot.params, state, vcfg.production_steps // vcfg.frame_every,
                               vcfg.frame_every)
    flat = frames.reshape((-1,) + frames.shape[2:])
    box = tuple(np.asarray(sampler.space.box, float))
    rdf = obs.RDF(box, rdf_t.r_max, rdf_t.n_bins, rdf_t.r_min, rdf_t.sigma)
    adf = obs.ADF(box, adf_t.r_outer, adf_t.n_bins, adf_t.sigma)
    g_frames = rdf.over_frames(flat)
    g = g_frames.mean(0)
    p = adf.over_frames(flat[::2]).mean(0)
    nbrs, _ = sampler.frame_neighbors(flat)
    import jax

    pressure_fn = obs.make_pressure(energy, box, len(atoms),
                                    KB * reweight_cfg.temperature_K)
    pressures = np.asarray(jax.jit(jax.vmap(
        lambda r, nb: pressure_fn(r, nb, pot.params)))(flat, nbrs))
    g_ref = obs.read_target(rdf_t.file, "rdf").on(rdf.centers)
    p_ref = obs.read_target(adf_t.file, "adf").on(adf.centers)
    window = (rdf.centers >= 2.0) & (rdf.centers <= 10.0)
    # per-replica RMSE spread as the statistical error of the RDF RMSE
    per_rep = g_frames.reshape(vcfg.replicas, -1, rdf.n_bins).mean(1)
    rep_rmse = np.sqrt(np.mean((per_rep[:, window] - g_ref[window]) ** 2, axis=1))
    n_rep = vcfg.replicas
    out = {
        "rdf_rmse_0.2_1.0nm": float(np.sqrt(np.mean((g[window] - g_ref[window]) ** 2))),
        "rdf_rmse_replica_spread": float(np.std(rep_rmse)),
        "adf_rmse": float(np.sqrt(np.mean((p - p_ref) ** 2))),
        "pressure_bar": float(pressures.mean()),
        "pressure_bar_stderr": float(pressures.reshape(n_rep, -1).mean(1).std()
                                     / np.sqrt(max(n_rep - 1, 1))),
        "first_peak_r_A": float(rdf.centers[np.argmax(g)]),
        "first_peak_g": float(g.max()),
        "frames": int(len(flat)),
        "ps_per_replica": vcfg.production_steps * reweight_cfg.timestep_fs / 1000.0,
        "wall_s": time.perf_counter() - t0,
    }
    log(f"validation: RDF RMSE {out['rdf_rmse_0.2_1.0nm']:.4f}, ADF RMSE "
        f"{out['adf_rmse']:.4f}, pressure {out['pressure_bar']:.0f} bar "
        f"({out['wall_s']:.0f} s)")
    return out, {"r": rdf.centers, "g": g, "g_ref": g_ref, "theta": adf.centers, "p": p,
                 "p_ref": p_ref}


def plots(out: str, curves: dict, pot_before, pot_after) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(fig, name):
        path = os.path.join(out, name)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        return path

    paths = []
    before, after = curves["before"], curves["after"]
    fig = Figure(figsize=(5.5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(after["r"] / 10, after["g_ref"], "k-", lw=2, label="experiment")
    ax.plot(before["r"] / 10, before["g"], "C1--", label="initial (prior only)")
    ax.plot(after["r"] / 10, after["g"], "C0-", label="DiffTRe spline")
    ax.set_xlabel("r (nm)")
    ax.set_ylabel("g_OO(r)")
    ax.set_xlim(0.2, 1.0)
    ax.legend()
    paths.append(save(fig, "rdf.png"))
    fig = Figure(figsize=(5.5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(np.degrees(after["theta"]), after["p_ref"], "k-", lw=2, label="experiment")
    ax.plot(np.degrees(before["theta"]), before["p"], "C1--", label="initial")
    ax.plot(np.degrees(after["theta"]), after["p"], "C0-", label="DiffTRe spline")
    ax.set_xlabel("O-O-O angle (degrees), both within 0.318 nm")
    ax.set_ylabel("p(θ) (1/rad)")
    ax.legend()
    paths.append(save(fig, "adf.png"))
    fig = Figure(figsize=(5.5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    r = np.linspace(2.4, pot_after.cutoff, 300)
    ax.plot(r / 10, pot_before.model.table(pot_before.params, r) / KJ_PER_MOL, "C1--",
            label="initial (prior)")
    ax.plot(r / 10, pot_after.model.table(pot_after.params, r) / KJ_PER_MOL, "C0-",
            label="trained")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_ylim(-3, 6)
    ax.set_xlabel("r (nm)")
    ax.set_ylabel("pair energy (kJ/mol)")
    ax.legend()
    paths.append(save(fig, "potential.png"))
    return paths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(HERE, "cg_water.toml"),
                        help="TOML with [system], [model], [reweighting], [validation]")
    parser.add_argument("--out", default=os.path.join(HERE, "run"),
                        help="output folder (checkpoint, metrics, plots, results.json)")
    parser.add_argument("--resume", action="store_true", help="continue a killed run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    raw = load_toml(args.config)
    base = os.path.dirname(os.path.abspath(args.config))
    system = from_dict(SystemConfig, raw.get("system", {}), f"{args.config} [system]")
    mcfg = from_dict(ModelConfig, raw.get("model", {}), f"{args.config} [model]")
    vcfg = from_dict(ValidationConfig, raw.get("validation", {}),
                     f"{args.config} [validation]")
    cfg = load_config(args.config)
    atoms = water_box(resolve_path(system.structure, base), system.bead_number,
                      system.bead_mass)
    pot = spline_pair_potential([system.bead_number], mcfg.cutoff, mcfg.n_knots, mcfg.r_min,
                                prior_epsilon=mcfg.prior_epsilon_kJ_mol * KJ_PER_MOL,
                                prior_sigma=mcfg.prior_sigma)
    rdf_t = next(t for t in cfg.targets if t.kind == "rdf")
    adf_t = next(t for t in cfg.targets if t.kind == "adf")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    result = train_by_reweighting(pot, atoms, cfg, args.out, resume=args.resume,
                                  progress=not args.no_progress)
    train_s = time.perf_counter() - t0
    trained = result["model"]
    v_before, c_before = validate(pot, atoms, cfg, vcfg, rdf_t, adf_t, cfg.seed + 1000)
    v_after, c_after = validate(trained, atoms, cfg, vcfg, rdf_t, adf_t, cfg.seed + 1000)
    rows = result["metrics"]
    summary = {
        "system": f"{len(atoms)} CG water sites, {atoms.cell.lengths()[0] / 10:.1f} nm box, "
                  f"{cfg.temperature_K} K",
        "model": {"name": "spline-pair", **dataclasses.asdict(mcfg)},
        "updates": result["iteration"], "trajectories_sampled": result["samples"],
        "resamplings_after_the_first": result["samples"] - 1,
        "updates_reusing_a_trajectory": sum(1 for r in rows if not r["resampled"]),
        "training_wall_s": train_s,
        "first_update_reweighted_rdf_rmse": rows[0].get("rmse_rdf") if rows else None,
        "last_update_reweighted_rdf_rmse": rows[-1].get("rmse_rdf") if rows else None,
        "before": v_before, "after": v_after,
        "machine": _machine(),
    }
    summary["plots"] = [os.path.basename(p) for p in result["plots"]] + [
        os.path.basename(p) for p in plots(args.out, {"before": c_before, "after": c_after},
                                           pot, trained)]
    atomic_write_text(os.path.join(args.out, "results.json"),
                      json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("updates", "trajectories_sampled", "before",
                                              "after")}, indent=2))
    return summary


def _machine() -> str:
    sys.path.insert(0, os.path.join(HERE, "..", "..", "benchmarks"))
    try:
        from machine import cpu_model
        import jax

        return f"{cpu_model()}, {os.cpu_count()} cores, jax {jax.__version__} " \
               f"({jax.default_backend()})"
    except Exception:  # noqa: BLE001 - the machine line is informative only
        return "unknown"


if __name__ == "__main__":
    main()
