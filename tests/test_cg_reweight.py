"""Tests of training through MD (biojax.cg.spline, sampler, reweight, observables,
trainer) against things we did not write: SciPy's cubic spline, forces as −∇E by finite
differences, analytic relative-entropy gradients of exactly sampled Gaussians, and a
finite difference of independent simulations for the DiffTRe gradient."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from ase.lattice.cubic import FaceCenteredCubic

from biojax.core.errors import ConfigError, DataError
from biojax.core.units import KB

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
WATER = os.path.join(ROOT, "examples", "data", "water_rdf")


def argon(size=2, a=6.0):
    return FaceCenteredCubic("Ar", size=(size,) * 3, latticeconstant=a)


def spline_argon(cutoff=5.9, seed=0):
    from biojax.cg.spline import spline_pair_potential

    rng = np.random.default_rng(seed)
    pot = spline_pair_potential([18], cutoff, n_knots=12, r_min=2.5, prior_epsilon=0.01,
                                prior_sigma=3.4)
    energies = 0.01 * rng.normal(size=pot.params["energies"].shape)
    return pot.replace(params={"energies": jnp.asarray(energies, jnp.float32)})


# ======================================================================= spline
def test_spline_matches_scipy_and_is_smooth_at_cutoff():
    from scipy.interpolate import CubicSpline

    from biojax.cg.spline import spline_pair_potential

    rng = np.random.default_rng(1)
    y = rng.normal(size=14)
    pot = spline_pair_potential([8], 8.0, n_knots=15, r_min=2.0, energies=y[None])
    ref = CubicSpline(np.linspace(2.0, 8.0, 15), np.append(y, 0.0),
                      bc_type=((2, 0.0), (1, 0.0)))  # natural left, clamped right
    r = np.linspace(2.0, 7.999, 400)
    assert np.max(np.abs(pot.model.table(pot.params, r) - ref(r))) < 2e-5
    # linear continuation below r_min; zero (value and slope) at and beyond the cutoff
    below = pot.model.table(pot.params, np.array([1.5]))[0]
    assert below == pytest.approx(ref(2.0) - 0.5 * ref(2.0, 1), abs=1e-4)
    tail = pot.model.table(pot.params, np.array([7.999, 8.0, 9.0]))
    assert abs(tail[0]) < 1e-5 and tail[1] == 0.0 and tail[2] == 0.0


def test_spline_forces_are_minus_gradient_and_survive_save_load(tmp_path):
    from biojax.core.graph import neighbor_graph
    from biojax.md import engine
    from biojax.md.system import make_space
    from biojax.nn.io import load_potential, save_potential

    atoms = argon()
    atoms.rattle(0.15, seed=3)
    pot = spline_argon()
    space = make_space(atoms, False)
    R = jnp.asarray(atoms.positions % atoms.cell.lengths(), jnp.float32)
    results = {}
    for fmt in ("dense", "ordered-sparse"):
        nf = engine.make_neighbor_fn(space, space.box, pot.cutoff, 0.5, 1.25, fmt, len(atoms))
        nbrs = nf.allocate(R)
        e_fn = pot.energy_fn(space.displacement_fn, atoms.numbers)
        e, g = jax.value_and_grad(lambda x: e_fn(x, nbrs))(R)
        results[fmt] = (float(e), -np.asarray(g))
        # central finite differences in float64 on the graph form
        graph_e = jax.jit(lambda x: jnp.sum(pot.model.apply(
            pot.params, neighbor_graph(x, nbrs, jnp.zeros(len(atoms), jnp.int32),
                                       space.displacement_fn))))
        h = 2e-3
        for atom, axis in [(0, 0), (5, 1), (17, 2), (31, 0)]:
            dR = np.zeros(R.shape, np.float32)
            dR[atom, axis] = h
            fd = -(float(graph_e(R + dR)) - float(graph_e(R - dR))) / (2 * h)
            assert results[fmt][1][atom, axis] == pytest.approx(fd, abs=2e-3 + 0.02 * abs(fd))
    assert results["dense"][0] == pytest.approx(results["ordered-sparse"][0], abs=1e-4)
    np.testing.assert_allclose(results["dense"][1], results["ordered-sparse"][1], atol=1e-4)
    assert np.max(np.abs(results["dense"][1])) > 0.01  # forces that mean something
    # saved and loaded by biojax.nn.io (registered as "spline-pair"): identical forces
    save_potential(pot, tmp_path / "m")
    loaded = load_potential(tmp_path / "m")
    assert loaded.architecture["name"] == "spline-pair"
    nf = engine.make_neighbor_fn(space, space.box, pot.cutoff, 0.5, 1.25, "dense", len(atoms))
    nbrs = nf.allocate(R)
    f1 = jax.grad(lambda x: pot.energy_fn(space.displacement_fn, atoms.numbers)(x, nbrs))(R)
    f2 = jax.grad(lambda x: loaded.energy_fn(space.displacement_fn, atoms.numbers)(x, nbrs))(R)
    np.testing.assert_array_equal(np.asarray(f1), np.asarray(f2))


def test_spline_runs_in_md_simulation():
    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation

    cfg = default_config(ensemble="nvt-langevin", timestep_fs=5.0, temperature_K=120.0,
                         steps=40, chunk_steps=40, frame_every=20, observe_every=20,
                         replicas=1)
    summary = Simulation(argon(), spline_argon(), cfg).run(None)
    assert summary["completed"] and summary["steps_run"] == 40


# ======================================================================= targets
def test_target_files_are_checked(tmp_path):
    from biojax.cg.observables import read_target

    t = read_target(os.path.join(WATER, "O_O_RDF.csv"), "rdf")
    assert t.x[-1] == pytest.approx(10.0) and "nm to Å" in t.note  # 1 nm -> 10 Å
    bad = tmp_path / "three.csv"
    bad.write_text("0.1 0.0 5\n0.2 1.0 5\n")
    with pytest.raises(DataError, match=r"three.csv, line 1: 3 column\(s\).*exactly two"):
        read_target(bad, "rdf")
    nan = tmp_path / "nan.csv"
    nan.write_text("0.1 0.0\n0.2 nan\n")
    with pytest.raises(DataError, match="line 2: non-finite"):
        read_target(nan, "rdf")
    back = tmp_path / "back.csv"
    back.write_text("# r g\n0.1 0.0\n0.3 1.0\n0.2 1.0\n")
    with pytest.raises(DataError, match="line 4: x = 0.2 does not increase"):
        read_target(back, "rdf")
    deg = tmp_path / "deg.csv"
    deg.write_text("0 0\n90 1\n180 0\n")
    with pytest.raises(DataError, match="radians"):
        read_target(deg, "adf")
    with pytest.raises(DataError, match="covers x in"):
        t.on(np.array([5.0, 12.0]))


def test_dihedral_distributions_peak_at_the_dihedral():
    from biojax.cg.observables import DihedralDistribution, Ramachandran
    from biojax.core.geometry import dihedrals

    rng = np.random.default_rng(4)
    frames = rng.normal(scale=1.5, size=(3, 6, 3)).astype(np.float32)
    quads = ((0, 1, 2, 3), (1, 2, 3, 4))
    d = DihedralDistribution(quads, n_bins=72).over_frames(frames)
    assert d.shape == (3, 2, 72)
    np.testing.assert_allclose(d.sum(-1) * 2 * np.pi / 72, 1.0, rtol=1e-5)
    ref = np.asarray(dihedrals(jnp.asarray(frames), jnp.asarray(quads)))
    centers = DihedralDistribution(quads, n_bins=72).centers
    peak = centers[d.argmax(-1)]
    assert np.all(np.abs((peak - ref + np.pi) % (2 * np.pi) - np.pi) < 2 * np.pi / 72)
    rama = Ramachandran((quads[0],), (quads[1],), n_bins=24).over_frames(frames)
    assert rama.shape == (3, 24, 24)
    np.testing.assert_allclose(rama.sum((1, 2)) * (2 * np.pi / 24) ** 2, 1.0, rtol=1e-5)


def test_reweighting_config_table(tmp_path):
    from biojax.cg.trainer import load_config

    path = tmp_path / "cg.toml"
    path.write_text('[model]\nx = 1\n[reweighting]\niterations = 3\nreplicas = 2\n'
                    '[[reweighting.targets]]\nkind = "rdf"\nfile = "g.csv"\n'
                    '[[reweighting.targets]]\nkind = "pressure"\nvalue = 1.0\n')
    cfg = load_config(str(path), ["reweighting.learning_rate=0.01"])
    assert cfg.iterations == 3 and cfg.learning_rate == 0.01
    assert cfg.targets[0].file == str(tmp_path / "g.csv")  # relative to the TOML
    path.write_text('[reweighting]\nlearning_rte = 0.1\n')
    with pytest.raises(ConfigError, match="learning_rte"):
        load_config(str(path))
    path.write_text('[reweighting]\n[[reweighting.targets]]\nkind = "pressure"\n')
    with pytest.raises(ConfigError, match="needs a value"):
        load_config(str(path))


def test_rdf_target_pair_counts_only_those_elements(tmp_path):
    import ase.io

    from biojax.cg.trainer import build_observables, load_config

    water = ase.io.read(os.path.join(ROOT, "examples", "water", "start64.extxyz"))
    (tmp_path / "g.csv").write_text("0 1\n10 1\n")
    path = tmp_path / "w.toml"
    path.write_text('[[targets]]\nkind = "rdf"\nfile = "g.csv"\nlength_unit = "angstrom"\n'
                    'r_max = 6.0\nn_bins = 60\npair = ["O", "O"]\n')
    cfg = load_config(str(path))
    box = np.diag(water.cell.array)
    built = build_observables(cfg, box, len(water), None, 0.025,
                              numbers=water.get_atomic_numbers())
    g = np.asarray(built.static["rdf"](water.positions[None].astype(np.float32)))[0]
    # ∫ g 4πr² dr over 2.5-5.5 Å × (pairs / V) counts the O–O pairs in that shell
    o = water.positions[water.numbers == 8]
    d = o[:, None] - o[None]
    d -= box * np.round(d / box)
    r = np.sqrt((d ** 2).sum(-1))[np.triu_indices(len(o), 1)]
    n_pairs = len(o) * (len(o) - 1) / 2
    x = 0.05 + 0.1 * np.arange(60)
    shell = (x > 2.5) & (x < 5.5)
    counted = (g[shell] * 4 * np.pi * x[shell] ** 2 * 0.1).sum() * n_pairs / np.prod(box)
    assert counted == pytest.approx(((r > 2.5) & (r < 5.5)).sum(), rel=0.03)
    with pytest.raises(ConfigError, match="needs the system's atomic numbers"):
        build_observables(cfg, box, len(water), None, 0.025)
    path.write_text(path.read_text().replace('["O", "O"]', '["O", "N"]'))
    with pytest.raises(ConfigError, match="no N atoms"):
        build_observables(load_config(str(path)), box, len(water), None, 0.025,
                          numbers=water.get_atomic_numbers())
    path.write_text(path.read_text().replace('["O", "N"]', '["O", "Q"]'))
    with pytest.raises(ConfigError, match="unknown element symbol"):
        load_config(str(path))


def test_virial_pressure_matches_ase_lennard_jones():
    """make_pressure (virial, kinetic part from kT) against ASE's LennardJones stress."""
    from ase.calculators.lj import LennardJones

    from biojax.cg.observables import make_pressure
    from biojax.core.units import BAR
    from biojax.md import engine
    from biojax.md.system import make_space
    from biojax.nn.classical import lennard_jones

    atoms = argon()
    atoms.rattle(0.2, seed=5)
    atoms.wrap()
    pot = lennard_jones([18], 3.405, 0.0103, cutoff=5.9)
    space = make_space(atoms, False)
    nf = engine.make_neighbor_fn(space, space.box, pot.cutoff, 0.5, 1.25, "dense", len(atoms))
    R = jnp.asarray(atoms.positions, jnp.float32)
    e_fn = pot.energy_fn(space.displacement_fn, atoms.numbers)
    kT = KB * 120.0
    pressure = make_pressure(lambda R, nb, p, **kw: e_fn(R, nb, params=p, **kw),
                             space.box, len(atoms), kT)
    mine = float(pressure(R, nf.allocate(R), pot.params))
    atoms.calc = LennardJones(sigma=3.405, epsilon=0.0103, rc=5.9, ro=0.8 * 5.9, smooth=True)
    virial = -np.trace(atoms.get_stress(voigt=False)) / 3.0
    ref = (virial + len(atoms) * kT / atoms.get_volume()) / BAR
    assert mine == pytest.approx(ref, rel=2e-3, abs=0.5)
    assert abs(ref) > 50  # a pressure that tests something (bar)


