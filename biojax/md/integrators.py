"""Integrators as ``(init, step, conserved)`` triples over jax-md state pytrees.

All quantities are in ASE units (eV, Å, amu, time Å·√(amu/eV)); ``Units`` converts the
user's fs/K/bar once. ``energy_fn(R, neighbor=..., **kw)`` is a Potential's jax-md energy.

- ``nve``: velocity Verlet (jax-md ``simulate.nve``); conserved = E_pot + E_kin.
- ``nvt-langevin``: BAOAB Langevin (our own, built on jax-md's half steps) that also
  accumulates the heat the thermostat adds, so E_pot + E_kin − heat is conserved up to
  discretisation error — the "effective energy" used to monitor Langevin runs.
- ``nvt-nose-hoover``: jax-md ``nvt_nose_hoover`` with its chain invariant.
- ``npt``: jax-md ``npt_nose_hoover`` (Martyna–Tuckerman–Tobias–Klein; isotropic box) with
  its invariant; positions are fractional and the box lives in the state.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax_md import dataclasses as md_dataclasses
from jax_md import quantity, simulate

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


@dataclasses.dataclass(frozen=True)
class Integrator:
    """Pure functions of one ensemble.

    init(key, R, mass, momenta=None, **kw) -> state; step(state, **kw) -> state;
    conserved(state, **kw) -> eV; box(state) -> box or None; dof: degrees of freedom
    used for the temperature.
    """

    ensemble: str
    init: Callable
    step: Callable
    conserved: Callable
    box: Callable
    dof: int


def kinetic_energy(momentum, mass):
    """Σ p²/2m (eV) for momenta (amu·Å/time) and masses (amu, shape (N, 1))."""
    return 0.5 * jnp.sum(momentum * momentum / mass)


def _center(p, mass):
    return p - mass * jnp.sum(p, axis=0) / jnp.sum(mass * jnp.ones_like(p), axis=0)


def maxwell_boltzmann(key, mass, kT, shape, dtype, remove_com: bool):
    """Momenta (amu·Å/time) drawn at temperature kT (eV); optionally zero total momentum."""
    p = jnp.sqrt(mass * kT) * jax.random.normal(key, shape, dtype)
    return _center(p, mass) if remove_com and shape[0] > 1 else p


def _langevin(energy_fn, shift_fn, u: Units):
    force_fn = quantity.force(energy_fn)
    c1 = float(jnp.exp(-u.gamma * u.dt))
    c2 = float(jnp.sqrt(1.0 - c1 * c1))

    def init(key, R, mass, momenta=None, **kw):
        key, split = jax.random.split(key)
        if momenta is None:
            momenta = maxwell_boltzmann(split, mass, u.kT, R.shape, R.dtype, False)
        return LangevinState(R, momenta, force_fn(R, **kw), mass, key,
                             jnp.zeros((), R.dtype))

    def step(state, **kw):
        half = 0.5 * u.dt
        p = state.momentum + half * state.force                               # B
        R = shift_fn(state.position, half * p / state.mass, **kw)              # A
        key, split = jax.random.split(state.rng)
        noise = jax.random.normal(split, p.shape, p.dtype)
        p_new = c1 * p + c2 * jnp.sqrt(state.mass * u.kT) * noise               # O
        heat = state.heat + kinetic_energy(p_new, state.mass) - kinetic_energy(p, state.mass)
        R = shift_fn(R, half * p_new / state.mass, **kw)                       # A
        F = force_fn(R, **kw)
        p_new = p_new + half * F                                               # B
        return LangevinState(R, p_new, F, state.mass, key, heat)

    def conserved(state, **kw):
        return (energy_fn(state.position, **kw)
                + kinetic_energy(state.momentum, state.mass) - state.heat)

    return init, step, conserved


def make_integrator(ensemble: str, energy_fn: Callable, shift_fn: Callable, u: Units,
                    n_atoms: int, chain_length: int = 3) -> Integrator:
    """The Integrator for ``ensemble`` with parameters in ASE units ``u``."""
    no_box = lambda state: None  # noqa: E731
    if ensemble == "nve":
        init0, step = simulate.nve(energy_fn, shift_fn, dt=u.dt)

        def init(key, R, mass, momenta=None, **kw):
            if momenta is None:
                momenta = maxwell_boltzmann(key, mass, u.kT, R.shape, R.dtype, True)
            return init0(key, R, 0.0, mass=mass, momenta=momenta, **kw)

        conserved = lambda s, **kw: (energy_fn(s.position, **kw)  # noqa: E731
                                     + kinetic_energy(s.momentum, s.mass))
        return Integrator(ensemble, init, step, conserved, no_box,
                          3 * n_atoms - 3 if n_atoms > 1 else 3)
    if ensemble == "nvt-langevin":
        init, step, conserved = _langevin(energy_fn, shift_fn, u)
        return Integrator(ensemble, init, step, conserved, no_box, 3 * n_atoms)
    if ensemble == "nvt-nose-hoover":
        init0, step = simulate.nvt_nose_hoover(energy_fn, shift_fn, u.dt, u.kT,
                                               chain_length=chain_length,
                                               tau=u.tau_thermostat)

        def init(key, R, mass, momenta=None, **kw):
            if momenta is None:
                momenta = maxwell_boltzmann(key, mass, u.kT, R.shape, R.dtype, True)
            return init0(key, R, mass=mass, momenta=momenta, **kw)

        conserved = lambda s, **kw: simulate.nvt_nose_hoover_invariant(  # noqa: E731
            energy_fn, s, u.kT, **kw)
        return Integrator(ensemble, init, step, conserved, no_box, 3 * n_atoms)
    if ensemble == "npt":
        init0, step0 = simulate.npt_nose_hoover(
            energy_fn, shift_fn, u.dt, u.pressure, u.kT,
            barostat_kwargs={"tau": u.tau_barostat, "chain_length": chain_length},
            thermostat_kwargs={"tau": u.tau_thermostat, "chain_length": chain_length})

        def init(key, R, mass, momenta=None, box=None, **kw):
            if momenta is None:
                momenta = maxwell_boltzmann(key, mass, u.kT, R.shape, R.dtype, True)
            return init0(key, R, box, mass=mass, momenta=momenta, **kw)

        def step(state, **kw):
            kw.pop("box", None)
            return step0(state, **kw)

        def conserved(s, **kw):
            kw.pop("box", None)
            return simulate.npt_nose_hoover_invariant(energy_fn, s, u.pressure, u.kT, **kw)

        return Integrator(ensemble, init, step, conserved, simulate.npt_box, 3 * n_atoms)
    raise ValueError(f"unknown ensemble {ensemble!r}")
