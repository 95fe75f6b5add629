"""Models and the Potential against physics: force = −∇E, invariances, stress by finite
strain (also checked against ASE's EMT convention), jax-md and ASE forms agreeing."""

import functools

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from jax_md import partition, space

from biojax.calculator import BiojaxCalculator
from biojax.core.errors import ConfigError, ModelError
from biojax.nn.io import load_potential, save_potential
from biojax.nn.models import build_model, init_potential

ARCHS = ["schnet", "painn"]


@functools.lru_cache(maxsize=None)
def potential_for(name, elements=(1, 6, 8), cutoff=4.0, seed=1):
    arch = {"name": name, "features": 16, "n_interactions": 2}
    return init_potential(arch, elements, cutoff, reference_energies=[-13.6, -1025.0, -2035.0][:len(elements)],
                          key=jax.random.PRNGKey(seed), dtype=jnp.float64)


@pytest.fixture(autouse=True, scope="module")
def float64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.parametrize("name", ARCHS)
def test_forces_are_minus_gradient_by_finite_differences(name):
    atoms = ethanol()
    atoms.calc = BiojaxCalculator(potential_for(name))
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3  # a nontrivial check
    h = 1e-4
    for i, k in [(0, 0), (3, 1), (8, 2)]:
        p = atoms.get_positions()
        p[i, k] += h
        atoms.set_positions(p)
        e_plus = atoms.get_potential_energy()
        p[i, k] -= 2 * h
        atoms.set_positions(p)
        e_minus = atoms.get_potential_energy()
        p[i, k] += h
        atoms.set_positions(p)
        np.testing.assert_allclose(forces[i, k], -(e_plus - e_minus) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ARCHS)
