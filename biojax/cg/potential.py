"""A coarse-grained potential: fixed prior + learned part, with the mapping it came from.

The learned part is any :class:`~biojax.nn.potential.Potential` on bead graphs (a
registered network such as SchNet or PaiNN, the tabulated ``spline-pair`` model, or the
``zero`` model of a prior-only CG model), so training, MD and evaluation take beads as they
take atoms. The prior (:mod:`biojax.cg.prior`) joins MD as an energy term.

Saved layout (``save_cg_potential``): ``DIR/cg_model.json`` (format, prior, mapping,
temperature, provenance) and ``DIR/learned/`` (a biojax model directory).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import numpy as np

from biojax.cg.mapping import Mapping
from biojax.cg.prior import Prior
from biojax.core.atomic import atomic_dir
from biojax.core.errors import ModelError
from biojax.nn.potential import Potential

FORMAT_VERSION = 1
_META = "cg_model.json"


@dataclasses.dataclass(frozen=True)
class CGPotential:
    """Prior + learned part on beads (see module). ``temperature_K``: where the prior was
    fitted (Boltzmann inversion) and the model is meant to be simulated."""

    learned: Potential
    prior: Prior = dataclasses.field(default_factory=Prior)
    mapping: Mapping | None = None
    temperature_K: float | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def params(self):
        """The learned part's parameters (what force matching and DiffTRe train)."""
        return self.learned.params

    def replace(self, **changes) -> "CGPotential":
        return dataclasses.replace(self, **changes)

    def with_params(self, params) -> "CGPotential":
        return self.replace(learned=self.learned.replace(params=params))

    def energy_fn(self, displacement_fn: Callable, numbers: Sequence[int]) -> Callable:
        """``energy(R, neighbor, params=None, **kw)`` (eV): prior + learned part at bead
        positions R (B, 3); ``params`` are the learned part's (None: the stored ones);
        ``kw`` (e.g. ``box=``) go to ``displacement_fn``."""
        learned = self.learned.energy_fn(displacement_fn, numbers)
        prior = None if self.prior.empty else self.prior.energy_fn(displacement_fn)

        def energy(R, neighbor, params=None, **kw):
            e = learned(R, neighbor, params=params, **kw)
            return e if prior is None else e + prior(R, **kw)

        return energy

    def prior_term(self, displacement_fn: Callable):
        """The prior as an MD energy term ``energy(R, **kw)``, or None when empty."""
        return None if self.prior.empty else self.prior.energy_fn(displacement_fn)

    def simulation(self, atoms, config, energy_terms: Sequence = (), **kwargs):
        """A :class:`biojax.md.Simulation` of the beads ``atoms`` (one Atoms or starting
        frames) with the learned part as its potential and the prior as an energy term."""
        from biojax.md import Simulation
        from biojax.md.system import make_space

        first = atoms if not isinstance(atoms, (list, tuple)) else atoms[0]
        space = make_space(first, config.ensemble == "npt")
        term = self.prior_term(space.displacement_fn)
        terms = ([term] if term is not None else []) + list(energy_terms)
        return Simulation(atoms, self.learned, config, energy_terms=terms, **kwargs)


def save_cg_potential(cg: CGPotential, directory: str | os.PathLike) -> None:
    """Write ``cg`` to ``directory`` atomically (an existing one is replaced whole)."""
    from biojax import __version__
    from biojax.nn.io import save_potential

    with atomic_dir(directory, prefix=".cg-model-tmp-") as tmp:
        save_potential(cg.learned, os.path.join(tmp, "learned"))
        meta = {"format_version": FORMAT_VERSION, "biojax_version": __version__,
                "prior": cg.prior.to_dict(),
                "mapping": None if cg.mapping is None else cg.mapping.to_dict(),
                "temperature_K": cg.temperature_K, "info": cg.info,
                "units": {"energy": "eV", "length": "Angstrom", "mass": "amu",
                          "angle": "rad"}}
        with open(os.path.join(tmp, _META), "w") as f:
            json.dump(meta, f, indent=1)


def load_cg_potential(directory: str | os.PathLike) -> CGPotential:
    """Load a CG model written by :func:`save_cg_potential`."""
    from biojax.nn.io import load_potential

    directory = os.fspath(directory)
    path = os.path.join(directory, _META)
    if not os.path.isfile(path):
        raise ModelError(f"{directory}: not a biojax CG model (no {_META})")
    try:
        with open(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: malformed JSON: {exc}") from None
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(f"{path}: CG model format {meta.get('format_version')} is newer "
                         f"than this biojax reads ({FORMAT_VERSION})")
    try:
        prior = Prior.from_dict(meta.get("prior") or {})
        mapping = Mapping.from_dict(meta["mapping"]) if meta.get("mapping") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: malformed prior or mapping ({exc})") from None
    return CGPotential(load_potential(os.path.join(directory, "learned")), prior, mapping,
                       meta.get("temperature_K"), meta.get("info") or {})


def bead_forces_fn(cg: CGPotential, numbers: Sequence[int], with_learned: bool = True,
                   params=None) -> Callable:
    """A jitted ``forces(frames) -> (F, B, 3)`` eV/Å of a small non-periodic bead system
    (every bead pair is an edge; the prior alone when ``with_learned`` is False), batched
    over frames. ``params``: the learned part's (None: stored)."""
    import jax
    import jax.numpy as jnp

    from biojax.core.graph import Graph

    prior = cg.prior.energy_fn(lambda a, b, **kw: a - b)
    n = len(numbers)
    s, r = np.nonzero(~np.eye(n, dtype=bool))
    species = jnp.asarray(cg.learned.species_of(numbers))
    senders, receivers = jnp.asarray(s, jnp.int32), jnp.asarray(r, jnp.int32)
    p = cg.params if params is None else params

    def energy(R):
        e = prior(R)
        if with_learned:
            graph = Graph(vectors=R[receivers] - R[senders], species=species,
                          senders=senders, receivers=receivers,
                          edge_mask=jnp.ones(len(s), bool), node_mask=jnp.ones(n, bool))
            e = e + jnp.sum(cg.learned.atomic_energies(p, graph))
        return e

    fn = jax.jit(jax.vmap(jax.grad(lambda R: -energy(R))))

    def forces(frames):
        frames = jnp.asarray(frames, jnp.float32)
        return np.concatenate([np.asarray(fn(frames[k:k + 2048]))
                               for k in range(0, len(frames), 2048)])

    return forces
