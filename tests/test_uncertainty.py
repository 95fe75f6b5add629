"""Uncertainty: calibration recovers a known scale (biojax.learn.calibration), and the
[uncertainty] policy inside jitted MD stops only the replica whose ensemble force spread
crosses the threshold, keeping its frames up to that step (biojax.md.uncertainty)."""

import os

import ase
import ase.io
import jax
import numpy as np
import pytest

from biojax.core.errors import AnalysisError, ConfigError
from biojax.learn import calibration
from biojax.md.config import default_config
from biojax.md.output import read_observables
from biojax.md.simulation import Simulation
from biojax.nn.ensemble import make_ensemble
from biojax.nn.models import init_potential

ARCH = {"name": "painn", "features": 8, "n_interactions": 1, "n_basis": 6}


def test_calibration_recovers_a_known_scale_on_synthetic_gaussian_errors():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.05, 0.5, 4000)                    # per-atom σ, eV/Å
    errors = 2.5 * sigma[:, None] * rng.normal(size=(4000, 3))  # true scale 2.5
    s = calibration.fit_scale(sigma, errors)
    assert s == pytest.approx(2.5, rel=0.02)
    raw = calibration.miscalibration_area(sigma, errors, 1.0)
    fitted = calibration.miscalibration_area(sigma, errors, s)
    assert raw > 0.2 and fitted < 0.01
    x, y = calibration.calibration_curve(sigma, errors, s, n_bins=9)
    np.testing.assert_allclose(y, x, atol=0.02)  # on the diagonal once scaled
    # the rank correlation agrees with scipy's (ties included)
    from scipy.stats import spearmanr

    a, b = rng.normal(size=60), rng.normal(size=60)
    b[:10] = b[10:20]
    assert calibration.spearman(a, a + b) == pytest.approx(spearmanr(a, a + b).statistic)
    # per-structure σ that sets the error: high rank correlation; shuffled: none
    sig = np.repeat(rng.uniform(0.05, 0.5, 400), 10)
    err = sig[:, None] * rng.normal(size=(4000, 3))
    graph = np.repeat(np.arange(400), 10)
    assert calibration.report(sig, err, graph)["spearman_mean_sigma_vs_rmse"] > 0.9
    shuffled = np.repeat(rng.permutation(sig[::10]), 10)
    assert abs(calibration.report(shuffled, err, graph)["spearman_max_sigma_vs_rmse"]) < 0.15
    with pytest.raises(AnalysisError, match="<= 0"):
        calibration.fit_scale(np.zeros(3), np.ones((3, 3)))


@pytest.fixture(scope="module")
def ensemble_and_starts(ethanol_train):
    frames = ase.io.read(ethanol_train, ":40")
    members = [init_potential(ARCH, [1, 6, 8], 4.0, key=jax.random.PRNGKey(s), scale=0.5)
               for s in range(3)]
    # frames 26 and 15 have the lowest and highest spread of these random members
    # (0.113 and 0.212 eV/Å); the threshold lies between
    starts = [ase.Atoms(numbers=frames[i].numbers, positions=frames[i].positions)
              for i in (26, 15)]
    return make_ensemble(members), starts


def test_stop_policy_stops_only_the_uncertain_replica(ensemble_and_starts, tmp_path):
    ens, starts = ensemble_and_starts
    cfg = default_config(replicas=2, steps=40, chunk_steps=20, observe_every=10,
                         frame_every=10, temperature_K=10.0, timestep_fs=0.5, plots=False,
                         uncertainty={"policy": "stop", "threshold": 0.155})
    out = str(tmp_path / "md")
    summary = Simulation(starts, ens, cfg).run(out)
    assert summary["uncertainty"]["stopped_replicas"] == {"1": 10}
    assert summary["step"] == 40
    calm = read_observables(os.path.join(out, "replica_000"))
    hot = read_observables(os.path.join(out, "replica_001"))
    np.testing.assert_array_equal(calm["step"], [0, 10, 20, 30, 40])
    assert np.all(calm["force_uncertainty"] < 0.155)
    np.testing.assert_array_equal(hot["step"], [0, 10])  # up to the stop, nothing after
    assert hot["force_uncertainty"][-1] > 0.155
    traj = ase.io.read(os.path.join(out, "replica_001", "trajectory.extxyz"), ":")
    assert [a.info["step"] for a in traj] == [0, 10]
    assert len(ase.io.read(os.path.join(out, "replica_000", "trajectory.extxyz"), ":")) == 5
    cands = ase.io.read(os.path.join(out, "candidates.extxyz"), ":")
    assert [(a.info["replica"], a.info["step"]) for a in cands] == [(1, 10)]
    assert cands[0].info["force_uncertainty"] > 0.155
    np.testing.assert_allclose(cands[0].positions, traj[-1].positions, atol=1e-5)


def test_bad_uncertainty_settings_are_clear_errors(ensemble_and_starts):
    ens, starts = ensemble_and_starts
    for bad, match in (({"policy": "stop", "threshold": 0.0}, "threshold must be > 0"),
                       ({"policy": "flag", "threshold": -1.0}, "threshold must be > 0"),
                       ({"policy": "stop"}, "needs a threshold"),
                       ({"policy": "record", "scale": 0.0}, "scale must be > 0")):
        with pytest.raises(ConfigError, match=match):
            default_config(uncertainty=bad)
    single = ens.replace(model=ens.model.member,
                         params=jax.tree_util.tree_map(lambda x: x[0], ens.params))
    cfg = default_config(uncertainty={"policy": "record"})
    with pytest.raises(ConfigError, match="needs an ensemble"):
        Simulation(starts[0], single, cfg)


def test_farthest_point_selection_and_a_failing_label_is_recorded_not_fatal():
    from biojax.learn.select import farthest_point

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 0.1, (40, 2)), [[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]]])
    assert set(farthest_point(x, 3).tolist()) == {40, 41, 42}  # the three outliers
    # with the outliers already labelled, the next picks come from the cluster
    assert not set(farthest_point(x[:40], 2, reference=x[40:]).tolist()) & {40, 41, 42}

    from ase.build import bulk

    from biojax.learn.label import label_parallel

    frames = [bulk("Cu", cubic=True), bulk("Cu", cubic=True), bulk("Cu", cubic=True)]
    frames[1].set_chemical_symbols(["U"] * len(frames[1]))  # EMT knows no uranium
    frames[2].rattle(0.05, seed=0)
    done, failed = label_parallel(frames, "emt", workers=1)
    assert len(done) == 2 and [f["index"] for f in failed] == [1]
    assert "structure 1" in failed[0]["error"] and "U" in failed[0]["error"]
    from ase.calculators.emt import EMT

    ref = frames[2].copy()
    ref.calc = EMT()
    np.testing.assert_allclose(done[1].get_forces(), ref.get_forces(), atol=1e-10)
    with pytest.raises(ConfigError, match="unknown option"):
        label_parallel(frames, "emt", {"nonsense": 1})
