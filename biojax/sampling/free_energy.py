"""Free energies from sampled states: MBAR, WHAM, reweighting, surfaces with errors.

Everything here is plain numpy in float64 (no JAX: these are small host-side
computations whose precision matters more than their speed). Energies handed in are
*reduced* energies u = E / kT (dimensionless) unless a name says eV; ``kT`` is in eV
(``biojax.core.units.KB`` × K).

- :func:`mbar` — the multistate Bennett acceptance ratio estimator (Shirts & Chodera,
  J. Chem. Phys. 129, 124105 (2008)) for K thermodynamic states from reduced energies
  ``u_kn`` of all N pooled samples in every state. Solved by Newton–Raphson on the
  convex MBAR objective, with a self-consistent-iteration fallback whenever it gives
  the smaller gradient (the adaptive scheme pymbar uses), all in log-sum-exp form.
  Uncertainties: the asymptotic covariance of the estimator (the SVD form of Kong et
  al. / Shirts–Chodera eq. D8 that pymbar calls ``svd-ew``). Written by us; checked
  against pymbar in tests/test_sampling_free_energy.py (pymbar run in a subprocess).
- :func:`wham` — the weighted histogram analysis method (Kumar et al. 1992) for biased
  windows on binned collective-variable data; equals MBAR on the same binned samples.
- :func:`umbrella_u_kn`, :func:`temperature_u_kn` — reduced energies for harmonic
  umbrella windows and for temperature ladders.
- :func:`normalized_weights`, :func:`effective_sample_size` — per-frame weights of a
  biased run from per-frame log weights (the ``bias_logw`` observable column of
  ``biojax.sampling``: log w = β V_bias(s, t) − β c(t) for metadynamics, β V for OPES
  and static biases).
- :func:`weighted_fes` — F(s) on one or two CVs from (weighted) frames with
  block-analysis errors or a block bootstrap; :func:`fes_convergence` — the distance of
  F(t) (the first t of the run) to the final surface vs simulated time.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from biojax.core.errors import AnalysisError
from biojax.core.units import KB


# ---------------------------------------------------------------------------- helpers
def logsumexp(a: np.ndarray, axis=None, b: np.ndarray | None = None) -> np.ndarray:
    """log Σ b·exp(a) along ``axis``, stable for large |a| (−inf entries allowed)."""
    a = np.asarray(a, np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(a - m)
    if b is not None:
        e = e * b
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(e, axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def kT_eV(temperature_K: float) -> float:
    """k_B T in eV for a temperature in K."""
    if not temperature_K > 0:
        raise AnalysisError(f"temperature must be > 0 K, got {temperature_K}")
    return float(KB * temperature_K)


# ---------------------------------------------------------------------------- MBAR
@dataclasses.dataclass(frozen=True)
class MBARResult:
    """MBAR solution. ``f_k``: dimensionless free energies (f_0 = 0) of the K states;
    ``df_k``: their standard errors relative to state 0; ``log_w_nk``: log of the
    (N, K) weight matrix W_nk (each column sums to 1: the weight of pooled sample n in
    state k); ``theta``: the asymptotic covariance matrix of f; ``iterations`` and the
    final gradient norm ``gradient``."""

    f_k: np.ndarray
    df_k: np.ndarray
    theta: np.ndarray
    log_w_nk: np.ndarray
    N_k: np.ndarray
    iterations: int
    gradient: float

    def df_ij(self) -> np.ndarray:
        """(K, K) standard errors of f_j − f_i."""
        d = np.diag(self.theta)
        var = d[:, None] + d[None, :] - 2.0 * self.theta
        return np.sqrt(np.maximum(var, 0.0))

    def expectation(self, a_n, state: int = 0) -> float:
        """⟨A⟩ in ``state`` from the values ``a_n`` of every pooled sample."""
        w = np.exp(self.log_w_nk[:, state])
        return float(np.sum(w * np.asarray(a_n, np.float64)))


def _log_denominator(u_kn, f_k, log_N):
    """log Σ_k N_k exp(f_k − u_kn) per sample (N,)."""
    return logsumexp(log_N[:, None] + f_k[:, None] - u_kn, axis=0)


def mbar(u_kn, N_k, f_init=None, tol: float = 1e-10, max_iter: int = 10000,
         compute_uncertainty: bool = True) -> MBARResult:
    """Solve MBAR for reduced energies ``u_kn`` (K, N): u_k(x_n) of every pooled sample
    x_n (samples ordered by the state they were drawn from, ``N_k`` of state k; states
    with N_k = 0 are target states, evaluated but not sampled). Returns f_k with
    f_0 = 0 (dimensionless; × kT for eV at one temperature) and their asymptotic
    standard errors. ``tol``: converged when the largest |gradient| / N < tol."""
    u = np.asarray(u_kn, np.float64)
    N_k = np.asarray(N_k, np.float64)
    if u.ndim != 2 or N_k.ndim != 1 or u.shape[0] != N_k.shape[0]:
        raise AnalysisError(f"mbar: u_kn must be (K, N) and N_k (K,), got {u.shape} and "
                            f"{N_k.shape}")
    K, N = u.shape
    if int(round(N_k.sum())) != N or np.any(N_k < 0):
        raise AnalysisError(f"mbar: N_k (sum {N_k.sum():g}) must be non-negative counts "
                            f"summing to the {N} samples of u_kn")
    if not np.all(np.isfinite(u)):
        bad = np.argwhere(~np.isfinite(u))[0]
        raise AnalysisError(f"mbar: u_kn[{bad[0]}, {bad[1]}] is not finite")
    sampled = np.flatnonzero(N_k > 0)
    if sampled.size == 0:
        raise AnalysisError("mbar: no state has samples")
    with np.errstate(divide="ignore"):
        log_N = np.log(N_k)
    us, lNs = u[sampled], log_N[sampled]
    Ns = N_k[sampled]
    S = sampled.size
    if f_init is None:
        # start from the mean reduced energy (a fine start for states of similar entropy)
        f = np.zeros(S)
        f = -logsumexp(-us - _log_denominator(us, f, lNs)[None], axis=1)
    else:
        f = np.asarray(f_init, np.float64)[sampled].copy()
    f -= f[0]

    def grad_hess(f):
        log_d = _log_denominator(us, f, lNs)
        log_w = f[:, None] - us - log_d[None]          # (S, N): log W_nk
        w = np.exp(log_w)
        g = Ns * w.sum(1) - Ns                           # ∂/∂f of the objective
        H = -(Ns[:, None] * w) @ (Ns[:, None] * w).T
        H[np.diag_indices(S)] += Ns * w.sum(1)
        return g, H, log_d

    it, gnorm = 0, np.inf
    for it in range(1, max_iter + 1):
        g, H, log_d = grad_hess(f)
        gnorm = float(np.max(np.abs(g)) / N)
        if gnorm < tol:
            break
        # self-consistent update
        f_sc = -logsumexp(-us - log_d[None], axis=1)
        f_sc -= f_sc[0]
        # Newton step on states 1..S-1 (f_0 = 0 fixed)
        f_nr = f.copy()
        if S > 1:
            try:
                f_nr[1:] -= np.linalg.solve(H[1:, 1:], g[1:])
            except np.linalg.LinAlgError:
                f_nr = f_sc
        g_sc = grad_hess(f_sc)[0]
        g_nr = grad_hess(f_nr)[0] if np.all(np.isfinite(f_nr)) else np.full(S, np.inf)
        f = f_nr if np.max(np.abs(g_nr)) < np.max(np.abs(g_sc)) else f_sc
    else:
        raise AnalysisError(f"mbar: not converged after {max_iter} iterations (largest "
                            f"relative gradient {gnorm:.3g} > tol {tol:g})")
    # every state (sampled or not) from the converged denominator
    log_d = _log_denominator(us, f, lNs)
    f_all = -logsumexp(-u - log_d[None], axis=1)
    f_all -= f_all[0]
    log_w = (f_all[:, None] - u - log_d[None]).T          # (N, K)
    theta = np.full((K, K), np.nan)
    if compute_uncertainty:
        theta = _asymptotic_covariance(np.exp(log_w), N_k)
    d = np.diag(theta)
    df = np.sqrt(np.maximum(d + d[0] - 2.0 * theta[0], 0.0))
    return MBARResult(f_all, df, theta, log_w, N_k, it, gnorm)


def _asymptotic_covariance(W: np.ndarray, N_k: np.ndarray) -> np.ndarray:
    """Θ = V Σ (I − Σ Vᵀ diag(N) V Σ)⁻¹ Σ Vᵀ for W = U Σ Vᵀ (Shirts & Chodera 2008,
    eq. D8 in its SVD form): the covariance of the dimensionless free energies."""
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    keep = s > s.max() * 1e-12
    s, Vt = s[keep], Vt[keep]
    V = Vt.T
    inner = np.eye(len(s)) - (s[:, None] * (V.T @ (N_k[:, None] * V))) * s[None, :]
    # the inner matrix is singular along the overall shift of f: pseudo-inverse
    inv = np.linalg.pinv(inner, rcond=1e-12)
    return V @ (s[:, None] * inv * s[None, :]) @ V.T


# ---------------------------------------------------------------------------- WHAM
@dataclasses.dataclass(frozen=True)
class WHAMResult:
    """WHAM solution: ``f_k`` window free energies (dimensionless, f_0 = 0),
    ``log_p`` the unbiased log probability of each bin (normalised; −inf for empty
    bins), ``iterations``."""

    f_k: np.ndarray
    log_p: np.ndarray
    iterations: int

    def free_energy(self, kT: float = 1.0) -> np.ndarray:
        """F per bin = −kT ln p, minimum 0 (eV for kT in eV; +inf where empty)."""
        F = -kT * self.log_p
        return F - np.min(F[np.isfinite(F)])


def wham(counts_ki, bias_ki, tol: float = 1e-12, max_iter: int = 100000) -> WHAMResult:
    """WHAM on histograms ``counts_ki`` (K windows, B bins) with the reduced bias energy
    ``bias_ki`` = β_k w_k(s_i) of window k at the centre of bin i (all windows at one
    temperature for a PMF). Iterates p_i = Σ_k n_ki / Σ_k N_k exp(f_k − b_ki),
    f_k = −ln Σ_i p_i exp(−b_ki) in log form until f changes by < tol."""
    n = np.asarray(counts_ki, np.float64)
    b = np.asarray(bias_ki, np.float64)
    if n.ndim != 2 or n.shape != b.shape:
        raise AnalysisError(f"wham: counts and bias must both be (K, bins), got {n.shape} "
                            f"and {b.shape}")
    N_k = n.sum(1)
    if np.any(N_k <= 0):
        raise AnalysisError(f"wham: window(s) {np.flatnonzero(N_k <= 0).tolist()} have no "
                            "counts inside the bins")
    with np.errstate(divide="ignore"):
        log_num = np.log(n.sum(0))
    log_N = np.log(N_k)
    f = np.zeros(n.shape[0])
    for it in range(1, max_iter + 1):
        log_p = log_num - logsumexp(log_N[:, None] + f[:, None] - b, axis=0)
        log_p -= logsumexp(log_p)
        f_new = -logsumexp(log_p[None] - b, axis=1)
        f_new -= f_new[0]
        delta = np.max(np.abs(f_new - f))
        f = f_new
        if delta < tol:
            break
    else:
        raise AnalysisError(f"wham: not converged after {max_iter} iterations")
    log_p = log_num - logsumexp(log_N[:, None] + f[:, None] - b, axis=0)
    log_p -= logsumexp(log_p)
    return WHAMResult(f, log_p, it)


# ---------------------------------------------------------------------------- states
def _wrap(d: np.ndarray, period: float | None) -> np.ndarray:
    return d if period is None else (d + 0.5 * period) % period - 0.5 * period


def umbrella_u_kn(samples: Sequence[np.ndarray], centers, k, kT: float,
                  period: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reduced energies of harmonic umbrella windows for MBAR: window k adds
    ½ κ_k (s − c_k)² (eV, s in the CV's unit, κ in eV/unit²; ``period`` for angles:
    2π) to one unbiased Hamiltonian at one temperature (kT, eV), so u_k(x_n) =
    ½ κ_k (s_n − c_k)² / kT. ``samples``: the CV values of each window's frames.
    Returns (u_kn (K+1, N) with the unbiased state last, N_k (K+1,))."""
    centers = np.asarray(centers, np.float64).reshape(-1)
    K = centers.size
    kappa = np.broadcast_to(np.asarray(k, np.float64), (K,))
    if len(samples) != K:
        raise AnalysisError(f"umbrella_u_kn: {len(samples)} sample sets for {K} centres")
    s = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in samples])
    N_k = np.array([np.size(x) for x in samples] + [0], np.float64)
    d = _wrap(s[None, :] - centers[:, None], period)
    u = 0.5 * kappa[:, None] * d * d / kT
    return np.vstack([u, np.zeros((1, s.size))]), N_k


