"""Training end to end on rMD17 ethanol: it learns, it resumes identically after a kill,
and bad input gets clear errors (through the CLI, as users meet them)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from biojax.cli import main as cli
from biojax.nn.io import load_potential

CONFIG = """
[data]
train_file = "{train}"
isolated_atoms = "{isolated}"
n_train = {n_train}
n_valid = 40
seed = 1

[model]
name = "painn"
cutoff = 4.5
features = 24
n_interactions = 2

[training]
epochs = {epochs}
batch_size = 8
learning_rate = 3e-3
forces_weight = 100.0
seed = 2
"""


def write_config(tmp_path, ethanol_train, ethanol_isolated, epochs, n_train=160, name="c.toml",
                 extra=""):
    path = tmp_path / name
    path.write_text(CONFIG.format(train=ethanol_train, isolated=ethanol_isolated, epochs=epochs,
                                  n_train=n_train) + extra)
    return path


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_training_lowers_validation_force_error_several_fold(tmp_path, ethanol_train,
                                                             ethanol_isolated, capsys):
    config = write_config(tmp_path, ethanol_train, ethanol_isolated, epochs=12)
    assert cli(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "model: " in out and "epoch   12/12" in out
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    initial, final = log[0]["valid_forces_mae"], log[-1]["valid_forces_mae"]
    assert log[0]["epoch"] == 0 and log[-1]["epoch"] == 12
    assert final < initial / 4, (initial, final)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["valid"]["forces_mae"] == pytest.approx(
        min(r["valid_forces_mae"] for r in log[1:]), rel=0.05)
    # evaluate on the held-out test file through the CLI and its JSON output
    test_file = os.path.join(os.path.dirname(ethanol_train), "test_MD.xyz")
    sub = tmp_path / "test_sub.xyz"
    from ase.io import read, write
    write(sub, read(test_file, index=":50"))
    assert cli(["evaluate", str(tmp_path / "run" / "model"), str(sub),
                "--json", str(tmp_path / "eval.json")]) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["n_structures"] == 50
    assert evaluation["forces_mae"] < initial / 3
    assert "forces_mae" in capsys.readouterr().out


def test_bad_inputs_give_clear_errors(tmp_path, ethanol_train, ethanol_isolated, capsys):
    def error_of(argv):
        assert cli(argv) == 1
        return capsys.readouterr().err

    # unknown config key, with the valid keys listed
    bad_key = write_config(tmp_path, ethanol_train, ethanol_isolated, 1, name="k.toml")
    bad_key.write_text(bad_key.read_text().replace("batch_size", "batchsize"))
    err = error_of(["train", str(bad_key), "--out", str(tmp_path / "x")])
    assert "unknown key(s) 'batchsize'" in err and "batch_size" in err
    # missing data file
    good = write_config(tmp_path, ethanol_train, ethanol_isolated, 1, name="g.toml")
    err = error_of(["train", str(good), "--train-file", str(tmp_path / "none.xyz"),
                    "--out", str(tmp_path / "y")])
    assert "not found" in err
    # frames without forces while forces are weighted
    from ase.io import read, write
    frames = read(ethanol_train, index=":60")
    for a in frames:
        a.calc = None
        a.info["energy"] = -4200.0
    write(tmp_path / "noforces.xyz", frames)
    config = write_config(tmp_path, ethanol_train, ethanol_isolated, 1, n_train=10)
    err = error_of(["train", str(config), "--train-file", str(tmp_path / "noforces.xyz"),
                    "--out", str(tmp_path / "nf")])
    assert "no forces, but the force loss weight is > 0" in err
    # a trained model asked about an element it never saw
    run = tmp_path / "run"
    small = write_config(tmp_path, ethanol_train, ethanol_isolated, 1, n_train=16, name="s.toml")
    assert cli(["train", str(small), "--out", str(run)]) == 0
    capsys.readouterr()
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator
    thiol = molecule("CH3SH")
    thiol.calc = SinglePointCalculator(thiol, energy=0.0, forces=np.zeros((6, 3)))
    write(tmp_path / "thiol.xyz", thiol)
    err = error_of(["evaluate", str(run / "model"), str(tmp_path / "thiol.xyz")])
    assert "element(s) S not known to this model" in err
    # an existing run is not overwritten without --resume
    err = error_of(["train", str(small), "--out", str(run)])
    assert "already holds a training run" in err
    assert (run / "model" / "potential.json").exists()
    # a missing model directory
    err = error_of(["evaluate", str(tmp_path / "nomodel"), ethanol_train])
    assert "model directory not found" in err


def test_time_budget_stops_and_float64_option(tmp_path, ethanol_train, ethanol_isolated):
    config = write_config(tmp_path, ethanol_train, ethanol_isolated, epochs=50, n_train=16)
    assert cli(["train", str(config), "--out", str(tmp_path / "b"), "--max-minutes", "0.0001"]) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["stop_reason"] == "time budget" and metrics["epochs_run"] == 1
    # float64 switches JAX's global x64 flag, so run it in its own process
    f64 = write_config(tmp_path, ethanol_train, ethanol_isolated, epochs=1, n_train=16,
                       name="f64.toml")
    f64.write_text(f64.read_text().replace("seed = 2", 'seed = 2\nprecision = "float64"'))
    subprocess.run([sys.executable, "-m", "biojax.cli", "train", str(f64), "--out",
                    str(tmp_path / "f64")], check=True, capture_output=True)
    potential = load_potential(tmp_path / "f64" / "model")
    import jax
    assert {str(np.asarray(x).dtype) for x in jax.tree_util.tree_leaves(potential.params)} == {"float64"}
