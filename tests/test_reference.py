"""Reference calculators (OpenMM, GFN2-xTB, EMT), labelling and the ``sample`` command."""

import json
import os

import numpy as np
import pytest
from ase import units
from ase.build import bulk, molecule

from biojax.core.errors import ConfigError, DataError

ALA2 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                    "data", "alanine-dipeptide-gbsa", "alanine-dipeptide")


def _openmm_energy_kj(system, positions_nm):
    import openmm
    import openmm.unit as u

    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions_nm * u.nanometer)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


def _fd_forces(atoms, calc, indices, h):
    """-dE/dx by central differences for the given atom indices (all 3 components)."""
    out = np.zeros((len(indices), 3))
    for n, i in enumerate(indices):
        for k in range(3):
            e = []
            for s in (+1, -1):
                a = atoms.copy()
                a.positions[i, k] += s * h
                a.calc = calc
                e.append(a.get_potential_energy())
            out[n, k] = -(e[0] - e[1]) / (2 * h)
    return out


@pytest.mark.parametrize("solvent", ["none", "OBC2"])
def test_openmm_calculator_matches_openmm_energy(solvent):
    from openmm import app

    from biojax.data.reference import make_calculator, resolve_path

    calc = make_calculator("openmm", prmtop=ALA2 + ".prmtop", coordinates=ALA2 + ".crd",
                           implicit_solvent=solvent)
    atoms = calc.template_atoms()
    atoms.rattle(0.05, seed=1)
    atoms.calc = calc
    prmtop = app.AmberPrmtopFile(resolve_path(ALA2 + ".prmtop"))
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None,
                                 implicitSolvent=None if solvent == "none" else app.OBC2)
    e_kj = _openmm_energy_kj(system, atoms.positions / 10.0)
    # 1 eV = 96.485 kJ/mol; positions Å -> nm
    assert atoms.get_potential_energy() == pytest.approx(e_kj / 96.48533212, rel=1e-6, abs=1e-8)
    assert atoms.get_chemical_formula() == "C6H12N2O2"


def test_openmm_calculator_pdb_forcefield_forces_are_minus_gradient():
    from biojax.data.reference import make_calculator

    calc = make_calculator("openmm", pdb=ALA2 + ".pdb", forcefield=["amber14-all.xml"],
                           implicit_solvent="GBn2")
    atoms = calc.template_atoms()
    atoms.rattle(0.03, seed=2)
    atoms.calc = calc
    forces = atoms.get_forces()
    idx = [0, 6, 8, 15]
    fd = _fd_forces(atoms, calc, idx, h=1e-4)
    np.testing.assert_allclose(forces[idx], fd, atol=2e-4)
    assert np.abs(forces).max() > 0.1  # a real, non-trivial force field


def test_gfn2_xtb_forces_are_minus_gradient():
    from biojax.data.reference import label, make_calculator

    calc = make_calculator("gfn2-xtb", accuracy=0.01)
    water = molecule("H2O")
    water.rattle(0.05, seed=3)
    [labelled] = label([water], calc, progress=False)
    f = labelled.get_forces()
    fd = _fd_forces(water, calc, [0, 1, 2], h=1e-3)
    np.testing.assert_allclose(f, fd, atol=2e-3)
    # GFN2-xTB total energy of water is about -5.07 Eh
    assert labelled.get_potential_energy() / units.Hartree == pytest.approx(-5.07, abs=0.02)


