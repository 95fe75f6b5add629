"""Training and data commands fail loudly and lose nothing: one test per fixed behaviour.

CLI cases go through ``biojax.cli.main`` and check exit status 1, a message naming the
problem, no traceback, and that every file written before the failure is byte-identical
afterwards. Runs are tiny (SchNet, 8 features, 16 frames) so the whole file stays well
under two minutes.
"""

import json
import os
import shutil
import textwrap

import numpy as np
import pytest

from biojax.cli import main as cli
from biojax.core.errors import DataError, ModelError
from helpers import snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU_RECIPE = os.path.join(ROOT, "examples", "data", "recipes", "cu_emt.toml")

CONFIG = """
[data]
train_file = "{train}"
isolated_atoms = "{isolated}"
n_train = 16
n_valid = 8
seed = 1

[model]
name = "schnet"
cutoff = 4.0
features = 8
n_interactions = 1

[training]
epochs = {epochs}
batch_size = 4
learning_rate = 3e-3
forces_weight = 100.0
seed = 2
"""


# ------------------------------------------------------------------------- helpers


def fails(capsys, argv, *messages, keep=None) -> str:
    """Run the CLI; assert exit status 1, each message in stderr, no traceback and (with
    ``keep``, a folder) every file there byte-identical afterwards."""
    before = snapshot(keep) if keep else None
    capsys.readouterr()
    code = cli([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, (code, err)
    for message in messages:
        assert message in err, (message, err)
    assert "Traceback" not in err, err
    if keep:
        assert snapshot(keep) == before
    return err


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data(tmp_path_factory, ethanol_train):
    """40 ethanol frames (the first of the rMD17 training file) in a small file."""
    from ase.io import read, write

    folder = tmp_path_factory.mktemp("data")
    write(folder / "train.xyz", read(ethanol_train, index=":40"))
    return folder


@pytest.fixture(scope="module")
def config(data, ethanol_isolated):
    path = data / "c.toml"
    path.write_text(CONFIG.format(train=data / "train.xyz", isolated=ethanol_isolated,
                                  epochs=3))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, config):
    """A finished 3-epoch run (copy it before changing anything)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert cli(["train", str(config), "--out", str(run), "--quiet"]) == 0
    return run


def copy_run(trained, tmp_path, name="run"):
    return shutil.copytree(trained, tmp_path / name)


# ------------------------------------------------------------------------- A: outputs
def test_a_locked_run_directory_is_refused_naming_its_holder(trained, config, tmp_path,
                                                             capsys):
    assert not (trained / ".biojax.lock").exists()  # released after the run
    run = copy_run(trained, tmp_path)
    import socket
    (run / ".biojax.lock").write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-11-30 10:00:00",
         "command": "biojax train c.toml"}))
    fails(capsys, ["train", config, "--out", run, "--resume", "--quiet"],
          f"is in use by process {os.getpid()}", "biojax train c.toml", keep=run)


def test_train_never_overwrites_results(trained, config, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    fails(capsys, ["train", config, "--out", run, "--quiet"], "already holds a training run",
          "--resume", keep=run)
    os.remove(run / "checkpoint.msgpack")  # results without a checkpoint: nothing to resume
    fails(capsys, ["train", config, "--out", run, "--resume", "--quiet"],
          "no checkpoint.msgpack to resume from", keep=run)
    (tmp_path / "file").write_text("mine\n")
    fails(capsys, ["train", config, "--out", tmp_path / "file", "--quiet"],
          "is an existing file, not a folder", keep=tmp_path)


@pytest.mark.parametrize("command", ["label", "evaluate", "sample"])
def test_output_path_is_checked_before_any_work(command, trained, data, tmp_path, capsys):
    (tmp_path / "out.txt").write_text("earlier results\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")

    def argv(out):
        # inputs that would fail if the work started: the output check must come first
        if command == "label":
            return ["label", tmp_path / "missing.xyz", out, "--reference", "emt"]
        if command == "evaluate":
            return ["evaluate", tmp_path / "missing_model", data / "train.xyz", "--json", out]
        return ["sample", CU_RECIPE, "--out", out, "--frames", "1", "--quiet"]

    fails(capsys, argv(tmp_path / "out.txt"), "out.txt already exists", "--overwrite",
          keep=tmp_path)
    fails(capsys, argv(tmp_path / "folder"), "is a folder", keep=tmp_path)
    fails(capsys, argv(tmp_path / "afile" / "out.txt"), "is a file, not a folder",
          keep=tmp_path)


def test_overwrite_flag_replaces_an_existing_output(trained, data, tmp_path, capsys):
    from ase.io import read, write

    frames = read(data / "train.xyz", index=":2")
    for a in frames:
        a.calc = None
    write(tmp_path / "in.xyz", frames)
    for argv in (["label", tmp_path / "in.xyz", tmp_path / "out.txt", "--reference", "emt",
                  "--quiet"],
                 ["evaluate", trained / "model", data / "train.xyz", "--quiet", "--json",
                  tmp_path / "out.txt"]):
        (tmp_path / "out.txt").write_text("earlier results\n")
        assert cli([str(a) for a in argv] + ["--overwrite"]) == 0
        assert (tmp_path / "out.txt").read_text() != "earlier results\n"


# ------------------------------------------------------------------------- B: resume
def test_resume_accepts_more_epochs_patience_and_budget(trained, config, tmp_path, capsys):
    runs = [copy_run(trained, tmp_path, f"run{i}") for i in range(2)]
    for run in runs:
        capsys.readouterr()
        assert cli(["train", str(config), "--out", str(run), "--resume", "--quiet",
                    "--set", "training.epochs=5", "--set", "training.patience=50",
                    "--max-minutes", "30"]) == 0
    out = capsys.readouterr().out
    assert "resume: training.epochs was 3, now 5" in out
    assert "resume: training.patience was 30, now 50" in out
    assert "resume: training.max_minutes was 0.0, now 30.0" in out
    log = records(runs[0] / "metrics.jsonl")
    assert [r["epoch"] for r in log] == [0, 1, 2, 3, 4, 5]
    # the schedule is that of the new epoch count (documented): a fresh 5-epoch run has
    # the same rates in epochs 4 and 5; the 3-epoch schedule would have ended at its floor
    fresh = tmp_path / "fresh"
    assert cli(["train", str(config), "--out", str(fresh), "--quiet",
                "--set", "training.epochs=5"]) == 0
    rates = [r["learning_rate"] for r in log[1:]]
    fresh_rates = [r["learning_rate"] for r in records(fresh / "metrics.jsonl")[1:]]
    assert rates[3:] == fresh_rates[3:]
    from biojax.train import schedule
    from biojax.train.config import load_train_config
    old = load_train_config(config).training  # 16 frames / batch 4: 4 steps per epoch
    assert schedule.learning_rate({"kind": "cosine"}, old, 12, 4) == pytest.approx(6e-5)
    assert rates[3] > 1e-3
    # a budget given on resume does not switch a cosine run to the plateau rule
    assert json.loads((runs[0] / "metrics.json").read_text())["schedule"] == "cosine"
    # deterministic: the same resume twice gives the same bytes
    assert ((runs[0] / "model" / "params.msgpack").read_bytes()
            == (runs[1] / "model" / "params.msgpack").read_bytes())


def test_resume_refuses_a_changed_setting_naming_it(trained, config, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    fails(capsys, ["train", config, "--out", run, "--resume", "--set",
                   "training.learning_rate=0.002"],
          "cannot resume: training.learning_rate was 0.003, now 0.002", keep=run)
    fails(capsys, ["train", config, "--out", run, "--resume", "--set", "model.features=16"],
          "model.features was 8, now 16", keep=run)


def test_resume_allows_another_test_set_but_not_other_training_frames(
        trained, config, data, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    err = fails(capsys, ["train", config, "--out", run, "--resume", "--set", "data.n_test=4"],
                "cannot resume: the train frames differ", "data.n_test (was null, now 4.0)",
                keep=run)
    assert "Traceback" not in err
    from ase.io import read, write
    write(tmp_path / "test.xyz", read(data / "train.xyz", index="30:40"))
    assert cli(["train", str(config), "--out", str(run), "--resume", "--quiet",
                "--set", f'data.test_file="{tmp_path / "test.xyz"}"']) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_test"] == 10 and "test" in metrics
    assert ((run / "model" / "params.msgpack").read_bytes()
            == (trained / "model" / "params.msgpack").read_bytes())


# ------------------------------------------------------------------------- C: corrupt input
def test_truncated_checkpoint_is_a_clear_error(trained, config, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    ckpt = run / "checkpoint.msgpack"
    blob = ckpt.read_bytes()
    ckpt.write_bytes(blob[:len(blob) // 2])
    fails(capsys, ["train", config, "--out", run, "--resume", "--quiet"],
          "checkpoint.msgpack: cannot be read", "truncated or corrupt",
          f"the best model so far is kept in {run / 'model'}", keep=run)


def test_model_settings_that_disagree_with_parameters_are_a_model_error(
        trained, data, tmp_path, capsys):
    from flax import serialization

    from biojax.nn.io import load_potential

    model = shutil.copytree(trained / "model", tmp_path / "model")
    meta = json.loads((model / "potential.json").read_text())
    meta["architecture"]["features"] = 16
    (model / "potential.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model: potential.json and params.msgpack disagree"
                                         r": parameter .* has shape \(.*8.*\) but the "
                                         r"recorded architecture .* needs \(.*16.*\)"):
        load_potential(model)
    fails(capsys, ["evaluate", model, data / "train.xyz", "--quiet"], "disagree",
          keep=tmp_path)
    # a renamed parameter
    shutil.copy(trained / "model" / "potential.json", model / "potential.json")
    params = serialization.msgpack_restore((model / "params.msgpack").read_bytes())
    inner = params["params"]
    first = sorted(inner)[0]
    inner[first + "_renamed"] = inner.pop(first)
    (model / "params.msgpack").write_bytes(serialization.msgpack_serialize(params))
    with pytest.raises(ModelError, match=f"params/{first}/.* missing from the parameter "
                                         f"file.*unexpected parameter.*{first}_renamed"):
        load_potential(model)


def test_label_failure_keeps_labelled_frames_and_resume_completes(data, tmp_path, capsys,
                                                                   monkeypatch):
    from ase.io import read, write

    frames = read(data / "train.xyz", index=":6")
    for a in frames:
        a.calc = None
    write(tmp_path / "in.xyz", frames)
    (tmp_path / "flaky_engine.py").write_text(textwrap.dedent("""
        import os
        from ase.calculators.emt import EMT

        calls = [0]

        class Flaky(EMT):
            def calculate(self, *args, **kwargs):
                calls[0] += 1
                if os.path.exists(os.environ["FLAKY_FLAG"]) and calls[0] == 4:
                    raise RuntimeError("SCF did not converge")
                super().calculate(*args, **kwargs)

        def make(base_dir=None, **options):
            return Flaky()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FLAKY_FLAG", str(tmp_path / "flag"))
    (tmp_path / "flag").write_text("fail")
    out, partial = tmp_path / "out.extxyz", tmp_path / "out.extxyz.partial"
    argv = ["label", tmp_path / "in.xyz", out, "--reference", "flaky_engine:make", "--quiet"]
    fails(capsys, argv, "frame 3: reference calculation failed", "SCF did not converge",
          "the 3 frames labelled before it are kept in", "--resume")
    assert not out.exists() and len(read(partial, index=":", format="extxyz")) == 3
    kept = partial.read_bytes()
    fails(capsys, argv, "holds 3 frames labelled by an interrupted run", "--resume",
          keep=tmp_path)
    os.remove(tmp_path / "flag")
    assert cli([str(a) for a in argv] + ["--resume"]) == 0
    assert "(3 of them by an earlier run)" in capsys.readouterr().out
    assert not partial.exists() and out.read_bytes().startswith(kept)
    straight = tmp_path / "straight.extxyz"
    assert cli([str(a) for a in argv[:2]] + [str(straight)] + [str(a) for a in argv[3:]]) == 0
    assert out.read_bytes() == straight.read_bytes()


def test_label_resume_redoes_a_frame_cut_short_by_a_kill(data, tmp_path, capsys):
    from ase.io import read, write

    frames = read(data / "train.xyz", index=":4")
    for a in frames:
        a.calc = None
    write(tmp_path / "in.xyz", frames)
    straight = tmp_path / "straight.extxyz"
    assert cli(["label", str(tmp_path / "in.xyz"), str(straight), "--reference", "emt",
                "--quiet"]) == 0
    text = straight.read_bytes()
    frame_len = len(text) // 4  # frames of one molecule have (nearly) equal lengths
    cut = text[:text.index(b"\n9\n", 2 * frame_len - 50) + 1] + text[2 * frame_len:][:100]
    out = tmp_path / "out.extxyz"
    (tmp_path / "out.extxyz.partial").write_bytes(cut)  # 2 whole frames and a torn one
    assert cli(["label", str(tmp_path / "in.xyz"), str(out), "--reference", "emt", "--quiet",
                "--resume"]) == 0
    assert "(2 of them by an earlier run)" in capsys.readouterr().out
    assert out.read_bytes() == text
    # a partial file from another input is refused
    write(tmp_path / "other.xyz", frames[2:])
    (tmp_path / "o.extxyz.partial").write_bytes(cut)
    fails(capsys, ["label", tmp_path / "other.xyz", tmp_path / "o.extxyz", "--reference",
                   "emt", "--resume"], "frame 0 is not frame 0 of the input", keep=tmp_path)


# ------------------------------------------------------------------------- D: messages
def test_nan_labels_are_rejected_naming_file_and_frame(data, config, tmp_path, capsys):
    from ase.io import read, write

    from biojax.data.io import read_dataset

    frames = read(data / "train.xyz", index=":30")
    frames[2].calc.results["energy"] = float("nan")
    write(tmp_path / "nan_energy.xyz", frames)
    with pytest.raises(DataError, match=r"nan_energy.xyz frame 2: energy label is nan"):
        read_dataset(tmp_path / "nan_energy.xyz")
    frames = read(data / "train.xyz", index=":30")
    frames[4].calc.results["forces"][5, 1] = float("inf")
    write(tmp_path / "inf_forces.xyz", frames)
    with pytest.raises(DataError, match=r"inf_forces.xyz frame 4: force label of atom\(s\) 5 "
                                        r"is NaN or infinite"):
        read_dataset(tmp_path / "inf_forces.xyz")
    R = np.stack([a.positions for a in frames])
    E = np.zeros(len(frames))
    E[1] = np.nan
    np.savez(tmp_path / "md17.npz", R=R, z=frames[0].numbers, E=E, F=np.zeros_like(R))
    with pytest.raises(DataError, match=r"md17.npz frame 1: energy label is nan"):
        read_dataset(tmp_path / "md17.npz")
    # an extra label a user loss term reads (e.g. a dipole) is checked when it is required
    from biojax.data.io import require_labels
    frames = read(data / "train.xyz", index=":3")
    for k, a in enumerate(frames):
        a.info["ref_dipole"] = np.array([0.1, np.nan if k == 1 else 0.2, 0.0])
    write(tmp_path / "dipoles.xyz", frames)
    with pytest.raises(DataError, match=r"dipoles.xyz frame 1: label 'ref_dipole' is NaN"):
        require_labels(read_dataset(tmp_path / "dipoles.xyz"), str(tmp_path / "dipoles.xyz"),
                       True, True, False, ["ref_dipole"])
    err = fails(capsys, ["train", config, "--train-file", tmp_path / "nan_energy.xyz",
                         "--out", tmp_path / "run", "--quiet"],
                "nan_energy.xyz frame 2: energy label is nan")
    assert "diverged" not in err and not (tmp_path / "run" / "model").exists()


def test_missing_label_is_named_by_its_index_in_the_file(data, config, tmp_path):
    from ase.io import read, write

    from biojax.data.io import split_indices
    from biojax.train.config import load_train_config
    from biojax.train.loop import load_splits

    frames = read(data / "train.xyz", index=":30")
    frames[7].calc = None
    frames[7].info["energy"] = -4200.0  # energy but no forces
    write(tmp_path / "t.xyz", frames)
    cfg = load_train_config(config, [f'data.train_file="{tmp_path / "t.xyz"}"',
                                     "data.n_train=0"])
    train, valid, _ = split_indices(30, 8, 0, 1)
    where = [list(s).index(7) for s in (train, valid) if 7 in s][0]
    assert where != 7  # the position in the shuffled split is not the index in the file
    with pytest.raises(DataError, match=r"t.xyz frame 7: no forces"):
        load_splits(cfg, log=lambda msg: None)


# ------------------------------------------------------------------------- E: recipe
def test_valid_file_means_every_training_frame_is_trained_on(data, config, tmp_path):
    from ase.io import read, write

    from biojax.train.config import load_train_config
    from biojax.train.loop import load_splits

    write(tmp_path / "valid.xyz", read(data / "train.xyz", index="30:40"))
    write(tmp_path / "t.xyz", read(data / "train.xyz", index=":30"))
    base = [f'data.train_file="{tmp_path / "t.xyz"}"', "data.n_train=0",
            f'data.valid_file="{tmp_path / "valid.xyz"}"']
    logged = []
    splits = load_splits(load_train_config(config, base), log=logged.append)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [30, 10, 0]
    assert f"30 training frames of {tmp_path / 't.xyz'} (30 frames; all used)" in logged[0]
    assert f"10 validation frames from {tmp_path / 'valid.xyz'}" in logged[1]
    assert "no test set" in logged[2]
    # n_test given explicitly still holds test frames out of the training file
    logged.clear()
    splits = load_splits(load_train_config(config, base + ["data.n_test=5"]),
                         log=logged.append)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [25, 10, 5]
    assert "held out: 5 for test (n_test = 5)" in logged[0]
    assert f"5 test frames split from {tmp_path / 't.xyz'}" in logged[2]
    # extra_train_files: every frame trained on, after train_file's; a frame lacking a
    # label is named in its own file
    extra = read(data / "train.xyz", index=":4")
    write(tmp_path / "extra.xyz", extra)
    logged.clear()
    splits = load_splits(load_train_config(config, base + [
        f'data.extra_train_files=["{tmp_path / "extra.xyz"}"]']), log=logged.append)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [34, 10, 0]
    np.testing.assert_allclose(splits["train"][-1].positions, extra[-1].positions)
    assert f"4 more training frames of {tmp_path / 'extra.xyz'}" in logged[-1]
    extra[2].calc = None
    write(tmp_path / "extra.xyz", extra)
    with pytest.raises(DataError, match=r"extra.xyz frame 2: no "):
        load_splits(load_train_config(config, base + [
            f'data.extra_train_files=["{tmp_path / "extra.xyz"}"]']), log=logged.append)


def test_learning_rate_schedules():
    from biojax.train import schedule
    from biojax.train.config import TrainingConfig

    budget = TrainingConfig(epochs=1000, max_minutes=10, learning_rate=1e-2,
                            warmup_epochs=1, plateau_patience=2, plateau_factor=0.5,
                            final_learning_rate_fraction=0.2)
    state = schedule.new_state(budget)
    assert state["kind"] == "plateau"  # "auto" under a budget
    assert schedule.learning_rate(state, budget, 5, 10) < 1e-2  # warm-up (10 steps/epoch)
    assert schedule.learning_rate(state, budget, 10, 10) == 1e-2
    events = [schedule.after_epoch(state, budget, improved, 100, 10)
              for improved in (True, False, False, True, False, False, False, False)]
    assert [e is not None for e in events] == [False, False, True, False, False, True,
                                               False, True]
    assert state["lr"] == 2e-3  # 1e-2 · 0.5³ = 1.25e-3 would be below the floor
    assert schedule.after_epoch(state, budget, False, 100, 10) is None
    assert schedule.after_epoch(state, budget, False, 100, 10) is None  # stays at the floor
    assert schedule.learning_rate(state, budget, 5000, 10) == 2e-3
    # cosine over epochs when there is no budget; over the elapsed budget with "time"
    plain = TrainingConfig(epochs=10, learning_rate=1e-2, warmup_epochs=1,
                           final_learning_rate_fraction=0.2)
    cos = schedule.new_state(plain)
    assert cos["kind"] == "cosine"
    assert schedule.learning_rate(cos, plain, 55, 10) == pytest.approx(6e-3)  # half-way
    assert schedule.learning_rate(cos, plain, 100, 10) == pytest.approx(2e-3)
    timed = TrainingConfig(epochs=10, max_minutes=1, schedule="time", learning_rate=1e-2,
                           warmup_epochs=1, final_learning_rate_fraction=0.2)
    t = schedule.new_state(timed)
    assert schedule.learning_rate(t, timed, 20, 10, elapsed_fraction=0.5) == pytest.approx(6e-3)


def test_a_time_budget_trains_on_the_plateau_rule(config, tmp_path):
    run = tmp_path / "run"
    assert cli(["train", str(config), "--out", str(run), "--quiet", "--max-minutes", "5",
                "--set", "training.epochs=4", "--set", "training.warmup_epochs=1"]) == 0
    assert json.loads((run / "metrics.json").read_text())["schedule"] == "plateau"
    rates = [r["learning_rate"] for r in records(run / "metrics.jsonl")[1:]]
    assert rates[0] < 3e-3 and rates[1:] == [3e-3] * 3  # warm-up, then the peak


# ------------------------------------------------------------------------- F, G
def test_plots_after_training(trained, monkeypatch):
    for name in ("training_curves.png", "force_parity.png"):
        blob = (trained / name).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000
    from biojax.train import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.training_curves(records(trained / "metrics.jsonl"), "unused.png")
    plots.force_parity(np.array([-1.0, 0.5, 2.0]), np.array([-0.8, 0.4, 2.3]), 12.3,
                       "validation set, 8 structures", "unused.png")
    curves, parity = (fig.axes for fig in figures)
    assert [ax.get_xlabel() for ax in curves] == ["epoch"] * 3
    assert [ax.get_yscale() for ax in curves] == ["log"] * 3
    assert "meV" in curves[1].get_ylabel() and "meV/Å" in curves[2].get_ylabel()
    assert {line.get_label() for line in curves[0].get_lines()} == {"training", "validation"}
    (ax,) = parity
    assert "eV/Å" in ax.get_xlabel() and "eV/Å" in ax.get_ylabel()
    assert "MAE 12.30 meV/Å" in ax.get_title()
    assert any(line.get_label() == "y = x" for line in ax.get_lines())


def test_evaluate_shows_progress(trained, data, capsys):
    capsys.readouterr()
    assert cli(["evaluate", str(trained / "model"), str(data / "train.xyz")]) == 0
    err = capsys.readouterr().err
    assert "evaluate" in err and "40/40" in err, err
