"""Parallel tempering against a long plain run and the exact distribution, on a system
where a plain run converges: two argon atoms whose distance feels a double well.

    python examples/replica_exchange_ala2/pt_double_well.py --out runs/pt_dw \
        [--pt-ps 400] [--plain-ps 1000] [--stage all|pt|plain|analyze]

U(r) = B ((r − c)² / a² − 1)² with B = 5 kT at 300 K, minima at 3.5 and 5.0 Å (the system
of umbrella.py; LJ switched off with ε = 1e-9 eV), Langevin 5 ps⁻¹, 5 fs, argon masses.
PT: ``[replica_exchange]`` with a geometric ladder ``--rungs`` (6) from 300 K to
``--t-max`` (1500 K, where the barrier is 1 kT), ``--ladders`` (2) independent ladders,
configurations exchanged every 200 steps (1 ps). Plain: ``--plain-replicas`` (16)
independent replicas at 300 K. Every replica starts in the left well (r = 3.5 Å).
The distance is recorded every 20 steps through a ``walls`` bias whose walls (2 and 7 Å)
are never reached (its energy column is checked to be 0: ``walls_never_acted``).

Compared at 300 K: the left-well population P(r < c) and the 25-bin histogram of r,
PT's lowest rung (block errors: ``--blocks`` (16) contiguous blocks of each lowest-rung
slot, block b of the slots pooled) vs
the plain replicas (error: spread of the per-replica values / √n) vs the exact
Boltzmann distribution p(r) ∝ r² exp(−U/kT) by quadrature; z-scores. Also: acceptance per
neighbouring pair, round trips per walker, well-to-well transitions of each run.
Writes ``pt_double_well.json`` (+ ``.md`` table) and ``pt_double_well.png``; resumes
after a kill (run again with the same ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

from biojax.core.units import KB

T0 = 300.0
KT = KB * T0
B, C, A = 5.0 * KT, 4.25, 0.75          # eV, Å, Å
EDGES = np.linspace(2.9, 5.6, 26)       # Å: histogram bins
LEFT, RIGHT = 3.75, 4.75                # Å: transition bookkeeping (cores of the wells)


def double_well(r):
    return B * ((r - C) ** 2 / A ** 2 - 1.0) ** 2


def simulate(args, name: str) -> dict:
    import ase
    import jax.numpy as jnp

    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn import classical

    pt = name == "pt"
    R = args.rungs * args.ladders if pt else args.plain_replicas
    ps = args.pt_ps if pt else args.plain_ps
    atoms = ase.Atoms("Ar2", positions=[[0, 0, 0], [3.5, 0, 0]])
    pot = classical.lennard_jones([18], 3.4, 1e-9, 3.0, None)

    def well(R, **kw):
        d = R[1] - R[0]
        return double_well(jnp.sqrt(jnp.sum(d * d)))

    chunk = args.every if pt else 1000
    steps = int(round(ps * 1000 / args.timestep_fs))
    steps -= steps % chunk
    cfg = default_config(
        replicas=R, steps=steps, timestep_fs=args.timestep_fs, temperature_K=T0,
        friction_per_ps=5.0, chunk_steps=chunk, observe_every=20, frame_every=chunk,
        check_bonds=False, check_energy=False, plots=False,
        # replica r draws PRNGKey(seed + r): runs and seeds kept apart (no shared streams)
        seed=10000 * args.seed + (0 if pt else 1000),
        bias=({"name": "walls", "label": "r", "cv": [{"name": "distance", "atoms": [0, 1]}],
               "lower": 2.0, "upper": 7.0, "kappa": 1.0},),
        replica_exchange=({"t_min": T0, "t_max": args.t_max, "n": args.rungs,
                           "every": args.every, "seed": args.seed} if pt else None))
    out = os.path.join(args.out, name)
    sim = Simulation([atoms], pot, cfg, progress=True, energy_terms=[well])
    t = time.time()
    s = sim.run(out, resume=os.path.isfile(os.path.join(out, "checkpoint.npz")))
    print(f"{name}: {s['step']} steps x {R} replicas in {time.time() - t:.0f} s",
          file=sys.stderr)
    return s


def read_r(folder: str, drop: int) -> tuple[np.ndarray, float]:
    """Distances (Å) of a replica's rows after ``drop`` rows, and the max |walls energy|."""
    with open(os.path.join(folder, "observables.csv")) as fh:
        rows = list(csv.DictReader(fh))
    r = np.array([float(x["r.cv[0]"]) for x in rows])
    e = np.array([float(x["r.energy"]) for x in rows])
    return r[drop:], float(np.max(np.abs(e)))


