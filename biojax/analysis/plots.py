"""PNG plots for analysis results (matplotlib, Agg backend; nothing is shown).

Each plot has a ``*_figure`` function that returns the matplotlib Figure (for notebooks
and tests) and a ``plot_*`` function that saves it atomically and returns the path. Every
axis is labelled with its unit; free-energy colour bars have round ticks (kJ/mol,
kcal/mol or kT); dihedral axes span the full (−180°, 180°] with a tick every 90°.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from biojax.analysis.fes import FES
from biojax.core.atomic import atomic_path
from biojax.core.units import KB, KCAL_PER_MOL, KJ_PER_MOL

_GREEK = {"phi": "φ", "psi": "ψ", "omega": "ω", "chi1": "χ1", "chi2": "χ2", "chi3": "χ3",
          "chi4": "χ4", "theta": "θ"}
ENERGY_UNITS = ("kJ/mol", "kcal/mol", "kT")


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def pretty_name(name: str) -> str:
    """Axis text for a feature name: ``phi_ALA2`` → ``φ ALA2``, ``pc1`` → ``PC 1``."""
    head, _, rest = name.partition("_")
    if head in _GREEK:
        return f"{_GREEK[head]} {rest}".strip()
    for prefix in ("pc", "tic"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return f"{prefix.upper()} {name[len(prefix):]}"
    return name.replace("_", " ")


def axis_label(name: str, unit: str | None) -> str:
    """``name (unit)``; a dimensionless quantity says so, an unknown unit is left out."""
    if unit is None:
        return name
    return f"{name} ({unit or 'dimensionless'})"


def nice_step(span: float, max_ticks: int = 8) -> float:
    """The smallest round step (1, 2, 2.5 or 5 × 10^k) that covers ``span`` in at most
    ``max_ticks`` intervals."""
    if not span > 0 or not math.isfinite(span):
        return 1.0
    raw = span / max_ticks
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * mag >= raw - 1e-12 * mag:
            return m * mag
    return 10.0 * mag


def energy_scale(unit: str, temperature: float) -> float:
    """eV per ``unit`` (kJ/mol, kcal/mol or kT at ``temperature`` K)."""
    if unit == "kJ/mol":
        return KJ_PER_MOL
    if unit == "kcal/mol":
        return KCAL_PER_MOL
    if unit == "kT":
        return KB * temperature
    raise ValueError(f"energy unit must be one of {', '.join(ENERGY_UNITS)}, got {unit!r}")


def _angle_axis(ax, which: str, unit: str) -> None:
    """Full (−180°, 180°] (or (−π, π]) with a tick every 90° on the x or y axis."""
    if unit == "rad":
        ticks, labels, lim = (np.pi * np.array([-1, -0.5, 0, 0.5, 1]),
                              ["−π", "−π/2", "0", "π/2", "π"], np.pi)
    else:
        ticks, labels, lim = np.arange(-180, 181, 90), None, 180.0
    getattr(ax, f"set_{which}lim")(-lim, lim)
    getattr(ax, f"set_{which}ticks")(ticks, labels)


def _wrap(centres: np.ndarray, values: np.ndarray, axis: int) -> tuple:
    """Pad a periodic dimension with one wrapped bin on each side, so contours reach the
    edges of the full angle range."""
    w = centres[1] - centres[0]
    c = np.concatenate([[centres[0] - w], centres, [centres[-1] + w]])
    pad = [(0, 0)] * values.ndim
    pad[axis] = (1, 1)
    return c, np.pad(values, pad, mode="wrap")


def fes_figure(fes: FES, centers=None, labels=None, units: Sequence[str | None] | None = None,
               periodic: Sequence[bool] | None = None, energy_unit: str = "kJ/mol",
               fmax: float | None = None, unit: str = ""):
    """Free-energy surface as a filled contour (2-D) or a curve with its error band (1-D),
    optional state centres (m, dims) marked and numbered.

    ``units``: one unit per dimension ("°" or "rad" for angles, "Å", "" dimensionless,
    None unknown); ``periodic``: angle dimensions, drawn over the full (−180°, 180°];
    ``energy_unit``: kJ/mol, kcal/mol or kT; ``fmax``: top of the colour scale in that
    unit (default: the 98th percentile of F, rounded up to a tick). ``unit``: legacy
    suffix for both axes, used when ``units`` is not given."""
    plt = _plt()
    dims = len(fes.edges)
    scale = energy_scale(energy_unit, fes.temperature)
    f = fes.free_energy / scale
    err = fes.error / scale
    names = list(fes.names) or [f"x{i}" for i in range(dims)]
    periodic = list(periodic) if periodic is not None else [False] * dims
    if units is None:
        xlabels = [f"{pretty_name(n)} {unit}".strip() for n in names]
    else:
        xlabels = [axis_label(pretty_name(n), u) for n, u in zip(names, units)]
    angle = [periodic[d] and units is not None and units[d] in ("°", "rad")
             for d in range(dims)]
    kt = KB * fes.temperature / scale
    e_label = (f"F ({energy_unit})" if energy_unit == "kT" else
               f"F ({energy_unit}; kT = {kt:.2f} {energy_unit})")
    fig, ax = plt.subplots(figsize=(6, 5))
    if dims == 2:
        cx, cy = fes.centers
        finite = f[np.isfinite(f)]
        top = fmax or (float(np.percentile(finite, 98)) if finite.size else 1.0)
        step = nice_step(top, 7)
        vmax = step * math.ceil(top / step - 1e-9)
        fm = np.where(np.isfinite(f), np.minimum(f, vmax), np.nan)
        if angle[0]:
            cx, fm = _wrap(cx, fm, 0)
        if angle[1]:
            cy, fm = _wrap(cy, fm, 1)
        fine = step / 2 if vmax / (step / 2) <= 30 else step
        levels = np.arange(0.0, vmax + fine / 2, fine)
        cs = ax.contourf(cx, cy, fm.T, levels=levels, cmap="viridis")
        cbar = fig.colorbar(cs, ax=ax, label=e_label)
        cbar.set_ticks(np.arange(0.0, vmax + step / 2, step))
        cbar.ax.set_yticklabels([f"{t:g}" for t in np.arange(0.0, vmax + step / 2, step)])
        ax.set_xlabel(xlabels[0])
        ax.set_ylabel(xlabels[1])
        for d, which in enumerate("xy"):
            if angle[d]:
                _angle_axis(ax, which, units[d])
        if angle[0] and angle[1]:
            ax.set_aspect("equal")
        if centers is not None and len(centers):
            c = np.asarray(centers)
            ax.scatter(c[:, 0], c[:, 1], c="red", marker="x", s=80, linewidths=2)
            for i, (x, y) in enumerate(c):
                ax.annotate(str(labels[i] if labels is not None else i), (x, y),
                            color="red", fontsize=11, xytext=(5, 5),
                            textcoords="offset points", weight="bold",
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.7,
                                      lw=0))
    else:
        (cx,) = fes.centers
        if angle[0]:
            err = _wrap(cx, err, 0)[1]
            cx, f = _wrap(cx, f, 0)
        ax.plot(cx, f, color="C0", label="F")
        ax.fill_between(cx, f - err, f + err, color="C0", alpha=0.3,
                        label="± 1 s.e. (block bootstrap)")
        ax.set_xlabel(xlabels[0])
        ax.set_ylabel(e_label)
        if angle[0]:
            _angle_axis(ax, "x", units[0])
        finite = f[np.isfinite(f)]
        if finite.size:
            step = nice_step(float(finite.max()), 7)
            ax.set_ylim(0, step * math.ceil(float(finite.max()) / step - 1e-9) or step)
        if centers is not None and len(centers):
            for i, c in enumerate(np.asarray(centers)[:, 0]):
                ax.axvline(c, color="red", ls="--", lw=1,
                           label="state centres" if i == 0 else None)
        ax.legend()
    ax.set_title(f"Free-energy surface, T = {fes.temperature:g} K")
    return fig


def plot_fes(fes: FES, path: str, centers=None, labels=None, unit: str = "",
             fmax_kjmol: float | None = None, *, units=None, periodic=None,
             energy_unit: str = "kJ/mol") -> str:
    """Save :func:`fes_figure` to ``path`` (PNG); ``fmax_kjmol`` is the top of the colour
    scale in ``energy_unit``."""
    return _save(fes_figure(fes, centers, labels, units, periodic, energy_unit, fmax_kjmol,
                            unit), path)


def projection_figure(y, labels, names=("component 1", "component 2"), unit=None,
                      max_points: int = 20000, seed: int = 0):
    """Scatter of the first two projected coordinates coloured by state (one coordinate:
    against the frame index). ``unit``: of the coordinates (None: unknown)."""
    plt = _plt()
    y = np.asarray(y)
    labels = np.asarray(labels)
    frames = np.arange(len(y))
    if y.shape[0] > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(y.shape[0], max_points,
                                                         replace=False))
        y, labels, frames = y[idx], labels[idx], frames[idx]
    fig, ax = plt.subplots(figsize=(6, 5))
    n_states = int(labels.max()) + 1 if labels.size else 1
    cmap = "tab10" if n_states <= 10 else "tab20" if n_states <= 20 else "viridis"
    if y.shape[1] > 1:
        sc = ax.scatter(y[:, 0], y[:, 1], c=labels, s=3, cmap=cmap, alpha=0.6,
                        vmin=0, vmax=max(n_states - 1, 1))
        ax.set_ylabel(axis_label(names[1], unit))
    else:
        sc = ax.scatter(y[:, 0], frames, c=labels, s=3, cmap=cmap, alpha=0.6,
                        vmin=0, vmax=max(n_states - 1, 1))
        ax.set_ylabel("frame (trajectories concatenated)")
    ax.set_xlabel(axis_label(names[0], unit))
    handles, texts = sc.legend_elements(num=None)
    if handles:
        ax.legend(handles, texts, title="state", loc="best", fontsize=8)
    ax.set_title("Projection coloured by state")
    return fig


def plot_projection(y, labels, path: str, names=("component 1", "component 2"),
                    max_points: int = 20000, seed: int = 0, unit=None) -> str:
    """Save :func:`projection_figure` to ``path`` (PNG)."""
    return _save(projection_figure(y, labels, names, unit, max_points, seed), path)


def populations_figure(pops, errors, names=None, stationary=None):
    """Bar chart of state populations with error bars (and the MSM π if given)."""
    plt = _plt()
    n = len(pops)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * n + 2), 4))
    w = 0.4 if stationary is not None else 0.7
    ax.bar(x - (w / 2 if stationary is not None else 0), pops, w, yerr=errors, capsize=4,
           label="frames ± 1 s.e. (block bootstrap)")
    if stationary is not None:
        ax.bar(x + w / 2, stationary, w, label="MSM stationary distribution")
    ax.set_xticks(x)
    ax.set_xticklabels(names if names is not None else [str(i) for i in x],
                       rotation=30 if names is not None else 0)
    ax.set_xlabel("state")
    ax.set_ylabel("population (fraction of frames)")
    ax.set_ylim(0, None)
    ax.legend()
    ax.set_title("State populations")
    return fig


def plot_populations(pops, errors, path: str, names=None, stationary=None) -> str:
    """Save :func:`populations_figure` to ``path`` (PNG)."""
    return _save(populations_figure(pops, errors, names, stationary), path)


def timescales_figure(lags, timescales, unit: str = "frames"):
    """Implied timescales vs lag time (log scale), with the shaded t < lag region. Lags
    and timescales are in ``unit`` (frames, or a time unit such as ps or ns); processes
    with no finite timescale are left out (no empty legend entries)."""
    plt = _plt()
    lags = np.asarray(lags, float)
    ts = np.asarray(timescales, float).reshape(len(lags), -1)
    ts = np.where(np.isfinite(ts) & (ts > 0), ts, np.nan)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in range(ts.shape[1]):
        if np.isfinite(ts[:, i]).any():
            ax.plot(lags, ts[:, i], "o-", label=f"process {i + 1}")
    finite = ts[np.isfinite(ts)]
    lo = 0.5 * min(finite.min() if finite.size else lags.min(), lags.min())
    hi = 2.0 * max(finite.max() if finite.size else lags.max(), lags.max())
    xmax = lags.max() * 1.05
    xs = np.linspace(0.0, xmax, 200)
    ax.fill_between(xs, np.maximum(xs, lo), lo, color="gray", alpha=0.3,
                    label="timescale < lag time (unresolved)")
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xlim(0, xmax)
    ax.set_xlabel(f"lag time ({unit})")
    ax.set_ylabel(f"implied timescale ({unit})")
    ax.legend(fontsize=8)
    ax.set_title("Implied timescales of the Markov state model")
    return fig


def plot_timescales(lags, timescales, path: str, unit: str = "frames") -> str:
    """Save :func:`timescales_figure` to ``path`` (PNG)."""
    return _save(timescales_figure(lags, timescales, unit), path)
