"""k-means on 10⁶ frames × 30 features: biojax (JAX, CPU) vs scikit-learn's KMeans.

Same data (float32 Gaussian mixture), same k, n_init, max_iter and tol; inertia of both
results is recomputed by one NumPy function (float64). biojax is timed twice: the first
call includes XLA compilation, the second is the steady-state run; compile = first −
second. scikit-learn runs between them with its default (Lloyd) algorithm on all cores.

    python benchmarks/bench_kmeans.py [--frames 1000000] [--features 30] [--k 16]
        [--n-init 10] [--max-iter 100] [--tol 1e-4] [--repeats 2]

Writes benchmarks/results/kmeans.json and kmeans.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from machine import cpu_model


def make_data(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian mixture: k centres uniform in [-10, 10]^d, isotropic blobs with σ = 2."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, (k, d))
    truth = rng.integers(0, k, n)
    x = centres[truth] + 2.0 * rng.standard_normal((n, d))
    return x.astype(np.float32), truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--n-init", type=int, default=10)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=2,
                    help="steady-state repeats per engine (the minimum is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()

    import jax
    import sklearn
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from biojax.analysis.cluster import inertia, kmeans

    x, truth = make_data(args.frames, args.features, args.k, args.seed)
    load_before = os.getloadavg()
    kw = dict(n_init=args.n_init, max_iter=args.max_iter, tol=args.tol)

    t0 = time.perf_counter()
    res = kmeans(x, args.k, seed=args.seed, **kw)
    t_first = time.perf_counter() - t0
    bj_times, bj_cpu = [], []
    for r in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        res = kmeans(x, args.k, seed=args.seed, **kw)
        bj_times.append(time.perf_counter() - t0)
        bj_cpu.append(time.process_time() - c0)

    sk_times, sk_cpu = [], []
    for r in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        km = KMeans(args.k, random_state=args.seed, algorithm="lloyd", **kw).fit(x)
        sk_times.append(time.perf_counter() - t0)
        sk_cpu.append(time.process_time() - c0)

    bj_inertia = inertia(x, res.centers)
    sk_inertia = inertia(x, km.cluster_centers_)
    t_bj, t_sk = min(bj_times), min(sk_times)
    out = {
        "benchmark": "kmeans",
        "data": f"Gaussian mixture, {args.k} centres in [-10,10]^{args.features}, "
                f"sigma=2, float32, seed {args.seed}",
        "frames": args.frames, "features": args.features, "k": args.k,
        "n_init": args.n_init, "max_iter": args.max_iter, "tol": args.tol,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "platform": platform.platform()},
        "versions": {"jax": jax.__version__, "sklearn": sklearn.__version__,
                     "numpy": np.__version__},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "biojax": {"seconds_first_call_incl_compile": t_first,
                   "seconds_steady": t_bj, "seconds_compile": max(t_first - t_bj, 0.0),
                   "all_steady": bj_times, "cpu_seconds_steady": min(bj_cpu),
                   "n_iter_best": res.n_iter,
                   "inertia": bj_inertia},
        "sklearn": {"seconds": t_sk, "all": sk_times, "cpu_seconds": min(sk_cpu), "n_iter_best": int(km.n_iter_),
                    "inertia": sk_inertia, "algorithm": "lloyd"},
        "speedup_steady": t_sk / t_bj,
        "speedup_incl_compile": t_sk / t_first,
        "cpu_time_ratio": min(sk_cpu) / min(bj_cpu),
        "inertia_rel_diff": abs(bj_inertia - sk_inertia) / sk_inertia,
        "ari_biojax_vs_sklearn": float(adjusted_rand_score(km.labels_, res.labels)),
        "ari_biojax_vs_truth": float(adjusted_rand_score(truth, res.labels)),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kmeans.json"), "w") as f:
        json.dump(out, f, indent=2)
    md = [
        f"# k-means: {args.frames:,} frames × {args.features} features, k = {args.k}, "
        f"n_init = {args.n_init}, max_iter = {args.max_iter}, tol = {args.tol}",
        "",
        f"Machine: {out['machine']['cpu']}, {out['machine']['cores']} cores "
        f"(load average before/after: {load_before[0]:.2f} / {out['loadavg_after'][0]:.2f}); "
        f"jax {jax.__version__}, scikit-learn {sklearn.__version__}.",
        "",
        "| engine | wall time (s) | CPU time (s) | iterations (best run) | inertia |",
        "|---|---|---|---|---|",
        f"| biojax, steady state | {t_bj:.2f} | {min(bj_cpu):.2f} | {res.n_iter} | "
        f"{bj_inertia:.6e} |",
        f"| biojax, first call incl. compile | {t_first:.2f} "
        f"(compile {out['biojax']['seconds_compile']:.2f}) | | | |",
        f"| scikit-learn KMeans (lloyd) | {t_sk:.2f} | {min(sk_cpu):.2f} | {km.n_iter_} | "
        f"{sk_inertia:.6e} |",
        "",
        f"Speed-up: {out['speedup_steady']:.2f}× steady state, "
        f"{out['speedup_incl_compile']:.2f}× including compilation "
        f"({out['cpu_time_ratio']:.2f}× less CPU time). "
        f"Inertia difference {100 * out['inertia_rel_diff']:.3f} %; adjusted Rand index "
        f"biojax vs scikit-learn {out['ari_biojax_vs_sklearn']:.4f}.",
        "",
    ]
    with open(os.path.join(args.out, "kmeans.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
