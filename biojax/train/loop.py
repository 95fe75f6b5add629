"""The training loop: ``train_and_evaluate(config, workdir)``.

Pure jitted step functions over an explicit TrainState; AdamW with warm-up and cosine
decay, gradient clipping, an exponential moving average (EMA) of the parameters that is
what gets validated and saved, early stopping and a wall-clock budget. A checkpoint is
written atomically after every epoch; ``resume=True`` restores it and continues with the
same numbers an uninterrupted run would give (the shuffle of epoch k depends only on the
seed and k).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from biojax.core.atomic import atomic_write_bytes, atomic_write_text
from biojax.core.config import to_dict
from biojax.data.graphs import GraphDataset
from biojax.data.io import (Structure, elements_of, read_dataset, reference_energies_for,
                            require_labels, split_indices)
from biojax.core.errors import ConfigError, DataError
from biojax.nn.io import save_potential
from biojax.nn.models import init_potential
from biojax.nn.potential import Potential
from biojax.core.precision import require_x64
from biojax.train.config import TrainConfig
from biojax.train.losses import ErrorAccumulator, Loss, accumulate, predict

CHECKPOINT_FILE = "checkpoint.msgpack"
METRICS_LOG = "metrics.jsonl"


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    ema_params: Any
    step: jax.Array


# ---------------------------------------------------------------- pure pieces
def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW on a linear warm-up + cosine decay schedule."""
    total = max(cfg.epochs * steps_per_epoch, 2)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=cfg.learning_rate * 0.01, peak_value=cfg.learning_rate,
        warmup_steps=max(warmup, 1), decay_steps=total,
        end_value=cfg.learning_rate * cfg.final_learning_rate_fraction)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                       optax.adamw(schedule, weight_decay=cfg.weight_decay))


def make_train_step(potential: Potential, tx, loss: Loss, ema_decay: float) -> Callable:
    """jit(state, batch) -> (state, loss): one optimiser step and an EMA update."""

    def loss_fn(params, batch):
        return loss.value(predict(potential, params, batch, loss.needs_stress), batch)

    @jax.jit
    def step(state: TrainState, batch):
        value, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # EMA with a short warm-up so early averages are not dominated by the random init
        decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p,
                                     state.ema_params, params)
        return TrainState(params, opt_state, ema, state.step + 1), value

    return step


def make_predict_fn(potential: Potential, compute_stress: bool,
                    loss: Loss | None = None) -> Callable:
    """jit(params, batch) -> predictions (see ``losses.predict``), with the loss terms'
    (sum, count) per batch under ``"loss_parts"`` when ``loss`` is given."""
    def fn(params, batch):
        pred = predict(potential, params, batch, compute_stress)
        if loss is not None:
            pred["loss_parts"] = loss.parts(pred, batch)
        return pred

    return jax.jit(fn)


def evaluate_dataset(dataset: GraphDataset, params, predict_fn: Callable,
                     batch_size: int, loss: Loss | None = None):
    """Energy/force(/stress) MAE and RMSE (meV, meV/atom, meV/Å) of ``params`` on a
    dataset; with ``loss`` (and a ``predict_fn`` made with it), ``(metrics, loss value)``
    where the loss is the training loss over the whole set."""
    acc, sums = ErrorAccumulator(), {}
    for batch in dataset.batches(batch_size):
        pred = predict_fn(params, batch)
        acc.add(batch, pred)
        if loss is not None:
            accumulate(sums, jax.device_get(pred["loss_parts"]))
    if loss is None:
        return acc.metrics()
    return acc.metrics(), loss.from_sums(sums)


def per_species_scale_shift(structures: list[Structure], species_of, reference_energy_of,
                            n_species: int) -> tuple[float, tuple[float, ...]]:
    """Scale (eV: RMS force component, else per-atom energy spread) and per-species shift
    (eV/atom: least-squares fit of the energy left after reference energies)."""
    counts = np.zeros((len(structures), n_species))
    residual = np.zeros(len(structures))
    for i, s in enumerate(structures):
        counts[i] = np.bincount(species_of(s.numbers), minlength=n_species)
        residual[i] = (s.energy or 0.0) - reference_energy_of(s.numbers)
    shifts, *_ = np.linalg.lstsq(counts, residual, rcond=None)
    forces = [s.forces for s in structures if s.forces is not None]
    if forces:
        scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2)))
    else:
        scale = float(np.std((residual - counts @ shifts) / counts.sum(1)))
    return max(scale, 1e-3), tuple(float(x) for x in shifts)


