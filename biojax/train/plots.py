"""Plots written after training (matplotlib's Agg canvas; nothing is shown, no global
backend is switched): ``training_curves.png`` and ``force_parity.png``. Files are written
atomically."""

from __future__ import annotations

import numpy as np

from biojax.core.atomic import atomic_path

#: at most this many force components are drawn in a parity plot (an even subsample;
#: the MAE in the title is over all of them)
MAX_PARITY_POINTS = 20000


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def training_curves(records: list[dict], path: str) -> str:
    """Training and validation loss, validation energy MAE (meV) and force MAE (meV/Å)
    against epoch (log y) from the ``metrics.jsonl`` records."""
    fig = _figure(12, 3.6)
    axes = fig.subplots(1, 3)
    epochs = np.array([r["epoch"] for r in records])

    def series(key):
        return np.array([r.get(key, np.nan) for r in records], float)

    ax = axes[0]
    ax.plot(epochs, series("train_loss"), "o-", ms=2, label="training")
    ax.plot(epochs, series("valid_loss"), "o-", ms=2, label="validation")
    ax.set_ylabel("loss (weighted sum of mean squared errors)")
    ax.set_title("loss")
    ax.legend()
    for ax, key, unit, title in ((axes[1], "valid_energy_mae", "meV", "validation energy MAE"),
                                 (axes[2], "valid_forces_mae", "meV/Å", "validation force MAE")):
        ax.plot(epochs, series(key), "o-", ms=2, color="C1")
        ax.set_ylabel(f"MAE ({unit})")
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("epoch")
        y = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.get_lines()])
        if np.any(np.isfinite(y) & (y > 0)):  # log y needs a positive value to show
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def force_parity(reference: np.ndarray, predicted: np.ndarray, mae_mev: float, what: str,
                 path: str) -> str:
    """Predicted against reference force components (eV/Å) with the y = x line; the MAE
    (meV/Å, over all components) in the title."""
    reference, predicted = np.asarray(reference), np.asarray(predicted)
    if reference.size > MAX_PARITY_POINTS:
        pick = np.linspace(0, reference.size - 1, MAX_PARITY_POINTS).astype(int)
        reference, predicted = reference[pick], predicted[pick]
    fig = _figure(5, 5)
    ax = fig.subplots()
    lo = float(min(reference.min(), predicted.min()))
    hi = float(max(reference.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.scatter(reference, predicted, s=4, alpha=0.5, lw=0, color="C0")
    ax.set_xlabel("reference force component (eV/Å)")
    ax.set_ylabel("predicted force component (eV/Å)")
    ax.set_title(f"forces, {what}\nMAE {mae_mev:.2f} meV/Å")
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _save(fig, path)
