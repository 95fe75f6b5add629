"""The jitted part: one chunk of MD steps as a pure function, and neighbor-list capacity.

A chunk is ``n_frames × records_per_frame × observe_every`` steps. Every step runs the
integrator, updates the neighbor list and checks the kinetic energy and (for molecules)
the covalent bonds of the start; every ``observe_every`` steps the observables are
recorded and the potential energy checked. The first failed check is returned as an
alarm (step, kind, atom pair or value), not raised. Every frame records the positions
(and optionally velocities/forces/box). The caller checks the
neighbor list's overflow flag after the chunk and reruns the chunk with more capacity.

Every state carries a leading replica axis, also for one replica: the same chunk
function is mapped over it by ``map_replicas`` (``vmap`` in blocks of replicas; for R = 1
the axis is dropped inside ``jit`` and restored, which compiles to the unbatched program).
The time step and temperature are inputs of the chunk (one value per replica), not
constants compiled into it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition, quantity

from biojax.core.units import BAR, KB
from biojax.md.cells import dense_cell_neighbor_list
from biojax.md.integrators import Integrator, kinetic_energy
from biojax.md.system import SystemSpace
from biojax.md.terms import observe_extra, observe_terms, update_term_states


NEIGHBOR_FORMATS = {"dense": partition.NeighborListFormat.Dense,
                    "sparse": partition.NeighborListFormat.Sparse,
                    "ordered-sparse": partition.NeighborListFormat.OrderedSparse}


def make_neighbor_fn(sys_space: SystemSpace, box: np.ndarray, cutoff: float, skin: float,
                     capacity_multiplier: float, neighbor_format: str, n_atoms: int):
    """jax-md neighbor list functions (cutoff + skin, Å) in the requested format
    ("dense", "sparse" or "ordered-sparse": each pair once). Dense lists in a fixed
    orthorhombic box are rebuilt by biojax's own cell list (``biojax.md.cells``)."""
    if neighbor_format == "dense" and sys_space.kind == "orthorhombic":
        return dense_cell_neighbor_list(sys_space.displacement_fn, sys_space.box, cutoff,
                                        skin, capacity_multiplier)
    fmt = NEIGHBOR_FORMATS[neighbor_format]
    return partition.neighbor_list(
        sys_space.displacement_fn, box, cutoff + skin, dr_threshold=skin,
        capacity_multiplier=capacity_multiplier, format=fmt,
        fractional_coordinates=sys_space.fractional,
        disable_cell_list=(not sys_space.periodic) or n_atoms < 256)


def capacity_of(nbrs) -> int:
    """Neighbor capacity: edges (Sparse) or neighbours per atom (Dense)."""
    return int(nbrs.idx.shape[-1])


def allocate(neighbor_fn, positions: Sequence[np.ndarray], min_capacity: int = 0,
             exact_capacity: int | None = None, box_kwargs: Sequence[dict] | None = None):
    """A neighbor list with a leading replica axis, holding every replica.

    The capacity is at least what each replica needs (× the multiplier) and at least
    ``min_capacity``; ``exact_capacity`` forces it (used to test overflow and to resume).
    """
    box_kwargs = box_kwargs or [{}] * len(positions)
    lists = [neighbor_fn.allocate(jnp.asarray(r), **kw) for r, kw in zip(positions, box_kwargs)]
    base = [capacity_of(n) for n in lists]
    k = int(np.argmax(base))
    target = max(max(base), min_capacity) if exact_capacity is None else exact_capacity
    template = lists[k]
    if target != base[k]:
        template = neighbor_fn.allocate(jnp.asarray(positions[k]),
                                        extra_capacity=target - base[k], **box_kwargs[k])
    R = jnp.stack([jnp.asarray(r) for r in positions])
    if "box" in box_kwargs[0]:
        boxes = jnp.stack([jnp.asarray(kw["box"]) for kw in box_kwargs])
        return jax.vmap(lambda r, b: template.update(r, box=b))(R, boxes)
    return jax.vmap(lambda r: template.update(r))(R)


def overflowed(nbrs) -> bool:
    """Whether any replica's neighbor or cell list overflowed."""
    return bool(np.any(np.asarray(nbrs.did_buffer_overflow)))


def grown_capacity(capacity: int) -> int:
    """Next capacity after an overflow (× 1.5, at least +8)."""
    return max(int(math.ceil(capacity * 1.5)), capacity + 8)


def replica_block_size(requested: int, replicas: int, n_atoms: int = 0) -> int:
    """Replicas per vmapped block: ``requested`` if > 0, else 32 on a CPU and all of them
    on an accelerator, which wants the widest batch. (On the 2-core development CPU, 256
    alanine-dipeptide replicas ran 1.3× faster in blocks of 32 than in one vmap, whose
    working set no longer fits in cache; blocks of 16–64 were within 5 % at 64.) From
    256 atoms up a CPU runs replicas one at a time: under ``vmap`` the neighbor list's
    rebuild-or-keep ``cond`` becomes a select that rebuilds at every step (901-bead CG
    water: 53 ms per replica-step vmapped, 6.3 ms one after another)."""
    if requested <= 0:
        cpu = jax.default_backend() == "cpu"
        requested = (1 if n_atoms >= 256 else 32) if cpu else replicas
    return max(1, min(requested, replicas))


