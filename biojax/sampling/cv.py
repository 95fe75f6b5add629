"""Collective variables (CVs): pure JAX functions of the atom positions, for biases in MD
and for analysis of trajectories, from one definition.

A CV is a :class:`CV`: ``fn(positions, **kw) -> scalar`` (``kw``: the space arguments the
MD step passes, ``box`` under NPT), a ``name`` and, for angles, its ``period`` (lo, hi).
Factories registered in ``biojax.core.registry.collective_variables`` build CVs from
config tables ``{name = "dihedral", atoms = [4, 6, 8, 14]}``; a table may instead name a
factory by import path ``"mymodule:my_cv"`` (called as ``factory(system, **options)``).

Geometry comes from :mod:`biojax.core.geometry` (finite values and gradients at degenerate
geometry: collinear dihedral atoms, coincident atoms, RMSD 0). Positions are measured
through the System's ``displacement_fn`` (minimum image in periodic boxes, fractional
coordinates under NPT): the atoms of one CV are placed relative to its first atom, so
each CV's atoms must lie within half a box of that atom. Units: Å for lengths, radians
for angles and dihedrals (dihedrals in (−π, π], periodic).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core import geometry
from biojax.core.errors import ConfigError
from biojax.core.registry import collective_variables, import_object, resolve
from biojax.md.terms import System


@dataclasses.dataclass(frozen=True)
class CV:
    """One scalar collective variable: ``fn(positions, **kw)`` in its own units
    (Å or rad); ``period`` (lo, hi) for periodic CVs (dihedrals: (−π, π)), else None."""

    name: str
    fn: Callable
    period: tuple[float, float] | None = None

    def __call__(self, positions, **kw):
        return self.fn(positions, **kw)


def _space_kw(kw: dict) -> dict:
    return {k: kw[k] for k in ("box", "perturbation") if k in kw}


def _indices(atoms, width: int | None, system: System, what: str) -> np.ndarray:
    try:
        idx = np.asarray(atoms, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: atoms must be a list of atom indices, got {atoms!r}") \
            from None
    if width is not None and idx.shape != (width,):
        raise ConfigError(f"{what}: atoms must list {width} atom indices, got {list(atoms)}")
    if idx.size == 0:
        raise ConfigError(f"{what}: atoms is empty")
    if idx.min() < 0 or idx.max() >= system.n_atoms:
        raise ConfigError(f"{what}: atom indices must be in [0, {system.n_atoms}) for this "
                          f"system of {system.n_atoms} atoms, got {idx.tolist()}")
    return idx.astype(np.int32)


def _local(system: System, idx: np.ndarray, positions, kw) -> jax.Array:
    """The atoms ``idx`` as Cartesian points relative to the first (minimum image), (n, 3)."""
    x = positions[idx]
    d = jax.vmap(lambda a: system.displacement_fn(a, x[0], **_space_kw(kw)))(x)
    return d


# ---------------------------------------------------------------------- geometric CVs
@collective_variables.register("distance")
def distance(system: System, atoms: Sequence[int]) -> CV:
    """|r_i − r_j| (Å, minimum image)."""
    idx = _indices(atoms, 2, system, "cv distance")
    pair = jnp.asarray([[0, 1]])
    return CV("distance", lambda R, **kw: geometry.distances(_local(system, idx, R, kw),
                                                              pair)[0])


@collective_variables.register("angle")
def angle(system: System, atoms: Sequence[int]) -> CV:
    """Bond angle i-j-k at j (rad, [0, π])."""
    idx = _indices(atoms, 3, system, "cv angle")
    t = jnp.asarray([[0, 1, 2]])
    return CV("angle", lambda R, **kw: geometry.angles(_local(system, idx, R, kw), t)[0])


@collective_variables.register("dihedral")
def dihedral(system: System, atoms: Sequence[int]) -> CV:
    """Torsion i-j-k-l (rad, (−π, π], IUPAC sign, periodic): φ of alanine dipeptide is
    atoms [4, 6, 8, 14], ψ is [6, 8, 14, 16] (0-based, the shipped 22-atom files)."""
    idx = _indices(atoms, 4, system, "cv dihedral")
    q = jnp.asarray([[0, 1, 2, 3]])
    return CV("dihedral", lambda R, **kw: geometry.dihedrals(_local(system, idx, R, kw),
                                                              q)[0], (-np.pi, np.pi))


@collective_variables.register("rmsd")
def rmsd(system: System, atoms: Sequence[int], reference: Any,
         fit_atoms: Sequence[int] | None = None) -> CV:
    """RMSD (Å) of ``atoms`` to the same atoms of ``reference`` after optimal (Kabsch)
    superposition of all of them. ``reference``: positions (N, 3) or (len(atoms), 3) in
    Å, or a structure file any ASE reader takes (all N atoms). ``fit_atoms`` is not
    supported separately (fit and measure use the same atoms)."""
    if fit_atoms is not None:
        raise ConfigError("cv rmsd: fit_atoms is not supported; the RMSD is measured on "
                          "the atoms it is fitted on (give them as atoms)")
    idx = _indices(atoms, None, system, "cv rmsd")
    if isinstance(reference, str):
        import ase.io

        try:
            reference = ase.io.read(reference).positions
        except Exception as exc:  # noqa: BLE001 (any reader error is a config error)
            raise ConfigError(f"cv rmsd: cannot read reference {reference!r}: {exc}") from None
    ref = np.asarray(reference, np.float64)
    if ref.shape == (system.n_atoms, 3):
        ref = ref[idx]
    if ref.shape != (len(idx), 3):
        raise ConfigError(f"cv rmsd: reference must have shape ({system.n_atoms}, 3) or "
                          f"({len(idx)}, 3), got {ref.shape}")
    ref = jnp.asarray(ref - ref[0], jnp.float32)
    return CV("rmsd", lambda R, **kw: geometry.rmsd(_local(system, idx, R, kw), ref))


@collective_variables.register("coordination")
def coordination(system: System, group_a: Sequence[int], group_b: Sequence[int],
                 r0: float, n: int = 6, m: int = 12, d0: float = 0.0) -> CV:
    """Coordination number Σ_{i∈A, j∈B, i≠j} s(r_ij), with the smooth switching function
    s(r) = (1 − x^n) / (1 − x^m), x = (r − d0)/r0 (r0, d0 in Å; s = 1 for r < d0;
    PLUMED's COORDINATION rational switch). Finite with a finite gradient at x = 1."""
    a = _indices(group_a, None, system, "cv coordination group_a")
    b = _indices(group_b, None, system, "cv coordination group_b")
    if r0 <= 0 or not (0 < n < m):
        raise ConfigError(f"cv coordination: need r0 > 0 Å and 0 < n < m, got r0={r0}, "
                          f"n={n}, m={m}")
    ia, ib = np.meshgrid(a, b, indexing="ij")
    keep = ia != ib
    ia, ib = jnp.asarray(ia[keep]), jnp.asarray(ib[keep])

    def switch(r):
        x = jnp.maximum(r - d0, 0.0) / r0
        near = jnp.abs(x - 1.0) < 1e-3
        xs = jnp.where(near, 0.5, x)  # (1 − x^n)/(1 − x^m) → n/m at x = 1
        s = (1.0 - xs ** n) / (1.0 - xs ** m)
        # first-order expansion at x = 1: n/m + n(n − m)/(2m) (x − 1)
        lin = n / m + n * (n - m) / (2.0 * m) * (x - 1.0)
        return jnp.where(near, lin, s)

    def fn(R, **kw):
        d = jax.vmap(lambda i, j: system.displacement_fn(R[i], R[j], **_space_kw(kw)))(ia, ib)
        r = geometry._safe_norm(d)
        return jnp.sum(switch(r))

    return CV("coordination", fn)


# ---------------------------------------------------------------------- CVs of features
def _features(system: System, tables: Sequence[dict], what: str) -> tuple[list[CV], Callable]:
    """CVs of the feature tables and ``feats(R, **kw) -> (F,)``; periodic features enter
    as (cos, sin) pairs so that a linear map or network sees no jump at ±π."""
    if not tables:
        raise ConfigError(f"{what}: features must list at least one CV table")
    cvs = [cv_from_table(t, system, f"{what} features[{n}]") for n, t in enumerate(tables)]

    def feats(R, **kw):
        out = []
        for c in cvs:
            v = c.fn(R, **kw)
            out.extend([jnp.cos(v), jnp.sin(v)] if c.period is not None else [v])
        return jnp.stack(out)

    return cvs, feats


def feature_width(cvs: Sequence[CV]) -> int:
    """Length of the feature vector of these CVs (periodic ones count twice)."""
    return sum(2 if c.period is not None else 1 for c in cvs)


@collective_variables.register("linear")
def linear(system: System, features: Sequence[dict], weights: Sequence[float] | None = None,
           mean: Sequence[float] | None = None, projection: Any = None,
           component: int = 0) -> CV:
    """(f − mean) · w on a feature vector f of CVs (periodic ones as cos, sin): weights
    given, or component ``component`` of a PCA/TICA ``projection``
    (``biojax.analysis.decomposition.Projection`` or an .npz with ``mean`` and
    ``components`` arrays)."""
    cvs, feats = _features(system, features, "cv linear")
    width = feature_width(cvs)
    if projection is not None:
        if isinstance(projection, str):
            try:
                data = np.load(projection)
                mean_, comps = data["mean"], data["components"]
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"cv linear: cannot read projection {projection!r} (an .npz "
                                  f"with mean and components): {exc}") from None
        else:
            mean_, comps = projection.mean, projection.components
        comps = np.asarray(comps)
        if not 0 <= component < comps.shape[1]:
            raise ConfigError(f"cv linear: component {component} out of range for a "
                              f"projection with {comps.shape[1]} components")
        w, mean = comps[:, component], mean_
    elif weights is None:
        raise ConfigError("cv linear: give weights (one per feature) or a projection")
    else:
        w = weights
    w = np.asarray(w, np.float64).reshape(-1)
    m = np.zeros(width) if mean is None else np.asarray(mean, np.float64).reshape(-1)
    if w.shape != (width,) or m.shape != (width,):
        raise ConfigError(f"cv linear: the {len(cvs)} feature CVs give {width} features "
                          f"(periodic ones as cos, sin); weights has {w.size} and mean "
                          f"{m.size} entries")
    wj, mj = jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32)
    return CV("linear", lambda R, **kw: jnp.dot(feats(R, **kw) - mj, wj))


