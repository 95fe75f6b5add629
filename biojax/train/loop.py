"""The training loop: ``train_and_evaluate(config, workdir)``.

Pure jitted step functions over an explicit TrainState; Adam with decoupled weight decay,
gradient clipping and a host-side learning-rate schedule (``biojax.train.schedule``), an
exponential moving average (EMA) of the parameters that is what gets validated and saved,
early stopping and a wall-clock budget. The run directory is locked while a run writes to
it (``biojax.core.rundir.RunLock``). A checkpoint is written atomically after every
epoch; ``resume=True`` restores it and continues with the same numbers an uninterrupted
run would give (the shuffle of epoch k depends only on the seed and k). Only
``RESUMABLE_KEYS`` may differ from the checkpoint's configuration.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from biojax import parallel
from biojax.core.atomic import atomic_write_bytes, atomic_write_text, truncate_jsonl
from biojax.core.config import to_dict
from biojax.core.errors import ConfigError, DataError
from biojax.core.precision import require_x64
from biojax.core.progress import progress as progress_bar
from biojax.core.rundir import RunLock
from biojax.data.graphs import GraphBatch, GraphDataset, batch_graphs, bucket_size
from biojax.data.io import (Structure, elements_of, read_dataset, reference_energies_for,
                            require_labels, split_indices)
from biojax.nn.ensemble import init_ensemble, member_potential
from biojax.nn.io import save_potential
from biojax.nn.models import init_potential
from biojax.nn.potential import Potential
from biojax.train import schedule as lr_schedule
from biojax.train.config import TrainConfig
from biojax.train.losses import ErrorAccumulator, Loss, accumulate, predict

CHECKPOINT_FILE = "checkpoint.msgpack"
METRICS_LOG = "metrics.jsonl"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
#: config keys that may differ between a checkpoint and ``--resume``: they only decide
#: when training stops (the learning-rate schedule follows a new ``epochs``, see
#: biojax.train.schedule)
RESUMABLE_KEYS = ("training.epochs", "training.max_minutes", "training.patience",
                  # the same numbers on any device count (to float32 rounding)
                  "training.devices")
#: these may differ too, as long as the training and validation frames stay the same
#: (checked by content): they only choose the test set evaluated at the end
RESUMABLE_IF_SAME_DATA = ("data.test_file", "data.n_test")
#: litter a killed run can leave in its directory (removed when a run takes the lock)
_LITTER = (".checkpoint.*.tmp.msgpack", ".metrics.*.tmp.json", ".metrics.*.tmp.jsonl",
           ".training_curves.*.tmp.png", ".force_parity.*.tmp.png", ".model-tmp-*",
           "model.old-*")


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    ema_params: Any
    step: jax.Array


# ---------------------------------------------------------------- pure pieces
def make_optimizer(cfg) -> optax.GradientTransformation:
    """Clip by global norm, then Adam with decoupled weight decay; the step multiplies
    by minus the learning rate it is given (``biojax.train.schedule``), as
    ``optax.adamw`` would with a schedule."""
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.scale_by_adam(),
                       optax.add_decayed_weights(cfg.weight_decay))


#: the mesh axis a batch's per-device sub-batches are split over (``biojax.parallel``)
DATA_AXIS = "data"


def make_train_step(potential: Potential, tx, loss: Loss, ema_decay: float,
                    mesh=None, member_batches: bool = False) -> Callable:
    """jit(state, batch, learning_rate) -> (state, loss): one optimiser step and an EMA
    update.

    A full ensemble steps every member (vmapped); with ``member_batches`` the batch has
    a leading member axis, each member its own (bootstrap: :func:`bootstrap_order`).

    With a ``mesh`` (axis ``DATA_AXIS``) the step is data-parallel: ``batch`` is a
    GraphBatch with a leading device axis (:func:`device_batches`), each device computes
    its sub-batch's loss sums and counts, ``lax.psum`` adds them (so the loss is the
    whole batch's, as on one device) and the gradient of that sum comes out summed
    across devices; parameters and optimiser state are replicated."""

    kind = getattr(potential.model, "kind", None)  # ensembles (biojax.nn.ensemble)
    if kind is not None and mesh is not None:
        raise ConfigError("ensembles train on one device: set [training] devices = 1")
    if kind == "full":  # every member its own step (optimiser state, clipping, EMA), vmapped
        single = make_train_step(member_potential(potential), tx, loss, ema_decay)
        return jax.jit(jax.vmap(single, in_axes=(0, 0 if member_batches else None, None)))

    def loss_fn(params, batch):
        if kind == "shallow":  # each head fits the data: the mean of the heads' losses
            return jnp.mean(jax.vmap(lambda k: loss.value(predict(
                member_potential(potential, k), params, batch, loss.needs_stress), batch))(
                    jnp.arange(potential.model.size)))
        if mesh is None:
            return loss.value(predict(potential, params, batch, loss.needs_stress), batch)
        parts = loss.parts(predict(potential, params, batch, loss.needs_stress), batch)
        parts = jax.lax.psum(parts, DATA_AXIS)
        weights = {term.name: term.weight for term in loss.terms}
        return sum(weights[k] * s / jnp.maximum(n, 1.0) for k, (s, n) in parts.items())

    def step(state: TrainState, batch, learning_rate):
        if mesh is not None:  # this device's sub-batch
            batch = jax.tree_util.tree_map(lambda x: x[0], batch)
        value, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree_util.tree_map(lambda u: -learning_rate * u, updates)
        params = optax.apply_updates(state.params, updates)
        # EMA with a short warm-up so early averages are not dominated by the random init
        decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p,
                                     state.ema_params, params)
        return TrainState(params, opt_state, ema, state.step + 1), value

    if mesh is None:
        return jax.jit(step)
    return parallel.sharded(step, mesh, DATA_AXIS, out_split=False,
                            in_split=(False, True, False))


def init_train_state(potential: Potential, tx) -> TrainState:
    """The state at step 0 (EMA = parameters); a full ensemble's has a leading member
    axis on every leaf, step included (one optimiser per member)."""
    def init(params):
        return TrainState(params, tx.init(params), params, jnp.zeros((), jnp.int32))

    if getattr(potential.model, "kind", None) == "full":
        return jax.vmap(init)(potential.params)
    return init(potential.params)


def _step_of(state: TrainState) -> int:
    """The optimiser step count (every member of an ensemble has the same)."""
    return int(np.asarray(state.step).reshape(-1)[0])


def bootstrap_samples(n: int, seeds) -> np.ndarray:
    """(K, n) structure indices: member k's bootstrap resample of a training set of ``n``
    structures (n draws with replacement, seeded by the member seed ``seeds[k]``)."""
    return np.stack([np.random.default_rng([int(s), 1732]).integers(0, n, n) for s in seeds])


def bootstrap_order(samples: np.ndarray, batch_size: int, epoch_seed) -> np.ndarray:
    """One epoch's order for :func:`device_batches` with one group per member: member k's
    resample ``samples[k]`` shuffled (seeded by ``epoch_seed`` and k), cut into batches of
    ``batch_size``, the members' batches interleaved (step s holds every member's s-th
    batch, member 0 first), the last incomplete batch dropped."""
    k, n = samples.shape
    steps = n // batch_size
    shuffled = np.stack([samples[m][np.random.default_rng([*np.atleast_1d(epoch_seed), m])
                                    .permutation(n)] for m in range(k)])
    return shuffled[:, :steps * batch_size].reshape(k, steps, batch_size).transpose(
        1, 0, 2).reshape(-1)


def device_batches(dataset: GraphDataset, batch_size: int, order, n_devices: int):
    """Training batches for ``n_devices``: each batch of ``batch_size`` structures (in
    ``order``, last incomplete batch dropped) split into ``n_devices`` consecutive groups,
    each padded to the same atom and edge counts and stacked along a leading device axis
    (a GraphBatch whose arrays are (n_devices, ...))."""
    per = batch_size // n_devices
    order = np.asarray(order)
    for start in range(0, len(order) - len(order) % batch_size, batch_size):
        groups = np.split(order[start:start + batch_size], n_devices)
        atoms = max(bucket_size(sum(dataset.structures[i].n_atoms for i in g) + 1)
                    for g in groups)
        edges = max(bucket_size(sum(len(dataset.graphs[i].senders) for i in g) + 1)
                    for g in groups)
        subs = [batch_graphs([dataset.structures[i] for i in g],
                             [dataset.graphs[i] for i in g], [dataset.species[i] for i in g],
                             [dataset.reference[i] for i in g], n_graphs=per + 1,
                             dtype=dataset.dtype, min_atoms=atoms, min_edges=edges,
                             labels=dataset.labels) for g in groups]
        yield GraphBatch(*(jax.tree_util.tree_map(lambda *x: np.stack(x), *field)
                           for field in zip(*subs)))


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
                     batch_size: int, loss: Loss | None = None,
                     accumulator: ErrorAccumulator | None = None,
                     on_batch: Callable[[int], None] | None = None):
    """Energy/force(/stress) MAE and RMSE (meV, meV/atom, meV/Å) of ``params`` on a
    dataset; with ``loss`` (and a ``predict_fn`` made with it), ``(metrics, loss value)``
    where the loss is the training loss over the whole set. ``accumulator``: add to this
    one (metrics over several datasets); ``on_batch(n)``: called with the number of
    structures of each batch done (progress)."""
    acc, sums = accumulator if accumulator is not None else ErrorAccumulator(), {}
    order = np.arange(len(dataset))
    for start, batch in zip(range(0, len(dataset), batch_size),
                            dataset.batches(batch_size, order)):
        pred = predict_fn(params, batch)
        acc.add(batch, pred)
        if loss is not None:
            accumulate(sums, jax.device_get(pred["loss_parts"]))
        if on_batch is not None:
            on_batch(min(batch_size, len(dataset) - start))
    if loss is None:
        return acc.metrics()
    return acc.metrics(), loss.from_sums(sums)


def force_pairs(dataset: GraphDataset, params, predict_fn: Callable, batch_size: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(reference, predicted) force components (eV/Å) of every labelled atom."""
    ref, pred_all = [], []
    for batch in dataset.batches(batch_size):
        pred = np.asarray(predict_fn(params, batch)["forces"], np.float64)
        n = batch.node_mask & batch.has_forces
        ref.append(np.asarray(batch.forces, np.float64)[n].reshape(-1))
        pred_all.append(pred[n].reshape(-1))
    if not ref:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ref), np.concatenate(pred_all)