def test_energy_invariant_and_forces_equivariant(name):
    atoms = ethanol()
    calc = BiojaxCalculator(potential_for(name))
    atoms.calc = calc
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.linalg.det(q))
    moved = atoms.copy()
    moved.set_positions(atoms.get_positions() @ rotation.T + np.array([1.5, -2.0, 0.7]))
    moved.calc = calc
    np.testing.assert_allclose(moved.get_potential_energy(), e0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(moved.get_forces(), f0 @ rotation.T, atol=1e-9)
    # permutation of like atoms (the hydrogens) permutes forces, keeps the energy
    perm = np.arange(len(atoms))
    hydrogens = np.where(atoms.numbers == 1)[0]
    perm[hydrogens] = hydrogens[::-1]
    swapped = atoms[perm]
    swapped.calc = calc
    np.testing.assert_allclose(swapped.get_potential_energy(), e0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(swapped.get_forces(), f0[perm], atol=1e-9)


def strain_derivative(atoms, h=1e-5):
    """(1/V) dE/dε by central differences of symmetric strains (ASE's stress convention)."""
    cell0, pos0 = atoms.get_cell().array.copy(), atoms.get_positions().copy()
    volume = atoms.get_volume()
    out = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[i, j] += sign * h / 2
                eps[j, i] += sign * h / 2
                deformation = np.eye(3) + eps
                atoms.set_cell(cell0 @ deformation, scale_atoms=False)
                atoms.set_positions(pos0 @ deformation)
                energies.append(atoms.get_potential_energy())
            out[i, j] = (energies[0] - energies[1]) / (2 * h) / volume
    atoms.set_cell(cell0, scale_atoms=False)
    atoms.set_positions(pos0)
    return out


def voigt_to_matrix(s):
    xx, yy, zz, yz, xz, xy = s
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def copper():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.get_cell().array @ (np.eye(3) + np.array(
        [[0.01, 0.003, 0], [0.003, -0.02, 0.002], [0, 0.002, 0.015]])), scale_atoms=True)
    return atoms


def test_emt_stress_follows_the_strain_derivative_convention():
    """The finite-strain check agrees with ASE's EMT, so the convention we test is ASE's."""
    atoms = copper()
    atoms.calc = EMT()
    np.testing.assert_allclose(voigt_to_matrix(atoms.get_stress()), strain_derivative(atoms),
                               atol=1e-6)


@pytest.mark.parametrize("name", ARCHS)
def test_stress_agrees_with_finite_strain_on_copper(name):
    atoms = copper()
    atoms.calc = BiojaxCalculator(potential_for(name, elements=(29,), cutoff=4.5))
    stress = voigt_to_matrix(atoms.get_stress())
    assert np.abs(stress).max() > 1e-6
    np.testing.assert_allclose(stress, strain_derivative(atoms), atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize("fmt", [partition.Sparse, partition.OrderedSparse])
@pytest.mark.parametrize("name", ARCHS)
def test_jax_md_energy_fn_matches_ase_calculator_periodic(name, fmt):
    """Directed edges and unordered pairs (OrderedSparse) give the ASE calculator's numbers."""
    atoms = copper()
    potential = potential_for(name, elements=(29,), cutoff=3.0)
    atoms.calc = BiojaxCalculator(potential)
    box = jnp.asarray(atoms.get_cell().array.T)  # jax-md: columns are lattice vectors
    displacement, _ = space.periodic_general(box, fractional_coordinates=False)
    neighbor_fn = partition.neighbor_list(displacement, box, potential.cutoff,
                                          format=fmt, fractional_coordinates=False)
    positions = jnp.asarray(atoms.get_positions())
    neighbor = neighbor_fn.allocate(positions)
    energy_fn = potential.energy_fn(displacement, atoms.numbers)
    value, grad = jax.jit(jax.value_and_grad(energy_fn))(positions, neighbor)
    energy = value + potential.reference_energy(atoms.numbers)
    forces = -grad
    np.testing.assert_allclose(energy, atoms.get_potential_energy(), atol=1e-8)
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-8)


@pytest.mark.parametrize("name", ARCHS + ["lennard-jones"])
def test_pairs_and_directed_edges_agree_on_a_molecule(name):
    """Each pair once (OrderedSparse) = both directions (Sparse) = the calculator, in free
    space: energy, per-atom energies and forces."""
    from biojax.nn.classical import lennard_jones

    atoms = ethanol()
    potential = (lennard_jones((1, 6, 8), [0.8, 1.1, 1.0], [0.002, 0.004, 0.006], cutoff=4.0)
                 if name == "lennard-jones" else potential_for(name))
    atoms.calc = BiojaxCalculator(potential)
    displacement, _ = space.free()
    positions = jnp.asarray(atoms.get_positions())
    results = []
    for fmt in (partition.Sparse, partition.OrderedSparse):
        neighbor_fn = partition.neighbor_list(displacement, 20.0, potential.cutoff, format=fmt,
                                              disable_cell_list=True)
        neighbor = neighbor_fn.allocate(positions)
        energy_fn = potential.energy_fn(displacement, atoms.numbers)
        value, grad = jax.value_and_grad(energy_fn)(positions, neighbor)
        per_atom = potential.energy_fn(displacement, atoms.numbers, per_atom=True)(
            positions, neighbor)
        results.append((value, -grad, per_atom))
    (e1, f1, a1), (e2, f2, a2) = results
    np.testing.assert_allclose(e2, e1, atol=1e-10)
    np.testing.assert_allclose(a2, a1, atol=1e-10)
    np.testing.assert_allclose(f2, f1, atol=1e-10)
    # classical parameters are float32, so the calculator agrees to float32 precision
    np.testing.assert_allclose(e2 + potential.reference_energy(atoms.numbers),
                               atoms.get_potential_energy(), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(f2, atoms.get_forces(), rtol=1e-5, atol=1e-8)
    assert np.max(np.abs(f1)) > 1e-3  # a real check, not zeros against zeros


def test_save_and_load_roundtrip(tmp_path):
    potential = potential_for("painn")
    save_potential(potential, tmp_path / "model")
    loaded = load_potential(tmp_path / "model")
    atoms = ethanol()
    atoms.calc = BiojaxCalculator(potential)
    e0 = atoms.get_potential_energy()
    atoms.calc = BiojaxCalculator(loaded)
    np.testing.assert_allclose(atoms.get_potential_energy(), e0, atol=1e-9)
    assert loaded.elements == potential.elements
    # overwriting is atomic and leaves no temporary directories behind
    save_potential(loaded, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("kind", ["lennard-jones", "morse"])
def test_pair_potentials_save_and_load(tmp_path, kind):
    """Classical pair potentials are saved like trained models and load into the same
    model (registered by name), the same parameters and the same energies and forces."""
    from biojax.nn.classical import lennard_jones, morse

    pot = (lennard_jones([18, 36], [3.4, 3.6], [0.0103, 0.014], cutoff=7.0)
           if kind == "lennard-jones" else morse([29], D=0.34, alpha=1.36, r0=2.6, cutoff=6.0))
    save_potential(pot, tmp_path / kind)
    loaded = load_potential(tmp_path / kind)
    assert type(loaded.model) is type(pot.model) and loaded.model == pot.model
    assert loaded.architecture["name"] == kind
    atoms = (bulk("Ar", "fcc", a=5.3, cubic=True).repeat(3) if kind == "lennard-jones"
             else bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3))
    if kind == "lennard-jones":
        atoms.numbers[::4] = 36
    atoms.rattle(0.05, seed=1)
    results = []
    for p in (pot, loaded):
        atoms.calc = BiojaxCalculator(p)
        results.append((atoms.get_potential_energy(), atoms.get_forces()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-12)
    assert abs(results[0][0]) > 1e-3 and np.abs(results[0][1]).max() > 1e-3


def test_checked_in_v1_model_stays_loadable():
    """A model written by biojax 0.1 (format 1) must load in every later version."""
    import os
    here = os.path.join(os.path.dirname(__file__), "data", "model_v1")
    potential = load_potential(here)
    atoms = molecule("CH3CH2OH")
    atoms.calc = BiojaxCalculator(potential)
    expected = float(open(os.path.join(here, "expected_energy.txt")).read())
    np.testing.assert_allclose(atoms.get_potential_energy(), expected, rtol=1e-6)


def test_unknown_element_and_missing_model_are_clear_errors(tmp_path):
    potential = potential_for("schnet")
    atoms = molecule("CH3SH")  # sulfur is not known to the model
    atoms.calc = BiojaxCalculator(potential)
    with pytest.raises(ModelError, match="S not known to this model"):
        atoms.get_potential_energy()
    with pytest.raises(ModelError, match="model directory not found"):
        load_potential(tmp_path / "nope")


def test_unknown_model_hyperparameter_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown key.*'featurs'.*valid keys.*features"):
        build_model({"name": "painn", "featurs": 8}, 1, 5.0)
    with pytest.raises(ConfigError, match="unknown model .allegro.; registered: .*painn, schnet"):
        build_model({"name": "allegro"}, 1, 5.0)


def test_dense_pair_energy_derivatives_equal_plain_autodiff():
    """The Dense-list Lennard-Jones energy with its own derivative rule (row sums, no
    scatter) gives the same forces, parameter gradients and Hessian-vector products
    (forward-over-reverse and reverse-over-reverse) as plain autodiff of the pair sum."""
    from ase.lattice.cubic import FaceCenteredCubic

    from biojax.md.system import orthorhombic_displacement
    from biojax.nn.classical import lennard_jones

    atoms = FaceCenteredCubic("Ar", size=(3, 3, 3), latticeconstant=5.8)
    side = jnp.asarray(atoms.cell.diagonal())
    displacement = orthorhombic_displacement(side)
    pot = lennard_jones([18], 3.405, 0.0103, cutoff=8.5)
    pot = pot.replace(params=jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64),
                                                    pot.params))
    rng = np.random.default_rng(0)
    R = jnp.asarray((atoms.positions + 0.2 * rng.standard_normal((len(atoms), 3))) % side)
    neighbor = partition.neighbor_list(displacement, side, 9.0,
                                       format=partition.Dense).allocate(R)
    fast = pot.energy_fn(displacement, atoms.numbers)
    per_atom = pot.energy_fn(displacement, atoms.numbers, per_atom=True)
    plain = lambda r, params=None: jnp.sum(per_atom(r, neighbor, params=params))  # noqa: E731
    np.testing.assert_allclose(fast(R, neighbor), plain(R), rtol=1e-12)
    forces = -jax.grad(fast)(R, neighbor)
    np.testing.assert_allclose(forces, -jax.grad(plain)(R), atol=1e-12)
    assert np.max(np.abs(forces)) > 0.05
    g_fast = jax.grad(lambda p: fast(R, neighbor, params=p))(pot.params)
    g_plain = jax.grad(lambda p: plain(R, params=p))(pot.params)
    for k in g_plain:
        np.testing.assert_allclose(g_fast[k], g_plain[k], rtol=1e-10)
    v = jnp.asarray(rng.standard_normal(R.shape))
    hvp = lambda f: jax.jvp(jax.grad(f), (R,), (v,))[1]  # noqa: E731
    np.testing.assert_allclose(hvp(lambda r: fast(r, neighbor)), hvp(plain), atol=1e-11)
    rr = lambda f: jax.grad(lambda r: jnp.vdot(jax.grad(f)(r), v))(R)  # noqa: E731
    np.testing.assert_allclose(rr(lambda r: fast(r, neighbor)), rr(plain), atol=1e-11)


def test_orthorhombic_displacement_matches_jax_md_periodic():
    """Rounding minimum image = jax-md's mod-based one, also under a strain perturbation."""
    from biojax.md.system import orthorhombic_displacement

    side = jnp.asarray([10.0, 12.0, 9.0])
    ours = orthorhombic_displacement(side)
    theirs, _ = space.periodic(side)
    rng = np.random.default_rng(1)
    a, b = (jnp.asarray(rng.uniform(0, 1, (200, 3)) * np.asarray(side)) for _ in range(2))
    strain = jnp.eye(3) + 0.01 * jnp.asarray(rng.standard_normal((3, 3)))
    for kw in ({}, {"perturbation": strain}):
        np.testing.assert_allclose(jax.vmap(lambda x, y: ours(x, y, **kw))(a, b),
                                   jax.vmap(lambda x, y: theirs(x, y, **kw))(a, b),
                                   atol=1e-12)


def test_calculator_padding_never_shrinks():
    """After a structure with many edges, one with fewer reuses the compiled shape (no
    recompilation during ASE MD) and gives the same numbers as a fresh calculator."""
    potential = potential_for("schnet", cutoff=2.0)
    calc = BiojaxCalculator(potential)
    small, squeezed = ethanol(), ethanol()
    squeezed.positions *= 0.6  # twice as many pairs inside the cutoff
    squeezed.calc = calc
    squeezed.get_forces()
    edges_squeezed = calc._padded[1]
    small.calc = calc
    forces = small.get_forces()
    assert calc._evaluate._cache_size() == 1 and calc._padded[1] == edges_squeezed
    alone = BiojaxCalculator(potential)
    probe = ethanol()
    probe.calc = alone
    probe.get_forces()
    assert alone._padded[1] < edges_squeezed  # the small one alone has a smaller shape
    fresh = ethanol()
    fresh.calc = BiojaxCalculator(potential)
    np.testing.assert_allclose(forces, fresh.get_forces(), atol=1e-10)
    np.testing.assert_allclose(small.get_potential_energy(), fresh.get_potential_energy(),
                               atol=1e-10)


def test_chiral_painn_tells_mirror_images_apart_and_stays_rotation_invariant():
    """Plain PaiNN gives a molecule and its mirror image the same energy; the chiral
    readout (pseudo-scalars a·(b×c)) must not, while rotations still change nothing."""
    atoms = ethanol()
    mirror = atoms.copy()
    mirror.positions[:, 0] *= -1
    arch = {"name": "painn", "features": 16, "n_interactions": 2, "chiral": True}
    chiral = init_potential(arch, (1, 6, 8), 4.0, key=jax.random.PRNGKey(1),
                            dtype=jnp.float64)
    # the chiral weights start small; scale them so the effect is far above round-off
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: 30 * x if "chiral" in jax.tree_util.keystr(path) else x,
        chiral.params)
    energies = {}
    for name, pot in (("plain", potential_for("painn")),
                      ("chiral", chiral.replace(params=params))):
        calc = BiojaxCalculator(pot)
        energies[name] = [calc.get_potential_energy(a) for a in (atoms, mirror)]
        rotated = atoms.copy()
        q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))
        rotated.positions = atoms.positions @ (q * np.sign(np.linalg.det(q))).T
        assert calc.get_potential_energy(rotated) == pytest.approx(energies[name][0],
                                                                   abs=1e-9)
    assert energies["plain"][0] == pytest.approx(energies["plain"][1], abs=1e-9)
    assert abs(energies["chiral"][0] - energies["chiral"][1]) > 1e-4
