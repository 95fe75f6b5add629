"""Biases on collective variables, as MD energy terms with state: harmonic restraints
(umbrella windows, one centre per replica), flat-bottom walls, well-tempered metadynamics
on a grid (one walker per replica or multiple walkers sharing one bias) and OPES
(standard and explore; one walker per replica or multiple walkers sharing one estimate).

Every bias is an :class:`~biojax.md.terms.EnergyTerm`: ``energy(R, state, **kw)`` (eV) is
added to the potential inside the jitted step, ``update`` advances its state after each
step (deposition), ``observe`` returns the per-frame columns (see
/work/notes/sampling_contract.md, mirrored in :data:`COLUMNS`) and ``sync`` acts on the
replica-stacked states between chunks (multiple walkers, umbrella centres). The state is
part of the run state and of ``checkpoint.npz``, so a killed run resumes exactly.

Conventions (PLUMED's, so users can compare): Gaussians are truncated where
½ Σ(Δs/σ)² ≥ 6.25 and shifted and stretched to reach 0 there (PLUMED METAD's default);
hills are deposited after steps pace, 2·pace, … (PLUMED skips its first step);
well-tempered heights h = h₀ exp(−V(s)/(k_B ΔT)), ΔT = (γ − 1) T; c(t) is the
Tiwary–Parrinello estimator on the grid. Energies in eV, CVs in their own units (Å, rad),
temperatures in K, σ in CV units.

Config: ``[[bias]]`` tables of a simulate config, e.g.::

    [[bias]]
    name = "metad"
    cv = [{name = "dihedral", atoms = [4, 6, 8, 14]}, {name = "dihedral", atoms = [6, 8, 14, 16]}]
    sigma = [0.35, 0.35]        # rad
    height = 0.012              # eV
    pace = 500                  # steps
    bias_factor = 8.0
    grid_min = [-3.14159265, -3.14159265]
    grid_max = [3.14159265, 3.14159265]
    grid_bins = [72, 72]

A user bias is a factory by import path ``"mymodule:my_bias"``, called as
``factory(system, context, **options)`` and returning an EnergyTerm.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import ConfigError, SimulationError
from biojax.core.registry import biases, resolve
from biojax.core.units import KB
from biojax.md.hooks import SimulationHook
from biojax.md.terms import EnergyTerm, System
from biojax.sampling.cv import CV, cvs_from_tables

#: PLUMED's Gaussian cutoff: ½ Σ (Δs/σ)² < DP2CUTOFF
DP2CUTOFF = 6.25

#: per-frame observable columns (L = the bias label); also summed over all biases:
#: ``bias_energy`` (eV) and ``bias_logw`` (β(V − c) for metad, βV otherwise)
COLUMNS = {
    "restraint": ("L.cv[k]", "L.energy", "L.center[k]"),
    "walls": ("L.cv[k]", "L.energy"),
    "metad": ("L.cv[k]", "L.energy", "L.c", "L.height", "L.outside"),
    "opes": ("L.cv[k]", "L.energy", "L.logZ", "L.n_kernels", "L.neff",
             "L.dropped (walkers = 'shared' only)"),
}


@dataclasses.dataclass(frozen=True)
class BiasContext:
    """What a bias factory may need to know about the run: temperature (K), number of
    replicas, time step (fs)."""

    temperature_K: float = 300.0
    replicas: int = 1
    timestep_fs: float = 1.0


def _context(context: Any) -> BiasContext:
    if isinstance(context, BiasContext):
        return context
    if context is None:
        return BiasContext()
    return BiasContext(**{k: v for k, v in dict(context).items()
                          if k in ("temperature_K", "replicas", "timestep_fs")})


def _vector(x, n: int, what: str, positive: bool = False) -> np.ndarray:
    """A length-n float vector from a scalar or a list (ConfigError otherwise)."""
    try:
        v = np.asarray(x, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected a number or a list of {n} numbers, got {x!r}") \
            from None
    if v.size == 1:
        v = np.repeat(v, n)
    if v.shape != (n,):
        raise ConfigError(f"{what}: expected {n} value(s) (one per CV), got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ConfigError(f"{what}: values must be finite, got {v.tolist()}")
    if positive and np.any(v <= 0):
        raise ConfigError(f"{what}: values must be > 0, got {v.tolist()}")
    return v


def _cv_values(cvs: Sequence[CV], R, kw) -> jax.Array:
    kw = {k: kw[k] for k in ("box", "perturbation") if k in kw}
    return jnp.stack([c.fn(R, **kw) for c in cvs])


def _periods(cvs: Sequence[CV]) -> list[tuple[float, float] | None]:
    return [c.period for c in cvs]


def _difference(a, b, periods) -> jax.Array:
    """a − b per CV (last axis), wrapped into (−L/2, L/2] for periodic CVs."""
    out = []
    for k, p in enumerate(periods):
        d = a[..., k] - b[..., k]
        if p is not None:
            L = p[1] - p[0]
            d = d - L * jnp.round(d / L)
        out.append(d)
    return jnp.stack(out, axis=-1)


def _beta(temperature_K: float) -> float:
    return 1.0 / (KB * temperature_K)


def _label(label, name: str) -> str:
    return str(name if label is None else label)


def _observe_common(label: str, s, energy, logw) -> dict:
    return {f"{label}.cv": s, f"{label}.energy": energy, "bias_energy": energy,
            "bias_logw": logw}


# ---------------------------------------------------------------------- restraints
@biases.register("restraint")
def restraint(system: System, context=None, cv=(), kappa=1.0, center=None,
              centers=None, temperature_K: float | None = None, label: str | None = None
              ) -> EnergyTerm:
    """Harmonic restraint Σ_k ½ κ_k (s_k − s0_k)² (κ in eV/unit², periodic CVs by the
    shortest arc). ``center`` (one value per CV) for every replica, or ``centers`` (one
    list per replica): umbrella windows as replicas, the centre kept in the term state."""
    ctx = _context(context)
    cvs = cvs_from_tables(cv, system, "bias restraint: cv")
    d = len(cvs)
    if d == 0:
        raise ConfigError("bias restraint: cv must list at least one CV")
    k = jnp.asarray(_vector(kappa, d, "bias restraint: kappa"), jnp.float32)
    if np.any(np.asarray(k) < 0):
        raise ConfigError(f"bias restraint: kappa must be >= 0, got {np.asarray(k).tolist()}")
    if (center is None) == (centers is None):
        raise ConfigError("bias restraint: give center (one value per CV) or centers (one "
                          "list per replica)")
    if centers is not None:
        c = np.asarray([_vector(x, d, f"bias restraint: centers[{i}]")
                        for i, x in enumerate(centers)])
        if len(c) != ctx.replicas:
            raise ConfigError(f"bias restraint: centers lists {len(c)} centre(s), one per "
                              f"replica is needed ({ctx.replicas} replicas)")
    else:
        c = np.repeat(_vector(center, d, "bias restraint: center")[None], ctx.replicas, 0)
    all_centers = jnp.asarray(c, jnp.float32)
    periods, lab = _periods(cvs), _label(label, "restraint")
    beta = _beta(temperature_K or ctx.temperature_K)

    def value(s, state):
        dd = _difference(s, state["center"], periods)
        return 0.5 * jnp.sum(k * dd * dd)

    def energy(R, state, **kw):
        return value(_cv_values(cvs, R, kw), state)

    def init(R):
        return {"center": all_centers[0]}

    def sync(states):
        n = states["center"].shape[0]
        return {"center": all_centers[:n]}

    def observe(R, state, **kw):
        s = _cv_values(cvs, R, kw)
        e = value(s, state)
        out = _observe_common(lab, s, e, beta * e)
        out[f"{lab}.center"] = state["center"]
        return out

    return EnergyTerm(energy, init, None, observe, sync)


@biases.register("walls")
def walls(system: System, context=None, cv=(), lower=None, upper=None, kappa=1.0,
          exponent: int = 2, temperature_K: float | None = None, label: str | None = None
          ) -> EnergyTerm:
    """Flat-bottom walls: Σ_k κ_k (s_k − upper_k)^e for s_k > upper_k and
    κ_k (lower_k − s_k)^e for s_k < lower_k (eV; e = ``exponent`` ≥ 2; a CV without a
    bound on one side: None in the list, or no ``lower``/``upper`` at all)."""
    ctx = _context(context)
    cvs = cvs_from_tables(cv, system, "bias walls: cv")
    d = len(cvs)
    if d == 0:
        raise ConfigError("bias walls: cv must list at least one CV")
    if lower is None and upper is None:
        raise ConfigError("bias walls: give lower and/or upper bounds")
    if exponent < 2:
        raise ConfigError(f"bias walls: exponent must be >= 2, got {exponent}")

    def bounds(x, what):
        if x is None:
            return np.full(d, np.nan)
        x = [np.nan if v is None else v for v in (x if isinstance(x, (list, tuple)) else [x])]
        if len(x) == 1:
            x = x * d
        if len(x) != d:
            raise ConfigError(f"bias walls: {what} needs {d} value(s), got {len(x)}")
        return np.asarray(x, np.float64)

    lo, hi = bounds(lower, "lower"), bounds(upper, "upper")
    if np.any(lo >= hi):
        raise ConfigError(f"bias walls: need lower < upper, got {lo.tolist()} and "
                          f"{hi.tolist()}")
    k = jnp.asarray(_vector(kappa, d, "bias walls: kappa", positive=True), jnp.float32)
    has_lo, has_hi = jnp.asarray(~np.isnan(lo)), jnp.asarray(~np.isnan(hi))
    lo_, hi_ = jnp.asarray(np.nan_to_num(lo), jnp.float32), jnp.asarray(np.nan_to_num(hi),
                                                                       jnp.float32)
    lab, beta = _label(label, "walls"), _beta(temperature_K or ctx.temperature_K)

    def value(s):
        over = jnp.where(has_hi, jnp.maximum(s - hi_, 0.0), 0.0)
        under = jnp.where(has_lo, jnp.maximum(lo_ - s, 0.0), 0.0)
        return jnp.sum(k * (over ** exponent + under ** exponent))

    def observe(R, state, **kw):
        s = _cv_values(cvs, R, kw)
        e = value(s)
        return _observe_common(lab, s, e, beta * e)

    term = EnergyTerm(lambda R, state, **kw: value(_cv_values(cvs, R, kw)), None, None,
                      observe)
    return term


# ---------------------------------------------------------------------- kernels
def _gauss_stretched(dp2):
    """PLUMED's truncated Gaussian: (e^{−dp2} − e^{−c}) / (1 − e^{−c}) for dp2 < c, else 0
    (c = DP2CUTOFF), and its derivative in dp2."""
    ec = math.exp(-DP2CUTOFF)
    inside = dp2 < DP2CUTOFF
    e = jnp.exp(-jnp.minimum(dp2, DP2CUTOFF))
    return (jnp.where(inside, (e - ec) / (1.0 - ec), 0.0),
            jnp.where(inside, -e / (1.0 - ec), 0.0))


# ---------------------------------------------------------------------- grid
@dataclasses.dataclass(frozen=True)
class Grid:
    """A regular grid over d = 1 or 2 CVs. Periodic CVs: ``bins`` nodes from ``lo``
    spaced (hi − lo)/bins (hi ≡ lo); others: bins + 1 nodes from lo to hi (PLUMED's)."""

    lo: np.ndarray
    hi: np.ndarray
    bins: np.ndarray
    periodic: tuple[bool, ...]

    @property
    def spacing(self) -> np.ndarray:
        return (self.hi - self.lo) / self.bins

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(b) if p else int(b) + 1 for b, p in zip(self.bins, self.periodic))

    def axes(self) -> list[np.ndarray]:
        return [self.lo[k] + self.spacing[k] * np.arange(n) for k, n in enumerate(self.shape)]


