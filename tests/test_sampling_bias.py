"""Collective variables and biases (biojax.sampling.cv, biojax.sampling.bias): forces equal
−∇(bias), finite CV gradients at degenerate geometry, metadynamics equal to PLUMED's on the
same CV series, kill/resume, multiple walkers, umbrella centres, bad input."""

from __future__ import annotations

import glob
import os
import site

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
enable_x64 = jax.enable_x64  # context manager (jax.experimental.enable_x64 in older JAX)

from biojax.core.errors import ConfigError
from biojax.core.units import KB
from biojax.md.terms import System
from biojax.sampling import bias as B
from biojax.sampling import cv as C

PI = float(np.pi)


def free_system(n: int) -> System:
    return System(np.full(n, 6), np.full(n, 12.0), lambda a, b, **kw: a - b, False)


def quad(theta: float, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Four atoms whose dihedral 0-1-2-3 is ``theta`` (rad, IUPAC sign)."""
    p = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.5],
                  [np.cos(theta), np.sin(theta), 1.5]]) + np.asarray(shift)
    return p


def two_dihedrals(a: float, b: float) -> np.ndarray:
    return np.concatenate([quad(a), quad(b, (5.0, 0.0, 0.0))])


PHI_PSI = [{"name": "dihedral", "atoms": [0, 1, 2, 3]}, {"name": "dihedral", "atoms": [4, 5, 6, 7]}]


# ---------------------------------------------------------------------- PLUMED
def _plumed_kernel() -> str | None:
    """libplumedKernel.so: $PLUMED_KERNEL, or the one the `hillclimber` wheel ships (the
    PyPI `plumed` package is the Python wrapper only)."""
    if os.environ.get("PLUMED_KERNEL") and os.path.exists(os.environ["PLUMED_KERNEL"]):
        return os.environ["PLUMED_KERNEL"]
    roots = site.getsitepackages() + [site.getusersitepackages(), "/opt/plumed-kernel"]
    for root in roots:
        hits = glob.glob(os.path.join(root, "plumed", "_lib", "lib", "libplumedKernel.so"))
        if hits:
            return hits[0]
    return None


def _plumed_bias_series(series: np.ndarray, lines: list[str]) -> np.ndarray:
    """PLUMED's bias (eV) at each frame of a 2-dihedral series, run through the
    `plumed` Python interface as an MD engine would (frame i = step i)."""
    plumed = pytest.importorskip("plumed", reason="PLUMED's Python wrapper is not installed "
                                 "(pip install plumed; the kernel: PLUMED_KERNEL or the "
                                 "hillclimber wheel)")
    kernel = _plumed_kernel()
    if kernel is None:
        pytest.skip("no PLUMED kernel (libplumedKernel.so): set PLUMED_KERNEL, or pip "
                    "install hillclimber, whose wheel ships one")
    os.environ["PLUMED_KERNEL"] = kernel
    p = plumed.Plumed()
    p.cmd("setMDEngine", "python")
    p.cmd("setNatoms", 8)
    p.cmd("setTimestep", 1.0)
    p.cmd("setMDEnergyUnits", 96.48530749925792)  # PLUMED's kJ/mol per eV (UNITS ENERGY=eV)
    p.cmd("setLogFile", os.devnull)
    p.cmd("init")
    for line in ["UNITS ENERGY=eV", "phi: TORSION ATOMS=1,2,3,4",
                 "psi: TORSION ATOMS=5,6,7,8"] + lines:
        p.cmd("readInputLine", line)
    out = []
    for i, (a, b) in enumerate(series):
        pos = two_dihedrals(a, b)
        forces, virial = np.zeros((8, 3)), np.zeros((3, 3))
        p.cmd("setStep", i)
        p.cmd("setBox", np.zeros((3, 3)))
        p.cmd("setMasses", np.ones(8))
        p.cmd("setCharges", np.zeros(8))
        p.cmd("setPositions", pos)
        p.cmd("setForces", forces)
        p.cmd("setVirial", virial)
        p.cmd("calc")
        bias = np.zeros(1)
        p.cmd("getBias", bias)
        out.append(bias[0])
    p.finalize()
    return np.asarray(out)


def test_metad_equals_plumed_on_a_cv_series(tmp_path):
    """Well-tempered metadynamics on (φ, ψ)-like dihedrals along a fixed series: the bias
    at every step equals PLUMED's METAD (no grid: exact sums of hills) to float64
    precision. The series lies on our grid's nodes, where the interpolation returns the
    node values exactly, so the test checks deposition, well-tempering, periodic wrap and
    PLUMED's truncated/stretched Gaussians; and off the nodes it agrees with PLUMED's own
    grid (spline) to the interpolation error."""
    bins, T, gamma, h0, pace = 90, 300.0, 6.0, 0.02, 3
    spacing = 2 * PI / bins
    rng = np.random.default_rng(4)
    nodes = np.cumsum(rng.integers(-3, 4, size=(240, 2)), axis=0) + 20
    series = -PI + spacing * np.mod(nodes, bins)           # on nodes, wrapping around ±π
    os.chdir(tmp_path)
    metad = (f"METAD ARG=phi,psi SIGMA=0.3,0.4 HEIGHT={h0} PACE={pace} TEMP={T} "
             f"BIASFACTOR={gamma} FILE=HILLS")
    ref = _plumed_bias_series(series, ["m: " + metad])
    # PLUMED's k_B in eV (R = 8.3144621 J/(mol K) over its eV) is 6e-7 above ASE's
    # CODATA-2014 value: run ours at the temperature with PLUMED's kT
    t_ours = T * (0.0083144621 / 96.48530749925792) / KB
    with enable_x64():
        term = B.metad(free_system(8), {"temperature_K": t_ours}, cv=PHI_PSI, sigma=[0.3, 0.4],
                       height=h0, pace=pace, bias_factor=gamma, grid_min=[-PI, -PI],
                       grid_max=[PI, PI], grid_bins=[bins, bins])
        frames = jnp.asarray(np.stack([two_dihedrals(a, b) for a, b in series]))
        state = term.init(frames[0])
        energy, update = jax.jit(term.energy), jax.jit(term.update)
        ours = [0.0]
        for i in range(1, len(series)):
            ours.append(float(energy(frames[i], state)))   # bias before step i's hill
            state = update(state, frames[i])
        ours = np.asarray(ours)
    assert ref.max() > 5 * h0                 # hills piled up (and were well-tempered)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-10)

    # off the nodes: PLUMED's grid (cubic spline) and ours (cubic Hermite) agree to the
    # interpolation error of a 90-bin grid
    off = series + rng.uniform(-0.5, 0.5, size=series.shape) * spacing
    ref_grid = _plumed_bias_series(off, [f"m: {metad} GRID_MIN=-pi,-pi GRID_MAX=pi,pi "
                                         f"GRID_BIN={bins},{bins}"])
    with enable_x64():
        frames = jnp.asarray(np.stack([two_dihedrals(a, b) for a, b in off]))
        state = term.init(frames[0])
        ours = [0.0]
        for i in range(1, len(off)):
            ours.append(float(energy(frames[i], state)))
            state = update(state, frames[i])
    np.testing.assert_allclose(ours, ref_grid, atol=2e-3 * ref_grid.max())


# ---------------------------------------------------------------------- forces, CVs
def _fd_check(energy, state, x, eps=1e-5, n=4, seed=0):
    """The autodiff gradient of energy(x, state) along random directions equals central
    differences (float64)."""
    f = jax.jit(energy)
    g = np.asarray(jax.jit(jax.grad(energy))(x, state))
    rng = np.random.default_rng(seed)
    for _ in range(n):
        u = rng.normal(size=x.shape)
        u /= np.linalg.norm(u)
        fd = (float(f(x + eps * u, state)) - float(f(x - eps * u, state))) / (2 * eps)
        assert abs(fd - np.sum(g * u)) < 1e-7 + 1e-5 * abs(fd), (fd, np.sum(g * u))


def _ala_like(n=10, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 3)) * 1.5


def test_bias_forces_are_minus_gradient_by_finite_differences():
    """Every bias's energy has the gradient its forces come from (float64, central
    differences along random directions), with a bias state built by depositions."""
    with enable_x64():
        x0 = jnp.asarray(_ala_like())
        system = free_system(10)
        cvs = [{"name": "dihedral", "atoms": [0, 1, 2, 3]}, {"name": "distance", "atoms": [4, 9]}]
        r0 = float(np.linalg.norm(x0[4] - x0[9]))
        terms = [
            B.restraint(system, None, cv=cvs, kappa=[2.0, 5.0], center=[0.3, r0 + 0.2]),
            B.walls(system, None, cv=cvs[1:], lower=r0 + 0.3, kappa=3.0, exponent=4),
            B.metad(system, None, cv=cvs, sigma=[0.3, 0.2], height=0.05, pace=1,
                    bias_factor=5.0, grid_min=[-PI, r0 - 2.0], grid_max=[PI, r0 + 2.0],
                    grid_bins=[60, 80], wall_lower=[None, r0 - 1.5],
                    wall_upper=[None, r0 + 1.5]),
            B.opes(system, None, cv=cvs, sigma=[0.3, 0.2], barrier=0.3, pace=1),
            B.opes(system, None, cv=cvs[:1], sigma=0.3, barrier=0.3, pace=1,
                   variant="explore"),
        ]
        rng = np.random.default_rng(2)
        for term in terms:
            state = None if term.init is None else term.init(x0)
            if term.update is not None:
                kicks = jnp.asarray(0.15 * rng.normal(size=(12,) + x0.shape))
                state = jax.lax.fori_loop(0, 12, lambda k, st: term.update(st, x0 + kicks[k]),
                                          state)
            e = float(term.energy(x0, state))
            assert np.isfinite(e) and e != 0.0      # not a trivially flat bias here
            _fd_check(term.energy, state, x0)


def test_cv_gradients_finite_at_degenerate_geometry():
    """Collinear dihedral atoms, coincident atoms, zero RMSD, a coordination pair at
    exactly r0: values and gradients finite (no NaN)."""
    system = free_system(4)
    line = jnp.asarray([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]])
    tables = [{"name": "dihedral", "atoms": [0, 1, 2, 3]},
              {"name": "angle", "atoms": [0, 1, 2]},
              {"name": "distance", "atoms": [0, 1]},
              {"name": "rmsd", "atoms": [0, 1, 2, 3], "reference": np.asarray(line)},
              {"name": "coordination", "group_a": [0], "group_b": [1, 2], "r0": 1.0}]
    same = line.at[1].set(line[0])                      # two coincident atoms
    for table in tables:
        cv = C.cv_from_table(table, system)
        for x in (line, same):
            v, g = jax.value_and_grad(cv.fn)(x)
            assert np.isfinite(float(v)), table
            assert np.all(np.isfinite(np.asarray(g))), table
    assert float(C.cv_from_table(tables[3], system).fn(line)) == pytest.approx(0.0, abs=1e-6)
    # the coordination switch is smooth through x = 1 (no 0/0)
    coord = C.cv_from_table({"name": "coordination", "group_a": [0], "group_b": [1],
                             "r0": 1.0}, free_system(2))
    vals = [float(coord.fn(jnp.asarray([[0.0, 0, 0], [r, 0, 0]])))
            for r in (0.999, 0.9999, 1.0, 1.0001, 1.001)]
    assert np.all(np.diff(vals) < 0) and vals[2] == pytest.approx(0.5, abs=1e-3)


def test_linear_and_learned_cvs_and_trajectory_evaluation(tmp_path):
    """A PCA projection from biojax.analysis and an import-path function as CVs; the same
    tables evaluated on a trajectory of ASE frames."""
    from biojax.analysis.decomposition import pca

    x = _ala_like()
    frames = [ase.Atoms("C10", positions=x + 0.1 * np.random.default_rng(i).normal(size=x.shape))
              for i in range(20)]
    feats = [{"name": "dihedral", "atoms": [0, 1, 2, 3]}, {"name": "distance", "atoms": [4, 9]}]
    f = C.evaluate_cvs(feats, frames)
    assert f.shape == (20, 2)
    width = np.column_stack([np.cos(f[:, 0]), np.sin(f[:, 0]), f[:, 1]])
    proj = pca(width, 2)
    lin = {"name": "linear", "features": feats, "projection": proj, "component": 0}
    got = C.evaluate_cvs([lin], frames)[:, 0]
    np.testing.assert_allclose(got, proj.transform(width)[:, 0], atol=1e-4)
    learned = {"name": "learned", "features": feats, "function": "numpy:sum"}
    with pytest.raises(Exception):  # numpy.sum on features is fine, but check scalar rule
        C.evaluate_cvs([{"name": "learned", "features": feats,
                         "function": "jax.numpy:atleast_2d"}], frames)
    np.testing.assert_allclose(C.evaluate_cvs([learned], frames)[:, 0], width.sum(1),
                               atol=1e-4)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("table, match", [
    ({"name": "metad", "cv": [{"name": "torsion", "atoms": [0, 1, 2, 3]}], "sigma": 0.3,
      "height": 0.01, "grid_min": -PI, "grid_max": PI, "grid_bins": 50},
     "unknown collective variable 'torsion'"),
    ({"name": "metad", "cv": [{"name": "dihedral", "atoms": [0, 1, 2, 12]}], "sigma": 0.3,
      "height": 0.01, "grid_min": -PI, "grid_max": PI, "grid_bins": 50},
     r"atom indices must be in \[0, 10\)"),
    ({"name": "metad", "cv": [{"name": "distance", "atoms": [0, 1]}], "sigma": 0.1,
      "height": 0.01, "grid_min": 1.0, "grid_max": 4.0, "grid_bins": 50, "wall_lower": 0.5,
      "wall_upper": 3.0}, r"does not cover the walls \[0.5, 3\]"),
    ({"name": "metad", "cv": [{"name": "distance", "atoms": [0, 1]}], "sigma": 0.1,
      "height": 0.01, "grid_min": 1.0, "grid_max": 4.0, "grid_bins": 50},
     "not periodic: give wall_lower and wall_upper"),
    ({"name": "metad", "cv": [{"name": "dihedral", "atoms": [0, 1, 2, 3]}], "sigma": 0.3,
      "height": 0.01, "grid_min": -3.0, "grid_max": 3.0, "grid_bins": 50},
     "the grid must span that period"),
    ({"name": "metad", "cv": [{"name": "dihedral", "atoms": [0, 1, 2, 3]}], "sigma": 0.3,
      "height": 0.01}, "give the grid explicitly"),
    ({"name": "metad", "cv": [{"name": "dihedral", "atoms": [0, 1, 2, 3]}], "sigma": 0.3,
      "height": 0.01, "grid_min": -PI, "grid_max": PI, "grid_bins": 50, "hieght": 1},
     "unexpected keyword argument 'hieght'"),
    ({"name": "opes", "cv": [{"name": "dihedral", "atoms": [0, 1, 2, 3]}], "sigma": 0.3},
     "barrier"),
    ({"name": "restraint", "cv": [{"name": "distance", "atoms": [0, 1]}], "kappa": 1.0,
      "centers": [[1.0], [2.0], [3.0]]}, "one per replica is needed"),
    ({"name": "umbrella-typo", "cv": []}, "unknown bias 'umbrella-typo'"),
])
def test_bad_bias_tables_are_clear_errors(table, match):
    with pytest.raises(ConfigError, match=match):
        B.biases_from_config([table], free_system(10), {"replicas": 2})
