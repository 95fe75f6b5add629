"""Calibration of an ensemble's force uncertainty on held-out data (pure numpy).

The ensemble (``biojax.nn.ensemble``) predicts, per atom, a force spread σ_i (eV/Å: the
RMS over x, y, z of the members' standard deviation). Read as a Gaussian error model, each
force-component error e_ic = F_pred − F_ref follows N(0, (s σ_i)²) with one scale factor
s for the model:

- :func:`fit_scale`: the maximum-likelihood s, s² = mean over components of (e / σ)².
- :func:`calibration_curve`: for central intervals of probability p the observed
  fraction of errors inside ± z_p s σ (a calibrated model gives the diagonal), and
  :func:`miscalibration_area`, the area between the curve and the diagonal (0 is perfect,
  0.5 the worst), as in the uncertainty-toolbox of Chung et al. (2021).
- :func:`spearman`: rank correlation between a per-structure uncertainty and the actual
  per-structure force error (does the model know which structures it gets wrong?).
- :func:`nll`: the mean Gaussian negative log-likelihood per component.
"""

from __future__ import annotations

import math

import numpy as np

from biojax.core.errors import AnalysisError


def _pairs(sigma, errors):
    sigma = np.asarray(sigma, np.float64)
    errors = np.asarray(errors, np.float64)
    if errors.shape[:sigma.ndim] != sigma.shape:
        raise AnalysisError(f"calibration: errors of shape {errors.shape} do not match the "
                            f"uncertainties of shape {sigma.shape}")
    if errors.ndim > sigma.ndim:  # per-atom σ with per-component errors (N, 3)
        sigma = np.broadcast_to(sigma.reshape(sigma.shape + (1,) * (errors.ndim - sigma.ndim)),
                                errors.shape)
    sigma, errors = sigma.reshape(-1), errors.reshape(-1)
    if sigma.size == 0:
        raise AnalysisError("calibration: no data")
    if not (np.all(np.isfinite(sigma)) and np.all(np.isfinite(errors))):
        raise AnalysisError("calibration: non-finite uncertainties or errors")
    if np.any(sigma <= 0):
        raise AnalysisError(f"calibration: {int(np.sum(sigma <= 0))} uncertainties are <= 0 "
                            "(an ensemble of identical members has no spread to calibrate)")
    return sigma, errors


def fit_scale(sigma, errors) -> float:
    """Maximum-likelihood scale s (unitless) so that errors ~ N(0, (s σ)²):
    s = sqrt(mean (e / σ)²). ``sigma`` per atom (N,) with ``errors`` per component
    (N, 3), or both of one shape."""
    sigma, errors = _pairs(sigma, errors)
    return float(np.sqrt(np.mean((errors / sigma) ** 2)))


def _erfinv(y):
    """Inverse error function (float64), Newton steps on math.erf."""
    y = np.asarray(y, np.float64)
    # Giles' single-precision start, refined by Newton's method
    w = -np.log((1.0 - y) * (1.0 + y))
    x = np.where(w < 5.0, _giles_small(w - 2.5), _giles_large(np.sqrt(w) - 3.0)) * y
    erf = np.vectorize(math.erf)
    for _ in range(3):
        x = x - (erf(x) - y) / (2.0 / np.sqrt(np.pi) * np.exp(-x * x))
    return x


def _giles_small(w):
    p = 2.81022636e-08
    for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
              -0.00125372503, -0.00417768164, 0.246640727, 1.50140941):
        p = c + p * w
    return p


def _giles_large(w):
    p = -0.000200214257
    for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
              -0.0076224613, 0.00943887047, 1.00167406, 2.83297682):
        p = c + p * w
    return p


def calibration_curve(sigma, errors, scale: float = 1.0, n_bins: int = 99
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(expected, observed): for central-interval probabilities p = 1/(n+1) … n/(n+1),
    the fraction of |e| ≤ z_p · scale · σ with z_p = √2 erfinv(p)."""
    sigma, errors = _pairs(sigma, errors)
    expected = np.arange(1, n_bins + 1) / (n_bins + 1)
    z = np.sqrt(2.0) * _erfinv(expected)
    ratio = np.sort(np.abs(errors) / (scale * sigma))
    observed = np.searchsorted(ratio, z, side="right") / ratio.size
    return expected, observed


def miscalibration_area(sigma, errors, scale: float = 1.0, n_bins: int = 99) -> float:
    """Area between the calibration curve and the diagonal (trapezoid rule on [0, 1],
    the curve pinned to (0, 0) and (1, 1))."""
    expected, observed = calibration_curve(sigma, errors, scale, n_bins)
    x = np.concatenate([[0.0], expected, [1.0]])
    y = np.abs(np.concatenate([[0.0], observed, [1.0]]) - x)
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def nll(sigma, errors, scale: float = 1.0) -> float:
    """Mean Gaussian negative log-likelihood per component of errors ~ N(0, (scale σ)²)."""
    sigma, errors = _pairs(sigma, errors)
    s = scale * sigma
    return float(np.mean(0.5 * np.log(2 * np.pi * s * s) + 0.5 * (errors / s) ** 2))


def _ranks(x):
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size)
    sorted_x = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long sequences (ties: average ranks)."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.size != b.size or a.size < 3:
        raise AnalysisError(f"spearman: need two sequences of one length >= 3, got "
                            f"{a.size} and {b.size}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denom) if denom > 0 else float("nan")


def report(sigma_atoms, force_errors, graph_of_atom, scale: float | None = None) -> dict:
    """Calibration numbers of one data set: ``sigma_atoms`` (N,) eV/Å, ``force_errors``
    (N, 3) eV/Å, ``graph_of_atom`` (N,) structure index. ``scale``: apply this one
    (fitted elsewhere, e.g. on validation data) instead of fitting it here. Returns the
    scale, miscalibration areas before and after scaling, NLL, force MAE/RMSE (eV/Å), and
    Spearman correlations of the per-structure mean and max σ with the per-structure
    force RMSE."""
    sigma_atoms = np.asarray(sigma_atoms, np.float64)
    force_errors = np.asarray(force_errors, np.float64)
    g = np.asarray(graph_of_atom)
    fitted = fit_scale(sigma_atoms, force_errors)
    s = fitted if scale is None else float(scale)
    structures = np.unique(g)
    rmse = np.array([np.sqrt(np.mean(force_errors[g == k] ** 2)) for k in structures])
    s_mean = np.array([sigma_atoms[g == k].mean() for k in structures])
    s_max = np.array([sigma_atoms[g == k].max() for k in structures])
    return {"n_structures": int(structures.size), "n_atoms": int(sigma_atoms.size),
            "scale": s, "scale_fitted_here": fitted,
            "force_mae": float(np.mean(np.abs(force_errors))),
            "force_rmse": float(np.sqrt(np.mean(force_errors ** 2))),
            "mean_sigma_raw": float(sigma_atoms.mean()),
            "miscalibration_area_raw": miscalibration_area(sigma_atoms, force_errors, 1.0),
            "miscalibration_area": miscalibration_area(sigma_atoms, force_errors, s),
            "nll_raw": nll(sigma_atoms, force_errors, 1.0),
            "nll": nll(sigma_atoms, force_errors, s),
            "spearman_mean_sigma_vs_rmse": spearman(s_mean, rmse),
            "spearman_max_sigma_vs_rmse": spearman(s_max, rmse)}
