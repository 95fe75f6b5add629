"""Cost of each bias per MD step relative to unbiased MD with the same potential: alanine
dipeptide with the shipped PaiNN model (examples/models/ala2_painn), Langevin 300 K,
R replicas in one vmapped run, biases on φ/ψ.

    python benchmarks/bench_bias.py          # -> benchmarks/results/bias_cost_cpu.{json,md}
    python benchmarks/bench_bias.py --quick         # smoke test (few steps)

Every case is timed over ``--chunks`` chunks after a compiling first one. Against load
drift on a shared machine the runs are interleaved: each round runs
U, B1, U, B2, U, …, Bn, U (U = unbiased), and a bias's cost in that round is its time over
the mean of the two unbiased runs around it; the reported ratio is the median over
``--rounds`` rounds (with the smallest and largest), next to the load average (1 min)
before every run. The peer is the same Simulation without a bias (no external engine runs
this learned potential with a bias in one program).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PI = 3.141592653589793
PHI = {"name": "dihedral", "atoms": [4, 6, 8, 14]}
PSI = {"name": "dihedral", "atoms": [6, 8, 14, 16]}
GRID2 = {"grid_min": [-PI, -PI], "grid_max": [PI, PI], "grid_bins": [72, 72]}

CASES = {
    "unbiased": [],
    "restraint (phi, psi)": [{"name": "restraint", "cv": [PHI, PSI], "kappa": 0.5,
                              "center": [-1.4, 1.2]}],
    "walls (distance)": [{"name": "walls", "cv": [{"name": "distance", "atoms": [1, 18]}],
                          "upper": 8.0, "kappa": 1.0}],
    "metad 1-D (phi, 72 bins)": [{"name": "metad", "cv": [PHI], "sigma": 0.35,
                                  "height": 0.012, "pace": 50, "bias_factor": 8.0,
                                  "grid_min": -PI, "grid_max": PI, "grid_bins": 72}],
    "metad 2-D (phi, psi, 72x72)": [{"name": "metad", "cv": [PHI, PSI], "sigma": 0.35,
                                     "height": 0.012, "pace": 50, "bias_factor": 8.0,
                                     **GRID2}],
    "metad 2-D shared walkers": [{"name": "metad", "cv": [PHI, PSI], "sigma": 0.35,
                                  "height": 0.012, "pace": 50, "bias_factor": 8.0,
                                  "walkers": "shared", **GRID2}],
    "opes 2-D (500 kernels)": [{"name": "opes", "cv": [PHI, PSI], "sigma": 0.3,
                                "barrier": 0.4, "pace": 50, "max_kernels": 500}],
    "opes 2-D (2000 kernels)": [{"name": "opes", "cv": [PHI, PSI], "sigma": 0.3,
                                 "barrier": 0.4, "pace": 50, "max_kernels": 2000}],
    "opes 2-D shared walkers (1000 kernels)": [
        {"name": "opes", "cv": [PHI, PSI], "sigma": 0.3, "barrier": 0.4, "pace": 50,
         "max_kernels": 1000, "walkers": "shared"}],
}
#: the default selection (all CASES with --cases all)
DEFAULT = ("unbiased", "restraint (phi, psi)", "walls (distance)",
           "metad 2-D (phi, psi, 72x72)", "metad 2-D shared walkers", "opes 2-D (500 kernels)",
           "opes 2-D shared walkers (1000 kernels)")


def build(bias, replicas: int, chunk: int, chunks: int):
    import ase.io

    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn.io import load_potential

    atoms = ase.io.read(os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz"))
    pot = load_potential(os.path.join(ROOT, "examples", "models", "ala2_painn"))
    cfg = default_config(timestep_fs=1.0, hydrogen_mass=4.0, temperature_K=300.0,
                         steps=chunk * (chunks + 1), chunk_steps=chunk, observe_every=50,
                         frame_every=chunk, replicas=replicas, bias=tuple(bias), plots=False)
    return Simulation(atoms, pot, cfg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=250)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", default=None,
                    help="case names separated by ; ('all': every case; default: DEFAULT; "
                    "unbiased always runs)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bias_cost_cpu"))
    args = ap.parse_args(argv)
    if args.quick:
        args.chunk, args.chunks, args.rounds = 100, 1, 1
    from biojax.bench.machine import host_info, jax_info, load_average

    names = DEFAULT if args.cases is None else (
        list(CASES) if args.cases == "all" else
        ["unbiased"] + [c.strip() for c in args.cases.split(";") if c.strip() != "unbiased"])
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    chosen = {k: CASES[k] for k in names}
    sims = {name: build(b, args.replicas, args.chunk, args.chunks) for name, b in chosen.items()}
    biased = [n for n in chosen if n != "unbiased"]
    times = {name: [] for name in chosen}
    ratios = {name: [] for name in biased}
    compile_s, load = {}, []

    def timed(name):
        load.append(load_average()[0])
        s = sims[name].run(None)
        # the first chunk of a run compiles only the first time the object runs
        steady = (s["wall_s"] - s["first_chunk_s"]) / (args.chunk * args.chunks)
        compile_s.setdefault(name, s["first_chunk_s"])
        times[name].append(steady)
        print(f"{name}: {steady * 1e3:.2f} ms/step (load {load[-1]:.1f})", flush=True)
        return steady

    for name in chosen:          # compile every case once, untimed
        timed(name)
    times = {name: [] for name in chosen}
    for rnd in range(args.rounds):
        before = timed("unbiased")
        for name in biased:
            t = timed(name)
            after = timed("unbiased")
            ratios[name].append(t / (0.5 * (before + after)))
            before = after
    rows = []
    for name in chosen:
        t = statistics.median(times[name])
        r = ratios.get(name, [1.0])
        rows.append({"case": name, "ms_per_step": t * 1e3,
                     "ms_per_replica_step": t * 1e3 / args.replicas,
                     "relative_to_unbiased": statistics.median(r),
                     "relative_min_max": [min(r), max(r)],
                     "rounds_relative": r,
                     "rounds_ms_per_step": [x * 1e3 for x in times[name]],
                     "first_chunk_s": compile_s[name]})
    result = {"replicas": args.replicas, "chunk_steps": args.chunk,
              "timed_chunks_per_round": args.chunks, "rounds": args.rounds,
              "model": "examples/models/ala2_painn (PaiNN 32 features, 2 interactions)",
              "system": "alanine dipeptide, vacuum, 22 atoms, Langevin 300 K, 1 fs, HMR 4 amu",
              "machine": host_info(), "jax": jax_info(), "load_average_1min_per_run": load,
              "cases": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    lines = [f"# Bias cost per MD step (ala2 PaiNN, {args.replicas} replicas vmapped, CPU)", "",
             f"{result['date']}; machine: {result['machine'].get('cpu_model', '')} "
             f"({result['machine'].get('cpu_cores', '')} cores), 1-min load average "
             f"{min(load):.1f}–{max(load):.1f} over the runs; {args.rounds} interleaved rounds "
             f"(U, B1, U, B2, …, U) of {args.chunks} x {args.chunk} timed steps; ratio = bias "
             "time / mean of the unbiased runs on either side, median over rounds "
             "[min, max].", "",
             "| case | ms / step (all replicas, median) | relative to unbiased, median "
             "[min, max] | first chunk incl. compile (s) |",
             "|---|---|---|---|"]
    for r in rows:
        lo, hi = r["relative_min_max"]
        lines.append(f"| {r['case']} | {r['ms_per_step']:.2f} | {r['relative_to_unbiased']:.2f}x "
                     f"[{lo:.2f}, {hi:.2f}] | {r['first_chunk_s']:.0f} |")
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
