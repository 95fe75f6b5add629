"""A small generic training loop for generators and classifiers with biojax's run rules.

:func:`fit` runs ``step_fn(state, key) -> (state, metrics)`` for ``n_steps`` steps over an
arbitrary pytree ``state`` (parameters, optax state, ...). Every random choice of step
``k`` (the data batch, the noise) is drawn inside ``step_fn`` from
``key = jax.random.fold_in(PRNGKey(seed), k)``, so a run killed and resumed from its
checkpoint gives the same numbers as an uninterrupted one.

Files in ``workdir`` (``name`` distinguishes several models in one run directory):

- ``<name>.checkpoint.msgpack``: the state and a progress record (step, seconds, config),
  written atomically every ``checkpoint_every`` steps and at the end;
- ``<name>.metrics.jsonl``: one JSON line ``{"step", "seconds", <metrics>}`` every
  ``log_every`` steps; on resume the lines after the checkpoint's step are dropped.

The graph-specific potential trainer is :mod:`biojax.train.loop`; this loop shares its
checkpoint format (flax msgpack), atomic writes, progress bar and resume checks.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import serialization

from biojax.core.atomic import atomic_write_bytes, truncate_jsonl
from biojax.core.errors import ConfigError, DataError
from biojax.core.progress import progress as progress_bar

__all__ = ["fit", "load_checkpoint", "checkpoint_path", "metrics_path"]


def checkpoint_path(workdir: str, name: str) -> str:
    """``workdir/<name>.checkpoint.msgpack``."""
    return os.path.join(workdir, f"{name}.checkpoint.msgpack")


def metrics_path(workdir: str, name: str) -> str:
    """``workdir/<name>.metrics.jsonl``."""
    return os.path.join(workdir, f"{name}.metrics.jsonl")


def _save(path: str, state, progress: dict) -> None:
    tree = jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(jax.device_get(state)))
    atomic_write_bytes(path, serialization.msgpack_serialize(
        {"state": tree, "progress": json.dumps(progress)}))


def load_checkpoint(path: str, template) -> tuple[Any, dict]:
    """The state (shaped like ``template``) and progress record stored at ``path``;
    DataError if the file is unreadable or its shapes differ from ``template``."""
    try:
        with open(path, "rb") as f:
            payload = serialization.msgpack_restore(f.read())
        progress = json.loads(payload["progress"])
        state = serialization.from_state_dict(template, payload["state"])
        shapes = jax.tree_util.tree_map(np.shape, template)
        if jax.tree_util.tree_map(np.shape, state) != shapes:
            raise ValueError("array shapes differ from the configured model")
    except Exception as exc:  # msgpack, JSON, structure: all mean the file cannot be used
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); the "
                        "checkpoint is corrupt or from another model, so --resume cannot "
                        "continue it; start a new run with another --out") from None
    return jax.tree_util.tree_map(jax.numpy.asarray, state), progress


def fit(step_fn: Callable, state, n_steps: int, workdir: str, name: str, *, seed: int = 0,
        config: dict | None = None, resume: bool = False, checkpoint_every: int = 200,
        log_every: int = 50, log: Callable[[str], None] = print, progress: bool = True,
        max_minutes: float | None = None, on_step: Callable[[int], None] | None = None):
    """Train ``state`` with ``step_fn`` for ``n_steps`` steps (see module doc); returns the
    final state. ``resume``: continue from ``<name>.checkpoint.msgpack`` if present (its
    config must equal ``config``); without it an existing checkpoint is an error.
    ``max_minutes``: stop early (checkpointed) when the wall-clock budget is spent.
    ``on_step(k)``: called after step k is done (tests use it to interrupt a run)."""
    os.makedirs(workdir, exist_ok=True)
    ckpt, mlog = checkpoint_path(workdir, name), metrics_path(workdir, name)
    config_json = json.dumps(config or {}, sort_keys=True, default=str)
    record = {"step": 0, "seconds": 0.0, "config": config_json, "seed": seed}
    if os.path.exists(ckpt):
        if not resume:
            raise ConfigError(f"{workdir} already holds a {name} checkpoint ({ckpt}); pass "
                              "--resume to continue it or choose another --out")
        state, record = load_checkpoint(ckpt, state)
        if record.get("config") != config_json or record.get("seed") != seed:
            from biojax.train.loop import config_differences

            diff = config_differences(json.loads(record.get("config", "{}")),
                                      json.loads(config_json))
            what = "; ".join(f"{k} was {json.dumps(a)}, now {json.dumps(b)}"
                             for k, (a, b) in diff.items()) or f"seed was {record.get('seed')}"
            raise ConfigError(f"cannot resume {name} from {ckpt}: {what}; restore the "
                              "settings or start a new run with another --out")
        truncate_jsonl(mlog, "step", record["step"])
        if record["step"] < n_steps:
            log(f"{name}: resuming from step {record['step']}")
    elif os.path.exists(mlog):
        os.remove(mlog)  # a run killed before its first checkpoint: start it again
    base = jax.random.PRNGKey(seed)
    start_step = int(record["step"])
    budget = (max_minutes or 0) * 60
    bar = progress_bar(n_steps, name, progress, unit="step")
    bar.update(start_step)
    t0, seconds0 = time.perf_counter(), float(record["seconds"])
    pending: list[dict] = []
    try:
        for k in range(start_step + 1, n_steps + 1):
            state, metrics = step_fn(state, jax.random.fold_in(base, k))
            if k % log_every == 0 or k == n_steps:
                values = {m: float(v) for m, v in jax.device_get(metrics).items()}
                if not all(np.isfinite(v) for v in values.values()):
                    raise DataError(f"{name} training diverged at step {k} ({values}); "
                                    "lower the learning rate")
                seconds = seconds0 + time.perf_counter() - t0
                pending.append({"step": k, "seconds": round(seconds, 3), **values})
                bar.set(**{m: f"{v:.3g}" for m, v in list(values.items())[:3]})
            bar.update(k)
            out_of_time = budget and seconds0 + time.perf_counter() - t0 > budget
            if k % checkpoint_every == 0 or k == n_steps or out_of_time:
                record.update(step=k, seconds=seconds0 + time.perf_counter() - t0)
                if pending:  # the log never runs ahead of the checkpoint
                    with open(mlog, "a") as f:
                        f.write("".join(json.dumps(p) + "\n" for p in pending))
                    pending = []
                _save(ckpt, state, record)
            if on_step is not None:
                on_step(k)
            if out_of_time:
                log(f"{name}: time budget ({max_minutes} min) spent at step {k}/{n_steps}")
                break
    finally:
        bar.close()
    return state


def read_metrics(workdir: str, name: str) -> list[dict]:
    """The records of ``<name>.metrics.jsonl`` (empty if none)."""
    path = metrics_path(workdir, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
