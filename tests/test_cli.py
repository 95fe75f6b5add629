"""The ``biojax`` command and the stage protocol: every stage takes ``--set SECTION.KEY=VALUE``
(checked like the file), relative paths in a config are relative to its folder, and
``biojax --help`` lists every stage. Configs are only loaded here, except for a tiny
``biojax sample`` run (EMT, 2 frames)."""

import os
import re
import subprocess
import sys

import pytest

from biojax.cli import main
from biojax.core import registry
from biojax.core.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
ETHANOL = os.path.join(EXAMPLES, "data", "rmd17_ethanol", "train.xyz")

CU_RECIPE = """kind = "rattle-strain"
frames = 3
seed = 11
[reference]
name = "emt"
[rattle_strain]
element = "Cu"
repeat = [1, 1, 2]
"""


def stage(name):
    return registry.load(registry.stages).get(name)


@pytest.fixture
def configs(tmp_path):
    """One config per stage: stage name -> path."""
    cfg = tmp_path / "configs"
    cfg.mkdir()
    (cfg / "sample.toml").write_text(CU_RECIPE)
    (cfg / "train.toml").write_text(f'[data]\ntrain_file = "{ETHANOL}"\n[model]\n'
                                    'name = "painn"\ncutoff = 4.0\n[training]\nepochs = 3\n')
    return {"sample": str(cfg / "sample.toml"), "train": str(cfg / "train.toml"),
            "simulate": os.path.join(EXAMPLES, "md", "lj_argon_nve.toml"),
            "analyze": os.path.join(EXAMPLES, "ala2_fes", "analyze.toml"),
            "coarse-grain": os.path.join(EXAMPLES, "cg_ala2", "ala2_cg.toml")}


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    names = registry.load(registry.stages).names()
    assert set(names) == {"sample", "train", "simulate", "analyze", "coarse-grain"}
    for name in names + ["label", "evaluate", "--x64"]:
        assert re.search(rf"^ +{re.escape(name)}\s", out, re.M), name
    for name in names:
        module = stage(name)
        assert module.NAME == name and module.Config is not None
        assert callable(module.load_config) and callable(module.run)