def exact(edges) -> tuple[np.ndarray, float]:
    """Bin probabilities of p(r) ∝ r² exp(−U/kT) and the left-well population."""
    fine = np.linspace(0.5, 9.0, 400001)
    p = np.exp(-double_well(fine) / KT) * fine ** 2
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(fine))])
    total = cum[-1]
    return np.diff(np.interp(edges, fine, cum)) / total, float(np.interp(C, fine, cum) / total)


def transitions(r: np.ndarray) -> int:
    """Well-to-well transitions: entries into the other well's core (r < 3.75 or > 4.75 Å)."""
    side = np.where(r < LEFT, -1, np.where(r > RIGHT, 1, 0))
    side = side[side != 0]
    return int(np.sum(side[1:] != side[:-1]))


def stats(series: list[np.ndarray], mode: str, n_blocks: int = 8) -> dict:
    """Left-well population and histogram with errors: ``blocks`` (block b of every
    series pooled; std over blocks / √n_blocks) or ``replicas`` (std over series / √n)."""
    def measure(parts):
        x = np.concatenate(parts)
        h, _ = np.histogram(x, EDGES)
        return np.mean(x < C), h / len(x), np.mean((x < EDGES[0]) | (x >= EDGES[-1]))

    pL, h, out = measure(series)
    if mode == "blocks":
        groups = [[np.array_split(x, n_blocks)[b] for x in series] for b in range(n_blocks)]
    else:
        groups = [[x] for x in series]
    vals = [measure(g) for g in groups]
    n = len(vals)
    return {"left_population": float(pL),
            "left_population_error": float(np.std([v[0] for v in vals], ddof=1) / np.sqrt(n)),
            "histogram": h, "histogram_error": np.std([v[1] for v in vals], 0, ddof=1)
            / np.sqrt(n), "outside_histogram": float(out), "groups": n,
            "samples": int(sum(len(x) for x in series))}


