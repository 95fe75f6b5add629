"""biojax simulate fails loudly and loses nothing.

One test per behaviour, each able to fail: minimisation has its own step control and is
checked (alanine-dipeptide PaiNN); a close contact stops the run at the step a covalent
bond breaks, keeping the frames before it, and the checks switch off for reactive runs;
the potential-energy check; the temperature message prints the limit that was applied,
for every integrator; a second run in a locked folder is refused naming the holder;
results without a checkpoint are never overwritten unless asked; resuming with another
model or from a damaged checkpoint is a clear error; DCD and XTC trajectories round-trip
through mdtraj and ``biojax analyze`` and resume byte-identically; a PDB start
structure is read through openmm; energy and temperature plots are written.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time

import ase
import ase.io
import numpy as np
import pytest
from ase.lattice.cubic import FaceCenteredCubic

from biojax.cli import main
from biojax.core.errors import ConfigError, SimulationError
from biojax.md import output
from biojax.md.config import default_config
from biojax.md.simulation import Simulation
from biojax.md.stage import load_structure
from biojax.nn.classical import lennard_jones
from helpers import snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "examples")
ALA2_MODEL = os.path.join(EX, "models", "ala2_painn")
ALA2 = os.path.join(EX, "md", "alanine_dipeptide.extxyz")
ALA2_PDB = os.path.join(EX, "data", "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb")


@pytest.fixture(scope="module")
def ala2_potential():
    from biojax.nn.io import load_potential

    return load_potential(ALA2_MODEL)


def argon(size=3, a=5.8) -> ase.Atoms:
    return FaceCenteredCubic("Ar", size=(size,) * 3, latticeconstant=a)


def lj(epsilon=0.0103, cutoff=8.5):
    return lennard_jones([18], 3.405, epsilon, cutoff=cutoff)




def cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def squeezed_ala2() -> ase.Atoms:
    """Alanine dipeptide with H0 pushed to 0.7 Å from its carbon (C1)."""
    atoms = ase.io.read(ALA2)
    d = atoms.positions[0] - atoms.positions[1]
    atoms.positions[0] = atoms.positions[1] + 0.7 * d / np.linalg.norm(d)
    return atoms


# ------------------------------------------------------------------ A. blow-ups
def test_minimisation_at_4fs_lowers_the_energy_and_keeps_bonds(ala2_potential):
    """FIRE used to take its step from timestep_fs: at 4 fs it pushed alanine dipeptide
    apart (+9.5 eV instead of -0.92 eV). With its own step control the result does not
    depend on the MD time step; a step control that does blow it up is an error naming
    the energies."""
    atoms = ase.io.read(ALA2)
    results = {}
    for dt in (0.5, 4.0):
        sim = Simulation(atoms, ala2_potential, default_config(
            timestep_fs=dt, minimize=True, steps=0, chunk_steps=10, frame_every=10))
        run = sim.initial_state()
        m = sim.minimization
        assert m["energy_after_eV"][0] < m["energy_before_eV"][0] - 0.05, m
        assert m["converged"], m
        pos = np.asarray(run.state.position[0])
        i, j = sim.bonds.T
        stretch = np.linalg.norm(pos[i] - pos[j], axis=1) / sim.bond_ref
        assert stretch.max() < 1.15 and stretch.min() > 0.8, stretch
        results[dt] = m["energy_after_eV"][0]
    assert results[4.0] == pytest.approx(results[0.5], abs=1e-4)
    assert results[4.0] < -0.9  # measured -0.9225 eV, from -0.8031 eV
    bad = Simulation(atoms, ala2_potential, default_config(
        minimize=True, minimize_dt_fs=30.0, minimize_max_step=5.0, steps=0, chunk_steps=10,
        frame_every=10))
    with pytest.raises(SimulationError, match=r"minimisation raised the energy from "
                                              r"-0\.80\d+ eV to [\d.]+ eV"):
        bad.initial_state()


def _contact_config(tmp_path, checks: bool, steps: int) -> str:
    path = tmp_path / f"contact_{checks}.extxyz"
    ase.io.write(path, squeezed_ala2())
    toml = tmp_path / f"contact_{checks}.toml"
    toml.write_text(
        f'structure = "{path}"\nmodel = "{ALA2_MODEL}"\nensemble = "nvt-langevin"\n'
        f'timestep_fs = 0.5\ntemperature_K = 300.0\nsteps = {steps}\nchunk_steps = 100\n'
        f'observe_every = 5\nframe_every = 5\ncheck_bonds = {str(checks).lower()}\n'
        f'check_energy = {str(checks).lower()}\nplots = false\n')
    return str(toml)


def test_close_contact_stops_at_the_bond_break_and_keeps_earlier_frames(tmp_path, capsys):
    """An H 0.7 Å from its carbon, no minimisation: the Langevin run used to "complete"
    at 300 K with the H 120 Å away. Now it stops at the step the C-H bond breaks, naming
    replica, step, time, atoms and distance; the frames before that step are intact."""
    out = tmp_path / "run"
    code, err = cli(["simulate", _contact_config(tmp_path, True, 400), "--out", str(out)],
                    capsys)
    assert code == 1
    m = re.search(r"replica 0: simulation blew up at step (\d+) \(t = ([\d.]+) fs\): the "
                  r"covalent bond between atoms 0 \(H\) and 1 \(C\) broke: ([\d.]+) Å", err)
    assert m, err
    step, dist = int(m.group(1)), float(m.group(3))
    assert 0 < step <= 100 and float(m.group(2)) == step * 0.5 and dist > 1.5 * 1.07
    frames = ase.io.read(out / "trajectory.extxyz", ":")
    assert frames and [f.info["step"] for f in frames] == list(range(0, step, 5))
    assert all(np.isfinite(f.positions).all() for f in frames)
    assert all(np.linalg.norm(f.positions[0] - f.positions[1]) < 1.6 for f in frames)
    assert (out / "checkpoint.npz").exists()


def test_checks_switched_off_let_a_reactive_run_continue(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = cli(["simulate", _contact_config(tmp_path, False, 200), "--out", str(out)],
                    capsys)
    assert code == 0, err
    last = ase.io.read(out / "trajectory.extxyz", -1)
    assert last.info["step"] == 200
    assert np.linalg.norm(last.positions[0] - last.positions[1]) > 3.0  # the H has left


def test_energy_jump_stops_the_run_naming_energy_and_limit(tmp_path):
    """Argon started as a 0 K-minimum fcc lattice at 120 K: its potential energy rises
    by ~1 kT per atom as it heats, which a (deliberately tiny) 0.05 kT-per-atom margin
    flags at an observation step; the message names the energies and the limit."""
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=2.0, temperature_K=120.0,
                         steps=200, chunk_steps=100, observe_every=10, frame_every=10,
                         blowup_energy_kT=0.05, plots=False)
    with pytest.raises(SimulationError) as err:
        Simulation(argon(), lj(), cfg).run(str(tmp_path))
    m = re.search(r"blew up at step (\d+) .*the potential energy jumped to (-?[\d.]+) eV, "
                  r"([\d.]+) eV above its value at step 0 \((-?[\d.]+) eV; limit \+([\d.]+) "
                  r"eV = blowup_energy_kT 0.05 × 108 atoms", str(err.value))
    assert m, str(err.value)
    step = int(m.group(1))
    assert step % 10 == 0 and float(m.group(3)) > float(m.group(5))
    assert float(m.group(5)) == pytest.approx(0.05 * 108 * 120.0 * 8.617333e-5, rel=0.05)
    frames = ase.io.read(tmp_path / "trajectory.extxyz", ":")
    assert [f.info["step"] for f in frames] == list(range(0, step, 10))
    # the same run with the check off completes
    done = Simulation(argon(), lj(), dataclasses.replace(cfg, check_energy=False)).run(
        str(tmp_path / "off"))
    assert done["completed"]


@pytest.mark.parametrize("ensemble", ["nve", "nvt-langevin", "nvt-nose-hoover"])
def test_temperature_message_prints_the_applied_limit(ensemble):
    """Squeezed, rattled argon at 8 fs: the message names a temperature above the limit
    it prints. It used to print the temperature at the end of the observation window:
    "reached 370 K (limit 600 K)" for Nosé–Hoover, 560 K (limit 603 K) for Langevin; now
    679 K and 734 K, the values at the step that crossed the limit."""
    atoms = argon(3, 4.8)
    atoms.rattle(0.2, seed=1)
    cfg = default_config(ensemble=ensemble, timestep_fs=8.0, temperature_K=120.0,
                         steps=20, chunk_steps=20, observe_every=10, frame_every=10)
    with pytest.raises(SimulationError) as err:
        Simulation(atoms, lennard_jones([18], 3.405, 0.0103, cutoff=6.0), cfg).run(None)
    m = re.search(r"the temperature reached (\d+) K \(limit (\d+) K = "
                  r"blowup_temperature_factor 5 × max\(target, initial, 10 K\)\)",
                  str(err.value))
    assert m, str(err.value)
    assert int(m.group(1)) > int(m.group(2)) >= 600


# ------------------------------------------------------------------ B. output folders
def _lj_toml(tmp_path, extra="") -> str:
    path = tmp_path / "lj.toml"
    path.write_text(f'structure = "{os.path.join(EX, "md", "argon_256.extxyz")}"\n'
                    'ensemble = "nve"\ntimestep_fs = 2.0\ntemperature_K = 94.4\n'
                    'velocities = "structure"\nsteps = 40\nchunk_steps = 20\n'
                    f'observe_every = 10\nframe_every = 20\nplots = false\n{extra}\n'
                    '[classical]\nkind = "lennard-jones"\n')
    return str(path)


def test_a_second_run_in_the_same_folder_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "biojax.cli", "simulate",
                             _lj_toml(tmp_path), "--steps", "2000000", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / ".biojax.lock").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert (out / ".biojax.lock").exists()
        code, err = cli(["simulate", _lj_toml(tmp_path), "--out", str(out), "--overwrite"],
                        capsys)
        assert code == 1
        assert f"is in use by process {proc.pid}" in err and "simulate" in err, err
        assert proc.poll() is None  # the first run goes on
    finally:
        proc.kill()
        proc.wait()


def test_results_without_a_checkpoint_are_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "trajectory.extxyz").write_text("precious frames\n")
    (out / "observables.csv").write_text("step,time_fs\n0,0.0\n")
    before = snapshot(out)
    code, err = cli(["simulate", _lj_toml(tmp_path), "--out", str(out)], capsys)
    assert code == 1 and "already holds results (trajectory.extxyz, observables.csv)" in err
    assert "--overwrite" in err and snapshot(out) == before
    # an output path that is a file, before any work
    (tmp_path / "afile").write_text("x")
    code, err = cli(["simulate", _lj_toml(tmp_path), "--out", str(tmp_path / "afile")],
                    capsys)
    assert code == 1 and "is an existing file" in err
    # asked for: replaced
    code, err = cli(["simulate", _lj_toml(tmp_path), "--out", str(out), "--overwrite"],
                    capsys)
    assert code == 0, err
    assert len(ase.io.read(out / "trajectory.extxyz", ":")) == 3
    # now a checkpoint is there: the message points to --resume
    before = snapshot(out)
    code, err = cli(["simulate", _lj_toml(tmp_path), "--out", str(out)], capsys)
    assert code == 1 and "--resume" in err and snapshot(out) == before
    assert not (out / ".biojax.lock").exists()


# ------------------------------------------------------------------ C. resume
def test_resume_with_another_model_is_refused_naming_the_difference(tmp_path):
    cfg = default_config(ensemble="nve", timestep_fs=2.0, temperature_K=100.0, steps=40,
                         chunk_steps=20, observe_every=10, frame_every=20, plots=False)
    Simulation(argon(), lj(), cfg).run(str(tmp_path), max_chunks=1)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"another model: architecture was .*'epsilon': "
                                          r"\[0.0103\].*now .*'epsilon': \[0.0104\].*; "
                                          r"parameters differ \(sha256 "):
        Simulation(argon(), lj(epsilon=0.0104), cfg).run(str(tmp_path), resume=True)
    with pytest.raises(ConfigError, match=r"cutoff was 8.5, now 8.0"):
        Simulation(argon(), lj(cutoff=8.0), cfg).run(str(tmp_path), resume=True)
    assert snapshot(tmp_path) == before
    done = Simulation(argon(), lj(), cfg).run(str(tmp_path), resume=True)
    assert done["completed"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path, capsys):
    """Cut to half its bytes, the checkpoint used to surface as a zipfile traceback."""
    out = tmp_path / "run"
    toml = _lj_toml(tmp_path)
    assert main(["simulate", toml, "--out", str(out)]) == 0
    ckpt = out / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:ckpt.stat().st_size // 2])
    before = snapshot(out)
    code, err = cli(["simulate", toml, "--out", str(out), "--resume"], capsys)
    assert code == 1
    assert "checkpoint.npz" in err and "is damaged or truncated" in err, err
    assert snapshot(out) == before


def test_first_checkpoint_comes_before_any_output(tmp_path):
    """A run killed after its first checkpoint but before writing step 0 (the checkpoint
    says started = false, no output files yet) resumes to the same bytes; one killed
    before that checkpoint has written nothing, so starting again is safe."""
    import json

    cfg = default_config(ensemble="nvt-langevin", timestep_fs=2.0, temperature_K=120.0,
                         steps=100, chunk_steps=50, observe_every=10, frame_every=50,
                         trajectory_format="dcd", plots=False)
    Simulation(argon(), lj(), cfg).run(str(tmp_path / "full"))
    Simulation(argon(), lj(), cfg).run(str(tmp_path / "killed"), max_chunks=0)
    ckpt = tmp_path / "killed" / "checkpoint.npz"
    with np.load(ckpt) as z:
        arrays = dict(z)
    meta = json.loads(bytes(arrays["meta"]).decode())
    assert meta["step"] == 0 and meta["started"]
    meta["started"] = False
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(ckpt, **arrays)
    for name in ("trajectory.dcd", "observables.csv", "topology.pdb"):
        (tmp_path / "killed" / name).unlink()
    Simulation(argon(), lj(), cfg).run(str(tmp_path / "killed"), resume=True)
    for name in ("trajectory.dcd", "observables.csv", "topology.pdb"):
        assert (tmp_path / "full" / name).read_bytes() == \
            (tmp_path / "killed" / name).read_bytes(), name


# ------------------------------------------------------------------ D. DCD / XTC
@pytest.mark.parametrize("fmt", ["dcd", "xtc"])
def test_dcd_xtc_resume_byte_identically(tmp_path, fmt):
    """Killed after a chunk with a torn frame appended, a DCD/XTC run resumes to the same
    bytes as an uninterrupted one (DCD's frame count in its header included)."""
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=2.0, temperature_K=120.0,
                         steps=200, chunk_steps=50, observe_every=5, frame_every=25,
                         trajectory_format=fmt, plots=False)
    Simulation(argon(), lj(), cfg).run(str(tmp_path / "full"))
    Simulation(argon(), lj(), cfg).run(str(tmp_path / "killed"), max_chunks=2)
    with open(tmp_path / "killed" / f"trajectory.{fmt}", "ab") as f:
        f.write(b"\x00\x01torn frame" * 50)
    Simulation(argon(), lj(), cfg).run(str(tmp_path / "killed"), resume=True)
    for name in (f"trajectory.{fmt}", "observables.csv", "topology.pdb"):
        assert (tmp_path / "full" / name).read_bytes() == \
            (tmp_path / "killed" / name).read_bytes(), name