# ======================================================================= reweighting
def harmonic_energy(k, x):
    """U = ½ k |x|² (eV) of one 3-d sample x (Å), k in eV/Å²."""
    return 0.5 * k * jnp.sum(x * x)


def test_effective_sample_size_is_n_at_reference_and_falls():
    from biojax.cg.reweight import (effective_sample_size, frame_energies, kish_sample_size,
                                    weights)

    kT = KB * 300.0
    k_ref = 1.0
    x = np.random.default_rng(0).normal(scale=np.sqrt(kT / k_ref), size=(2000, 3))
    x = jnp.asarray(x, jnp.float32)
    u_ref = frame_energies(harmonic_energy, k_ref, x)
    n_eff = [float(effective_sample_size(weights(1 / kT, frame_energies(
        harmonic_energy, k, x), u_ref))) for k in (1.0, 1.05, 1.2, 1.5, 2.5)]
    assert n_eff[0] == pytest.approx(2000, rel=1e-5)
    assert all(a > b for a, b in zip(n_eff, n_eff[1:])) and n_eff[-1] < 0.8 * 2000
    w = weights(1 / kT, frame_energies(harmonic_energy, 1.5, x), u_ref)
    assert 1.0 < float(kish_sample_size(w)) <= float(effective_sample_size(w)) + 1e-3


