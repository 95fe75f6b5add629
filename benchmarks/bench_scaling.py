"""Scaling of sharded MD replicas over devices: aggregate replica throughput on 1, 2, 4
devices and the efficiency T(n) / (n · T(1)) (biojax.parallel.scaling).

    python benchmarks/bench_scaling.py [--devices 1 2 4] [--replicas 8] [--size 4]
        [--steps 1000] [--repeats 3] [--out benchmarks/results/scaling_cpu]

Strong scaling: the same R replicas of fcc argon (4·size³ atoms, Lennard-Jones, NVT
Langevin, 2 fs) split over n devices (SimulateConfig.devices = n). Each figure is the
median over ``repeats`` runs of the steps after the first (compiling) chunk. On a CPU
without several devices the script forces host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=max(devices)) before JAX starts; such
"devices" share the machine's cores, so efficiency there measures how well XLA's
per-device threads use the cores, not a real multi-device speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replica_throughput(n_devices: int, replicas: int = 8, size: int = 4,
                       steps: int = 1000, chunk_steps: int = 200, repeats: int = 3) -> dict:
    """Aggregate replica-steps/s (median over ``repeats``) of ``replicas`` LJ argon
    replicas (4·size³ atoms) sharded over ``n_devices`` devices, timed after the first
    chunk (which compiles)."""
    from ase.lattice.cubic import FaceCenteredCubic

    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn.classical import lennard_jones

    atoms = FaceCenteredCubic("Ar", size=(size,) * 3, latticeconstant=5.8)
    pot = lennard_jones([18], 3.405, 0.0103, cutoff=8.5)
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=2.0, temperature_K=120.0,
                         steps=steps, chunk_steps=chunk_steps, observe_every=10,
                         frame_every=chunk_steps, replicas=replicas, devices=n_devices,
                         plots=False)
    rates = []
    for _ in range(repeats):
        sim = Simulation(atoms, pot, cfg)
        s = sim.run(None)
        timed = s["steps_run"] - chunk_steps
        rates.append(timed * replicas / (s["wall_s"] - s["first_chunk_s"]))
    return {"replica_steps_per_s": statistics.median(rates), "runs": rates,
            "atoms": len(atoms), "replicas": replicas, "steps": steps,
            "replica_block": sim.replica_block}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--size", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "scaling_cpu"))
    args = p.parse_args(argv)
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in \
            os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                   f"platform_device_count={max(args.devices)}").strip()
    sys.path.insert(0, ROOT)
    import jax

    from benchmarks.machine import cpu_model
    from biojax import parallel

    load0 = os.getloadavg()
    details = {}

    def run(n):
        t = time.perf_counter()
        details[n] = replica_throughput(n, args.replicas, args.size, args.steps,
                                        repeats=args.repeats)
        print(f"{n} device(s): {details[n]['replica_steps_per_s']:.0f} replica-steps/s "
              f"({time.perf_counter() - t:.0f} s)", file=sys.stderr)
        return details[n]["replica_steps_per_s"]

    rows = parallel.scaling(run, args.devices)
    for r in rows:
        d = details[r["devices"]]
        r["atom_steps_per_s"] = r["throughput"] * d["atoms"]
        r["runs"] = d["runs"]
        r["replica_block"] = d["replica_block"]
    load1 = os.getloadavg()
    dev = jax.devices()[0]
    result = {
        "benchmark": "replica scaling over devices (biojax.parallel, shard_map)",
        "workload": {"system": f"fcc argon, {details[rows[0]['devices']]['atoms']} atoms, "
                               "Lennard-Jones 8.5 Å, NVT Langevin 2 fs, 120 K",
                     "replicas": args.replicas, "steps": args.steps,
                     "repeats": args.repeats, "timed": "steps after the first chunk"},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "device_kind": dev.device_kind, "platform": dev.platform,
                    "device_count": len(jax.devices()),
                    "forced_host_devices": dev.platform == "cpu",
                    "load_average_before": load0, "load_average_after": load1},
        "versions": {"jax": jax.__version__,
                     "jaxlib": getattr(__import__("jaxlib"), "__version__", "?")},
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# Replica scaling over devices ({dev.platform}, {cpu_model()}, "
             f"{os.cpu_count()} cores)", "",
             f"{result['workload']['system']}; {args.replicas} replicas split over n devices "
             f"(`devices = n`), {args.steps} steps, median of {args.repeats}; load average "
             f"{load0[0]:.1f} before, {load1[0]:.1f} after.", "",
             "| devices | replica-steps/s | atom-steps/s | speed-up | efficiency T(n)/(n·T(1)) |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['devices']} | {r['throughput']:.0f} | {r['atom_steps_per_s']:.3g} "
                     f"| {r['speedup']:.2f} | {r['efficiency']:.2f} |")
    if dev.platform == "cpu":
        lines += ["", "Forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count) "
                  f"share the {os.cpu_count()} cores, so this shows the overhead of sharding, "
                  "not a multi-device speed-up."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
