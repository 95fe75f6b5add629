"""Dense neighbor lists for orthorhombic periodic boxes, rebuilt from a cell list.

jax-md's cell-list rebuild is general (any dimension, box shape and format); on a CPU it
dominated a Lennard-Jones step: it hashes atoms into cells with scatters, checks every
atom's 27 cells at full cell capacity and compacts the result with a scatter (75 ms for
5324 argon atoms on 2 cores, against 2 ms for a force call). This builder does the
orthorhombic Dense case with one sort and otherwise only gathers (13 ms there):

1. atoms are sorted by cell, so each cell's atoms are a run of the sorted order;
2. each cell's candidates are the runs of its 27 surrounding cells packed one after
   another into ``candidate_capacity`` slots, built once per cell and shared by its atoms
   (no padding per cell: 614 slots instead of 27 × 29 = 783 for 5324 argon atoms);
3. one pass of minimum-image distances marks the candidates within cutoff + skin (on a
   CPU in blocks of atoms whose candidates stay in cache: 32,000 argon atoms ~2× faster);
4. the marks are packed into 32-bit words and the k-th mark of each row is found from the
   words' popcounts and a binary search inside its word.

The result is a jax-md ``NeighborList`` (Dense format, padding index N) with jax-md's
update rule (rebuild once some atom moved more than half the skin), so integrators,
energies and the overflow handling use it unchanged. Overflow of the neighbour or the
candidate buffer sets jax-md's error bits; the caller reallocates and reruns the chunk.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition

from biojax.nn.classical import map_row_blocks

PEC = partition.PartitionErrorCode
OFFSETS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.int32)


def cells_per_side(side: np.ndarray, radius: float) -> np.ndarray:
    """Cells along each box side (cells at least ``radius`` wide, Å), or zeros when a side
    holds fewer than three (the 27 neighbouring cells would then repeat)."""
    n = np.floor(np.asarray(side, np.float64) / radius).astype(np.int64)
    return n if np.all(n >= 3) else np.zeros(3, np.int64)


def _cell_index(position: jnp.ndarray, side: jnp.ndarray, n_cells: np.ndarray):
    """Flat cell index of each atom."""
    c = jnp.floor(position / side * n_cells).astype(jnp.int32)
    c = jnp.mod(c, jnp.asarray(n_cells, jnp.int32))  # atoms exactly on the far face
    return (c[:, 0] * n_cells[1] + c[:, 1]) * n_cells[2] + c[:, 2]


def _neighbour_cells(n_cells: np.ndarray) -> np.ndarray:
    """[n_cells, 27] flat indices of each cell's neighbourhood (periodic)."""
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in n_cells], indexing="ij"), -1)
    grid = grid.reshape(-1, 1, 3) + OFFSETS[None]
    grid = np.mod(grid, n_cells)
    return ((grid[..., 0] * n_cells[1] + grid[..., 1]) * n_cells[2] + grid[..., 2]).astype(
        np.int32)


def _candidates(position, side, n_cells, capacity: int):
    """Each cell's candidates: the atoms of the 27 cells around it, packed into
    ``capacity`` slots (padding N); also each atom's cell and the largest such count.

    Atoms are sorted by cell, so a cell's atoms are a run of the sorted order; slot k of
    a neighbourhood reads the run that holds it. The rows are built once per cell and
    shared by the atoms in it.
    """
    N = position.shape[0]
    n_total = int(np.prod(n_cells))
    cell = _cell_index(position, side, n_cells)
    order = jnp.argsort(cell).astype(jnp.int32)
    sorted_cells = cell[order]
    ids = jnp.arange(n_total, dtype=jnp.int32)
    start = jnp.searchsorted(sorted_cells, ids, side="left").astype(jnp.int32)
    count = jnp.searchsorted(sorted_cells, ids, side="right").astype(jnp.int32) - start
    around = jnp.asarray(_neighbour_cells(n_cells))                 # [cells, 27]
    run_count = count[around]
    run_end = jnp.cumsum(run_count, axis=1)                          # inclusive

    def rows():
        slot = jnp.arange(capacity, dtype=jnp.int32)
        run = jnp.minimum(jnp.sum(run_end[:, None, :] <= slot[None, :, None], axis=2), 26)
        offset = slot[None] - jnp.take_along_axis(run_end - run_count, run, 1)
        first = start[jnp.take_along_axis(around, run, 1)]
        return jnp.where(slot[None] < run_end[:, -1:],
                         order[jnp.minimum(first + offset, N - 1)], N)

    # The per-cell rows must be computed once, not fused into the per-atom gather (XLA
    # would then redo their five gathers for every atom: 10 ms instead of 3 ms for 5324
    # atoms). optimization_barrier does not stop that fusion on the CPU; a conditional
    # on a predicate XLA cannot fold (counts are never negative) does.
    rows = jax.lax.cond(jnp.all(count >= 0), rows,
                        lambda: jnp.full((n_total, capacity), N, jnp.int32))
    return rows, cell, jnp.max(run_end[:, -1])


def _all_pairs(N: int):
    """Every other atom as a candidate (small boxes without a cell grid): one "cell"."""
    j = jnp.arange(N, dtype=jnp.int32)
    return j[None], jnp.zeros((N,), jnp.int32), jnp.int32(0)