def test_emt_stress_matches_finite_strain():
    from ase.calculators.emt import EMT

    from biojax.data.reference import label, make_calculator

    atoms = bulk("Cu", "fcc", a=3.55, cubic=True)
    atoms.set_cell(atoms.cell @ (np.eye(3) + [[0.01, 0.004, 0], [0.004, -0.01, 0],
                                              [0, 0, 0.005]]), scale_atoms=True)
    atoms.rattle(0.05, seed=4)
    [lab] = label([atoms], make_calculator("emt"), compute_stress=True, progress=False)
    stress = lab.get_stress(voigt=False)
    vol, h = atoms.get_volume(), 1e-5
    for i, j in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2)]:
        e = []
        for s in (+1, -1):
            eps = np.eye(3)
            eps[i, j] += s * h / 2 if i != j else s * h
            if i != j:
                eps[j, i] += s * h / 2
            a = atoms.copy()
            a.set_cell(atoms.cell @ eps, scale_atoms=True)
            a.calc = EMT()
            e.append(a.get_potential_energy())
        assert stress[i, j] == pytest.approx((e[0] - e[1]) / (2 * h) / vol, abs=1e-6)


def test_label_stress_needs_periodic_frames():
    from biojax.data.reference import label, make_calculator

    with pytest.raises(DataError, match="not periodic"):
        label([molecule("H2O")], make_calculator("emt"), compute_stress=True, progress=False)


def test_dihedral_degrees_matches_ase():
    from biojax.data.sample import dihedral_degrees

    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=5)
    idx = [3, 0, 1, 2]
    ref = atoms.get_dihedral(*idx)
    ref = ((ref + 180) % 360) - 180
    assert dihedral_degrees(atoms.positions, idx) == pytest.approx(ref, abs=1e-6)


CU_RECIPE = """
kind = "rattle-strain"
frames = 3
seed = 11
[reference]
name = "emt"
stress = true
[rattle_strain]
element = "Cu"
cubic = true
repeat = [1, 1, 2]
max_displacement_sigma = 0.05
max_strain = 0.02
"""

ALA2_RECIPE = """
kind = "openmm-md"
frames = 4
seed = 3
[reference]
name = "openmm"
options = {{ prmtop = "{p}.prmtop", coordinates = "{p}.crd" }}
[openmm_md]
prmtop = "{p}.prmtop"
coordinates = "{p}.crd"
save_every = 20
restrained_steps = 50
release_steps = 10
dihedrals = {{ phi = [4, 6, 8, 14], psi = [6, 8, 14, 16] }}
[[openmm_md.runs]]
name = "alphaL"
restraints = {{ phi = 60.0, psi = 40.0 }}
[[openmm_md.runs]]
name = "free"
""".format(p=ALA2)


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_sample_command_rattle_strain(tmp_path, capsys):
    import ase.io

    from biojax.cli import main
    from biojax.data.sample import recipe_from_dataset

    recipe = _write(tmp_path / "cu.toml", CU_RECIPE)
    out = tmp_path / "cu.extxyz"
    assert main(["sample", recipe, "--out", str(out), "--frames", "4", "--quiet"]) == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 4 and all(len(a) == 8 and a.pbc.all() for a in frames)
    for a in frames:
        assert np.isfinite(a.get_potential_energy())
        assert a.get_forces().shape == (8, 3) and a.get_stress().shape == (6,)
    rec = json.loads(frames[0].info["biojax_recipe"])
    assert rec["frames"] == 4 and rec["seed"] == 11 and rec["kind"] == "rattle-strain"
    prov = json.loads(frames[0].info["biojax_provenance"])
    assert prov["versions"]["biojax"] and prov["seed"] == 11 and prov["date"]
    recipe_obj, _ = recipe_from_dataset(out)
    assert recipe_obj.rattle_strain.repeat == [1, 1, 2]
    # same recipe + seed -> same numbers
    out2 = tmp_path / "cu2.extxyz"
    assert main(["sample", recipe, "--out", str(out2), "--frames", "4", "--quiet"]) == 0
    again = ase.io.read(out2, ":")
    np.testing.assert_allclose(again[3].positions, frames[3].positions)
    assert "wrote 4 frames" in capsys.readouterr().out


