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


@pytest.mark.parametrize("variant, action, rtol", [("standard", "OPES_METAD", 5e-6),
                                                   ("explore", "OPES_METAD_EXPLORE", 1e-7)])
def test_opes_equals_plumed_on_a_cv_series(tmp_path, variant, action, rtol):
    """OPES (standard and explore) on two dihedrals along a random-walk CV series: the
    bias at every step equals PLUMED's OPES_METAD / OPES_METAD_EXPLORE (kernel
    compression with recursive merging, shrinking σ, Z, ε and kernel cutoff included).
    The standard variant's weights exp(βV) carry the small k_B difference (1e-6)."""
    T, barrier, pace = 300.0, 0.3, 2
    rng = np.random.default_rng(5)
    series = np.cumsum(rng.normal(scale=0.25, size=(200, 2)), axis=0)
    series = (series + PI) % (2 * PI) - PI
    os.chdir(tmp_path)
    ref = _plumed_bias_series(series, [f"o: {action} ARG=phi,psi SIGMA=0.3,0.4 PACE={pace} "
                                       f"BARRIER={barrier} TEMP={T} FILE=KERNELS"])
    t_ours = T * (0.0083144621 / 96.48530749925792) / KB
    with enable_x64():
        term = B.opes(free_system(8), {"temperature_K": t_ours}, cv=PHI_PSI,
                      sigma=[0.3, 0.4], barrier=barrier, pace=pace, variant=variant,
                      max_kernels=128)
        frames = jnp.asarray(np.stack([two_dihedrals(a, b) for a, b in series]))

        @jax.jit
        def run(frames):
            def step(state, x):
                return term.update(state, x), term.energy(x, state)
            state, energies = jax.lax.scan(step, term.init(frames[0]), frames[1:])
            return energies, state["n"]

        ours, n_kernels = run(frames)
    assert 5 < int(n_kernels) < 99              # compression merged some of 99 kernels
    np.testing.assert_allclose(np.asarray(ours), ref[1:], rtol=0,
                               atol=rtol * np.abs(ref).max())


