"""CG molecular dynamics for training: many replicas, the parameters as a jit argument.

The trainers in :mod:`biojax.cg.trainer` alternate sampling with the current model and
parameter updates. Sampling reuses the MD engine's pieces (the integrator registry,
``biojax.md.engine``'s chunk, replica map, neighbor lists and overflow handling,
``biojax.md.system``'s spaces) but keeps everything in memory and takes the model
parameters as an *argument* of the jitted chunk, so a new parameter set never triggers
a recompilation (``Sampler.traces`` counts the traces; the tests check it).

A chunk that overflows its neighbor list is rerun from its starting state with more
capacity (never silently dropped). A replica whose kinetic energy leaves
``temperature_factor`` × the target, or whose energy becomes non-finite, raises
:class:`~biojax.core.errors.SimulationError` naming the replica and the step: a
parameter update that breaks the model is reported, not averaged over.

Coordinates: free space (Cartesian Å) or a fixed orthorhombic box (Cartesian Å, wrapped
into the box); frames are returned as (replicas, frames, atoms, 3) Å.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import SimulationError
from biojax.core.registry import integrators, resolve
from biojax.core.units import FS, KB, PS
from biojax.md import engine
from biojax.md.config import Units
from biojax.md.integrators import build_integrator
from biojax.md.system import check_atoms, make_space, neighbor_box, to_internal


@dataclasses.dataclass
class SamplerState:
    """Where sampling continues from: the integrator state of every replica (leading
    replica axis) and the neighbor-list *template* (one replica's list) whose capacities
    every new list copies, so shapes (and compiled code) stay fixed until an overflow
    grows them."""

    md: Any
    template: Any


class Sampler:
    """Replicated NVT sampling of one CG system with an energy that takes parameters.

    Args:
      energy_fn: ``energy(R, neighbor, params, **kw)`` → eV (a Potential's or
        CGPotential's ``energy_fn(displacement_fn, numbers)``, built by the caller with
        ``displacement_fn`` = ``Sampler.space.displacement_fn``; see ``make_energy``).
      atoms: starting structure, or a sequence (replica r starts from frame r mod len).
      cutoff: the model's cutoff (Å) for the neighbor list.
      replicas, temperature_K, timestep_fs, friction_per_ps: the run (K, fs, 1/ps).
      ensemble: an integrator name or import path (``biojax.md.integrators``); NVT ones.
      neighbor_format: "dense" (pair models), "sparse" or "ordered-sparse".
      skin, capacity_multiplier: neighbor list (Å; ≥ 1).
      replica_block: replicas per vmapped block; 1 runs them one after another
        (``lax.map``, which keeps the neighbor list's conditional rebuild a real
        branch); 0 = auto: one after another from 256 atoms, else ``engine``'s blocks.
      temperature_factor: stop when a replica's temperature exceeds this × target.
    """

    def __init__(self, energy_fn: Callable, atoms: ase.Atoms | Sequence[ase.Atoms],
                 cutoff: float, *, replicas: int = 1, temperature_K: float = 300.0,
                 timestep_fs: float = 2.0, friction_per_ps: float = 1.0,
                 ensemble: str = "nvt-langevin", neighbor_format: str = "dense",
                 skin: float = 0.5, capacity_multiplier: float = 1.25,
                 replica_block: int = 0, temperature_factor: float = 5.0,
                 min_distance: float = 0.5):
        frames = [atoms] if isinstance(atoms, ase.Atoms) else list(atoms)
        if not frames:
            raise SimulationError("sampler: no starting structure given")
        if replicas < 1:
            raise SimulationError(f"sampler: replicas must be >= 1, got {replicas}")
        if temperature_K <= 0 or timestep_fs <= 0 or friction_per_ps <= 0:
            raise SimulationError("sampler: temperature_K, timestep_fs and friction_per_ps "
                                  f"must be > 0, got {temperature_K}, {timestep_fs}, "
                                  f"{friction_per_ps}")
        if ensemble == "npt":
            raise SimulationError("sampler: NPT is not supported (fixed-volume training "
                                  "runs only); use nvt-langevin or nvt-nose-hoover")
        numbers = frames[0].get_atomic_numbers()
        for i, a in enumerate(frames):
            if not np.array_equal(a.get_atomic_numbers(), numbers):
                raise SimulationError(f"sampler: starting frame {i} has different atoms "
                                      "than frame 0")
        self.starts = [frames[r % len(frames)] for r in range(replicas)]
        for i, a in enumerate(frames[:replicas]):
            check_atoms(a, cutoff, min_distance, f"sampler starting frame {i}")
        self.space = make_space(frames[0], npt=False)
        if self.space.kind == "general":
            raise SimulationError("sampler: triclinic boxes are not supported yet; use an "
                                  "orthorhombic box or free space")
        for i, a in enumerate(self.starts):
            if self.space.periodic and not np.allclose(a.cell, frames[0].cell, atol=1e-6):
                raise SimulationError(f"sampler starting frame {i}: the box differs from "
                                      "frame 0")
        self.numbers = numbers
        self.n_atoms = len(numbers)
        self.replicas = int(replicas)
        self.cutoff = float(cutoff)
        self.energy_fn = energy_fn
        self.mass = jnp.asarray(frames[0].get_masses(), jnp.float32)[:, None]
        self.units = Units(dt=timestep_fs * FS, kT=temperature_K * KB, pressure=0.0,
                           gamma=friction_per_ps / PS, tau_thermostat=100.0 * FS,
                           tau_barostat=1000.0 * FS)
        self.temperature_K = float(temperature_K)
        self.factory = resolve(integrators, ensemble)
        self.ensemble = ensemble
        if skin <= 0:
            raise SimulationError(f"sampler: neighbor skin must be > 0 Å, got {skin}")
        self.skin = float(skin)
        self.neighbor_fn = engine.make_neighbor_fn(
            self.space, neighbor_box(frames, self.space, cutoff), cutoff, skin,
            capacity_multiplier, neighbor_format, self.n_atoms)
        # from 256 atoms up replicas run one after another (see replica_block_size)
        self.block = engine.replica_block_size(replica_block, self.replicas, self.n_atoms)
        self.temperature_factor = float(temperature_factor)
        self.dt = jnp.full((self.replicas,), self.units.dt, jnp.float32)
        self.kT = jnp.full((self.replicas,), self.units.kT, jnp.float32)
        self.traces = 0        # how many times an MD chunk function was traced
        self.overflows = 0     # neighbor-list overflows (each reran its chunk)
        self._chunks: dict = {}
        self._init = None
        self._rebuild_fn = None
        self._fresh = None
        self._dof = None

    # ------------------------------------------------------------------ helpers
    def _integrator(self, params):
        def energy(R, neighbor=None, **kw):
            return self.energy_fn(R, neighbor, params, **kw)

        return build_integrator(self.factory, energy, self.space.shift_fn, self.units,
                                self.n_atoms, name=self.ensemble), energy

    def _map(self, fn: Callable) -> Callable:
        """``fn`` over the leading replica axis of its arguments (see replica_block)."""
        return engine.map_replicas(fn, self.replicas, self.block)

    def _rebuild(self, template, positions):
        """Lists for positions (R, N, 3) built afresh with ``template``'s capacities (a
        rebuild is forced by offsetting the reference positions by the skin)."""
        if self._rebuild_fn is None:
            off = jnp.asarray([self.skin, 0.0, 0.0], jnp.float32)

            def one(t, r):
                return t.set(reference_position=r + off).update(r)

            self._rebuild_fn = jax.jit(lambda t, R: jax.vmap(lambda r: one(t, r))(R))
        return self._rebuild_fn(template, jnp.asarray(positions, jnp.float32))

    def _grown_template(self, positions, capacity: int):
        """A new template with capacity ≥ ``capacity`` that holds every replica."""
        nbrs = engine.allocate(self.neighbor_fn, list(np.asarray(positions)),
                               min_capacity=capacity)
        while engine.overflowed(nbrs):
            self.overflows += 1
            nbrs = engine.allocate(self.neighbor_fn, list(np.asarray(positions)),
                                   min_capacity=engine.grown_capacity(
                                       engine.capacity_of(nbrs)))
        return jax.tree_util.tree_map(lambda x: x[0], nbrs)

    def neighbors(self, template, positions):
        """(lists for positions (R, N, 3), the template used): rebuilt from ``template``,
        grown (and the template replaced) while any replica overflows."""
        nbrs = self._rebuild(template, positions)
        while engine.overflowed(nbrs):
            self.overflows += 1
            template = self._grown_template(positions, engine.grown_capacity(
                engine.capacity_of(template)))
            nbrs = self._rebuild(template, positions)
        return nbrs, template

    def start_positions(self) -> np.ndarray:
        """(R, N, 3) stored coordinates (Å, wrapped into the box) of the starts."""
        return np.stack([to_internal(a.positions, self.space) for a in self.starts])

    # ------------------------------------------------------------------ init
    def init(self, params, seed: int = 0, positions=None) -> SamplerState:
        """Initial state of every replica at ``positions`` (R, N, 3) Å (default: the
        starting structures): momenta drawn at the temperature from ``seed``."""
        R = self.start_positions() if positions is None else np.asarray(positions,
                                                                        np.float32)
        template = self._grown_template(R, 0)
        nbrs, template = self.neighbors(template, R)
        if self._init is None:
            def init_one(params, key, R, nbrs, kT):
                integ, _ = self._integrator(params)
                return integ.init(key, R, self.mass, kT, neighbor=nbrs)

            def init_all(params, keys, R, nbrs, kT):
                return self._map(lambda *a: init_one(params, *a))(keys, R, nbrs, kT)

            self._init = jax.jit(init_all)
        keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(seed), r)
                          for r in range(self.replicas)])
        md = self._init(params, keys, jnp.asarray(R, jnp.float32), nbrs, self.kT)
        return SamplerState(md, template)

    # ------------------------------------------------------------------ run
    def _chunk(self, n_frames: int, frame_every: int):
        key = (n_frames, frame_every)
        if key not in self._chunks:
            def chunk_one(params, state, nbrs, dt, kT, ke_limit, pe_limit):
                self.traces += 1
                integ, energy = self._integrator(params)
                self._dof = integ.dof

                def observe(state, term_states, nbrs, kT):
                    return {"potential_energy": energy(state.position, neighbor=nbrs)}

                chunk = engine.make_chunk(integ, observe, (), n_frames, 1, frame_every,
                                          False, False)
                state, _, nbrs, alarm, obs, frames = chunk(state, (), nbrs, dt, kT,
                                                           ke_limit, pe_limit)
                return state, nbrs, alarm, obs["potential_energy"], frames["position"]

            def chunk_all(params, state, nbrs, dt, kT, ke_limit, pe_limit):
                return self._map(lambda *a: chunk_one(params, *a))(
                    state, nbrs, dt, kT, ke_limit, pe_limit)

            self._chunks[key] = jax.jit(chunk_all)
        return self._chunks[key]

    def run(self, params, state: SamplerState, n_frames: int, frame_every: int
            ) -> tuple[np.ndarray, np.ndarray, SamplerState]:
        """Run ``n_frames × frame_every`` steps of every replica from ``state`` with
        ``params``. Returns the frames (R, n_frames, N, 3) Å, the potential energy at
        each frame (R, n_frames) eV, and the state to continue from.

        The neighbor lists are rebuilt from the state's positions with the state's
        template, so a run depends only on (params, state) — a resumed trainer repeats
        an uninterrupted one exactly — and compiles once per chunk length. An overflow
        reruns the chunk with a grown template.
        """
        if n_frames < 1 or frame_every < 1:
            raise SimulationError(f"sampler: n_frames and frame_every must be >= 1, got "
                                  f"{n_frames}, {frame_every}")
        start = np.asarray(state.md.position)
        nbrs, template = self.neighbors(state.template, start)
        fn = self._chunk(int(n_frames), int(frame_every))
        n = self.n_atoms
        dof = 3 * n if self._dof is None else self._dof
        ke_limit = jnp.full((self.replicas,),
                            0.5 * dof * KB * self.temperature_factor * self.temperature_K,
                            jnp.float32)
        pe_limit = jnp.full((self.replicas,), jnp.inf, jnp.float32)
        while True:
            md, new_nbrs, alarm, pe, frames = fn(params, state.md, nbrs, self.dt, self.kT,
                                                 ke_limit, pe_limit)
            if not engine.overflowed(new_nbrs):
                break
            self.overflows += 1
            template = self._grown_template(start, engine.grown_capacity(
                engine.capacity_of(template)))
            nbrs, template = self.neighbors(template, start)
        alarm, pe, frames = jax.device_get((alarm, pe, frames))
        bad = np.flatnonzero(np.asarray(alarm[0]) >= 0)
        if len(bad):
            r = int(bad[0])
            kind = {engine.ALARM_TEMPERATURE: "temperature", engine.ALARM_ENERGY:
                    "potential energy"}.get(int(alarm[1][r]), "check")
            value = float(alarm[3][r])
            detail = (f"kinetic energy {value:.4g} eV = {2 * value / (dof * KB):.4g} K, "
                      f"limit {self.temperature_factor:g} × {self.temperature_K:g} K"
                      if kind == "temperature" else f"value {value:.4g} eV")
            raise SimulationError(
                f"sampler: replica {r} of {self.replicas} blew up at step "
                f"{int(alarm[0][r])} of {n_frames * frame_every} ({kind}: {detail}); the "
                "model's parameters give an unstable system (lower the learning rate, or "
                "strengthen the repulsive prior)")
        return np.asarray(frames), np.asarray(pe), SamplerState(md, template)

    # ------------------------------------------------------------------ frames
    def frame_neighbors(self, frames: np.ndarray, capacity: int = 0):
        """(lists, capacity): neighbor lists of many frames (F, N, 3) Å, one per frame
        (leading axis F), for evaluating energies on stored frames. Each list's slots
        are padded (with the padding index N) to ``capacity`` when that is larger than
        what the frames need, and the static fields that only rebuilding uses are
        cleared, so lists of every trajectory share one shape — the loss compiles once
        while ``capacity`` holds. Grown (and ``capacity`` raised) until none overflows."""
        frames = jnp.asarray(np.asarray(frames, np.float32))
        template = self._grown_template(np.asarray(frames[:1]), 0)
        nbrs, template = self.neighbors(template, frames)
        n = self.n_atoms
        cap = max(int(capacity), engine.capacity_of(nbrs))
        pad = cap - engine.capacity_of(nbrs)
        idx = nbrs.idx
        if pad:
            idx = jnp.pad(idx, [(0, 0)] * (idx.ndim - 1) + [(0, pad)], constant_values=n)
        nbrs = nbrs.set(idx=idx, max_occupancy=cap, cell_list_capacity=None,
                        cell_size=None, cell_list_fn=None, update_fn=None)
        return nbrs, cap

    # ------------------------------------------------------------------ state i/o
    def state_arrays(self, state: SamplerState) -> dict:
        """The state as named NumPy arrays (for a checkpoint): the integrator state's
        leaves, the template's arrays and its two capacities."""
        out = {f"md_{i}": np.asarray(x)
               for i, x in enumerate(jax.tree_util.tree_leaves(state.md))}
        out.update({f"nb_{i}": np.asarray(x)
                    for i, x in enumerate(jax.tree_util.tree_leaves(state.template))})
        out["nb_max_occupancy"] = np.asarray(state.template.max_occupancy)
        out["nb_cell_list_capacity"] = np.asarray(
            -1 if state.template.cell_list_capacity is None
            else state.template.cell_list_capacity)
        return out

    def state_from_arrays(self, params, arrays: dict) -> SamplerState:
        """The state saved by :meth:`state_arrays` (structures from a fresh init)."""
        fresh = self._template_state(params)
        try:
            cl = int(arrays["nb_cell_list_capacity"])
            template = fresh.template.set(
                max_occupancy=int(arrays["nb_max_occupancy"]),
                cell_list_capacity=None if cl < 0 else cl)
            md_def = jax.tree_util.tree_structure(fresh.md)
            nb_def = jax.tree_util.tree_structure(template)
            md = [jnp.asarray(arrays[f"md_{i}"]) for i in range(md_def.num_leaves)]
            nb = [jnp.asarray(arrays[f"nb_{i}"]) for i in range(nb_def.num_leaves)]
        except KeyError as exc:
            raise SimulationError(f"sampler state: missing array {exc}") from None
        return SamplerState(jax.tree_util.tree_unflatten(md_def, md),
                            jax.tree_util.tree_unflatten(nb_def, nb))

    def _template_state(self, params) -> SamplerState:
        if self._fresh is None:
            self._fresh = self.init(params, 0)
        return self._fresh


def make_energy(potential, displacement_fn: Callable, numbers: Sequence[int],
                prior_energy: Callable | None = None) -> Callable:
    """``energy(R, neighbor, params, **kw)`` (eV) of a Potential (its ``energy_fn``) or a
    CGPotential (prior + learned, ``params`` the learned part's), plus an optional extra
    ``prior_energy(displacement_fn)`` → ``fn(R, **kw)`` that takes no parameters."""
    base = potential.energy_fn(displacement_fn, numbers)
    extra = None if prior_energy is None else prior_energy(displacement_fn)

    def energy(R, neighbor, params, **kw):
        e = base(R, neighbor, params=params, **kw)
        if extra is not None:
            e = e + extra(R, neighbor=neighbor, **kw)
        return e

    return energy
