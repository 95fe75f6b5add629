"""Coarse-grained vs atomistic MD of alanine dipeptide: throughput of the 5-bead CG model
(prior + chiral PaiNN, force-matched on CGnet data; examples/models/cg_ala2_fm) beside the
22-atom PaiNN trained on GFN2-xTB (examples/models/ala2_painn), same replica counts, each
at its usual time step (CG 2 fs, atomistic 0.5 fs), Langevin 300 K.

    python benchmarks/bench_cg_md.py             # writes benchmarks/results/cg_md.{json,md}
    python benchmarks/bench_cg_md.py --quick     # a smoke test

Each case runs in its own subprocess; timings exclude compilation (the first chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CG_MODEL = os.path.join(ROOT, "examples", "models", "cg_ala2_fm")
AA_MODEL = os.path.join(ROOT, "examples", "models", "ala2_painn")
AA_START = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")
CG_FRAMES = os.path.join(ROOT, "examples", "data", "cgnet_ala2", "ala2_coordinates.npy")


def case(kind: str, replicas: int, steps: int) -> dict:
    import ase.io
    import numpy as np

    from biojax.md.config import default_config

    chunk = steps
    cfg = default_config(ensemble="nvt-langevin", temperature_K=300.0, replicas=replicas,
                         timestep_fs=2.0 if kind == "cg" else 0.5, steps=2 * steps,
                         chunk_steps=chunk, frame_every=chunk, observe_every=chunk,
                         plots=False)
    if kind == "cg":
        from biojax.cg.mapping import to_atoms
        from biojax.cg.potential import load_cg_potential

        cg = load_cg_potential(CG_MODEL)
        x = np.load(CG_FRAMES)
        starts = [to_atoms(cg.mapping, x[1000 * r % len(x)]) for r in range(replicas)]
        sim = cg.simulation(starts, cfg)
    else:
        from biojax.md.simulation import Simulation
        from biojax.nn.io import load_potential

        sim = Simulation(ase.io.read(AA_START), load_potential(AA_MODEL), cfg)
    s = sim.run(None)
    timed = s["wall_s"] - s["first_chunk_s"]  # the second chunk, compiled
    sps = steps / timed
    n = sim.n_atoms
    return {"kind": kind, "replicas": replicas, "particles": n,
            "timestep_fs": cfg.timestep_fs, "steps_per_s": sps,
            "particle_steps_per_s": sps * n * replicas,
            "ns_per_day_per_replica": sps * cfg.timestep_fs * 86400 / 1e6,
            "aggregate_ns_per_day": sps * cfg.timestep_fs * 86400 / 1e6 * replicas,
            "first_chunk_s": s["first_chunk_s"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(**json.loads(args.case))))
        return
    sys.path.insert(0, HERE)
    from machine import cpu_model

    steps = 200 if args.quick else 2000
    rows = []
    for replicas in ((1, 8) if args.quick else (1, 16, 64)):
        for kind in ("cg", "atomistic"):
            out = subprocess.run([sys.executable, __file__, "--case", json.dumps(
                {"kind": kind, "replicas": replicas, "steps": steps})],
                capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    by = {(r["kind"], r["replicas"]): r for r in rows}
    for r in rows:
        if r["kind"] == "cg":
            aa = by[("atomistic", r["replicas"])]
            r["speedup_ns_per_day_vs_atomistic"] = r["aggregate_ns_per_day"] / \
                aa["aggregate_ns_per_day"]
    result = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                          "load_average_at_end": os.getloadavg()[0],
                          "python": platform.python_version(), "device": "cpu"},
              "date": time.strftime("%Y-%m-%d"), "steps": steps, "rows": rows}
    if args.quick:
        print(json.dumps(result, indent=1))
        return
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "cg_md.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"# CG vs atomistic MD, alanine dipeptide ({result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores, CPU, {result['date']})", "",
             "| model | replicas | particles | dt (fs) | steps/s | particle-steps/s | "
             "aggregate ns/day | CG speed-up (ns/day) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['replicas']} | {r['particles']} | "
                     f"{r['timestep_fs']:g} | {r['steps_per_s']:.0f} | "
                     f"{r['particle_steps_per_s']:.3g} | {r['aggregate_ns_per_day']:.3g} | "
                     f"{r.get('speedup_ns_per_day_vs_atomistic', float('nan')):.1f} |")
    with open(os.path.join(HERE, "results", "cg_md.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
