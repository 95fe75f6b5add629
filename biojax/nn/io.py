"""Saving and loading a Potential as one directory.

Layout (format version 2)::

    MODEL_DIR/potential.json   architecture (model name or import path "module:Name" and
                               its hyperparameters), cutoff, elements, scale, shifts,
                               reference energies, units, dtype, biojax version,
                               format_version; ensembles add ``ensemble``
                               {kind: "full" | "shallow", members: K} (a full
                               ensemble's parameters carry a leading member axis)
    MODEL_DIR/params.msgpack   the parameter pytree (flax msgpack of numpy arrays)

The loader accepts every format version up to its own and fills defaults for keys added
later, so a model written by this version stays loadable by later ones. Format 1 kept the
output scale and shifts inside the architecture (``atomic_scale``, ``atomic_shifts``); they
are moved to the Potential on load. A model named by import path loads wherever its module
is importable. The directory is
written to a temporary sibling and renamed into place, so a crash never leaves a
half-written model.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import serialization

from biojax.core.atomic import atomic_dir
from biojax.core.errors import ConfigError, ModelError
from biojax.nn.potential import Potential

FORMAT_VERSION = 2
_META_FILE = "potential.json"
_PARAMS_FILE = "params.msgpack"


def save_potential(potential: Potential, directory: str | os.PathLike,
                   extra: dict | None = None) -> None:
    """Write ``potential`` to ``directory`` atomically (replacing an existing one)."""
    from biojax import __version__

    leaves = jax.tree_util.tree_leaves(potential.params)
    dtype = str(np.asarray(leaves[0]).dtype) if leaves else "float32"
    meta = {
        "format_version": FORMAT_VERSION,
        "biojax_version": __version__,
        "architecture": potential.architecture,
        "cutoff": potential.cutoff,
        "scale": potential.scale,
        "shifts": list(potential.shifts),
        "elements": list(potential.elements),
        "reference_energies": list(potential.reference_energies),
        "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom",
                  "stress": "eV/Angstrom^3"},
        "dtype": dtype,
        "params_file": _PARAMS_FILE,
        **(extra or {}),
    }
    describe = getattr(potential.model, "describe", None)  # ensembles (biojax.nn.ensemble)
    if callable(describe):
        meta["ensemble"] = describe()
    params = jax.tree_util.tree_map(np.asarray, potential.params)
    with atomic_dir(directory, prefix=".model-tmp-") as tmp:
        with open(os.path.join(tmp, _PARAMS_FILE), "wb") as f:
            f.write(serialization.msgpack_serialize(_to_plain(params)))
        with open(os.path.join(tmp, _META_FILE), "w") as f:
            json.dump(meta, f, indent=2)


def _to_plain(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _to_plain(v) for k, v in tree.items()}
    return tree


def _flat_shapes(tree) -> dict[str, tuple]:
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict) or hasattr(node, "items"):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            flat[prefix] = tuple(np.shape(node))

    walk(tree, "")
    return flat


def check_params(model, params, num_species: int, directory: str) -> None:
    """Raise ModelError naming ``directory`` unless ``params`` has exactly the parameter
    names and shapes that ``model`` (built from the recorded architecture) initialises
    (models with a Flax-style ``init``; pair potentials have none and are not checked):
    a potential.json that disagrees with its params.msgpack is caught at load time, not
    as a shape error deep inside a jitted function."""
    import jax.numpy as jnp

    from biojax.core.graph import Graph

    if not callable(getattr(model, "init", None)):
        return  # not a Flax-style model (e.g. a pair potential): nothing to trace
    graph = Graph(vectors=jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], jnp.float32),
                  species=jnp.zeros(2, jnp.int32), senders=jnp.array([0, 1], jnp.int32),
                  receivers=jnp.array([1, 0], jnp.int32), edge_mask=jnp.ones(2, bool),
                  node_mask=jnp.ones(2, bool))
    try:
        expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), graph)
    except Exception as exc:  # a user model whose init fails on the probe graph
        raise ModelError(f"{directory}: cannot initialise the recorded architecture to "
                         f"check its parameters ({type(exc).__name__}: {exc})") from None
    want, have = _flat_shapes(_to_plain(expected)), _flat_shapes(_to_plain(params))
    where = f"{directory}: {_META_FILE} and {_PARAMS_FILE} disagree"
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"parameter(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                         "missing from the parameter file")
        if extra:
            parts.append(f"unexpected parameter(s) {', '.join(extra[:5])}"
                         f"{' ...' if len(extra) > 5 else ''}")
        raise ModelError(f"{where}: {'; '.join(parts)} (the architecture recorded in "
                         f"{_META_FILE} does not match the saved parameters)")
    wrong = [k for k in sorted(want) if want[k] != have[k]]
    if wrong:
        k = wrong[0]
        raise ModelError(f"{where}: parameter {k} has shape {have[k]} but the recorded "
                         f"architecture ({num_species} species) needs {want[k]}"
                         f"{f' ({len(wrong) - 1} more differ)' if len(wrong) > 1 else ''}; "
                         f"check the hyperparameters (e.g. features) in {_META_FILE}")


def load_potential(directory: str | os.PathLike) -> Potential:
    """Load a Potential saved by ``save_potential`` (any format version ≤ current)."""
    from biojax.nn.models import build_model

    directory = os.fspath(directory)
    meta_path = os.path.join(directory, _META_FILE)
    if not os.path.isdir(directory):
        raise ModelError(f"model directory not found: {directory}")
    if not os.path.isfile(meta_path):
        raise ModelError(f"{directory}: not a biojax model (no {_META_FILE})")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_path}: malformed JSON: {exc}") from None
    version = int(meta.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise ModelError(f"{directory}: written with model format {version} by biojax "
                         f"{meta.get('biojax_version')}; this biojax reads up to {FORMAT_VERSION}")
    try:
        elements = tuple(int(z) for z in meta["elements"])
        cutoff = float(meta["cutoff"])
        architecture = dict(meta["architecture"])
        reference = tuple(float(e) for e in meta.get("reference_energies", [0.0] * len(elements)))
        # format 1 kept the output scale and shifts among the hyperparameters
        scale = float(meta.get("scale", architecture.pop("atomic_scale", 1.0)))
        shifts = tuple(float(x) for x in meta.get("shifts", architecture.pop("atomic_shifts", ())))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{meta_path}: missing or malformed field {exc}") from None
    params_path = os.path.join(directory, meta.get("params_file", _PARAMS_FILE))
    try:
        with open(params_path, "rb") as f:
            params = serialization.msgpack_restore(f.read())
    except FileNotFoundError:
        raise ModelError(f"{directory}: parameter file {os.path.basename(params_path)} missing") from None
    except Exception as exc:
        raise ModelError(f"{params_path}: cannot be read ({exc})") from None
    try:
        model = build_model(architecture, len(elements), cutoff)
        ensemble = meta.get("ensemble")
        if ensemble and ensemble.get("kind") == "full":  # K members, stacked parameters
            from biojax.nn.ensemble import EnsembleModel

            model = EnsembleModel(model, int(ensemble["members"]), "full")
    except ConfigError as exc:
        raise ModelError(f"{meta_path}: the recorded model cannot be built: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{meta_path}: malformed field ensemble ({exc})") from None
    params = jax.tree_util.tree_map(np.asarray, params)  # keep the stored precision
    check_params(model, params, len(elements), directory)
    return Potential(model=model, params=params, cutoff=cutoff, elements=elements,
                     reference_energies=reference, architecture=architecture, scale=scale,
                     shifts=shifts)
