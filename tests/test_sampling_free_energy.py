"""Free energies (biojax.sampling.free_energy) and replica exchange
(biojax.sampling.exchange): MBAR against exact harmonic-oscillator free energies and
against pymbar (run in a subprocess: importing pymbar switches JAX to 64-bit), WHAM ==
MBAR on binned data, umbrella sampling against quadrature, reweighting of biased samples,
exchange acceptance against the analytic rate, resume identity, bad input, and
``biojax analyze`` reading per-frame log weights."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from biojax.core.errors import AnalysisError, ConfigError
from biojax.core.units import KB
from biojax.sampling import free_energy as fe

KT = KB * 300.0


def _oscillators(rng, N=(1500, 1000, 1000, 0)):
    """Samples of 1-D harmonic oscillators u_k = ½ K_k (x − x0_k)² (reduced units) with
    exact f_k = −ln √(2π/K_k) (the last state unsampled)."""
    K = np.array([1.0, 2.0, 4.0, 8.0])
    x0 = np.array([0.0, 0.3, 0.6, 1.0])
    x = np.concatenate([rng.normal(x0[k], 1 / np.sqrt(K[k]), N[k]) for k in range(4)])
    u = 0.5 * K[:, None] * (x[None] - x0[:, None]) ** 2
    exact = -np.log(np.sqrt(2 * np.pi / K))
    return u, np.array(N), exact - exact[0]


def test_mbar_matches_exact_harmonic_oscillators():
    u, N, exact = _oscillators(np.random.default_rng(1))
    r = fe.mbar(u, N)
    assert r.f_k[0] == 0.0
    z = (r.f_k[1:] - exact[1:]) / r.df_k[1:]
    assert np.all(np.abs(z) < 4), (r.f_k, exact, r.df_k)
    assert np.all(r.df_k[1:] > 0) and np.all(r.df_k[1:] < 0.2)
    # weights: each state's column sums to 1; <u_3> in the unsampled state 3 is 1/2
    assert np.allclose(np.exp(r.log_w_nk).sum(0), 1.0)
    assert r.expectation(u[3], 3) == pytest.approx(0.5, abs=0.1)
    # the errors are honest: over independent repeats the spread matches df
    fs = np.array([fe.mbar(*_oscillators(np.random.default_rng(s))[:2]).f_k
                   for s in range(2, 12)])
    assert np.std(fs[:, 2]) == pytest.approx(r.df_k[2], rel=0.6)


def _double_well(x):
    """U(x) in units of kT: barrier 4 kT at 0, minima at ±1 (slightly tilted)."""
    return 4.0 * (x * x - 1.0) ** 2 + 0.5 * x


def _umbrella_samples(rng, centers, kappa, n):
    """Exact samples of p_k(x) ∝ exp(−U(x) − ½ κ (x − c_k)²) by inverse CDF on a grid."""
    grid = np.linspace(-2.5, 2.5, 20001)
    out = []
    for c in centers:
        logp = -_double_well(grid) - 0.5 * kappa * (grid - c) ** 2
        p = np.exp(logp - logp.max())
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        out.append(np.interp(rng.random(n), cdf, grid))
    return out, grid


def test_umbrella_mbar_and_wham_match_quadrature_and_each_other():
    rng = np.random.default_rng(3)
    centers, kappa = np.linspace(-1.5, 1.5, 9), 20.0
    samples, grid = _umbrella_samples(rng, centers, kappa, 800)
    u, N = fe.umbrella_u_kn(samples, centers, kappa * KT, KT)   # κ in eV, kT in eV
    r = fe.mbar(u, N)
    # PMF from MBAR weights of the unbiased state vs the exact one by quadrature
    s = np.concatenate(samples)
    edges = np.linspace(-1.5, 1.5, 31)
    w = np.exp(r.log_w_nk[:, -1])
    h, _ = np.histogram(s, edges, weights=w)
    F = -np.log(h / h.sum())
    fine = np.linspace(-1.5, 1.5, 30001)
    p_exact = np.array([np.trapezoid(np.exp(-_double_well(fine[(fine >= a) & (fine <= b)])),
                                 fine[(fine >= a) & (fine <= b)])
                        for a, b in zip(edges[:-1], edges[1:])])
    F_exact = -np.log(p_exact / p_exact.sum())
    d = (F - F_exact) - np.mean(F - F_exact)
    assert np.max(np.abs(d)) < 0.25, d   # kT units; 9 windows x 800 samples
    # WHAM on the same samples binned == MBAR on the samples moved to their bin centres
    bins = np.linspace(-2.5, 2.5, 201)
    centres = 0.5 * (bins[1:] + bins[:-1])
    counts = np.stack([np.histogram(x, bins)[0] for x in samples])
    bias = 0.5 * kappa * (centres[None] - centers[:, None]) ** 2
    wh = fe.wham(counts, bias)
    binned = [centres[np.clip(np.digitize(x, bins) - 1, 0, len(centres) - 1)]
              for x in samples]
    ub, Nb = fe.umbrella_u_kn(binned, centers, kappa * KT, KT)
    rb = fe.mbar(ub, Nb)
    assert np.allclose(wh.f_k, rb.f_k[:-1], atol=1e-7), (wh.f_k, rb.f_k)
    # and both are close to MBAR on the raw samples (binning error only)
    assert np.allclose(wh.f_k, r.f_k[:-1], atol=0.05)
    pmf = wh.free_energy(1.0)
    assert np.isfinite(pmf[(centres > -1.4) & (centres < 1.4)]).all()


PYMBAR = r"""
import sys, json