def test_opes_multiple_walkers_share_one_estimate():
    """OPES with walkers = "shared": after a merge every replica carries one estimate made
    of both walkers' kernels (no compression here) with their weights summed, and its bias
    equals the OPES formula V = (1 − 1/γ) β⁻¹ log(P/Z + ε) evaluated directly from the
    kernels the walkers logged."""
    T, barrier, gamma = 300.0, 0.2, 5.0
    term = B.opes(free_system(2), {"temperature_K": T, "replicas": 2},
                  cv=[{"name": "distance", "atoms": [0, 1]}], sigma=0.2, barrier=barrier,
                  bias_factor=gamma, pace=1, compression_threshold=0.0, max_kernels=32,
                  walkers="shared")
    pos = lambda r: jnp.asarray([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])   # noqa: E731
    series = np.array([[3.0, 3.1, 3.3, 3.2, 3.5], [4.0, 4.2, 3.9, 4.4, 4.1]])
    states = jax.vmap(term.init)(jnp.stack([pos(3.0), pos(4.0)]))
    update = jax.jit(jax.vmap(term.update))
    for t in range(series.shape[1]):
        states = update(states, jnp.stack([pos(x) for x in series[:, t]]))
    local_w = np.asarray(states["sum_w"])
    log = jax.tree_util.tree_map(np.asarray, states["log"])
    merged = jax.jit(term.sync)(states)
    for key in ("centers", "heights", "n", "sum_w", "zed"):
        np.testing.assert_array_equal(merged[key][0], merged[key][1])
    assert int(merged["n"][0]) == int(merged["n_dep"][0]) == 10
    np.testing.assert_allclose(float(merged["sum_w"][0]), local_w.sum(), rtol=1e-6)
    assert int(merged["log"]["n"][0]) == 0
    # the OPES formula from the logged kernels
    beta = 1.0 / (KB * T)
    pref = 1.0 - 1.0 / gamma
    eps, cut2 = np.exp(-beta * barrier / pref), 2.0 * beta * barrier / pref
    c = np.concatenate([log["centers"][r, :5, 0] for r in range(2)])
    sg = np.concatenate([log["sigmas"][r, :5, 0] for r in range(2)])
    h = np.concatenate([log["heights"][r, :5] for r in range(2)])

    def prob(x):
        q = ((x - c) / sg) ** 2
        return np.sum(h * np.where(q < cut2, np.exp(-0.5 * q) - np.exp(-0.5 * cut2), 0.0)) \
            / local_w.sum()

    zed = np.mean([prob(x) for x in c])
    for x in (3.05, 3.6, 4.25):
        want = pref / beta * np.log(prob(x) / zed + eps)
        got = float(term.energy(pos(x), jax.tree_util.tree_map(lambda a: a[0], merged)))
        assert abs(got - want) < 1e-5, (x, got, want)


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
    differences along random directions), with bias states built by depositions."""
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
            B.opes(system, None, cv=cvs, sigma=[0.3, 0.2], barrier=0.3, pace=1,
                   max_kernels=16),
        ]
        kicks = jnp.asarray(0.15 * np.random.default_rng(2).normal(size=(12,) + x0.shape))

        @jax.jit
        def states():
            st = tuple(None if t.init is None else t.init(x0) for t in terms)

            def body(k, st):
                return tuple(s if t.update is None else t.update(s, x0 + kicks[k])
                             for t, s in zip(terms, st))
            return jax.lax.fori_loop(0, 12, body, st)

        st = states()

        def each(x, st):
            return jnp.stack([t.energy(x, s) for t, s in zip(terms, st)])

        e = np.asarray(jax.jit(each)(x0, st))
        assert np.all(np.isfinite(e)) and np.all(e != 0.0), e   # no trivially flat bias
        weights = jnp.asarray(np.random.default_rng(3).uniform(0.5, 2.0, len(terms)))
        # random positive weights: one term's wrong gradient cannot hide in the sum
        _fd_check(lambda x, s: jnp.dot(weights, each(x, s)), st, x0)


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
    cvs = C.cvs_from_tables(tables, system)

    def vec(x):
        return jnp.stack([c.fn(x) for c in cvs])

    same = line.at[1].set(line[0])                      # two coincident atoms
    values, jacobians = jax.jit(jax.vmap(lambda x: (vec(x), jax.jacrev(vec)(x))))(
        jnp.stack([line, same]))
    assert np.all(np.isfinite(np.asarray(values)))
    assert np.all(np.isfinite(np.asarray(jacobians)))
    assert float(values[0, 3]) == pytest.approx(0.0, abs=1e-6)
    # the coordination switch is smooth through x = 1 (no 0/0)
    coord = C.cv_from_table({"name": "coordination", "group_a": [0], "group_b": [1],
                             "r0": 1.0}, free_system(2))
    rs = jnp.asarray([0.999, 0.9999, 1.0, 1.0001, 1.001])
    vals = np.asarray(jax.jit(jax.vmap(lambda r: coord.fn(
        jnp.stack([jnp.zeros(3), jnp.asarray([1.0, 0, 0]) * r]))))(rs))
    assert np.all(np.diff(vals) < 0) and vals[2] == pytest.approx(0.5, abs=1e-3)


def test_linear_and_learned_cvs_and_trajectory_evaluation():
    """A PCA projection from biojax.analysis and an import-path function as CVs; the same
    tables evaluated on a trajectory of ASE frames; a non-scalar learned CV refused."""
    from biojax.analysis.decomposition import pca

    x = _ala_like()
    frames = [ase.Atoms("C10", positions=x + 0.1 * np.random.default_rng(i).normal(size=x.shape))
              for i in range(20)]
    feats = [{"name": "dihedral", "atoms": [0, 1, 2, 3]}, {"name": "distance", "atoms": [4, 9]}]
    from biojax.core.geometry import dihedrals_float64

    phi = np.array([dihedrals_float64(a.positions, np.array([[0, 1, 2, 3]]))[0]
                    for a in frames])
    dist = np.linalg.norm([a.positions[4] - a.positions[9] for a in frames], axis=1)
    width = np.column_stack([np.cos(phi), np.sin(phi), dist])
    proj = pca(width, 2)
    lin = {"name": "linear", "features": feats, "projection": proj, "component": 0}
    learned = {"name": "learned", "features": feats, "function": "jax.numpy:sum"}
    got = C.evaluate_cvs(feats + [lin, learned], frames)
    np.testing.assert_allclose(got[:, 0], phi, atol=1e-4)
    np.testing.assert_allclose(got[:, 1], dist, atol=1e-4)
    np.testing.assert_allclose(got[:, 2], proj.transform(width)[:, 0], atol=1e-4)
    np.testing.assert_allclose(got[:, 3], width.sum(1), atol=1e-4)
    with pytest.raises(ConfigError, match="must return a scalar"):
        C.cv_from_table({"name": "learned", "features": feats,
                         "function": "jax.numpy:atleast_1d"}, free_system(10))


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
    ({"name": "metad", "cv": [{"name": "distance", "atoms": [0, 1]}], "sigma": 0.1,
      "height": 0.01, "grid_min": 1.0, "grid_max": 4.0, "grid_bins": 50, "wall_lower": 1.5,
      "wall_upper": 3.0, "outside": "grow"}, "outside must be 'error' or 'clamp'"),
])
def test_bad_bias_tables_are_clear_errors(table, match):
    with pytest.raises(ConfigError, match=match):
        B.biases_from_config([table], free_system(10), {"replicas": 2})


# ---------------------------------------------------------------------- in MD
def _sim(bias, steps=120, replicas=2):
    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn.classical import lennard_jones

    atoms = ase.Atoms("Ar4", positions=[[0.0, 0, 0], [3.8, 0, 0], [3.8, 3.8, 0],
                                        [3.8, 3.8, 3.8]])
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=4.0, temperature_K=60.0,
                         steps=steps, chunk_steps=40, observe_every=5, frame_every=40,
                         replicas=replicas, seed=3, bias=tuple(bias), plots=False,
                         check_energy=False)
    return Simulation(atoms, lennard_jones([18], 3.405, 0.0103, cutoff=8.0), cfg)


def _csv(path):
    rows = open(path).read().splitlines()
    head = rows[0].split(",")
    data = np.array([[float(x) for x in r.split(",")] for r in rows[1:]])
    return {h: data[:, i] for i, h in enumerate(head)}


def test_metad_multiple_walkers_kill_resume_and_umbrella_centres(tmp_path):
    """Well-tempered metad with two walkers sharing one bias on a dihedral of an Ar4
    cluster, plus umbrella windows (one restraint centre per replica) on a distance:
    killed after one chunk and resumed = uninterrupted, byte for byte; the shared bias
    after the first chunk is the sum of the hills both walkers deposited (rebuilt from
    their recorded centres and heights); bias_logw = β(V − c) + βV_restraint."""
    from biojax.md import checkpoint

    dih = [{"name": "dihedral", "atoms": [0, 1, 2, 3]}]
    bins, sigma = 64, 0.3
    metad = {"name": "metad", "cv": dih, "sigma": sigma, "height": 0.004, "pace": 5,
             "bias_factor": 6.0, "grid_min": -PI, "grid_max": PI, "grid_bins": bins,
             "walkers": "shared"}
    umbrella = {"name": "restraint", "label": "us",
                "cv": [{"name": "distance", "atoms": [0, 3]}], "kappa": 0.05,
                "centers": [[5.5], [7.0]]}
    sim = _sim([metad, umbrella])
    part = sim.run(str(tmp_path / "killed"), max_chunks=1)      # as if killed
    assert part["step"] == 40 and not part["completed"]
    leaves, _ = checkpoint.load(str(tmp_path / "killed" / "checkpoint.npz"))
    grid_v = [x for x in leaves if np.shape(x) == (2, bins)][-1]   # state["grid"]["V"]
    np.testing.assert_allclose(grid_v[0], grid_v[1])                # one bias for both
    nodes = -PI + 2 * PI / bins * np.arange(bins)
    rebuilt = np.zeros(bins)
    for r in range(2):
        c = _csv(tmp_path / "killed" / f"replica_{r:03d}" / "observables.csv")
        for s_k, h_k in zip(c["metad.cv[0]"][1:], c["metad.height"][1:]):  # a hill per row
            d = nodes - s_k
            d = (d + PI) % (2 * PI) - PI
            dp2 = 0.5 * (d / sigma) ** 2
            e6 = np.exp(-6.25)
            rebuilt += h_k * np.where(dp2 < 6.25, (np.exp(-dp2) - e6) / (1 - e6), 0.0)
    assert rebuilt.max() > 0.01
    np.testing.assert_allclose(grid_v[0], rebuilt, rtol=1e-4, atol=1e-6)

    done = sim.run(str(tmp_path / "killed"), resume=True)
    full = sim.run(str(tmp_path / "full"))
    assert done["completed"] and full["completed"]
    for r in range(2):
        for name in ("observables.csv", "trajectory.extxyz"):
            path = os.path.join(f"replica_{r:03d}", name)
            assert (tmp_path / "full" / path).read_bytes() == \
                (tmp_path / "killed" / path).read_bytes(), path
    cols = _csv(tmp_path / "full" / "replica_001" / "observables.csv")
    np.testing.assert_allclose(cols["us.center[0]"], 7.0)
    beta = 1.0 / (KB * 60.0)
    np.testing.assert_allclose(cols["bias_logw"], beta * (cols["metad.energy"] - cols["metad.c"]
                                                          + cols["us.energy"]), rtol=1e-4,
                               atol=1e-4)
    assert cols["metad.energy"][-1] > 0 and cols["metad.c"][-1] > 0


def test_metad_walker_leaving_the_grid_is_a_clear_error(tmp_path):
    """A metad grid on a distance that does not reach the start (3.8 Å, grid 4.5–6.5 Å):
    the first chunk ends in a SimulationError naming the bias, replica, CV and grid; the
    step-0 checkpoint and files are kept; outside = "clamp" brings no check."""
    from biojax.core.errors import SimulationError
    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn.classical import lennard_jones

    table = {"name": "metad", "label": "md1", "cv": [{"name": "distance", "atoms": [0, 1]}],
             "sigma": 0.2, "height": 0.002, "pace": 5, "grid_min": 4.5, "grid_max": 6.5,
             "grid_bins": 40, "wall_lower": 5.0, "wall_upper": 6.0, "wall_kappa": 0.01}
    with pytest.raises(SimulationError, match=r"bias metad 'md1': replica 0 left the grid "
                       r"by step 5 .*CV 0 \(distance\) = 3\.8.*grid \[4\.5, 6\.5\].*"
                       r"Widen grid_min/grid_max.*checkpoint at step 0"):
        cfg = default_config(ensemble="nvt-langevin", timestep_fs=4.0, temperature_K=60.0,
                             steps=20, chunk_steps=10, observe_every=5, frame_every=10,
                             seed=3, bias=(table,), plots=False, check_energy=False)
        Simulation(ase.Atoms("Ar2", positions=[[0.0, 0, 0], [3.8, 0, 0]]),
                   lennard_jones([18], 3.405, 0.0103, cutoff=6.0), cfg).run(
            str(tmp_path / "err"))
    assert (tmp_path / "err" / "checkpoint.npz").is_file()
    assert len((tmp_path / "err" / "observables.csv").read_text().splitlines()) == 2
    clamp = B.biases_from_config([{**table, "outside": "clamp"}], free_system(10),
                                 {"replicas": 1})
    assert [getattr(t, "hook", None) for t in clamp] == [None]   # no check: clamped, counted