def map_replicas(fn: Callable, replicas: int, block: int) -> Callable:
    """``fn`` over a leading replica axis: ``vmap`` over blocks of ``block`` replicas, the
    blocks run one after another (``lax.map``). When ``block`` does not divide
    ``replicas`` the last block is padded with copies of the first replicas, whose results
    are dropped (replicas are independent, so the copies change nothing). One replica is
    run unbatched: its axis is removed on the way in and put back on the way out."""
    if replicas == 1:
        def single(*args):
            out = fn(*jax.tree_util.tree_map(lambda x: x[0], args))
            return jax.tree_util.tree_map(lambda x: jnp.expand_dims(x, 0), out)

        return single
    if block == 1:  # one at a time, unbatched: a vmapped cond would run both branches
        return lambda *args: jax.lax.map(lambda a: fn(*a), args)
    batched = jax.vmap(fn)
    if block >= replicas:
        return batched
    n_blocks = -(-replicas // block)
    padded = n_blocks * block

    def blocked(*args):
        def split(x):
            if padded > replicas:
                x = jnp.concatenate([x, x[:padded - replicas]])
            return x.reshape((n_blocks, block) + x.shape[1:])

        out = jax.lax.map(lambda a: batched(*a), jax.tree_util.tree_map(split, args))
        return jax.tree_util.tree_map(
            lambda x: x.reshape((padded,) + x.shape[2:])[:replicas], out)

    return blocked


#: the mesh axis replicas are sharded over (``biojax.parallel``)
REPLICA_AXIS = "replicas"


def replica_fn(fn: Callable, replicas: int, block: int, mesh=None) -> Callable:
    """``fn`` over a leading replica axis of ``replicas``, jitted: ``map_replicas`` on one
    device, or, with a ``jax.sharding.Mesh`` (axis ``REPLICA_AXIS``), the same
    ``map_replicas`` of the replicas / devices that each device holds, under
    ``shard_map`` (``biojax.parallel.sharded``): replica axis of every argument and
    result sharded with ``NamedSharding(mesh, P("replicas"))``. ``block`` is per device."""
    if mesh is None:
        return jax.jit(map_replicas(fn, replicas, block))
    from biojax import parallel

    local = parallel.check_divisible(replicas, mesh, "replicas", "devices")
    return parallel.sharded(map_replicas(fn, local, block), mesh, REPLICA_AXIS,
                            collectives=False)


def space_kwargs(nbrs, box=None) -> dict:
    """The keyword arguments energy, force and integrator calls take: the neighbor list,
    and the box when it lives in the state (NPT)."""
    return {"neighbor": nbrs} if box is None else {"neighbor": nbrs, "box": box}


def make_observe(integ: Integrator, potential_fn: Callable, terms: Sequence,
                 extra_observables: dict, sys_space: SystemSpace) -> Callable:
    """observe(state, term_states, nbrs, kT) -> dict of scalars (eV, K, bar, Å³) and the
    extra observables. ``potential_energy`` is the Potential's alone; ``terms_energy``
    (present when energy terms are) is the sum of the extra terms."""

    def observe(state, term_states, nbrs, kT):
        box = integ.box(state)
        kw = space_kwargs(nbrs, box)
        pe = potential_fn(state.position, **kw)
        ke = kinetic_energy(state.momentum, state.mass)
        out = {"potential_energy": pe, "kinetic_energy": ke}
        te = 0.0
        if terms:
            te = sum(t.energy(state.position, s, **kw) for t, s in zip(terms, term_states))
            out["terms_energy"] = te
        out["total_energy"] = pe + te + ke
        out["temperature"] = 2.0 * ke / (integ.dof * KB)
        out["conserved"] = (pe + te + ke if integ.conserved is None else
                            integ.conserved(state, kT, term_states=term_states, **kw))
        if sys_space.periodic:
            b = sys_space.box if box is None else box
            p = quantity.pressure(potential_fn, state.position, b, ke, neighbor=nbrs)
            out["pressure_bar"] = p / BAR
            out["volume"] = quantity.volume(3, b)
        out.update(observe_extra(extra_observables, state, **kw))
        if terms:
            out.update(observe_terms(terms, term_states, state.position, **kw))
        return out

    return observe


# what stopped a replica (the ``kind`` of a chunk's alarm)
ALARM_TEMPERATURE, ALARM_ENERGY, ALARM_BOND = 1, 2, 3


def make_bond_stretch(displacement_fn: Callable, bonds: np.ndarray, ref_lengths: np.ndarray
                      ) -> Callable:
    """stretch(position, **kw) -> (largest length / reference length, index of that bond,
    its length in Å) over the bonds (B, 2); ``kw`` goes to ``displacement_fn`` (``box``
    under NPT), which takes the minimum image in periodic cells."""
    i, j = jnp.asarray(bonds[:, 0]), jnp.asarray(bonds[:, 1])
    ref = jnp.asarray(ref_lengths)

    def stretch(position, **kw):
        d = jax.vmap(lambda a, b: displacement_fn(a, b, **kw))(position[i], position[j])
        r = jnp.sqrt(jnp.sum(d * d, axis=-1))
        ratio = r / ref
        k = jnp.argmax(ratio)
        return ratio[k], k.astype(jnp.int32), r[k]

    return stretch


def _raise_alarm(alarm, step, is_bad, kind, index, value):
    """Keep the first alarm: (step, kind, index, value) set where none was yet."""
    first = (alarm[0] < 0) & is_bad
    return (jnp.where(first, step, alarm[0]), jnp.where(first, kind, alarm[1]),
            jnp.where(first, jnp.asarray(index, jnp.int32), alarm[2]),
            jnp.where(first, jnp.asarray(value, jnp.float32), alarm[3]))


def make_chunk(integ: Integrator, observe: Callable, terms: Sequence, n_frames: int,
               records_per_frame: int, observe_every: int, with_velocities: bool,
               with_forces: bool, bond_stretch: Callable | None = None,
               bond_factor: float = 0.0) -> Callable:
    """chunk(state, term_states, nbrs, dt, kT, ke_limit, pe_limit) -> (state, term_states,
    nbrs, alarm, observables, frames) for one replica (dt in ASE time, kT and the limits
    in eV).

    ``alarm`` = (step, kind, index, value) of the first check that failed, step -1 if none
    did: the 1-based step within the chunk and what happened there —
    ``ALARM_TEMPERATURE`` (kinetic energy non-finite or above ``ke_limit``; value = the
    kinetic energy), ``ALARM_BOND`` (checked every step when ``bond_stretch`` is given: a
    bond longer than ``bond_factor`` × its reference length; index = the bond, value = its
    length in Å) or ``ALARM_ENERGY`` (checked every ``observe_every`` steps, where the
    potential energy is computed anyway: non-finite or above ``pe_limit``; value = the
    potential energy). These are flags, not exceptions: the host loop stops the run and
    keeps the frames before the step.
    """

    def one_step(_, carry):
        state, term_states, nbrs, alarm, n, dt, kT, ke_limit, pe_limit = carry
        box = integ.box(state)
        kw = space_kwargs(nbrs, box)
        state = integ.step(state, dt, kT, term_states=term_states, **kw)
        box = integ.box(state)
        nbrs = nbrs.update(state.position) if box is None else \
            nbrs.update(state.position, box=box)
        if terms:
            kw = space_kwargs(nbrs, box)
            term_states = update_term_states(terms, term_states, state.position, **kw)
        ke = kinetic_energy(state.momentum, state.mass)
        hot = jnp.logical_not(jnp.isfinite(ke)) | (ke > ke_limit)
        alarm = _raise_alarm(alarm, n + 1, hot, ALARM_TEMPERATURE, 0, ke)
        if bond_stretch is not None:
            ratio, k, r = bond_stretch(state.position, **({} if box is None else
                                                         {"box": box}))
            alarm = _raise_alarm(alarm, n + 1, ratio > bond_factor, ALARM_BOND, k, r)
        return state, term_states, nbrs, alarm, n + 1, dt, kT, ke_limit, pe_limit

    def record(carry, _):
        carry = jax.lax.fori_loop(0, observe_every, one_step, carry)
        state, term_states, nbrs, alarm, n, dt, kT, ke_limit, pe_limit = carry
        obs = observe(state, term_states, nbrs, kT)
        pe = obs["potential_energy"]
        high = jnp.logical_not(jnp.isfinite(pe)) | (pe > pe_limit)
        alarm = _raise_alarm(alarm, n, high, ALARM_ENERGY, 0, pe)
        return (state, term_states, nbrs, alarm, n, dt, kT, ke_limit, pe_limit), obs

    def frame(carry, _):
        carry, obs = jax.lax.scan(record, carry, None, length=records_per_frame)
        state = carry[0]
        fr = {"position": state.position}
        if with_velocities:
            fr["velocity"] = state.momentum / state.mass
        if with_forces:
            fr["force"] = state.force
        box = integ.box(state)
        if box is not None:
            fr["box"] = box
        return carry, (obs, fr)

    def chunk(state, term_states, nbrs, dt, kT, ke_limit, pe_limit):
        alarm = (jnp.int32(-1), jnp.int32(0), jnp.int32(0), jnp.float32(0.0))
        carry = (state, term_states, nbrs, alarm, jnp.int32(0), dt, kT, ke_limit, pe_limit)
        carry, (obs, frames) = jax.lax.scan(frame, carry, None, length=n_frames)
        obs = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), obs)
        return carry[0], carry[1], carry[2], carry[3], obs, frames

    return chunk
