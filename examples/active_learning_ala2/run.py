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
features = {features}
n_interactions = {interactions}

[training]
ensemble = 4
epochs = {epochs}
batch_size = {batch}
learning_rate = 3e-3
forces_weight = 100.0
seed = {seed}

[md]
temperatures = {temperatures}
replicas = {replicas}
steps = {steps}
timestep_fs = 0.5
chunk_steps = {chunk}
observe_every = 10
frame_every = {frame_every}
friction_per_ps = 1.0

[uncertainty]
policy = "{policy}"
threshold = {threshold}
calibrate = true

[select]
method = "{method}"
per_iteration = {per_iteration}
pool = "{pool}"
max_uncertainty = {max_uncertainty}

[label]
engine = "gfn2-xtb"
options = {{ accuracy = 1.0, electronic_temperature = 300.0 }}
workers = {workers}

[loop]
iterations = {iterations}
label_budget = {budget}
retrain_epochs = {retrain}
time_budget_minutes = {time_minutes}
seed = {seed}
"""

# Settings per machine ("profile"). "cpu": the shared 2-core CPU of session 6 (the results
# in README.md); "gpu": one H200 shared by 3 seeds (gpu_run.sh); "tiny": a smoke run of
# the whole pipeline in a minute or two on one CPU core (checks the plumbing only).
PROFILES = {
    "cpu": {"features": 32, "interactions": 2, "epochs": 30, "retrain": 10, "batch": 8,
            "temperatures": [300.0, 600.0, 1000.0], "replicas": 8, "steps": 1000,
            "chunk": 200, "frame_every": 10, "policy": "stop", "threshold": 0.9,
            "per_iteration": 24, "budget": 72, "workers": 1, "max_uncertainty": 0.0,
            "md_steps": 1000, "md_replicas": 8, "md_chunk": 500},
    "gpu": {"features": 64, "interactions": 2, "epochs": 300, "retrain": 60, "batch": 8,
            "temperatures": [300.0, 500.0, 700.0, 1000.0], "replicas": 16, "steps": 2000,
            "chunk": 1000, "frame_every": 40, "policy": "flag", "threshold": 0.5,
            "per_iteration": 84, "budget": 250, "workers": 4, "max_uncertainty": 2.0,
            "md_steps": 2000, "md_replicas": 16, "md_chunk": 1000},
    # the 300-label must-show on the 2-core CPU (session 8): 3 seeds on 2 cores in 40 min
    "cpu300": {"features": 32, "interactions": 2, "epochs": 100, "retrain": 25, "batch": 8,
               "temperatures": [300.0, 500.0, 700.0, 1000.0], "replicas": 8, "steps": 1000,
               "chunk": 500, "frame_every": 20, "policy": "flag", "threshold": 0.5,
               "per_iteration": 84, "budget": 250, "workers": 1, "max_uncertainty": 2.0,
               "md_steps": 1000, "md_replicas": 8, "md_chunk": 500},
    "tiny": {"features": 8, "interactions": 1, "epochs": 2, "retrain": 1, "batch": 8,
             "temperatures": [300.0, 1000.0], "replicas": 2, "steps": 40, "chunk": 20,
             "frame_every": 10, "policy": "flag", "threshold": 0.5,
             "per_iteration": 4, "budget": 8, "workers": 2, "max_uncertainty": 2.0,
             "md_steps": 20, "md_replicas": 2, "md_chunk": 20},
}
SETTINGS = PROFILES["cpu"]  # the session-6 results (README) were run with these


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


def learn_config(work: str, seed: int, strategy: str, profile: str = "cpu",
                 time_minutes: float = 0.0) -> str:
    """Write the learn TOML of ``strategy`` ("al", or "random": the one-round random run
    of session 6) for ``seed`` with the ``profile``'s settings; returns its path."""
    s = dict(PROFILES[profile])
    if strategy == "al":
        s.update(method="fps", pool="candidates",
                 iterations=s["budget"] // s["per_iteration"] + 2)
    else:  # one round: random frames of the initial model's MD, retrained as long as
        s.update(policy="record", method="random", pool="frames", iterations=2,  # al's
                 max_uncertainty=0.0,
                 per_iteration=s["budget"], retrain=s["retrain"] * (s["budget"] // s[  # sum
                     "per_iteration"]))
    s["temperatures"] = json.dumps([float(t) for t in s["temperatures"]])
    text = LEARN.format(work=work, seed=seed, time_minutes=float(time_minutes), **s)
    path = os.path.join(work, f"{strategy}_s{seed}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def run_learn(work: str, seed: int, strategy: str, overrides=(), profile: str = "cpu",
              time_minutes: float = 0.0) -> dict:
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
    res = run(learn_config(work, seed, strategy, profile, time_minutes), out, resume=True,
              progress=False,
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
             models: str = "initial,al,random", paths: dict | None = None,
             chunk: int = 500, threshold: float | None = None, deadline: float = 0.0,
             results_path: str | None = None, order=None) -> dict:
    """MD at 300 and 600 K with the initial, al and random models; per run: replicas that
    blew up (first step), fraction of records with scaled σ above the threshold, and the
    fraction of frames in each basin. ``paths``: {name: model directory} (default: the
    session-6 layout); ``order``: [(name, T)] to run (default: every model at 300 then
    600 K); ``deadline`` (time.time(); 0: none): no run starts after it."""
    import ase.io

    from biojax.md.config import default_config
    from biojax.md.output import read_observables
    from biojax.md.simulation import Simulation
    from biojax.nn.io import load_potential

    threshold = SETTINGS["threshold"] if threshold is None else threshold
    path = results_path or os.path.join(
        work, f"md_s{seed}.json" if models == "initial,al,random" else
        f"md_s{seed}_{models.replace(',', '_')}.json")  # one file per process
    results = json.load(open(path)) if os.path.exists(path) else {}
    starts = ase.io.read(os.path.join(work, "initial.extxyz"), ":")
    bonds = bonds_of(starts[0])
    rest = np.linalg.norm(starts[0].positions[bonds[:, 0]] - starts[0].positions[bonds[:, 1]],
                          axis=1)
    if paths is None:
        paths = {"initial": lambda: os.path.join(work, f"al_s{seed}", "iter_000", "train",
                                                 "model"),
                 "al": lambda: final_model(work, "al", seed),
                 "random": lambda: final_model(work, "random", seed)}
    else:
        paths = {k: (lambda v=v: v) for k, v in paths.items()}
    if order is None:
        order = [(name, t) for name in models.split(",") for t in (300.0, 600.0)]
    loaded = {}
    for name, temp in order:
        key = f"{name}/T{temp:g}"
        if key in results:
            continue
        if deadline and time.time() > deadline:
            print(f"md check {key}: not run (out of time)", flush=True)
            continue
        if name not in loaded:
            model = paths[name]()
            scale = json.load(open(os.path.join(os.path.dirname(os.path.dirname(model)),
                                                "train.done")))["uncertainty_scale"]
            loaded[name] = (load_potential(model), scale)
        pot, scale = loaded[name]
        out = os.path.join(work, f"md_s{seed}", f"{name}_T{temp:g}")
        cfg = default_config(
            temperature_K=temp, timestep_fs=0.5, steps=steps, chunk_steps=min(chunk, steps),
            observe_every=10, frame_every=50 if steps % 50 == 0 else 10,
            replicas=replicas, seed=seed, plots=False,
            check_energy=False, check_bonds=False, blowup_temperature_factor=1e9,
            overwrite=True, uncertainty={"policy": "record", "scale": scale})
        t = time.time()
        picks = np.random.default_rng(seed).choice(len(starts), replicas,
                                                   replace=len(starts) < replicas)
        summary = Simulation([starts[i] for i in picks], pot, cfg).run(out)
        row = {"replicas": replicas, "steps": steps, "wall_s": round(time.time() - t, 1),
               "first_chunk_s": round(float(summary.get("first_chunk_s") or 0), 1),
               "scale": scale, "blown_up": {}, "above_threshold_fraction": []}
        for r in range(replicas):
            folder = out if replicas == 1 else os.path.join(out, f"replica_{r:03d}")
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
                float(np.mean(~(sig <= threshold))) if sig.size else 1.0)
            b = basins(traj if stop is None else [a for a in traj
                                                  if a.info["step"] < stop])
            row.setdefault("basin_fractions", []).append(
                [float(np.mean(b == k)) for k in range(4)] if b.size else None)
        results[key] = row
        print(key, {k: v for k, v in row.items() if k != "basin_fractions"}, flush=True)
        json.dump(results, open(path, "w"), indent=1)
        if deadline:  # a timed run (gpu_run.sh): only the summary is kept
            shutil.rmtree(out, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------------------
# The timed pipeline (gpu_run.sh): per seed, al with the whole budget, then the random
# baseline at each of al's label counts, then the MD check; several seeds side by side.

BASIN_NAMES = ("beta/C7eq", "alphaR", "alphaL", "other")


def _basin_counts(frames) -> dict:
    if not len(frames):
        return {n: 0 for n in BASIN_NAMES}
    b = basins(frames)
    return {n: int(np.sum(b == k)) for k, n in enumerate(BASIN_NAMES)}


def _train_warm(cfg, data: str, folder: str, epochs: int, initial_params) -> dict:
    """Train ``cfg``'s model on ``data`` from ``initial_params`` for ``epochs`` epochs in
    ``folder``/train (as one al retraining) and write ``folder``/train.done with the
    validation-fitted uncertainty scale (read by md_check)."""
    from biojax.learn.loop import fitted_scale, train_config
    from biojax.nn.io import load_potential
    from biojax.train.loop import load_splits, train_and_evaluate

    done = os.path.join(folder, "train.done")
    if os.path.exists(done):
        return json.load(open(done))
    tcfg = train_config(cfg, data, epochs)
    m = train_and_evaluate(tcfg, os.path.join(folder, "train"), resume=True,
                           log=lambda *_: None, initial_params=initial_params)
    pot = load_potential(os.path.join(folder, "train", "model"))
    scale = fitted_scale(pot, load_splits(tcfg, log=lambda *_: None)["valid"])
    info = {"n_train": m["n_train"], "epochs": m["epochs_run"],
            "training_seconds": m["training_seconds"],
            "test_forces_mae": m["test"]["forces_mae"],
            "valid_forces_mae": m["valid"]["forces_mae"], "uncertainty_scale": float(scale)}
    json.dump(info, open(done, "w"), indent=1)
    return info


def random_chain(work: str, seed: int, profile: str, counts, deadline: float = 0.0,
                 workers: int = 2) -> list:
    """The random baseline at each of al's label counts ``counts`` (labels added to the
    initial 50): frames drawn at random (one seeded permutation, so each set holds the
    previous one) from every trajectory frame of the initial model's MD (al's iteration
    0 exploration, all temperatures), labelled with GFN2-xTB in ``workers`` processes, and
    trained exactly as al's retrainings: warm start from the previous point's model,
    ``retrain`` epochs each. A failed label counts as a spent label, as in al.
    Returns [{labels, test_forces_mae, ...}] per point reached before ``deadline``."""
    import ase.io

    from biojax.learn.config import load_learn_config
    from biojax.learn.label import label_parallel
    from biojax.learn.loop import _plain_atoms
    from biojax.md.output import replica_dir
    from biojax.nn.io import load_potential

    s = PROFILES[profile]
    cfg = load_learn_config(os.path.join(work, f"al_s{seed}.toml"))
    al0 = os.path.join(work, f"al_s{seed}", "iter_000")
    out = os.path.join(work, f"randomchain_s{seed}")
    os.makedirs(out, exist_ok=True)
    lab_path = os.path.join(out, "labelled.json")
    if not os.path.exists(lab_path):
        pool = []
        for temp in cfg.temperatures:
            R = int(cfg.simulate_config(temp, 0).replicas)
            for r in range(R):
                p = os.path.join(replica_dir(os.path.join(al0, "md", f"T{temp:g}"), r, R),
                                 "trajectory.extxyz")
                if os.path.exists(p) and os.path.getsize(p):
                    pool += [_plain_atoms(a, temperature_K=temp, replica=r,
                                          step=int(a.info.get("step", -1)))
                             for a in ase.io.read(p, ":")]
        n = max(counts)
        perm = np.random.default_rng([seed, 12]).permutation(len(pool))[:n]
        frames = [pool[int(i)] for i in perm]
        labelled, failures = label_parallel(frames, "gfn2-xtb", dict(
            accuracy=1.0, electronic_temperature=300.0), workers=workers)
        failed = {f["index"] for f in failures}
        ok = [i for i in range(len(frames)) if i not in failed]
        ase.io.write(os.path.join(out, "labelled.extxyz"), labelled)
        json.dump({"pool": len(pool), "attempted": len(frames),
                   "ok": ok, "failed": sorted(failed),
                   "temperatures": [frames[i].info["temperature_K"] for i in ok]},
                  open(lab_path, "w"), indent=1)
    info = json.load(open(lab_path))
    labelled = ase.io.read(os.path.join(out, "labelled.extxyz"), ":") if info["ok"] else []
    initial = ase.io.read(os.path.join(work, "initial.extxyz"), ":")
    params = load_potential(os.path.join(al0, "train", "model")).params
    points = []
    for k, n in enumerate(counts):
        if deadline and time.time() > deadline:
            print(f"random chain seed {seed}: stopped before {n} labels (out of time)",
                  flush=True)
            break
        folder = os.path.join(out, f"step_{k + 1:03d}")
        os.makedirs(folder, exist_ok=True)
        keep = sum(1 for i in info["ok"] if i < n)  # successful labels among the first n
        chosen = labelled[:keep]
        data = os.path.join(folder, "dataset.extxyz")
        if not os.path.exists(data):
            ase.io.write(data, initial + chosen)
        t = time.time()
        res = _train_warm(cfg, data, folder, s["retrain"], params)
        params = load_potential(os.path.join(folder, "train", "model")).params
        points.append({"labels_added": n, "labelled_ok": keep,
                       "basins": _basin_counts(chosen), **res,
                       "wall_s": round(time.time() - t, 1)})
        json.dump(points, open(os.path.join(out, "points.json"), "w"), indent=1)
        print(f"random chain seed {seed}: {n} labels, test F MAE "
              f"{res['test_forces_mae']:.1f} meV/A", flush=True)
    return points


def al_rows(work: str, seed: int, res: dict) -> list:
    """Fill ``res["al"]`` (one row per al iteration: labels, αR/αL and validation force
    MAE, the exploration MD, the chosen frames' basins and temperatures, the selection
    and labelling counts) and ``res["al_result"]`` from the al run's files; returns the
    run's log.jsonl lines."""
    s = PROFILES[res["profile"]]
    al_dir = os.path.join(work, f"al_s{seed}")
    log_path = os.path.join(al_dir, "log.jsonl")
    log = [json.loads(x) for x in open(log_path)] if os.path.exists(log_path) else []
    res["al"] = []
    for h in log:
        folder = os.path.join(al_dir, f"iter_{h['iteration']:03d}")
        sel = os.path.join(folder, "selected.extxyz")
        row = {"labels_added": h["labels_before"], "test_forces_mae": h["train"].get(
            "test_forces_mae"), "valid_forces_mae": h["train"].get("valid_forces_mae"),
            "uncertainty_scale": h["train"].get("uncertainty_scale"),
            "training_seconds": h["train"].get("training_seconds")}
        if "md" in h:
            row["md"] = {k: {"steps": v.get("steps"), "blew_up": bool(v.get("blew_up")),
                             "candidates": v.get("candidates"), "wall_s": v.get("wall_s")}
                         for k, v in h["md"]["runs"].items()}
        if os.path.exists(sel):
            import ase.io

            frames = ase.io.read(sel, ":")
            row["selected"] = len(frames)
            row["selected_basins"] = _basin_counts(frames)
            row["selected_temperatures"] = {str(t): sum(1 for a in frames if a.info.get(
                "temperature_K") == t) for t in s["temperatures"]}
        for key in ("select", "label"):  # pool size, above the trust bound; xTB failures
            if key in h:
                row[key] = h[key]
        res["al"].append(row)
    if os.path.exists(os.path.join(al_dir, "result.json")):
        res["al_result"] = json.load(open(os.path.join(al_dir, "result.json")))
    return log


def seed_pipeline(work: str, seed: int, profile: str, t_end: float,
                  fractions=(0.5, 0.62)) -> dict:
    """One seed of the must-show within the wall-clock end ``t_end`` (time.time()): al
    (biojax learn, its time budget ``fractions[0]`` of the span; a round that has begun
    finishes), the random chain at al's label counts (no new training after
    ``fractions[1]`` of the span, or 15 % of it after al ended), the MD check (no new run after ``t_end``). Writes
    work/seed_<seed>.json after every stage and returns it."""
    t0 = time.time()
    span = t_end - t0
    s = PROFILES[profile]
    path = os.path.join(work, f"seed_{seed}.json")
    res = {"seed": seed, "profile": profile, "settings": s, "stages": {}}

    def save():
        res["elapsed_s"] = round(time.time() - t0, 1)
        tmp = path + ".tmp"
        json.dump(res, open(tmp, "w"), indent=1)
        os.replace(tmp, path)

    def stage(name, fn):
        t = time.time()
        try:
            out = fn()
            res["stages"][name] = {"ok": True, "wall_s": round(time.time() - t, 1)}
            return out
        except Exception as exc:  # noqa: BLE001 - record it and go on with what exists
            import traceback

            traceback.print_exc()
            res["stages"][name] = {"ok": False, "wall_s": round(time.time() - t, 1),
                                   "error": f"{type(exc).__name__}: {exc}"[:500]}
            return None
        finally:
            save()

    save()  # from now on summarize() finds this seed, even if it is stopped during al
    stage("al", lambda: run_learn(work, seed, "al", profile=profile,
                                  time_minutes=fractions[0] * span / 60))
    al_dir = os.path.join(work, f"al_s{seed}")
    log = al_rows(work, seed, res)
    save()
    counts = [h["labels_before"] for h in log[1:]]
    final = {"initial": os.path.join(al_dir, "iter_000", "train", "model")}
    if log and os.path.exists(os.path.join(al_dir, "iter_000", "train.done")):
        if counts:
            final["al"] = os.path.join(al_dir, f"iter_{len(log) - 1:03d}", "train", "model")
            # its own share even when al's last round ran long: the comparison comes first
            t_random = min(t_end, max(t0 + fractions[1] * span, time.time() + 0.15 * span))
            points = stage("random", lambda: random_chain(
                work, seed, profile, counts, t_random, s["workers"]))
            res["random"] = [{"labels_added": 0,
                              "test_forces_mae": res["al"][0]["test_forces_mae"],
                              "valid_forces_mae": res["al"][0]["valid_forces_mae"]}] + (
                points or [])
            if points:
                final["random"] = os.path.join(work, f"randomchain_s{seed}",
                                               f"step_{len(points):03d}", "train", "model")
                res["random_labels_added"] = points[-1]["labels_added"]
            save()
        # per model 600 then 300 K: the second run of a model loads the first one's
        # compiled program from the persistent cache (its parameters are constants in it)
        order = [(n, t) for n in ("initial", "al", "random") for t in (600.0, 300.0)
                 if n in final]
        res["md"] = stage("md", lambda: md_check(
            work, seed, s["md_steps"], s["md_replicas"], paths=final, chunk=s["md_chunk"],
            threshold=s["threshold"], deadline=t_end,
            results_path=os.path.join(work, f"mdcheck_s{seed}.json"), order=order))
    save()
    return res


def _curve(points):
    return [(50 + p["labels_added"], p["test_forces_mae"]) for p in points
            if p.get("test_forces_mae") is not None]


def summarize(work: str, out: str, seeds, budget_s: float | None = None) -> dict:
    """summary.json (+ seed_<s>.json copies) and learning_curves.png in ``out`` from the
    seeds' JSON files in ``work``."""
    from biojax.bench.machine import load_average

    os.makedirs(out, exist_ok=True)
    runs = {}
    for seed in seeds:
        p = os.path.join(work, f"seed_{seed}.json")
        if not os.path.exists(p):
            continue
        r = json.load(open(p))
        # a seed stopped in the middle of a stage: what that stage had finished
        if "al" not in r.get("stages", {}):
            al_rows(work, seed, r)
        rp = os.path.join(work, f"randomchain_s{seed}", "points.json")
        if not r.get("random") and os.path.exists(rp) and r.get("al"):
            r["random"] = [{k: r["al"][0][k] for k in ("labels_added", "test_forces_mae",
                                                     "valid_forces_mae")}] + json.load(open(rp))
        mp = os.path.join(work, f"mdcheck_s{seed}.json")
        if not r.get("md") and os.path.exists(mp):
            r["md"] = json.load(open(mp))
        runs[seed] = r
        json.dump(r, open(os.path.join(out, f"seed_{seed}.json"), "w"), indent=1)
    summ = {"seeds": {}, "budget_s": budget_s, "load_average": load_average(),
            "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for seed, r in runs.items():
        al, rnd = _curve(r.get("al", [])), _curve(r.get("random", []))
        row = {"al_curve": al, "random_curve": rnd, "stages": r.get("stages")}
        common = sorted(set(x for x, _ in al[1:]) & set(x for x, _ in rnd[1:]))
        if common:
            n = common[-1]
            row["compared_at_labels"] = n
            row["al_mae"] = dict(al)[n]
            row["random_mae"] = dict(rnd)[n]
            row["al_better"] = row["al_mae"] < row["random_mae"]
        row["al_selected_basins"] = {b: sum(x.get("selected_basins", {}).get(b, 0)
                                           for x in r.get("al", [])) for b in BASIN_NAMES}
        rp = r.get("random", [])
        row["random_basins"] = rp[-1].get("basins") if len(rp) > 1 else None
        md = r.get("md") or {}
        row["md"] = {k: {"blown_up": f"{len(v['blown_up'])}/{v['replicas']}",
                         "above_threshold": round(float(np.mean(
                             v["above_threshold_fraction"])), 3),
                         "steps": v["steps"], "wall_s": v["wall_s"],
                         "first_blow_up_steps": sorted(v["blown_up"].values()),
                         "basin_fractions": dict(zip(BASIN_NAMES, np.round(np.mean(
                             [b for b in v.get("basin_fractions", []) if b is not None]
                             or [[np.nan] * 4], axis=0), 3).tolist()))}
                     for k, v in md.items()}
        row["al_stop"] = (r.get("al_result") or {}).get("stop_reason")
        summ["seeds"][str(seed)] = row
    done = [v for v in summ["seeds"].values() if "al_mae" in v]
    if done:
        a = np.array([v["al_mae"] for v in done])
        b = np.array([v["random_mae"] for v in done])
        summ["over_seeds"] = {"n": len(done), "al_mean": float(a.mean()),
                              "random_mean": float(b.mean()),
                              "al_std": float(a.std(ddof=1)) if len(a) > 1 else None,
                              "random_std": float(b.std(ddof=1)) if len(b) > 1 else None,
                              "al_better_in": int(np.sum(a < b))}
    json.dump(summ, open(os.path.join(out, "summary.json"), "w"), indent=1)
    try:
        plot_curves(summ, os.path.join(out, "learning_curves.png"))
    except Exception as exc:  # noqa: BLE001 - e.g. no matplotlib: plot later from JSON
        print(f"learning_curves.png not written ({type(exc).__name__}: {exc}); "
              f"run.py plot --out {out} makes it from summary.json", flush=True)
    return summ


def plot_curves(summ: dict, path: str) -> None:
    """Labels vs αR/αL force MAE for every seed, al solid and random dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k, (seed, row) in enumerate(sorted(summ["seeds"].items())):
        c = f"C{k}"
        for key, style, name in (("al_curve", "o-", "al"), ("random_curve", "s--",
                                                             "random")):
            pts = row.get(key) or []
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=c,
                        label=f"{name} seed {seed}", ms=4)
    ax.set_xlabel("labelled structures (50 initial + added)")
    ax.set_ylabel("force MAE on αR/αL test frames (meV/Å)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(summ: dict) -> str:
    """README tables from summary.json: the learning curves (labels vs αR/αL force MAE)
    of al and random per seed, the comparison at al's final label count, the labels al
    chose by basin, and the MD check."""
    seeds = sorted(summ["seeds"], key=int)
    counts = sorted({x for s in seeds for key in ("al_curve", "random_curve")
                     for x, _ in summ["seeds"][s].get(key) or []})
    lines = ["| labels (50 + added) | " + " | ".join(
        f"al s{s} | random s{s}" for s in seeds) + " |",
        "|---" * (1 + 2 * len(seeds)) + "|"]
    for n in counts:
        cells = []
        for s in seeds:
            row = summ["seeds"][s]
            for key in ("al_curve", "random_curve"):
                v = dict(map(tuple, row.get(key) or [])).get(n)
                cells.append("–" if v is None else f"{v:.1f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    o = summ.get("over_seeds")
    if o:
        sd = (lambda x: "" if x is None else f" ± {x:.1f}")
        lines += ["", f"At al's final label count, over {o['n']} seed(s): al "
                  f"{o['al_mean']:.1f}{sd(o['al_std'])} vs random "
                  f"{o['random_mean']:.1f}{sd(o['random_std'])} meV/Å (mean ± sample std); "
                  f"al lower in {o['al_better_in']} of {o['n']}."]
    lines += ["", "| seed | labels al chose: β/C7eq, αR, αL, other | random's: β/C7eq, αR, "
              "αL, other |", "|---|---|---|"]
    for s in seeds:
        row = summ["seeds"][s]
        a = row.get("al_selected_basins") or {}
        b = row.get("random_basins") or {}
        lines.append(f"| {s} | " + ", ".join(str(a.get(k, "–")) for k in BASIN_NAMES)
                     + " | " + ", ".join(str(b.get(k, "–")) for k in BASIN_NAMES) + " |")
    lines += ["", "| seed | model | T (K) | replicas blown up | records above threshold | "
              "steps | wall (s) |", "|---|---|---|---|---|---|---|"]
    for s in seeds:
        for key, v in summ["seeds"][s].get("md", {}).items():
            name, temp = key.split("/T")
            lines.append(f"| {s} | {name} | {temp} | {v['blown_up']} | "
                         f"{100 * v['above_threshold']:.1f} % | {v['steps']} | {v['wall_s']} |")
    lines.append(f"\nLoad average when summarised: {summ.get('load_average')}; wall "
                 f"{summ.get('wall_s')} s of {summ.get('budget_s')} s.")
    return "\n".join(lines) + "\n"


def suite(work: str, out: str, seeds, profile: str, budget_s: float,
          reserve_s: float | None = None) -> dict:
    """Run ``seeds`` side by side (one process each, the CPU cores split between them)
    and summarise into ``out`` within ``budget_s`` seconds: a seed still running at the
    end is killed (its finished stages are reported)."""
    import signal
    import subprocess

    t0 = time.time()
    reserve = reserve_s if reserve_s is not None else max(15.0, 0.06 * budget_s)
    t_end = t0 + budget_s - reserve
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(os.path.join(work, "test.extxyz")):
        prepare(work)
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // len(seeds))
    procs = {}
    for k, seed in enumerate(seeds):
        group = set(cores[(k * per) % len(cores):(k * per) % len(cores) + per]) or set(cores)
        logf = open(os.path.join(out, f"seed_{seed}.log"), "w")
        cmd = [sys.executable, os.path.abspath(__file__), "seed", "--seed", str(seed),
               "--profile", profile, "--work", work, "--t-end", f"{t_end - 5:.1f}"]
        procs[seed] = (subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                        start_new_session=True,
                                        preexec_fn=lambda g=group: os.sched_setaffinity(0, g)),
                       logf)
        print(f"seed {seed}: pid {procs[seed][0].pid}, cores {sorted(group)}", flush=True)
    while time.time() < t_end and any(p.poll() is None for p, _ in procs.values()):
        time.sleep(1.0)
    for seed, (p, logf) in procs.items():
        if p.poll() is None:
            print(f"seed {seed}: still running at the budget's end, stopped", flush=True)
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            except ProcessLookupError:
                pass
        logf.close()
        log_path = os.path.join(out, f"seed_{seed}.log")
        if os.path.getsize(log_path) > 200_000:  # keep the results folder small
            with open(log_path, "rb") as f:
                f.seek(-200_000, 2)
                tail = f.read()
            with open(log_path, "wb") as f:
                f.write(b"[... truncated ...]\n" + tail)
    summ = summarize(work, out, seeds, budget_s)
    summ["wall_s"] = round(time.time() - t0, 1)
    json.dump(summ, open(os.path.join(out, "summary.json"), "w"), indent=1)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown(summ))
    for seed, row in summ["seeds"].items():
        print(f"seed {seed}: al {row['al_curve']}")
        print(f"seed {seed}: random {row['random_curve']}")
        print(f"seed {seed}: md {json.dumps(row['md'])}")
    print("over seeds:", json.dumps(summ.get("over_seeds")), f"wall {summ['wall_s']} s")
    return summ


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
    ap.add_argument("stage", choices=("prepare", "al", "random", "random_at", "md", "report",
                                      "seed", "suite", "plot", "markdown"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="al/random: SECTION.KEY=VALUE (e.g. loop.iterations=3 to stop a "
                         "run early: the stopping rule may change on --resume)")
    ap.add_argument("--labels", type=int, help="random_at: the al run's label count")
    ap.add_argument("--epochs", type=int, help="random_at: the al run's retraining epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="0,1,2", help="suite: comma-separated seeds")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                    help="settings: cpu (session 6, the default), gpu (gpu_run.sh), tiny "
                         "(a smoke run)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="suite: wall-clock budget (s) for everything, summary included")
    ap.add_argument("--t-end", type=float, default=0.0,
                    help="seed: wall-clock end (time.time()); default: 1 h from now")
    ap.add_argument("--work", default="/tmp/biojax_al_ala2")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--md-steps", type=int, default=1000)
    ap.add_argument("--models", default="initial,al,random", help="md stage: which models")
    args = ap.parse_args(argv)
    work = os.path.abspath(args.work)
    if args.stage == "prepare":
        prepare(work)
    elif args.stage in ("al", "random"):
        run_learn(work, args.seed, args.stage, args.overrides, profile=args.profile)
    elif args.stage == "random_at":
        random_at(work, args.seed, args.labels, args.epochs)
    elif args.stage == "md":
        md_check(work, args.seed, args.md_steps, models=args.models)
    elif args.stage == "seed":
        seed_pipeline(work, args.seed, args.profile, args.t_end or time.time() + 3600)
    elif args.stage == "suite":
        suite(work, os.path.abspath(args.out), [int(x) for x in args.seeds.split(",")],
              args.profile, args.budget_s)
    elif args.stage == "markdown":  # README tables from a suite's summary.json
        print(markdown(json.load(open(os.path.join(args.out, "summary.json")))))
    elif args.stage == "plot":
        plot_curves(json.load(open(os.path.join(args.out, "summary.json"))),
                    os.path.join(args.out, "learning_curves.png"))
    else:
        report(work, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
