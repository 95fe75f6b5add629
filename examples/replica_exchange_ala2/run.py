"""Parallel tempering of alanine dipeptide (vacuum) with the shipped learned potential
(examples/models/ala2_painn), against a plain run at the lowest temperature.

    python examples/replica_exchange_ala2/run.py --out runs/rex_ala2            # all stages
    python examples/replica_exchange_ala2/run.py --stage pt --replicas 8 --ps 60 --out ...
    python examples/replica_exchange_ala2/run.py --stage plain --replicas 8 --ps 60 --out ...
    python examples/replica_exchange_ala2/run.py --stage analyze --out ...

Stages (each resumes from its checkpoint when run again after a kill):

- ``pt``: ``--replicas`` replicas on a geometric ladder ``--t-min``..``--t-max`` K
  (``--rungs`` rungs, default = replicas: one ladder), Langevin 1 fs with hydrogen mass
  4 amu, exchanges every ``--every`` steps (``[replica_exchange]`` of biojax simulate).
- ``plain``: the same number of plain replicas at ``--t-min``, same starts, same length.
- ``analyze``: φ/ψ of every frame (the first ``--drop-ps`` of each replica dropped);
  basin populations (C7eq, C5, C7ax, other) of the lowest rung of PT and of the plain
  replicas with block errors; the 300 K populations from all rungs by MBAR (temperature
  reweighting, biojax.sampling.free_energy); φ free-energy profiles; the exchange
  statistics; ``results.json`` and PNG plots in ``--out``.
Starts: examples/alanine_dipeptide_starts.extxyz (C7eq, β, αR, αL; replica r from frame
r mod 4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PHI, PSI = [4, 6, 8, 14], [6, 8, 14, 16]   # C-N-CA-C, N-CA-C-N (0-based atom indices)
# vacuum basins, degrees: boxes [[phi_lo, phi_hi], [psi_lo, psi_hi]] (as examples/
# alanine_dipeptide.toml); frames in none of them count as "other"
BASINS = {
    "C7eq": [[[-120.0, 0.0], [0.0, 120.0]]],
    "C5": [[[-180.0, -120.0], [90.0, 180.1]], [[-180.0, -120.0], [-180.0, -150.0]],
           [[150.0, 180.1], [90.0, 180.1]], [[150.0, 180.1], [-180.0, -150.0]]],
    "C7ax": [[[0.0, 150.0], [-150.0, 0.0]]],
}


def config(args, exchange: bool):
    from biojax.md.config import default_config

    steps = int(round(args.ps * 1000 / args.timestep_fs))
    chunk = args.every
    steps -= steps % chunk
    kw = dict(structure=os.path.join(ROOT, "examples", "alanine_dipeptide_starts.extxyz"),
              model=os.path.join(ROOT, "examples", "models", args.model),
              ensemble="nvt-langevin", timestep_fs=args.timestep_fs, hydrogen_mass=4.0,
              temperature_K=args.t_min, friction_per_ps=1.0, steps=steps,
              replicas=args.replicas, minimize=True, chunk_steps=chunk, observe_every=10,
              frame_every=100, seed=args.seed, plots=False)
    if exchange:
        rungs = args.rungs or args.replicas
        kw["replica_exchange"] = {"t_min": args.t_min, "t_max": args.t_max, "n": rungs,
                                  "every": args.every, "seed": args.seed}
    return default_config(**kw)


def simulate(args, name: str, exchange: bool) -> dict:
    from biojax.md.simulation import Simulation
    from biojax.md.stage import load_structure
    from biojax.nn.io import load_potential

    cfg = config(args, exchange)
    out = os.path.join(args.out, name)
    resume = os.path.isfile(os.path.join(out, "checkpoint.npz"))
    frames = load_structure(cfg.structure)
    sim = Simulation(frames, load_potential(cfg.model), cfg, progress=True)
    t = time.time()
    summary = sim.run(out, resume=resume)
    print(f"{name}: {summary['step']} steps x {cfg.replicas} replicas in "
          f"{time.time() - t:.0f} s ({summary['ns_per_day']:.3g} ns/day per replica)",
          file=sys.stderr)
    return summary


# --------------------------------------------------------------------------- analysis
def replica_angles(folder: str, drop_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(phi, psi) in degrees of a replica's frames, and the frames' steps."""
    import ase.io

    from biojax.analysis.features import dihedrals

    frames = ase.io.read(os.path.join(folder, "trajectory.extxyz"), ":")
    pos = np.stack([a.positions for a in frames])
    steps = np.array([a.info.get("step", i) for i, a in enumerate(frames)])
    ang = np.degrees(np.asarray(dihedrals(pos, np.array([PHI, PSI]))))
    return ang[drop_frames:], steps[drop_frames:]