def temperature_u_kn(energies: Sequence[np.ndarray], temperatures_K,
                     targets_K: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Reduced energies for a temperature ladder: the potential energies (eV) of the
    frames sampled at each temperature (including every bias energy, which must be the
    same Hamiltonian at every rung), u_k(x_n) = E_n / k_B T_k. ``targets_K``: extra
    unsampled temperatures appended as states (N_k = 0) to reweight to."""
    temps = list(np.asarray(temperatures_K, np.float64)) + list(targets_K)
    if len(energies) != len(temperatures_K):
        raise AnalysisError(f"temperature_u_kn: {len(energies)} energy sets for "
                            f"{len(temperatures_K)} temperatures")
    e = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in energies])
    beta = 1.0 / (KB * np.asarray(temps))
    N_k = np.array([np.size(x) for x in energies] + [0] * len(targets_K), np.float64)
    return beta[:, None] * e[None, :], N_k


# ---------------------------------------------------------------------------- weights
def normalized_weights(log_w) -> np.ndarray:
    """Per-frame weights w_n ∝ exp(log_w_n), summing to 1 (log-sum-exp stable)."""
    lw = np.asarray(log_w, np.float64).reshape(-1)
    if not np.all(np.isfinite(lw)):
        raise AnalysisError(f"log weights: {int(np.sum(~np.isfinite(lw)))} are not finite")
    return np.exp(lw - logsumexp(lw))


def effective_sample_size(log_w) -> float:
    """Kish's effective number of samples (Σw)²/Σw² of per-frame log weights."""
    w = normalized_weights(log_w)
    return float(1.0 / np.sum(w * w))


# ---------------------------------------------------------------------------- surfaces
@dataclasses.dataclass(frozen=True)
class WeightedFES:
    """F(s) on 1–2 CVs (eV, minimum 0, +inf where no weight) with standard errors
    (eV; NaN where the error could not be estimated), bin edges, the normalised
    probability per bin, the temperature (K), the error method and the effective sample
    size of the weights."""

    edges: tuple[np.ndarray, ...]
    probability: np.ndarray
    free_energy: np.ndarray
    error: np.ndarray
    temperature: float
    method: str
    n_eff: float

    @property
    def centers(self) -> tuple[np.ndarray, ...]:
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)


