"""Cα RMSD and radius-of-gyration distributions of several villin CG runs against the
all-atom reference, side by side, with the numbers as JSON.

    python examples/cg_villin/compare.py NAME=RUN_DIR [NAME=RUN_DIR ...] \
        [--out examples/cg_villin/rmsd_rg_comparison.png]

Each RUN_DIR is a ``biojax coarse-grain`` output folder (its ``simulate/replica_*/
trajectory.extxyz``; each replica's start frame, a reference frame, is dropped). The
reference is examples/data/villin_ca/coordinates.npy; RMSD is to its first frame after
Kabsch superposition, as ``biojax.cg.evaluate.compare`` computes it (the same function
gives the numbers). Writes the PNG and a JSON beside it.
"""

import argparse
import glob
import json
import os

import ase.io
import numpy as np

from biojax.cg import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))


def samples_of(run_dir: str) -> list[np.ndarray]:
    """Per-replica bead frames (F, B, 3) Å of a coarse-grain run, start frames dropped."""
    paths = sorted(glob.glob(os.path.join(run_dir, "simulate", "replica_*",
                                          "trajectory.extxyz")))
    if not paths:
        raise SystemExit(f"{run_dir}: no simulate/replica_*/trajectory.extxyz")
    return [np.stack([a.positions for a in ase.io.read(p, ":")[1:]]) for p in paths]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    p.add_argument("--out", default=os.path.join(HERE, "rmsd_rg_comparison.png"))
    args = p.parse_args()
    ref = np.load(os.path.join(HERE, "..", "data", "villin_ca", "coordinates.npy")).astype(
        np.float64)
    values, table = {}, {}
    for item in args.runs:
        name, _, run_dir = item.partition("=")
        samples = samples_of(run_dir)
        m = evaluate.compare(ref, samples, (), structure=True)
        v = m.pop("structure_values")
        values.setdefault("all-atom reference", v["reference"])
        values[name] = v["model"]
        table[name] = {"replicas": m["replicas"], "frames": m["frames_model"],
                       "rmsd": m["rmsd"], "rg": m["rg"]}
        print(f"{name:28s} RMSD {m['rmsd']['model_mean_A']:.2f} ± {m['rmsd']['model_std_A']:.2f}"
              f" Å (JS {m['rmsd']['js_divergence']:.3f})   Rg {m['rg']['model_mean_A']:.2f} ± "
              f"{m['rg']['model_std_A']:.2f} Å (JS {m['rg']['js_divergence']:.3f})")
    r = values["all-atom reference"]
    print(f"{'all-atom reference':28s} RMSD {r['rmsd'].mean():.2f} ± {r['rmsd'].std():.2f} Å"
          f"   Rg {r['rg'].mean():.2f} ± {r['rg'].std():.2f} Å")
    evaluate.plot_distributions(values, args.out)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(table, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
