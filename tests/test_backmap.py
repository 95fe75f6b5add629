"""Back-mapping CG alanine dipeptide to atoms (biojax.cg.backmap): torsions taken from the
beads, bonds inside the thermal window of independent data, the restraint pulling the
mapped atoms onto the beads, and bad input."""

import os

import ase.io
import numpy as np
import pytest

from biojax.cg import backmap as bm
from biojax.core.errors import BiojaxError, DataError, ModelError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")
CGNET = os.path.join(ROOT, "examples", "data", "cgnet_ala2", "ala2_coordinates.npy")
XTB = os.path.join(ROOT, "examples", "data", "ala2_xtb.extxyz")
FG_MODEL = os.path.join(ROOT, "examples", "models", "ala2_painn")
BEADS = [[4], [6], [8], [14], [16]]  # C(ACE), N, CA, C, N(NME)
PHI_PSI = np.array([[0, 1, 2, 3], [1, 2, 3, 4]])
TOLERANCE_DEG = 5.0


@pytest.fixture(scope="module")
def template():
    return ase.io.read(TEMPLATE)


@pytest.fixture(scope="module")
def fg():
    from biojax.nn.io import load_potential

    return load_potential(FG_MODEL)


@pytest.fixture(scope="module")
def backmapped(template, fg):
    # αR, β/PII and αL frames of the CGnet data (mapped all-atom MD in water, 300 K)
    from biojax.core.geometry import dihedrals_float64

    beads = np.load(CGNET, mmap_mode="r")
    phi, psi = np.degrees(dihedrals_float64(beads[::50], PHI_PSI)).T
    picks = [np.argmax((phi < 0) & (psi > -100) & (psi < 0)),   # αR
             np.argmax((phi < 0) & (psi > 100)),                 # β/PII
             np.argmax(phi > 30)]                                # αL
    frames = np.asarray(beads[::50][picks], np.float64)
    matrix = bm.matrix_from_groups(BEADS, template.get_masses())
    res = bm.backmap(frames, template, fg, matrix, BEADS,
                     bm.RelaxSettings(batch=3, steps=1500))
    return frames, res


def test_phi_psi_follow_the_beads(backmapped):
    from biojax.core.geometry import dihedrals_float64

    frames, res = backmapped
    assert res["torsions"] == [([0, 1, 2, 3], [4, 6, 8, 14]), ([1, 2, 3, 4], [6, 8, 14, 16])]
    # the three frames really are in different basins (αL has φ > 0)
    target = np.degrees(dihedrals_float64(frames, PHI_PSI))
    assert target[2, 0] > 30 and target[0, 0] < 0 and target[1, 1] > 100
    atoms = np.degrees(dihedrals_float64(res["positions"], np.array([[4, 6, 8, 14],
                                                                     [6, 8, 14, 16]])))
    diff = (atoms - target + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(diff)) < TOLERANCE_DEG, diff
    np.testing.assert_allclose(np.abs(res["dihedral_error_deg"]), np.abs(diff), atol=1e-6)


def test_bonds_angles_in_thermal_window_and_chirality_kept(backmapped, template):
    """Every covalent bond length and bond angle lies within mean ± 4σ of 200 thermal
    frames of independent data (ff14SB/GBn2 MD at 300 K, examples/data/ala2_xtb.extxyz)."""
    from biojax.core.geometry import angles

    _, res = backmapped
    assert res["bonds_intact"].all() and res["chirality_kept"].all()
    ref = np.stack([a.positions for a in ase.io.read(XTB, ":200")])
    bonds = res["bonds"]

    def lengths(x):
        return np.linalg.norm(x[:, bonds[:, 0]] - x[:, bonds[:, 1]], axis=-1)

    L, L_ref = lengths(res["positions"]), lengths(ref)
    z = np.abs(L - L_ref.mean(0)) / L_ref.std(0)
    assert z.max() < 4.0, (z.max(), bonds[np.argmax(z.max(0))])
    adj = [set() for _ in range(len(template))]
    for i, j in bonds:
        adj[i].add(j)
        adj[j].add(i)
    triples = np.array([(i, j, k) for j in range(len(adj)) for i in adj[j] for k in adj[j]
                        if i < k])
    A, A_ref = np.asarray(angles(res["positions"], triples)), np.asarray(angles(ref, triples))
    za = np.abs(A - A_ref.mean(0)) / A_ref.std(0)
    assert za.max() < 4.0, (za.max(), triples[np.argmax(za.max(0))])


