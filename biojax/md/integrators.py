"""Integrators: registry entries that build jax-md style ``(init_fn, step_fn)`` pairs.

All quantities are in ASE units (eV, Å, amu, time Å·√(amu/eV)); ``Units`` converts the
user's fs/K/bar once. ``energy_fn(R, neighbor=..., **kw)`` is the total energy the
simulation integrates (the Potential plus any extra energy terms).

An integrator factory is called as ``factory(energy_fn, shift_fn, units=..., n_atoms=...,
chain_length=...)`` and returns an :class:`Integrator` or a plain ``(init_fn, step_fn)``
pair. The time step and temperature are passed at every step, so ramps, annealing and
replica exchange need no rebuilt integrator:

    init_fn(key, R, mass, kT, momenta=None, **kw) -> state
    step_fn(state, dt, kT, **kw) -> state

``state`` needs ``position``, ``momentum``, ``force`` and ``mass`` fields (jax-md states
have them). Built in, by config name (``ensemble = ...``):

- ``nve``: velocity Verlet (jax-md ``simulate.nve``); conserved = E_pot + E_kin.
- ``nvt-langevin``: BAOAB Langevin (our own, on jax-md's half steps) that also
  accumulates the heat the thermostat adds, so E_pot + E_kin − heat is conserved up to
  discretisation error — the "effective energy" used to monitor Langevin runs.
- ``nvt-nose-hoover``: jax-md ``nvt_nose_hoover`` with its chain invariant.
- ``npt``: jax-md ``npt_nose_hoover`` (Martyna–Tuckerman–Tobias–Klein; isotropic box) with
  its invariant; positions are fractional and the box lives in the state.

A user integrator is any such factory, named by import path (``ensemble =
"mymodule:my_integrator"``) or passed to ``Simulation(..., integrator=factory)``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax_md import dataclasses as md_dataclasses
from jax_md import quantity, simulate

from biojax.core.errors import ConfigError
from biojax.core.registry import integrators
from biojax.md.config import Units


@md_dataclasses.dataclass
class LangevinState:
    """BAOAB Langevin state; ``heat`` is the energy (eV) the thermostat has added so far."""

    position: jax.Array
    momentum: jax.Array
    force: jax.Array
    mass: jax.Array
    rng: jax.Array
    heat: jax.Array

    @property
    def velocity(self):
        return self.momentum / self.mass


def _no_box(state):
    return None


@dataclasses.dataclass(frozen=True)
class Integrator:
    """Pure functions of one integrator.

    init(key, R, mass, kT, momenta=None, **kw) -> state; step(state, dt, kT, **kw) ->
    state; conserved(state, kT, **kw) -> eV, or None for E_pot + E_kin; box(state) -> box
    or None; dof: degrees of freedom used for the temperature.
    """

    name: str
    init: Callable
    step: Callable
    conserved: Callable | None = None
    box: Callable = _no_box
    dof: int = 0


def kinetic_energy(momentum, mass):
    """Σ p²/2m (eV) for momenta (amu·Å/time) and masses (amu, shape (N, 1))."""
    return 0.5 * jnp.sum(momentum * momentum / mass)


def _center(p, mass):
    return p - mass * jnp.sum(p, axis=0) / jnp.sum(mass * jnp.ones_like(p), axis=0)


class FireState(NamedTuple):
    """FIRE's step control: velocity (Å/time, unit masses), time step, mixing α and the
    count of downhill steps in a row."""
    velocity: jax.Array
    dt: jax.Array
    alpha: jax.Array
    n_downhill: jax.Array


FIRE_ALPHA_START = 0.1


def fire_start(forces, dt0: float) -> FireState:
    """FIRE at rest with time step ``dt0`` (ASE time units)."""
    return FireState(jnp.zeros_like(forces), jnp.asarray(dt0, forces.dtype),
                     jnp.asarray(FIRE_ALPHA_START, forces.dtype), jnp.int32(0))


def fire_move(s: FireState, forces, dt_max: float, max_step: float):
    """One FIRE move (Bitzek et al. 2006, as ASE implements it: unit masses, velocity
    mixing; the step grows ×1.1 after 5 downhill steps up to ``dt_max`` and is halved, with
    the velocity zeroed, on an uphill step). Returns (displacement (N, 3) Å, capped so no
    atom moves more than ``max_step`` Å, new FireState)."""
    n_min, f_inc, f_dec, f_alpha = 5, 1.1, 0.5, 0.99
    v, dt, a, n_pos = s
    f = forces
    downhill = jnp.sum(v * f) >= 0
    f_norm = jnp.sqrt(jnp.sum(f * f)) + 1e-12
    v = jnp.where(downhill, (1 - a) * v + a * jnp.sqrt(jnp.sum(v * v)) * f / f_norm, 0.0)
    grow = downhill & (n_pos > n_min)
    dt = jnp.where(downhill, jnp.where(grow, jnp.minimum(dt * f_inc, dt_max), dt), dt * f_dec)
    a = jnp.where(downhill, jnp.where(grow, a * f_alpha, a), FIRE_ALPHA_START)
    n_pos = jnp.where(downhill, n_pos + 1, 0)
    v = v + dt * f
    dr = dt * v
    longest = jnp.sqrt(jnp.max(jnp.sum(dr * dr, -1)))
    dr = dr * jnp.minimum(1.0, max_step / jnp.maximum(longest, 1e-12))
    return dr, FireState(v, dt, a, n_pos)


def maxwell_boltzmann(key, mass, kT, shape, dtype, remove_com: bool):
    """Momenta (amu·Å/time) drawn at temperature kT (eV); optionally zero total momentum."""
    p = jnp.sqrt(mass * kT) * jax.random.normal(key, shape, dtype)
    return _center(p, mass) if remove_com and shape[0] > 1 else p


def _float32_sums(fn: Callable | None) -> Callable | None:
    """``fn`` with JAX's warning silenced that jax-md's ``high_precision_sum`` (kinetic
    energies in its Nosé–Hoover and NPT code) asks for float64 in a float32 process: the
    sum stays float32, as it would anyway, and the warning only alarmed users at every
    compilation. Other warnings pass."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def quiet(*args, **kw):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Explicitly requested dtype float64",
                                    category=UserWarning)
            return fn(*args, **kw)

    return quiet