def per_species_scale_shift(structures: list[Structure], species_of, reference_energy_of,
                            n_species: int) -> tuple[float, tuple[float, ...]]:
    """Scale (eV: RMS force component, else per-atom energy spread) and per-species shift
    (eV/atom: least-squares fit of the energy left after reference energies)."""
    structures_e = [s for s in structures if s.energy is not None]
    counts = np.zeros((len(structures_e), n_species))
    residual = np.zeros(len(structures_e))
    for i, s in enumerate(structures_e):
        counts[i] = np.bincount(species_of(s.numbers), minlength=n_species)
        residual[i] = s.energy - reference_energy_of(s.numbers)
    shifts = (np.linalg.lstsq(counts, residual, rcond=None)[0] if len(structures_e)
              else np.zeros(n_species))  # forces-only data: no energy offsets to fit
    forces = [s.forces for s in structures if s.forces is not None]
    if forces:
        scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2)))
    else:
        scale = float(np.std((residual - counts @ shifts) / counts.sum(1)))
    return max(scale, 1e-3), tuple(float(x) for x in shifts)


# ---------------------------------------------------------------- data
def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def load_splits(config: TrainConfig, log=print, loss: Loss | None = None
                ) -> dict[str, list[Structure]]:
    """Train/validation/test structures as the [data] table asks (files or seeded splits);
    every structure must carry the labels the loss terms weight (a frame that lacks one
    is named by its index in its file). Logs exactly which frames of which file each set
    holds.

    With ``valid_file`` the validation set is that file and ``n_valid`` is not used;
    ``n_test`` frames of ``train_file`` are held out only when ``n_test`` is given (and
    no ``test_file``), so with a validation file and no test file every training frame
    is trained on."""
    d = config.data
    loss = config.training.make_loss() if loss is None else loss
    if not d.train_file:
        raise ConfigError("[data] train_file is required (or pass --train-file)")
    frames = read_dataset(d.train_file)
    n_valid = 0 if d.valid_file else d.n_valid
    n_test = 0 if d.test_file or d.n_test is None else d.n_test
    train_idx, valid_idx, test_idx = split_indices(len(frames), n_valid, n_test, d.seed)
    n_split = len(train_idx)
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
    files = {"train": d.train_file, "valid": d.valid_file or d.train_file,
             "test": d.test_file or d.train_file}
    numbers = {"train": train_idx, "valid": None if d.valid_file else valid_idx,
               "test": None if d.test_file else test_idx}
    weighted = {term.name for term in loss.terms if term.weight > 0}
    for name, structures in splits.items():
        require_labels(structures, files[name], "energy" in weighted, "forces" in weighted,
                       "stress" in weighted, loss.labels, frame_numbers=numbers[name])
    if not splits["valid"]:
        raise DataError("the validation set is empty: set [data] n_valid > 0 or valid_file")
    # say exactly what is used
    held = []
    if len(valid_idx):
        held.append(f"{len(valid_idx)} for validation (n_valid = {_num(d.n_valid)})")
    if len(test_idx):
        held.append(f"{len(test_idx)} for test (n_test = {_num(d.n_test)})")
    if d.n_train and d.n_train < n_split:
        held.append(f"{n_split - d.n_train} unused (n_train = {d.n_train})")
    log(f"data: {len(splits['train'])} training frames of {d.train_file} "
        f"({len(frames)} frames" + (f"; held out: {', '.join(held)})" if held else "; all used)"))
    log(f"data: {len(splits['valid'])} validation frames "
        + (f"from {d.valid_file}" if d.valid_file else f"split from {d.train_file} (seed {d.seed})"))
    if d.test_file:
        log(f"data: {len(splits['test'])} test frames from {d.test_file}")
    elif len(test_idx):
        log(f"data: {len(splits['test'])} test frames split from {d.train_file} (seed {d.seed})")
    else:
        log("data: no test set (give test_file, or n_test to hold out frames of train_file)")
    for path in d.extra_train_files:
        extra = read_dataset(path)
        require_labels(extra, path, "energy" in weighted, "forces" in weighted,
                       "stress" in weighted, loss.labels)
        splits["train"] = splits["train"] + list(extra)
        log(f"data: {len(extra)} more training frames of {path} (extra_train_files)")
    return splits


