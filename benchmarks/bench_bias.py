"""Cost of each bias per MD step relative to unbiased MD with the same potential: alanine
dipeptide with the shipped PaiNN model (examples/models/ala2_painn), Langevin 300 K,
R replicas in one vmapped run, biases on φ/ψ.

    python benchmarks/bench_bias.py          # -> benchmarks/results/bias_cost_cpu.{json,md}
    python benchmarks/bench_bias.py --quick         # smoke test (few steps)

Every case is timed over ``--chunks`` chunks after a compiling first one, in rounds that
cycle through the cases (``--rounds``), so a change of machine load hits every case
alike; the reported time per step is the median over rounds. The peer is the same
Simulation without a bias (no external engine runs this learned potential with a bias
in one program).
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
}


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
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", default=None,
                    help="case names separated by ; (default: all; unbiased always runs)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bias_cost_cpu"))
    args = ap.parse_args(argv)
    if args.quick:
        args.chunk, args.chunks, args.rounds = 100, 1, 1
    from biojax.bench.machine import host_info, jax_info, load_average

    chosen = CASES if args.cases is None else {
        k: v for k, v in CASES.items()
        if k == "unbiased" or any(c.strip() == k for c in args.cases.split(";"))}
    sims = {name: build(b, args.replicas, args.chunk, args.chunks) for name, b in chosen.items()}
    times = {name: [] for name in chosen}
    compile_s = {}
    load = [load_average()]
    for rnd in range(args.rounds):
        for name, sim in sims.items():
            s = sim.run(None)
            # the first chunk of a run compiles only the first time the object runs
            steady = (s["wall_s"] - s["first_chunk_s"]) / (args.chunk * args.chunks)
            if rnd == 0:
                compile_s[name] = s["first_chunk_s"]
            times[name].append(steady)
            print(f"round {rnd} {name}: {steady * 1e3:.2f} ms/step", flush=True)
        load.append(load_average())
    base = statistics.median(times["unbiased"])
    rows = []
    for name in chosen:
        t = statistics.median(times[name])
        rows.append({"case": name, "ms_per_step": t * 1e3,
                     "ms_per_replica_step": t * 1e3 / args.replicas,
                     "relative_to_unbiased": t / base,
                     "rounds_ms_per_step": [x * 1e3 for x in times[name]],
                     "first_chunk_s": compile_s[name]})
    result = {"replicas": args.replicas, "chunk_steps": args.chunk,
              "timed_chunks_per_round": args.chunks, "rounds": args.rounds,
              "model": "examples/models/ala2_painn (PaiNN 32 features, 2 interactions)",
              "system": "alanine dipeptide, vacuum, 22 atoms, Langevin 300 K, 1 fs, HMR 4 amu",
              "machine": host_info(), "jax": jax_info(), "load_average_per_round": load,
              "cases": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    lines = [f"# Bias cost per MD step (ala2 PaiNN, {args.replicas} replicas vmapped, CPU)", "",
             f"{result['date']}; machine: {result['machine'].get('cpu_model', '')} "
             f"({result['machine'].get('cpu_cores', '')} cores), load average per round "
             f"{[round(x[0], 1) for x in load]}; median of {args.rounds} rounds of "
             f"{args.chunks} x {args.chunk} steps.", "",
             "| case | ms / step (all replicas) | relative to unbiased | first chunk (s) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['ms_per_step']:.2f} | {r['relative_to_unbiased']:.2f}x "
                     f"| {r['first_chunk_s']:.0f} |")
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
