"""Choosing a diverse batch of candidate structures to label, within a budget.

Structures are compared by the model's own view of them: the per-atom features a model
computes before its readout (SchNet/PaiNN ``sow`` them as ``intermediates/features``; for
an ensemble, those of member 0, or of the shared trunk of a shallow one), pooled per
structure as the mean feature of each element's atoms (zeros for an absent element), so
a descriptor has ``n_elements × F`` entries. Each column is standardised over the
candidates. Two rules:

- ``"fps"``: farthest-point sampling, greedy max–min Euclidean distance, starting from
  the structure farthest from the mean (or from the already labelled set ``reference``,
  whose structures count as chosen).
- ``"kmeans"``: k-means with k = budget (``biojax.analysis.cluster.kmeans``, seeded) and
  the structure nearest each centre.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from biojax.core.errors import ConfigError, ModelError

METHODS = ("fps", "kmeans")


def _feature_model(potential):
    """(model, params) whose ``apply`` sows per-atom features."""
    from biojax.nn.ensemble import is_ensemble

    model, params = potential.model, potential.params
    if is_ensemble(potential):
        if model.kind == "full":
            return model.member, jax.tree_util.tree_map(lambda x: x[0], params)
        return model.member, params
    return model, params


def atomic_features(potential, structures: Sequence, batch_size: int = 16
                    ) -> list[np.ndarray]:
    """Per-atom features (n_atoms, F) of each structure (``biojax.data.io.Structure``)."""
    from biojax.core.graph import batch_graph
    from biojax.data.graphs import GraphDataset

    model, params = _feature_model(potential)
    if not hasattr(model, "apply"):
        raise ModelError("this model has no per-atom features to select with")

    @jax.jit
    def features(p, batch):
        _, state = model.apply(p, batch_graph(batch.positions, batch),
                               mutable=["intermediates"])
        return state["intermediates"]["features"][0]

    data = GraphDataset(list(structures), potential.cutoff, potential.species_of,
                        potential.reference_energy)
    out = []
    for batch in data.batches(batch_size):
        try:
            f = np.asarray(features(params, batch), np.float64)
        except KeyError:
            raise ModelError(f"model {potential.architecture.get('name')!r} does not expose "
                             "per-atom features (sow 'intermediates'/'features' before its "
                             "readout)") from None
        g = np.asarray(batch.graph_index)
        mask = np.asarray(batch.node_mask)
        for k in range(int(np.sum(np.asarray(batch.graph_mask)))):
            out.append(f[mask & (g == k)])
    return out


def descriptors(potential, structures: Sequence, batch_size: int = 16) -> np.ndarray:
    """(S, n_elements × F): per structure, the mean feature of each element's atoms."""
    feats = atomic_features(potential, structures, batch_size)
    n_el = len(potential.elements)
    rows = []
    for s, f in zip(structures, feats):
        species = potential.species_of(s.numbers)
        row = np.zeros((n_el, f.shape[1]))
        for e in range(n_el):
            if np.any(species == e):
                row[e] = f[species == e].mean(0)
        rows.append(row.reshape(-1))
    return np.asarray(rows)


def farthest_point(x: np.ndarray, k: int, reference: np.ndarray | None = None
                   ) -> np.ndarray:
    """Indices of ``k`` rows of ``x`` chosen greedily, each the farthest (Euclidean) from
    those chosen before and from the rows of ``reference``."""
    x = np.asarray(x, np.float64)
    k = min(int(k), len(x))
    if reference is not None and len(reference):
        ref = np.asarray(reference, np.float64)
        d = np.concatenate([  # in blocks of rows: thousands of candidates fit in memory
            np.min(np.linalg.norm(x[i:i + 256, None] - ref[None], axis=-1), axis=1)
            for i in range(0, len(x), 256)])
        first = int(np.argmax(d))
    else:
        first = int(np.argmax(np.linalg.norm(x - x.mean(0), axis=1)))
        d = np.full(len(x), np.inf)
    chosen = [first]
    d = np.minimum(d, np.linalg.norm(x - x[first], axis=1))
    while len(chosen) < k:
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, np.linalg.norm(x - x[nxt], axis=1))
    return np.asarray(chosen)


def select(potential, candidates: Sequence, budget: int, method: str = "fps",
           reference: Sequence = (), seed: int = 0) -> np.ndarray:
    """Indices of at most ``budget`` diverse structures among ``candidates`` (see the
    module docstring); ``reference``: structures already labelled (fps avoids them)."""
    if method not in METHODS:
        raise ConfigError(f"selection method {method!r}; valid: {', '.join(METHODS)}")
    if int(budget) < 1:
        raise ConfigError(f"selection budget must be >= 1 structure, got {budget}")
    if not len(candidates):
        return np.zeros(0, int)
    x = descriptors(potential, list(candidates) + list(reference))
    mu, sd = x.mean(0), x.std(0)
    x = (x - mu) / np.where(sd > 0, sd, 1.0)
    xc, xr = x[:len(candidates)], x[len(candidates):]
    if int(budget) >= len(candidates):
        return np.arange(len(candidates))
    if method == "fps":
        return farthest_point(xc, budget, xr)
    from biojax.analysis.cluster import kmeans

    res = kmeans(xc, int(budget), n_init=3, seed=seed)
    picks = []
    for c in range(int(budget)):
        members = np.flatnonzero(res.labels == c)
        if members.size:
            d = np.linalg.norm(xc[members] - res.centers[c], axis=1)
            picks.append(int(members[np.argmin(d)]))
    return np.asarray(sorted(set(picks)))