def basin_of(ang: np.ndarray) -> np.ndarray:
    """Basin index per frame (order of BASINS; len(BASINS) = other)."""
    out = np.full(len(ang), len(BASINS))
    for b, boxes in reversed(list(enumerate(BASINS.values()))):
        for (p0, p1), (s0, s1) in boxes:
            inside = (ang[:, 0] >= p0) & (ang[:, 0] < p1) & (ang[:, 1] >= s0) & (ang[:, 1] < s1)
            out[inside] = b
    return out


def populations(labels: list[np.ndarray], weights: list[np.ndarray] | None = None,
                n_blocks: int = 5) -> dict:
    """Basin populations of the pooled trajectories with a block standard error: each
    trajectory cut into ``n_blocks`` contiguous blocks, block b of every trajectory
    pooled, error = std over blocks / sqrt(n_blocks)."""
    names = list(BASINS) + ["other"]
    k = len(names)
    weights = weights or [np.ones(len(x)) for x in labels]

    def pops(ls, ws):
        h = np.zeros(k)
        for lab, w in zip(ls, ws):
            h += np.bincount(lab, weights=w, minlength=k)
        return h / h.sum()

    whole = pops(labels, weights)
    blocks = []
    for b in range(n_blocks):
        ls, ws = [], []
        for lab, w in zip(labels, weights):
            idx = np.array_split(np.arange(len(lab)), n_blocks)[b]
            ls.append(lab[idx]), ws.append(w[idx])
        blocks.append(pops(ls, ws))
    err = np.std(blocks, axis=0, ddof=1) / np.sqrt(n_blocks)
    return {n: {"population": float(whole[i]), "error": float(err[i])}
            for i, n in enumerate(names)}


def side_of(ang: np.ndarray) -> np.ndarray:
    """1 on the αL/C7ax side (0° < φ < 150°), 0 on the C7eq/C5/αR side (the rest); the
    two sides are separated by the high φ barriers near 0° and 150°."""
    return ((ang[:, 0] > 0.0) & (ang[:, 0] < 150.0)).astype(int)


def conditional(labels: list[np.ndarray], sides: list[np.ndarray], per_replica: bool,
                n_blocks: int = 5) -> dict:
    """Basin populations within each φ side (given the side), pooled over trajectories.
    Errors: ``per_replica`` — the spread of the trajectories' own populations (frame-count
    weighted, trajectories with ≥ 20 frames on that side; independent replicas),
    otherwise blocks as in :func:`populations`."""
    names = list(BASINS) + ["other"]
    out = {}
    for side, key in ((0, "C7eq_C5_side"), (1, "alphaL_C7ax_side")):
        labs = [lab[sd == side] for lab, sd in zip(labels, sides)]
        n = sum(len(x) for x in labs)
        if n == 0:
            out[key] = None
            continue
        h = sum(np.bincount(x, minlength=len(names)) for x in labs) / n
        if per_replica:
            used = [x for x in labs if len(x) >= 20]
            p = np.array([np.bincount(x, minlength=len(names)) / len(x) for x in used])
            w = np.array([len(x) for x in used], float)
            if len(used) >= 2:
                var = np.sum(w[:, None] ** 2 * (p - h) ** 2, 0) / np.sum(w) ** 2
                err = np.sqrt(var * len(used) / (len(used) - 1))
            else:
                err = np.full(len(names), np.nan)
        else:
            blocks = []
            for b in range(n_blocks):
                part = [x[np.array_split(np.arange(len(x)), n_blocks)[b]] for x in labs]
                m = sum(len(x) for x in part)
                if m:
                    blocks.append(sum(np.bincount(x, minlength=len(names)) for x in part) / m)
            err = np.std(blocks, axis=0, ddof=1) / np.sqrt(len(blocks))
        out[key] = {"frames": int(n), **{nm: {"population": float(h[i]),
                                              "error": float(err[i])}
                                         for i, nm in enumerate(names) if h[i] > 0 or
                                         nm in ("C7eq", "C5", "C7ax")}}
    return out


