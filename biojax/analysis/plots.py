"""PNG plots for analysis results (matplotlib, Agg backend; nothing is shown)."""

from __future__ import annotations


import numpy as np

from biojax.analysis.fes import FES
from biojax.core.atomic import atomic_path
from biojax.core.units import KJ_PER_MOL


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


def plot_fes(fes: FES, path: str, centers=None, labels=None, unit: str = "",
             fmax_kjmol: float | None = None) -> str:
    """Free-energy surface (kJ/mol) as a filled contour (2-D) or a curve with error band
    (1-D), with optional state centres (m, dims) marked and numbered."""
    plt = _plt()
    f = fes.free_energy / KJ_PER_MOL
    err = fes.error / KJ_PER_MOL
    names = list(fes.names) or [f"x{i}" for i in range(len(fes.edges))]
    fig, ax = plt.subplots(figsize=(6, 5))
    if len(fes.edges) == 2:
        cx, cy = fes.centers
        finite = f[np.isfinite(f)]
        vmax = fmax_kjmol or float(np.percentile(finite, 98)) if finite.size else 1.0
        fm = np.where(np.isfinite(f), np.minimum(f, vmax), np.nan)
        cs = ax.contourf(cx, cy, fm.T, levels=np.linspace(0, vmax, 25), cmap="viridis")
        fig.colorbar(cs, ax=ax, label="F (kJ/mol)")
        ax.set_xlabel(f"{names[0]} {unit}".strip())
        ax.set_ylabel(f"{names[1]} {unit}".strip())
        if centers is not None:
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
        ax.plot(cx, f, color="C0")
        ax.fill_between(cx, f - err, f + err, color="C0", alpha=0.3, label="± 1 s.e.")
        ax.set_xlabel(f"{names[0]} {unit}".strip())
        ax.set_ylabel("F (kJ/mol)")
        if centers is not None:
            for c in np.asarray(centers)[:, 0]:
                ax.axvline(c, color="red", ls="--", lw=1)
        ax.legend()
    ax.set_title(f"Free-energy surface, T = {fes.temperature:g} K")
    return _save(fig, path)


def plot_projection(y, labels, path: str, names=("component 1", "component 2"),
                    max_points: int = 20000, seed: int = 0) -> str:
    """Scatter of the first two projected coordinates coloured by state."""
    plt = _plt()
    y = np.asarray(y)
    labels = np.asarray(labels)
    if y.shape[0] > max_points:
        idx = np.random.default_rng(seed).choice(y.shape[0], max_points, replace=False)
        y, labels = y[idx], labels[idx]
    fig, ax = plt.subplots(figsize=(6, 5))
    yy = y[:, 1] if y.shape[1] > 1 else np.zeros(len(y))
    sc = ax.scatter(y[:, 0], yy, c=labels, s=3, cmap="tab10", alpha=0.6)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1] if y.shape[1] > 1 else "")
    ax.legend(*sc.legend_elements(), title="state", loc="best", fontsize=8)
    ax.set_title("Projection coloured by state")
    return _save(fig, path)


def plot_populations(pops, errors, path: str, names=None, stationary=None) -> str:
    """Bar chart of state populations with error bars (and MSM π if given)."""
    plt = _plt()
    n = len(pops)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * n + 2), 4))
    w = 0.4 if stationary is not None else 0.7
    ax.bar(x - (w / 2 if stationary is not None else 0), pops, w, yerr=errors, capsize=4,
           label="frames (block bootstrap)")
    if stationary is not None:
        ax.bar(x + w / 2, stationary, w, label="MSM stationary")
    ax.set_xticks(x)
    ax.set_xticklabels(names if names is not None else [str(i) for i in x], rotation=30)
    ax.set_ylabel("population")
    ax.legend()
    ax.set_title("State populations")
    return _save(fig, path)


def plot_timescales(lags, timescales, path: str, unit: str = "frames") -> str:
    """Implied timescales vs lag time (log scale), with the t = lag line."""
    plt = _plt()
    lags = np.asarray(lags, float)
    ts = np.asarray(timescales, float)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in range(ts.shape[1]):
        ax.plot(lags, ts[:, i], "o-", label=f"process {i + 1}")
    finite = ts[np.isfinite(ts) & (ts > 0)]
    lo = 0.5 * min(finite.min() if finite.size else lags.min(), lags.min())
    hi = 2.0 * max(finite.max() if finite.size else lags.max(), lags.max())
    ax.fill_between(lags, lags, lo, color="gray", alpha=0.3, label="t < lag")
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"lag time ({unit})")
    ax.set_ylabel(f"implied timescale ({unit})")
    ax.legend()
    ax.set_title("Implied timescales")
    return _save(fig, path)
