"""Extra energy terms and observables for a Simulation: the seams for priors, restraints,
biases and whatever a user wants recorded.

An **energy term** is added to the Potential inside the jitted step, so its forces act on
the atoms. It is an :class:`EnergyTerm` (``energy(positions, state, **kw) -> eV`` with an
optional per-replica ``state``, set by ``init(positions)`` and advanced after every step by
``update(state, positions, **kw)``, which is what a history-dependent bias needs) or a
plain function ``energy(positions, **kw) -> eV``. ``kw`` holds ``neighbor`` and, under
NPT, ``box``.

An **observable** is a function ``fn(state, **kw)`` of the integrator state returning a
scalar or a small vector; it is recorded every ``observe_every`` steps, per replica, in the
observables file (a vector ``v`` of length k as columns ``v[0]`` … ``v[k-1]``).

Positions are the integrator's coordinates: Cartesian Å, except under NPT or in
triclinic boxes, where they are fractional. Factories registered here (``[[energy_terms]]``
and ``[[observables]]`` in a simulate config, or by import path) receive the
:class:`System` and measure through its ``displacement_fn``, which handles both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from biojax.core.errors import ConfigError
from biojax.core.registry import energy_terms, observables, resolve


@dataclasses.dataclass(frozen=True)
class System:
    """What term and observable factories may need to know about the simulated system."""

    numbers: np.ndarray          # (N,) atomic numbers
    masses: np.ndarray           # (N,) amu
    displacement_fn: Callable    # displacement_fn(Ra, Rb, **kw) -> Ra − Rb (Å)
    periodic: bool

    @property
    def n_atoms(self) -> int:
        return int(len(self.numbers))


class EnergyTerm(NamedTuple):
    """An energy (eV) added to the potential; ``init``/``update`` keep an optional state."""

    energy: Callable                       # energy(positions, state, **kw) -> eV
    init: Callable | None = None           # init(positions) -> state pytree
    update: Callable | None = None         # update(state, positions, **kw) -> state
    # observe(positions, state, **kw) -> {column: scalar or 1-D}, recorded with the
    # observables (keys several terms return, e.g. bias_energy, are summed)
    observe: Callable | None = None
    # sync(states) -> states on the replica-stacked states (leading replica axis), after
    # init and after every chunk: what couples replicas (multiple walkers' shared bias)
    sync: Callable | None = None
    # a host-side Simulation hook the term brings (biojax.md.hooks; the metad grid-exit
    # check); the Simulation adds it to its hooks
    hook: Any = None


def as_energy_term(term: Any) -> EnergyTerm:
    """An EnergyTerm from an EnergyTerm or a plain ``energy(positions, **kw)`` function."""
    if isinstance(term, EnergyTerm):
        return term
    if callable(term):
        return EnergyTerm(lambda positions, state, **kw: term(positions, **kw))
    raise ConfigError(f"an energy term must be a callable or an EnergyTerm, got "
                      f"{type(term).__name__}")


def _atom_indices(atoms: Sequence[int], width: int, system: System, what: str) -> np.ndarray:
    idx = np.asarray(atoms, dtype=np.int32).reshape(-1)
    if idx.shape != (width,):
        raise ConfigError(f"{what}: atoms must list {width} atom indices, got {list(atoms)}")
    if idx.min() < 0 or idx.max() >= system.n_atoms:
        raise ConfigError(f"{what}: atom indices must be in [0, {system.n_atoms}), got "
                          f"{idx.tolist()}")
    return idx


def _distance(system: System, i: int, j: int, positions, **kw):
    d = system.displacement_fn(positions[i], positions[j], **kw)
    return jnp.sqrt(jnp.sum(d * d) + 1e-12)


def _kw_for_space(kw: dict) -> dict:
    return {k: kw[k] for k in ("box", "perturbation") if k in kw}


# ---------------------------------------------------------------------- energy terms
@energy_terms.register("harmonic-distance")
def harmonic_distance(system: System, atoms: Sequence[int], r0: float, k: float
                      ) -> EnergyTerm:
    """Restraint ½ k (|r_i − r_j| − r0)² on one distance (r0 in Å, k in eV/Å²)."""
    i, j = _atom_indices(atoms, 2, system, "harmonic-distance")
    if k < 0 or r0 < 0:
        raise ConfigError(f"harmonic-distance: need k >= 0 and r0 >= 0, got k={k}, r0={r0}")

    def energy(positions, state, **kw):
        return 0.5 * k * (_distance(system, i, j, positions, **_kw_for_space(kw)) - r0) ** 2

    return EnergyTerm(energy)


# ---------------------------------------------------------------------- observables
@observables.register("distance")
def distance(system: System, atoms: Sequence[int]) -> Callable:
    """Distance |r_i − r_j| (Å, minimum image)."""
    i, j = _atom_indices(atoms, 2, system, "distance")
    return lambda state, **kw: _distance(system, i, j, state.position, **_kw_for_space(kw))


@observables.register("radius-of-gyration")
def radius_of_gyration(system: System, atoms: Sequence[int] | None = None) -> Callable:
    """Mass-weighted radius of gyration (Å) of the given atoms (default all; molecules
    that stay whole, i.e. non-periodic systems)."""
    idx = np.arange(system.n_atoms) if atoms is None else np.asarray(atoms, np.int32)
    w = jnp.asarray(system.masses[idx] / system.masses[idx].sum())

    def rg(state, **kw):
        x = state.position[idx]
        centre = jnp.sum(w[:, None] * x, axis=0)
        return jnp.sqrt(jnp.sum(w * jnp.sum((x - centre) ** 2, axis=-1)))

    return rg


# ---------------------------------------------------------------------- from config
def _build(registry, tables: Sequence[dict], system: System, what: str) -> list:
    built = []
    for n, table in enumerate(tables):
        options = dict(table)
        name = options.pop("name", None)
        label = options.pop("label", None)
        if name is None:
            raise ConfigError(f"[[{what}]] entry {n}: needs a name")
        try:
            built.append((label or name, resolve(registry, name)(system, **options)))
        except TypeError as exc:
            raise ConfigError(f"[[{what}]] {name!r}: {exc}") from None
    return built


def energy_terms_from_config(tables: Sequence[dict], system: System) -> list[EnergyTerm]:
    """Energy terms named in ``[[energy_terms]]`` tables ``{name, options...}``."""
    return [as_energy_term(t) for _, t in _build(energy_terms, tables, system, "energy_terms")]


def observables_from_config(tables: Sequence[dict], system: System) -> dict[str, Callable]:
    """Observables named in ``[[observables]]`` tables ``{name, label?, options...}``."""
    out = {}
    for label, fn in _build(observables, tables, system, "observables"):
        if label in out:
            raise ConfigError(f"[[observables]]: two observables labelled {label!r}; give "
                              "each a distinct label")
        out[label] = fn
    return out


_NOT_FOR_ENERGY = ("kT", "dt", "pressure")  # step settings jax-md passes to force calls


def total_energy_fn(potential_energy: Callable, terms: Sequence[EnergyTerm]) -> Callable:
    """``energy(R, neighbor=..., term_states=(...), **kw)``: the potential plus every
    term (eV). Step settings that jax-md passes along to force calls (``kT``) are
    dropped; space arguments (``box``, ``perturbation``) reach the potential and terms."""
    def energy(R, neighbor=None, term_states=(), **kw):
        kw = {k: v for k, v in kw.items() if k not in _NOT_FOR_ENERGY}
        e = potential_energy(R, neighbor=neighbor, **kw)
        for term, state in zip(terms, term_states):
            e = e + term.energy(R, state, neighbor=neighbor, **kw)
        return e

    return energy


def init_term_states(terms: Sequence[EnergyTerm], positions) -> tuple:
    """The per-replica states of the terms at ``positions`` (None for stateless terms)."""
    return tuple(None if t.init is None else t.init(positions) for t in terms)


def update_term_states(terms: Sequence[EnergyTerm], states: tuple, positions, **kw) -> tuple:
    """Advance stateful terms after a step."""
    return tuple(s if t.update is None else t.update(s, positions, **kw)
                 for t, s in zip(terms, states))


def sync_term_states(terms: Sequence[EnergyTerm], states: tuple) -> tuple:
    """Apply each term's ``sync`` to its replica-stacked state."""
    return tuple(s if t.sync is None else t.sync(s) for t, s in zip(terms, states))


