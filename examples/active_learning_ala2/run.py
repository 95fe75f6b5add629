"""Active learning on alanine dipeptide with GFN2-xTB labels (issue #12, must-show).

From the shipped set (examples/data/ala2_xtb.extxyz: 2000 frames of 300 K MD started in
four basins, GFN2-xTB energies and forces) this script takes

- the **initial data**: 50 frames of the β/C7eq basin only (φ < 0, ψ outside the αR band;
  basins as ``biojax.cg.evaluate.ramachandran_basins`` assigns them from φ, ψ);
- the **test set**: 150 αR and 150 αL frames (never trained on);

and compares two ways of spending the same label budget on top of the initial 50:

- **al**: ``biojax learn`` — K = 4 PaiNN ensemble, MD at 300/600/1000 K with the
  ensemble's force uncertainty inside the compiled chunk (policy "stop": a replica stops
  at its first frame above the threshold, which becomes a candidate), farthest-point
  selection on the model's per-atom features, GFN2-xTB labels (tblite), warm-started
  retraining, repeated until the budget is spent;
- **random**: the same initial model (the al run's iteration 0, copied), MD at the same
  temperatures with the uncertainty only recorded, the same number of frames drawn at
  random from its trajectories, labelled and trained on (warm start, as many epochs as
  the al run's retrainings together).

Then MD at 300 K and 600 K with the initial, the al and the random model (8 replicas,
the simulate checks off so every replica runs to the end): replicas that blow up (a
bond stretched beyond 1.6× or atoms closer than 0.7 Å, or non-finite positions) and the
fraction of frames the ensemble flags as outside its data (scaled σ above the threshold).

    python examples/active_learning_ala2/run.py prepare
    python examples/active_learning_ala2/run.py al --seed 0
    python examples/active_learning_ala2/run.py random --seed 0
    python examples/active_learning_ala2/run.py md --seed 0
    python examples/active_learning_ala2/run.py report

Every stage resumes (``biojax learn`` resumes itself; finished MD runs are skipped).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "ala2_xtb.extxyz")
PHI, PSI = [4, 6, 8, 14], [6, 8, 14, 16]  # atom indices (the recipe's dihedrals)

LEARN = """
[data]
initial = "{work}/initial.extxyz"
test_file = "{work}/test.extxyz"
n_valid = 0.1
seed = {seed}

[model]
name = "painn"
cutoff = 5.0
features = 32
n_interactions = 2

[training]
ensemble = 4
epochs = {epochs}
batch_size = 8
learning_rate = 3e-3
forces_weight = 100.0
seed = {seed}

[md]
temperatures = [300.0, 600.0, 1000.0]
replicas = {replicas}
steps = {steps}
timestep_fs = 0.5
chunk_steps = {chunk}
observe_every = 10
frame_every = 10
friction_per_ps = 1.0

[uncertainty]
policy = "{policy}"
threshold = {threshold}
calibrate = true

[select]
method = "{method}"
per_iteration = {per_iteration}
pool = "{pool}"

[label]
engine = "gfn2-xtb"
options = {{ accuracy = 1.0, electronic_temperature = 300.0 }}
workers = 1

