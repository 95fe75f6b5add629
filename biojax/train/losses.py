"""Composable loss terms and error metrics on padded batches (ASE units; metrics in meV).

A loss is a weighted sum of terms, combined the way ``optax.chain`` combines
transformations::

    loss = losses.combine(losses.energy(1.0), losses.forces(10.0), MyDipoleTerm(0.1))

Each :class:`LossTerm` returns the *sum* of its squared errors over the labelled entries
of a batch and their *count*; the loss of a batch is Σ weight · sum / count. The same
terms give the validation loss over a whole data set by adding sums and counts over its
batches (:func:`accumulate`), so training and validation share one definition.

A term sees ``pred`` — a dict with ``energy`` (G,) eV, ``forces`` (N, 3) eV/Å,
``stress`` (G, 3, 3) eV/Å³ or None, ``atomic_energies`` (N,) eV and ``positions`` (N, 3)
Å — and the batch, whose extra labels (any numeric per-structure ``atoms.info`` or
per-atom ``atoms.arrays`` entry of the data files, e.g. a dipole) are in
``batch.labels[name]`` with presence masks ``batch.has_label[name]``. User terms are
registered or named by import path in ``[[training.loss]]`` tables.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from biojax.core.registry import loss_terms
from biojax.data.graphs import GraphBatch
from biojax.nn.potential import graph_energy_forces_stress


class LossTerm(NamedTuple):
    """One weighted term: ``errors(pred, batch) -> (sum of squared errors, count)``.

    ``labels``: extra dataset labels the term reads (they are loaded and batched);
    ``needs_stress``: whether predictions must include the stress.
    """

    name: str
    weight: float
    errors: Callable
    labels: tuple[str, ...] = ()
    needs_stress: bool = False


def predict(potential, params, batch: GraphBatch, compute_stress: bool) -> dict:
    """Predictions on a batch: energy (G,), forces (N, 3), stress (G, 3, 3) or None,
    atomic_energies (N,), positions (N, 3)."""
    pred = graph_energy_forces_stress(potential, params, batch, compute_stress)
    return {**pred, "positions": batch.positions}


def masked_squares(error, mask):
    """(Σ over masked rows of the mean square of each row, number of masked rows)."""
    mask = mask.astype(error.dtype)
    sq = error * error
    per_row = jnp.mean(sq.reshape(sq.shape[0], -1), axis=1) if sq.ndim > 1 else sq
    return jnp.sum(per_row * mask), jnp.sum(mask)


# ---------------------------------------------------------------- built-in terms
@loss_terms.register("energy")
def energy(weight: float = 1.0) -> LossTerm:
    """Per-atom energy error ⟨(ΔE / N_atoms)²⟩ over structures with an energy, eV²."""
    def errors(pred, batch):
        n_atoms = jnp.maximum(batch.n_atoms, 1.0)
        return masked_squares((pred["energy"] - batch.energy) / n_atoms,
                              batch.graph_mask & batch.has_energy)

    return LossTerm("energy", float(weight), errors)


@loss_terms.register("forces")
def forces(weight: float = 10.0) -> LossTerm:
    """Force error ⟨ΔF²⟩ per Cartesian component over atoms with forces, (eV/Å)²."""
    def errors(pred, batch):
        return masked_squares(pred["forces"] - batch.forces, batch.node_mask & batch.has_forces)

    return LossTerm("forces", float(weight), errors)


@loss_terms.register("stress")
def stress(weight: float = 0.0) -> LossTerm:
    """Stress error ⟨Δσ²⟩ per tensor component over structures with stress, (eV/Å³)²."""
    def errors(pred, batch):
        return masked_squares(pred["stress"] - batch.stress, batch.graph_mask & batch.has_stress)

    return LossTerm("stress", float(weight), errors, needs_stress=True)


# ---------------------------------------------------------------- combining
class Loss(NamedTuple):
    """Weighted terms; ``value(pred, batch)`` is the batch loss."""

    terms: tuple[LossTerm, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(label for t in self.terms for label in t.labels))

    @property
    def needs_stress(self) -> bool:
        return any(t.needs_stress and t.weight > 0 for t in self.terms)

    def parts(self, pred, batch) -> dict:
        """{term name: (sum, count)} on one batch (terms with zero weight left out)."""
        return {t.name: t.errors(pred, batch) for t in self.terms if t.weight > 0}

    def value(self, pred, batch):
        """Σ weight · sum / max(count, 1) on one batch."""
        total = 0.0
        for t in self.terms:
            if t.weight > 0:
                s, n = t.errors(pred, batch)
                total = total + t.weight * s / jnp.maximum(n, 1.0)
        return total

    def with_weights(self, weights: dict) -> "Loss":
        """This loss with the terms named in ``weights`` reweighted (the loss-weight
        switch); ConfigError for a name that is not one of its terms."""
        from biojax.core.errors import ConfigError

        names = [t.name for t in self.terms]
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ConfigError(f"[training] switch_weights: unknown loss term(s) "
                              f"{', '.join(map(repr, unknown))}; the terms are: {', '.join(names)}")
        return Loss(tuple(t._replace(weight=float(weights.get(t.name, t.weight)))
                          for t in self.terms))

    def from_sums(self, sums: dict) -> float:
        """The loss from sums and counts accumulated over many batches (float64)."""
        weights = {t.name: t.weight for t in self.terms}
        return float(sum(weights[k] * s / max(n, 1.0) for k, (s, n) in sums.items()))


def combine(*terms: LossTerm) -> Loss:
    """A Loss from terms (names must be unique)."""
    names = [t.name for t in terms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"loss terms named twice: {', '.join(duplicates)}")
    return Loss(tuple(terms))


def accumulate(sums: dict, parts: dict) -> dict:
    """Add one batch's {name: (sum, count)} to running float64 totals."""
    for k, (s, n) in parts.items():
        s0, n0 = sums.get(k, (0.0, 0.0))
        sums[k] = (s0 + float(s), n0 + float(n))
    return sums


