"""The CPU fast paths of Lennard-Jones on Dense lists: rows done in blocks (force rule and
cell-list rebuild) and the unit-Jacobian force rule give what the plain paths give."""

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.calculators.lj import LennardJones
from ase.lattice.cubic import FaceCenteredCubic
from ase.neighborlist import neighbor_list

from biojax.md.cells import dense_cell_neighbor_list
from biojax.md.system import make_space, to_internal
from biojax.nn import classical

SIGMA, EPS, CUTOFF = 3.405, 0.0103, 8.5


def _liquid_argon() -> ase.Atoms:
    atoms = FaceCenteredCubic("Ar", size=(5, 5, 5), latticeconstant=5.8)  # 500 atoms
    atoms.rattle(0.3, seed=7)
    atoms.wrap()
    return atoms


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="row blocks are CPU-only")
def test_row_blocks_give_the_same_lists_and_forces_as_ase(monkeypatch):
    """With blocks of ~80 rows (the last one padded) the cell-list rebuild finds exactly
    ASE's pairs within cutoff + skin, energy and forces equal ASE's LennardJones
    (smooth, same cutoff and onset) and the unblocked run, and so does the strain
    derivative (plain autodiff through the blocks)."""
    atoms = _liquid_argon()
    sys_space = make_space(atoms, npt=False)
    positions = jnp.asarray(to_internal(atoms.positions, sys_space))
    pot = classical.lennard_jones([18], SIGMA, EPS, cutoff=CUTOFF)

    def run():
        fns = dense_cell_neighbor_list(sys_space.displacement_fn, sys_space.box, CUTOFF,
                                       0.5, 1.25)
        nbrs = fns.allocate(positions)
        energy = pot.energy_fn(sys_space.displacement_fn, atoms.numbers)
        e, g = jax.value_and_grad(lambda r: energy(r, nbrs))(positions)
        # the strain derivative (jax-md's pressure) goes through plain autodiff
        virial = jax.grad(lambda eps: energy(positions, nbrs, perturbation=eps))(
            jnp.eye(3))
        return nbrs, float(e), -np.asarray(g), np.asarray(virial)

    nbrs, e_all, f_all, v_all = run()
    assert classical.row_block(len(atoms), nbrs.idx.shape[1]) == len(atoms)  # one block
    monkeypatch.setattr(classical, "ROW_BLOCK_SLOTS", 8_000)
    assert 20 < classical.row_block(len(atoms), nbrs.idx.shape[1]) < len(atoms) // 4
    blocked, e, f, v = run()
    assert not blocked.did_buffer_overflow

    i, j = neighbor_list("ij", atoms, CUTOFF + 0.5)
    idx = np.asarray(blocked.idx)
    ours = sorted((a, int(b)) for a in range(len(atoms)) for b in idx[a] if b < len(atoms))
    assert ours == sorted(zip(i.tolist(), j.tolist()))

    ref = atoms.copy()
    ref.calc = LennardJones(sigma=SIGMA, epsilon=EPS, rc=CUTOFF, ro=0.8 * CUTOFF,
                            smooth=True)
    f_ase = ref.get_forces()
    np.testing.assert_allclose(e, ref.get_potential_energy(), rtol=2e-5)
    np.testing.assert_allclose(f, f_ase, atol=2e-5 * np.abs(f_ase).max())
    np.testing.assert_allclose(e, e_all, rtol=1e-6)
    np.testing.assert_allclose(f, f_all, atol=1e-6 * np.abs(f_all).max())
    assert np.abs(v_all).max() > 0.1
    np.testing.assert_allclose(v, v_all, rtol=1e-5, atol=1e-5 * np.abs(v_all).max())


def test_unit_jacobian_rule_equals_the_pulled_back_rule():
    """The force rule for displacements with ∂d/∂a = 1 (2 Σ_j φ'(r²) d_ij) equals the
    general one that pulls the cotangent back through the displacement."""
    atoms = FaceCenteredCubic("Ar", size=(3, 3, 3), latticeconstant=5.8)
    atoms.rattle(0.2, seed=3)
    atoms.wrap()
    sys_space = make_space(atoms, npt=False)
    assert sys_space.displacement_fn.unit_jacobian
    general = lambda a, b, **kw: sys_space.displacement_fn(a, b, **kw)  # noqa: E731
    positions = jnp.asarray(to_internal(atoms.positions, sys_space))
    fns = dense_cell_neighbor_list(sys_space.displacement_fn, sys_space.box, 8.0, 0.5)
    nbrs = fns.allocate(positions)
    pot = classical.lennard_jones([18], SIGMA, EPS, cutoff=8.0)
    forces = [-jax.grad(lambda r: pot.energy_fn(d, atoms.numbers)(r, nbrs))(positions)
              for d in (sys_space.displacement_fn, general)]
    assert np.abs(np.asarray(forces[0])).max() > 0.01
    np.testing.assert_allclose(forces[0], forces[1], atol=1e-6)
