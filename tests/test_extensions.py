"""Extension points as a user meets them: a model and a loss term written outside biojax
(examples/custom_model/) train through the CLI, save, load, drive the ASE calculator and
MD; the built-in loss terms agree with NumPy on a hand-made padded batch; unknown names
are answered with the registered ones."""

import json
import os

import ase.io
import jax
import numpy as np
import pytest

from biojax.cli import main as cli
from biojax.core.errors import ConfigError, DataError
from biojax.data.graphs import GraphDataset, batch_graphs, find_edges
from biojax.data.io import Structure, read_dataset
from biojax.train import losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "custom_model")
ETHANOL = os.path.join(ROOT, "examples", "data", "rmd17_ethanol")
# fixed per-element charges (e) of a neutral ethanol: the "reference" dipole Σ q_i r_i
CHARGES = {1: 0.1, 6: -0.15, 8: -0.3}


@pytest.fixture
def example_on_path(monkeypatch):
    """examples/custom_model importable (as PYTHONPATH=examples/custom_model would do)."""
    monkeypatch.syspath_prepend(EXAMPLE)


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def read_csv(path) -> dict:
    data = np.genfromtxt(path, delimiter=",", names=True)
    return {k: data[k] for k in data.dtype.names}


# ------------------------------------------------------------------ a. user model
def test_user_model_trains_saves_loads_and_runs_md(tmp_path, example_on_path, capsys):
    """TinyNet (examples/custom_model/train.toml, cut down to 100 frames and 30 epochs) via
    the CLI: the validation force error falls several-fold, potential.json records the
    import path and hyperparameters, the loaded model's ASE forces equal −dE/dx by finite
    differences, the MD energy (pair neighbor lists) equals the calculator's, and 200 fs
    of NVE at 0.5 fs conserve energy: the total energy's fluctuation about its trend
    stays < 5% of the kinetic energy's and its drift over the run < 2% (measured: 0.010
    and 0.0015; velocity Verlet errors grow as dt², and at 1 fs the fluctuation is
    already 0.052, at 2 fs 0.32, so an O(dt) integrator error would fail)."""
    from biojax.calculator import BiojaxCalculator
    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn.io import load_potential

    run = tmp_path / "run"
    assert cli(["train", os.path.join(EXAMPLE, "train.toml"), "--out", str(run),
                "--set", "data.n_train=100", "--set", "data.n_valid=20",
                "--set", "training.epochs=30"]) == 0
    assert "epoch   30/30" in capsys.readouterr().out
    log = read_log(run / "metrics.jsonl")
    initial, final = log[0]["valid_forces_mae"], log[-1]["valid_forces_mae"]
    assert final < initial / 2.5, (initial, final)

    meta = json.loads((run / "model" / "potential.json").read_text())
    assert meta["architecture"] == {"name": "tinynet:TinyNet", "features": 64,
                                    "n_basis": 16, "n_kinds": 8}
    assert meta["cutoff"] == 4.5
    potential = load_potential(run / "model")
    assert type(potential.model).__name__ == "TinyNet" and potential.model.n_basis == 16

    atoms = ase.io.read(os.path.join(ETHANOL, "train.xyz"), index=999)
    atoms.calc = BiojaxCalculator(potential)
    forces = atoms.get_forces()
    h, numeric = 1e-2, np.zeros_like(forces)  # float32 model: a step well above roundoff
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for step in (-2, -1, 1, 2):  # fourth-order central difference
                moved = atoms.copy()
                moved.positions[i, k] += step * h
                moved.calc = atoms.calc
                energies.append(moved.get_potential_energy())
            numeric[i, k] = -(energies[0] - 8 * energies[1] + 8 * energies[2]
                              - energies[3]) / (12 * h)
    assert np.max(np.abs(forces)) > 0.5  # a trained model on a non-equilibrium frame
    np.testing.assert_allclose(forces, numeric, atol=3e-3)  # eV/Å; measured 4e-4

    start = ase.io.read(os.path.join(ETHANOL, "train.xyz"), index=0)
    cfg = default_config(ensemble="nve", timestep_fs=0.5, temperature_K=300.0, steps=400,
                         chunk_steps=400, observe_every=5, frame_every=400)
    Simulation(start, potential, cfg).run(str(tmp_path / "md"))
    obs = read_csv(tmp_path / "md" / "observables.csv")
    assert len(obs["step"]) == 81
    start.calc = BiojaxCalculator(potential)
    interaction = start.get_potential_energy() - potential.reference_energy(start.numbers)
    assert obs["potential_energy"][0] == pytest.approx(interaction, abs=1e-4)
    t = obs["time_fs"] / 1000.0
    trend = np.polyfit(t, obs["total_energy"], 1)
    spread = np.std(obs["kinetic_energy"])
    assert spread > 0.02  # eV: the atoms really move
    assert np.std(obs["total_energy"] - np.polyval(trend, t)) < 0.05 * spread
    assert abs(trend[0] * t[-1]) < 0.02 * spread