def analyze(args) -> dict:
    drop = int(round(args.drop_ps * 1000 / (20 * args.timestep_fs)))
    pt_dir, plain_dir = os.path.join(args.out, "pt"), os.path.join(args.out, "plain")
    rex = json.load(open(os.path.join(pt_dir, "replica_exchange.json")))
    temps = rex["temperatures_K"]
    n = len(temps)
    R = len(rex["walker_in_slot"])
    low = [r for r in range(R) if r % n == 0]
    pt_r, wall_e = [], 0.0
    for r in low:
        x, e = read_r(os.path.join(pt_dir, f"replica_{r:03d}"), drop)
        pt_r.append(x), (wall_e := max(wall_e, e))
    top = [read_r(os.path.join(pt_dir, f"replica_{r:03d}"), drop)[0]
           for r in range(R) if r % n == n - 1]
    plain_r = []
    for r in range(args.plain_replicas):
        x, e = read_r(os.path.join(plain_dir, f"replica_{r:03d}"), drop)
        plain_r.append(x), (wall_e := max(wall_e, e))
    P_ex, pL_ex = exact(EDGES)
    s_pt = stats(pt_r, "blocks", args.blocks)
    s_pl, s_pl_b = stats(plain_r, "replicas"), stats(plain_r, "blocks", args.blocks)

    def z(a, ea, b, eb):
        s = np.hypot(ea, eb)
        return np.where(s > 0, (a - b) / np.where(s > 0, s, 1), np.nan)

    zh_pt_pl = z(s_pt["histogram"], s_pt["histogram_error"], s_pl["histogram"],
                 s_pl["histogram_error"])
    zh_pt_ex = z(s_pt["histogram"], s_pt["histogram_error"], P_ex, 0.0)
    zh_pl_ex = z(s_pl["histogram"], s_pl["histogram_error"], P_ex, 0.0)
    ok = P_ex > 1e-3   # bins the distribution populates
    mid = 0.5 * (EDGES[1:] + EDGES[:-1])

    def chi2(zz):
        return {"chi2": float(np.nansum(zz[ok] ** 2)), "bins": int(ok.sum()),
                "max_abs_z": float(np.nanmax(np.abs(zz[ok])))}

    pop = {"exact": pL_ex,
           "pt_lowest_rung": [s_pt["left_population"], s_pt["left_population_error"]],
           "plain": [s_pl["left_population"], s_pl["left_population_error"]],
           "plain_block_error": s_pl_b["left_population_error"]}
    pop["z_pt_minus_plain"] = float(z(pop["pt_lowest_rung"][0], pop["pt_lowest_rung"][1],
                                      pop["plain"][0], pop["plain"][1]))
    pop["z_pt_minus_exact"] = float((pop["pt_lowest_rung"][0] - pL_ex) / pop["pt_lowest_rung"][1])
    pop["z_plain_minus_exact"] = float((pop["plain"][0] - pL_ex) / pop["plain"][1])
    dt_ps = 20 * args.timestep_fs / 1000
    summaries = {k: json.load(open(os.path.join(args.out, k, "summary.json")))
                 for k in ("pt", "plain")}
    result = {
        "system": "Ar2, U(r) = B((r-c)^2/a^2-1)^2, B = 5 kT(300 K), c = 4.25 A, a = 0.75 A",
        "temperature_K": T0, "timestep_fs": args.timestep_fs, "friction_per_ps": 5.0,
        "dropped_ps": args.drop_ps, "record_every_ps": dt_ps, "blocks": args.blocks,
        "pt": {"temperatures_K": temps, "ladders": rex["ladders"], "replicas": R,
               "ps_per_replica": summaries["pt"]["step"] * args.timestep_fs / 1000,
               "wall_s": summaries["pt"]["wall_s"], "every_steps": rex["every_steps"],
               "rounds": rex["rounds"],
               "pairs": [{k: p[k] for k in ("rungs", "temperatures_K", "attempts", "accepted",
                                             "acceptance", "mean_probability")}
                         for p in rex["pairs"]],
               "round_trips": rex["round_trips"], "round_trips_total": rex["round_trips_total"],
               "lowest_rung_slots": low,
               "transitions_lowest_rung": [transitions(x) for x in pt_r],
               "transitions_top_rung": [transitions(x) for x in top],
               "lowest_rung_samples": s_pt["samples"]},
        "plain": {"replicas": args.plain_replicas,
                  "ps_per_replica": summaries["plain"]["step"] * args.timestep_fs / 1000,
                  "wall_s": summaries["plain"]["wall_s"],
                  "transitions": [transitions(x) for x in plain_r],
                  "samples": s_pl["samples"]},
        "left_well_population": pop,
        "histogram": {"edges_A": EDGES.tolist(), "exact": P_ex.tolist(),
                      "pt": s_pt["histogram"].tolist(), "pt_error": s_pt["histogram_error"]
                      .tolist(), "plain": s_pl["histogram"].tolist(),
                      "plain_error": s_pl["histogram_error"].tolist(),
                      "pt_vs_plain": chi2(zh_pt_pl), "pt_vs_exact": chi2(zh_pt_ex),
                      "plain_vs_exact": chi2(zh_pl_ex),
                      "outside_range": [s_pt["outside_histogram"], s_pl["outside_histogram"]]},
        "max_abs_walls_energy_eV": wall_e, "walls_never_acted": wall_e == 0.0,
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = np.diff(EDGES)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(mid, P_ex / w, "k-", lw=1, label="exact (quadrature)")
    ax.errorbar(mid, s_pt["histogram"] / w, 2 * s_pt["histogram_error"] / w, fmt="o", ms=3,
                label=f"PT 300 K rung ({len(low)} slots)")
    ax.errorbar(mid + 0.015, s_pl["histogram"] / w, 2 * s_pl["histogram_error"] / w, fmt="s",
                ms=3, mfc="none", label=f"plain 300 K ({args.plain_replicas} replicas)")
    ax.set_xlabel("r (Å)"), ax.set_ylabel("p(r) (1/Å)"), ax.legend(fontsize=7)
    ax.set_title("Ar$_2$ double well, 300 K (error bars 2σ)", fontsize=9)
    fig.tight_layout()
    png = os.path.join(args.out, "pt_double_well.png")
    fig.savefig(png, dpi=80)
    plt.close(fig)
    result["plot"] = png
    with open(os.path.join(args.out, "pt_double_well.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    with open(os.path.join(args.out, "pt_double_well.md"), "w") as fh:
        fh.write(markdown(result))
    return result


def markdown(r: dict) -> str:
    p, pt, pl, h = r["left_well_population"], r["pt"], r["plain"], r["histogram"]
    lines = [f"PT: {pt['ladders']} ladders x {len(pt['temperatures_K'])} rungs "
             f"({', '.join(f'{t:.0f}' for t in pt['temperatures_K'])} K), "
             f"{pt['ps_per_replica']:.0f} ps per replica, exchanges every "
             f"{pt['every_steps']} steps, {pt['rounds']} rounds; plain: {pl['replicas']} "
             f"replicas x {pl['ps_per_replica']:.0f} ps at 300 K; first "
             f"{r['dropped_ps']:g} ps dropped.", "",
             "| pair (K) | attempts | acceptance | mean min(1,e^-D) |", "|---|---|---|---|"]
    for q in pt["pairs"]:
        a, b = q["temperatures_K"]
        lines.append(f"| {a:.0f}-{b:.0f} | {q['attempts']} | {q['acceptance']:.3f} | "
                     f"{q['mean_probability']:.3f} |")
    lines += ["", f"Round trips per walker: {pt['round_trips']} (total "
              f"{pt['round_trips_total']}). Well-to-well transitions: PT 300 K slots "
              f"{pt['transitions_lowest_rung']}, top rung {pt['transitions_top_rung']}; "
              f"plain replicas {pl['transitions']} (total {sum(pl['transitions'])}).", "",
              "| 300 K | P(r < 4.25 A) | z vs exact |", "|---|---|---|",
              f"| exact (quadrature) | {p['exact']:.4f} | |",
              f"| PT lowest rung | {p['pt_lowest_rung'][0]:.4f} ± {p['pt_lowest_rung'][1]:.4f}"
              f" | {p['z_pt_minus_exact']:+.2f} |",
              f"| plain | {p['plain'][0]:.4f} ± {p['plain'][1]:.4f} | "
              f"{p['z_plain_minus_exact']:+.2f} |", "",
              f"PT − plain: z = {p['z_pt_minus_plain']:+.2f}. Histograms ({h['pt_vs_plain']['bins']}"
              f" bins with p > 1e-3): PT vs plain chi2 = {h['pt_vs_plain']['chi2']:.1f} "
              f"(max |z| {h['pt_vs_plain']['max_abs_z']:.2f}); PT vs exact chi2 = "
              f"{h['pt_vs_exact']['chi2']:.1f} (max |z| {h['pt_vs_exact']['max_abs_z']:.2f}); "
              f"plain vs exact chi2 = {h['plain_vs_exact']['chi2']:.1f} (max |z| "
              f"{h['plain_vs_exact']['max_abs_z']:.2f}). Observation walls never acted: "
              f"{r['walls_never_acted']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/pt_dw")
    p.add_argument("--pt-ps", type=float, default=400.0, help="ps per PT replica")
    p.add_argument("--plain-ps", type=float, default=1000.0, help="ps per plain replica")
    p.add_argument("--rungs", type=int, default=6)
    p.add_argument("--ladders", type=int, default=2)
    p.add_argument("--t-max", type=float, default=1500.0)
    p.add_argument("--every", type=int, default=200, help="steps between exchanges")
    p.add_argument("--plain-replicas", type=int, default=16)
    p.add_argument("--drop-ps", type=float, default=20.0)
    p.add_argument("--blocks", type=int, default=16,
                   help="contiguous blocks per PT slot for the errors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timestep-fs", type=float, default=5.0)
    p.add_argument("--stage", choices=["all", "pt", "plain", "analyze"], default="all")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.stage in ("all", "pt"):
        simulate(args, "pt")
    if args.stage in ("all", "plain"):
        simulate(args, "plain")
    if args.stage in ("all", "analyze"):
        r = analyze(args)
        print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