[loop]
iterations = {iterations}
label_budget = {budget}
retrain_epochs = {retrain}
seed = {seed}
"""

SETTINGS = {"epochs": 30, "retrain": 10, "replicas": 8, "steps": 1000, "chunk": 200,
            "threshold": 0.9, "per_iteration": 24, "budget": 72}


def angles(frames) -> np.ndarray:
    """(F, 2) φ, ψ in radians."""
    from biojax.core.geometry import dihedrals_float64

    pos = np.stack([a.positions for a in frames])
    return np.asarray(dihedrals_float64(pos, np.array([PHI, PSI])))


def basins(frames) -> np.ndarray:
    from biojax.cg.evaluate import ramachandran_basins

    a = angles(frames)
    return ramachandran_basins(a[:, 0], a[:, 1])


def prepare(work: str) -> None:
    """initial.extxyz (50 β/C7eq frames) and test.extxyz (150 αR + 150 αL frames)."""
    import ase.io

    frames = ase.io.read(DATA, ":")
    b = basins(frames)
    rng = np.random.default_rng(0)
    init = rng.choice(np.flatnonzero(b == 0), 50, replace=False)
    test = np.concatenate([rng.choice(np.flatnonzero(b == k), 150, replace=False)
                           for k in (1, 2)])
    os.makedirs(work, exist_ok=True)
    ase.io.write(os.path.join(work, "initial.extxyz"), [frames[i] for i in sorted(init)])
    ase.io.write(os.path.join(work, "test.extxyz"), [frames[i] for i in test])
    counts = {name: int(np.sum(b == k)) for k, name in enumerate(
        ("beta/C7eq", "alphaR", "alphaL", "other"))}
    json.dump({"basin_counts_in_shipped_set": counts, "initial": len(init),
               "test": {"alphaR": 150, "alphaL": 150}},
              open(os.path.join(work, "split.json"), "w"), indent=1)
    print("prepared", counts)


def learn_config(work: str, seed: int, strategy: str) -> str:
    s = dict(SETTINGS)
    if strategy == "al":
        s.update(policy="stop", method="fps", pool="candidates",
                 iterations=s["budget"] // s["per_iteration"] + 2)
    else:  # one round: random frames of the initial model's MD, retrained as long as
        s.update(policy="record", method="random", pool="frames", iterations=2,  # al's
                 per_iteration=s["budget"], retrain=s["retrain"] * (s["budget"] // s[  # sum
                     "per_iteration"]))
    text = LEARN.format(work=work, seed=seed, **s)
    path = os.path.join(work, f"{strategy}_s{seed}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def run_learn(work: str, seed: int, strategy: str, overrides=()) -> dict:
    from biojax.learn.stage import run

    out = os.path.join(work, f"{strategy}_s{seed}")
    if strategy == "random" and not os.path.exists(os.path.join(out, "iter_000")):
        src = os.path.join(work, f"al_s{seed}", "iter_000")
        if not os.path.exists(os.path.join(src, "train.done")):
            sys.exit(f"run the al strategy with seed {seed} first (its initial model is reused)")
        dst = os.path.join(out, "iter_000")
        os.makedirs(dst)
        shutil.copytree(os.path.join(src, "train"), os.path.join(dst, "train"),
                        ignore=shutil.ignore_patterns("*.lock*"))
        for name in ("dataset.extxyz", "dataset.done", "train.done"):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    t = time.time()
    res = run(learn_config(work, seed, strategy), out, resume=True, progress=False,
              overrides=list(overrides))
    print(strategy, seed, res, f"{time.time() - t:.0f} s")
    return res


def random_at(work: str, seed: int, n: int, epochs: int) -> dict:
    """The random baseline at the al run's label count ``n``: ``n`` of the random run's
    labelled frames drawn at random (a random sample of a random sample) added to the
    initial data, trained from the initial model (warm start) for ``epochs`` epochs (the
    al run's retraining epochs added together)."""
    import ase.io

    from biojax.learn.loop import train_config
    from biojax.nn.io import load_potential
    from biojax.train.loop import train_and_evaluate

    out = os.path.join(work, f"random_n{n}_s{seed}")
    os.makedirs(out, exist_ok=True)
    data = os.path.join(out, "dataset.extxyz")
    if not os.path.exists(data):
        labelled = ase.io.read(os.path.join(work, f"random_s{seed}", "iter_000",
                                            "labelled.extxyz"), ":")
        if len(labelled) < n:
            sys.exit(f"the random run labelled {len(labelled)} < {n} frames")
        initial = ase.io.read(os.path.join(work, "initial.extxyz"), ":")
        pick = np.sort(np.random.default_rng([seed, n]).choice(len(labelled), n,
                                                                 replace=False))
        ase.io.write(data, initial + [labelled[i] for i in pick])
    from biojax.learn.config import load_learn_config

    cfg = load_learn_config(learn_config(work, seed, "random"))
    init = load_potential(os.path.join(work, f"al_s{seed}", "iter_000", "train", "model"))
    metrics = train_and_evaluate(train_config(cfg, data, epochs), os.path.join(out, "train"),
                                 resume=True, log=print, initial_params=init.params)
    res = {"labels": n, "epochs": epochs, "test_forces_mae": metrics["test"]["forces_mae"],
           "valid_forces_mae": metrics["valid"]["forces_mae"]}
    json.dump(res, open(os.path.join(out, "result.json"), "w"), indent=1)
    print(res)
    return res


def final_model(work: str, strategy: str, seed: int) -> str:
    return json.load(open(os.path.join(work, f"{strategy}_s{seed}", "result.json")))[
        "final_model"]


def bonds_of(atoms) -> np.ndarray:
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.1))
    return np.array([(a, b) for a, b in zip(i, j) if a < b])