def build_integrator(factory, energy_fn: Callable, shift_fn: Callable, units: Units,
                     n_atoms: int, chain_length: int = 3, name: str = "custom") -> Integrator:
    """Call an integrator factory and normalise what it returns into an Integrator
    (an ``(init_fn, step_fn)`` pair gets E_pot + E_kin as its conserved quantity and
    3N degrees of freedom), its functions free of jax-md's float64-request warning."""
    built = factory(energy_fn, shift_fn, units=units, n_atoms=n_atoms,
                    chain_length=chain_length)
    if not isinstance(built, Integrator):
        try:
            init, step = built
        except (TypeError, ValueError):
            raise ConfigError(f"integrator {name!r}: the factory must return an Integrator "
                              f"or an (init_fn, step_fn) pair, got {type(built).__name__}"
                              ) from None
        built = Integrator(name, init, step, None, _no_box, 3 * n_atoms)
    return dataclasses.replace(built, init=_float32_sums(built.init),
                               step=_float32_sums(built.step),
                               conserved=_float32_sums(built.conserved))


def _dof(n_atoms: int, remove_com: bool) -> int:
    return 3 * n_atoms - 3 if remove_com and n_atoms > 1 else 3 * n_atoms


# ---------------------------------------------------------------------- built-ins
@integrators.register("nve")
def nve(energy_fn, shift_fn, units: Units, n_atoms: int, **unused) -> Integrator:
    """Velocity Verlet (jax-md); momenta drawn with zero total momentum."""
    init0, step0 = simulate.nve(energy_fn, shift_fn, dt=units.dt)

    def init(key, R, mass, kT, momenta=None, **kw):
        if momenta is None:
            momenta = maxwell_boltzmann(key, mass, kT, R.shape, R.dtype, True)
        return init0(key, R, 0.0, mass=mass, momenta=momenta, **kw)

    def step(state, dt, kT, **kw):
        return step0(state, dt=dt, **kw)

    return Integrator("nve", init, step, None, _no_box, _dof(n_atoms, True))