def fingerprint(structures: list[Structure]) -> str:
    """A content hash of structures (species, positions, cell, labels): a resumed run
    must train and validate on the same frames."""
    h = hashlib.sha256()
    for s in structures:
        for a in (s.numbers, s.positions, s.cell, s.pbc):
            h.update(np.ascontiguousarray(a).tobytes())
        for a in (s.energy, s.forces, s.stress):
            h.update(b"-" if a is None else np.ascontiguousarray(np.float64(a)).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- checkpoints
def _save_checkpoint(path: str, state: TrainState, progress: dict, best_params) -> None:
    to_numpy = lambda tree: jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(tree))  # noqa: E731
    payload = {"state": to_numpy(state), "best_params": to_numpy(best_params),
               "progress": json.dumps(progress)}
    atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def _corrupt(path: str, workdir: str, exc: Exception) -> DataError:
    best = os.path.join(workdir, MODEL_DIR)
    kept = f"; the best model so far is kept in {best}" if os.path.isdir(best) else ""
    return DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}): the checkpoint "
                     f"is truncated or corrupt, so --resume cannot continue this run{kept}. "
                     "Start a new run with another --out")


def _read_checkpoint(path: str, workdir: str) -> dict:
    """The raw checkpoint payload, its progress record decoded; DataError if unreadable."""
    try:
        with open(path, "rb") as f:
            payload = serialization.msgpack_restore(f.read())
        payload["progress"] = json.loads(payload["progress"])
        payload["state"], payload["best_params"], payload["progress"]["config"]
    except Exception as exc:  # msgpack, JSON, missing keys: all mean the file is bad
        raise _corrupt(path, workdir, exc) from None
    missing = [k for k in ("epoch", "best_loss", "schedule", "data")
               if k not in payload["progress"]]
    if missing:
        raise DataError(f"{path}: written by another version of biojax (no "
                        f"{', '.join(missing)} record), so --resume cannot continue this "
                        "run; start a new run with another --out")
    return payload