def test_relative_entropy_gradient_of_exact_gaussians():
    """S_rel between Gaussians: ∂S/∂k = (d/2)(1/k_true − 1/k) for U = ½k|x|² in d = 3."""
    from biojax.cg.reweight import relative_entropy_gradient

    kT = KB * 300.0
    beta = 1 / kT
    rng = np.random.default_rng(2)
    k_true, k_ref, k = 1.3, 1.0, 1.1
    aa = jnp.asarray(rng.normal(scale=np.sqrt(kT / k_true), size=(200000, 3)), jnp.float32)
    model = jnp.asarray(rng.normal(scale=np.sqrt(kT / k_ref), size=(200000, 3)),
                        jnp.float32)
    grad_fn = jax.jit(relative_entropy_gradient(harmonic_energy, beta, batch_size=20000))
    u_ref = jax.vmap(lambda x: harmonic_energy(k_ref, x))(model)
    u_ref_aa = jax.vmap(lambda x: harmonic_energy(k_ref, x))(aa)
    g, aux = grad_fn(jnp.float32(k), model, u_ref, aa, u_ref_aa)
    analytic = 1.5 * (1 / k_true - 1 / k)
    # statistical error of the two averages of ½β|x|² (each has variance d/2 / k²)
    err = np.sqrt(1.5 / k_true ** 2 / 2e5 + 1.5 / k ** 2 / (2e5 * 0.9))
    assert abs(float(g) - analytic) < 4 * err + 1e-4, (float(g), analytic, err)
    assert abs(analytic) > 20 * err  # the gradient is resolved, not noise
    # ΔS_rel = KL(k_true || k) − KL(k_true || k_ref), KL = (d/2)[k/k_true − 1 − ln(k/k_true)]
    kl = lambda kk: 1.5 * (kk / k_true - 1 - np.log(kk / k_true))  # noqa: E731
    assert float(aux["delta_srel"]) == pytest.approx(kl(k) - kl(k_ref), abs=0.01)
    g0, aux0 = grad_fn(jnp.float32(k_ref), model, u_ref, aa, u_ref_aa)
    assert float(aux0["delta_srel"]) == pytest.approx(0.0, abs=1e-5)
    assert float(aux0["n_eff"]) == pytest.approx(2e5, rel=1e-4)