@integrators.register("nvt-langevin")
def langevin(energy_fn, shift_fn, units: Units, n_atoms: int, **unused) -> Integrator:
    """BAOAB Langevin with friction ``units.gamma``; tracks the thermostat's heat."""
    force_fn = quantity.force(energy_fn)
    gamma = units.gamma

    def init(key, R, mass, kT, momenta=None, **kw):
        key, split = jax.random.split(key)
        if momenta is None:
            momenta = maxwell_boltzmann(split, mass, kT, R.shape, R.dtype, False)
        return LangevinState(R, momenta, force_fn(R, **kw), mass, key,
                             jnp.zeros((), R.dtype))

    def step(state, dt, kT, **kw):
        c1 = jnp.exp(-gamma * dt)
        c2 = jnp.sqrt(1.0 - c1 * c1)
        half = 0.5 * dt
        p = state.momentum + half * state.force                               # B
        R = shift_fn(state.position, half * p / state.mass, **kw)              # A
        key, split = jax.random.split(state.rng)
        noise = jax.random.normal(split, p.shape, p.dtype)
        p_new = c1 * p + c2 * jnp.sqrt(state.mass * kT) * noise                 # O
        heat = state.heat + kinetic_energy(p_new, state.mass) - kinetic_energy(p, state.mass)
        R = shift_fn(R, half * p_new / state.mass, **kw)                       # A
        F = force_fn(R, **kw)
        p_new = p_new + half * F                                               # B
        return LangevinState(R, p_new, F, state.mass, key, heat)

    def conserved(state, kT, **kw):
        return (energy_fn(state.position, **kw)
                + kinetic_energy(state.momentum, state.mass) - state.heat)

    return Integrator("nvt-langevin", init, step, conserved, _no_box, 3 * n_atoms)


@integrators.register("nvt-nose-hoover")
def nose_hoover(energy_fn, shift_fn, units: Units, n_atoms: int, chain_length: int = 3,
                **unused) -> Integrator:
    """Nosé–Hoover chain (jax-md), rebuilt for the time step given at each step."""
    def build(dt):
        return simulate.nvt_nose_hoover(energy_fn, shift_fn, dt, units.kT,
                                        chain_length=chain_length, tau=units.tau_thermostat)

    def init(key, R, mass, kT, momenta=None, **kw):
        if momenta is None:
            momenta = maxwell_boltzmann(key, mass, kT, R.shape, R.dtype, True)
        return build(units.dt)[0](key, R, mass=mass, momenta=momenta, kT=kT, **kw)

    def step(state, dt, kT, **kw):
        return build(dt)[1](state, kT=kT, **kw)

    def conserved(state, kT, **kw):
        return simulate.nvt_nose_hoover_invariant(energy_fn, state, kT, **kw)

    return Integrator("nvt-nose-hoover", init, step, conserved, _no_box, 3 * n_atoms)


@integrators.register("npt")
def npt(energy_fn, shift_fn, units: Units, n_atoms: int, chain_length: int = 3,
        **unused) -> Integrator:
    """MTK Nosé–Hoover NPT (jax-md, isotropic box), rebuilt for the step's time step."""
    def build(dt):
        return simulate.npt_nose_hoover(
            energy_fn, shift_fn, dt, units.pressure, units.kT,
            barostat_kwargs={"tau": units.tau_barostat, "chain_length": chain_length},
            thermostat_kwargs={"tau": units.tau_thermostat, "chain_length": chain_length})

    def init(key, R, mass, kT, momenta=None, box=None, **kw):
        if momenta is None:
            momenta = maxwell_boltzmann(key, mass, kT, R.shape, R.dtype, True)
        return build(units.dt)[0](key, R, box, mass=mass, momenta=momenta, kT=kT, **kw)

    def step(state, dt, kT, **kw):
        kw.pop("box", None)
        return build(dt)[1](state, kT=kT, **kw)

    def conserved(state, kT, **kw):
        kw.pop("box", None)
        return simulate.npt_nose_hoover_invariant(energy_fn, state, units.pressure, kT, **kw)

    return Integrator("npt", init, step, conserved, simulate.npt_box, 3 * n_atoms)