def md_check(work: str, seed: int, steps: int = 1000, replicas: int = 8,
             models: str = "initial,al,random") -> dict:
    """MD at 300 and 600 K with the initial, al and random models; per run: replicas that
    blew up (first step), fraction of records with scaled σ above the threshold."""
    import ase.io

    from biojax.md.config import default_config
    from biojax.md.output import read_observables
    from biojax.md.simulation import Simulation
    from biojax.nn.io import load_potential

    path = os.path.join(work, f"md_s{seed}.json" if models == "initial,al,random" else
                        f"md_s{seed}_{models.replace(',', '_')}.json")  # one file per process
    results = json.load(open(path)) if os.path.exists(path) else {}
    starts = ase.io.read(os.path.join(work, "initial.extxyz"), ":")
    bonds = bonds_of(starts[0])
    rest = np.linalg.norm(starts[0].positions[bonds[:, 0]] - starts[0].positions[bonds[:, 1]],
                          axis=1)
    paths = {"initial": lambda: os.path.join(work, f"al_s{seed}", "iter_000", "train", "model"),
             "al": lambda: final_model(work, "al", seed),
             "random": lambda: final_model(work, "random", seed)}
    for name in models.split(","):
        model = paths[name]()
        scale = json.load(open(os.path.join(os.path.dirname(os.path.dirname(model)),
                                            "train.done")))["uncertainty_scale"]
        pot = load_potential(model)
        for temp in (300.0, 600.0):
            key = f"{name}/T{temp:g}"
            if key in results:
                continue
            out = os.path.join(work, f"md_s{seed}", f"{name}_T{temp:g}")
            cfg = default_config(
                temperature_K=temp, timestep_fs=0.5, steps=steps, chunk_steps=500,
                observe_every=10, frame_every=50, replicas=replicas, seed=seed, plots=False,
                check_energy=False, check_bonds=False, blowup_temperature_factor=1e9,
                overwrite=True, uncertainty={"policy": "record", "scale": scale})
            t = time.time()
            picks = np.random.default_rng(seed).choice(len(starts), replicas, replace=False)
            Simulation([starts[i] for i in picks], pot, cfg).run(out)
            row = {"replicas": replicas, "steps": steps, "wall_s": round(time.time() - t, 1),
                   "blown_up": {}, "above_threshold_fraction": []}
            for r in range(replicas):
                folder = os.path.join(out, f"replica_{r:03d}")
                traj = ase.io.read(os.path.join(folder, "trajectory.extxyz"), ":")
                for a in traj:
                    p = a.positions
                    d = np.linalg.norm(p[bonds[:, 0]] - p[bonds[:, 1]], axis=1)
                    dd = np.linalg.norm(p[:, None] - p[None], axis=-1) + 10 * np.eye(len(p))
                    if (not np.all(np.isfinite(p)) or np.any(d > 1.6 * rest)
                            or dd.min() < 0.7):
                        row["blown_up"][str(r)] = int(a.info["step"])
                        break
                obs = read_observables(folder)
                sig = np.asarray(obs["force_uncertainty"], float)
                stop = row["blown_up"].get(str(r))
                if stop is not None:
                    sig = sig[np.asarray(obs["step"]) < stop]
                row["above_threshold_fraction"].append(
                    float(np.mean(~(sig <= SETTINGS["threshold"]))) if sig.size else 1.0)
                b = basins(traj if stop is None else [a for a in traj
                                                      if a.info["step"] < stop])
                row.setdefault("basin_fractions", []).append(
                    [float(np.mean(b == k)) for k in range(4)] if b.size else None)
            results[key] = row
            print(key, {k: v for k, v in row.items() if k != "basin_fractions"}, flush=True)
            json.dump(results, open(path, "w"), indent=1)
    return results


