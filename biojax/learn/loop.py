"""The active-learning loop (``biojax learn``): initial data → train an ensemble → MD at a
range of temperatures with the ensemble's force uncertainty inside the compiled chunk →
select a diverse batch of uncertain frames → label it with the reference engine →
retrain (warm start) → ... until a target error, the label budget, the iteration count
or the time budget is reached, or the MD finds no frame above the threshold.

Run directory::

    DIR/config.json            the checked configuration (a resume must use the same)
    DIR/iter_NNN/dataset.extxyz    the labelled data trained on in iteration NNN
    DIR/iter_NNN/train/            biojax train's run (model/, metrics.json, checkpoint)
    DIR/iter_NNN/md/T<K>/          the exploration MD at each temperature (biojax simulate)
    DIR/iter_NNN/selected.extxyz   the structures chosen for labelling (+ selection.json)
    DIR/iter_NNN/labelled.extxyz   their reference labels (+ failures.json)
    DIR/iter_NNN/metrics.json      what happened in the iteration
    DIR/iter_NNN/<step>.done       one marker per finished step (JSON, atomic)
    DIR/log.jsonl                  one line per iteration (rewritten whole, atomically)
    DIR/learning_curve.png         labels vs force MAE
    DIR/result.json                why and when the loop stopped

Every step writes its outputs atomically and then its marker, and training and MD resume
from their own checkpoints, so a run killed at any point continues with ``resume`` where
it stopped and gives the same numbers as an uninterrupted one (same machine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import numpy as np

from biojax.core.atomic import atomic_path, atomic_write_text
from biojax.core.config import to_dict
from biojax.core.errors import ConfigError, SimulationError
from biojax.learn.config import LearnConfig

STEPS = ("dataset", "train", "md", "select", "label")
# settings a resumed run may change: when to stop (past iterations are replayed from
# their markers under the new rule)
RESUMABLE_KEYS = ("loop.iterations", "loop.label_budget", "loop.time_budget_minutes",
                  "loop.target_force_mae")


class _Stop(Exception):
    """Raised by the ``stop_after`` test hook: simulates a kill after a step."""


def _iter_dir(out: str, n: int) -> str:
    return os.path.join(out, f"iter_{n:03d}")


def _done(folder: str, step: str) -> dict | None:
    path = os.path.join(folder, f"{step}.done")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _mark(folder: str, step: str, info: dict) -> None:
    atomic_write_text(os.path.join(folder, f"{step}.done"), json.dumps(info, indent=1))


def _write_frames(frames, path: str) -> None:
    import ase.io

    with atomic_path(path) as tmp:
        ase.io.write(tmp, list(frames), format="extxyz")


def _read_frames(path: str) -> list:
    import ase.io

    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return []
    return ase.io.read(path, ":", format="extxyz")


def _plain_atoms(atoms, **info):
    """A copy with positions only (no MD energies or velocities that could pass as labels)."""
    import ase

    a = ase.Atoms(numbers=atoms.get_atomic_numbers(), positions=atoms.get_positions(),
                  cell=atoms.get_cell(), pbc=atoms.get_pbc())
    a.info.update(info)
    return a


def train_config(cfg: LearnConfig, dataset_path: str, epochs: int | None = None):
    """The biojax train configuration of one iteration."""
    from biojax.train.config import DataConfig, TrainConfig

    d = cfg.data
    data = DataConfig(train_file=dataset_path, valid_file=d.valid_file, test_file=d.test_file,
                      isolated_atoms=d.isolated_atoms, n_valid=d.n_valid, seed=d.seed)
    training = cfg.training if epochs is None else dataclasses.replace(cfg.training,
                                                                       epochs=int(epochs))
    return TrainConfig(data=data, model=dict(cfg.model), training=training)


def fitted_scale(potential, structures, batch_size: int = 16) -> float:
    """The maximum-likelihood scale of the ensemble's per-atom force std on labelled
    ``structures`` (biojax.learn.calibration.fit_scale)."""
    import jax

    from biojax.data.graphs import GraphDataset
    from biojax.learn.calibration import fit_scale
    from biojax.nn.ensemble import batch_spread

    data = GraphDataset(list(structures), potential.cutoff, potential.species_of,
                        potential.reference_energy)
    fn = jax.jit(lambda p, b: batch_spread(potential, p, b))
    sig, err = [], []
    for batch in data.batches(batch_size):
        out = jax.device_get(fn(potential.params, batch))
        m = np.asarray(batch.node_mask) & np.asarray(batch.has_forces)
        sig.append(np.asarray(out["force_std"], np.float64)[m])
        err.append(np.asarray(out["forces"], np.float64)[m]
                   - np.asarray(batch.forces, np.float64)[m])
    return fit_scale(np.concatenate(sig), np.concatenate(err))


class Learner:
    """One active-learning run in ``out`` (see the module doc). ``log``: progress lines;
    ``stop_after`` (tests): ``(iteration, step)`` after which to raise as if killed."""

    def __init__(self, cfg: LearnConfig, out: str, log: Callable[[str], None] = print,
                 progress: bool = False, stop_after: tuple[int, str] | None = None):
        self.cfg, self.out, self.log, self.progress = cfg, os.fspath(out), log, progress
        self.stop_after = stop_after
        self.t_start = time.perf_counter()
        self.seconds_before = 0.0

    # ------------------------------------------------------------------ bookkeeping
    def _elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t_start

    def _finish_step(self, folder: str, n: int, step: str, info: dict) -> dict:
        info = {**info, "elapsed_s": round(self._elapsed(), 2)}
        _mark(folder, step, info)
        if self.stop_after == (n, step):
            raise _Stop(f"stopped after iteration {n} step {step} (test hook)")
        return info

    def _out_of_time(self) -> bool:
        budget = self.cfg.loop.time_budget_minutes * 60
        return bool(budget) and self._elapsed() >= budget

    # ------------------------------------------------------------------ the steps
    def step_dataset(self, n: int, folder: str) -> dict:
        from biojax.data.io import read_dataset, structure_from_atoms, write_extxyz

        if n == 0:
            structures = read_dataset(self.cfg.data.initial)
        else:
            prev = _iter_dir(self.out, n - 1)
            structures = read_dataset(os.path.join(prev, "dataset.extxyz"))
            structures += [structure_from_atoms(a, f"iteration {n - 1} label {i}")
                           for i, a in enumerate(_read_frames(os.path.join(prev,
                                                                           "labelled.extxyz")))]
        write_extxyz(structures, os.path.join(folder, "dataset.extxyz"))
        return {"structures": len(structures)}

    def step_train(self, n: int, folder: str) -> dict:
        from biojax.nn.io import load_potential
        from biojax.train.loop import train_and_evaluate

        epochs = None
        initial = None
        if n > 0 and self.cfg.loop.warm_start:
            initial = load_potential(os.path.join(_iter_dir(self.out, n - 1), "train",
                                                  "model")).params
            epochs = self.cfg.loop.retrain_epochs or None
        tcfg = train_config(self.cfg, os.path.join(folder, "dataset.extxyz"), epochs)
        metrics = train_and_evaluate(tcfg, os.path.join(folder, "train"), resume=True,
                                     log=lambda m: None, progress=self.progress,
                                     initial_params=initial)
        res = {"n_train": metrics["n_train"], "n_valid": metrics["n_valid"],
               "epochs": metrics["epochs_run"], "training_seconds": metrics["training_seconds"],
               "valid_forces_mae": metrics["valid"].get("forces_mae"),
               "valid_energy_mae": metrics["valid"].get("energy_mae")}
        if "test" in metrics:
            res.update(test_forces_mae=metrics["test"].get("forces_mae"),
                       test_energy_mae=metrics["test"].get("energy_mae"),
                       n_test=metrics["n_test"])
        scale = self.cfg.uncertainty.scale
        if self.cfg.uncertainty.calibrate:
            from biojax.train.loop import load_splits

            pot = load_potential(os.path.join(folder, "train", "model"))
            splits = load_splits(tcfg, log=lambda *_: None)
            scale = fitted_scale(pot, splits["valid"])
        res["uncertainty_scale"] = float(scale)
        return res

    def _starts(self, n: int, t_index: int, replicas: int) -> list:
        from biojax.data.io import read_frames

        src = self.cfg.md.get("structure") or self.cfg.data.initial
        frames = read_frames(src)
        rng = np.random.default_rng([self.cfg.loop.seed, n, t_index])
        pick = rng.choice(len(frames), size=replicas, replace=len(frames) < replicas)
        return [_plain_atoms(frames[int(i)]) for i in pick]

    def step_md(self, n: int, folder: str, scale: float) -> dict:
        from biojax.md.checkpoint import CHECKPOINT_FILE
        from biojax.md.simulation import Simulation
        from biojax.nn.io import load_potential

        model = os.path.join(folder, "train", "model")
        potential = load_potential(model)
        unc = self.cfg.uncertainty.md(scale)
        runs = {}
        for k, temp in enumerate(self.cfg.temperatures):
            name = f"T{temp:g}"
            md_dir = os.path.join(folder, "md", name)
            marker = _done(folder, f"md_{name}")
            if marker is not None:
                runs[name] = marker
                continue
            seed = self.cfg.loop.seed * 100003 + 1000 * n + k
            scfg = self.cfg.simulate_config(temp, seed, unc.__dict__, model)
            scfg = dataclasses.replace(scfg, trajectory_format="extxyz")
            resume = os.path.isfile(os.path.join(md_dir, CHECKPOINT_FILE))
            sim = Simulation(self._starts(n, k, scfg.replicas), potential, scfg,
                             progress=self.progress)
            info = {"temperature_K": temp, "replicas": scfg.replicas, "blew_up": None}
            try:
                s = sim.run(md_dir, resume=resume)
                info.update(steps=int(s["step"]), wall_s=round(float(s["wall_s"]), 2))
                u = s.get("uncertainty", {})
                info.update(stopped_replicas=u.get("stopped_replicas", {}),
                            candidates=u.get("candidates", 0))
            except SimulationError as exc:  # a blow-up: its frames before it are kept
                info["blew_up"] = str(exc)
                info["candidates"] = len(_read_frames(os.path.join(md_dir,
                                                                   "candidates.extxyz")))
            self.log(f"iteration {n}: MD at {temp:g} K: "
                     + (f"blew up ({info['blew_up'][:80]}...)" if info["blew_up"] else
                        f"{info.get('steps')} steps, {len(info.get('stopped_replicas', {}))} "
                        f"of {scfg.replicas} replicas stopped")
                     + f", {info.get('candidates', 0)} candidates")
            _mark(folder, f"md_{name}", info)
            runs[name] = info
        return {"runs": runs, "candidates": sum(r.get("candidates", 0) for r in runs.values()),
                "blow_ups": sum(1 for r in runs.values() if r["blew_up"])}

    def _pool(self, folder: str) -> list:
        from biojax.md.output import replica_dir

        pool = []
        for temp in self.cfg.temperatures:
            name = f"T{temp:g}"
            md_dir = os.path.join(folder, "md", name)
            if self.cfg.select.pool == "candidates":
                last = self._last_kept_step(folder, name, md_dir, temp)
                for a in _read_frames(os.path.join(md_dir, "candidates.extxyz")):
                    if last is not None and int(a.info.get("step", -1)) > last:
                        continue  # flagged in the chunk that blew up, after the blow-up
                    pool.append(_plain_atoms(
                        a, temperature_K=temp, replica=int(a.info.get("replica", 0)),
                        step=int(a.info.get("step", -1)),
                        force_uncertainty=float(a.info.get("force_uncertainty", np.nan))))
                continue
            R = int(self.cfg.simulate_config(temp, 0).replicas)
            for r in range(R):
                path = os.path.join(replica_dir(md_dir, r, R), "trajectory.extxyz")
                for a in _read_frames(path):
                    pool.append(_plain_atoms(a, temperature_K=temp, replica=r,
                                             step=int(a.info.get("step", -1))))
        return pool

    def _last_kept_step(self, folder: str, name: str, md_dir: str, temp: float):
        """After a blow-up, the last trajectory step kept (frames from the blow-up on are
        not written, but the uncertainty hook may have flagged some); else None."""
        import ase.io

        from biojax.md.output import replica_dir

        marker = _done(folder, f"md_{name}")
        if marker is None or not marker.get("blew_up"):
            return None
        R = int(self.cfg.simulate_config(temp, 0).replicas)
        last = -1
        for r in range(R):
            path = os.path.join(replica_dir(md_dir, r, R), "trajectory.extxyz")
            if os.path.exists(path) and os.path.getsize(path):
                last = max(last, int(ase.io.read(path, -1).info.get("step", -1)))
        return last

    def step_select(self, n: int, folder: str, budget: int) -> dict:
        from biojax.data.io import read_dataset, structure_from_atoms
        from biojax.learn.select import select
        from biojax.nn.io import load_potential

        pool = self._pool(folder)
        s = self.cfg.select
        k = min(s.per_iteration, budget)
        above = 0
        if s.max_uncertainty and pool:  # the upper trust bound (see SelectConfig)
            sig = np.array([float(a.info.get("force_uncertainty", np.nan)) for a in pool])
            ok = ~(sig > s.max_uncertainty)
            above = int(np.sum(~ok))
            fill = np.flatnonzero(~ok)[np.argsort(sig[~ok], kind="stable")][
                :max(0, k - int(np.sum(ok)))]
            pool = [pool[i] for i in sorted(np.flatnonzero(ok).tolist() + fill.tolist())]
        if not pool or k < 1:
            idx = np.zeros(0, int)
        elif s.method == "random":
            rng = np.random.default_rng([self.cfg.loop.seed, n, 7])
            idx = np.sort(rng.choice(len(pool), size=min(k, len(pool)), replace=False))
        else:
            potential = load_potential(os.path.join(folder, "train", "model"))
            structs = [structure_from_atoms(a, "candidate") for a in pool]
            reference = read_dataset(os.path.join(folder, "dataset.extxyz"))
            idx = select(potential, structs, k, s.method, reference=reference,
                         seed=self.cfg.loop.seed + n)
        chosen = [pool[int(i)] for i in idx]
        _write_frames(chosen, os.path.join(folder, "selected.extxyz"))
        atomic_write_text(os.path.join(folder, "selection.json"), json.dumps(
            {"method": s.method, "pool": s.pool, "pool_size": len(pool),
             "above_max_uncertainty": above,
             "indices": [int(i) for i in idx],
             "chosen": [{k2: a.info.get(k2) for k2 in ("temperature_K", "replica", "step",
                                                       "force_uncertainty")}
                        for a in chosen]}, indent=1))
        return {"pool": len(pool), "selected": len(chosen), "above_max_uncertainty": above}

    def step_label(self, n: int, folder: str) -> dict:
        from biojax.learn.label import label_parallel

        frames = _read_frames(os.path.join(folder, "selected.extxyz"))
        lab = self.cfg.label
        labelled, failures = (label_parallel(frames, lab.engine, dict(lab.options),
                                             workers=lab.workers,
                                             threads_per_worker=lab.threads_per_worker)
                              if frames else ([], []))
        _write_frames(labelled, os.path.join(folder, "labelled.extxyz"))
        atomic_write_text(os.path.join(folder, "failures.json"), json.dumps(failures, indent=1))
        for f in failures:
            self.log(f"iteration {n}: label failed, skipped: {f['error']}")
        return {"attempted": len(frames), "labelled": len(labelled), "failed": len(failures)}

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False) -> dict:
        from biojax.core.rundir import RunLock

        with RunLock(self.out, "active-learning run"):
            return self._run(resume)

    def _run(self, resume: bool) -> dict:
        cfg, out = self.cfg, self.out
        cfg_json = json.dumps(to_dict(cfg), sort_keys=True, default=str)
        cpath = os.path.join(out, "config.json")
        there = [p for p in os.listdir(out) if p.startswith("iter_") or p == "config.json"]
        if there and not resume:
            raise ConfigError(f"{out} already holds an active-learning run; pass --resume to "
                              "continue it or choose another --out")
        result_path = os.path.join(out, "result.json")
        if os.path.exists(cpath):
            with open(cpath) as f:
                old = json.load(f)
            if old != json.loads(cfg_json):
                from biojax.train.loop import config_differences

                from biojax.train.loop import _flatten

                diff = config_differences(old, json.loads(cfg_json))
                known = _flatten(old)  # a setting newer than the run, at its default: fine
                fixed = {k: v for k, v in diff.items()
                         if k not in RESUMABLE_KEYS and k in known}
                if fixed:
                    raise ConfigError(
                        f"cannot resume {out}: the configuration changed ("
                        + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in
                                    sorted(fixed.items()))
                        + f"); only {', '.join(RESUMABLE_KEYS)} may change")
                for k, (a, b) in sorted(diff.items()):
                    self.log(f"resume: {k} was {a!r}, now {b!r}")
                if os.path.exists(result_path):  # the stopping rule changed: decide again
                    os.remove(result_path)
                atomic_write_text(cpath, json.dumps(json.loads(cfg_json), indent=1))
        else:
            atomic_write_text(cpath, json.dumps(json.loads(cfg_json), indent=1))
        if resume and os.path.exists(result_path):
            with open(result_path) as f:
                return json.load(f)
        # time spent before a kill: the latest step marker's clock
        import glob

        for path in glob.glob(os.path.join(out, "iter_*", "*.done")):
            with open(path) as f:
                self.seconds_before = max(self.seconds_before,
                                          float(json.load(f).get("elapsed_s", 0.0)))
        self.t_start = time.perf_counter()
        history, labels_used, n, reason = [], 0, 0, None
        while True:
            folder = _iter_dir(out, n)
            os.makedirs(folder, exist_ok=True)
            metrics = {"iteration": n, "labels_before": labels_used}
            d = _done(folder, "dataset") or self._finish_step(
                folder, n, "dataset", self.step_dataset(n, folder))
            metrics["dataset"] = d["structures"]
            d = _done(folder, "train") or self._finish_step(
                folder, n, "train", self.step_train(n, folder))
            metrics["train"] = d
            err = d.get("test_forces_mae", d.get("valid_forces_mae"))
            self.log(f"iteration {n}: {metrics['dataset']} structures, {labels_used} labels, "
                     f"force MAE {err:.1f} meV/Å ({'test' if 'test_forces_mae' in d else 'valid'})")
            if cfg.loop.target_force_mae and err <= cfg.loop.target_force_mae:
                reason = f"force MAE {err:.2f} <= target {cfg.loop.target_force_mae} meV/Å"
            elif labels_used >= cfg.loop.label_budget:
                reason = f"label budget {cfg.loop.label_budget} spent"
            elif n + 1 >= cfg.loop.iterations:
                reason = f"{cfg.loop.iterations} iteration(s) done"
            elif _done(folder, "md") is None and self._out_of_time():  # (decided before)
                reason = f"time budget {cfg.loop.time_budget_minutes} min spent"
            if reason is None:
                d = _done(folder, "md") or self._finish_step(
                    folder, n, "md", self.step_md(n, folder, d["uncertainty_scale"]))
                metrics["md"] = d
                if cfg.select.pool == "candidates" and d["candidates"] == 0:
                    reason = ("no MD frame above the uncertainty threshold "
                              f"({cfg.uncertainty.threshold} eV/Å)")
            if reason is None:
                budget = cfg.loop.label_budget - labels_used
                d = _done(folder, "select") or self._finish_step(
                    folder, n, "select", self.step_select(n, folder, budget))
                metrics["select"] = d
                d = _done(folder, "label") or self._finish_step(
                    folder, n, "label", self.step_label(n, folder))
                metrics["label"] = d
                labels_used += d["attempted"]
                if d["attempted"] == 0:
                    reason = "nothing left to select"
            metrics["labels_after"] = labels_used
            metrics["elapsed_s"] = round(self._elapsed(), 2)
            atomic_write_text(os.path.join(folder, "metrics.json"), json.dumps(metrics, indent=1))
            history.append(metrics)
            self._write_log(history)
            if reason is not None:
                break
            n += 1
        result = {"stop_reason": reason, "iterations": n + 1, "labels": labels_used,
                  "structures": history[-1]["dataset"],
                  "final_model": os.path.join(_iter_dir(out, n), "train", "model"),
                  "force_mae": history[-1]["train"].get(
                      "test_forces_mae", history[-1]["train"].get("valid_forces_mae")),
                  "elapsed_s": round(self._elapsed(), 2)}
        atomic_write_text(os.path.join(out, "result.json"), json.dumps(result, indent=1))
        self.log(f"stopped: {reason}; final model {result['final_model']}")
        return result

    def _write_log(self, history: list[dict]) -> None:
        atomic_write_text(os.path.join(self.out, "log.jsonl"),
                          "".join(json.dumps(h) + "\n" for h in history))
        try:
            plot_learning_curve(history, os.path.join(self.out, "learning_curve.png"))
        except Exception as exc:  # noqa: BLE001 - a plot must not stop the loop
            self.log(f"learning curve not plotted: {exc}")


def plot_learning_curve(history: list[dict], path: str) -> None:
    """Labels (cumulative, before each training) vs force MAE (meV/Å)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [h["labels_before"] for h in history]
    test = [h["train"].get("test_forces_mae") for h in history]
    valid = [h["train"].get("valid_forces_mae") for h in history]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    if all(v is not None for v in test):
        ax.plot(x, test, "o-", label="test")
    ax.plot(x, valid, "s--", label="validation")
    ax.set_xlabel("labels added")
    ax.set_ylabel("force MAE (meV/Å)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run(cfg: LearnConfig, out: str, resume: bool = False, log=print, progress: bool = False,
        stop_after=None) -> dict:
    """Run (or with ``resume`` continue) the loop ``cfg`` describes in ``out``; returns
    result.json's contents (see the module doc)."""
    return Learner(cfg, out, log, progress, stop_after).run(resume)