@pytest.mark.slow
def test_difftre_gradient_matches_finite_difference_of_simulations():
    """d⟨O⟩/dσ for a smooth coordination number O of an LJ liquid (32 atoms, T* = 1,
    ρ* = 0.73): DiffTRe from one ensemble at σ vs (⟨O⟩(σ+h) − ⟨O⟩(σ−h)) / 2h from
    separate simulations at σ ± h. 32 independent replicas, equilibrated once at σ; each
    run re-equilibrates with its own σ and noise. Errors: jackknife over replicas
    (DiffTRe) and the spread of the replicas' differences (finite difference)."""
    from biojax.cg.reweight import frame_energies, reweighted_average_fn
    from biojax.cg.sampler import Sampler, make_energy
    from biojax.md.system import make_space
    from biojax.nn.classical import lennard_jones

    atoms = argon()
    pot = lennard_jones([18], 3.405, 0.0103, cutoff=5.9)
    space = make_space(atoms, False)
    energy = make_energy(pot, space.displacement_fn, atoms.numbers)
    R, T, n_frames = 32, 120.0, 40
    beta = 1 / (KB * T)
    sampler = Sampler(energy, atoms, pot.cutoff, replicas=R, temperature_K=T,
                      timestep_fs=5.0, friction_per_ps=5.0)
    box = np.asarray(space.box)
    ii, jj = np.triu_indices(len(atoms), 1)

    def coordination(x):
        d = x[ii] - x[jj]
        d = d - box * jnp.round(d / box)
        r = jnp.sqrt(jnp.sum(d * d, -1))
        return jnp.sum(jax.nn.sigmoid((4.8 - r) / 0.15)) / len(atoms)

    per_frame = jax.jit(jax.vmap(coordination))

    def params(sigma):
        return {"sigma": jnp.full((1, 1), sigma, jnp.float32),
                "epsilon": pot.params["epsilon"]}

    sigma0, h = 3.405, 0.05
    liquid = sampler.init(params(sigma0), 0)
    _, _, liquid = sampler.run(params(sigma0), liquid, 1, 1500)  # melt the fcc start

    def simulate(sigma, seed):
        state = sampler.init(params(sigma), seed, positions=np.asarray(liquid.md.position))
        _, _, state = sampler.run(params(sigma), state, 1, 300)
        frames, _, _ = sampler.run(params(sigma), state, n_frames, 40)
        return frames

    flat = simulate(sigma0, 1).reshape((-1, len(atoms), 3))
    traces = sampler.traces
    O = per_frame(jnp.asarray(flat))
    nbrs, _ = sampler.frame_neighbors(flat)
    u = lambda p, fr: energy(fr[0], fr[1], p)  # noqa: E731
    frames = (jnp.asarray(flat), nbrs)
    u_ref = frame_energies(u, params(sigma0), frames, 64)
    avg = reweighted_average_fn(u, beta, batch_size=64)
    # leaving replica r out = giving its frames zero weight (a huge energy offset)
    grad = jax.jit(jax.grad(lambda s, drop: avg(params(s), frames, u_ref - drop, O)))
    g_dt = float(grad(jnp.float32(sigma0), jnp.zeros(len(flat))))
    jack = np.array([float(grad(jnp.float32(sigma0), 1e4 * jnp.repeat(
        jnp.arange(R) == r, n_frames))) for r in range(R)])
    e_dt = float(np.sqrt((R - 1) / R * np.sum((jack - jack.mean()) ** 2)))
    up = np.asarray(per_frame(jnp.asarray(simulate(sigma0 + h, 2).reshape(flat.shape))))
    down = np.asarray(per_frame(jnp.asarray(simulate(sigma0 - h, 3).reshape(flat.shape))))
    diff = (up.reshape(R, -1).mean(1) - down.reshape(R, -1).mean(1)) / (2 * h)
    g_fd, e_fd = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(R))
    err = np.hypot(e_dt, e_fd)
    print(f"DiffTRe {g_dt:.3f} ± {e_dt:.3f}, finite difference {g_fd:.3f} ± {e_fd:.3f}")
    assert abs(g_dt - g_fd) < 3 * err
    assert abs(g_fd) > 5 * e_fd and abs(g_dt) > 5 * e_dt  # a resolved, nonzero gradient
    assert sampler.traces == traces  # new parameters never recompiled the MD chunk


