"""Fail loudly and lose nothing (analysis side): non-finite coordinates are named by file
and frame, output folders are checked before work and locked while written, atomic writes
get ordinary permissions, plots carry units, the README's Python snippets run."""

import os
import stat

import pytest

from biojax.core import atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_ordinary_permissions(tmp_path, umask022):
    new = tmp_path / "new.txt"
    atomic.atomic_write_text(new, "x")
    assert _mode(new) == 0o644                       # what open(path, "w") gives
    with atomic.atomic_path(tmp_path / "arr.npz") as tmp:
        import numpy as np
        np.savez(tmp, a=np.zeros(2))
    assert _mode(tmp_path / "arr.npz") == 0o644
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    os.chmod(kept, 0o640)                            # replacing a file keeps its mode
    atomic.atomic_write_text(kept, "new")
    assert _mode(kept) == 0o640 and kept.read_text() == "new"
    folder = atomic.make_temp_dir(tmp_path, prefix=".model-tmp-")
    assert _mode(folder) == 0o755                    # what os.mkdir gives, not mkdtemp's 0700
    os.rmdir(folder)
    os.umask(0o077)
    atomic.atomic_write_text(tmp_path / "private.txt", "x")
    assert _mode(tmp_path / "private.txt") == 0o600
    assert atomic.current_umask() == 0o077
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------ biojax analyze
CG = os.path.join(ROOT, "examples", "data", "cgnet_ala2")
CG_PDB = os.path.join(CG, "ala2_cg.pdb")


@pytest.fixture(scope="module")
def cg_frames():
    import numpy as np
    return np.load(os.path.join(CG, "ala2_coordinates.npy"))[:400].copy()


def _config(tmp_path, paths, extra=""):
    cfg = tmp_path / "analyze.toml"
    cfg.write_text(f'''[trajectory]
paths = {[str(p) for p in paths]!r}
topology = "{CG_PDB}"
{extra}
[[features]]
kind = "backbone_dihedrals"
[cluster]
k = 3
n_init = 2
[fes]
n_bootstrap = 20
bins = 24
[msm]
lags = [1, 2, 5]
'''.replace("'", '"'))
    return str(cfg)