def _histogram(values, w, edges):
    h, _ = np.histogramdd(values, bins=edges, weights=w)
    return h


def _F(h, kT):
    p = h / h.sum() if h.sum() > 0 else h
    with np.errstate(divide="ignore"):
        F = -kT * np.log(p)
    finite = np.isfinite(F)
    return p, (F - F[finite].min() if finite.any() else F)


def weighted_fes(values, log_weights=None, bins: int | Sequence[int] = 50, ranges=None,
                 temperature: float = 300.0, n_blocks: int = 10,
                 errors: str = "blocks", n_bootstrap: int = 200, seed: int = 0,
                 ) -> WeightedFES:
    """F(s) = −kT ln p(s) on ``values`` (n,) or (n, 1|2) of consecutive frames, each
    weighted by exp(``log_weights``) (None: unweighted). ``ranges``: (lo, hi) per
    dimension (default data min/max). ``errors``: "blocks" — the frames are cut into
    ``n_blocks`` contiguous blocks, F is computed in each and the standard error is
    std(F_b)/√(n_blocks) over the blocks that visit the bin, each block's F shifted to
    the best overlap (mean over common bins) with the whole; "bootstrap" — blocks resampled
    with replacement ``n_bootstrap`` times, standard deviation of F (each resample
    shifted the same way). F itself has its minimum at 0."""
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[1] not in (1, 2) or v.shape[0] < 2:
        raise AnalysisError(f"weighted_fes: values must be (n,) or (n, 1|2) with n >= 2, "
                            f"got shape {v.shape}")
    n, dims = v.shape
    lw = np.zeros(n) if log_weights is None else np.asarray(log_weights, np.float64)
    if lw.shape != (n,):
        raise AnalysisError(f"weighted_fes: {lw.size} log weights for {n} frames")
    w = normalized_weights(lw)
    bins = [bins] * dims if isinstance(bins, (int, np.integer)) else list(bins)
    if ranges is None:
        ranges = [(float(v[:, d].min()), float(v[:, d].max())) for d in range(dims)]
    if len(bins) != dims or len(ranges) != dims or any(b < 1 for b in bins) or any(
            not hi > lo for lo, hi in ranges):
        raise AnalysisError(f"weighted_fes: need one bins > 0 and one (lo, hi) with hi > lo "
                            f"per dimension, got bins {bins}, ranges {ranges}")
    if errors not in ("blocks", "bootstrap"):
        raise AnalysisError(f"weighted_fes: errors must be 'blocks' or 'bootstrap', got "
                            f"{errors!r}")
    edges = tuple(np.linspace(lo, hi, b + 1) for (lo, hi), b in zip(ranges, bins))
    kT = kT_eV(temperature)
    n_blocks = int(max(2, min(n_blocks, n)))
    blocks = np.array_split(np.arange(n), n_blocks)
    bh = np.stack([_histogram(v[i], w[i], edges) for i in blocks])   # (B, bins...)
    p, F = _F(bh.sum(0), kT)
    if p.sum() == 0:
        raise AnalysisError(f"weighted_fes: no frame inside the ranges {ranges}")
    if errors == "blocks":
        Fb = np.stack([_F(h, kT)[1] for h in bh])
        ok = np.isfinite(Fb) & np.isfinite(F)[None]
        for b in range(n_blocks):  # align each block to the whole on common bins
            if ok[b].any():
                Fb[b] -= np.mean(Fb[b][ok[b]] - F[ok[b]])
        cnt = ok.sum(0)
        mean = np.where(cnt > 0, np.sum(np.where(ok, Fb, 0.0), 0) / np.maximum(cnt, 1), 0.0)
        var = np.sum(np.where(ok, (Fb - mean) ** 2, 0.0), 0) / np.maximum(cnt - 1, 1)
        err = np.where(cnt >= 2, np.sqrt(var / np.maximum(cnt, 1)), np.nan)
    else:
        rng = np.random.default_rng(seed)
        Fs = []
        for _ in range(n_bootstrap):
            pick = rng.integers(0, n_blocks, n_blocks)
            Fr = _F(bh[pick].sum(0), kT)[1]
            common = np.isfinite(Fr) & np.isfinite(F)
            if common.any():  # the same gauge as the blocks: best overlap with the whole
                Fr = Fr - np.mean(Fr[common] - F[common])
            Fs.append(Fr)
        Fs = np.stack(Fs)
        ok = np.isfinite(Fs)
        cnt = ok.sum(0)
        mean = np.sum(np.where(ok, Fs, 0.0), 0) / np.maximum(cnt, 1)
        var = np.sum(np.where(ok, (Fs - mean) ** 2, 0.0), 0) / np.maximum(cnt - 1, 1)
        err = np.where(cnt >= max(2, n_bootstrap // 2), np.sqrt(var), np.nan)
    return WeightedFES(edges, p, F, err, float(temperature), errors,
                       effective_sample_size(lw))


def fes_difference(F, F_ref, kT: float, cap_kT: float = 8.0) -> float:
    """Mean |F − F_ref| (eV) over the bins where F_ref is finite and below ``cap_kT``·kT,
    after shifting F by its mean offset from F_ref on those bins (bins F never visited
    count as cap_kT·kT)."""
    F, F_ref = np.asarray(F, np.float64), np.asarray(F_ref, np.float64)
    region = np.isfinite(F_ref) & (F_ref <= cap_kT * kT)
    both = region & np.isfinite(F)
    if not both.any():
        return float(cap_kT * kT)
    shift = np.mean(F[both] - F_ref[both])
    d = np.where(both, np.abs(F - shift - F_ref), cap_kT * kT)
    return float(np.mean(np.minimum(d[region], cap_kT * kT)))


def fes_convergence(values, log_weights=None, times=None, n_points: int = 10,
                    bins: int | Sequence[int] = 30, ranges=None,
                    temperature: float = 300.0, cap_kT: float = 8.0) -> dict:
    """How F(s) from the first t of a run approaches the final one: for ``n_points``
    prefixes of the frames (``times``: the simulated time of each frame, e.g. ps;
    default frame index), the mean |F(t) − F(final)| (eV, :func:`fes_difference`) in
    the region the final surface populates below ``cap_kT``. Returns {"time",
    "difference_eV", "difference_kT"}."""
    v = np.asarray(values, np.float64)
    n = v.shape[0]
    t = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    lw = np.zeros(n) if log_weights is None else np.asarray(log_weights, np.float64)
    final = weighted_fes(v, lw, bins, ranges, temperature, n_blocks=2)
    rng = [tuple(map(float, (e[0], e[-1]))) for e in final.edges]
    kT = kT_eV(temperature)
    out_t, out_d = [], []
    for m in np.unique(np.linspace(max(2, n // n_points), n, n_points).astype(int)):
        Fm = weighted_fes(v[:m], lw[:m], bins, rng, temperature, n_blocks=2).free_energy
        out_t.append(float(t[m - 1]))
        out_d.append(fes_difference(Fm, final.free_energy, kT, cap_kT))
    d = np.asarray(out_d)
    return {"time": out_t, "difference_eV": d.tolist(), "difference_kT": (d / kT).tolist()}


def time_to_converge(conv: dict, threshold_kT: float = 1.0) -> float | None:
    """The first time from which the surface stays within ``threshold_kT`` of the final
    one (:func:`fes_convergence` output), or None if it never does before the end."""
    d = np.asarray(conv["difference_kT"])
    above = np.flatnonzero(d > threshold_kT)
    if above.size == 0:
        return conv["time"][0]
    if above[-1] + 1 >= d.size:
        return None
    return conv["time"][above[-1] + 1]


# ---------------------------------------------------------------------------- plots
def plot_fes_1d(centers, curves: dict, path: str, xlabel: str = "s",
                ylabel: str = "F (kT)") -> str:
    """Plot 1-D free-energy curves ``{label: (F, err or None)}`` on ``centers``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, (F, err) in curves.items():
        F = np.asarray(F, np.float64)
        if err is None:
            ax.plot(centers, F, label=label)
        else:
            ax.errorbar(centers, F, yerr=np.nan_to_num(err), label=label, capsize=2, lw=1)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_convergence(conv: dict, path: str, time_unit: str = "ps") -> str:
    """Plot :func:`fes_convergence` output (difference in kT vs time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(conv["time"], conv["difference_kT"], "o-")
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_xlabel(f"simulated time ({time_unit})")
    ax.set_ylabel("mean |F(t) − F(final)| (kT)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