# ======================================================================= trainer
def _tiny_config(**kw):
    from biojax.cg.trainer import ReweightConfig, TargetConfig

    base = dict(iterations=4, learning_rate=0.0003, replicas=1, equilibration_steps=100,
                resample_equilibration_steps=50, production_steps=200, frame_every=20,
                timestep_fs=5.0, temperature_K=120.0, friction_per_ps=5.0,
                ess_threshold=0.9, seed=3, plots=False,
                targets=(TargetConfig("rdf", kw.pop("rdf_file"), length_unit="angstrom",
                                      r_max=5.9, n_bins=40, fit_min=2.5),))
    base.update(kw)
    return ReweightConfig(**base)


def _rdf_file(tmp_path):
    r = np.linspace(0.0, 6.0, 61)
    g = np.where(r < 3.2, 0.0, 1.0 + 1.5 * np.exp(-((r - 3.9) / 0.3) ** 2))
    path = tmp_path / "g.csv"
    np.savetxt(path, np.column_stack([r, g]))
    return str(path)


def cg_argon():
    """A CGPotential whose learned part is the spline (empty prior)."""
    from biojax.cg.potential import CGPotential

    return CGPotential(learned=spline_argon())


def test_anchor_gradient_is_added_to_the_reweighting_gradient(tmp_path):
    from biojax.cg.trainer import train_by_reweighting

    cfg = _tiny_config(rdf_file=_rdf_file(tmp_path), iterations=1, optimizer="sgd",
                       learning_rate=0.01)
    quiet = lambda *a: None  # noqa: E731
    v = jnp.asarray(np.random.default_rng(1).normal(size=spline_argon().params[
        "energies"].shape), jnp.float32)
    seen = []

    def anchor(params, update):  # linear in the parameters: its gradient is v
        seen.append(update)
        return jnp.sum(params["energies"] * v)

    plain = train_by_reweighting(cg_argon(), argon(), cfg, tmp_path / "plain", log=quiet)
    fused = train_by_reweighting(cg_argon(), argon(), cfg, tmp_path / "fused", log=quiet,
                                 anchor=anchor)
    assert seen == [0]
    np.testing.assert_allclose(np.asarray(fused["params"]["energies"]),
                               np.asarray(plain["params"]["energies"]) - 0.01 * np.asarray(v),
                               atol=1e-6)
    row = fused["metrics"][0]
    p0 = np.asarray(spline_argon().params["energies"])
    assert row["anchor"] == pytest.approx(float(np.sum(p0 * np.asarray(v))), rel=1e-5)
    assert row["loss"] == pytest.approx(plain["metrics"][0]["loss"] + row["anchor"], rel=1e-5)


