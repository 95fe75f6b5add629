"""Calibration of ensemble force uncertainties on held-out data (issue #12, must-show).

For rMD17 ethanol (train.xyz → train/validation, test_MD.xyz → test) and the shipped
alanine-dipeptide GFN2-xTB set (one file split into train/validation/test), train a full
ensemble (K PaiNN members, one vmapped program: ``[training] ensemble = K``) and a shallow
one (one PaiNN trunk, K heads: ``[model] heads = K``) for the same number of epochs; fit
the force-uncertainty scale on the validation set (maximum likelihood) and report on the
test set: force MAE, miscalibration area before/after scaling, Gaussian NLL, and the
Spearman correlation between per-structure predicted uncertainty (mean and max per-atom
force std) and the actual per-structure force RMSE. Writes ``results.json`` and
``calibration_<sets>.png`` into ``--out`` (default examples/uncertainty/results).

    python examples/uncertainty/calibrate.py [--epochs ethanol=25,ala2_xtb=15]
        [--members 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from biojax.core.config import load
from biojax.data.graphs import GraphDataset
from biojax.learn import calibration
from biojax.nn.ensemble import batch_spread
from biojax.nn.io import load_potential
from biojax.train.config import TrainConfig
from biojax.train.loop import load_splits, train_and_evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")

SETS = {
    "ethanol": {"data": f"""
train_file = "{DATA}/rmd17_ethanol/train.xyz"
isolated_atoms = "{DATA}/rmd17_ethanol/isolated_atoms.xyz"
test_file = "{DATA}/rmd17_ethanol/test_MD.xyz"
n_train = 300
n_valid = 150
seed = 1""", "cutoff": 4.5},
    "ala2_xtb": {"data": f"""
train_file = "{DATA}/ala2_xtb.extxyz"
n_train = 200
n_valid = 100
n_test = 300
seed = 1""", "cutoff": 5.0},
}

CONFIG = """
[data]
{data}

[model]
name = "painn"
cutoff = {cutoff}
features = 32
n_interactions = 2
{heads}

[training]
epochs = {epochs}
batch_size = 8
learning_rate = 3e-3
forces_weight = 100.0
seed = 0
{ensemble}
"""


def spreads(potential, dataset, batch_size=16):
    """Per-atom σ (eV/Å), per-component force errors (eV/Å), structure index per atom."""
    fn = jax.jit(lambda p, b: batch_spread(potential, p, b))
    sig, err, gid = [], [], []
    offset = 0
    for batch in dataset.batches(batch_size):
        out = jax.device_get(fn(potential.params, batch))
        m = np.asarray(batch.node_mask) & np.asarray(batch.has_forces)
        sig.append(np.asarray(out["force_std"], np.float64)[m])
        err.append(np.asarray(out["forces"], np.float64)[m]
                   - np.asarray(batch.forces, np.float64)[m])
        gid.append(np.asarray(batch.graph_index)[m] + offset)
        offset += int(np.sum(np.asarray(batch.graph_mask)))
    return np.concatenate(sig), np.concatenate(err), np.concatenate(gid)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", default="ethanol=25,ala2_xtb=15",
                    help="epochs per data set (the same for the full and shallow ensembles)")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--work", default="/tmp/biojax_uncertainty", help="training runs")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--sets", default="ethanol,ala2_xtb")
    ap.add_argument("--kinds", default="full,shallow")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    curves = {}
    for name in args.sets.split(","):
        for kind in args.kinds.split(","):
            key = f"{name}/{kind}"
            run = os.path.join(args.work, f"{name}_{kind}")
            text = CONFIG.format(
                data=SETS[name]["data"], cutoff=SETS[name]["cutoff"],
                epochs=dict(x.split("=") for x in args.epochs.split(","))[name],
                heads=f"heads = {args.members}" if kind == "shallow" else "",
                ensemble=f"ensemble = {args.members}" if kind == "full" else "")
            os.makedirs(run, exist_ok=True)
            path = os.path.join(run, "config.toml")
            with open(path, "w") as f:
                f.write(text)
            config = load(TrainConfig, path)
            t0 = time.time()
            if not os.path.exists(os.path.join(run, "metrics.json")):
                metrics = train_and_evaluate(config, run, resume=True, log=print)
            else:
                metrics = json.load(open(os.path.join(run, "metrics.json")))
            train_s = time.time() - t0
            potential = load_potential(os.path.join(run, "model"))
            splits = load_splits(config, log=lambda *_: None)
            sets = {}
            for split in ("valid", "test"):
                data = GraphDataset(splits[split], config.cutoff, potential.species_of,
                                    potential.reference_energy)
                sets[split] = spreads(potential, data)
            scale = calibration.fit_scale(sets["valid"][0], sets["valid"][1])
            rep = calibration.report(*sets["test"], scale=scale)
            rep.update(kind=kind, members=args.members, epochs=metrics["epochs_run"],
                       training_seconds=metrics["training_seconds"],
                       n_train=metrics["n_train"], n_valid=metrics["n_valid"],
                       n_test=len(splits["test"]), scale_from="validation set",
                       valid_miscalibration_area=calibration.miscalibration_area(
                           sets["valid"][0], sets["valid"][1], scale),
                       wall_s=round(train_s, 1))
            results[key] = rep
            curves[key] = calibration.calibration_curve(sets["test"][0], sets["test"][1], scale)
            print(key, json.dumps(rep, indent=1))
            with open(results_path, "w") as f:
                json.dump(results, f, indent=2)
    write_table(results, os.path.join(args.out, "results.md"))
    if curves:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for key, (x, y) in curves.items():
            ax.plot(x, y, label=f"{key} (area {results[key]['miscalibration_area']:.3f})")
        ax.set_xlabel("expected fraction in central interval")
        ax.set_ylabel("observed fraction (test set)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, f"calibration_{args.sets.replace(',', '_')}.png"),
                    dpi=120)
    return results


def write_table(results: dict, path: str) -> None:
    """results.md: one row per data set and ensemble kind (test set, scale from valid)."""
    from biojax.bench.machine import cpu_model, load_average

    rows = ["| data | ensemble | K | epochs | train/valid/test | force MAE (meV/Å) | "
            "scale s | miscal. area raw → scaled | NLL raw → scaled | Spearman mean σ | "
            "Spearman max σ |", "|" + "---|" * 11]
    for key, r in sorted(results.items()):
        name, kind = key.split("/")
        rows.append(
            f"| {name} | {kind} | {r['members']} | {r['epochs']} | {r['n_train']}/"
            f"{r['n_valid']}/{r['n_test']} | {1000 * r['force_mae']:.1f} | {r['scale']:.2f} | "
            f"{r['miscalibration_area_raw']:.3f} → {r['miscalibration_area']:.3f} | "
            f"{r['nll_raw']:.2f} → {r['nll']:.2f} | {r['spearman_mean_sigma_vs_rmse']:.2f} | "
            f"{r['spearman_max_sigma_vs_rmse']:.2f} |")
    with open(path, "w") as f:
        f.write(f"Machine: {cpu_model()}, {os.cpu_count()} cores (shared; load "
                f"{load_average()} when written), {time.strftime('%Y-%m-%d %H:%M')}\n\n")
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