def _hermite(t):
    """Cubic Hermite basis on [0, 1]: value weights (h00, h01) and slope weights (h10, h11)."""
    t2, t3 = t * t, t * t * t
    return (2 * t3 - 3 * t2 + 1, -2 * t3 + 3 * t2, t3 - 2 * t2 + t, t3 - t2)


def grid_value(grid: Grid, tables: dict, s) -> tuple[jax.Array, jax.Array]:
    """Cubic Hermite interpolation (tensor product, with the stored first derivatives and,
    in 2-D, the cross derivative) of the grid tables at s (d,). Returns (value, outside):
    outside a non-periodic range the CV is clamped to the edge (constant bias, no force)
    and ``outside`` is True."""
    d = len(grid.shape)
    h = grid.spacing
    idx, frac, outside = [], [], jnp.asarray(False)
    for k in range(d):
        u = (s[k] - grid.lo[k]) / grid.spacing[k]
        n = grid.shape[k]
        if grid.periodic[k]:
            u = jnp.mod(u, float(n))
            i = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, n - 1)
            t = u - i
            i1 = jnp.mod(i + 1, n)
        else:
            outside = outside | (u < 0) | (u > n - 1)
            u = jnp.clip(u, 0.0, float(n - 1))
            i = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, n - 2)
            t = u - i
            i1 = i + 1
        idx.append((i, i1))
        frac.append(t)
    V, dV = tables["V"], tables["dV"]
    if d == 1:
        (i0, i1), t = idx[0], frac[0]
        b = _hermite(t)
        val = b[0] * V[i0] + b[1] * V[i1] + h[0] * (b[2] * dV[i0, 0] + b[3] * dV[i1, 0])
        return val, outside
    (i0, i1), (j0, j1) = idx
    bx, by = _hermite(frac[0]), _hermite(frac[1])
    hx, hy = h[0], h[1]
    dxy = tables["dxy"]
    # bicubic Hermite: Σ over the 4 corners of value, x-slope, y-slope and cross terms
    val = 0.0
    for ia, (wx, sx) in ((i0, (bx[0], bx[2])), (i1, (bx[1], bx[3]))):
        for jb, (wy, sy) in ((j0, (by[0], by[2])), (j1, (by[1], by[3]))):
            val = val + (wx * wy * V[ia, jb] + sx * wy * hx * dV[ia, jb, 0]
                         + wx * sy * hy * dV[ia, jb, 1] + sx * sy * hx * hy * dxy[ia, jb])
    return val, outside