def _restore(payload: dict, template_state: TrainState, path: str, workdir: str):
    try:
        state = serialization.from_state_dict(template_state, payload["state"])
        best = serialization.from_state_dict(template_state.params, payload["best_params"])
        shapes = jax.tree_util.tree_map(np.shape, (template_state, template_state.params))
        if jax.tree_util.tree_map(np.shape, (state, best)) != shapes:
            raise ValueError("parameter shapes differ from the configured model")
    except Exception as exc:
        raise _corrupt(path, workdir, exc) from None
    return state, best


def _flatten(tree: dict) -> dict:
    """``{"training": {"epochs": 5}}`` → ``{"training.epochs": 5}`` (one level: a model
    hyperparameter or the loss list is compared as a whole value)."""
    out = {}
    for section, table in tree.items():
        if isinstance(table, dict):
            out.update({f"{section}.{k}": v for k, v in table.items()})
        else:
            out[section] = table
    return out


def config_differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (old value, new value)}`` for every setting that differs
    (an absent key counts as None)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _check_resume_config(old: dict, new: dict, path: str) -> dict:
    """Raise ConfigError naming each setting that differs from the checkpoint's and may
    not change; returns the differences that are allowed."""
    diff = config_differences(old, new)
    refused = {k: v for k, v in diff.items()
               if k not in RESUMABLE_KEYS + RESUMABLE_IF_SAME_DATA}
    if refused:
        what = "; ".join(f"{k} was {json.dumps(a)}, now {json.dumps(b)}"
                         for k, (a, b) in refused.items())
        raise ConfigError(f"cannot resume: {what} ({path} was written with the old value; "
                          f"only {', '.join(RESUMABLE_KEYS)} may change on --resume. Restore "
                          "the setting, or start a new run with another --out)")
    return diff


