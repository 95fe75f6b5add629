"""Umbrella sampling end to end with biojax MD, against the exact free energy.

    python examples/replica_exchange_ala2/umbrella.py --out runs/umbrella_dw [--ps 100]

Two argon atoms in vacuum whose distance r feels a double well
U(r) = B ((r − c)² / a² − 1)² (B = 5 kT at 300 K, minima at 3.5 and 5.0 Å; added as an
energy term, the LJ potential is switched off with ε = 1e-9 eV). Windows are replicas:
the ``restraint`` bias of biojax.sampling (``centers``: one centre per replica,
κ = 2 eV/Å²) on the CV ``distance`` between the atoms; Langevin at 300 K. The per-frame
CV values and centres come from the replicas' observables (``umb.cv[0]``,
``umb.center[0]``). Free energies: MBAR (biojax.sampling.free_energy.mbar, with its
asymptotic errors) and WHAM; the PMF from both against the exact one by quadrature,
F(r) = U(r) − 2 kT ln r (the r² of the free pair's relative coordinate); PMF errors from
4 independent blocks; convergence of the PMF vs simulated time per window.
Writes ``umbrella.json`` and ``umbrella_pmf.png``; resumes after a kill.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from biojax.core.units import KB

T = 300.0
KT = KB * T
B, C, A = 5.0 * KT, 4.25, 0.75          # eV, Å, Å
KAPPA = 2.0                              # eV/Å²
CENTERS = np.linspace(3.0, 5.5, 11)      # Å


def double_well(r):
    return B * ((r - C) ** 2 / A ** 2 - 1.0) ** 2


def simulate(args) -> dict:
    import ase
    import jax.numpy as jnp

    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn import classical

    atoms = ase.Atoms("Ar2", positions=[[0, 0, 0], [3.5, 0, 0]])
    frames = []
    for c in CENTERS:  # each window starts at its centre
        a = atoms.copy()
        a.positions[1, 0] = c
        frames.append(a)
    pot = classical.lennard_jones([18], 3.4, 1e-9, 3.0, None)

    def well(R, **kw):
        d = R[1] - R[0]
        return double_well(jnp.sqrt(jnp.sum(d * d)))

    chunk = 200 if args.exchange else 1000
    steps = int(round(args.ps * 1000 / args.timestep_fs))
    steps -= steps % 1000
    cfg = default_config(
        replicas=len(CENTERS), steps=steps, timestep_fs=args.timestep_fs, temperature_K=T,
        friction_per_ps=5.0, chunk_steps=chunk, observe_every=20, frame_every=chunk,
        check_bonds=False, check_energy=False, plots=False, seed=args.seed,
        bias=({"name": "restraint", "label": "umb", "cv": [{"name": "distance",
                                                            "atoms": [0, 1]}],
               "kappa": KAPPA, "centers": [[float(c)] for c in CENTERS]},),
        # Hamiltonian replica exchange between neighbouring windows: one rung per window
        # at one temperature (scales all 1: the windows differ by their centres, kept in
        # each slot's term state), configurations swapped every 200 steps (1 ps)
        replica_exchange=({"scales": [1.0] * len(CENTERS), "every": 200,
                           "seed": args.seed} if args.exchange else None))
    out = os.path.join(args.out, "md")
    sim = Simulation(frames, pot, cfg, progress=True, energy_terms=[well])
    t = time.time()
    s = sim.run(out, resume=os.path.isfile(os.path.join(out, "checkpoint.npz")))
    print(f"umbrella MD: {s['step']} steps x {len(CENTERS)} windows in {time.time() - t:.0f} s",
          file=sys.stderr)
    return s


def read_windows(out: str, drop: int) -> tuple[list[np.ndarray], np.ndarray]:
    s, c = [], []
    for r in range(len(CENTERS)):
        t = np.genfromtxt(os.path.join(out, "md", f"replica_{r:03d}", "observables.csv"),
                          delimiter=",", names=True)
        s.append(t["umbcv0"][drop:])
        c.append(t["umbcenter0"][0])
    return s, np.array(c)


def pmf_mbar(samples, centers, edges):
    from biojax.sampling import free_energy as fe

    u, N = fe.umbrella_u_kn(samples, centers, KAPPA, KT)
    r = fe.mbar(u, N)
    w = np.exp(r.log_w_nk[:, -1])
    h, _ = np.histogram(np.concatenate(samples), edges, weights=w)
    with np.errstate(divide="ignore"):
        F = -np.log(h / h.sum())
    return F, r


def pmf_wham(samples, centers, edges, refine: int = 10):
    """WHAM on bins ``refine`` times finer than ``edges`` (and wide enough for every
    sample), the PMF summed back onto ``edges``."""
    from biojax.sampling import free_energy as fe

    lo = min(edges[0], min(x.min() for x in samples)) - 1e-6
    hi = max(edges[-1], max(x.max() for x in samples)) + 1e-6
    width = (edges[1] - edges[0]) / refine
    fine = np.arange(lo, hi + width, width)
    mid = 0.5 * (fine[1:] + fine[:-1])
    counts = np.stack([np.histogram(x, fine)[0] for x in samples])
    bias = 0.5 * KAPPA * (mid[None] - centers[:, None]) ** 2 / KT
    wh = fe.wham(counts, bias)
    p, _ = np.histogram(mid, edges, weights=np.exp(wh.log_p))
    with np.errstate(divide="ignore"):
        return -np.log(p / p.sum()), wh


def exact_pmf(edges):
    fine = np.linspace(edges[0], edges[-1], 200001)
    p = np.exp(-double_well(fine) / KT) * fine ** 2
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(fine))])
    P = np.diff(np.interp(edges, fine, cum))
    return -np.log(P / P.sum())


def align(F, ref, mask):
    ok = mask & np.isfinite(F) & np.isfinite(ref)
    return F - np.mean(F[ok] - ref[ok])


def analyze(args) -> dict:
    from biojax.sampling import free_energy as fe

    drop = int(round(5000 / (20 * args.timestep_fs)))   # rows every 20 steps: the first 5 ps
    samples, centers = read_windows(args.out, drop)
    edges = np.linspace(3.0, 5.5, 26)
    mid = 0.5 * (edges[1:] + edges[:-1])
    exact = exact_pmf(edges)
    F_m, res = pmf_mbar(samples, centers, edges)
    F_w, wh = pmf_wham(samples, centers, edges)
    mask = np.isfinite(exact)
    F_m, F_w = align(F_m, exact, mask), align(F_w, exact, mask)
    # the MBAR PMF's own bins; infinite where no window reached
    # errors: 4 independent blocks of every window
    blocks = []
    for b in range(4):
        part = [np.array_split(x, 4)[b] for x in samples]
        blocks.append(align(pmf_mbar(part, centers, edges)[0], exact, mask))
    blocks = np.where(np.isfinite(blocks), blocks, np.nan)
    n_ok = np.sum(np.isfinite(blocks), 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(n_ok >= 3, np.nanstd(blocks, axis=0, ddof=1) / np.sqrt(n_ok), np.nan)
    both = np.isfinite(F_m) & np.isfinite(F_w)   # bins every estimate visits
    z = np.where(both, (F_m - exact) / err, np.nan)
    # convergence: PMF from the first t of every window vs the final PMF
    n = min(len(x) for x in samples)
    conv_t, conv_d = [], []
    for m in np.linspace(n // 8, n, 8).astype(int):
        Fm = align(pmf_mbar([x[:m] for x in samples], centers, edges)[0], F_m, mask)
        conv_t.append((m + drop) * 20 * args.timestep_fs / 1000)   # ps: rows every 20 steps
        d = np.where(both & np.isfinite(Fm), np.abs(Fm - F_m), np.nan)
        conv_d.append(float(np.nanmean(d)))
    rex_file = os.path.join(args.out, "md", "replica_exchange.json")
    result = {
        "exchange": (json.load(open(rex_file)) if os.path.isfile(rex_file) else None),
        "windows": len(centers), "samples_per_window": [len(x) for x in samples],
        "kappa_eV_per_A2": KAPPA, "temperature_K": T, "timestep_fs": args.timestep_fs,
        "mbar_f_k": res.f_k[:-1].tolist(), "mbar_df_k": res.df_k[:-1].tolist(),
        "wham_f_k": wh.f_k.tolist(),
        "max_abs_mbar_minus_wham_f_k": float(np.max(np.abs(res.f_k[:-1] - wh.f_k))),
        "r_A": mid.tolist(), "pmf_exact_kT": exact.tolist(), "pmf_mbar_kT": F_m.tolist(),
        "pmf_wham_kT": F_w.tolist(), "pmf_mbar_block_error_kT": err.tolist(),
        "bins_compared": int(both.sum()), "bins": len(mid),
        "max_abs_mbar_minus_exact_kT": float(np.max(np.abs(F_m - exact)[both])),
        "max_abs_wham_minus_exact_kT": float(np.max(np.abs(F_w - exact)[both])),
        "rms_mbar_minus_exact_kT": float(np.sqrt(np.mean((F_m - exact)[both] ** 2))),
        # the populated region: bins whose exact F is below 8 kT
        "region_below_8kT": {
            "bins": int(np.sum(both & (exact < 8))),
            "max_abs_mbar_minus_exact_kT": float(np.max(np.abs(F_m - exact)[both & (exact < 8)])),
            "rms_mbar_minus_exact_kT": float(np.sqrt(np.mean((F_m - exact)[both & (exact < 8)]
                                                             ** 2))),
            "median_block_error_kT": float(np.nanmedian(err[both & (exact < 8)]))},
        "max_abs_z": float(np.nanmax(np.abs(z))),
        "convergence": {"time_ps": conv_t, "mean_abs_difference_kT": conv_d},
    }
    result["plot"] = fe.plot_fes_1d(mid, {"exact (quadrature)": (exact, None),
                                          "MBAR": (F_m, err), "WHAM": (F_w, None)},
                                    os.path.join(args.out, "umbrella_pmf.png"), "r (Å)",
                                    "F (kT)")
    with open(os.path.join(args.out, "umbrella.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/umbrella_dw")
    p.add_argument("--ps", type=float, default=100.0, help="ps per window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timestep-fs", type=float, default=5.0)
    p.add_argument("--exchange", action="store_true",
                   help="exchange configurations between neighbouring windows")
    p.add_argument("--stage", choices=["all", "md", "analyze"], default="all")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.stage in ("all", "md"):
        simulate(args)
    if args.stage in ("all", "analyze"):
        r = analyze(args)
        print(json.dumps({k: v for k, v in r.items() if not isinstance(v, list)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