def _deposit(grid: Grid, tables: dict, center, sigma, height) -> dict:
    """Add a (PLUMED-truncated) Gaussian of ``height`` (eV) at ``center`` to the grid
    tables, only on the nodes within the cutoff window (values and analytic slopes)."""
    d = len(grid.shape)
    ix, dd, ok = [], [], []
    for k in range(d):
        n, sp = grid.shape[k], grid.spacing[k]
        half = int(math.ceil(math.sqrt(2 * DP2CUTOFF) * sigma[k] / sp)) + 1
        w = min(2 * half + 1, n)
        base = jnp.floor((center[k] - grid.lo[k]) / sp).astype(jnp.int32) - (w // 2)
        i = base + jnp.arange(w)
        node = grid.lo[k] + i * sp
        diff = node - center[k]
        if grid.periodic[k]:
            L = grid.hi[k] - grid.lo[k]
            diff = diff - L * jnp.round(diff / L)
            i = jnp.mod(i, n)
            valid = jnp.ones(w, bool)
        else:
            valid = (i >= 0) & (i < n)
            i = jnp.clip(i, 0, n - 1)
        ix.append(i)
        dd.append(diff / sigma[k])
        ok.append(valid)
    if d == 1:
        u = dd[0]
        g, dg = _gauss_stretched(0.5 * u * u)
        g, dg = g * ok[0], dg * ok[0]
        V = tables["V"].at[ix[0]].add(height * g)
        dV = tables["dV"].at[ix[0], 0].add(height * dg * u / sigma[0])
        return {**tables, "V": V, "dV": dV}
    ux, uy = dd[0][:, None], dd[1][None, :]
    g, dg = _gauss_stretched(0.5 * (ux * ux + uy * uy))
    m = ok[0][:, None] & ok[1][None, :]
    g, dg = g * m, dg * m
    # d/ds_x of g(½Σu²) = g'(dp2) u_x/σ_x; cross: d²/ds_x ds_y = g''·u_x u_y/(σ_xσ_y),
    # g'' = −g' inside (e^{−dp2} part)
    I, J = ix[0][:, None], ix[1][None, :]
    V = tables["V"].at[I, J].add(height * g)
    dV = tables["dV"].at[I, J, 0].add(height * dg * ux / sigma[0])
    dV = dV.at[I, J, 1].add(height * dg * uy / sigma[1])
    dxy = tables["dxy"].at[I, J].add(-height * dg * ux * uy / (sigma[0] * sigma[1]))
    return {**tables, "V": V, "dV": dV, "dxy": dxy}


def rct(V, beta: float, bias_factor: float) -> jax.Array:
    """c(t) (eV) of a well-tempered bias on a grid (Tiwary & Parrinello 2015):
    β⁻¹ log(Σ exp(γβV/(γ−1)) / Σ exp(βV/(γ−1))) over the grid nodes."""
    a = beta / (bias_factor - 1.0)
    V = V.reshape(-1)
    return (jax.scipy.special.logsumexp(bias_factor * a * V)
            - jax.scipy.special.logsumexp(a * V)) / beta


@biases.register("metad")
def metad(system: System, context=None, cv=(), sigma=None, height: float = 0.0,
          pace: int = 500, bias_factor: float | None = None, grid_min=None, grid_max=None,
          grid_bins=None, walkers: str = "independent", wall_lower=None, wall_upper=None,
          wall_kappa=1.0, temperature_K: float | None = None, label: str | None = None,
          outside: str = "error") -> EnergyTerm:
    """Well-tempered metadynamics on 1 or 2 CVs with the bias on a grid.

    Args:
      cv: the CV tables (1 or 2). sigma: Gaussian widths (CV units). height: h₀ (eV).
      pace: deposit every ``pace`` steps. bias_factor: γ > 1 (None: plain metadynamics).
      grid_min, grid_max, grid_bins: the grid (explicit; periodic CVs must use their
        period, e.g. −π, π for dihedrals).
      walkers: "independent" (each replica its own bias) or "shared" (multiple walkers:
        the hills of all replicas summed into one bias after every chunk, as PLUMED's
        walkers reading each other's hills every chunk_steps).
      wall_lower, wall_upper, wall_kappa: quadratic walls (eV/unit²) keeping a
        non-periodic CV on the grid; required for non-periodic CVs and must lie inside
        the grid.
      outside: what happens when a walker still leaves the grid of a non-periodic CV.
        Inside the jitted step, always: no hill is deposited there, the bias is that of
        the grid edge (no bias force), and ``L.outside`` counts the steps spent outside.
        ``"error"`` (default): after the chunk in which any replica's count grew, the
        run stops with a SimulationError naming the bias, the CV, the replica, the step
        and the grid bounds (widen grid_min/grid_max or move the walls inside); the
        checkpoint of the chunk before and the files up to it are kept (a grid of
        another shape does not fit that checkpoint: a wider grid means a fresh run).
        ``"clamp"``: keep running with the clamped bias and only count (``L.outside``).
      temperature_K: β for the well-tempering and c(t) (default: the run's).
    """
    ctx = _context(context)
    cvs = cvs_from_tables(cv, system, "bias metad: cv")
    d = len(cvs)
    if d not in (1, 2):
        raise ConfigError(f"bias metad: 1 or 2 CVs are supported on a grid, got {d}")
    if sigma is None:
        raise ConfigError("bias metad: give sigma (Gaussian width per CV, CV units)")
    sig = _vector(sigma, d, "bias metad: sigma", positive=True)
    if not height > 0:
        raise ConfigError(f"bias metad: height must be > 0 eV, got {height}")
    if not (isinstance(pace, int) and pace >= 1):
        raise ConfigError(f"bias metad: pace must be an integer >= 1 step, got {pace!r}")
    if bias_factor is not None and not bias_factor > 1:
        raise ConfigError(f"bias metad: bias_factor must be > 1, got {bias_factor}")
    if walkers not in ("independent", "shared"):
        raise ConfigError(f"bias metad: walkers must be 'independent' or 'shared', got "
                          f"{walkers!r}")
    if outside not in ("error", "clamp"):
        raise ConfigError(f"bias metad: outside must be 'error' or 'clamp', got {outside!r}")
    if grid_min is None or grid_max is None or grid_bins is None:
        raise ConfigError("bias metad: give the grid explicitly: grid_min, grid_max and "
                          "grid_bins (one per CV)")
    lo = _vector(grid_min, d, "bias metad: grid_min")
    hi = _vector(grid_max, d, "bias metad: grid_max")
    nb = _vector(grid_bins, d, "bias metad: grid_bins", positive=True)
    if np.any(nb != np.round(nb)) or np.any(nb < 2):
        raise ConfigError(f"bias metad: grid_bins must be integers >= 2, got {nb.tolist()}")
    if np.any(hi <= lo):
        raise ConfigError(f"bias metad: need grid_min < grid_max, got {lo.tolist()} and "
                          f"{hi.tolist()}")
    periodic = []
    wl = [None] * d if wall_lower is None else list(np.atleast_1d(np.asarray(wall_lower,
                                                                              object)))
    wu = [None] * d if wall_upper is None else list(np.atleast_1d(np.asarray(wall_upper,
                                                                              object)))
    if len(wl) != d or len(wu) != d:
        raise ConfigError(f"bias metad: wall_lower and wall_upper need {d} value(s) (None "
                          "for a periodic CV)")
    for k, c in enumerate(cvs):
        where = f"bias metad: CV {k} ({c.name})"
        if c.period is not None:
            if not (np.isclose(lo[k], c.period[0], atol=1e-5)
                    and np.isclose(hi[k], c.period[1], atol=1e-5)):
                raise ConfigError(f"{where} is periodic on [{c.period[0]:.6g}, "
                                  f"{c.period[1]:.6g}]; the grid must span that period, "
                                  f"got [{lo[k]:g}, {hi[k]:g}]")
            if wl[k] is not None or wu[k] is not None:
                raise ConfigError(f"{where} is periodic: it needs no walls")
            periodic.append(True)
            continue
        periodic.append(False)
        if wl[k] is None or wu[k] is None:
            raise ConfigError(f"{where} is not periodic: give wall_lower and wall_upper "
                              f"inside the grid [{lo[k]:g}, {hi[k]:g}] so the walker stays "
                              "on it")
        if not (lo[k] <= float(wl[k]) < float(wu[k]) <= hi[k]):
            raise ConfigError(f"{where}: the grid [{lo[k]:g}, {hi[k]:g}] does not cover the "
                              f"walls [{float(wl[k]):g}, {float(wu[k]):g}]; widen "
                              "grid_min/grid_max or move the walls inside")
        if 3.54 * sig[k] > hi[k] - lo[k]:
            raise ConfigError(f"{where}: sigma {sig[k]:g} is too wide for the grid")
    grid = Grid(lo, hi, nb.astype(np.int64), tuple(periodic))
    if np.any(sig < grid.spacing / 2):
        raise ConfigError(f"bias metad: sigma {sig.tolist()} is smaller than half the grid "
                          f"spacing {grid.spacing.tolist()}; use more grid_bins")
    T = temperature_K or ctx.temperature_K
    beta = _beta(T)
    gamma = bias_factor
    lab = _label(label, "metad")
    wall_term = None
    if not all(periodic):
        wall_term = walls(system, ctx, cv=list(cvs),
                          lower=[None if p else float(x) for p, x in zip(periodic, wl)],
                          upper=[None if p else float(x) for p, x in zip(periodic, wu)],
                          kappa=wall_kappa, temperature_K=T, label=f"{lab}.walls")

    def zeros():
        t = {"V": jnp.zeros(grid.shape),
             "dV": jnp.zeros(grid.shape + (d,))}
        if d == 2:
            t["dxy"] = jnp.zeros(grid.shape)
        return t

    def bias_at(state, s):
        return grid_value(grid, state["grid"], s)

    def energy(R, state, **kw):
        s = _cv_values(cvs, R, kw)
        e = bias_at(state, s)[0]
        if wall_term is not None:
            e = e + wall_term.energy(R, None, **kw)
        return e

    def init(R):
        t = zeros()
        return {"grid": t, "base": t, "count": jnp.int32(0), "height": jnp.zeros(()),
                "outside": jnp.int32(0)}

    def update(state, R, **kw):
        s = _cv_values(cvs, R, kw)
        v, out = bias_at(state, s)
        count = state["count"] + 1
        h = height if gamma is None else height * jnp.exp(-beta * v / (gamma - 1.0))
        deposit = (count % pace == 0) & jnp.logical_not(out)
        grid_new = _deposit(grid, state["grid"], s, sig, jnp.where(deposit, h, 0.0))
        return {"grid": grid_new, "base": state["base"], "count": count,
                "height": jnp.where(deposit, h, state["height"]),
                "outside": state["outside"] + out.astype(jnp.int32)}

    def c_of(state):
        if gamma is None:
            return jnp.float32(0.0)
        return rct(state["grid"]["V"], beta, gamma)

    def observe(R, state, **kw):
        s = _cv_values(cvs, R, kw)
        v = bias_at(state, s)[0]
        c = c_of(state)
        e = v
        out = {}
        if wall_term is not None:
            ew = wall_term.energy(R, None, **kw)
            e = e + ew
            out[f"{lab}.walls.energy"] = ew
        out.update(_observe_common(lab, s, e, beta * (e - c)))
        out.update({f"{lab}.c": c, f"{lab}.height": state["height"],
                    f"{lab}.outside": state["outside"]})
        return out

    def sync(states):
        """Multiple walkers: base + Σ_r (grid_r − base) for every replica."""
        if walkers != "shared":
            return states
        merged = jax.tree_util.tree_map(
            lambda g, b: jnp.broadcast_to(b[0] + jnp.sum(g - b, axis=0), g.shape),
            states["grid"], states["base"])
        return {**states, "grid": merged, "base": merged}

    hook = None
    if outside == "error" and not all(periodic):
        hook = GridExitCheck(lab, [c.name for c in cvs], lo, hi, periodic, wl, wu,
                             wall_kappa)
    return EnergyTerm(energy, init, update, observe, sync, hook)


class GridExitCheck(SimulationHook):
    """Simulation hook of a metad bias with ``outside = "error"``: after each chunk,
    before its output is written, a SimulationError if any replica's ``L.outside``
    count grew (the walker left the grid of a non-periodic CV). The last count per
    replica is kept in the checkpoint."""

    def __init__(self, label, names, lo, hi, periodic, wall_lower, wall_upper, wall_kappa):
        self.label, self.names = label, list(names)
        self.lo, self.hi, self.periodic = np.asarray(lo), np.asarray(hi), list(periodic)
        self.walls = (wall_lower, wall_upper, wall_kappa)
        self.seen: list[int] | None = None

    def start(self, sim, run):
        self.seen = None
        return run

    def state_dict(self) -> dict:
        return {"metad_outside": self.seen}

    def load_state_dict(self, d: dict) -> None:
        self.seen = d.get("metad_outside")

    def stops(self, sim, run, obs: dict, frames, n_frames: int, out: str | None) -> dict:
        """Raise when a replica's outside count grew in this chunk (``run.step`` is the
        chunk's first step); otherwise remember the counts and stop nothing."""
        lab = self.label
        counts = np.asarray(obs[f"{lab}.outside"]).reshape(
            np.shape(obs[f"{lab}.outside"])[0], -1)          # (R, records)
        base = np.zeros(len(counts), np.int64) if self.seen is None else np.asarray(
            self.seen)
        grew = counts > base[:, None]
        if grew.any():
            r = int(np.flatnonzero(grew.any(1))[0])
            j = int(np.flatnonzero(grew[r])[0])
            K = sim.cfg.observe_every
            step = run.step + (j + 1) * K
            s = np.asarray(obs[f"{lab}.cv"]).reshape(len(counts), counts.shape[1], -1)[r, j]
            off = [k for k in range(len(self.names)) if not self.periodic[k]
                   and not self.lo[k] <= s[k] <= self.hi[k]]
            ks = off or [k for k in range(len(self.names)) if not self.periodic[k]]
            wl, wu, wk = self.walls
            where = "; ".join(
                f"CV {k} ({self.names[k]}) = {s[k]:.4g}, grid [{self.lo[k]:g}, "
                f"{self.hi[k]:g}], walls [{float(wl[k]):g}, {float(wu[k]):g}]" for k in ks)
            kept = "" if out is None else (f" The checkpoint at step {run.step} and the "
                                           f"files up to it in {out} are kept.")
            raise SimulationError(
                f"bias metad '{lab}': replica {r} left the grid by step {step} (t = "
                f"{step * sim.cfg.timestep_fs:g} fs; {int(counts[r, j] - base[r])} steps "
                f"outside): {where}. Outside the grid the bias is clamped to the edge "
                f"value with no force, which is no longer metadynamics. Widen grid_min/"
                f"grid_max, or move wall_lower/wall_upper further inside the grid or raise "
                f"wall_kappa (now {wk}); outside = \"clamp\" keeps running clamped."
                f"{kept}")
        self.seen = [int(c) for c in counts[:, -1]]
        return {}


# ---------------------------------------------------------------------- OPES
@biases.register("opes")
def opes(system: System, context=None, cv=(), sigma=None, barrier: float | None = None,
         pace: int = 500, bias_factor: float | None = None, variant: str = "standard",
         compression_threshold: float = 1.0, max_kernels: int = 2000,
         fixed_sigma: bool = False, epsilon: float | None = None,
         walkers: str = "independent", temperature_K: float | None = None,
         label: str | None = None) -> EnergyTerm:
    """OPES (on-the-fly probability enhanced sampling; Invernizzi & Parrinello, J. Phys.
    Chem. Lett. 11, 2731 (2020); explore: Invernizzi, Piaggi & Parrinello, PRX 12,
    041034 (2022)), on any number of CVs.

    The bias is V(s) = p β⁻¹ log(P(s)/Z + ε) with P a kernel density estimate built
    every ``pace`` steps: "standard" estimates the unbiased P(s) from kernels weighted by
    exp(βV) (p = 1 − 1/γ); "explore" estimates the well-tempered P(s)^{1/γ} from
    unweighted kernels (p = γ − 1). ε = exp(−βΔE/p) caps the bias near ``barrier`` ΔE
    (eV); γ defaults to βΔE. Kernels: Gaussians of width σ (CV units; explore: √γ σ, the
    well-tempered distribution being broader) shrinking as σ₀ (N_eff (d + 2)/4)^{−1/(d+4)}
    (Silverman; N_eff = (1 + Σw)²/(1 + Σw²), explore n + 1) unless ``fixed_sigma``,
    height w Π σ₀/σ, truncated where ½|Δs/σ|² reaches βΔE/(1 − 1/γ) (explore: βΔE),
    shifted to 0 there. A new kernel closer than ``compression_threshold`` (in σ of
    the old one) to an existing one is merged into it, recursively. Z is the mean of
    P over the kernel centres (kept incrementally). These are PLUMED's OPES_METAD and
    OPES_METAD_EXPLORE conventions: tests/test_sampling_bias.py checks the bias along a
    CV series against PLUMED's. At most ``max_kernels`` kernels: when full, new ones
    merge into the nearest (``L.n_kernels`` shows it). Before the first kernel V = −ΔE
    (a constant). In float32 βΔE must stay below ~35 (the sums of exp(βV)).

    ``walkers = "shared"``: multiple walkers (one per replica) build one bias, as
    PLUMED's OPES with WALKERS_MPI but merged once per chunk (as metad's shared walkers):
    between merges each walker deposits into its own copy and logs its new kernels
    (centre, σ, height); after every chunk the shared estimate is the one at the last
    merge plus every walker's logged kernels, added in replica order with the same
    compression, and Σw, Σw², n are summed; all replicas then carry it. The log holds
    ``max_kernels`` kernels per walker per chunk (``L.dropped`` counts any beyond).

    Thermostat: each deposition raises the bias under the walker, i.e. does work on the
    system (with barrier 0.4 eV, pace 50 fs, ~0.9 eV/ps on alanine dipeptide); a weak
    thermostat (Langevin 1/ps) cannot remove it and the replicas run hot (400+ K at
    300 K), which biases the reweighted free energy. Use a strong thermostat (Langevin
    friction ~10/ps) and/or a slower pace; ``examples/enhanced_sampling_ala2`` measures it.
    """
    ctx = _context(context)
    cvs = cvs_from_tables(cv, system, "bias opes: cv")
    d = len(cvs)
    if d == 0:
        raise ConfigError("bias opes: cv must list at least one CV")
    if variant not in ("standard", "explore"):
        raise ConfigError(f"bias opes: variant must be 'standard' or 'explore', got "
                          f"{variant!r}")
    if sigma is None:
        raise ConfigError("bias opes: give sigma (initial kernel width per CV, CV units)")
    sig0 = _vector(sigma, d, "bias opes: sigma", positive=True)
    if barrier is None or not barrier > 0:
        raise ConfigError(f"bias opes: barrier (ΔE, eV) must be given and > 0, got "
                          f"{barrier}")
    if not (isinstance(pace, int) and pace >= 1):
        raise ConfigError(f"bias opes: pace must be an integer >= 1 step, got {pace!r}")
    if not (isinstance(max_kernels, int) and max_kernels >= 2):
        raise ConfigError(f"bias opes: max_kernels must be an integer >= 2, got "
                          f"{max_kernels!r}")
    if walkers not in ("independent", "shared"):
        raise ConfigError(f"bias opes: walkers must be 'independent' or 'shared', got "
                          f"{walkers!r}")
    shared = walkers == "shared"
    T = temperature_K or ctx.temperature_K
    beta = _beta(T)
    gamma = beta * barrier if bias_factor is None else float(bias_factor)
    if not gamma > 1:
        raise ConfigError(f"bias opes: bias_factor must be > 1, got {gamma} (default "
                          f"βΔE = {beta * barrier:.3g})")
    if not explore_ok(variant) and beta * barrier > 35.0 and \
            jnp.zeros(()).dtype == jnp.float32:
        raise ConfigError(f"bias opes: barrier {barrier} eV is {beta * barrier:.0f} kT; the "
                          "float32 sums of the weights exp(βV) would overflow above ~35 kT: "
                          "run in float64 (biojax --x64) or lower the barrier")
    explore = variant == "explore"
    pref = (gamma - 1.0) if explore else (1.0 - 1.0 / gamma)
    eps = math.exp(-beta * barrier / pref) if epsilon is None else float(epsilon)
    # kernels truncated where their tail is below the ε floor (PLUMED's kernel_cutoff)
    cut2 = 2.0 * beta * barrier / (1.0 if explore else pref)
    val_cut = math.exp(-0.5 * cut2)
    periods, lab = _periods(cvs), _label(label, "opes")
    K = max_kernels
    # explore samples the well-tempered distribution, √γ broader than the unbiased one
    s0 = jnp.asarray(sig0 * (math.sqrt(gamma) if explore else 1.0))
    thr2 = float(compression_threshold) ** 2

    def kern(x, c, sg, h):
        """Σ_k h_k (exp(−½|Δ/σ_k|²) − val_cut)₊ at x (…, d) for kernels (K, d)."""
        u = _difference(x[..., None, :], c, periods) / sg
        q = jnp.sum(u * u, axis=-1)
        g = jnp.where(q < cut2, jnp.exp(-0.5 * jnp.minimum(q, cut2)) - val_cut, 0.0)
        return jnp.sum(h * g, axis=-1)

    def norm(state):
        return state["n_dep"].astype(jnp.float32) if explore else state["sum_w"]

    def bias_value(state, s):
        prob = kern(s, state["centers"], state["sigmas"], state["heights"]) / \
            jnp.maximum(norm(state), 1e-30)
        zed = jnp.maximum(state["zed"], 1e-30)
        return pref / beta * jnp.log(prob / zed + eps)     # −ΔE before any kernel

    def energy(R, state, **kw):
        return bias_value(state, _cv_values(cvs, R, kw))

    KERNEL_KEYS = ("centers", "sigmas", "heights", "uprob", "n")
    SUM_KEYS = ("n_dep", "sum_w", "sum_w2")

    def init(R):
        state = {"centers": jnp.zeros((K, d)),
                 "sigmas": jnp.ones((K, d)),
                 "heights": jnp.zeros((K,)),
                 "uprob": jnp.zeros((K,)),  # Σ_j h_j G_j(c_k) per kernel k
                 "n": jnp.int32(0), "n_dep": jnp.int32(0), "count": jnp.int32(0),
                 "sum_w": jnp.zeros(()), "sum_w2": jnp.zeros(()),
                 "zed": jnp.ones(())}
        if shared:   # the estimate at the last merge, and this walker's kernels since
            state["base"] = {k: state[k] for k in KERNEL_KEYS + SUM_KEYS}
            state["log"] = {"centers": jnp.zeros((K, d)), "sigmas": jnp.ones((K, d)),
                            "heights": jnp.zeros((K,)), "n": jnp.int32(0)}
            state["dropped"] = jnp.int32(0)
        return state

    def zed_of(kt, n_dep, sum_w):
        return jnp.sum(kt["uprob"]) / jnp.maximum(kt["n"], 1).astype(jnp.float32) / (
            n_dep.astype(jnp.float32) if explore else sum_w)

    def deposit(state, s):
        v = bias_value(state, s)
        w = jnp.float32(1.0) if explore else jnp.exp(beta * v)
        n_dep = state["n_dep"] + 1
        sum_w, sum_w2 = state["sum_w"] + w, state["sum_w2"] + w * w
        # N_eff with one prior sample, as PLUMED: n + 1 (explore), (1 + Σw)²/(1 + Σw²)
        neff = (n_dep + 1).astype(jnp.float32) if explore else (1 + sum_w) ** 2 / (1 + sum_w2)
        if fixed_sigma:
            sg = s0
        else:
            sg = s0 * (neff * (d + 2) / 4.0) ** (-1.0 / (d + 4))
        h = w * jnp.prod(s0 / sg)
        kt = {k: state[k] for k in KERNEL_KEYS}
        kt = add_kernel(kt, s, sg, h)
        out = {**state, **kt, "n_dep": n_dep, "sum_w": sum_w, "sum_w2": sum_w2,
               "zed": zed_of(kt, n_dep, sum_w)}
        if shared:
            log, j = state["log"], state["log"]["n"]
            full = j >= K
            j = jnp.minimum(j, K - 1)
            keep = lambda new, old: jnp.where(full, old, new)   # noqa: E731
            out["log"] = {"centers": keep(log["centers"].at[j].set(s), log["centers"]),
                          "sigmas": keep(log["sigmas"].at[j].set(sg), log["sigmas"]),
                          "heights": keep(log["heights"].at[j].set(h), log["heights"]),
                          "n": log["n"] + jnp.where(full, 0, 1)}
            out["dropped"] = state["dropped"] + full.astype(jnp.int32)
        return out

    def remove(kt, j):
        """Drop kernel j: its share of every Σ_j h_j G_j(c_k), then the last kernel
        moves into its slot."""
        C, S, H, up, n = kt["centers"], kt["sigmas"], kt["heights"], kt["uprob"], kt["n"]
        active = jnp.arange(K) < n
        up = jnp.where(active, up - kern(C, C[j][None], S[j][None], H[j][None]), 0.0)
        last = n - 1
        C, S = C.at[j].set(C[last]), S.at[j].set(S[last])
        H, up = H.at[j].set(H[last]), up.at[j].set(up[last])
        H, up = H.at[last].set(0.0), up.at[last].set(0.0)
        return {"centers": C, "sigmas": S, "heights": H, "uprob": up, "n": last}

    def append(kt, c, sg, h):
        C, S, H, up, n = kt["centers"], kt["sigmas"], kt["heights"], kt["uprob"], kt["n"]
        C, S, H = C.at[n].set(c), S.at[n].set(sg), H.at[n].set(h)
        active = jnp.arange(K) < n + 1
        up = jnp.where(active, up + kern(C, c[None], sg[None], h[None]), 0.0)
        up = up.at[n].set(kern(c, C, S, H * active))
        return {"centers": C, "sigmas": S, "heights": H, "uprob": up, "n": n + 1}

    def add_kernel(kt, c, sg, h):
        """Add a kernel, merging it with the nearest one while closer than the
        compression threshold (in that kernel's σ), recursively (the merged kernel is
        tested again), as PLUMED's OPES does; into the nearest one anyway when full."""
        def nearest(kt, c):
            active = jnp.arange(K) < kt["n"]
            u = _difference(c[None, :], kt["centers"], periods) / kt["sigmas"]
            dist2 = jnp.where(active, jnp.sum(u * u, -1), jnp.inf)
            m = jnp.argmin(dist2)
            return m, (kt["n"] > 0) & ((dist2[m] < thr2) | (kt["n"] >= K))

        def cond(carry):
            return carry[4]

        def body(carry):
            kt, c, sg, h, _ = carry
            m = nearest(kt, c)[0]
            Hm, Cm, Sm = kt["heights"][m], kt["centers"][m], kt["sigmas"][m]
            hm = Hm + h                                  # heights add; centre, variance
            dm = _difference(c, Cm, periods)             # by moments (c − c_m, short arc)
            cm = Cm + h / hm * dm
            if any(p is not None for p in periods):
                cm = _difference(cm, jnp.asarray([p[0] if p else 0.0 for p in periods]),
                                 periods) + jnp.asarray([p[0] if p else 0.0 for p in periods])
            var = (Hm * Sm ** 2 + h * sg ** 2) / hm + Hm * h / hm ** 2 * dm ** 2
            kt = remove(kt, m)
            return kt, cm, jnp.sqrt(var), hm, nearest(kt, cm)[1]

        kt, c, sg, h, _ = jax.lax.while_loop(cond, body, (kt, c, sg, h, nearest(kt, c)[1]))
        return append(kt, c, sg, h)

    def update(state, R, **kw):
        count = state["count"] + 1
        state = {**state, "count": count}
        s = _cv_values(cvs, R, kw)
        new = deposit(state, s)
        do = count % pace == 0
        return jax.tree_util.tree_map(lambda a, b: jnp.where(do, a, b), new, state)

    def observe(R, state, **kw):
        s = _cv_values(cvs, R, kw)
        v = bias_value(state, s)
        out = _observe_common(lab, s, v, beta * v)
        neff = ((state["n_dep"] + 1).astype(jnp.float32) if explore else
                (1 + state["sum_w"]) ** 2 / (1 + state["sum_w2"]))
        out.update({f"{lab}.logZ": jnp.log(state["zed"]), f"{lab}.n_kernels": state["n"],
                    f"{lab}.neff": neff})
        if shared:
            out[f"{lab}.dropped"] = state["dropped"]
        return out

    def sync(states):
        """Multiple walkers: the estimate at the last merge plus every replica's logged
        kernels (replica order), sums added; broadcast to all replicas."""
        if not shared:
            return states
        R = states["count"].shape[0]
        base = jax.tree_util.tree_map(lambda x: x[0], states["base"])
        log = states["log"]
        flat_c = log["centers"].reshape(R * K, d)
        flat_s = log["sigmas"].reshape(R * K, d)
        flat_h = log["heights"].reshape(R * K)
        valid = (jnp.arange(K)[None, :] < log["n"][:, None]).reshape(-1)
        order = jnp.argsort(jnp.logical_not(valid), stable=True)   # valid first, in order
        n_new = jnp.sum(valid)

        def body(carry):
            i, kt = carry
            k = order[i]
            return i + 1, add_kernel(kt, flat_c[k], flat_s[k], flat_h[k])

        kt = {k: base[k] for k in KERNEL_KEYS}
        _, kt = jax.lax.while_loop(lambda c: c[0] < n_new, body, (jnp.int32(0), kt))
        sums = {k: base[k] + jnp.sum(states[k] - states["base"][k], axis=0)
                for k in SUM_KEYS}
        merged = {**kt, **sums, "zed": jnp.where(kt["n"] > 0,
                                                 zed_of(kt, sums["n_dep"], sums["sum_w"]),
                                                 base_zed(states))}
        merged["base"] = {k: merged[k] for k in KERNEL_KEYS + SUM_KEYS}
        merged["log"] = {"centers": jnp.zeros((K, d)), "sigmas": jnp.ones((K, d)),
                         "heights": jnp.zeros((K,)), "n": jnp.int32(0)}
        out = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (R,) + jnp.shape(x)),
                                     merged)
        return {**out, "count": states["count"], "dropped": states["dropped"]}

    def base_zed(states):
        return states["zed"][0]

    return EnergyTerm(energy, init, update, observe, sync)


