"""Internal coordinates of a molecule (Z-matrix) from its bonded graph, and back (NeRF).

A :class:`ZMatrix` is built once, on the host, from the bonds of one molecule: a
breadth-first spanning tree from a root atom (default: the graph's centre) gives the
order in which atoms are placed. Every atom after the first is placed from three atoms
already placed:

- atom ``i`` is bonded to ``j`` (its parent in the tree) with bond length ``b = |r_i − r_j|``
  (Å);
- the angle ``a = ∠ i-j-k`` (radians, in (0, π)) uses ``k``, the parent of ``j`` (or, for
  the root's children, the root's first child);
- the torsion ``t = dihedral(i, j, k, l)`` (radians, in (−π, π], the IUPAC sign of
  ``biojax.core.geometry.dihedrals``) uses ``l``: an already placed sibling of ``i`` (bonded
  to ``j``) where there is one, so that the second and third hydrogens of a methyl group get
  near-constant torsions (about ±120°) relative to the first, else the parent of ``k``.

Atom 0 of the order sits at the origin, atom 1 on +x, atom 2 in the xy plane: the six
rigid-body degrees of freedom are dropped, leaving ``n − 1`` bonds, ``n − 2`` angles and
``n − 3`` torsions (3n − 6 numbers). :func:`to_internal` and :func:`to_cartesian` are pure
JAX, jit- and vmap-able and differentiable; ``to_cartesian(to_internal(x))`` is ``x`` moved
rigidly into that canonical frame (exact to float rounding), and
``to_internal(to_cartesian(z)) == z``.

The volume element is ``dx = (rigid-body part) · J(z) dz`` with
``log J = 2 Σ log b + Σ log sin a`` (:func:`log_jacobian`): a density over Cartesian
coordinates ``exp(−βU(x))`` becomes ``exp(−βU(x(z))) J(z)`` over internal coordinates.
Torsions are periodic: :func:`wrap` maps any angle into (−π, π]; generators treat them
on the circle (see ``biojax.generative.conformations``).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core import geometry
from biojax.core.errors import DataError

__all__ = ["ZMatrix", "build_zmatrix", "bonds_from_positions", "to_internal",
           "to_cartesian", "log_jacobian", "wrap", "split", "join"]


@dataclasses.dataclass(frozen=True)
class ZMatrix:
    """The placement order and reference atoms of a molecule (see module doc).

    ``order`` (n,): atom indices in placement order; ``refs`` (n, 3): for the atom placed
    at position p of the order, the atoms ``j, k, l`` it is placed from (−1 where unused:
    the first atom has none, the second only ``j``, the third ``j, k``). ``bonds`` (m, 2):
    the bonded graph it was built from; ``n_atoms``."""

    order: np.ndarray
    refs: np.ndarray
    bonds: np.ndarray
    n_atoms: int

    @property
    def n_internal(self) -> int:
        """3n − 6: the number of internal coordinates (bonds, angles, torsions)."""
        return 3 * self.n_atoms - 6

    @property
    def bond_pairs(self) -> np.ndarray:
        """(n − 1, 2) atom pairs (i, j) of the Z-matrix bonds, in placement order."""
        return np.stack([self.order[1:], self.refs[1:, 0]], 1).astype(np.int32)

    @property
    def angle_triples(self) -> np.ndarray:
        """(n − 2, 3) atom triples (i, j, k) of the Z-matrix angles."""
        return np.stack([self.order[2:], self.refs[2:, 0], self.refs[2:, 1]], 1).astype(np.int32)

    @property
    def torsion_quads(self) -> np.ndarray:
        """(n − 3, 4) atom quadruples (i, j, k, l) of the Z-matrix torsions."""
        return np.concatenate([self.order[3:, None], self.refs[3:]], 1).astype(np.int32)

    def to_dict(self) -> dict:
        """A JSON-able record (saved beside a generator)."""
        return {"order": self.order.tolist(), "refs": self.refs.tolist(),
                "bonds": self.bonds.tolist(), "n_atoms": int(self.n_atoms)}

    @classmethod
    def from_dict(cls, d: dict) -> "ZMatrix":
        return cls(order=np.asarray(d["order"], np.int32), refs=np.asarray(d["refs"], np.int32),
                   bonds=np.asarray(d["bonds"], np.int32).reshape(-1, 2),
                   n_atoms=int(d["n_atoms"]))


def bonds_from_positions(positions, numbers, scale: float = 1.2) -> np.ndarray:
    """Bonds (m, 2), i < j, between atoms closer than ``scale`` × the sum of their
    covalent radii (ASE's), from one structure ``positions`` (n, 3) in Å."""
    from ase.data import covalent_radii

    x = np.asarray(positions, np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise DataError(f"bonds_from_positions: expected positions (n, 3), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError("bonds_from_positions: positions contain NaN or infinite values")
    r = covalent_radii[np.asarray(numbers, int)]
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    i, j = np.nonzero(np.triu(d < scale * (r[:, None] + r[None]), 1))
    return np.stack([i, j], 1).astype(np.int32)


def build_zmatrix(bonds, n_atoms: int, root: int | None = None) -> ZMatrix:
    """The Z-matrix of a molecule of ``n_atoms`` atoms with bonds (m, 2) (see module
    doc). The graph must be connected (one molecule) and have at least 3 atoms; else
    DataError naming the atoms that cannot be reached. ``root``: the first atom (default:
    the centre of the graph, the atom with the smallest eccentricity, lowest index)."""
    n = int(n_atoms)
    if n < 3:
        raise DataError(f"internal coordinates need at least 3 atoms, got {n}")
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if bonds.size and (bonds.min() < 0 or bonds.max() >= n):
        raise DataError(f"bonds: atom indices must be in [0, {n}), got "
                        f"{bonds.min()}..{bonds.max()}")
    if np.any(bonds[:, 0] == bonds[:, 1]):
        raise DataError("bonds: an atom is bonded to itself")
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for a, b in bonds:
        if b not in nbrs[a]:
            nbrs[a].append(int(b))
            nbrs[b].append(int(a))
    for v in nbrs:
        v.sort()

    def bfs(start):
        dist = np.full(n, -1)
        parent = np.full(n, -1)
        dist[start] = 0
        order, queue = [start], deque([start])
        while queue:
            a = queue.popleft()
            for b in nbrs[a]:
                if dist[b] < 0:
                    dist[b], parent[b] = dist[a] + 1, a
                    order.append(b)
                    queue.append(b)
        return dist, parent, order

    dist0, _, _ = bfs(0)
    if np.any(dist0 < 0):
        lost = np.nonzero(dist0 < 0)[0]
        raise DataError(
            f"the bonded graph is disconnected: atom(s) {lost[:10].tolist()}"
            f"{' ...' if lost.size > 10 else ''} ({lost.size} of {n}) are not bonded to atom 0 "
            "through any path; internal coordinates need one molecule (check the bond "
            "list, or the bond scale if bonds were guessed from distances)")
    if root is None:
        ecc = [bfs(a)[0].max() for a in range(n)]
        root = int(np.argmin(ecc))
    if not 0 <= root < n:
        raise DataError(f"root atom {root} is not in [0, {n})")
    _, parent, order = bfs(root)
    pos = {a: p for p, a in enumerate(order)}
    refs = np.full((n, 3), -1, np.int64)
    for p, i in enumerate(order):
        if p == 0:
            continue
        j = int(parent[i])
        refs[p, 0] = j
        if p == 1:
            continue
        placed = lambda a: pos[a] < p  # noqa: E731
        k = int(parent[j]) if parent[j] >= 0 else next(
            a for a in nbrs[j] if a != i and placed(a))
        refs[p, 1] = k
        if p == 2:
            continue
        cands = ([a for a in nbrs[j] if a not in (i, k) and placed(a)]   # sibling
                 + ([int(parent[k])] if parent[k] >= 0 else [])            # grandparent
                 + [a for a in nbrs[k] if a not in (i, j) and placed(a)]
                 + [a for a in order[:p] if a not in (j, k)])
        refs[p, 2] = cands[0]
    return ZMatrix(order=np.asarray(order, np.int32), refs=refs.astype(np.int32),
                   bonds=np.asarray(bonds, np.int32), n_atoms=n)


def wrap(angle):
    """Angles (radians) wrapped into (−π, π]."""
    a = jnp.asarray(angle)
    w = jnp.mod(a + jnp.pi, 2 * jnp.pi) - jnp.pi
    return jnp.where(w <= -jnp.pi, w + 2 * jnp.pi, w)


def split(zm: ZMatrix, z):
    """``(bonds, angles, torsions)`` of internal-coordinate vectors z (..., 3n − 6)."""
    n = zm.n_atoms
    return z[..., :n - 1], z[..., n - 1:2 * n - 3], z[..., 2 * n - 3:]


def join(bonds, angles, torsions):
    """The internal-coordinate vector (..., 3n − 6) of its three parts."""
    return jnp.concatenate([bonds, angles, torsions], axis=-1)


def to_internal(zm: ZMatrix, positions) -> jax.Array:
    """Internal coordinates (..., 3n − 6): bonds (Å), angles and torsions (radians) of
    positions (..., n, 3) Å, laid out as :func:`join` (see module doc)."""
    x = jnp.asarray(positions)
    if x.shape[-2:] != (zm.n_atoms, 3):
        raise DataError(f"to_internal: expected positions (..., {zm.n_atoms}, 3), got {x.shape}")
    b = geometry.distances(x, jnp.asarray(zm.bond_pairs))
    a = geometry.angles(x, jnp.asarray(zm.angle_triples))
    t = geometry.dihedrals(x, jnp.asarray(zm.torsion_quads))
    return join(b, a, t)


def _place(pj, pk, pl, b, a, t):
    """NeRF: the position of an atom at bond b from pj, angle a at pj from pk, and
    dihedral(new, j, k, l) = t."""
    bc = pj - pk
    bc = bc / jnp.linalg.norm(bc)
    n = jnp.cross(pk - pl, bc)
    n = n / jnp.linalg.norm(n)
    m = jnp.cross(n, bc)
    # dihedral(i, j, k, l) = dihedral(l, k, j, i): the standard NeRF with A=l, B=k, C=j
    d = jnp.stack([-b * jnp.cos(a), b * jnp.sin(a) * jnp.cos(t), b * jnp.sin(a) * jnp.sin(t)])
    return pj + d[0] * bc + d[1] * m + d[2] * n


def to_cartesian(zm: ZMatrix, z) -> jax.Array:
    """Positions (..., n, 3) Å in the canonical frame (first atom at the origin, second on
    +x, third in the xy plane, +y side) from internal coordinates z (..., 3n − 6)."""
    z = jnp.asarray(z)
    if z.shape[-1] != zm.n_internal:
        raise DataError(f"to_cartesian: expected {zm.n_internal} internal coordinates, "
                        f"got {z.shape[-1]}")
    fn = _cartesian_fn(zm)
    if z.ndim > 1:
        lead = z.shape[:-1]
        out = jax.vmap(fn)(z.reshape(-1, z.shape[-1]))
        return out.reshape(*lead, zm.n_atoms, 3)
    return fn(z)


_CACHE: dict = {}


def _cartesian_fn(zm: ZMatrix):
    """The jitted single-structure build for ``zm`` (cached per Z-matrix)."""
    key = (zm.n_atoms, zm.order.tobytes(), zm.refs.tobytes())
    if key not in _CACHE:
        _CACHE[key] = jax.jit(lambda z: _build(zm, z))
    return _CACHE[key]


def _build(zm: ZMatrix, z):
    n = zm.n_atoms
    bonds, angles, tors = split(zm, z)
    order, refs = zm.order, zm.refs
    x = jnp.zeros((n, 3), z.dtype)
    x = x.at[order[1]].set(jnp.stack([bonds[0], 0.0, 0.0]).astype(z.dtype))
    # third atom: bond to j, angle at j from k, in the xy plane (y > 0)
    j, k = refs[2, 0], refs[2, 1]
    u = (x[k] - x[j]) / jnp.linalg.norm(x[k] - x[j])  # along ±x
    perp = jnp.array([0.0, 1.0, 0.0], z.dtype)
    x = x.at[order[2]].set(x[j] + bonds[1] * (jnp.cos(angles[0]) * u
                                              + jnp.sin(angles[0]) * perp))
    if n == 3:
        return x
    idx = jnp.asarray(np.concatenate([order[3:, None], refs[3:]], 1))
    vals = jnp.stack([bonds[2:], angles[1:], tors], 1)

    def body(x, step):
        (i, j, k, l), (b, a, t) = step
        return x.at[i].set(_place(x[j], x[k], x[l], b, a, t)), None

    x, _ = jax.lax.scan(body, x, (idx, vals))
    return x


def log_jacobian(zm: ZMatrix, z) -> jax.Array:
    """log J(z) = 2 Σ log b + Σ log sin a (shape z.shape[:-1]): the log volume factor from
    internal to Cartesian coordinates, rigid-body part left out (see module doc)."""
    bonds, angles, _ = split(zm, jnp.asarray(z))
    return 2.0 * jnp.sum(jnp.log(bonds), -1) + jnp.sum(jnp.log(jnp.sin(angles)), -1)


def check_positions(positions, what: str = "positions") -> np.ndarray:
    """``positions`` as float64 (..., n, 3); DataError naming ``what`` and the first bad
    frame if any value is NaN or infinite."""
    x = np.asarray(positions, np.float64)
    if x.ndim < 2 or x.shape[-1] != 3:
        raise DataError(f"{what}: expected (..., n_atoms, 3) coordinates, got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        frame = np.argwhere(bad)[0]
        raise DataError(f"{what}: NaN or infinite coordinate at index {tuple(frame.tolist())} "
                        f"({int(bad.reshape(-1, *x.shape[-2:]).any(axis=(1, 2)).sum())} frame(s) "
                        "affected); remove those frames first")
    return x


def sanity(zm: ZMatrix, positions, reference_lengths: Sequence[float] | None = None,
           tolerance: float = 0.1) -> np.ndarray:
    """Per-structure bool: every bond of ``zm.bonds`` within ``tolerance`` (fraction) of its
    reference length (default: the mean over ``positions``), positions (..., n, 3) Å."""
    x = jnp.asarray(positions)
    d = np.asarray(geometry.distances(x, jnp.asarray(zm.bonds)))
    ref = np.mean(d.reshape(-1, d.shape[-1]), 0) if reference_lengths is None else \
        np.asarray(reference_lengths)
    return np.all(np.abs(d / ref - 1.0) <= tolerance, axis=-1)
