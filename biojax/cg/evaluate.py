"""How well a CG model reproduces the fine-grained ensemble: free-energy surfaces on
dihedral features, Jensen–Shannon and KL divergences, free-energy RMSE, basin populations
with block-bootstrap errors, RMSD and radius-of-gyration distributions, and the plots side
by side. Reuses ``biojax.analysis`` (FES, divergences, populations)."""

from __future__ import annotations

import numpy as np

from biojax.analysis.fes import js_divergence, kl_divergence
from biojax.analysis.msm import populations
from biojax.core import geometry
from biojax.core.units import KB

BASINS = ("beta/PII", "alphaR", "alphaL", "other")


def ramachandran_basins(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Basin index per frame (0 β/PII, 1 αR, 2 αL, 3 other) from φ, ψ in radians:
    φ < 0 splits into αR (−150° < ψ ≤ 50°) and β/PII (the rest); φ > 0 is αL for
    −45° ≤ ψ < 120° and other (C7ax, ...) otherwise."""
    phi, psi = np.degrees(phi), np.degrees(psi)
    alpha_r = (phi < 0) & (psi > -150) & (psi <= 50)
    beta = (phi < 0) & ~alpha_r
    alpha_l = (phi >= 0) & (psi >= -45) & (psi < 120)
    return np.select([beta, alpha_r, alpha_l], [0, 1, 2], 3)


def histogram2d(phi, psi, bins: int) -> np.ndarray:
    """Normalised 2D histogram on bins × bins over [−π, π)²."""
    h, _, _ = np.histogram2d(np.ravel(phi), np.ravel(psi), bins=bins,
                             range=[[-np.pi, np.pi], [-np.pi, np.pi]])
    return h / max(h.sum(), 1)


def fes_rmse_kT(p: np.ndarray, q: np.ndarray) -> float:
    """RMSE (kT) between −ln p and −ln q over bins populated in both, each shifted to
    zero mean over those bins (free energies are defined up to a constant)."""
    both = (p > 0) & (q > 0)
    if both.sum() < 2:
        return float("nan")
    fp, fq = -np.log(p[both]), -np.log(q[both])
    d = (fp - fp.mean()) - (fq - fq.mean())
    return float(np.sqrt(np.mean(d ** 2)))


def radius_of_gyration(frames: np.ndarray) -> np.ndarray:
    """Rg (Å) per frame of bead frames (F, B, 3), equal weights."""
    c = frames - frames.mean(-2, keepdims=True)
    return np.sqrt(np.mean(np.sum(c * c, -1), -1))


def compare(reference: np.ndarray, samples: list[np.ndarray], dihedrals, bins: int = 20,
            basins: bool = False, structure: bool = False, temperature: float = 300.0,
            n_blocks: int = 10, seed: int = 0) -> dict:
    """Metrics of CG ``samples`` (one (F, B, 3) array per replica, Å) against the mapped
    ``reference`` frames (F, B, 3): per dihedral pair the 2D JS and KL divergences and the
    FES RMSE (kT); the reference's split-half JS (its noise floor); basin populations with
    errors; RMSD/Rg histogram JS and means. Units: Å, rad."""
    out: dict = {"frames_reference": int(len(reference)),
                 "frames_model": int(sum(len(s) for s in samples)),
                 "replicas": len(samples)}
    dihedrals = np.asarray(dihedrals, int).reshape(-1, 4)
    if len(dihedrals) >= 2:
        ref_angles = geometry.dihedrals_float64(reference, dihedrals[:2])
        cg_angles = [geometry.dihedrals_float64(s, dihedrals[:2]) for s in samples]
        allcg = np.concatenate(cg_angles)
        p = histogram2d(ref_angles[:, 0], ref_angles[:, 1], bins)
        q = histogram2d(allcg[:, 0], allcg[:, 1], bins)
        half = len(ref_angles) // 2
        shuffled = ref_angles[np.random.default_rng(seed).permutation(len(ref_angles))]
        halves = [(ref_angles[:half], ref_angles[half:]), (shuffled[:half], shuffled[half:])]
        split = [js_divergence(histogram2d(a[:, 0], a[:, 1], bins),
                               histogram2d(b[:, 0], b[:, 1], bins)) for a, b in halves]
        out.update({"bins": bins, "js_divergence": js_divergence(p, q),
                    "kl_divergence_ref_model": kl_divergence(p, q),
                    "fes_rmse_kT": fes_rmse_kT(p, q),
                    # the reference's noise floor: two random halves of its frames (and,
                    # stricter, its first and second half in time)
                    "reference_split_half_js": split[1],
                    "reference_time_halves_js": split[0]})
        out["histograms"] = {"reference": p, "model": q}
        if basins:
            ref_pop = populations([ramachandran_basins(*ref_angles.T)], 4,
                                  n_blocks=n_blocks, seed=seed)
            cg_pop = populations([ramachandran_basins(*a.T) for a in cg_angles], 4,
                                 n_blocks=max(2, min(n_blocks, len(allcg))), seed=seed)
            out["basins"] = {name: {"reference": float(ref_pop.populations[i]),
                                    "reference_error": float(ref_pop.errors[i]),
                                    "model": float(cg_pop.populations[i]),
                                    "model_error": float(cg_pop.errors[i])}
                             for i, name in enumerate(BASINS)}
    if structure:
        ref0 = reference[0]
        ref_rmsd = np.asarray(geometry.rmsd(reference.astype(np.float32), ref0))
        ref_rg = radius_of_gyration(reference)
        allcg = np.concatenate(samples).astype(np.float32)
        cg_rmsd = np.asarray(geometry.rmsd(allcg, ref0))
        cg_rg = radius_of_gyration(allcg)
        for name, a, b in (("rmsd", ref_rmsd, cg_rmsd), ("rg", ref_rg, cg_rg)):
            lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
            ha, _ = np.histogram(a, 30, (lo, hi))
            hb, _ = np.histogram(b, 30, (lo, hi))
            out[name] = {"reference_mean_A": float(a.mean()), "reference_std_A": float(a.std()),
                         "model_mean_A": float(b.mean()), "model_std_A": float(b.std()),
                         "js_divergence": js_divergence(ha / ha.sum(), hb / hb.sum())}
        out["structure_values"] = {"reference": {"rmsd": ref_rmsd, "rg": ref_rg},
                                   "model": {"rmsd": cg_rmsd, "rg": cg_rg}}
    out["kT_eV"] = float(KB * temperature)
    return out


def plot_fes_side_by_side(histograms: dict[str, np.ndarray], path: str,
                          names=("φ", "ψ"), temperature: float = 300.0) -> str:
    """One free-energy panel (kT, −ln p shifted to 0) per named 2D histogram."""
    from biojax.analysis.plots import _plt, _save

    plt = _plt()
    n = len(histograms)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.8, 3.4), squeeze=False,
                             constrained_layout=True)
    for ax, (title, h) in zip(axes[0], histograms.items()):
        with np.errstate(divide="ignore"):
            f = -np.log(h)
        f = f - np.min(f[np.isfinite(f)])
        im = ax.imshow(np.where(np.isfinite(f), f, np.nan).T, origin="lower",
                       extent=[-180, 180, -180, 180], vmin=0, vmax=8, cmap="viridis")
        ax.set_title(title)
        ax.set_xlabel(f"{names[0]} (°)")
        ax.set_ylabel(f"{names[1]} (°)")
        ax.set_xticks([-180, -90, 0, 90, 180])
        ax.set_yticks([-180, -90, 0, 90, 180])
    fig.colorbar(im, ax=axes[0].tolist(), label="free energy (kT)")
    return _save(fig, path)


def plot_distributions(values: dict[str, dict[str, np.ndarray]], path: str) -> str:
    """Histograms of RMSD and Rg (Å): reference vs each model."""
    from biojax.analysis.plots import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
    for ax, key, label in zip(axes, ("rmsd", "rg"), ("Cα RMSD to the start (Å)",
                                                     "radius of gyration (Å)")):
        for name, v in values.items():
            ax.hist(v[key], bins=40, density=True, histtype="step", lw=1.5, label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("density")
    axes[0].legend(fontsize=8)
    return _save(fig, path)