@collective_variables.register("learned")
def learned(system: System, features: Sequence[dict], function: str | Callable | None = None,
            module: str | None = None, params: str | None = None,
            module_options: dict | None = None) -> CV:
    """A learned CV: any JAX function of the feature vector f (CVs, periodic ones as
    cos, sin). Either ``function`` (import path or callable ``f(features) -> scalar``), or
    a Flax ``module`` (import path of a ``flax.linen.Module`` class, built with
    ``module_options``) with its ``params`` (a msgpack file from
    ``flax.serialization.to_bytes``), applied as ``module.apply(params, f)`` (an
    array of one element is taken as the scalar)."""
    cvs, feats = _features(system, features, "cv learned")
    if (function is None) == (module is None):
        raise ConfigError("cv learned: give exactly one of function (import path of "
                          "f(features) -> scalar) or module (a Flax module) with params")
    if function is not None:
        f = import_object(function, "cv learned function") if isinstance(function, str) \
            else function
        if not callable(f):
            raise ConfigError(f"cv learned: function {function!r} is not callable")
    else:
        import flax.serialization

        mod = import_object(module, "cv learned module")(**(module_options or {}))
        if params is None:
            raise ConfigError("cv learned: a module needs its params (msgpack file)")
        x0 = jnp.zeros((feature_width(cvs),), jnp.float32)
        template = mod.init(jax.random.PRNGKey(0), x0)
        try:
            with open(params, "rb") as fh:
                p = flax.serialization.from_bytes(template, fh.read())
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cv learned: cannot read params {params!r}: {exc}") from None
        f = lambda x: mod.apply(p, x)  # noqa: E731

    def fn(R, **kw):
        y = jnp.asarray(f(feats(R, **kw)))
        return y.reshape(()) if y.size == 1 else y

    probe = jax.eval_shape(lambda R: fn(R), jax.ShapeDtypeStruct((system.n_atoms, 3),
                                                                jnp.float32))
    if probe.shape != ():
        raise ConfigError(f"cv learned: the function must return a scalar, got shape "
                          f"{probe.shape}")
    return CV("learned", fn)


