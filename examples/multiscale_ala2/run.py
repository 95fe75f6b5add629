"""Alanine dipeptide in atomistic detail inside CG water (issue #11, must-show).

    python examples/multiscale_ala2/run.py                       # every stage below, in order
    python examples/multiscale_ala2/run.py --stage fit           # one stage
    python examples/multiscale_ala2/run.py --stage hybrid --replicas 64 --steps 200000 \\
        --out runs/multiscale_ala2/hybrid_gpu                    # production only (e.g. a GPU)

Stages (each resumable: rerunning continues or reuses what is there):

1. ``fit``: force matching on the explicit-water reference (``examples/data/ala2_tip3p/
   frames.npz``: solute atoms + one bead per water at its centre of mass, the bead force
   the sum over the molecule) of the CG water model (spline-pair, one bead type) and the
   solute–water coupling (a spline per solute element × water bead), jointly, by linear
   least squares (``biojax.cg.hybrid.fit_coupling``). The solute's own forces are removed
   with the same force field's vacuum forces of each frame, so the coupling explains the
   solvent's force on each solute atom. Writes ``models/cg_water/`` and
   ``models/coupling.json`` (committed) and ``fit.json``.
2. ``speed``: OpenMM's explicit-solvent run (the reference's system and settings) and the
   hybrid model (1 replica, then ``--replicas``), short fixed runs back to back in this
   process, with the load average; ``speed.json``.
3. ``hybrid``: NVT Langevin MD (300 K, ``--timestep-fs`` 1 fs, friction 1/ps, hydrogen
   mass 4 amu on the solute) of the hybrid system: FG PaiNN solute
   (``examples/models/ala2_ff14sb_painn``) + CG water + coupling, ``--replicas`` replicas
   started from force frames of the reference spread evenly in time (solute atoms and
   water beads as they were there); φ/ψ recorded every ``--observe-every`` steps.
4. ``vacuum``: the same FG solute alone, same starts (solute atoms) and settings.
   ``vacuum-openmm``: ff14SB itself in vacuum (OpenMM, same integrator settings,
   ``--openmm-vacuum-ns``), a check of the FG model against its own force field.
5. ``analyze``: φ/ψ 2D histograms (``--bins`` per axis), Jensen–Shannon divergences and
   basin populations (block-bootstrap errors) of hybrid and vacuum against (a) the
   OpenMM explicit-water reference (``phi_psi.npy``) and (b) the CGnet explicit-water data
   (``examples/data/cgnet_ala2``, φ/ψ from the backbone beads); ``results.json`` and
   ``fes.png`` in ``--results``.

Units: Å, eV, eV/Å, amu, fs, K; angles in degrees in the outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(ROOT, "examples", "data")
FRAMES = os.path.join(DATA, "ala2_tip3p", "frames.npz")
PHI_PSI = os.path.join(DATA, "ala2_tip3p", "phi_psi.npy")
SOLVATED = os.path.join(DATA, "ala2_tip3p", "solvated.pdb")
CGNET = os.path.join(DATA, "cgnet_ala2", "ala2_coordinates.npy")
FG_MODEL = os.path.join(ROOT, "examples", "models", "ala2_ff14sb_painn")
PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)
WATER_BEAD = 8                 # the water bead's number ("oxygen" to the models)
STAGES = ("fit", "speed", "hybrid", "vacuum", "vacuum-openmm", "analyze")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="all", choices=("all",) + STAGES)
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "multiscale_ala2"),
                   help="folder for MD runs (trajectories, checkpoints)")
    p.add_argument("--models", default=os.path.join(HERE, "models"),
                   help="fitted CG water + coupling (written by fit, read by the MD stages)")
    p.add_argument("--results", default=HERE, help="results.json, fes.png, fit.json, speed.json")
    p.add_argument("--fg-model", default=FG_MODEL)
    p.add_argument("--frames", default=FRAMES)
    p.add_argument("--out", default=None,
                   help="MD output folder of the hybrid/vacuum stage (default WORK/<stage>)")
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--steps", type=int, default=20000, help="MD steps per replica")
    p.add_argument("--timestep-fs", type=float, default=1.0)
    p.add_argument("--hydrogen-mass", type=float, default=4.0, help="amu, solute H (HMR)")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--chunk-steps", type=int, default=1000)
    p.add_argument("--observe-every", type=int, default=100, help="steps between φ/ψ rows")
    p.add_argument("--frame-every", type=int, default=1000,
                   help="steps between saved frames (a divisor of --chunk-steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-segments", type=int, default=20,
                   help="restarts after blow-ups before giving up (see stage_md)")
    p.add_argument("--devices", default="1", help="JAX devices for the replicas (or 'all')")
    # fit
    p.add_argument("--cg-cutoff", type=float, default=7.0, help="Å, water–water spline")
    p.add_argument("--cg-knots", type=int, default=25)
    p.add_argument("--coupling-cutoff", type=float, default=7.0, help="Å")
    p.add_argument("--coupling-knots", type=int, default=20)
    p.add_argument("--fit-frames", type=int, default=240,
                   help="fit on the first N force frames (0: all); the last ones stay "
                        "held out entirely (the tests check the committed models on them)")
    p.add_argument("--fit-valid", type=float, default=0.2, help="held-out fraction of frames")
    p.add_argument("--screening", type=int, default=1,
                   help="1: the coupling includes the solvent-screening term of the solute's "
                        "internal electrostatics (fit stage); 0: pair coupling only")
    p.add_argument("--ridge", type=float, default=1e-4,
                   help="ridge of the least-squares fit (× the mean diagonal)")
    # speed
    p.add_argument("--speed-steps", type=int, default=2000, help="hybrid steps timed")
    p.add_argument("--openmm-steps", type=int, default=2500, help="OpenMM 4 fs steps timed")
    p.add_argument("--openmm-threads", type=int, default=2)
    p.add_argument("--openmm-vacuum-ns", type=float, default=5.0,
                   help="ns of ff14SB vacuum MD (OpenMM) in vacuum-openmm (φ/ψ every ps)")
    # analyze
    p.add_argument("--hybrid-dirs", nargs="*", default=None,
                   help="hybrid MD folders to analyse (default WORK/hybrid)")
    p.add_argument("--vacuum-dirs", nargs="*", default=None)
    p.add_argument("--discard-ps", type=float, default=2.0,
                   help="ps dropped at the start of each replica")
    p.add_argument("--bins", type=int, default=20)
    p.add_argument("--same-window", type=int, default=1,
                   help="1: analyse the vacuum replicas over the hybrid's time window only")
    return p.parse_args(argv)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")


def log(msg: str) -> None:
    print(f"[{now()}] {msg}", flush=True)


def load_frames(path: str) -> dict:
    from biojax.core.errors import DataError

    if not os.path.isfile(path):
        raise DataError(f"{path}: not found (run examples/data/recipes/ala2_tip3p.py)")
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    need = ("solute_positions", "solute_forces", "water_positions", "water_forces",
            "solute_vacuum_forces", "box", "numbers", "solute_masses", "water_mass")
    missing = [k for k in need if k not in d]
    if missing:
        raise DataError(f"{path}: missing arrays {missing}")
    return d


def hybrid_layout(d: dict):
    """HybridSystem of 22 solute atoms + W water beads, and the particle masses (amu)."""
    from biojax.cg.hybrid import HybridSystem

    W = d["water_positions"].shape[1]
    system = HybridSystem(tuple(int(z) for z in d["numbers"]), (WATER_BEAD,) * W)
    masses = np.concatenate([d["solute_masses"], np.full(W, float(d["water_mass"]))])
    return system, masses


def hybrid_frames(d: dict):
    """Hybrid particle positions (F, 22 + W, 3) Å and target forces (eV/Å)."""
    P = np.concatenate([d["solute_positions"], d["water_positions"]], axis=1)
    T = np.concatenate([d["solute_forces"], d["water_forces"]], axis=1)
    return P.astype(np.float64), T.astype(np.float64)


def load_models(args, d: dict):
    """The HybridPotential from the committed model files."""
    from biojax.cg.hybrid import HybridPotential, load_coupling
    from biojax.cg.potential import load_cg_potential
    from biojax.nn.io import load_potential

    system, _ = hybrid_layout(d)
    fg = load_potential(args.fg_model)
    cg = load_cg_potential(os.path.join(args.models, "cg_water"))
    coupling = load_coupling(os.path.join(args.models, "coupling.json"))
    return HybridPotential(fg, cg, coupling, system)


def solute_charge_products() -> np.ndarray:
    """(22, 22) Coulomb charge products (e²) of ff14SB alanine dipeptide as OpenMM builds
    them: q_i q_j, zero for bonded 1-2 and 1-3 pairs, the scaled 1-4 products of its
    exceptions; zero diagonal."""
    import openmm
    from openmm import app

    pdb = app.PDBFile(os.path.join(DATA, "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb"))
    system = app.ForceField("amber14-all.xml").createSystem(pdb.topology,
                                                             nonbondedMethod=app.NoCutoff)
    nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    q = np.array([nb.getParticleParameters(i)[0].value_in_unit(openmm.unit.elementary_charge)
                  for i in range(nb.getNumParticles())])
    Q = np.outer(q, q)
    for k in range(nb.getNumExceptions()):
        a, b, qq, _, _ = nb.getExceptionParameters(k)
        Q[a, b] = Q[b, a] = qq.value_in_unit(openmm.unit.elementary_charge ** 2)
    np.fill_diagonal(Q, 0.0)
    return Q


# ============================================================================ fit
def stage_fit(args) -> dict:
    from biojax.cg.hybrid import Coupling, HybridPotential, fit_coupling, save_coupling
    from biojax.cg.potential import CGPotential, save_cg_potential
    from biojax.cg.spline import spline_pair_potential
    from biojax.core.atomic import atomic_write_text
    from biojax.core.units import KJ_PER_MOL
    from biojax.nn.io import load_potential

    d = load_frames(args.frames)
    if args.fit_frames:
        per_frame = ("solute_positions", "solute_forces", "water_positions", "water_forces",
                     "solute_vacuum_energy", "solute_vacuum_forces", "time_ps")
        d = {k: (v[:args.fit_frames] if k in per_frame else v) for k, v in d.items()}
    system, _ = hybrid_layout(d)
    P, T = hybrid_frames(d)
    box = np.asarray(d["box"], np.float64)
    if 2 * max(args.cg_cutoff, args.coupling_cutoff) >= box.min():
        raise SystemExit(f"run.py: cutoffs must be below half the box ({box.min() / 2:.2f} Å)")
    log(f"fit: {len(P)} frames, {system.n_region} solute atoms + {system.n_env} water beads, "
        f"box {box[0]:.3f} Å")
    # CG water: spline pair + the repulsive prior of examples/cg_water (DiffTRe's ε, σ)
    cg = CGPotential(spline_pair_potential([WATER_BEAD], args.cg_cutoff, args.cg_knots,
                                           r_min=2.2, prior_epsilon=1.0 * KJ_PER_MOL,
                                           prior_sigma=3.165),
                     temperature_K=args.temperature,
                     info={"source": "force matching on examples/data/ala2_tip3p"})
    # the repulsive prior's σ per element: the closest approach seen in the data, so the
    # wall sits where the splines have no data to fit (and the splines describe the rest)
    elements = sorted(set(system.region_numbers))
    closest = closest_approach(P, box, np.asarray(system.region_numbers), elements)
    sigma = [0.95 * closest[z] for z in elements]
    # the solvent's screening of the solute's own Coulomb pairs (ff14SB charge products,
    # 1-2/1-3 excluded, 1-4 scaled), one λ fitted with the splines (all linear)
    pairs = None
    if args.screening:
        Q = solute_charge_products()
        i, j = np.triu_indices(len(Q), 1)
        keep = Q[i, j] != 0
        pairs = list(zip(i[keep].tolist(), j[keep].tolist(), Q[i, j][keep].tolist()))
    coupling = Coupling.create(elements, [WATER_BEAD], cutoff=args.coupling_cutoff,
                               n_knots=args.coupling_knots, r_min=1.5, prior_sigma=sigma,
                               screening_pairs=pairs)
    fg = load_potential(args.fg_model)
    pot = HybridPotential(fg, cg, coupling, system)
    t0 = time.time()
    fvac = np.asarray(d["solute_vacuum_forces"], np.float64)
    res = fit_coupling(pot, P, T, box=box, fit=("coupling", "cg"), fg_forces=fvac,
                       n_valid=args.fit_valid, seed=args.seed, ridge=args.ridge)
    m = res.metrics
    m["wall_s"] = time.time() - t0
    if pairs:
        m["screening_lambda"] = float(res.coupling.params["screening"])
        m["screening_pairs"] = len(pairs)
    # reference points: the spread of the targets themselves (a zero model's error)
    Tr = T.copy()
    Tr[:, :system.n_region] -= d["solute_vacuum_forces"]
    m["target_rms"] = {"region_solvent_force": float(np.sqrt(np.mean(Tr[:, :22] ** 2))),
                       "bead_force": float(np.sqrt(np.mean(Tr[:, 22:] ** 2)))}
    m["frames"] = int(len(P))
    m["settings"] = {"cg_cutoff": args.cg_cutoff, "cg_knots": args.cg_knots, "cg_r_min": 2.2,
                     "cg_prior": "1 kJ/mol (3.165 Å / r)^12",
                     "coupling_cutoff": args.coupling_cutoff,
                     "coupling_knots": args.coupling_knots, "coupling_r_min": 1.5,
                     "coupling_prior": "0.01 eV (σ_Z / r)^12, σ_Z = 0.95 × closest approach",
                     "coupling_prior_sigma_A": dict(zip(map(str, elements), sigma)),
                     "closest_approach_A": {str(k): v for k, v in closest.items()},
                     "ridge": args.ridge, "valid_fraction": args.fit_valid, "seed": args.seed}
    os.makedirs(args.models, exist_ok=True)
    save_cg_potential(res.cg, os.path.join(args.models, "cg_water"))
    save_coupling(res.coupling, os.path.join(args.models, "coupling.json"))
    atomic_write_text(os.path.join(args.results, "fit.json"), json.dumps(m, indent=1))
    log(f"fit done in {m['wall_s']:.0f} s: force RMSE (eV/Å) valid solute "
        f"{m['after']['valid']['region']:.4f} (prior only {m['before']['valid']['region']:.4f}), "
        f"beads {m['after']['valid']['beads']:.4f} (prior only "
        f"{m['before']['valid']['beads']:.4f})")
    plot_fit(res, os.path.join(args.results, "potentials.png"))
    return m


def closest_approach(P, box, region_numbers, elements) -> dict:
    """Per solute element, the smallest solute-atom–water-bead distance (Å, minimum image)
    over all frames."""
    n = len(region_numbers)
    out = {}
    for z in elements:
        idx = np.flatnonzero(region_numbers == z)
        best = np.inf
        for f in range(len(P)):
            d = P[f, idx, None, :] - P[f, None, n:, :]
            d -= box * np.round(d / box)
            best = min(best, float(np.sqrt((d * d).sum(-1)).min()))
        out[int(z)] = best
    return out


def plot_fit(res, path: str) -> None:
    """Pair energies of the fitted CG water and coupling (eV vs Å)."""
    import jax.numpy as jnp

    from biojax.analysis.plots import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    r = np.linspace(2.4, 7.0, 200)
    learned = res.cg.learned
    e = learned.model.pair_energy(jnp.asarray(r ** 2), learned.params, jnp.zeros(len(r), int),
                                  jnp.zeros(len(r), int))
    axes[0].plot(r, np.asarray(e))
    axes[0].set(xlabel="bead–bead r (Å)", ylabel="pair energy (eV)", title="CG water",
                ylim=(-0.1, 0.2))
    cm = res.coupling.model
    r = np.linspace(1.6, cm.cutoff, 200)
    for k, z in enumerate(cm.elements):
        e = cm.pair_energy(res.coupling.params, jnp.asarray(r ** 2), jnp.full(len(r), k),
                           jnp.zeros(len(r), int))
        axes[1].plot(r, np.asarray(e), label={1: "H", 6: "C", 7: "N", 8: "O"}.get(z, str(z)))
    axes[1].set(xlabel="solute atom – water bead r (Å)", ylabel="pair energy (eV)",
                title="coupling", ylim=(-0.15, 0.3))
    axes[1].legend()
    _save(fig, path)


# ============================================================================ MD
def sim_config(args, replicas: int, steps: int, periodic: bool):
    from biojax.md.config import SimulateConfig

    devices = args.devices if args.devices == "all" else int(args.devices)
    return SimulateConfig(ensemble="nvt-langevin", timestep_fs=args.timestep_fs,
                          temperature_K=args.temperature, friction_per_ps=args.friction,
                          hydrogen_mass=args.hydrogen_mass, steps=steps, replicas=replicas,
                          seed=args.seed, chunk_steps=min(args.chunk_steps, steps),
                          observe_every=args.observe_every,
                          frame_every=min(args.frame_every, steps), devices=devices,
                          minimize=False, trajectory_format="extxyz")


def dihedral_observables(box) -> dict:
    """``{"phi": fn, "psi": fn}`` (degrees) of the solute (atoms 0..21 of the particles),
    minimum image in an orthorhombic ``box`` (Å) or free space (None): the four atoms are
    made whole around the first, then :func:`biojax.core.geometry.dihedrals`."""
    import jax.numpy as jnp

    from biojax.core import geometry

    L = None if box is None else jnp.asarray(box, jnp.float32)

    def dih(R, idx):
        x = R[jnp.asarray(idx)]
        if L is not None:
            d = x - x[0]
            x = x[0] + d - L * jnp.round(d / L)
        return jnp.degrees(geometry.dihedrals(x, jnp.array([[0, 1, 2, 3]]))[0])

    return {"phi": lambda state, **kw: dih(state.position, PHI),
            "psi": lambda state, **kw: dih(state.position, PSI)}


def start_atoms(d: dict, n: int, hybrid: bool):
    """``n`` starting structures from force frames spread evenly over the reference run."""
    import ase

    F = len(d["solute_positions"])
    idx = np.unique(np.linspace(0, F - 1, n).round().astype(int))
    _, masses = hybrid_layout(d)
    out = []
    for i in idx:
        if hybrid:
            x = np.concatenate([d["solute_positions"][i], d["water_positions"][i]])
            W = d["water_positions"].shape[1]
            a = ase.Atoms(numbers=np.concatenate([d["numbers"], np.full(W, WATER_BEAD)]),
                          positions=x, cell=np.diag(d["box"]), pbc=True)
            a.set_masses(masses)
        else:
            a = ase.Atoms(numbers=d["numbers"], positions=d["solute_positions"][i])
            a.set_masses(d["solute_masses"])
        out.append(a)
    return out, idx


def last_frames(folder: str, replicas: int, fallback, bad: int | None = None,
                original=None):
    """Each replica's last saved frame in an MD folder (ase.Atoms with the start's masses
    and cell), or its ``fallback`` start when it saved none; replica ``bad`` (the one that
    blew up) goes back two saved frames, or to its fallback start, so that it does not
    start again next to where it failed."""
    import ase.io

    out = []
    for r in range(replicas):
        rd = folder if replicas == 1 else os.path.join(folder, f"replica_{r:03d}")
        a = fallback[r % len(fallback)].copy()
        if r == bad and original is not None:
            a = original[r % len(original)].copy()
        path = os.path.join(rd, "trajectory.extxyz")
        if os.path.isfile(path):
            try:
                frames = ase.io.read(path, ":")
                pick = -1 if r != bad else -3
                if len(frames) >= -pick:
                    a.positions = frames[pick].positions
            except Exception:   # noqa: BLE001 — a torn last frame: keep the fallback
                pass
        out.append(a)
    return out


def stage_md(args, which: str) -> dict:
    from biojax.md import Simulation
    from biojax.nn.io import load_potential

    d = load_frames(args.frames)
    out = args.out or os.path.join(args.work, which)
    os.makedirs(out, exist_ok=True)
    starts, idx = start_atoms(d, args.replicas, which == "hybrid")
    if which == "hybrid":
        pot = load_models(args, d)
        obs = dihedral_observables(d["box"])
        lam = pot.coupling.params.get("screening")
        if lam is not None:
            log(f"hybrid: the coupling screens the solute's Coulomb pairs, λ = {float(lam):.3f}")
    else:
        pot = load_potential(args.fg_model)
        obs = dihedral_observables(None)
    # A replica that blows up (the FG network leaving its training data) stops the run; the
    # run then continues as a new segment (segment_1, ...) from every replica's last saved
    # frame with new velocities and noise (seed + segment), so one bad replica costs at
    # most one frame interval, and every frame before the blow-up is kept.
    from biojax.core.errors import SimulationError

    original = list(starts)
    seg = 0
    while os.path.isdir(os.path.join(out, f"segment_{seg + 1}")):
        seg += 1
    events = []
    while True:
        seg_out = out if seg == 0 else os.path.join(out, f"segment_{seg}")
        os.makedirs(seg_out, exist_ok=True)
        cfg = dataclasses.replace(sim_config(args, args.replicas, args.steps, which == "hybrid"),
                                  seed=args.seed + seg)
        resume = os.path.isfile(os.path.join(seg_out, "checkpoint.npz"))
        if seg > 0 and not resume:
            prev_out = out if seg == 1 else os.path.join(out, f"segment_{seg - 1}")
            bad = None
            if events and events[-1]["segment"] == seg - 1:
                import re

                m = re.match(r"replica (\d+):", events[-1]["error"])
                bad = int(m.group(1)) if m else None
            starts = last_frames(prev_out, args.replicas, starts, bad, original)
        log(f"{which}: {args.replicas} replicas × {args.steps} steps of {args.timestep_fs} fs "
            f"({len(starts[0])} particles), segment {seg}, "
            f"{'resuming' if resume else 'new run'} in {seg_out}")
        sim = Simulation(starts, pot, cfg, progress=True, observables=obs)
        try:
            summary = sim.run(seg_out, resume=resume)
            break
        except SimulationError as exc:
            log(f"{which}: segment {seg} stopped: {exc}")
            events.append({"segment": seg, "error": str(exc)[:400]})
            seg += 1
            if seg > args.max_segments:
                raise
    summary["segments"] = seg + 1
    summary["blowups"] = events
    lam = pot.coupling.params.get("screening") if which == "hybrid" else None
    summary["screening_lambda"] = None if lam is None else float(lam)
    summary["start_frames"] = idx.tolist()
    summary["load_average"] = os.getloadavg()
    with open(os.path.join(out, "run_info.json"), "w") as f:
        json.dump({"summary": summary, "args": vars(args)}, f, indent=1, default=str)
    log(f"{which} done: {summary['step']} steps, {summary['ns_per_day']:.2f} ns/day per replica, "
        f"{summary['aggregate_ns_per_day']:.2f} aggregate")
    return summary


def stage_vacuum_openmm(args) -> dict:
    """ff14SB alanine dipeptide in vacuum with OpenMM: Langevin 300 K, friction and time
    step as the MD stages, HMR; φ/ψ every ``--observe-every`` steps → WORK/vacuum_openmm/."""
    import openmm
    import openmm.unit as u
    from openmm import app

    sys.path.insert(0, os.path.join(DATA, "recipes"))
    from ala2_tip3p import dihedral_deg

    from biojax.core.atomic import atomic_path

    out = os.path.join(args.work, "vacuum_openmm")
    os.makedirs(out, exist_ok=True)
    pdb = app.PDBFile(os.path.join(DATA, "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb"))
    system = app.ForceField("amber14-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None,
        hydrogenMass=args.hydrogen_mass * u.amu if args.hydrogen_mass > 0 else None)
    integ = openmm.LangevinMiddleIntegrator(args.temperature * u.kelvin,
                                            args.friction / u.picosecond,
                                            args.timestep_fs * u.femtosecond)
    integ.setRandomNumberSeed(args.seed + 7)
    # the Reference platform: for 22 atoms faster than CPU (no thread overhead)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pdb.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx)
    ctx.setVelocitiesToTemperature(args.temperature * u.kelvin, args.seed + 7)
    every = int(round(1000.0 / args.timestep_fs))          # one sample per ps
    n = int(round(args.openmm_vacuum_ns * 1e6 / args.timestep_fs / every))
    rows = np.zeros((n, 2), np.float32)
    t = time.time()
    from biojax.core.progress import progress

    bar = progress(n, "ff14SB vacuum (OpenMM)", unit="sample")
    for k in range(n):
        integ.step(every)
        x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(
            u.angstrom)
        rows[k] = dihedral_deg(np.asarray(x), PHI), dihedral_deg(np.asarray(x), PSI)
        if k % 100 == 0:
            bar.update(k)
    bar.close()
    wall = time.time() - t
    with atomic_path(os.path.join(out, "phi_psi.npy")) as tmp:
        np.save(tmp, rows)
    info = {"ns": args.openmm_vacuum_ns, "sample_every_fs": every * args.timestep_fs,
            "wall_s": wall, "ns_per_day": args.openmm_vacuum_ns / wall * 86400}
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    log(f"vacuum-openmm: {args.openmm_vacuum_ns} ns in {wall:.0f} s")
    return info


# ============================================================================ speed
def openmm_speed(args, d: dict) -> dict:
    """ns/day of the reference's explicit-water system in OpenMM (same settings as the
    recipe: PME 0.9 nm, rigid water, HBonds, HMR 4 amu, 4 fs LangevinMiddle, NVT)."""
    import openmm
    import openmm.unit as u
    from openmm import app

    rec = json.loads(str(d["recipe"])) if "recipe" in d else {}
    st = rec.get("settings", {})
    pdb = app.PDBFile(SOLVATED)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.PME,
                             nonbondedCutoff=st.get("cutoff_nm", 0.9) * u.nanometer,
                             constraints=app.HBonds, rigidWater=True,
                             hydrogenMass=st.get("hydrogen_mass", 4.0) * u.amu)
    L = float(d["box"][0]) / 10.0
    system.setDefaultPeriodicBoxVectors(*(np.eye(3) * L * u.nanometer))
    dt = st.get("timestep_fs", 4.0)
    integ = openmm.LangevinMiddleIntegrator(args.temperature * u.kelvin, 1 / u.picosecond,
                                            dt * u.femtosecond)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": str(args.openmm_threads)})
    ctx.setPositions(pdb.positions)
    ctx.setVelocitiesToTemperature(args.temperature * u.kelvin, 1)
    integ.step(100)
    ctx.getState(getEnergy=True)
    load0 = os.getloadavg()
    t = time.perf_counter()
    integ.step(args.openmm_steps)
    ctx.getState(getEnergy=True)
    wall = time.perf_counter() - t
    return {"engine": "OpenMM " + openmm.__version__ + " CPU platform",
            "threads": args.openmm_threads, "atoms": system.getNumParticles(),
            "timestep_fs": dt, "steps": args.openmm_steps, "wall_s": wall,
            "ns_per_day": args.openmm_steps * dt / 1e6 / wall * 86400,
            "load_average_before": load0, "load_average_after": os.getloadavg()}


def hybrid_speed(args, d: dict, replicas: int) -> dict:
    import jax

    from biojax.md import Simulation

    pot = load_models(args, d)
    starts, _ = start_atoms(d, replicas, True)
    chunk = args.speed_steps // 2
    cfg = sim_config(args, replicas, 2 * chunk + chunk, True)
    cfg = dataclasses.replace(cfg, chunk_steps=chunk, frame_every=chunk,
                              observe_every=min(args.observe_every, chunk))
    sim = Simulation(starts, pot, cfg, progress=False,
                     observables=dihedral_observables(d["box"]))
    load0 = os.getloadavg()
    s = sim.run(None)
    timed = s["steps_run"] - chunk
    wall = s["wall_s"] - s["first_chunk_s"]
    return {"engine": f"biojax hybrid (JAX {jax.__version__}, {jax.devices()[0].platform})",
            "device": str(jax.devices()[0].device_kind), "replicas": replicas,
            "particles": int(sim.n_atoms), "timestep_fs": args.timestep_fs,
            "steps_timed": timed, "wall_s": wall, "compile_and_first_chunk_s": s["first_chunk_s"],
            "ns_per_day_per_replica": timed * args.timestep_fs / 1e6 / wall * 86400,
            "ns_per_day_aggregate": timed * args.timestep_fs / 1e6 / wall * 86400 * replicas,
            "load_average_before": load0, "load_average_after": os.getloadavg()}


def stage_speed(args) -> dict:
    from biojax.core.atomic import atomic_write_text

    d = load_frames(args.frames)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cpu_count": os.cpu_count()}
    try:
        out["openmm"] = openmm_speed(args, d)
        log(f"speed: OpenMM {out['openmm']['ns_per_day']:.1f} ns/day")
    except ImportError:
        out["openmm"] = "not installed"
        log("speed: OpenMM not installed")
    out["hybrid_1"] = hybrid_speed(args, d, 1)
    log(f"speed: hybrid 1 replica {out['hybrid_1']['ns_per_day_per_replica']:.2f} ns/day")
    if args.replicas > 1:
        out[f"hybrid_{args.replicas}"] = hybrid_speed(args, d, args.replicas)
        log(f"speed: hybrid {args.replicas} replicas "
            f"{out[f'hybrid_{args.replicas}']['ns_per_day_aggregate']:.2f} ns/day aggregate")
    atomic_write_text(os.path.join(args.results, "speed.json"), json.dumps(out, indent=1))
    return out


# ============================================================================ analyze
def read_phipsi(folders, discard_ps: float, max_ps: float | None = None):
    """Per replica (T, 2) φ/ψ in degrees from the observables of MD folders, the first
    ``discard_ps`` dropped and nothing after ``max_ps``; and the ps kept in all."""
    from biojax.md.output import read_observables

    trajs, ps = [], 0.0
    for folder in folders:
        if not os.path.isdir(folder):
            log(f"analyze: {folder} not found, skipped")
            continue
        segs = [folder] + sorted(os.path.join(folder, x) for x in os.listdir(folder)
                                 if x.startswith("segment_"))
        reps = [os.path.join(sg, x) for sg in segs for x in sorted(os.listdir(sg))
                if x.startswith("replica_")]
        for rd in reps or segs:
            o = read_observables(rd)
            if "phi" not in o:
                continue
            t_fs = o["time_fs"] if "time_fs" in o else o["step"]
            keep = t_fs > discard_ps * 1000.0
            if max_ps is not None:
                keep &= t_fs <= max_ps * 1000.0
            if keep.sum() < 2:
                continue
            trajs.append(np.stack([o["phi"][keep], o["psi"][keep]], 1))
            ps += (t_fs[keep][-1] - t_fs[keep][0]) / 1000.0
    return trajs, ps


FINE_BASINS = ("C7eq", "PII", "beta/C5", "alphaR", "phi>0")


def fine_basins(phi, psi) -> np.ndarray:
    """Basin index per sample (φ, ψ in degrees) into :data:`FINE_BASINS`, splitting the
    β/PII region where water and vacuum differ: φ < 0 with −150° < ψ ≤ 50° is αR; of the
    rest with φ < 0, φ < −120° is β/C5, else 50° < ψ ≤ 120° is C7eq (held by the
    intramolecular hydrogen bond) and ψ > 120° or ψ ≤ −150° is PII; φ ≥ 0 (αL, C7ax) is
    one basin."""
    phi, psi = np.asarray(phi), np.asarray(psi)
    out = np.full(phi.shape, 4, np.int32)
    neg = phi < 0
    ar = neg & (psi > -150) & (psi <= 50)
    rest = neg & ~ar
    out[ar] = 3
    out[rest & (phi < -120)] = 2
    mid = rest & (phi >= -120)
    out[mid & (psi > 50) & (psi <= 120)] = 0
    out[mid & ~((psi > 50) & (psi <= 120))] = 1
    return out


def stage_analyze(args) -> dict:
    from biojax.analysis.fes import js_divergence
    from biojax.analysis.msm import populations
    from biojax.cg.evaluate import BASINS, histogram2d, plot_fes_side_by_side, \
        ramachandran_basins
    from biojax.core import geometry
    from biojax.core.atomic import atomic_write_text

    rng = np.random.default_rng(args.seed)
    ref = np.load(PHI_PSI).astype(np.float64)
    cgnet_x = np.load(CGNET)
    cgnet = np.degrees(geometry.dihedrals_float64(cgnet_x, np.array([[0, 1, 2, 3],
                                                                     [1, 2, 3, 4]])))
    sets = {"reference (OpenMM TIP3P)": [ref], "CGnet (explicit water)": [cgnet]}
    hy, hy_ps = read_phipsi(args.hybrid_dirs or [os.path.join(args.work, "hybrid")],
                            args.discard_ps)
    # the vacuum replicas over the same time window as the hybrid ones (same starts: equal
    # memory of the starting structures)
    window = None
    if hy and args.same_window:
        window = args.discard_ps + max(len(t) for t in hy) * args.observe_every \
            * args.timestep_fs / 1000.0
    va, va_ps = read_phipsi(args.vacuum_dirs or [os.path.join(args.work, "vacuum")],
                            args.discard_ps, window)
    if hy:
        sets["hybrid (FG in CG water)"] = hy
    if va:
        sets["vacuum (FG alone)"] = va
    vo_path = os.path.join(args.work, "vacuum_openmm", "phi_psi.npy")
    vo = None
    if os.path.isfile(vo_path):
        a = np.load(vo_path).astype(np.float64)
        vo = [a[int(len(a) * 0.01):]]
    rad = np.radians

    def hist(trajs):
        a = np.concatenate(trajs)
        return histogram2d(rad(a[:, 0]), rad(a[:, 1]), args.bins)

    def blocks(trajs, n=10):
        a = [t for t in trajs]
        if len(a) >= n:
            return a
        out = []
        for t in a:
            out += np.array_split(t, max(1, n // len(a)))
        return [b for b in out if len(b)]

    def js_boot(trajs, p_ref, n_boot=100):
        """JS of ``trajs`` vs ``p_ref`` and its spread when resampling blocks."""
        bl = blocks(trajs)
        vals = []
        for _ in range(n_boot):
            pick = [bl[i] for i in rng.integers(0, len(bl), len(bl))]
            vals.append(js_divergence(p_ref, hist(pick)))
        return float(np.std(vals))

    H = {k: hist(v) for k, v in sets.items()}
    pops = {}
    for k, v in sets.items():
        basin = [ramachandran_basins(rad(t[:, 0]), rad(t[:, 1])) for t in v]
        pp = populations(basin, 4, n_blocks=10, seed=args.seed)
        pops[k] = {b: {"population": float(pp.populations[i]), "error": float(pp.errors[i])}
                   for i, b in enumerate(BASINS)}
    fine = {}
    for k, v in list(sets.items()) + ([("ff14SB vacuum (OpenMM)", vo)] if vo is not None
                                      else []):
        pp = populations([fine_basins(t[:, 0], t[:, 1]) for t in v], len(FINE_BASINS),
                         n_blocks=10, seed=args.seed)
        fine[k] = {b: {"population": float(pp.populations[i]), "error": float(pp.errors[i])}
                   for i, b in enumerate(FINE_BASINS)}
    names = list(sets)
    if vo is not None:       # not a model under test: a check of the FG model in vacuum
        H["ff14SB vacuum (OpenMM)"] = hist(vo)
        b = [ramachandran_basins(rad(t[:, 0]), rad(t[:, 1])) for t in vo]
        pp = populations(b, 4, n_blocks=10, seed=args.seed)
        pops["ff14SB vacuum (OpenMM)"] = {
            x: {"population": float(pp.populations[i]), "error": float(pp.errors[i])}
            for i, x in enumerate(BASINS)}
    js = {}
    for a in names[2:]:
        for b in names[:2]:
            js[f"{a} vs {b}"] = {"js": js_divergence(H[b], H[a]),
                                 "bootstrap_std": js_boot(sets[a], H[b])}
    if vo is not None:
        for a in names[2:]:
            js[f"{a} vs ff14SB vacuum (OpenMM)"] = {
                "js": js_divergence(H["ff14SB vacuum (OpenMM)"], H[a]),
                "bootstrap_std": js_boot(sets[a], H["ff14SB vacuum (OpenMM)"])}
        js["ff14SB vacuum (OpenMM) vs reference"] = {
            "js": js_divergence(H[names[0]], H["ff14SB vacuum (OpenMM)"])}
    js["CGnet vs reference"] = {"js": js_divergence(H[names[0]], H[names[1]]),
                                "bootstrap_std": js_boot(sets[names[1]], H[names[0]])}
    half = len(ref) // 2
    js["reference first vs second half"] = {
        "js": js_divergence(hist([ref[:half]]), hist([ref[half:]]))}
    rec = {}
    try:
        with np.load(FRAMES) as z:
            rec = json.loads(str(z["recipe"]))
    except Exception:   # noqa: BLE001 — provenance only
        pass
    amounts = {names[0]: {"ns": len(ref) * rec.get("settings", {}).get("phipsi_ps", 1.0) / 1000,
                          "samples": int(len(ref))},
               names[1]: {"ns": 100.0, "samples": int(len(cgnet)),
                          "note": "10,000 frames subsampled from CGnet's explicit-water MD"}}
    if hy:
        amounts[names[2]] = {"ns": hy_ps / 1000, "replicas": len(hy),
                             "samples": int(sum(len(t) for t in hy))}
    if va:
        amounts[names[-1]] = {"ns": va_ps / 1000, "replicas": len(va),
                              "samples": int(sum(len(t) for t in va))}
    if vo is not None:
        amounts["ff14SB vacuum (OpenMM)"] = {"ns": float(len(vo[0]) / 1000.0),
                                             "samples": int(len(vo[0]))}
    verdict = None
    if hy and va:
        vs = {}
        for b in names[:2]:
            h = js[f"{names[2]} vs {b}"]["js"]
            v = js[f"{names[-1]} vs {b}"]["js"]
            vs[b] = {"hybrid_js": h, "vacuum_js": v, "hybrid_closer": bool(h < v)}
        verdict = vs
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "bins": args.bins, "discard_ps": args.discard_ps, "window_ps": window, "basins_definition":
           "degrees; β/PII: φ<0 outside αR; αR: φ<0, −150<ψ≤50; αL: φ≥0, −45≤ψ<120; other",
           "fine_basins_definition": fine_basins.__doc__.split("\n\n")[0].strip(),
           "sampling": amounts, "jensen_shannon_nats": js, "populations": pops,
           "populations_fine": fine,
           "hybrid_closer_than_vacuum": verdict}
    for f in ("fit.json", "speed.json"):
        p = os.path.join(args.results, f)
        if os.path.isfile(p):
            with open(p) as fh:
                out[f[:-5]] = json.load(fh)
    atomic_write_text(os.path.join(args.results, "results.json"), json.dumps(out, indent=1))
    plot_fes_side_by_side({k.split(" (")[0]: h for k, h in H.items()},
                          os.path.join(args.results, "fes.png"), temperature=args.temperature)
    for k, v in js.items():
        log(f"JS {k}: {v['js']:.4f}" + (f" ± {v['bootstrap_std']:.4f}"
                                         if "bootstrap_std" in v else ""))
    for table in (pops, fine):
        for k, v in table.items():
            log(f"{k}: " + ", ".join(f"{b} {x['population']:.3f}±{x['error']:.3f}"
                                     for b, x in v.items()))
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(args.results, exist_ok=True)
    stages = STAGES if args.stage == "all" else (args.stage,)
    for st in stages:
        if st == "fit":
            if args.stage == "all" and os.path.isfile(os.path.join(args.models, "coupling.json")):
                log("fit: models exist, skipped (run --stage fit to refit)")
                continue
            stage_fit(args)
        elif st == "speed":
            stage_speed(args)
        elif st in ("hybrid", "vacuum"):
            stage_md(args, st)
        elif st == "vacuum-openmm":
            stage_vacuum_openmm(args)
        elif st == "analyze":
            stage_analyze(args)


if __name__ == "__main__":
    sys.exit(main())
