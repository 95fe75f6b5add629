"""Plots of a sequence-generation run (matplotlib Agg; files written atomically)."""

from __future__ import annotations

import os


from biojax.core.atomic import atomic_path


def _figure(w, h, rows=1, cols=1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path):
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


def motif_profiles(path, real, samples: dict, motifs) -> str:
    """Hit rate of each motif against its start position: real held-out vs each model."""
    from biojax.generative.seqmetrics import motif_hits

    fig, ax = _figure(5 * max(1, len(motifs)), 3.4, 1, max(1, len(motifs)))
    for j, m in enumerate(motifs):
        a = ax[0, j]
        for label, x in [("real (held out)", real), *samples.items()]:
            h = motif_hits(x, m.consensus, m.max_mismatches)
            a.plot(h["profile"], label=label)
        if m.window:
            a.axvspan(m.window[0], m.window[1], color="0.9", zorder=0)
        a.set(title=f"{m.name} {m.consensus} (≤{m.max_mismatches} mismatch)",
              xlabel="start position (0-based)", ylabel="fraction of sequences")
        a.legend(fontsize=7)
    return _save(fig, path)


def attribution_profile(path, att: dict, motifs) -> str:
    """Mean integrated-gradient attribution per position (real promoters)."""
    fig, ax = _figure(7, 3.2)
    a = ax[0, 0]
    a.plot(att["profile"], label="mean IG (signed)")
    a.plot(att["abs_profile"], label="mean |IG|", alpha=0.7)
    for m in motifs:
        if m.window:
            a.axvspan(m.window[0], m.window[1] + len(m.consensus) - 1, color="0.9", zorder=0)
            a.text(m.window[0], a.get_ylim()[1] * 0.9, m.name, fontsize=8)
    a.axhline(0, color="k", lw=0.5)
    a.set(xlabel="position (0-based)", ylabel="attribution (logit units)",
          title=f"integrated gradients, {att['n']} held-out promoters")
    a.legend(fontsize=7)
    return _save(fig, path)


def kmer_scatter(path, real, samples: dict, k: int = 6) -> str:
    """k-mer frequencies of each model against real held-out sequences."""
    from biojax.generative.seqmetrics import kmer_spectrum

    fig, ax = _figure(4 * max(1, len(samples)), 3.8, 1, max(1, len(samples)))
    r = kmer_spectrum(real, k)
    for j, (name, x) in enumerate(samples.items()):
        a = ax[0, j]
        a.loglog(r + 1e-6, kmer_spectrum(x, k) + 1e-6, ".", ms=2, alpha=0.5)
        lim = [1e-6, max(r.max(), 1e-3) * 1.5]
        a.plot(lim, lim, "k-", lw=0.5)
        a.set(xlabel=f"real {k}-mer frequency", ylabel=f"{name} {k}-mer frequency",
              title=name)
    return _save(fig, path)


def write_all(workdir, metrics, real, samples, evaluate, log) -> None:
    motifs = list(evaluate.motifs)
    written = []
    if motifs:
        written.append(motif_profiles(os.path.join(workdir, "motif_profiles.png"), real,
                                      samples, motifs))
    if "attributions" in metrics:
        written.append(attribution_profile(os.path.join(workdir, "attributions.png"),
                                           metrics["attributions"], motifs))
    if samples:
        written.append(kmer_scatter(os.path.join(workdir, "kmer_scatter.png"), real, samples,
                                    min(6, evaluate.kmax)))
    log("plots: " + ", ".join(os.path.basename(p) for p in written))