# ------------------------------------------------------------------ b. user loss term
def write_dipole_data(path, index, label="ref_dipole", drop=None):
    """Ethanol frames with a per-structure dipole label from the fixed CHARGES (e·Å)."""
    frames = ase.io.read(os.path.join(ETHANOL, "train.xyz"), index=index)
    for i, atoms in enumerate(frames):
        if i != drop:
            atoms.info[label] = np.array([CHARGES[z] for z in atoms.numbers]) @ atoms.positions
    ase.io.write(path, frames)
    return path


DIPOLE_CONFIG = """
[data]
train_file = "train.xyz"
valid_file = "{valid}"
isolated_atoms = "{isolated}"

[model]
name = "tinynet:TinyNet"
cutoff = 4.5

[training]
epochs = {epochs}
batch_size = 8
learning_rate = 3e-3
seed = 0

[[training.loss]]
name = "energy"
weight = 1.0

[[training.loss]]
name = "forces"
weight = 100.0

[[training.loss]]
name = "dipole_loss:dipole"
weight = 10.0
charge_per_eV = 0.1
label = "ref_dipole"
"""


def dipole_rms(potential, params, path):
    """RMS error (e·Å per component) of the dipole term's prediction on a file."""
    from dipole_loss import dipole

    term = dipole(label="ref_dipole", charge_per_eV=0.1)
    data = GraphDataset(read_dataset(path), potential.cutoff, potential.species_of,
                        potential.reference_energy, labels=term.labels)
    sums = {}
    for batch in data.batches(16):
        pred = losses.predict(potential, params, batch, False)
        losses.accumulate(sums, {"dipole": term.errors(pred, batch)})
    s, n = sums["dipole"]
    return float(np.sqrt(s / n))


