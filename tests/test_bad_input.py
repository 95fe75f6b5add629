"""Bad input on every command: exit status 1, a message that names the problem, no
traceback, and files written before the failure left byte-identical.

Each case builds its inputs in a temporary folder, runs ``biojax.cli.main`` in-process
(the same entry point as the ``biojax`` command; a traceback would surface as an
exception here), and checks the exit status, the message on stderr and the files that
existed before. ``test_a_few_cases_as_real_processes`` runs some of them as the real
command to check the exit status and stderr of a process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Callable, NamedTuple

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import write

from biojax.cli import main
from helpers import snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "examples")
ETHANOL = os.path.join(EX, "data", "rmd17_ethanol", "train.xyz")
ALA2_MODEL = os.path.join(EX, "models", "ala2_painn")
ALA2 = os.path.join(EX, "md", "alanine_dipeptide.extxyz")
LJ = os.path.join(EX, "md", "lj_argon_nve.toml")
FES = os.path.join(EX, "ala2_fes", "analyze.toml")


class Case(NamedTuple):
    name: str
    setup: Callable       # setup(tmp) -> argv (list of str); may write files under tmp
    message: str          # a substring the error message must contain


def train_toml(tmp, extra="", data=ETHANOL, model='name = "painn"\ncutoff = 4.0\nfeatures = 8\nn_interactions = 1'):
    path = tmp / "train.toml"
    path.write_text(f'[data]\ntrain_file = "{data}"\nn_train = 20\nn_valid = 5\n'
                    f'[model]\n{model}\n[training]\nepochs = 1\n{extra}')
    return str(path)


def sim_toml(tmp, body):
    path = tmp / "sim.toml"
    path.write_text(body)
    return str(path)


def ethanol_with(tmp, name, edit):
    frames = [a for a in __import__("ase.io", fromlist=["read"]).read(ETHANOL, index=":6")]
    edit(frames)
    path = tmp / name
    write(path, frames, format="extxyz")
    return str(path)


def nan_positions(frames):
    frames[3].positions[2, 1] = np.nan


def lj_sim(tmp, extra=""):
    return sim_toml(tmp, f'structure = "{os.path.join(EX, "md", "argon_256.extxyz")}"\n'
                         'ensemble = "nve"\ntimestep_fs = 2.0\ntemperature_K = 90.0\n'
                         'steps = 100\nchunk_steps = 50\nobserve_every = 10\nframe_every = 50\n'
                         f'out = "{tmp / "run"}"\n{extra}\n[classical]\nkind = "lennard-jones"\n')


def small_box(tmp):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)  # 5.26 Å box, cutoff 8.5 Å
    write(tmp / "tiny.extxyz", atoms)
    return ["simulate", lj_sim(tmp).replace("argon_256", "x"), "--structure",
            str(tmp / "tiny.extxyz")]


def unknown_element(tmp):
    write(tmp / "ch3sh.xyz", molecule("CH3SH"))
    return ["simulate", sim_toml(tmp, f'structure = "{tmp / "ch3sh.xyz"}"\nmodel = '
                                      f'"{ALA2_MODEL}"\nsteps = 10\nframe_every = 10\n'
                                      f'observe_every = 10\nchunk_steps = 10\n'
                                      f'out = "{tmp / "run"}"\n'),]


def nan_structure(tmp):
    atoms = molecule("CH3CH2OH")
    atoms.positions[0, 0] = np.nan
    write(tmp / "nan.extxyz", atoms)
    return ["simulate", LJ, "--structure", str(tmp / "nan.extxyz"), "--out", str(tmp / "run")]


def overlapping(tmp):
    write(tmp / "close.xyz", Atoms("Ar2", positions=[[0, 0, 0], [0.2, 0, 0]]))
    return ["simulate", LJ, "--structure", str(tmp / "close.xyz"), "--out", str(tmp / "run")]


def analyze_toml(tmp, body):
    path = tmp / "analyze.toml"
    path.write_text(body)
    return str(path)


CASES = [
    # ---------------------------------------------------------------- train
    Case("train: config file missing", lambda t: ["train", str(t / "nope.toml")],
         "config file not found"),
    Case("train: malformed TOML", lambda t: ["train", sim_toml(t, "[data\ntrain_file=")],
         "malformed TOML"),
    Case("train: typo in a config key", lambda t: ["train", train_toml(t, "epoch = 3\n")],
         "unknown key(s) 'epoch'"),
    Case("train: --set with a wrong type",
         lambda t: ["train", train_toml(t), "--set", "training.epochs=many"], "epochs"),
    Case("train: --set with an unknown key",
         lambda t: ["train", train_toml(t), "--set", "training.epohcs=2"], "'epohcs'"),
    Case("train: data file missing",
         lambda t: ["train", train_toml(t, data=str(t / "missing.xyz")), "--out",
                    str(t / "run")], "missing.xyz"),
    Case("train: unknown model name",
         lambda t: ["train", train_toml(t, model='name = "allegro"\ncutoff = 4.0')],
         "unknown model 'allegro'"),
    Case("train: negative learning rate",
         lambda t: ["train", train_toml(t, "learning_rate = -0.01\n")], "learning_rate"),
    Case("train: NaN coordinates in the data",
         lambda t: ["train", train_toml(t, data=ethanol_with(t, "nan.xyz", nan_positions)),
                    "--out", str(t / "run")], "frame 3"),
    Case("train: zero cutoff",
         lambda t: ["train", train_toml(t, model='name = "painn"\ncutoff = 0.0')], "cutoff"),
    # ---------------------------------------------------------------- simulate
    Case("simulate: negative time step",
         lambda t: ["simulate", LJ, "--timestep", "-1", "--out", str(t / "run")],
         "timestep_fs must be > 0"),
    Case("simulate: structure file missing",
         lambda t: ["simulate", LJ, "--structure", str(t / "gone.xyz"), "--out",
                    str(t / "run")], "gone.xyz"),
    Case("simulate: model directory missing",
         lambda t: ["simulate", LJ, "--model", str(t / "no_model"), "--out", str(t / "run")],
         "no_model"),
    Case("simulate: element unknown to the model", unknown_element, "S not known to this model"),
    Case("simulate: box too small for the cutoff", small_box, "box too small for the cutoff"),
    Case("simulate: NaN coordinates", nan_structure, "non-finite atomic positions"),
    Case("simulate: overlapping atoms", overlapping, "overlapping atoms"),
    Case("simulate: unknown integrator",
         lambda t: ["simulate", LJ, "--ensemble", "nvt", "--out", str(t / "run")],
         "unknown integrator 'nvt'"),
    Case("simulate: --set with an unknown key",
         lambda t: ["simulate", LJ, "--set", "temprature_K=300", "--out", str(t / "run")],
         "'temprature_K'"),
    Case("simulate: steps not a multiple of frame_every",
         lambda t: ["simulate", lj_sim(t), "--steps", "75"], "multiple of frame_every"),
    Case("simulate: resume without a checkpoint",
         lambda t: ["simulate", lj_sim(t), "--resume"], "checkpoint"),
    Case("simulate: unknown energy term",
         lambda t: ["simulate", lj_sim(t, '[[energy_terms]]\nname = "harmonic"\n')],
         "unknown energy term 'harmonic'"),
    # ---------------------------------------------------------------- analyze
    Case("analyze: trajectory file missing",
         lambda t: ["analyze", analyze_toml(t, f'[trajectory]\npaths = ["{t / "x.npy"}"]\n'
                                               '[[features]]\nkind = "rmsd"\n'), "--out",
                    str(t / "an")], "x.npy"),
    Case("analyze: unknown feature kind",
         lambda t: ["analyze", analyze_toml(t, '[trajectory]\npaths = ["a.npy"]\n'
                                               '[[features]]\nkind = "dihedral"\n')],
         "unknown analysis feature 'dihedral'"),
    Case("analyze: --set with a wrong type",
         lambda t: ["analyze", FES, "--set", "cluster.k=four", "--out", str(t / "an")], "k"),
    # ---------------------------------------------------------------- sample / label
    Case("sample: typo in a recipe key",
         lambda t: ["sample", sim_toml(t, 'kind = "rattle-strain"\nframs = 3\n'), "--out",
                    str(t / "d.extxyz")], "'frams'"),
    Case("label: unknown reference engine",
         lambda t: ["label", ETHANOL, str(t / "out.extxyz"), "--reference", "dftb"],
         "unknown reference engine 'dftb'"),
    Case("label: input file missing",
         lambda t: ["label", str(t / "in.xyz"), str(t / "out.extxyz"), "--reference", "emt"],
         "in.xyz"),
    # ---------------------------------------------------------------- evaluate
    Case("evaluate: model directory missing",
         lambda t: ["evaluate", str(t / "m"), ETHANOL], "model directory not found"),
    Case("evaluate: malformed model metadata",
         lambda t: (shutil.copytree(ALA2_MODEL, t / "m"),
                    (t / "m" / "potential.json").write_text("{not json"),
                    ["evaluate", str(t / "m"), ETHANOL])[-1], "malformed JSON"),
]




@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_loudly_and_keeps_files(case, tmp_path, capsys):
    argv = case.setup(tmp_path)
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, (code, err)
    assert case.message in err, err
    assert "Traceback" not in err
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before


def test_the_suite_covers_every_command():
    names = {c.name.split(":")[0] for c in CASES}
    assert {"train", "simulate", "analyze", "sample", "label", "evaluate"} <= names
    assert len(CASES) >= 25, len(CASES)


def test_a_few_cases_as_real_processes(tmp_path):
    """The installed command: exit status 1 and a one-line message, no traceback."""
    for argv, message in ((["simulate", LJ, "--timestep", "-1", "--out", str(tmp_path / "r")],
                           "timestep_fs must be > 0"),
                          (["train", str(tmp_path / "nope.toml")], "config file not found")):
        proc = subprocess.run([sys.executable, "-m", "biojax.cli", *argv], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 1, proc
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