# stage -> (unknown key, wrong type, the key the message must name)
BAD = {
    "sample": ("rattle_strain.max_stran=0.1", "frames=many", "frames"),
    "train": ("training.epoch=5", "training.epochs=five", "epochs"),
    "simulate": ("stepz=10", "steps=ten", "steps"),
    "analyze": ("cluster.clusters=3", "cluster.k=[3]", "'k'"),
    "coarse-grain": ("prior.colour=1", "simulate.steps=ten", "steps"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_set_is_a_config_error(name, configs, tmp_path, capsys):
    unknown, wrong, key = BAD[name]
    out = ["--out", str(tmp_path / ("o.extxyz" if name == "sample" else "o"))]
    assert main([name, configs[name], "--set", unknown] + out) == 1
    err = capsys.readouterr().err
    bad_key = unknown.split("=")[0].split(".")[-1]
    assert f"'{bad_key}'" in err and "valid keys are" in err and "Traceback" not in err
    assert main([name, configs[name], "--set", wrong] + out) == 1
    err = capsys.readouterr().err
    assert key in err and "expected" in err and "Traceback" not in err
    assert not os.path.exists(out[1])


def test_bad_set_through_the_real_command(configs):
    proc = subprocess.run([sys.executable, "-m", "biojax.cli", "simulate", configs["simulate"],
                           "--set", "classical.sigmaa=3"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "'sigmaa'" in proc.stderr and "sigma" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_set_takes_effect_in_every_stage(configs):
    c = stage("train").load_config(configs["train"], ["training.epochs=1", "model.name=schnet",
                                                      "training.learning_rate=2e-3"])
    assert (c.training.epochs, c.model["name"], c.training.learning_rate) == (1, "schnet", 2e-3)
    c = stage("simulate").load_config(configs["simulate"], [
        "steps=20", "simulate.replicas=2", 'ensemble="nvt-langevin"', "classical.sigma=3"])
    assert (c.steps, c.replicas, c.ensemble, c.classical.sigma) == (20, 2, "nvt-langevin", 3.0)
    c = stage("analyze").load_config(configs["analyze"], ["msm.lags=[1, 3]", "cluster.k=5",
                                                          "output.plots=false"])
    assert (c.msm.lags, c.cluster.k, c.output.plots) == ((1, 3), 5, False)
    c = stage("sample").load_config(configs["sample"], ["frames=2", "rattle_strain.a=3.7"])
    assert (c.frames, c.rattle_strain.a) == (2, 3.7)
    with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
        stage("sample").load_config(configs["sample"], ["frames"])


def test_sample_with_set_and_flags(configs, tmp_path, capsys):
    """A real run: --set and the convenience flags reach the recipe through one path."""
    import ase.io

    out = tmp_path / "cu.extxyz"
    assert main(["sample", configs["sample"], "--out", str(out), "--quiet",
                 "--set", "rattle_strain.repeat=[1, 1, 1]", "--frames", "2"]) == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 2 and all(len(a) == 4 for a in frames)
    assert "wrote 2 frames" in capsys.readouterr().out


def test_convenience_flags_are_overrides(configs, tmp_path, capsys, monkeypatch):
    import biojax.md.stage as md_stage

    class Stop(Exception):
        pass

    def run(cfg, out, **kw):
        raise Stop(cfg)

    monkeypatch.setattr(md_stage, "run", run)
    with pytest.raises(Stop) as stop:
        main(["simulate", configs["simulate"], "--set", "steps=20", "--steps", "40",
              "--timestep", "1.5", "--out", "here"])
    cfg = stop.value.args[0]
    assert (cfg.steps, cfg.timestep_fs, cfg.out) == (40, 1.5, "here")  # flags after --set
    assert main(["simulate", configs["simulate"], "--temperature", "-5"]) == 1
    assert "temperature_K must be >= 0" in capsys.readouterr().err
    assert main(["train", configs["train"], "--max-minutes", "0"]) == 1
    assert "--max-minutes must be > 0" in capsys.readouterr().err


def test_float64_is_enabled_before_training(configs, monkeypatch):
    import biojax.core.precision as precision
    import biojax.train.stage as train_stage

    calls = []
    monkeypatch.setattr(precision, "enable_x64", lambda: calls.append("x64"))
    monkeypatch.setattr(train_stage, "run",
                        lambda cfg, out, **kw: calls.append(cfg.training.precision))
    assert main(["train", configs["train"], "--out", "x",
                 "--set", "training.precision=float64"]) == 0
    assert calls == ["x64", "float64"]
    calls.clear()
    assert main(["--x64", "train", configs["train"], "--out", "x"]) == 0
    assert calls == ["x64", "float32"]


def test_relative_paths_follow_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "cfg").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    data = str(tmp_path / "data")
    cfg = tmp_path / "cfg"

    (cfg / "train.toml").write_text('[data]\ntrain_file = "../data/t.xyz"\n'
                                    'isolated_atoms = "iso.xyz"\n')
    c = stage("train").load_config("../cfg/train.toml", ["data.valid_file=v.xyz"])
    assert c.data.train_file == os.path.join(data, "t.xyz")
    assert c.data.isolated_atoms == str(cfg / "iso.xyz")
    assert c.data.valid_file == "v.xyz" and c.data.test_file == ""  # command line: cwd

    (cfg / "md.toml").write_text('[simulate]\nstructure = "../data/s.extxyz"\n'
                                 'model = "/abs/model"\n')
    c = stage("simulate").load_config(cfg / "md.toml")
    assert (c.structure, c.model, c.out) == (os.path.join(data, "s.extxyz"), "/abs/model",
                                             str(cfg / "md_run"))
    c = stage("simulate").load_config(cfg / "md.toml", [("structure", "s.pdb"), "out=o"])
    assert (c.structure, c.out) == ("s.pdb", "o")

    (cfg / "a.toml").write_text('[trajectory]\npaths = ["../data/a.npy", "b.npy"]\n'
                                'topology = "t.pdb"\n[[features]]\nkind = "rmsd"\n'
                                'reference = "../data/ref.pdb"\n')
    c = stage("analyze").load_config(cfg / "a.toml")
    assert c.trajectory.paths == (os.path.join(data, "a.npy"), str(cfg / "b.npy"))
    assert c.trajectory.topology == str(cfg / "t.pdb")
    assert c.features[0].reference == os.path.join(data, "ref.pdb")
    assert c.output.directory == str(cfg / "analysis")

    (cfg / "r.toml").write_text('kind = "openmm-md"\nframes = 2\n[reference]\n'
                                'name = "openmm"\noptions = { prmtop = "x.prmtop", '
                                'platform = "CPU" }\n[openmm_md]\n'
                                'prmtop = "openmmtools:alanine-dipeptide-gbsa/x.prmtop"\n'
                                'coordinates = "../data/x.crd"\n')
    c = stage("sample").load_config(cfg / "r.toml")
    assert c.openmm_md.prmtop == "openmmtools:alanine-dipeptide-gbsa/x.prmtop"
    assert c.openmm_md.coordinates == os.path.join(data, "x.crd")
    assert c.reference.options == {"prmtop": str(cfg / "x.prmtop"), "platform": "CPU"}
