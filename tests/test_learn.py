"""The active-learning loop (biojax learn): a run killed between steps and resumed gives
the same data sets, selections and final model as an uninterrupted run (same seed), and
bad configurations are refused up front with errors naming the key. (Stopping only the
uncertain replica and a labeller failing on one structure: tests/test_uncertainty.py.)"""

import json
import os

import ase
import ase.io
import jax
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from biojax.core.errors import ConfigError
from biojax.learn.config import config_from_dict, load_learn_config
from biojax.learn.loop import _Stop, run


@pytest.fixture(scope="module")
def cu4(tmp_path_factory):
    """Ten rattled Cu4 tetrahedra labelled with ASE's EMT (eV, eV/Å)."""
    rng = np.random.default_rng(0)
    base = np.array([[0, 0, 0], [2.5, 0, 0], [1.25, 2.1, 0], [1.25, 0.7, 2.0]])
    frames = []
    for _ in range(10):
        a = ase.Atoms("Cu4", positions=base + rng.normal(0, 0.05, (4, 3)))
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        frames.append(a)
    path = str(tmp_path_factory.mktemp("cu4") / "cu4.extxyz")
    ase.io.write(path, frames)
    return path


def _config(initial, **changes):
    d = {"data": {"initial": initial, "n_valid": 2},
         "model": {"name": "painn", "cutoff": 4.0, "features": 8, "n_interactions": 1,
                   "n_basis": 6},
         "training": {"ensemble": 2, "epochs": 1, "batch_size": 4},
         "md": {"temperatures": [400.0], "replicas": 2, "steps": 10, "chunk_steps": 10,
                "observe_every": 5, "frame_every": 5, "timestep_fs": 1.0},
         "uncertainty": {"policy": "flag", "threshold": 1e-4},
         "select": {"per_iteration": 2},
         "label": {"engine": "emt", "workers": 0},
         "loop": {"iterations": 2, "label_budget": 4}}
    for key, value in changes.items():
        table, name = key.split(".")
        d[table][name] = value
    return d


def _params(folder):
    from biojax.nn.io import load_potential

    return jax.tree_util.tree_leaves(load_potential(os.path.join(folder, "model")).params)


@pytest.fixture
def compile_cache(tmp_path):
    """JAX's persistent compilation cache in tmp_path for one test: the second run's
    programs (and iteration 1's, same shapes) load instead of compiling again (this test
    checks results, not compilation); restored afterwards."""
    from jax._src import compilation_cache as cc

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    cc.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    cc.reset_cache()