# ---------------------------------------------------------------- data
def load_splits(config: TrainConfig, log=print, loss: Loss | None = None
                ) -> dict[str, list[Structure]]:
    """Train/validation/test structures as the [data] table asks (files or seeded splits);
    every structure must carry the labels the loss terms weight."""
    d = config.data
    loss = config.training.make_loss() if loss is None else loss
    if not d.train_file:
        raise ConfigError("[data] train_file is required (or pass --train-file)")
    frames = read_dataset(d.train_file)
    n_valid = 0 if d.valid_file else d.n_valid
    n_test = 0 if d.test_file else d.n_test
    train_idx, valid_idx, test_idx = split_indices(len(frames), n_valid, n_test, d.seed)
    if d.n_train:
        if d.n_train > len(train_idx):
            raise DataError(f"{d.train_file}: n_train = {d.n_train} but only "
                            f"{len(train_idx)} frames remain after the split")
        train_idx = train_idx[:d.n_train]
    splits = {
        "train": [frames[i] for i in train_idx],
        "valid": read_dataset(d.valid_file) if d.valid_file else [frames[i] for i in valid_idx],
        "test": read_dataset(d.test_file) if d.test_file else [frames[i] for i in test_idx],
    }
    weighted = {term.name for term in loss.terms if term.weight > 0}
    for name, structures in splits.items():
        path = {"train": d.train_file, "valid": d.valid_file or d.train_file,
                "test": d.test_file or d.train_file}[name]
        require_labels(structures, path, "energy" in weighted, "forces" in weighted,
                       "stress" in weighted, loss.labels)
    if not splits["valid"]:
        raise DataError("the validation set is empty: set [data] n_valid > 0 or valid_file")
    log(f"data: {len(splits['train'])} train, {len(splits['valid'])} validation, "
        f"{len(splits['test'])} test structures")
    return splits


# ---------------------------------------------------------------- checkpoints
def _save_checkpoint(path: str, state: TrainState, progress: dict, best_params) -> None:
    to_numpy = lambda tree: jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(tree))  # noqa: E731
    payload = {"state": to_numpy(state), "best_params": to_numpy(best_params),
               "progress": json.dumps(progress)}
    atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def _load_checkpoint(path: str, template_state: TrainState):
    with open(path, "rb") as f:
        payload = serialization.msgpack_restore(f.read())
    state = serialization.from_state_dict(template_state, payload["state"])
    best = serialization.from_state_dict(template_state.params, payload["best_params"])
    return state, best, json.loads(payload["progress"])


def _truncate_log(path: str, last_epoch: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln).get("epoch", 0) <= last_epoch]
    atomic_write_text(path, "".join(lines))


def _summary(metrics: dict, label: str) -> str:
    nan = float("nan")
    return (f"{label} energy MAE {metrics.get('energy_mae', nan):.2f} meV "
            f"({metrics.get('energy_per_atom_mae', nan):.2f} meV/atom), "
            f"force MAE {metrics.get('forces_mae', nan):.2f} meV/Å")