def observe_terms(terms: Sequence[EnergyTerm], states: tuple, positions, **kw) -> dict:
    """The columns the terms' ``observe`` return; a key returned by several terms is
    summed (``bias_energy``, ``bias_logw``)."""
    out: dict = {}
    for t, s in zip(terms, states):
        if getattr(t, "observe", None) is None:
            continue
        for k, v in t.observe(positions, s, **kw).items():
            out[k] = out[k] + v if k in out else jnp.asarray(v)
    return out


def biases_from_config(tables: Sequence[dict], system: System, config) -> list:
    """Bias terms of ``[[bias]]`` tables (registry ``biases``, built in
    ``biojax.sampling.bias``), given the run's temperature, replicas and time step."""
    if not tables:
        return []
    from biojax.core.registry import import_object

    build = import_object("biojax.sampling.bias:biases_from_config", "bias")
    return build(tables, system, {"temperature_K": config.temperature_K,
                                  "replicas": config.replicas,
                                  "timestep_fs": config.timestep_fs})


def observe_extra(fns: dict[str, Callable], state, **kw) -> dict:
    """Values of the extra observables (scalars or 1-D arrays) for one state."""
    out = {}
    for name, fn in fns.items():
        value = jnp.asarray(fn(state, **kw))
        if value.ndim > 1:
            raise ConfigError(f"observable {name!r} returned shape {value.shape}; "
                              "observables must be scalars or 1-D vectors")
        out[name] = value
    return out


def flatten_row(values: dict) -> dict:
    """Observable values on the host as columns: vectors become ``name[i]``."""
    row = {}
    for k, v in values.items():
        v = np.asarray(v)
        if v.ndim == 0:
            row[k] = float(v)
        else:
            row.update({f"{k}[{i}]": float(x) for i, x in enumerate(v)})
    return row