def report(work: str, out: str) -> dict:
    """results.json, results.md and learning_curves.png from every finished run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biojax.bench.machine import load_average

    res = {"settings": SETTINGS, "split": json.load(open(os.path.join(work, "split.json"))),
           "runs": {}, "md": {}}
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for strategy, style in (("al", "o-"), ("random", "s--")):
        for d in sorted(glob.glob(os.path.join(work, f"{strategy}_s*"))):
            if not os.path.isdir(d) or not d.rsplit("_s", 1)[1].isdigit():
                continue
            seed = int(d.rsplit("_s", 1)[1])
            log = [json.loads(x) for x in open(os.path.join(d, "log.jsonl"))]
            curve = [(50 + h["labels_before"], h["train"]["test_forces_mae"],
                      h["train"]["valid_forces_mae"]) for h in log]
            done = os.path.exists(os.path.join(d, "result.json"))
            res["runs"][f"{strategy}/s{seed}"] = {
                "curve": curve, "finished": done,
                "result": json.load(open(os.path.join(d, "result.json"))) if done else None,
                "iterations": [{k: h.get(k) for k in ("iteration", "labels_before", "md",
                                                      "select", "label")} for h in log]}
            ax.plot([c[0] for c in curve], [c[1] for c in curve], style,
                    label=f"{strategy} seed {seed}")
    for path in sorted(glob.glob(os.path.join(work, "random_n*_s*", "result.json"))):
        r = json.load(open(path))
        name = os.path.basename(os.path.dirname(path))
        res["runs"][name] = r
        ax.plot([50 + r["labels"]], [r["test_forces_mae"]], "kD",
                label=f"random, al's label count ({name})")
    for path in sorted(glob.glob(os.path.join(work, "md_s*.json"))):
        res["md"].update(json.load(open(path)))
    ax.set_xlabel("labelled structures (50 initial + selected)")
    ax.set_ylabel("force MAE on αR/αL test frames (meV/Å)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(out, exist_ok=True)
    fig.savefig(os.path.join(out, "learning_curves.png"), dpi=120)
    res["written"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["load_average_when_written"] = load_average()
    json.dump(res, open(os.path.join(out, "results.json"), "w"), indent=1)
    print(json.dumps({k: v.get("curve", v) for k, v in res["runs"].items()}, indent=1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=("prepare", "al", "random", "random_at", "md", "report"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="al/random: SECTION.KEY=VALUE (e.g. loop.iterations=3 to stop a "
                         "run early: the stopping rule may change on --resume)")
    ap.add_argument("--labels", type=int, help="random_at: the al run's label count")
    ap.add_argument("--epochs", type=int, help="random_at: the al run's retraining epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/biojax_al_ala2")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--md-steps", type=int, default=1000)
    ap.add_argument("--models", default="initial,al,random", help="md stage: which models")
    args = ap.parse_args(argv)
    work = os.path.abspath(args.work)
    if args.stage == "prepare":
        prepare(work)
    elif args.stage in ("al", "random"):
        run_learn(work, args.seed, args.stage, args.overrides)
    elif args.stage == "random_at":
        random_at(work, args.seed, args.labels, args.epochs)
    elif args.stage == "md":
        md_check(work, args.seed, args.md_steps, models=args.models)
    else:
        report(work, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