def loss_from_config(tables: Sequence[dict], where: str = "[training] loss") -> Loss:
    """A Loss from config tables ``{name = "energy" | "module:Factory", weight = ..., **options}``."""
    from biojax.core.errors import ConfigError
    from biojax.core.registry import resolve

    terms = []
    for i, table in enumerate(tables):
        options = dict(table)
        name = options.pop("name", None)
        if name is None:
            raise ConfigError(f"{where}[{i}]: each loss term needs a name")
        factory = resolve(loss_terms, name)
        try:
            term = factory(**options)
        except TypeError as exc:
            raise ConfigError(f"{where}[{i}] {name!r}: {exc}") from None
        if not isinstance(term, LossTerm):
            raise ConfigError(f"{where}[{i}] {name!r}: the factory returned "
                              f"{type(term).__name__}, not a biojax.train.losses.LossTerm")
        terms.append(term)
    try:
        return combine(*terms)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# ---------------------------------------------------------------- metrics
class ErrorAccumulator:
    """Accumulates prediction errors over batches (float64, host) into MAE/RMSE metrics."""

    def __init__(self):
        self.e, self.e_atom, self.f, self.s = [], [], [], []

    def add(self, batch: GraphBatch, pred: dict) -> None:
        energy = np.asarray(pred["energy"], np.float64)
        forces = np.asarray(pred["forces"], np.float64)
        g = batch.graph_mask & batch.has_energy
        de = energy[g] - batch.energy[g]
        self.e.append(de)
        self.e_atom.append(de / batch.n_atoms[g])
        n = batch.node_mask & batch.has_forces
        self.f.append((forces[n] - batch.forces[n]).reshape(-1))
        if pred.get("stress") is not None:
            sg = batch.graph_mask & batch.has_stress
            self.s.append((np.asarray(pred["stress"], np.float64)[sg]
                           - batch.stress[sg]).reshape(-1))

    def metrics(self) -> dict:
        """energy_mae/rmse (meV per structure), energy_per_atom_mae/rmse (meV/atom),
        forces_mae/rmse (meV/Å), stress_mae/rmse (meV/Å³) where present."""
        out = {}
        for name, parts in (("energy", self.e), ("energy_per_atom", self.e_atom),
                            ("forces", self.f), ("stress", self.s)):
            values = np.concatenate(parts) if parts else np.zeros(0)
            if values.size:
                out[f"{name}_mae"] = float(np.mean(np.abs(values)) * 1000)
                out[f"{name}_rmse"] = float(np.sqrt(np.mean(values**2)) * 1000)
        return out