# ---------------------------------------------------------------- the loop
def train_and_evaluate(config: TrainConfig, workdir: str, resume: bool = False,
                       log: Callable[[str], None] = print) -> dict:
    """Train a potential as ``config`` says; write ``workdir/model/``, ``metrics.json``,
    ``metrics.jsonl`` and ``checkpoint.msgpack``. Returns the final metrics."""
    t = config.training
    os.makedirs(workdir, exist_ok=True)
    ckpt_path = os.path.join(workdir, CHECKPOINT_FILE)
    log_path = os.path.join(workdir, METRICS_LOG)
    config_json = json.dumps(to_dict(config), sort_keys=True)
    if os.path.exists(ckpt_path) and not resume:
        raise ConfigError(f"{workdir} already holds a training run; pass --resume to "
                          "continue it or choose another --out")
    if resume and not os.path.exists(ckpt_path):
        log(f"no checkpoint in {workdir}; starting a new run")
        resume = False

    dtype = np.float64 if t.precision == "float64" else np.float32
    if dtype == np.float64:
        require_x64("[training] precision = \"float64\"")
    loss = t.make_loss()
    splits = load_splits(config, log, loss)
    elements = elements_of(splits["train"])
    isolated = config.data.isolated_atoms or None
    reference = reference_energies_for(splits["train"], elements, isolated)
    # species mapping and reference energies only; the model comes once scale/shift are known
    base = Potential(model=None, params=None, cutoff=config.cutoff, elements=elements,
                     reference_energies=tuple(float(e) for e in reference))
    scale, shifts = per_species_scale_shift(splits["train"], base.species_of,
                                            base.reference_energy, len(elements))
    architecture = dict(config.architecture)
    potential = init_potential(architecture, elements, config.cutoff, reference,
                               key=jax.random.PRNGKey(t.seed), dtype=dtype, scale=scale,
                               shifts=shifts)
    datasets = {name: GraphDataset(s, config.cutoff, potential.species_of,
                                   potential.reference_energy, dtype, labels=loss.labels)
                for name, s in splits.items()}
    batch_size = min(t.batch_size, len(datasets["train"]))
    steps_per_epoch = len(datasets["train"]) // batch_size
    tx = make_optimizer(t, steps_per_epoch)
    state = TrainState(potential.params, tx.init(potential.params), potential.params,
                       jnp.zeros((), jnp.int32))
    train_step = make_train_step(potential, tx, loss, t.ema_decay)
    compute_stress = loss.needs_stress or any(s.stress is not None for s in splits["valid"])
    predict_fn = make_predict_fn(potential, compute_stress, loss)

    progress = {"epoch": 0, "best_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0,
                "seconds": 0.0, "train_seconds": 0.0, "config": config_json}
    best_params = state.ema_params
    if resume:
        state, best_params, progress = _load_checkpoint(ckpt_path, state)
        if progress["config"] != config_json:
            raise ConfigError(f"{ckpt_path} was written with a different configuration; "
                              "resume with the same config or start a new --out")
        _truncate_log(log_path, progress["epoch"])
        log(f"resuming from epoch {progress['epoch']} ({progress['seconds']:.0f} s trained)")
    else:  # record the untrained model's error as epoch 0, the baseline for progress
        initial, initial_loss = evaluate_dataset(datasets["valid"], state.params, predict_fn,
                                                 batch_size, loss)
        with open(log_path, "w") as f:
            f.write(json.dumps({"epoch": 0, "valid_loss": initial_loss,
                                "seconds": 0.0,
                                **{f"valid_{k}": round(v, 4) for k, v in initial.items()}}) + "\n")

    budget = (t.max_minutes or 0) * 60
    stop_reason = "epochs"
    last_epoch_seconds = 0.0
    for epoch in range(progress["epoch"] + 1, t.epochs + 1):
        if budget and progress["seconds"] + last_epoch_seconds > budget:
            stop_reason = "time budget"
            break
        if progress["bad_epochs"] >= t.patience:
            stop_reason = "early stopping"
            break
        start = time.perf_counter()
        order = np.random.default_rng([t.seed, epoch]).permutation(len(datasets["train"]))
        losses = []
        for batch in datasets["train"].batches(batch_size, order, drop_last=True):
            state, batch_loss = train_step(state, batch)
            losses.append(batch_loss)
        train_loss = float(np.mean(jax.device_get(losses)))
        progress["train_seconds"] += time.perf_counter() - start
        if not np.isfinite(train_loss):
            raise DataError(f"training diverged at epoch {epoch} (loss {train_loss}); "
                            "lower learning_rate or check the data")
        valid, v_loss = evaluate_dataset(datasets["valid"], state.ema_params, predict_fn,
                                         batch_size, loss)
        last_epoch_seconds = time.perf_counter() - start
        progress["seconds"] += last_epoch_seconds
        improved = v_loss < progress["best_loss"]
        if improved:
            progress.update(best_loss=v_loss, best_epoch=epoch, bad_epochs=0)
            best_params = state.ema_params
        else:
            progress["bad_epochs"] += 1
        progress["epoch"] = epoch
        record = {"epoch": epoch, "train_loss": train_loss, "valid_loss": v_loss,
                  "seconds": round(progress["seconds"], 3),
                  **{f"valid_{k}": round(v, 4) for k, v in valid.items()}}
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        _save_checkpoint(ckpt_path, state, progress, best_params)
        if improved:
            save_potential(potential.replace(params=best_params),
                           os.path.join(workdir, "model"))
        n_train = steps_per_epoch * batch_size
        log(f"epoch {epoch:4d}/{t.epochs}  loss {train_loss:.4g}  "
            f"val E {valid.get('energy_mae', float('nan')):.2f} meV  "
            f"F {valid.get('forces_mae', float('nan')):.2f} meV/Å  "
            f"{n_train / last_epoch_seconds:.0f} conf/s  "
            f"{progress['seconds'] / 60:.1f} min{'  *' if improved else ''}")

    best = potential.replace(params=best_params)
    if not os.path.isdir(os.path.join(workdir, "model")):
        save_potential(best, os.path.join(workdir, "model"))
    results = {"stop_reason": stop_reason, "epochs_run": progress["epoch"],
               "best_epoch": progress["best_epoch"],
               "training_seconds": round(progress["seconds"], 2),
               "configurations_per_second": round(
                   progress["epoch"] * steps_per_epoch * batch_size
                   / max(progress["train_seconds"], 1e-9), 2),
               "n_train": len(datasets["train"]), "n_valid": len(datasets["valid"]),
               "n_test": len(datasets["test"]), "architecture": config.architecture["name"],
               "device": jax.devices()[0].device_kind,
               "valid": evaluate_dataset(datasets["valid"], best_params, predict_fn,
                                         batch_size)}
    log(f"stopped ({stop_reason}) after epoch {progress['epoch']}; best epoch "
        f"{progress['best_epoch']}: " + _summary(results["valid"], "validation"))
    if len(datasets["test"]):
        results["test"] = evaluate_dataset(datasets["test"], best_params, predict_fn, batch_size)
        log(_summary(results["test"], f"test ({len(datasets['test'])} structures)"))
    atomic_write_text(os.path.join(workdir, "metrics.json"), json.dumps(results, indent=2))
    return results