@pytest.mark.parametrize("fmt", ["dcd", "xtc"])
def test_dcd_xtc_round_trip_through_mdtraj_and_analyze(tmp_path, fmt, ala2_potential,
                                                       capsys):
    """Alanine dipeptide from the shipped PDB, written as DCD/XTC: mdtraj reads back the
    start (the PDB) and the final state (nm × 10 = Å; DCD is float32 Å, XTC rounds to
    0.001 nm), with the PDB's atom and residue names in topology.pdb; ``biojax analyze``
    reads the file with that topology and finds φ/ψ equal to mdtraj's."""
    import mdtraj

    out = tmp_path / "run"
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=0.5, temperature_K=300.0,
                         steps=100, chunk_steps=50, observe_every=10, frame_every=10,
                         trajectory_format=fmt, plots=False)
    start = load_structure(ALA2_PDB)
    sim = Simulation(start, ala2_potential, cfg)
    sim.run(str(out))
    traj = mdtraj.load(str(out / f"trajectory.{fmt}"), top=str(out / "topology.pdb"))
    assert traj.n_frames == 11 and traj.n_atoms == 22
    tol = 1e-4 if fmt == "dcd" else 0.0051
    np.testing.assert_allclose(traj.xyz[0] * 10, start[0].positions, atol=tol)
    np.testing.assert_allclose(traj.xyz[-1] * 10, np.asarray(sim.final_state.position[0]),
                               atol=tol)
    assert [a.name for a in traj.topology.atoms][:3] == ["H1", "CH3", "H2"]  # openmm names
    assert [r.name for r in traj.topology.residues] == ["ACE", "ALA", "NME"]
    if fmt == "xtc":
        np.testing.assert_allclose(traj.time, np.arange(11) * 0.005, atol=1e-6)  # ps

    toml = tmp_path / "analyze.toml"
    toml.write_text(f'[trajectory]\npaths = ["{out / f"trajectory.{fmt}"}"]\n'
                    '[[features]]\nkind = "backbone_dihedrals"\nangles = ["phi", "psi"]\n'
                    '[reduce]\nmethod = "none"\n[cluster]\nk = 2\nn_init = 2\n'
                    '[msm]\nenabled = false\n[fes]\nfeatures = ["phi", "psi"]\nbins = 8\n'
                    'n_bootstrap = 10\n[output]\nplots = false\n'
                    f'directory = "{tmp_path / "analysis"}"\n')
    code, err = cli(["analyze", str(toml)], capsys)
    assert code == 0, err
    rows = (tmp_path / "analysis" / "states.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 12, rows[:3]
    phi_col = next(i for i, h in enumerate(header) if h.startswith("phi"))
    phi = np.array([float(r.split(",")[phi_col]) for r in rows[1:]])
    phi_ref = np.degrees(mdtraj.compute_phi(traj)[1][:, 0])
    if np.max(np.abs(phi)) < 3.5:  # written in radians
        phi = np.degrees(phi)
    np.testing.assert_allclose(phi, phi_ref, atol=0.5)


# ------------------------------------------------------------------ G. PDB start
def test_pdb_start_structure_through_openmm(tmp_path):
    """The shipped alanine-dipeptide PDB (atom names like 1HH3 that ASE cannot parse)
    loads with elements from openmm's topology and positions in Å; a CRYST1 record
    gives the periodic box."""
    frames = load_structure(ALA2_PDB)
    atoms = frames[0]
    assert len(frames) == 1 and atoms.get_chemical_formula() == "C6H12N2O2"
    np.testing.assert_allclose(atoms.positions[1], [2.000, 2.090, 0.000], atol=1e-6)
    assert not atoms.pbc.any()
    assert list(atoms.arrays["atomtypes"][:2]) == ["H1", "CH3"]  # openmm standard names
    text = open(ALA2_PDB).read()
    boxed = tmp_path / "boxed.pdb"
    boxed.write_text("CRYST1   30.000   31.000   32.000  90.00  90.00  90.00 P 1           1\n"
                     + text)
    atoms = load_structure(str(boxed))[0]
    assert atoms.pbc.all()
    np.testing.assert_allclose(atoms.cell.lengths(), [30.0, 31.0, 32.0], atol=1e-6)


# ------------------------------------------------------------------ E/F. progress, plots
def test_progress_and_plots(tmp_path, capsys):
    """Two replicas: energy.png and temperature.png, one legend naming both replicas (and
    the target line), axis labels with units; a single run has no replica legend. The
    progress bar (biojax.core.progress) reports steps/s and ns/day."""
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=2.0, temperature_K=120.0,
                         steps=100, chunk_steps=50, observe_every=10, frame_every=50,
                         replicas=2)
    summary = Simulation(argon(), lj(), cfg, progress=True).run(str(tmp_path / "r2"))
    err = capsys.readouterr().err
    assert "steps/s" in err and "ns_day" in err and "100/100" in err, err
    for name in ("energy.png", "temperature.png"):
        data = (tmp_path / "r2" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(summary["plots"]) == sorted(str(tmp_path / "r2" / n) for n in
                                              output.PLOT_FILES)
    folders = [str(tmp_path / "r2" / f"replica_{r:03d}") for r in range(2)]
    figs = output.plot_figures(folders, 120.0, "conserved energy")
    energy_axes = figs["energy.png"].axes
    assert [t.get_text() for t in energy_axes[0].get_legend().get_texts()] == \
        ["replica 0", "replica 1"]
    assert [ax.get_ylabel() for ax in energy_axes] == [
        "potential energy (eV)", "kinetic energy (eV)", "conserved energy drift (meV)"]
    assert energy_axes[-1].get_xlabel() == "time (ps)"
    t_ax = figs["temperature.png"].axes[0]
    assert [t.get_text() for t in t_ax.get_legend().get_texts()] == \
        ["replica 0", "replica 1", "target 120 K"]
    assert t_ax.get_ylabel() == "temperature (K)"
    one = output.plot_figures(folders[:1], None, "total energy")
    assert one["energy.png"].axes[0].get_legend() is None
    assert one["temperature.png"].axes[0].get_legend() is None