class NoJax:  # pymbar's numpy path (faster to start; no 64-bit switch anywhere)
    def find_spec(self, name, path=None, target=None):
        if name == "jax" or name.startswith("jax."):
            raise ImportError(name)


sys.meta_path.insert(0, NoJax())
import numpy as np
import pymbar
u = np.load(sys.argv[1]); N = np.load(sys.argv[2])
m = pymbar.MBAR(u, N, relative_tolerance=1e-12, solver_protocol="robust")
r = m.compute_free_energy_differences()
print(json.dumps({"f": r["Delta_f"][0].tolist(), "df": r["dDelta_f"][0].tolist(),
                  "version": pymbar.__version__}))
"""


def test_mbar_equals_pymbar_on_umbrella_windows(tmp_path):
    try:
        import importlib.util

        if importlib.util.find_spec("pymbar") is None:
            raise ImportError
    except ImportError:
        pytest.skip("pymbar is not installed (pip install pymbar; add it to the test "
                    "extras): the MBAR-vs-pymbar comparison needs it")
    rng = np.random.default_rng(5)
    centers, kappa = np.linspace(-1.5, 1.5, 7), 15.0
    samples, _ = _umbrella_samples(rng, centers, kappa, 300)
    u, N = fe.umbrella_u_kn(samples, centers, kappa * KT, KT)
    u, N = u[:-1], N[:-1]    # pymbar compares sampled states
    np.save(tmp_path / "u.npy", u), np.save(tmp_path / "N.npy", N)
    out = subprocess.run([sys.executable, "-c", PYMBAR, str(tmp_path / "u.npy"),
                          str(tmp_path / "N.npy")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    r = fe.mbar(u, N)
    f_ref, df_ref = np.array(ref["f"]), np.array(ref["df"])
    assert np.allclose(r.f_k, f_ref, rtol=1e-6, atol=1e-8), (r.f_k, f_ref)
    assert np.allclose(r.df_k, df_ref, rtol=1e-5, atol=1e-8), (r.df_k, df_ref)


def test_reweighting_a_biased_run_recovers_the_unbiased_surface():
    rng = np.random.default_rng(7)
    # unbiased: N(0, 1) in s (kT units); biased run sampled with bias V = -0.5·0.8 s²
    # (a flattening bias): p_b ∝ exp(-s²/2 + 0.4 s²) = N(0, 1/0.2); log w = βV
    s = rng.normal(0.0, np.sqrt(1 / 0.2), 40000)
    log_w = -0.4 * s * s
    f = fe.weighted_fes(s, log_w, 24, [(-3, 3)], 300.0, n_blocks=10)
    kT = fe.kT_eV(300.0)
    c = f.centers[0]
    exact = 0.5 * c * c * kT
    ok = np.isfinite(f.free_energy)
    d = (f.free_energy - exact)[ok]
    d -= d.mean()
    assert np.max(np.abs(d)) < 5 * np.nanmax(f.error[ok]) + 0.02 * kT
    assert np.all(f.error[np.abs(c) < 2] < 0.2 * kT)
    assert 1000 < f.n_eff < 40000
    b = fe.weighted_fes(s, log_w, 24, [(-3, 3)], 300.0, n_blocks=10, errors="bootstrap",
                        n_bootstrap=50)
    np.testing.assert_allclose(b.free_energy, f.free_energy)
    assert np.nanmedian(b.error / f.error) == pytest.approx(1.0, rel=0.6)
    conv = fe.fes_convergence(s, log_w, np.arange(s.size) * 0.01, n_points=6, bins=24,
                              ranges=[(-3, 3)])
    assert conv["difference_kT"][-1] == 0.0 and conv["difference_kT"][0] > 0.0
    assert fe.time_to_converge(conv, 1.0) is not None
    with pytest.raises(AnalysisError, match="log weights for"):
        fe.weighted_fes(s, log_w[:10])


def test_mbar_bad_input():
    with pytest.raises(AnalysisError, match="N_k"):
        fe.mbar(np.zeros((2, 5)), [2, 2])
    with pytest.raises(AnalysisError, match="not finite"):
        fe.mbar(np.array([[0.0, np.nan], [0.0, 1.0]]), [1, 1])
    with pytest.raises(AnalysisError, match="no counts"):
        fe.wham(np.array([[1, 2], [0, 0]]), np.zeros((2, 2)))


# --------------------------------------------------------------------------- exchange
def _toy(tmp_path=None, **rex):
    """Two argon atoms far apart (LJ energy 0) tied to their start by one harmonic
    spring over all 6 coordinates: the energy term V = ½ k |R − R0|² is Gamma(3, kT/λ)
    distributed in a slot at temperature T with scale λ."""
    import ase
    import jax.numpy as jnp

    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn import classical

    atoms = ase.Atoms("Ar2", positions=[[0, 0, 0], [10, 0, 0]])
    pot = classical.lennard_jones([18], 3.4, 0.0103, 3.0, None)
    R0 = jnp.asarray(atoms.positions, jnp.float32)
    options = dict(replicas=16, steps=2000, chunk_steps=200, frame_every=200,
                   observe_every=20, timestep_fs=5.0, friction_per_ps=20.0,
                   check_bonds=False, check_energy=False, plots=False,
                   replica_exchange={"every": 200, "seed": 1, **rex})
    return lambda **kw: Simulation(atoms, pot, default_config(**{**options, **kw}),
                                   energy_terms=[lambda R, **k: 0.5 * jnp.sum((R - R0) ** 2)])


def _analytic_acceptance(beta_eff, rng=np.random.default_rng(0), n=400000):
    """E[min(1, exp(−Δ))], Δ = (b_i − b_j)(V_j − V_i), V_k ~ Gamma(3, 1/b_k)."""
    out = []
    for bi, bj in zip(beta_eff[:-1], beta_eff[1:]):
        vi, vj = rng.gamma(3.0, 1 / bi, n), rng.gamma(3.0, 1 / bj, n)
        out.append(np.mean(np.minimum(1.0, np.exp(-(bi - bj) * (vj - vi)))))
    return np.array(out)


def test_exchange_acceptance_matches_analytic():
    """The exchange rule alone, with exact canonical resampling between attempts: a
    ladder over temperatures and bias scales together (Δ from the cross energies
    E_j(x_i) of scaled terms); the rate per pair equals the analytic one, and a swap
    moves positions and rescales momenta by √(T_new/T_old)."""
    import types

    import jax
    import jax.numpy as jnp

    from biojax.md.config import default_config
    from biojax.md.integrators import LangevinState
    from biojax.md.terms import EnergyTerm
    from biojax.sampling.exchange import ReplicaExchange

    temps, scales = [300.0, 360.0, 430.0, 520.0], [1.0, 0.8, 0.65, 0.5]
    R = 256
    cfg = default_config(replicas=R, chunk_steps=100, frame_every=100, replica_exchange={
        "temperatures": temps, "scales": scales, "every": 100, "seed": 3})
    rex = ReplicaExchange(cfg)
    terms = rex.wrap_terms([EnergyTerm(lambda x, s, **kw: 0.5 * jnp.sum(x * x))])

    def energy_fn(x, neighbor=None, term_states=()):
        return sum(t.energy(x, s) for t, s in zip(terms, term_states))

    sim = types.SimpleNamespace(energy_fn=energy_fn, _map=lambda f: jax.jit(jax.vmap(f)))
    lam = np.array([scales[r % 4] for r in range(R)])
    kT = KB * np.array([temps[r % 4] for r in range(R)])
    rng = np.random.default_rng(0)

    def canonical():  # x ~ exp(-λ|x|²/2kT) in 2 x 3 dimensions
        return jnp.asarray(rng.normal(size=(R, 2, 3)) * np.sqrt(kT / lam)[:, None, None],
                           jnp.float32)

    zeros = jnp.zeros((R, 2, 3), jnp.float32)
    state = LangevinState(canonical(), jnp.ones((R, 2, 3), jnp.float32), zeros,
                          jnp.ones((R, 2, 1), jnp.float32), jnp.zeros((R, 2), jnp.uint32),
                          jnp.zeros((R,), jnp.float32))
    run = types.SimpleNamespace(state=state, nbrs=jnp.arange(R),
                                term_states=((jnp.ones(R), None),))
    run = rex.start(sim, run)
    assert np.allclose(run.term_states[0][0], lam)
    np.testing.assert_allclose(run.state.force, -lam[:, None, None] * run.state.position,
                               rtol=1e-6)
    before = run.state
    perm = rex.attempt(sim, run)
    moved = np.flatnonzero(perm != np.arange(R))
    assert moved.size > 0
    np.testing.assert_array_equal(run.state.position, np.asarray(before.position)[perm])
    np.testing.assert_allclose(np.asarray(run.state.momentum)[moved, 0, 0],
                               np.sqrt(kT[moved] / kT[perm][moved]), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(run.nbrs), perm)
    for _ in range(60):
        run.state = dataclasses.replace(run.state, position=canonical())
        rex.attempt(sim, run)
    pairs = rex.summary()["replica_exchange"]["pairs"]
    want = _analytic_acceptance(np.array(scales) / (KB * np.array(temps)))
    got = np.array([p["acceptance"] for p in pairs])
    prob = np.array([p["mean_probability"] for p in pairs])
    assert all(p["attempts"] >= 1900 for p in pairs)
    assert np.all(np.abs(got - want) < 0.04), (got, want)
    assert np.all(np.abs(prob - want) < 0.02), (prob, want)


def test_scaled_bias_reports_its_scaled_energy_and_log_weight():
    """With a bias-scale ladder a slot applies λV, so its observed energies and its
    unbiasing log-weight bias_logw are λ times the inner bias's; the CV column is not."""
    import jax.numpy as jnp

    from biojax.md.terms import System, observe_terms
    from biojax.sampling.bias import restraint
    from biojax.sampling.exchange import scaled_terms

    R = jnp.asarray([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
    system = System(np.array([18, 18]), np.ones(2), lambda a, b, **kw: a - b, False)
    inner = restraint(system, None, cv=[{"name": "distance", "atoms": [0, 1]}],
                      kappa=2.0, center=1.0, label="u")
    (term,) = scaled_terms([inner])
    state = (jnp.float32(0.25), inner.init(R))
    got = observe_terms([term], (state,), R)
    ref = inner.observe(R, state[1])
    for k in ("bias_energy", "bias_logw", "u.energy"):
        np.testing.assert_allclose(got[k], 0.25 * ref[k], rtol=1e-6)
        assert abs(float(ref[k])) > 0
    np.testing.assert_allclose(got["u.cv"], ref["u.cv"])
    np.testing.assert_allclose(float(term.energy(R, state)), 0.25 * float(ref["u.energy"]),
                               rtol=1e-6)


def test_parallel_tempering_resumes_identically_and_samples_each_slot(tmp_path):
    """A PT run killed after 4 chunks and resumed writes the same files and statistics
    as an uninterrupted one; every slot samples its own temperature (<V> = 3 kT_k)."""
    temps = [300.0, 400.0, 530.0, 700.0]
    make = _toy(temperatures=temps)
    kw = dict(replicas=8, steps=1600)
    full = make(**kw).run(tmp_path / "full")
    sim = make(**kw)   # "killed" after 3 chunks, then resumed from its checkpoint
    sim.run(tmp_path / "cut", max_chunks=3)
    part = json.loads((tmp_path / "cut" / "replica_exchange.json").read_text())
    assert part["rounds"] == 3
    sim.hooks[0].state = None  # nothing of the exchange state survives but the checkpoint
    resumed = sim.run(tmp_path / "cut", resume=True)
    rex = full["replica_exchange"]
    assert resumed["replica_exchange"] == rex and rex["rounds"] == 8
    assert sum(p["accepted"] for p in rex["pairs"]) > 0
    for r in range(8):
        name = f"replica_{r:03d}"
        for f in ("observables.csv", "trajectory.extxyz"):
            assert (tmp_path / "full" / name / f).read_bytes() == \
                (tmp_path / "cut" / name / f).read_bytes(), (name, f)
    walkers = set()
    for k in range(4):
        tables = [np.genfromtxt(tmp_path / "full" / f"replica_{r:03d}" / "observables.csv",
                                delimiter=",", names=True) for r in range(k, 8, 4)]
        walkers |= {int(w) for t in tables for w in t["walker"]}
        v = np.concatenate([t["terms_energy"][10:] for t in tables])
        assert v.mean() == pytest.approx(3 * KB * temps[k], rel=0.15), k
    assert len(walkers) > 2


def test_replica_exchange_bad_input():
    from biojax.md.config import default_config

    def make(rex, **kw):
        return default_config(**{"replicas": 4, "replica_exchange": rex, **kw})

    with pytest.raises(ConfigError, match="strictly increasing"):
        make({"temperatures": [300, 290, 400, 500]})
    with pytest.raises(ConfigError, match="strictly increasing"):
        make({"temperatures": [300]})
    with pytest.raises(ConfigError, match="unknown key.*'temperature'"):
        make({"temperature": [300, 400]})
    with pytest.raises(ConfigError, match="not a multiple of the 3 rungs"):
        make({"temperatures": [300, 400, 500]})
    with pytest.raises(ConfigError, match="multiple of chunk_steps"):
        make({"temperatures": [300, 400], "every": 250}, chunk_steps=500)
    with pytest.raises(ConfigError, match="t_min, t_max"):
        make({"t_min": 300, "n": 4})
    with pytest.raises(ConfigError, match="fixed-volume thermostat"):
        make({"temperatures": [300, 400]}, ensemble="npt")
    with pytest.raises(ConfigError, match="one entry per rung"):
        make({"temperatures": [300, 400], "scales": [1.0, 0.5, 0.0, 0.1]})
    ladder = make({"t_min": 300, "t_max": 600, "n": 4}).replica_exchange.ladder(300)[0]
    assert np.allclose(np.diff(np.log(ladder)), np.log(2) / 3)


def test_analyze_reads_log_weights(tmp_path):
    """``biojax analyze`` weights the surface and the regions by exp(bias_logw) from the
    observables next to each trajectory: two frames per state, one weighted 3:1."""
    import ase
    import ase.io

    from biojax.analysis import pipeline
    from biojax.analysis.config import load_config

    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    frames, rows = [], ["step,time_fs,potential_energy,bias_logw"]
    n = 200
    for i in range(n):
        x = -1.0 if i % 2 == 0 else 1.0       # alternate between two states
        pos = np.array([[0.0, 0, 0], [2.0 + 0.5 * x + 0.01 * rng.normal(), 0, 0]])
        frames.append(ase.Atoms("H2", positions=pos))
        for j in range(5):     # a row every 20 steps, a frame every 100
            step = i * 100 + j * 20
            if i == n - 1 and j > 0:
                break
            logw = np.log(3.0) if x < 0 else 0.0
            rows.append(f"{step},{step},0.0,{logw if j == 0 else 99.0}")
    ase.io.write(run / "trajectory.extxyz", frames)
    (run / "observables.csv").write_text("\n".join(rows) + "\n")
    toml = tmp_path / "a.toml"
    toml.write_text(f"""
[trajectory]
paths = ["{run / 'trajectory.extxyz'}"]
[[features]]
kind = "distances"
atoms = [[0, 1]]
names = ["d"]
[reduce]
method = "none"
[cluster]
k = 2
n_init = 1
[msm]
enabled = false
[fes]
features = ["d"]
bins = 4
n_bootstrap = 10
[[fes.regions]]
name = "short"
boxes = [[[0.0, 2.0]]]
[output]
directory = "{tmp_path / 'out'}"
plots = false
""")
    summary = pipeline.run_analysis(load_config(toml), show_progress=False)
    assert summary["weights"]["column"] == "bias_logw"
    assert summary["regions"][0]["population"] == pytest.approx(0.75, abs=1e-6)
    z = np.load(tmp_path / "out" / "fes.npz")
    p = z["probability"]
    assert p[0] == pytest.approx(0.75, abs=1e-6) and p[-1] == pytest.approx(0.25, abs=1e-6)
    # a named column that is absent is an error (before any clustering); "none" and a
    # missing bias_logw ("auto") mean unweighted
    toml.write_text(toml.read_text().replace('bins = 4', 'bins = 4\nlog_weights = "nope"')
                    .replace('plots = false', 'plots = false\noverwrite = true'))
    with pytest.raises(ConfigError, match="no column 'nope'"):
        pipeline.run_analysis(load_config(toml), show_progress=False)
    assert pipeline.frame_log_weights([str(run / "trajectory.extxyz")], [n], 1,
                                      "none") is None
    lw, name = pipeline.frame_log_weights([str(run / "trajectory.extxyz")], [n // 2],
                                          2, "bias_logw")
    assert name == "bias_logw" and np.allclose(lw, np.log(3.0))  # every 2nd frame: x < 0
