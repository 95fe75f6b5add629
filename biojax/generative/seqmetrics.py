"""Metrics of generated DNA against real sequences (all on one-hot (N, L, 4) arrays).

- :func:`kmer_spectrum` / :func:`js_divergence`: k-mer frequency spectra (k = 1…6,
  overlapping, both strands not merged) and their Jensen–Shannon divergence (natural log,
  so 0 ≤ JS ≤ ln 2); :func:`split_half_js` the same between two random disjoint halves of a
  real set, the yardstick for "as close as real data is to itself".
- :func:`gc_content` (biojax.generative.sequences), :func:`positional_frequencies`.
- :func:`motif_hits`: occurrence of a motif by position-weight matching: a log-odds PWM
  built from a consensus (``p_consensus`` at the consensus base, the rest spread evenly,
  against a uniform background) and a hit wherever the score reaches the score of the
  consensus with ``max_mismatches`` substitutions at its weakest positions.
- :func:`nearest_hamming`: nearest-neighbour Hamming distance of each generated sequence to
  a reference (training) set, and the exact-copy fraction (memorisation).
- :func:`diversity`: unique fraction and mean pairwise Hamming distance within a set.
- :func:`two_sample_test`: a classifier two-sample test (logistic regression on k-mer
  and positional features, held-out accuracy and AUC; 0.5 = indistinguishable).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import AnalysisError

__all__ = ["kmer_spectrum", "js_divergence", "split_half_js", "positional_frequencies",
           "motif_pwm", "motif_hits", "nearest_hamming", "diversity", "two_sample_test",
           "auc"]


def _indices(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[-1] != 4:
        raise AnalysisError(f"expected one-hot sequences (N, L, 4), got shape {x.shape}")
    return np.argmax(x, -1)


def kmer_spectrum(x, k: int) -> np.ndarray:
    """Frequencies (4**k,) of overlapping k-mers over all sequences of one-hot ``x``
    (index = base-4 number of the k-mer in ACGT order); they sum to 1."""
    if not 1 <= k <= 8:
        raise AnalysisError(f"kmer_spectrum: k must be 1..8, got {k}")
    idx = _indices(x)
    n, length = idx.shape
    if length < k:
        raise AnalysisError(f"kmer_spectrum: sequences of {length} bp are shorter than k={k}")
    code = np.zeros((n, length - k + 1), np.int64)
    for j in range(k):
        code = code * 4 + idx[:, j:length - k + 1 + j]
    counts = np.bincount(code.ravel(), minlength=4 ** k).astype(np.float64)
    return counts / counts.sum()


def js_divergence(p, q) -> float:
    """Jensen–Shannon divergence (nats) between two frequency vectors."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def split_half_js(x, k: int, seed: int = 0, repeats: int = 5, size: int | None = None
                  ) -> tuple[float, float]:
    """Mean and standard deviation over ``repeats`` random splits of the JS divergence
    between the k-mer spectra of two disjoint random subsets of ``x`` of ``size``
    sequences each (default: halves)."""
    x = np.asarray(x)
    size = size or len(x) // 2
    if 2 * size > len(x):
        raise AnalysisError(f"split_half_js: two subsets of {size} need {2 * size} "
                            f"sequences, have {len(x)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(repeats):
        perm = rng.permutation(len(x))
        values.append(js_divergence(kmer_spectrum(x[perm[:size]], k),
                                    kmer_spectrum(x[perm[size:2 * size]], k)))
    return float(np.mean(values)), float(np.std(values))


def positional_frequencies(x) -> np.ndarray:
    """Base frequencies (L, 4) at each position."""
    x = np.asarray(x, np.float64)
    return x.mean(0)


def motif_pwm(consensus: str, p_consensus: float = 0.7) -> np.ndarray:
    """Log-odds (len, 4) PWM (nats, against a uniform background) of a consensus."""
    rows = []
    for b in consensus.upper():
        if b not in "ACGT":
            raise AnalysisError(f"motif {consensus!r}: {b!r} is not A, C, G or T")
        row = np.full(4, (1 - p_consensus) / 3)
        row["ACGT".index(b)] = p_consensus
        rows.append(np.log(row / 0.25))
    return np.array(rows)


def motif_scores(x, pwm) -> np.ndarray:
    """PWM scores (N, L - w + 1) at each start position of one-hot ``x``."""
    x = np.asarray(x, np.float64)
    w = pwm.shape[0]
    n_pos = x.shape[1] - w + 1
    windows = np.stack([x[:, j:j + n_pos] for j in range(w)], 2)  # N, P, w, 4
    return np.einsum("npwa,wa->np", windows, pwm)


def motif_hits(x, consensus: str, max_mismatches: int = 1, window: tuple | None = None,
               p_consensus: float = 0.7) -> dict:
    """Occurrence of ``consensus`` in one-hot ``x`` by PWM matching (module doc).
    ``window``: (first, last) 0-based start positions counted (default all). Returns
    ``rate`` (fraction of sequences with ≥ 1 hit in the window), ``profile`` (fraction of
    sequences with a hit starting at each position, full length) and ``threshold``."""
    pwm = motif_pwm(consensus, p_consensus)
    best = pwm.max(1)
    worst = np.sort(best - np.sort(pwm, 1)[:, -2])[:max_mismatches]  # cheapest losses
    threshold = best.sum() - worst.sum() - 1e-9
    scores = motif_scores(x, pwm)
    hit = scores >= threshold
    lo, hi = (0, hit.shape[1] - 1) if window is None else window
    rate = float(np.mean(hit[:, lo:hi + 1].any(1)))
    return {"rate": rate, "profile": hit.mean(0), "threshold": float(threshold)}


def _hamming_matches(a, b, batch: int = 1024) -> np.ndarray:
    """Matching positions between every sequence of ``a`` and of ``b`` (one-hot dot
    products; NumPy BLAS, nothing to compile)."""
    fa = np.asarray(a, np.float32).reshape(len(a), -1)
    fb = np.asarray(b, np.float32).reshape(len(b), -1)
    return np.concatenate([fa[i:i + batch] @ fb.T for i in range(0, len(a), batch)])


def nearest_hamming(x, reference, exclude_self: bool = False) -> dict:
    """For each sequence of ``x`` the Hamming distance (positions) to its nearest
    neighbour in ``reference``; returns ``distances`` (N,), their ``mean`` and
    ``min``, and ``exact_copy_fraction`` (distance 0). ``exclude_self``: x is reference,
    skip the diagonal."""
    x, reference = np.asarray(x), np.asarray(reference)
    if x.shape[1:] != reference.shape[1:]:
        raise AnalysisError(f"nearest_hamming: shapes {x.shape} and {reference.shape} differ")
    matches = _hamming_matches(x, reference)
    if exclude_self:
        np.fill_diagonal(matches, -1)
    dist = x.shape[1] - np.rint(matches.max(1)).astype(int)
    return {"distances": dist, "mean": float(dist.mean()), "min": int(dist.min()),
            "exact_copy_fraction": float(np.mean(dist == 0))}


def diversity(x, max_pairs: int = 2000, seed: int = 0) -> dict:
    """``unique_fraction`` and ``mean_pairwise_hamming`` (fraction of positions differing,
    over up to ``max_pairs`` random sequences) of one-hot ``x``; also the nearest
    neighbour distance within the set (``mean_nn_hamming``, positions)."""
    idx = _indices(x)
    unique = len({row.tobytes() for row in idx}) / len(idx)
    rng = np.random.default_rng(seed)
    sub = np.asarray(x)[rng.permutation(len(idx))[:max_pairs]]
    m = _hamming_matches(sub, sub)
    length = idx.shape[1]
    off = ~np.eye(len(sub), dtype=bool)
    pair = float(np.mean(length - m[off])) / length
    nn = nearest_hamming(sub, sub, exclude_self=True)["mean"]
    return {"unique_fraction": float(unique), "mean_pairwise_hamming": pair,
            "mean_nn_hamming": nn}


def auc(scores, labels) -> float:
    """Area under the ROC curve (probability a positive outscores a negative)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # ties: average ranks
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, ranks)
    ranks = sums[inv] / counts[inv]
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        raise AnalysisError("auc: need both classes")
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _features(x, ks=(1, 2, 3, 4)) -> np.ndarray:
    x = np.asarray(x, np.float32)
    feats = [x.reshape(len(x), -1)]  # positional one-hot
    for k in ks:
        feats.append(np.stack([kmer_spectrum(s[None], k) for s in x]).astype(np.float32) * 10)
    return np.concatenate(feats, 1)


def two_sample_test(a, b, seed: int = 0, test_fraction: float = 0.3, steps: int = 400,
                    l2: float = 1e-3) -> dict:
    """Classifier two-sample test: an L2-regularised logistic regression (full-batch Adam,
    ``steps`` steps) on positional one-hot and 1-4-mer features learns to tell set ``a``
    from set ``b`` (equal sizes drawn); its held-out ``accuracy`` and ``auc`` are ~0.5
    when the sets are indistinguishable, 1 when fully separable."""
    import optax

    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    a = np.asarray(a)[rng.permutation(len(a))[:n]]
    b = np.asarray(b)[rng.permutation(len(b))[:n]]
    feats = _features(np.concatenate([a, b]))
    y = np.r_[np.zeros(n), np.ones(n)].astype(np.float32)
    perm = rng.permutation(2 * n)
    n_test = int(round(test_fraction * 2 * n))
    te, tr = perm[:n_test], perm[n_test:]
    mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6
    xf = jnp.asarray((feats - mu) / sd)
    yj = jnp.asarray(y)
    tr_j, te_j = jnp.asarray(tr), jnp.asarray(te)

    def loss(w):
        z = xf[tr_j] @ w[:-1] + w[-1]
        return jnp.mean(optax.sigmoid_binary_cross_entropy(z, yj[tr_j])) + l2 * jnp.sum(w[:-1] ** 2)

    tx = optax.adam(0.01)
    w = jnp.zeros(xf.shape[1] + 1)
    opt = tx.init(w)

    @jax.jit
    def step(w, opt):
        g = jax.grad(loss)(w)
        u, opt = tx.update(g, opt)
        return optax.apply_updates(w, u), opt

    for _ in range(steps):
        w, opt = step(w, opt)
    z = np.asarray(xf[te_j] @ w[:-1] + w[-1])
    return {"accuracy": float(np.mean((z > 0) == (y[te] == 1))), "auc": auc(z, y[te]),
            "n_per_set": int(n)}
