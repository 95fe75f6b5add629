"""MD checkpoints: the whole host-side state of a run in one file, written atomically.

A checkpoint holds the integrator state and the energy terms' states of every replica
(leading replica axis), the neighbor list's indices and reference positions, and JSON
metadata: step, neighbor capacity, initial temperature, the config, and each output
file's size so that resuming can cut the files back to what the checkpoint saw. It is
written to a temporary file and renamed, so one always exists whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.atomic import atomic_write_bytes
from biojax.core.config import to_dict
from biojax.core.errors import ConfigError, SimulationError

CHECKPOINT_FILE = "checkpoint.npz"

# settings that must not change between a run and its resumption
RESUME_KEYS = ("ensemble", "timestep_fs", "temperature_K", "pressure_bar", "replicas",
               "seed", "chunk_steps", "observe_every", "frame_every", "trajectory_format",
               "observables_format", "friction_per_ps", "thermostat_tau_fs",
               "barostat_tau_fs", "chain_length", "hydrogen_mass", "energy_terms",
               "observables", "replica_exchange", "bias", "uncertainty")


@dataclasses.dataclass
class RunState:
    """Everything the host loop carries from chunk to chunk.

    ``state`` and ``term_states`` have a leading replica axis; ``nbrs`` is the
    (replica-batched) neighbor list; ``t0`` the largest initial temperature (K), which
    sets the blow-up limits; ``e0`` each replica's potential energy at step 0 (eV), the
    reference of the energy check; ``step`` the number of steps done; ``started``
    whether the step-0 output has been written (the first checkpoint of a run is written
    before any output file, so a run killed before it leaves no results behind).
    """

    state: Any
    term_states: Any
    nbrs: Any
    step: int
    t0: float
    e0: list | None = None
    started: bool = True


def model_identity(potential) -> dict:
    """What identifies a Potential: its architecture (name and hyperparameters), cutoff,
    elements, scale, shifts and reference energies, and a sha256 of its parameters (every
    leaf's path, dtype, shape and bytes). Trained and classical potentials alike (a
    classical potential's σ/ε or D/α/r0 tables are its parameters)."""
    h = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(potential.params)
    for path, leaf in leaves:
        x = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{x.dtype.str}|{x.shape}|".encode())
        h.update(x.tobytes())
    parts = {"architecture": json.loads(json.dumps(potential.architecture, default=str)),
             "cutoff": float(potential.cutoff),
             "elements": [int(z) for z in potential.elements],
             "scale": float(potential.scale),
             "shifts": [float(x) for x in potential.shifts],
             "reference_energies": [float(x) for x in potential.reference_energies],
             "parameters_sha256": h.hexdigest()}
    whole = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"sha256": whole, "parts": parts}


def save(path: str, run: RunState, config, n_atoms: int, files: list[dict],
         columns: list[str] | None = None, model: dict | None = None,
         hooks: list | None = None) -> None:
    """Write ``run``, the output files' sizes, the observables' columns, the model's
    identity (:func:`model_identity`) and the host hooks' states (JSON dicts, e.g. the
    replica-exchange state) to ``path`` atomically (.npz)."""
    leaves = jax.device_get(jax.tree_util.tree_leaves((run.state, run.term_states)))
    leaves += [np.asarray(run.nbrs.idx), np.asarray(run.nbrs.reference_position)]
    meta = {"step": run.step, "n_leaves": len(leaves),
            "neighbor_capacity": int(run.nbrs.idx.shape[-1]), "t0": run.t0,
            "e0": None if run.e0 is None else [float(e) for e in run.e0],
            "started": bool(run.started),
            "n_atoms": n_atoms, "config": to_dict(config), "files": files,
            "columns": columns, "model": model, "hooks": hooks or []}
    buf = io.BytesIO()
    arrays = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load(path: str) -> tuple[list[np.ndarray], dict]:
    """The leaves and metadata of a checkpoint written by :func:`save`."""
    if not os.path.isfile(path):
        raise SimulationError(
            f"cannot resume: no checkpoint at {path} (a run killed before its first "
            "checkpoint has written no results: start it again without --resume)")
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            leaves = [z[f"leaf_{i:04d}"] for i in range(meta["n_leaves"])]
        missing = [k for k in ("step", "neighbor_capacity", "t0", "n_atoms", "config",
                               "files") if k not in meta]
        if missing:
            raise KeyError(f"metadata lacks {missing}")
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib, JSON, numpy: all mean damaged
        size = os.path.getsize(path)
        raise SimulationError(
            f"cannot resume: checkpoint {path} ({size} bytes) is damaged or truncated "
            f"({type(exc).__name__}: {exc}). Checkpoints are written atomically, so this "
            "file was changed or copied incompletely after the run wrote it; restore it, "
            "or start the run again in another folder") from None
    return leaves, meta


def check_compatible(path: str, meta: dict, config, n_atoms: int) -> None:
    """Refuse to resume with settings that differ from the checkpoint's."""
    saved, current = meta["config"], to_dict(config)
    defaults = to_dict(type(config)())  # what runs written before a key existed used
    for k in RESUME_KEYS:
        was, now = saved.get(k, defaults.get(k)), current.get(k)
        if was != now:
            raise ConfigError(f"cannot resume {path}: {k} was {was!r}, now {now!r}")
    if meta["n_atoms"] != n_atoms:
        raise ConfigError(f"cannot resume {path}: {meta['n_atoms']} atoms, structure has "
                          f"{n_atoms}")
    if meta["step"] > config.steps:
        raise ConfigError(f"cannot resume {path}: checkpoint at step {meta['step']} is "
                          f"beyond steps = {config.steps}")


def check_same_model(path: str, meta: dict, model: dict) -> None:
    """Refuse to resume with a potential other than the one the run started with, naming
    what differs (checkpoints written before the identity was recorded are accepted)."""
    saved = meta.get("model")
    if not saved or saved.get("sha256") == model["sha256"]:
        return
    was, now = saved.get("parts", {}), model["parts"]
    diffs = []
    for key in now:
        if was.get(key) == now[key]:
            continue
        if key == "parameters_sha256":
            diffs.append(f"parameters differ (sha256 {str(was.get(key))[:12]}… in the "
                         f"checkpoint, {now[key][:12]}… now)")
        else:
            diffs.append(f"{key} was {was.get(key)!r}, now {now[key]!r}")
    raise ConfigError(
        f"cannot resume {path} with another model: {'; '.join(diffs) or 'identity differs'}."
        " A run continued with a different potential would mix two potentials; resume "
        "with the model the run started with, or start a new run in another folder")


def restore_leaves(path: str, leaves: list[np.ndarray], template) -> Any:
    """The (state, term_states) pytree from checkpoint leaves, shaped like ``template``.
    Checkpoints of one-replica runs written before the replica axis was always present
    get it back."""
    treedef = jax.tree_util.tree_structure(template)
    expected = [np.shape(x) for x in jax.tree_util.tree_leaves(template)]
    if len(leaves) != len(expected):
        raise SimulationError(f"cannot resume {path}: saved state does not match this system")
    fixed = []
    for x, shape in zip(leaves, expected):
        if np.shape(x) != shape and shape[:1] == (1,) and np.shape(x) == shape[1:]:
            x = x[None]
        if np.shape(x) != shape:
            raise SimulationError(f"cannot resume {path}: saved state does not match this "
                                  "system")
        fixed.append(jnp.asarray(x))
    return jax.tree_util.tree_unflatten(treedef, fixed)