def explore_ok(variant: str) -> bool:
    """OPES explore uses unit weights (no exp(βV) sums that could overflow)."""
    return variant == "explore"


# ---------------------------------------------------------------------- from config
def biases_from_config(tables: Sequence[dict], system: System, context=None
                       ) -> list[EnergyTerm]:
    """Bias terms from ``[[bias]]`` tables ``{name, label?, options...}`` (labels unique;
    default label: the name, numbered when repeated)."""
    ctx = _context(context)
    out, labels = [], set()
    for n, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ConfigError(f"[[bias]] entry {n}: expected a table, got {table!r}")
        options = dict(table)
        name = options.pop("name", None)
        if name is None:
            raise ConfigError(f"[[bias]] entry {n}: needs a name (registered: "
                              f"{', '.join(resolve_names())})")
        label = options.pop("label", None) or name
        if label in labels:
            label = f"{label}{n}"
        labels.add(label)
        factory = resolve(biases, name)
        try:
            term = factory(system, ctx, label=label, **options)
        except TypeError as exc:
            raise ConfigError(f"[[bias]] {name!r}: {exc}") from None
        if not isinstance(term, EnergyTerm):
            raise ConfigError(f"[[bias]] {name!r}: the factory returned "
                              f"{type(term).__name__}, not an EnergyTerm")
        out.append(term)
    return out


def resolve_names() -> list[str]:
    """The registered bias names."""
    from biojax.core.registry import load

    return load(biases).names()
