"""MD checkpoints: the whole host-side state of a run in one file, written atomically.

A checkpoint holds the integrator state and the energy terms' states of every replica
(leading replica axis), the neighbor list's indices and reference positions, and JSON
metadata: step, neighbor capacity, initial temperature, the config, and each output
file's size so that resuming can cut the files back to what the checkpoint saw. It is
written to a temporary file and renamed, so one always exists whole.
"""

from __future__ import annotations

import dataclasses
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
               "observables")


@dataclasses.dataclass
class RunState:
    """Everything the host loop carries from chunk to chunk.

    ``state`` and ``term_states`` have a leading replica axis; ``nbrs`` is the
    (replica-batched) neighbor list; ``t0`` the largest initial temperature (K), which
    sets the blow-up limit; ``step`` the number of steps done.
    """

    state: Any
    term_states: Any
    nbrs: Any
    step: int
    t0: float


def save(path: str, run: RunState, config, n_atoms: int, files: list[dict],
         columns: list[str] | None = None) -> None:
    """Write ``run``, the output files' sizes and the observables' columns to ``path``
    atomically (.npz)."""
    leaves = jax.device_get(jax.tree_util.tree_leaves((run.state, run.term_states)))
    leaves += [np.asarray(run.nbrs.idx), np.asarray(run.nbrs.reference_position)]
    meta = {"step": run.step, "n_leaves": len(leaves),
            "neighbor_capacity": int(run.nbrs.idx.shape[-1]), "t0": run.t0,
            "n_atoms": n_atoms, "config": to_dict(config), "files": files,
            "columns": columns}
    buf = io.BytesIO()
    arrays = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load(path: str) -> tuple[list[np.ndarray], dict]:
    """The leaves and metadata of a checkpoint written by :func:`save`."""
    if not os.path.isfile(path):
        raise SimulationError(f"cannot resume: no checkpoint at {path}")
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            leaves = [z[f"leaf_{i:04d}"] for i in range(meta["n_leaves"])]
    except (OSError, ValueError, KeyError) as exc:
        raise SimulationError(f"cannot resume: checkpoint {path} unreadable: {exc}") from None
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
