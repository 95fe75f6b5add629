"""Side-by-side φ/ψ free-energy surfaces and the numbers of several coarse-grain runs.

    python examples/cg_ala2/compare.py runs/cg_ala2_prior runs/cg_ala2_fm runs/cg_ala2_re \
        --out examples/cg_ala2

Reads each run's ``histograms.npz`` and ``summary.json`` (written by ``biojax
coarse-grain``) and writes ``fes_comparison.png`` (reference first) and ``results.json``.
"""

import argparse
import json
import os

import numpy as np

from biojax.cg.evaluate import plot_fes_side_by_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="coarse-grain run directories")
    parser.add_argument("--out", default="examples/cg_ala2")
    args = parser.parse_args()
    panels, results = {}, {}
    for run in args.runs:
        summary = json.load(open(os.path.join(run, "summary.json")))
        hist = np.load(os.path.join(run, "histograms.npz"))
        if not panels:
            panels["reference (all-atom, mapped)"] = hist["reference"]
        panels[f"CG {summary['method']}"] = hist["model"]
        ev = summary["evaluation"]
        results[summary["method"]] = {
            "js_divergence_20x20": ev["js_divergence"],
            "reference_split_half_js": ev["reference_split_half_js"],
            "fes_rmse_kT": ev["fes_rmse_kT"], "basins": ev["basins"],
            "held_out_force_rmse_kcal_mol_A": summary.get("held_out_forces", {}).get(
                "rmse_kcal_mol_A"),
            "cg_md": summary.get("simulation"), "wall_s": summary.get("wall_s"),
            "run": run}
    os.makedirs(args.out, exist_ok=True)
    print(plot_fes_side_by_side(panels, os.path.join(args.out, "fes_comparison.png")))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    for method, r in results.items():
        b = r["basins"]
        print(f"{method:18s} JS {r['js_divergence_20x20']:.4f}  RMSE {r['fes_rmse_kT']:.2f} kT  "
              + "  ".join(f"{k} {v['model']:.3f}±{v['model_error']:.3f}" for k, v in b.items()))


if __name__ == "__main__":
    main()