def test_a_resumed_loop_equals_an_uninterrupted_one(cu4, tmp_path, compile_cache):
    cfg = config_from_dict(_config(cu4))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    res_a = run(cfg, a, log=lambda *_: None)
    assert res_a["stop_reason"] == "2 iteration(s) done" and res_a["labels"] == 2
    # killed after the MD of iteration 0, then after the labels, then resumed to the end
    with pytest.raises(_Stop):
        run(cfg, b, log=lambda *_: None, stop_after=(0, "md"))
    with pytest.raises(ConfigError, match="already holds"):
        run(cfg, b, log=lambda *_: None)  # without resume: refused, nothing touched
    with pytest.raises(_Stop):
        run(cfg, b, resume=True, log=lambda *_: None, stop_after=(0, "label"))
    assert not os.path.exists(os.path.join(b, "iter_001"))
    res_b = run(cfg, b, resume=True, log=lambda *_: None)
    assert {k: v for k, v in res_a.items() if k not in ("elapsed_s", "final_model")} == \
        {k: v for k, v in res_b.items() if k not in ("elapsed_s", "final_model")}
    for name in ("iter_000/selection.json", "iter_000/failures.json"):
        assert open(os.path.join(a, name)).read() == open(os.path.join(b, name)).read()
    da = ase.io.read(os.path.join(a, "iter_001", "dataset.extxyz"), ":")
    db = ase.io.read(os.path.join(b, "iter_001", "dataset.extxyz"), ":")
    assert len(da) == len(db) == 12  # 10 initial + 2 labelled
    for x, y in zip(da, db):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert x.get_potential_energy() == y.get_potential_energy()
    # the labels are EMT's on the selected MD frames, not the model's energies
    sel = ase.io.read(os.path.join(a, "iter_000", "selected.extxyz"), ":")
    ref = sel[0].copy()
    ref.calc = EMT()
    np.testing.assert_allclose(da[10].get_forces(), ref.get_forces(), atol=1e-6)
    for x, y in zip(_params(os.path.join(a, "iter_001", "train")),
                    _params(os.path.join(b, "iter_001", "train"))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    log = [json.loads(x) for x in open(os.path.join(b, "log.jsonl"))]
    assert [h["iteration"] for h in log] == [0, 1]  # one line per iteration, no duplicates
    assert [h["labels_before"] for h in log] == [0, 2]
    assert os.path.exists(os.path.join(b, "learning_curve.png"))
    # a changed configuration is refused on resume, except the stopping rule
    with pytest.raises(ConfigError, match="configuration changed.*select.method"):
        run(config_from_dict(_config(cu4, **{"select.method": "kmeans"})), b, resume=True)
    shorter = run(config_from_dict(_config(cu4, **{"loop.iterations": 1})), b, resume=True,
                  log=lambda *_: None)
    assert shorter["stop_reason"] == "1 iteration(s) done" and shorter["labels"] == 0


@pytest.mark.parametrize("table, key, value, match", [
    ("uncertainty", "threshold", 0.0, "threshold must be > 0"),
    ("uncertainty", "threshold", -0.1, "threshold must be > 0"),
    ("loop", "label_budget", 1, "label_budget = 1 is smaller than one selection batch"),
    ("loop", "itterations", 3, "unknown key.*'itterations'"),
    ("md", "temperature_K", 300.0, r"\[md\] temperature_K: set by the learning loop"),
    ("md", "stepz", 10, r"\[md\].*unknown key.*'stepz'"),
    ("md", "temperatures", [300.0, -5.0], "temperatures must be a list of temperatures > 0"),
    ("training", "ensemble", 1, "needs an ensemble"),
    ("label", "engine", "nonsense", r"\[label\]"),
    ("select", "method", "best", "select.*method"),
])
def test_bad_learn_configs_are_refused_up_front_naming_the_key(cu4, tmp_path, table, key,
                                                              value, match):
    d = _config(os.path.basename(cu4), **{f"{table}.{key}": value})
    path = tmp_path / "learn.toml"
    path.write_text("".join(f"[{t}]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                   for k, v in kv.items())
                            for t, kv in d.items()))
    os.symlink(cu4, tmp_path / os.path.basename(cu4))
    with pytest.raises(ConfigError, match=match):
        load_learn_config(path)


def test_learn_cli_prints_one_line_errors(cu4, tmp_path, capsys):
    from biojax.cli import main

    path = tmp_path / "learn.toml"
    path.write_text(f'[data]\ninitial = "{cu4}"\n[uncertainty]\npolicy = "stop"\n')
    assert main(["learn", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("biojax learn: error:") and "threshold" in err


def test_frames_flagged_after_a_blow_up_are_not_candidates(cu4, tmp_path):
    """A run that blows up keeps its trajectory frames before the blow-up, but the
    uncertainty hook has already flagged that chunk's frames, the exploded ones too: the
    pool keeps only candidates up to the last trajectory frame written."""
    from biojax.learn.loop import Learner, _mark

    learner = Learner(config_from_dict(_config(cu4)), str(tmp_path))
    folder = tmp_path / "iter_000"
    md = folder / "md" / "T400"
    base = ase.io.read(cu4, 0)
    for r in range(2):
        os.makedirs(md / f"replica_{r:03d}")
        frames = [base.copy() for _ in range(2)]
        for a, step in zip(frames, (5, 10)):
            a.info["step"] = step
        ase.io.write(md / f"replica_{r:03d}" / "trajectory.extxyz", frames)
    flagged = [base.copy() for _ in range(3)]
    for a, step in zip(flagged, (5, 10, 15)):
        a.info.update(step=step, replica=1, force_uncertainty=2.0)
    ase.io.write(md / "candidates.extxyz", flagged)
    _mark(str(folder), "md_T400", {"blew_up": "replica 1: simulation blew up at step 15"})
    assert [a.info["step"] for a in learner._pool(str(folder))] == [5, 10]
    _mark(str(folder), "md_T400", {"blew_up": None})  # no blow-up: every flagged frame
    assert [a.info["step"] for a in learner._pool(str(folder))] == [5, 10, 15]


def test_the_upper_trust_bound_keeps_extreme_candidates_out_unless_too_few(cu4, tmp_path):
    """[select] max_uncertainty: candidates above it are taken only to fill up a batch,
    the least uncertain first."""
    from biojax.learn.loop import Learner

    base = ase.io.read(cu4, 0)
    flagged = [base.copy() for _ in range(4)]
    for a, (step, sig) in zip(flagged, ((5, 0.6), (10, 5.0), (15, 1.0), (20, 3.0))):
        a.info.update(step=step, replica=0, force_uncertainty=sig)
    folder = tmp_path / "iter_000"
    os.makedirs(folder / "md" / "T400")
    ase.io.write(folder / "md" / "T400" / "candidates.extxyz", flagged)
    for k, expected in ((2, [0.6, 1.0]), (3, [0.6, 1.0, 3.0])):
        cfg = config_from_dict(_config(cu4, **{"select.method": "random",
                                               "select.per_iteration": k,
                                               "select.max_uncertainty": 2.0}))
        out = Learner(cfg, str(tmp_path)).step_select(0, str(folder), budget=10)
        sel = ase.io.read(folder / "selected.extxyz", ":")
        assert sorted(a.info["force_uncertainty"] for a in sel) == expected
        assert out["above_max_uncertainty"] == 2
    with pytest.raises(ConfigError, match="max_uncertainty = 1e-05 needs pool"):
        config_from_dict(_config(cu4, **{"select.max_uncertainty": 1e-5}))