# ---------------------------------------------------------------------- from config
def cv_from_table(table: dict | CV, system: System, what: str = "cv") -> CV:
    """A CV from a table ``{name, options...}`` (or a CV, returned as is)."""
    if isinstance(table, CV):
        return table
    if not isinstance(table, dict):
        raise ConfigError(f"{what}: expected a table {{name = ..., ...}}, got {table!r}")
    options = dict(table)
    name = options.pop("name", None)
    options.pop("label", None)
    if name is None:
        raise ConfigError(f"{what}: a CV table needs a name (registered: "
                          f"{', '.join(collective_variables_names())})")
    factory = resolve(collective_variables, name)
    try:
        cv = factory(system, **options)
    except TypeError as exc:
        raise ConfigError(f"{what} {name!r}: {exc}") from None
    if not isinstance(cv, CV):
        if callable(cv):
            cv = CV(str(name), cv)
        else:
            raise ConfigError(f"{what} {name!r}: the factory returned {type(cv).__name__}, "
                              "not a CV or function")
    return cv


def collective_variables_names() -> list[str]:
    """The registered CV names."""
    from biojax.core.registry import load

    return load(collective_variables).names()


def cvs_from_tables(tables: Sequence[dict], system: System, what: str = "cv") -> list[CV]:
    """CVs of a list of tables (``cv = [...]`` of a bias)."""
    if isinstance(tables, dict):
        tables = [tables]
    return [cv_from_table(t, system, f"{what}[{n}]") for n, t in enumerate(tables)]