def _compact(candidates, mask, capacity: int, N: int):
    """The first ``capacity`` marked candidates of each row (padding N) and each row's
    count of marks.

    The mask is packed into 32-bit words; the word holding the k-th mark is found from
    the words' running popcounts, the bit inside it by a five-step binary search. Only
    gathers and elementwise integer work: a running sum over the whole row and a
    scatter, as usual, cost 3–4× more on a CPU.
    """
    n_rows, M = mask.shape
    W = -(-M // 32)
    padded = jnp.pad(mask, ((0, 0), (0, 32 * W - M))).reshape(n_rows, W, 32)
    words = jnp.sum(padded.astype(jnp.uint32) << jnp.arange(32, dtype=jnp.uint32), axis=2,
                    dtype=jnp.uint32)
    per_word = jax.lax.population_count(words).astype(jnp.int32)
    through = jnp.cumsum(per_word, axis=1)                         # marks up to word w
    rank = jnp.arange(capacity, dtype=jnp.int32)                    # 0-based
    w = jnp.minimum(jnp.sum(through[:, None, :] <= rank[None, :, None], axis=2), W - 1)
    word = jnp.take_along_axis(words, w, 1)
    r = rank[None] - jnp.take_along_axis(through - per_word, w, 1)
    bit = jnp.zeros_like(r)
    for width in (16, 8, 4, 2, 1):
        low = jax.lax.population_count(
            (word >> bit.astype(jnp.uint32)) & jnp.uint32((1 << width) - 1)).astype(jnp.int32)
        up = r >= low
        bit, r = jnp.where(up, bit + width, bit), jnp.where(up, r - low, r)
    column = jnp.minimum(32 * w + bit, M - 1)
    count = through[:, -1]
    idx = jnp.where(rank[None] < count[:, None],
                    jnp.take_along_axis(candidates, column, 1), N)
    return idx.astype(jnp.int32), count


def dense_cell_neighbor_list(displacement_fn, side: np.ndarray, cutoff: float, skin: float,
                             capacity_multiplier: float = 1.25):
    """jax-md ``NeighborListFns`` for Dense lists of pairs closer than ``cutoff + skin``
    (Å) in an orthorhombic periodic box of sides ``side`` (Å), positions Cartesian and
    wrapped. ``allocate(R, extra_capacity=0)`` sizes the buffers from R (× the
    multiplier; ``extra_capacity`` adds neighbours per atom and grows the candidate
    slots in proportion); ``update(R, nbrs)`` rebuilds when an atom moved more than skin/2."""
    radius = cutoff + skin
    side = np.asarray(side, np.float32)
    n_cells = cells_per_side(side, radius)
    threshold_sq = (0.5 * skin) ** 2
    side_j = jnp.asarray(side)
    displacement = jax.vmap(displacement_fn)
    pair_distance_sq = jax.vmap(jax.vmap(
        lambda a, b: jnp.sum(displacement_fn(a, b) ** 2), (None, 0)))

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def build(position, candidate_capacity: int, capacity: int):
        N = position.shape[0]
        if candidate_capacity:
            cell_rows, cell, fullest = _candidates(position, side_j, n_cells,
                                                   candidate_capacity)
        else:
            cell_rows, cell, fullest = _all_pairs(N)

        def atom_rows(rows):  # the atoms ``rows`` (None: all), a block at a time on a CPU
            own = jnp.arange(N, dtype=jnp.int32) if rows is None else rows
            candidates = cell_rows[cell[own]]
            partner = position[jnp.minimum(candidates, N - 1)]
            d2 = pair_distance_sq(position[own], partner)
            mask = (d2 < radius ** 2) & (candidates < N) & (candidates != own[:, None])
            return _compact(candidates, mask, capacity, N)

        idx, count = map_row_blocks(atom_rows, N, cell_rows.shape[1])
        return idx, jnp.max(count), fullest

    def make(position, idx, error, candidate_capacity, capacity):
        return partition.NeighborList(
            idx, position, error, candidate_capacity or None, capacity,
            partition.NeighborListFormat.Dense, radius, None, update)

    def allocate(position, extra_capacity: int = 0):
        position = jnp.asarray(position)
        N = position.shape[0]
        candidates = 0
        if n_cells.any():
            cell = np.asarray(_cell_index(position, side_j, n_cells))
            count = np.bincount(cell, minlength=int(np.prod(n_cells)))
            fullest = int(count[_neighbour_cells(n_cells)].sum(axis=1).max())
            candidates = int(math.ceil(fullest * capacity_multiplier))
        _, occupancy, _ = build(position, candidates, candidates or N)
        base = max(int(math.ceil(int(occupancy) * capacity_multiplier)), 1)
        capacity = min(base + extra_capacity, N - 1)
        if candidates and extra_capacity > 0:
            candidates = int(math.ceil(candidates * (base + extra_capacity) / base))
        idx, occupancy, fullest = build(position, candidates, capacity)
        error = partition.PartitionError(jnp.zeros((), jnp.uint8))
        return make(position, idx, _errors(error, occupancy, capacity, fullest, candidates),
                    candidates, capacity)

    def update(position, nbrs):
        candidate_capacity = nbrs.cell_list_capacity or 0

        def rebuild(_):
            idx, occupancy, fullest = build(position, candidate_capacity, nbrs.max_occupancy)
            return make(position, idx, _errors(nbrs.error, occupancy, nbrs.max_occupancy,
                                               fullest, candidate_capacity),
                        candidate_capacity, nbrs.max_occupancy)

        moved = jnp.max(jnp.sum(displacement(position, nbrs.reference_position) ** 2, axis=1))
        return jax.lax.cond(moved > threshold_sq, rebuild, lambda _: nbrs, None)

    return partition.NeighborListFns(allocate, update)


def _errors(error, occupancy, capacity, fullest, candidate_capacity):
    error = error.update(PEC.NEIGHBOR_LIST_OVERFLOW, occupancy > capacity)
    if candidate_capacity:
        error = error.update(PEC.CELL_LIST_OVERFLOW, fullest > candidate_capacity)
    return error