def side_crossings(sides: list[np.ndarray]) -> int:
    """Number of changes of φ side over all trajectories (frame to frame)."""
    return int(sum(np.sum(np.abs(np.diff(sd))) for sd in sides))


def analyze(args) -> dict:
    import csv

    from biojax.core.units import KB
    from biojax.sampling import free_energy as fe

    pt_dir, plain_dir = os.path.join(args.out, "pt"), os.path.join(args.out, "plain")
    drop = int(round(args.drop_ps * 1000 / (100 * args.timestep_fs)))
    rex = json.load(open(os.path.join(pt_dir, "replica_exchange.json")))
    temps = rex["temperatures_K"]
    n_rungs = len(temps)
    R = len(rex["walker_in_slot"])

    def folder(base, r, n):
        return base if n == 1 else os.path.join(base, f"replica_{r:03d}")

    def energies(f, steps):
        """Potential energy (eV) of each frame from the observables (rows at frame steps)."""
        with open(os.path.join(f, "observables.csv")) as fh:
            rows = {int(float(r["step"])): r for r in csv.DictReader(fh)}
        return np.array([float(rows[int(s)]["potential_energy"])
                         + float(rows[int(s)].get("terms_energy") or 0.0) for s in steps])

    # PT: every slot (rung r % n_rungs); the lowest rung directly, and all rungs by MBAR
    ang, lab, ene, rung = [], [], [], []
    for r in range(R):
        a, steps = replica_angles(folder(pt_dir, r, R), drop)
        ang.append(a), lab.append(basin_of(a)), ene.append(energies(folder(pt_dir, r, R),
                                                                     steps))
        rung.append(r % n_rungs)
    low = [i for i in range(R) if rung[i] == 0]
    pt_low = populations([lab[i] for i in low])
    # MBAR over the ladder: states = rungs (all frames of rung k pooled), target T_min
    order = [[i for i in range(R) if rung[i] == k] for k in range(n_rungs)]
    E_k = [np.concatenate([ene[i] for i in idx]) for idx in order]
    u_kn, N_k = fe.temperature_u_kn(E_k, temps)
    t0 = time.time()
    mb = fe.mbar(u_kn, N_k)
    mbar_s = time.time() - t0
    lab_all = np.concatenate([np.concatenate([lab[i] for i in idx]) for idx in order])
    ang_all = np.concatenate([np.concatenate([ang[i] for i in idx]) for idx in order])
    w0 = np.exp(mb.log_w_nk[:, 0])
    names = list(BASINS) + ["other"]
    pt_mbar = {n: float(np.sum(w0[lab_all == i])) for i, n in enumerate(names)}
    # plain
    Rp = args.replicas
    plain_lab, plain_ang, plain_energy = [], [], []
    if os.path.isdir(plain_dir):
        for r in range(Rp):
            a, steps = replica_angles(folder(plain_dir, r, Rp), drop)
            plain_ang.append(a), plain_lab.append(basin_of(a))
            plain_energy.append(float(np.mean(energies(folder(plain_dir, r, Rp), steps))))
    plain = populations(plain_lab) if plain_lab else None
    # within each φ side (plain MD mixes within a side in ps, but crosses between sides
    # rarely: its side populations are those of its starts): conditional populations,
    # PT 300 K rung (block errors) vs plain (spread over replicas), z-scores
    pt_sides = [side_of(ang[i]) for i in low]
    plain_sides = [side_of(a) for a in plain_ang]
    cond_pt = conditional([lab[i] for i in low], pt_sides, per_replica=False)
    cond_plain = conditional(plain_lab, plain_sides, per_replica=True) if plain_lab else None
    cond_cmp = {}
    if cond_plain:
        for key, d_pt in cond_pt.items():
            d_pl = cond_plain.get(key)
            if not d_pt or not d_pl:
                continue
            cond_cmp[key] = {}
            for nm in d_pt:
                if nm == "frames" or nm not in d_pl:
                    continue
                diff = d_pt[nm]["population"] - d_pl[nm]["population"]
                sig = float(np.hypot(d_pt[nm]["error"], d_pl[nm]["error"]))
                cond_cmp[key][nm] = {"difference": diff, "sigma": sig,
                                     "z": diff / sig if sig > 0 else None}
    side_share = {
        "pt_lowest_rung": float(np.mean(np.concatenate(pt_sides))),
        "pt_mbar": float(np.sum(w0[np.concatenate([side_of(a) for a in [ang_all]])
                                   == 1])),
        "plain": float(np.mean(np.concatenate(plain_sides))) if plain_sides else None,
        "plain_replicas_on_alphaL_side_at_start": [int(sd[0]) for sd in plain_sides],
        "plain_side_crossings": side_crossings(plain_sides) if plain_sides else None,
        "pt_lowest_rung_side_crossings": side_crossings(pt_sides)}
    compare = {}
    if plain:
        for n in names:
            d = pt_low[n]["population"] - plain[n]["population"]
            s = np.hypot(pt_low[n]["error"], plain[n]["error"])
            compare[n] = {"difference": d, "sigma": float(s),
                          "z": float(d / s) if s > 0 else None}
    # phi profiles (kT at T_min) with block errors
    kT = KB * temps[0]
    phi_low = np.concatenate([ang[i][:, 0] for i in low])
    f_pt = fe.weighted_fes(phi_low, None, 36, [(-180, 180)], temps[0], n_blocks=5)
    f_mbar = fe.weighted_fes(ang_all[:, 0], mb.log_w_nk[:, 0], 36, [(-180, 180)], temps[0],
                             n_blocks=5)
    curves = {"PT lowest rung": (f_pt.free_energy / kT, f_pt.error / kT),
              "PT all rungs, MBAR": (f_mbar.free_energy / kT, f_mbar.error / kT)}
    if plain_ang:
        f_pl = fe.weighted_fes(np.concatenate([a[:, 0] for a in plain_ang]), None, 36,
                               [(-180, 180)], temps[0], n_blocks=5)
        curves["plain"] = (f_pl.free_energy / kT, f_pl.error / kT)
    plot = fe.plot_fes_1d(f_pt.centers[0], curves, os.path.join(args.out, "phi_fes.png"),
                          "φ (degrees)", f"F (kT at {temps[0]:.0f} K)")
    # convergence of the lowest rung's phi profile vs simulated time (PT) and of the
    # pooled plain replicas (frames in time order: t = frame time in each replica)
    frame_ps = 100 * args.timestep_fs / 1000
    conv = {"pt_lowest_rung": fe.fes_convergence(
        phi_low, None, (np.arange(phi_low.size) + drop) * frame_ps, 8, 36, [(-180, 180)],
        temps[0])}
    if plain_ang:
        order_t = np.concatenate([np.arange(len(a)) for a in plain_ang])
        by_time = np.argsort(order_t, kind="stable")
        conv["plain"] = fe.fes_convergence(
            np.concatenate([a[:, 0] for a in plain_ang])[by_time], None,
            (order_t[by_time] + drop) * frame_ps, 8, 36, [(-180, 180)], temps[0])
    conv_plot = fe.plot_convergence(conv["pt_lowest_rung"],
                                    os.path.join(args.out, "phi_convergence.png"))
    walkers = os.path.join(args.out, "walkers.png")
    _plot_walkers(pt_dir, R, walkers)
    result = {
        "temperatures_K": temps, "replicas": R, "dropped_ps": args.drop_ps,
        "frames_per_replica_analysed": [len(x) for x in lab],
        "exchange": {k: rex[k] for k in ("rounds", "every_steps", "pairs", "round_trips",
                                          "round_trips_total")},
        "pt_lowest_rung": pt_low, "pt_mbar_at_t_min": pt_mbar,
        "mbar": {"f_k": mb.f_k.tolist(), "df_k": mb.df_k.tolist(), "seconds": mbar_s,
                 "effective_samples_t_min": fe.effective_sample_size(mb.log_w_nk[:, 0])},
        "plain": plain, "pt_minus_plain": compare,
        "alphaL_C7ax_side_share": side_share,
        "conditional_on_side": {"pt_lowest_rung": cond_pt, "plain": cond_plain,
                                "pt_minus_plain": cond_cmp},
        # diagnostic: frames with |phi| < 30 degrees (eclipsed backbone; high in energy for
        # real alanine dipeptide) and the mean potential energy (eV) per trajectory
        "phi_near_0": {
            "pt_lowest_rung": float(np.mean(np.abs(phi_low) < 30)),
            "plain_per_replica": [float(np.mean(np.abs(a[:, 0]) < 30)) for a in plain_ang]},
        "mean_potential_energy_eV": {
            "pt_per_rung": [float(np.mean(E_k[k])) for k in range(n_rungs)],
            "plain_per_replica": plain_energy},
        "convergence_phi_profile": conv,
        "time_to_1kT_ps": {k: fe.time_to_converge(v, 1.0) for k, v in conv.items()},
        "plots": [plot, walkers, conv_plot],
    }
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    return result