def _snapshot(folder) -> dict:
    import hashlib
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_nan_frame_is_named_and_earlier_results_survive(tmp_path, capsys, cg_frames,
                                                        umask022):
    """A NaN coordinate is an AnalysisError naming the file and the first bad frame (not a
    silhouette error later, nor silently analysed), exit status 1, no traceback; the
    results of the earlier run in the same folder stay byte-identical; outputs are 0644."""
    import numpy as np

    from biojax.cli import main
    good, bad = tmp_path / "good.npy", tmp_path / "bad.npy"
    np.save(good, cg_frames)
    frames = cg_frames.copy()
    frames[137, 2, 1] = np.nan
    frames[300, 0, 0] = np.inf
    np.save(bad, frames)
    out = tmp_path / "out"
    assert main(["analyze", _config(tmp_path, [good]), "--out", str(out), "--quiet",
                 "--set", "output.plots=false"]) == 0
    before = _snapshot(out)
    assert set(before) == {"states.csv", "fes.npz", "summary.json"}
    assert all(_mode(out / name) == 0o644 for name in before)
    capsys.readouterr()
    for stride in (1, 2):  # the frame is counted in the file, whatever the stride
        code = main(["analyze", _config(tmp_path, [good, bad], f"stride = {stride}"), "--out",
                     str(out), "--overwrite", "--quiet"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert f"{bad} frame 137: coordinates of atom(s) 2 are NaN or infinite" in err, err
        assert "2 such frame(s)" in err and "Traceback" not in err and "silhouette" not in err
        assert _snapshot(out) == before


def test_nan_feature_is_named(tmp_path, capsys, cg_frames, monkeypatch):
    """A user feature that returns NaN is caught with the file, frame and feature name."""
    import numpy as np

    from biojax.cli import main
    (tmp_path / "nanfeat.py").write_text('''import numpy as np
from biojax.analysis.pipeline import FeatureTable
def feature(cfg, traj, fc):
    v = np.ones((traj.n_frames, 1))
    v[7] = np.nan
    return FeatureTable(v, ("ones",), (False,))
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    np.save(tmp_path / "good.npy", cg_frames)
    cfg = _config(tmp_path, [tmp_path / "good.npy"])
    with open(cfg) as f:
        text = f.read().replace('"backbone_dihedrals"', '"nanfeat:feature"')
    with open(cfg, "w") as f:
        f.write(text)
    assert main(["analyze", cfg, "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "good.npy frame 7: feature(s) ones are NaN or infinite" in err, err
    assert not (tmp_path / "o").exists()  # a failed first run leaves no empty folder


def test_output_dir_that_is_a_file_and_existing_results(tmp_path, capsys, cg_frames):
    import numpy as np

    from biojax.cli import main
    np.save(tmp_path / "good.npy", cg_frames)
    cfg = _config(tmp_path, [tmp_path / "good.npy"])
    taken = tmp_path / "taken"
    taken.write_text("my notes")
    assert main(["analyze", cfg, "--out", str(taken), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{taken} is an existing file, not a folder" in err and "Traceback" not in err
    assert taken.read_text() == "my notes"
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # results of an earlier analysis
    assert main(["analyze", cfg, "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "already holds results (summary.json)" in err and "--overwrite" in err
    assert (out / "summary.json").read_text() == "{}"


def test_second_analysis_into_the_same_folder_is_refused(tmp_path, capsys):
    """A real ``biojax analyze`` process holds the folder; a second one is refused with a
    message naming it (pid and command) and the first finishes undisturbed."""
    import subprocess
    import sys
    import time

    from biojax.cli import main
    from biojax.core.rundir import LOCK_FILE
    cfg = os.path.join(ROOT, "examples", "ala2_fes", "analyze.toml")
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "biojax.cli", "analyze", cfg, "--out",
                              str(out), "--quiet", "--set", "output.plots=false", "--set",
                              "cluster.n_init=2", "--set", "fes.n_bootstrap=20"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / LOCK_FILE).exists() and first.poll() is None:
            assert time.time() < deadline
            time.sleep(0.02)
        assert main(["analyze", cfg, "--out", str(out), "--quiet", "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert f"is in use by process {first.pid}" in err and "analyze" in err, err
        assert "Traceback" not in err
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert (out / "summary.json").exists() and not (out / LOCK_FILE).exists()
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no staging left behind


def test_timescales_in_ps_when_the_frame_interval_is_given(tmp_path, capsys, cg_frames,
                                                           monkeypatch):
    import json

    import numpy as np

    from biojax.analysis import plots
    from biojax.cli import main
    fig = plots.timescales_figure([1, 2, 5], [[10.0, np.nan], [11.0, np.nan], [12.0, np.inf]],
                                  unit="ps")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lag time (ps)", "implied timescale (ps)")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "process 1", "timescale < lag time (unresolved)"]  # no entry for the empty process

    made = {}
    real = plots.timescales_figure

    def spy(*args, **kwargs):
        made["fig"] = real(*args, **kwargs)
        return made["fig"]

    monkeypatch.setattr(plots, "timescales_figure", spy)
    np.save(tmp_path / "good.npy", cg_frames)
    cfg = _config(tmp_path, [tmp_path / "good.npy"], "frame_interval_fs = 1000.0")
    assert main(["analyze", cfg, "--out", str(tmp_path / "o"), "--quiet"]) == 0
    ax = made["fig"].axes[0]
    assert ax.get_xlabel() == "lag time (ps)" and ax.get_ylabel() == "implied timescale (ps)"
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [1.0, 2.0, 5.0])  # lags × 1 ps
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["msm"]["time_unit"] == "ps" and s["msm"]["frame_interval_fs"] == 1000.0
    np.testing.assert_allclose(s["msm"]["implied_timescales"]["lag_times"], [1, 2, 5])
    np.testing.assert_allclose(np.array(s["msm"]["timescales"], float),
                               np.array(s["msm"]["timescales_frames"], float))


def test_fes_plot_has_round_ticks_full_angle_axes_and_units():
    import numpy as np

    from biojax.analysis import free_energy_surface, plots
    rng = np.random.default_rng(0)
    angles = np.stack([rng.vonmises(-1.4, 3.0, 5000), rng.vonmises(2.6, 2.0, 5000)], 1)
    surface = free_energy_surface(np.degrees(angles), 36, [(-180.0, 180.0)] * 2, 300.0,
                                  n_bootstrap=0, names=["phi_ALA2", "psi_ALA2"])
    for unit in ("kJ/mol", "kT"):
        fig = plots.fes_figure(surface, units=["°", "°"], periodic=[True, True],
                               energy_unit=unit)
        ax, cbar = fig.axes
        assert ax.get_xlabel() == "φ ALA2 (°)" and ax.get_ylabel() == "ψ ALA2 (°)"
        assert ax.get_xlim() == (-180.0, 180.0) and ax.get_ylim() == (-180.0, 180.0)
        assert list(ax.get_xticks()) == [-180, -90, 0, 90, 180]
        ticks = np.asarray(cbar.get_yticks())
        step = ticks[1] - ticks[0]
        assert ticks[0] == 0 and step in (0.5, 1, 2, 2.5, 5, 10) and len(ticks) <= 9
        np.testing.assert_allclose(np.diff(ticks), step)
        assert cbar.get_ylabel().startswith(f"F ({unit}")
    fig = plots.projection_figure(rng.normal(size=(50, 2)), rng.integers(0, 3, 50),
                                  ("PC 1", "PC 2"), unit="Å")
    assert fig.axes[0].get_xlabel() == "PC 1 (Å)"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "$\\mathdefault{0}$", "$\\mathdefault{1}$", "$\\mathdefault{2}$"]
    fig = plots.populations_figure([0.5, 0.5], [0.1, 0.1])
    assert fig.axes[0].get_xlabel() == "state" and "fraction" in fig.axes[0].get_ylabel()


# ------------------------------------------------- all-atom example: simulate → analyze
ALA2_PDB = os.path.join(ROOT, "examples", "data", "alanine-dipeptide-gbsa",
                        "alanine-dipeptide.pdb")
ALA2_XYZ = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")


def test_shipped_pdb_describes_the_md_start_structure():
    """examples/ala2_md/analyze.toml takes atom names from openmmtools' PDB: same elements
    in the same order as the simulation's start, and the same geometry up to a shift."""
    import ase.io
    import numpy as np
    from openmm import app, unit

    from biojax.analysis import backbone_dihedrals, read_topology
    start = ase.io.read(ALA2_XYZ)
    top = read_topology(ALA2_PDB)
    assert list(top.elements) == start.get_chemical_symbols()
    pdb = app.PDBFile(ALA2_PDB).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    shift = start.positions - pdb
    np.testing.assert_allclose(shift, shift[0] + 0 * shift, atol=1e-3)
    quads, names = backbone_dihedrals(top, ["phi", "psi"])
    assert quads.tolist() == [[4, 6, 8, 14], [6, 8, 14, 16]] and names == ["phi_ALA2",
                                                                           "psi_ALA2"]


@pytest.mark.slow  # 20-35 s on 2 cores: a real simulation (compilation) then the analysis
def test_simulate_then_analyze_all_atom_alanine_dipeptide(tmp_path, capsys):
    """The MD example on the shipped PaiNN (2 replicas, 200 steps) and then the analysis
    example on what it wrote: φ/ψ of every frame as computed from the atom indices, the
    extended start stays in the β basin, times in ps."""
    import json

    import ase.io
    import numpy as np

    from biojax.analysis import dihedrals
    from biojax.cli import main
    run = tmp_path / "run"
    assert main(["simulate", os.path.join(ROOT, "examples", "md", "alanine_dipeptide.toml"),
                 "--model", os.path.join(ROOT, "examples", "models", "ala2_painn"),
                 "--replicas", "2", "--steps", "200", "--out", str(run),
                 "--set", "frame_every=10", "--set", "chunk_steps=100"]) == 0
    out = tmp_path / "analysis"
    assert main(["analyze", os.path.join(ROOT, "examples", "ala2_md", "analyze.toml"),
                 "--set", f'trajectory.paths=["{run}/replica_*/trajectory.extxyz"]',
                 "--set", "trajectory.frame_interval_fs=5.0",  # 10 steps × 0.5 fs
                 "--set", "trajectory.stride=2",
                 "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["trajectories"] == [str(run / f"replica_{i:03d}" / "trajectory.extxyz")
                                 for i in range(2)]
    assert s["frames_per_trajectory"] == [11, 11] and s["n_atoms"] == 22
    assert s["features"] == ["phi_ALA2", "psi_ALA2"] and s["msm"]["time_unit"] == "ps"
    assert s["msm"]["frame_interval_fs"] == 10.0  # stride 2 × 5 fs
    np.testing.assert_allclose(s["msm"]["implied_timescales"]["lag_times"],
                               [0.01, 0.02, 0.05, 0.1])
    regions = {r["name"]: r["population"] for r in s["regions"]}
    assert regions["beta_C5_PII"] > 0.9
    csv = np.loadtxt(out / "states.csv", delimiter=",", skiprows=1)
    frames = ase.io.read(run / "replica_001" / "trajectory.extxyz", "::2")
    ref = np.degrees(np.asarray(dihedrals(np.stack([a.positions for a in frames]),
                                          [[4, 6, 8, 14], [6, 8, 14, 16]])))
    mine = csv[csv[:, 0] == 1][:, 3:5]
    assert csv[csv[:, 0] == 1][:3, 1].tolist() == [0, 2, 4]  # frame numbers in the file
    diff = (mine - ref + 180.0) % 360.0 - 180.0
    assert np.abs(diff).max() < 1e-3
    for name in ("fes.png", "populations.png", "projection.png", "timescales.png"):
        assert (out / name).stat().st_size > 0


# ------------------------------------------------------------------ biojax --help
def _subparsers(parser):
    import argparse
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def test_help_is_complete_and_one_line_per_command(capsys, monkeypatch):
    """At 80 columns: the top-level help describes each command on one line, and every
    argument of every command has a help text (nothing blank, nothing cut off)."""
    import argparse

    from biojax.cli import build_parser, main
    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    commands = _subparsers(parser)
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    for choice in commands._choices_actions:
        (line,) = [ln for ln in lines if ln.startswith(f"    {choice.dest} ")]
        assert line.split(maxsplit=1)[1] == choice.help, line  # the whole text, one line
    missing = []
    for name, sub in commands.choices.items():
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert sub.description and " ".join(sub.description.split())[:40] in " ".join(
            text.split())
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"biojax {name} {'/'.join(action.option_strings) or action.dest}")
            elif action.help.rstrip()[-1] in "(,;:-":
                missing.append(f"biojax {name} {action.dest}: ends in {action.help[-1]!r}")
    assert not missing, f"arguments without a (complete) help text: {missing}"