def system_of(atoms) -> System:
    """A System for CV evaluation on ASE Atoms (free space, or the Atoms' periodic box
    when fully periodic and orthorhombic)."""
    if not np.all(atoms.pbc):
        return System(atoms.get_atomic_numbers(), atoms.get_masses(), lambda a, b, **kw: a - b,
                      False)
    from biojax.md.system import make_space

    space = make_space(atoms, False)
    return System(atoms.get_atomic_numbers(), atoms.get_masses(), space.displacement_fn,
                  space.periodic)


def evaluate_cvs(tables: Sequence[dict | CV], frames, system: System | None = None
                 ) -> np.ndarray:
    """The CVs of ``tables`` on a trajectory: (T, n_cv) float64 array. ``frames``: a list
    of ASE Atoms, or positions (T, N, 3) in Å with ``system`` given (default: built from
    the first Atoms, see :func:`system_of`). The same tables as a ``[[bias]]``'s ``cv``."""
    if not isinstance(frames, np.ndarray) and len(frames) and hasattr(frames[0], "positions"):
        if system is None:
            system = system_of(frames[0])
        frames = np.stack([a.positions for a in frames])
    if system is None:
        raise ConfigError("evaluate_cvs: positions given without a system")
    cvs = cvs_from_tables(tables, system)
    fn = jax.jit(jax.vmap(lambda R: jnp.stack([c.fn(R) for c in cvs])))
    x = np.asarray(frames, np.float32)
    if x.ndim != 3 or x.shape[1:] != (system.n_atoms, 3):
        raise ConfigError(f"evaluate_cvs: positions must be (T, {system.n_atoms}, 3), got "
                          f"{x.shape}")
    return np.asarray(fn(jnp.asarray(x)), np.float64)