def test_sample_openmm_md_records_dihedrals_and_labels(tmp_path):
    import ase.io

    from biojax.data.reference import make_calculator
    from biojax.data.sample import dihedral_degrees, load_recipe, run_recipe

    path = _write(tmp_path / "ala2.toml", ALA2_RECIPE)
    summary = run_recipe(load_recipe(path), tmp_path / "ala2.extxyz", base_dir=tmp_path,
                         progress=False)
    assert summary["frames"] == 4 and summary["atoms"] == 22
    frames = ase.io.read(tmp_path / "ala2.extxyz", ":")
    assert [a.info["sample_run"] for a in frames] == ["alphaL", "alphaL", "free", "free"]
    calc = make_calculator("openmm", prmtop=ALA2 + ".prmtop")
    for a in frames:
        assert a.info["phi"] == pytest.approx(dihedral_degrees(a.positions, [4, 6, 8, 14]),
                                              abs=1e-2)
        b = a.copy()
        b.calc = calc
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-5)
    assert frames[0].info["phi"] > 0  # started in alpha_L (phi ~ +60)


def test_unknown_reference_name_lists_valid_names():
    from biojax.data.reference import make_calculator

    with pytest.raises(ConfigError, match="unknown reference engine .dftb.; registered: emt, gfn2-xtb, openmm"):
        make_calculator("dftb")
    with pytest.raises(ConfigError, match="valid options are"):
        make_calculator("gfn2-xtb", basis="sto-3g")


def test_missing_structure_file_is_a_data_error(tmp_path):
    from biojax.data.reference import make_calculator

    with pytest.raises(DataError, match="file not found.*nope.prmtop"):
        make_calculator("openmm", prmtop=str(tmp_path / "nope.prmtop"))
    recipe = _write(tmp_path / "r.toml", ALA2_RECIPE.replace(
        f'prmtop = "{ALA2}.prmtop"\ncoordinates', 'prmtop = "missing.prmtop"\ncoordinates'))
    from biojax.cli import main

    out = tmp_path / "x.extxyz"
    assert main(["sample", recipe, "--out", str(out), "--quiet"]) == 1
    assert not out.exists()


def test_unknown_config_key_is_rejected(tmp_path, capsys):
    from biojax.cli import main

    recipe = _write(tmp_path / "bad.toml", CU_RECIPE.replace("max_strain", "max_stran"))
    assert main(["sample", recipe, "--out", str(tmp_path / "o.extxyz")]) == 1
    err = capsys.readouterr().err
    assert "bad.toml" in err and "'max_stran'" in err and "max_strain" in err
    recipe = _write(tmp_path / "bad2.toml", CU_RECIPE.replace('kind = "rattle-strain"',
                                                              'kind = "openmm-md"'))
    assert main(["sample", recipe, "--out", str(tmp_path / "o.extxyz")]) == 1
    assert "[openmm_md]" in capsys.readouterr().err


def test_failure_mid_run_leaves_no_partial_file(tmp_path, monkeypatch):
    from ase.calculators.emt import EMT

    from biojax.data import sample
    from biojax.data.sample import load_recipe, run_recipe

    calls = {"n": 0}

    class Flaky(EMT):
        def calculate(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 2:
                raise RuntimeError("engine crashed")
            super().calculate(*args, **kwargs)

    monkeypatch.setattr(sample, "make_calculator", lambda *a, **k: Flaky())
    recipe = load_recipe(_write(tmp_path / "cu.toml", CU_RECIPE))
    out = tmp_path / "cu.extxyz"
    with pytest.raises(DataError, match="frame 2.*engine crashed"):
        run_recipe(recipe, out, progress=False)
    assert os.listdir(tmp_path) == ["cu.toml"]

    # a failure while writing keeps the previous file intact and leaves no temp file
    monkeypatch.undo()
    out.write_text("previous dataset\n")

    def broken_write(path, frames, format):
        with open(path, "w") as f:
            f.write("3\npartial")
        raise OSError("disk full")

    import ase.io
    monkeypatch.setattr(ase.io, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        run_recipe(recipe, out, progress=False)
    assert out.read_text() == "previous dataset\n"
    assert sorted(os.listdir(tmp_path)) == ["cu.extxyz", "cu.toml"]