def test_relaxed_frames_are_minima_near_the_beads(backmapped):
    frames, res = backmapped
    assert np.all(res["fmax"] <= 0.01 + 1e-6)
    assert np.all(res["bead_rmsd"] < 0.05)
    # forces written are the FG model's alone: at the restrained minimum they balance the
    # restraint, k (M x − bead) on the bead atoms, and vanish on every other atom
    f = res["forces"]
    others = np.setdiff1d(np.arange(f.shape[1]), [g[0] for g in BEADS])
    assert np.max(np.abs(f[:, others])) < 0.02
    pull = 50.0 * (res["positions"][:, [g[0] for g in BEADS]] - frames)
    np.testing.assert_allclose(f[:, [g[0] for g in BEADS]], pull, atol=0.02)


def test_restraint_pulls_centre_of_mass_beads(template):
    """With no FG energy the restraint alone must bring the centres of mass of the groups
    onto beads displaced 0.3 Å from where the template puts them."""
    from biojax.nn.models import init_potential

    zero = init_potential({"name": "zero"}, sorted(set(template.numbers)), 5.0)
    groups = [[4, 5], [6, 7], [8, 9, 10], [14, 15], [16, 17]]
    matrix = bm.matrix_from_groups(groups, template.get_masses())
    rng = np.random.default_rng(0)
    beads = matrix @ template.positions + rng.normal(0, 0.3, (2, 5, 3))
    start = bm.place_template(template.positions, matrix, beads)
    before = np.sqrt(np.mean(np.sum((np.einsum("bn,fnk->fbk", matrix, start) - beads) ** 2,
                                    -1), -1))
    res = bm.backmap(beads, template, zero, matrix, groups,
                     bm.RelaxSettings(restraint_k=10.0, fmax=1e-3, batch=2))
    assert res["torsions"] == []  # multi-atom beads: no torsions are set
    assert np.all(before > 0.1)
    assert np.all(res["bead_rmsd"] < 1e-3), res["bead_rmsd"]


def test_bad_input(template, fg, tmp_path, capsys):
    matrix = bm.matrix_from_groups(BEADS, template.get_masses())
    frames = np.load(CGNET, mmap_mode="r")[:2].astype(np.float64)
    with pytest.raises(DataError, match="4 beads but the mapping has 5"):
        bm.check_inputs(frames[:, :4], template, matrix, fg)
    bad = frames.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(DataError, match=r"frame\(s\) \[1\] have non-finite"):
        bm.check_inputs(bad, template, matrix, fg)
    sulfur = template.copy()
    sulfur.numbers[0] = 16
    with pytest.raises(ModelError, match="element.*S not known"):
        bm.check_inputs(frames, sulfur, matrix, fg)
    with pytest.raises(BiojaxError, match="is not an atom index"):
        bm.parse_beads("4,6,x")  # not an index
    from biojax.cli import main

    npy = tmp_path / "cg.npy"
    np.save(npy, frames[:, :4])
    rc = main(["backmap", str(npy), TEMPLATE, "--model", FG_MODEL, "--beads",
               "4,6,8,14,16", "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 1
    assert "4 beads but the mapping has 5" in capsys.readouterr().err
    rc = main(["backmap", str(npy), TEMPLATE, "--model", FG_MODEL, "--beads", "4,6,99",
               "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 1
    assert "atom(s) [99] outside the template" in capsys.readouterr().err


def test_cg_model_bead_names_match_the_pdb_atoms():
    """The CG model's bead names (ACE1:C, ALA2:N, ...) resolve to template atoms 4, 6, 8,
    14, 16 through the PDB's residue and atom names."""
    import json

    from biojax.md.stage import load_structure

    pdb = load_structure(os.path.join(ROOT, "examples", "data", "alanine-dipeptide-gbsa",
                                      "alanine-dipeptide.pdb"))[0]
    with open(os.path.join(ROOT, "examples", "models", "cg_ala2_fm", "cg_model.json")) as f:
        names = json.load(f)["mapping"]["bead_names"]
    assert bm.groups_from_names(names, pdb) == BEADS
    with pytest.raises(DataError, match="ALA2:CG.*not found"):
        bm.groups_from_names(["ALA2:CG"], pdb)
    with pytest.raises(DataError, match="no PDB atom names"):
        bm.groups_from_names(names, ase.io.read(TEMPLATE))