def _remove_litter(workdir: str) -> None:
    for pattern in _LITTER:
        for path in glob.glob(os.path.join(glob.escape(workdir), pattern)):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def _summary(metrics: dict, label: str) -> str:
    """'label energy MAE … (… meV/atom), force MAE … meV/Å', leaving out what the data
    had no labels for (a forces-only dataset has no energy MAE)."""
    parts = []
    if np.isfinite(metrics.get("energy_mae", np.nan)):
        parts.append(f"energy MAE {metrics['energy_mae']:.2f} meV "
                     f"({metrics.get('energy_per_atom_mae', np.nan):.2f} meV/atom)")
    if np.isfinite(metrics.get("forces_mae", np.nan)):
        parts.append(f"force MAE {metrics['forces_mae']:.2f} meV/Å")
    return f"{label} {', '.join(parts) or 'no energy or force labels'}"


def _read_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- the loop
def train_and_evaluate(config: TrainConfig, workdir: str, resume: bool = False,
                       log: Callable[[str], None] = print, progress: bool = False,
                       initial_params=None) -> dict:
    """Train a potential as ``config`` says; write ``workdir/model/``, ``metrics.json``,
    ``metrics.jsonl``, ``checkpoint.msgpack`` and the plots ``training_curves.png`` and
    ``force_parity.png``. Returns the final metrics. ``progress``: a progress bar on
    stderr (``biojax.core.progress``).

    The directory is locked for the run (a second run there is refused naming this
    one). Without ``resume``, a directory that already holds a run is refused; with it,
    the run continues from its checkpoint (or starts, when a kill came before the first
    one), and only ``RESUMABLE_KEYS`` may differ from the checkpoint's configuration.
    ``initial_params``: start from these parameters (a warm start, e.g. the previous model
    of ``biojax learn``; same architecture and elements) instead of a fresh initialisation."""
    if parallel.process_count() > 1:
        return _train_multiprocess(config, workdir, resume, log, progress)
    with RunLock(workdir, "training run"):
        return _train(config, workdir, resume, log, progress, initial_params)