def test_user_loss_term_on_an_extra_label_trains(tmp_path, example_on_path):
    """energy + forces + examples/custom_model/dipole_loss.py on 48 + 12 ethanol frames
    labelled with Σ q_i r_i: the validation loss falls and so does the dipole term's own
    error, below the spread of the labels and of a run without the term (measured: loss
    167 → 15; dipole RMS error 0.64 → 0.078 e·Å, 0.56 without the term, labels 0.29 e·Å
    RMS); a validation frame without the label is a
    DataError naming file, frame and label."""
    from biojax.nn.io import load_potential
    from biojax.nn.models import init_potential

    write_dipole_data(tmp_path / "train.xyz", ":48")
    write_dipole_data(tmp_path / "valid.xyz", "48:60")
    config = tmp_path / "c.toml"
    config.write_text(DIPOLE_CONFIG.format(valid="valid.xyz", epochs=25,
                                           isolated=os.path.join(ETHANOL, "isolated_atoms.xyz")))
    assert cli(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    assert log[-1]["valid_loss"] < log[0]["valid_loss"] / 4

    trained = load_potential(tmp_path / "run" / "model")
    untrained = init_potential(trained.architecture, trained.elements, trained.cutoff,
                               trained.reference_energies, key=jax.random.PRNGKey(0),
                               scale=trained.scale, shifts=trained.shifts)
    valid = str(tmp_path / "valid.xyz")
    before = dipole_rms(untrained, untrained.params, valid)
    after = dipole_rms(trained, trained.params, valid)
    labels = np.array([s.labels["ref_dipole"] for s in read_dataset(valid)])
    assert after < before / 3, (before, after)
    assert after < 0.5 * np.sqrt(np.mean(labels**2)), after
    # control: the same run without the dipole term leaves the dipole unlearned (0.56)
    assert cli(["train", str(config), "--out", str(tmp_path / "control"), "--set",
                'training.loss=[{name="energy"}, {name="forces", weight=100.0}]']) == 0
    control = load_potential(tmp_path / "control" / "model")
    assert after < dipole_rms(control, control.params, valid) / 3

    write_dipole_data(tmp_path / "holey.xyz", "48:60", drop=5)
    config.write_text(DIPOLE_CONFIG.format(valid="holey.xyz", epochs=1,
                                           isolated=os.path.join(ETHANOL, "isolated_atoms.xyz")))
    from biojax.train.stage import load_config, run

    with pytest.raises(DataError) as err:
        run(load_config(config), tmp_path / "run2", log=lambda msg: None)
    message = str(err.value)
    assert "holey.xyz frame 5" in message and "'ref_dipole'" in message, message


def test_dipole_named_dipole_survives_extxyz(tmp_path):
    """ASE's extxyz reader moves info['dipole'] into the calculator's results; it is still
    a per-structure label (and per-atom calculator arrays are per-atom labels)."""
    path = write_dipole_data(tmp_path / "d.xyz", ":2", label="dipole")
    s = read_dataset(path)[0]
    assert "dipole" in s.labels and s.labels["dipole"].shape == (3,)


# ------------------------------------------------------------------ c. built-in terms
def tiny_structures():
    """A periodic pair with every label, a water molecule with energy and forces, and a
    dimer with neither energy nor forces."""
    rng = np.random.default_rng(3)
    cell = np.diag([3.0, 3.2, 3.4])
    return [
        Structure(numbers=np.array([18, 18]), positions=np.array([[0, 0, 0], [1.4, 1.5, 1.7]]),
                  cell=cell, pbc=np.array([True] * 3), energy=-1.5,
                  forces=rng.normal(size=(2, 3)), stress=rng.normal(size=(3, 3)) * 0.01),
        Structure(numbers=np.array([8, 1, 1]),
                  positions=np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
                  cell=np.zeros((3, 3)), pbc=np.zeros(3, bool), energy=-14.2,
                  forces=rng.normal(size=(3, 3))),
        Structure(numbers=np.array([1, 1]), positions=np.array([[0, 0, 0], [0.74, 0, 0]]),
                  cell=np.zeros((3, 3)), pbc=np.zeros(3, bool)),
    ]


def make_batch(structures, references):
    species = [np.zeros(s.n_atoms, np.int32) for s in structures]
    edges = [find_edges(s, 2.5) for s in structures]
    return batch_graphs(structures, edges, species, references, n_graphs=len(structures) + 2,
                        dtype=np.float64)


def fake_predictions(batch, seed):
    """Predictions that are nonzero everywhere, padding included, so masks matter."""
    rng = np.random.default_rng(seed)
    G, N = len(batch.graph_mask), len(batch.node_mask)
    return {"energy": rng.normal(size=G) * 3, "forces": rng.normal(size=(N, 3)),
            "stress": rng.normal(size=(G, 3, 3)) * 0.02}


def numpy_errors(structures, references, pred):
    """(sum, count) per built-in term, computed structure by structure."""
    out = {"energy": [0.0, 0], "forces": [0.0, 0], "stress": [0.0, 0]}
    atom = 0
    for g, (s, ref) in enumerate(zip(structures, references)):
        if s.energy is not None:
            out["energy"][0] += ((pred["energy"][g] - (s.energy - ref)) / s.n_atoms) ** 2
            out["energy"][1] += 1
        if s.forces is not None:
            diff = pred["forces"][atom:atom + s.n_atoms] - s.forces
            out["forces"][0] += np.sum(np.mean(diff**2, axis=1))
            out["forces"][1] += s.n_atoms
        if s.stress is not None:
            out["stress"][0] += np.mean((pred["stress"][g] - s.stress) ** 2)
            out["stress"][1] += 1
        atom += s.n_atoms
    return out


def test_builtin_loss_terms_match_numpy_with_padding():
    structures, references = tiny_structures(), [0.5, -13.0, 0.2]
    batch = make_batch(structures, references)
    assert len(batch.node_mask) > 7 and len(batch.graph_mask) == 5  # padding present
    pred = fake_predictions(batch, 0)
    expected = numpy_errors(structures, references, pred)
    assert expected["energy"][1] == 2 and expected["forces"][1] == 5
    assert expected["stress"][1] == 1
    terms = {"energy": losses.energy(2.0), "forces": losses.forces(10.0),
             "stress": losses.stress(0.5)}
    for name, term in terms.items():
        s, n = term.errors(pred, batch)
        assert float(n) == expected[name][1], name
        assert float(s) == pytest.approx(expected[name][0], rel=1e-5), name
    assert terms["stress"].needs_stress and not terms["forces"].needs_stress

    loss = losses.combine(*terms.values())
    weighted = sum(t.weight * expected[k][0] / expected[k][1] for k, t in terms.items())
    assert float(loss.value(pred, batch)) == pytest.approx(weighted, rel=1e-5)
    with pytest.raises(ValueError, match="named twice"):
        losses.combine(losses.energy(), losses.energy())

    # two batches accumulated equal one NumPy computation over their union
    second, second_refs = tiny_structures()[1:], [-12.0, 0.0]
    batch2 = make_batch(second, second_refs)
    pred2 = fake_predictions(batch2, 1)
    sums = losses.accumulate({}, loss.parts(pred, batch))
    sums = losses.accumulate(sums, loss.parts(pred2, batch2))
    expected2 = numpy_errors(second, second_refs, pred2)
    union = sum(t.weight * (expected[k][0] + expected2[k][0])
                / (expected[k][1] + expected2[k][1]) for k, t in terms.items())
    assert loss.from_sums(sums) == pytest.approx(union, rel=1e-5)
    assert union != pytest.approx(
        (weighted + float(loss.value(pred2, batch2))) / 2, rel=1e-6)  # not a mean of means


# ------------------------------------------------------------------ d. unknown names
def test_unknown_loss_term_and_model_list_registered_names(tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        losses.loss_from_config([{"name": "energy"}, {"name": "enrgy", "weight": 1.0}])
    for name in ("'enrgy'", "energy", "forces", "stress"):
        assert name in str(err.value)

    config = tmp_path / "c.toml"
    body = (f'[data]\ntrain_file = "{os.path.join(ETHANOL, "train.xyz")}"\n'
            '[model]\nname = "{model}"\ncutoff = 4.0\n'
            '[training]\nepochs = 1\n[[training.loss]]\nname = "{term}"\n')
    config.write_text(body.replace("{model}", "painn").replace("{term}", "fources"))
    assert cli(["train", str(config), "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "unknown loss term 'fources'" in err and "energy, forces, stress" in err, err

    config.write_text(body.replace("{model}", "shnet").replace("{term}", "energy"))
    assert cli(["train", str(config), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'shnet'" in err and "painn" in err and "schnet" in err, err