def test_trainer_resume_after_kill_matches_uninterrupted_run(tmp_path):
    from biojax.cg.potential import CGPotential, load_cg_potential
    from biojax.cg.trainer import train_by_reweighting

    cfg = _tiny_config(rdf_file=_rdf_file(tmp_path))
    quiet = lambda *a: None  # noqa: E731
    full = train_by_reweighting(cg_argon(), argon(), cfg, tmp_path / "full", log=quiet)
    assert isinstance(full["model"], CGPotential)
    assert full["completed"] and len(full["metrics"]) == 4
    resampled = [r["resampled"] for r in full["metrics"]]
    assert resampled[1] and not all(resampled)  # both paths taken, a resample after 1
    # "killed" after the first update, then resumed in a new call: it reloads the saved
    # trajectory, finds N_eff too low and samples on from the saved sampler state
    part = train_by_reweighting(cg_argon(), argon(), cfg, tmp_path / "part", log=quiet,
                                stop_after=1)
    assert not part["completed"] and part["iteration"] == 1
    with pytest.raises(ConfigError, match="earlier reweighting run"):
        train_by_reweighting(cg_argon(), argon(), cfg, tmp_path / "part", log=quiet)
    rest = train_by_reweighting(cg_argon(), argon(), cfg, tmp_path / "part", log=quiet,
                                resume=True)
    assert rest["completed"]
    np.testing.assert_array_equal(np.asarray(full["params"]["energies"]),
                                  np.asarray(rest["params"]["energies"]))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa
    assert strip(rest["metrics"]) == strip(full["metrics"])
    with open(tmp_path / "part" / "metrics.jsonl") as f:
        assert [json.loads(line)["iteration"] for line in f] == [1, 2, 3, 4]
    saved = load_cg_potential(tmp_path / "part" / "potential")
    np.testing.assert_array_equal(np.asarray(saved.params["energies"]),
                                  np.asarray(rest["params"]["energies"]))
    # a changed setting is refused on resume
    changed = _tiny_config(rdf_file=_rdf_file(tmp_path), learning_rate=0.02)
    with pytest.raises(ConfigError, match="learning_rate"):
        train_by_reweighting(cg_argon(), argon(), changed, tmp_path / "part",
                             log=quiet, resume=True)