def _train_multiprocess(config: TrainConfig, workdir: str, resume: bool, log,
                        progress: bool) -> dict:
    """One process of a multi-process run (``biojax.parallel.initialize``): all check
    ``workdir`` and wait for each other, then process 0 trains into ``workdir`` and the
    others run the same steps into a private temporary folder (deleted at the end; on
    ``resume`` it starts with copies of the checkpoint and metrics log), so that only
    process 0 writes ``workdir``."""
    import tempfile

    from jax.experimental import multihost_utils

    there = [n for n in (CHECKPOINT_FILE, METRICS_FILE, METRICS_LOG, MODEL_DIR)
             if os.path.exists(os.path.join(workdir, n))]
    if there and not resume:
        raise ConfigError(f"{workdir} already holds a training run ({', '.join(there)}); "
                          "pass --resume to continue it or choose another --out")
    multihost_utils.sync_global_devices("biojax train: output checked")
    if parallel.is_writer():
        with RunLock(workdir, "training run"):
            return _train(config, workdir, resume, log, progress)
    scratch = tempfile.mkdtemp(prefix=f"biojax-train-p{jax.process_index()}-")
    try:
        for name in (CHECKPOINT_FILE, METRICS_LOG):
            if resume and os.path.exists(os.path.join(workdir, name)):
                shutil.copy(os.path.join(workdir, name), os.path.join(scratch, name))
        return _train(config, scratch, resume, lambda *_: None, False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train(config: TrainConfig, workdir: str, resume: bool, log, show_progress: bool,
           initial_params=None) -> dict:
    t = config.training
    ckpt_path = os.path.join(workdir, CHECKPOINT_FILE)
    log_path = os.path.join(workdir, METRICS_LOG)
    model_dir = os.path.join(workdir, MODEL_DIR)
    _remove_litter(workdir)
    config_dict = to_dict(config)
    config_json = json.dumps(config_dict, sort_keys=True)
    has_ckpt = os.path.exists(ckpt_path)
    results_there = [n for n in (CHECKPOINT_FILE, METRICS_FILE, METRICS_LOG, MODEL_DIR)
                     if os.path.exists(os.path.join(workdir, n))]
    if results_there and not resume:
        raise ConfigError(f"{workdir} already holds a training run ({', '.join(results_there)}); "
                          "pass --resume to continue it or choose another --out")
    payload = None
    if resume and has_ckpt:
        payload = _read_checkpoint(ckpt_path, workdir)
        allowed = _check_resume_config(json.loads(payload["progress"]["config"]),
                                       config_dict, ckpt_path)
    elif resume:
        finished = [n for n in (METRICS_FILE, MODEL_DIR) if os.path.exists(os.path.join(workdir, n))]
        if finished:
            raise ConfigError(f"{workdir} holds results ({', '.join(finished)}) but no "
                              f"{CHECKPOINT_FILE} to resume from; choose another --out")
        if results_there:
            log(f"no checkpoint in {workdir} (the run was stopped before its first epoch "
                "ended); starting it again")
        else:
            log(f"no checkpoint in {workdir}; starting a new run")

    dtype = np.float64 if t.precision == "float64" else np.float32
    if dtype == np.float64:
        require_x64("[training] precision = \"float64\"")
    loss = t.make_loss()
    splits = load_splits(config, log, loss)
    prints = {"train": fingerprint(splits["train"]), "valid": fingerprint(splits["valid"])}
    if payload is not None:
        old = payload["progress"].get("data", {})
        changed = [name for name in ("train", "valid") if old.get(name) != prints[name]]
        if changed:
            keys = [k for k in allowed if k.startswith("data.")]
            why = (f"the setting(s) {', '.join(f'{k} (was {json.dumps(allowed[k][0])}, now {json.dumps(allowed[k][1])})' for k in keys)} change it"
                   if keys else "the data files' contents changed since the checkpoint")
            raise ConfigError(f"cannot resume: the {' and '.join(changed)} frames differ from "
                              f"those the run in {workdir} was trained on: {why}")
    elements = elements_of(splits["train"])
    isolated = config.data.isolated_atoms or None
    reference = reference_energies_for(splits["train"], elements, isolated)
    # species mapping and reference energies only; the model comes once scale/shift are known
    base = Potential(model=None, params=None, cutoff=config.cutoff, elements=elements,
                     reference_energies=tuple(float(e) for e in reference))
    scale, shifts = per_species_scale_shift(splits["train"], base.species_of,
                                            base.reference_energy, len(elements))
    architecture = dict(config.architecture)
    if t.ensemble > 1:  # K members, seeds seed .. seed + K - 1, trained side by side
        potential = init_ensemble(architecture, elements, config.cutoff, reference,
                                  [t.seed + k for k in range(t.ensemble)], dtype=dtype,
                                  scale=scale, shifts=shifts)
    else:
        potential = init_potential(architecture, elements, config.cutoff, reference,
                                   key=jax.random.PRNGKey(t.seed), dtype=dtype, scale=scale,
                                   shifts=shifts)
    if initial_params is not None:  # warm start: same tree, cast to this run's precision
        try:
            potential = potential.replace(params=jax.tree_util.tree_map(
                lambda x, y: jnp.asarray(x, y.dtype).reshape(y.shape), initial_params,
                potential.params))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"warm start: the initial parameters do not fit the model "
                              f"{config.architecture} ({exc})") from None
    datasets = {name: GraphDataset(s, config.cutoff, potential.species_of,
                                   potential.reference_energy, dtype, labels=loss.labels)
                for name, s in splits.items()}
    batch_size = min(t.batch_size, len(datasets["train"]))
    steps_per_epoch = len(datasets["train"]) // batch_size
    mesh = parallel.mesh(t.devices, DATA_AXIS, "[training] devices")
    n_devices = 1 if mesh is None else mesh.size
    parallel.check_divisible(batch_size, mesh, "batch_size", "[training] devices")
    tx = make_optimizer(t)
    state = init_train_state(potential, tx)
    samples = (bootstrap_samples(len(datasets["train"]), [t.seed + k for k in range(t.ensemble)])
               if t.bootstrap else None)
    if samples is not None:
        log("bootstrap: the members see "
            + ", ".join(str(len(np.unique(m))) for m in samples)
            + f" distinct structures of {len(datasets['train'])}")
    train_step = make_train_step(potential, tx, loss, t.ema_decay, mesh, t.bootstrap)
    compute_stress = loss.needs_stress or any(s.stress is not None for s in splits["valid"])
    predict_fn = make_predict_fn(potential, compute_stress, loss)

    progress = {"epoch": 0, "best_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0,
                "seconds": 0.0, "train_seconds": 0.0, "last_epoch_seconds": 0.0,
                "config": config_json, "data": prints,
                "schedule": lr_schedule.new_state(t), "loss_stage": 0}
    best_params = state.ema_params
    if payload is not None:
        state, best_params = _restore(payload, state, ckpt_path, workdir)
        progress = payload["progress"]
        progress["config"], progress["data"] = config_json, prints
        for key, (a, b) in allowed.items():
            log(f"resume: {key} was {json.dumps(a)}, now {json.dumps(b)}")
        if "training.epochs" in allowed and progress["schedule"]["kind"] == "cosine":
            step = _step_of(state)
            log(f"learning rate: the cosine decay now ends at epoch {t.epochs}; at step "
                f"{step} it is {lr_schedule.learning_rate(progress['schedule'], t, step, steps_per_epoch):.3g}")
        truncate_jsonl(log_path, "epoch", progress["epoch"])
        if progress["epoch"] > 0:  # the checkpoint's best model (a kill may have come
            save_potential(potential.replace(params=best_params), model_dir)  # before it)
        log(f"resuming from epoch {progress['epoch']} ({progress['seconds']:.0f} s trained)")
    else:  # record the untrained model's error as epoch 0, the baseline for progress
        initial, initial_loss = evaluate_dataset(datasets["valid"], state.params, predict_fn,
                                                 batch_size, loss)
        atomic_write_text(log_path, json.dumps(
            {"epoch": 0, "valid_loss": initial_loss, "seconds": 0.0,
             **{f"valid_{k}": round(v, 4) for k, v in initial.items()}}) + "\n")

    def switch_loss():  # the loss-weight switch (biojax.train.schedule.switch_due)
        new = t.switched_loss()
        stress = new.needs_stress or any(s.stress is not None for s in splits["valid"])
        return (new, make_train_step(potential, tx, new, t.ema_decay, mesh, t.bootstrap),
                make_predict_fn(potential, stress, new))

    if progress.get("loss_stage", 0):  # resumed after the switch
        loss, train_step, predict_fn = switch_loss()
    sched = progress["schedule"]
    budget = (t.max_minutes or 0) * 60
    stop_reason = "epochs"
    bar = progress_bar(t.epochs * steps_per_epoch, "train", show_progress, unit="step")
    bar.update(progress["epoch"] * steps_per_epoch)
    try:
        for epoch in range(progress["epoch"] + 1, t.epochs + 1):
            if budget and progress["seconds"] + progress["last_epoch_seconds"] > budget:
                stop_reason = "time budget"
                break
            if progress["bad_epochs"] >= t.patience:
                stop_reason = "early stopping"
                break
            start = time.perf_counter()
            order = np.random.default_rng([t.seed, epoch]).permutation(len(datasets["train"]))
            losses = []
            step = _step_of(state)
            fraction = progress["seconds"] / budget if budget else 0.0
            if not progress.get("loss_stage", 0) and lr_schedule.switch_due(
                    sched, t, epoch, fraction):
                loss, train_step, predict_fn = switch_loss()
                progress.update(loss_stage=1, best_loss=float("inf"), bad_epochs=0)
                log(f"epoch {epoch}: loss weights switched to "
                    + ", ".join(f"{term.name} {term.weight:g}" for term in loss.terms)
                    + " (the best-model record restarts)")
            first_lr = lr_schedule.learning_rate(sched, t, step, steps_per_epoch, fraction)
            if samples is not None:  # every member its own batch of its resample
                batches = device_batches(datasets["train"], batch_size * t.ensemble,
                                         bootstrap_order(samples, batch_size, [t.seed, epoch]),
                                         t.ensemble)
            elif mesh is None:
                batches = datasets["train"].batches(batch_size, order, drop_last=True)
            else:
                batches = device_batches(datasets["train"], batch_size, order, n_devices)
            for k, batch in enumerate(batches):
                lr = lr_schedule.learning_rate(sched, t, step + k, steps_per_epoch, fraction)
                state, batch_loss = train_step(state, batch, np.asarray(lr, dtype))
                losses.append(batch_loss)
                bar.update((epoch - 1) * steps_per_epoch + k + 1)
            train_loss = float(np.mean(jax.device_get(losses)))
            if mesh is not None:  # validate, save and checkpoint on one device
                state = jax.tree_util.tree_map(jnp.asarray, jax.device_get(state))
            progress["train_seconds"] += time.perf_counter() - start
            if not np.isfinite(train_loss):
                raise DataError(f"training diverged at epoch {epoch} (loss {train_loss}; the "
                                f"data were checked for NaN labels when read): lower "
                                f"learning_rate (now {first_lr:.3g}) or clip_norm, or check "
                                "the data for extreme forces")
            valid, v_loss = evaluate_dataset(datasets["valid"], state.ema_params, predict_fn,
                                             batch_size, loss)
            progress["last_epoch_seconds"] = time.perf_counter() - start
            progress["seconds"] += progress["last_epoch_seconds"]
            improved = v_loss < progress["best_loss"]
            if improved:
                progress.update(best_loss=v_loss, best_epoch=epoch, bad_epochs=0)
                best_params = state.ema_params
            else:
                progress["bad_epochs"] += 1
            note = lr_schedule.after_epoch(sched, t, improved, _step_of(state), steps_per_epoch)
            progress["epoch"] = epoch
            record = {"epoch": epoch, "train_loss": train_loss, "valid_loss": v_loss,
                      "learning_rate": first_lr,
                      "seconds": round(progress["seconds"], 3),
                      **{f"valid_{k}": round(v, 4) for k, v in valid.items()}}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            _save_checkpoint(ckpt_path, state, progress, best_params)
            if improved:
                save_potential(potential.replace(params=best_params), model_dir)
            n_train = steps_per_epoch * batch_size
            bar.set(loss=f"{train_loss:.3g}", F=f"{valid.get('forces_mae', float('nan')):.1f}")
            log(f"epoch {epoch:4d}/{t.epochs}  loss {train_loss:.4g}  "
                + (f"val E {valid['energy_mae']:.2f} meV  "
                   if np.isfinite(valid.get("energy_mae", np.nan)) else "val ")
                + f"F {valid.get('forces_mae', float('nan')):.2f} meV/Å  "
                f"lr {first_lr:.2e}  "
                f"{n_train / progress['last_epoch_seconds']:.0f} conf/s  "
                f"{progress['seconds'] / 60:.1f} min{'  *' if improved else ''}")
            if note:
                log(note)
    finally:
        bar.close()

    best = potential.replace(params=best_params)
    save_potential(best, model_dir)  # also after a resume that ran no further epoch
    results = {"stop_reason": stop_reason, "epochs_run": progress["epoch"],
               "best_epoch": progress["best_epoch"],
               "training_seconds": round(progress["seconds"], 2),
               "configurations_per_second": round(
                   progress["epoch"] * steps_per_epoch * batch_size
                   / max(progress["train_seconds"], 1e-9), 2),
               "n_train": len(datasets["train"]), "n_valid": len(datasets["valid"]),
               "n_test": len(datasets["test"]),
               "data": {"train_file": config.data.train_file,
                        "valid_file": config.data.valid_file or config.data.train_file,
                        "test_file": (config.data.test_file or config.data.train_file)
                        if len(datasets["test"]) else None},
               "schedule": sched["kind"], "architecture": config.architecture["name"],
               "device": jax.devices()[0].device_kind,
               "valid": evaluate_dataset(datasets["valid"], best_params, predict_fn,
                                         batch_size)}
    log(f"stopped ({stop_reason}) after epoch {progress['epoch']}; best epoch "
        f"{progress['best_epoch']}: " + _summary(results["valid"], "validation"))
    parity = "valid"
    if len(datasets["test"]):
        results["test"] = evaluate_dataset(datasets["test"], best_params, predict_fn, batch_size)
        log(_summary(results["test"], f"test ({len(datasets['test'])} structures)"))
        parity = "test"
    _plots(workdir, log_path, datasets[parity], parity, results[parity], best_params,
           predict_fn, batch_size, log)
    atomic_write_text(os.path.join(workdir, METRICS_FILE), json.dumps(results, indent=2))
    return results


def _plots(workdir, log_path, dataset, name, metrics, params, predict_fn, batch_size, log):
    """``training_curves.png`` and ``force_parity.png`` (a failure is reported, not
    raised: the trained model and metrics are already written)."""
    from biojax.train import plots

    try:
        plots.training_curves(_read_log(log_path), os.path.join(workdir, "training_curves.png"))
        ref, pred = force_pairs(dataset, params, predict_fn, batch_size)
        if ref.size:
            label = {"valid": "validation", "test": "test"}[name]
            plots.force_parity(ref, pred, metrics.get("forces_mae", float("nan")),
                               f"{label} set, {len(dataset)} structures",
                               os.path.join(workdir, "force_parity.png"))
    except Exception as exc:  # noqa: BLE001 - plots are a convenience
        log(f"warning: plots not written ({type(exc).__name__}: {exc})")