def _plot_walkers(pt_dir: str, R: int, path: str) -> None:
    """The rung of each walker vs time, from the ``walker`` column of every slot."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for r in range(R):
        with open(os.path.join(pt_dir, f"replica_{r:03d}", "observables.csv")) as fh:
            for row in csv.DictReader(fh):
                rows.setdefault(float(row["time_fs"]), {})[int(float(row["walker"]))] = r
    times = sorted(rows)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for w in range(min(R, 4)):
        ax.plot(np.array(times) / 1000, [rows[t].get(w, np.nan) for t in times], lw=0.8,
                label=f"walker {w}")
    ax.set_xlabel("time (ps)"), ax.set_ylabel("rung (slot)"), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["all", "pt", "plain", "analyze"], default="all")
    p.add_argument("--out", default="runs/rex_ala2")
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--rungs", type=int, default=0, help="rungs per ladder (0: = replicas)")
    p.add_argument("--ps", type=float, default=120.0, help="simulated ps per replica")
    p.add_argument("--t-min", type=float, default=300.0)
    p.add_argument("--t-max", type=float, default=450.0)
    p.add_argument("--every", type=int, default=200, help="steps between exchanges")
    p.add_argument("--timestep-fs", type=float, default=1.0)
    p.add_argument("--drop-ps", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="ala2_painn",
                   help="a model folder in examples/models (ala2_painn: GFN2-xTB labels; "
                        "ala2_ff14sb_painn: AMBER ff14SB labels)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.stage in ("all", "pt"):
        simulate(args, "pt", True)
    if args.stage in ("all", "plain"):
        simulate(args, "plain", False)
    if args.stage in ("all", "analyze"):
        print(json.dumps(analyze(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
