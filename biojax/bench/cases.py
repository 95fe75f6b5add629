"""Benchmark cases: each a plain function that builds one workload, times it and returns a
dict of numbers. They run in a child process each (``python -m biojax.bench.child``) so
that peak memory is per case and OpenMM never shares a process with JAX.

Rates are medians over ``repeats`` timed samples after a compiling first call
(``biojax.bench.timing``); ``first_call_s`` is the wall time of that first call (compile
plus one call), ``compile_s`` that minus one steady call.

Cases (units: atom-steps/s, steps/s, ns/day, configurations/s, s, MB):

- ``lj_biojax``, ``lj_jaxmd``, ``lj_openmm``: Lennard-Jones argon (ρ* ≈ 0.81, 8.5 Å
  cutoff, switch from 6.8 Å, NVE 2 fs) through biojax's Simulation, raw jax-md, OpenMM.
- ``learned_biojax``, ``learned_ase``: MD on a learned potential (registered architecture,
  default size, random weights) for copper fcc supercells or alanine dipeptide replicas,
  through biojax's Simulation or ASE's VelocityVerlet with biojax's calculator.
- ``train_biojax``: training steps per second on examples/data/ala2_xtb.extxyz.
"""

from __future__ import annotations

import math
import os
import statistics

from biojax.bench.timing import (Unavailable, device_memory, repeat_timed, summarize,
                                 time_simulation)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIGMA, EPS, CUTOFF = 3.405, 0.0103, 8.5  # argon LJ, Å / eV / Å
A_FCC = 5.8                                # Å, liquid density ρ* ≈ 0.81
LJ_DT_FS = 2.0
ALA2 = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")
ALA2_DATA = os.path.join(ROOT, "examples", "data", "ala2_xtb.extxyz")
MODEL_CUTOFF = 5.0                         # Å, learned models
CU_A = 3.61                                # Å, copper fcc lattice constant
LEARNED_DT_FS = 1.0
RANDOM_MODEL_SCALE = 0.01                  # eV, output scale of the random-weight models


def _ns_per_day(steps_per_s: float, dt_fs: float) -> float:
    return steps_per_s * dt_fs * 86400 / 1e6


def _rates(timing: dict, atoms: int, steps_per_call: int, dt_fs: float,
           replicas: int = 1) -> dict:
    """atom-steps/s (all replicas), steps/s and ns/day (per replica) with spreads."""
    m = timing["calls_per_sample"]
    steps = steps_per_call * m
    s = summarize(timing["samples"], steps)
    steady = statistics.median(timing["samples"]) / m
    return {"atoms": atoms, "replicas": replicas, "steps_per_call": steps_per_call,
            "calls_per_sample": m, "steps_per_sample": steps,
            "seconds": statistics.median(timing["samples"]),
            "steps_per_s": s["median_rate"],
            "atom_steps_per_s": s["median_rate"] * atoms * replicas,
            "atom_steps_per_s_min": s["min_rate"] * atoms * replicas,
            "atom_steps_per_s_max": s["max_rate"] * atoms * replicas,
            "spread": s["spread"], "sample_seconds": s["sample_seconds"],
            "ns_per_day": _ns_per_day(s["median_rate"], dt_fs),
            "aggregate_ns_per_day": _ns_per_day(s["median_rate"], dt_fs) * replicas,
            "timestep_fs": dt_fs, "first_call_s": timing["first_call_s"],
            "compile_s": max(timing["first_call_s"] - steady, 0.0),
            "repeats": len(timing["samples"])}


def _jax_dtype() -> str:
    import jax

    return "float64" if jax.config.read("jax_enable_x64") else "float32"


def _check_precision(precision: str) -> None:
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be float32 or float64, got {precision!r}")
    if precision == "float64" and _jax_dtype() != "float64":
        raise RuntimeError("float64 asked for but JAX_ENABLE_X64 is not set in this process")


# ====================================================================== Lennard-Jones
def lj_atoms(n_cells):
    """Argon fcc at ρ* ≈ 0.81: ``n_cells`` (int, or three ints) cubic cells of 4 atoms."""
    from ase.lattice.cubic import FaceCenteredCubic

    size = (n_cells,) * 3 if isinstance(n_cells, int) else tuple(n_cells)
    return FaceCenteredCubic("Ar", size=size, latticeconstant=A_FCC)


def case_lj_biojax(n_cells, steps: int, repeats: int = 3, target_s: float = 0.0,
                   precision: str = "float32") -> dict:
    """biojax Simulation (NVE, 2 fs, observables every ≤100 steps, no files): ``steps`` per
    chunk, median of ``repeats`` samples of chunks lasting ≥ ``target_s`` s each."""
    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn.classical import lennard_jones

    _check_precision(precision)
    atoms = lj_atoms(n_cells)
    pot = lennard_jones([18], SIGMA, EPS, cutoff=CUTOFF)
    # capacity × 1.5: the fcc start has fewer neighbours per atom than the liquid it melts
    # into, so × 1.25 overflows once (the rerun and recompile would land in the timing)
    cfg = default_config(ensemble="nve", timestep_fs=LJ_DT_FS, temperature_K=120.0,
                         steps=steps * 100000, chunk_steps=steps, capacity_multiplier=1.5,
                         observe_every=math.gcd(100, steps), frame_every=steps)
    sim = Simulation(atoms, pot, cfg)
    timing = time_simulation(sim, repeats, target_s)
    out = _rates(timing, len(atoms), steps, LJ_DT_FS)
    out.update(compilations=len(sim.compiled), overflows=sim.overflows,
               dtype=_jax_dtype(), precision=precision, **device_memory())
    return out


def case_lj_jaxmd(n_cells, steps: int, repeats: int = 3, target_s: float = 0.0,
                  precision: str = "float32") -> dict:
    """The same system written directly on jax-md (its own LJ, dense neighbor list, NVE);
    after an overflow the list is reallocated bigger and the call rerun, as a raw jax-md
    user would."""
    import jax
    import jax.numpy as jnp
    from jax_md import energy, partition, simulate, space

    from biojax.core.units import FS, KB

    _check_precision(precision)
    dtype = jnp.float64 if precision == "float64" else jnp.float32
    atoms = lj_atoms(n_cells)
    box = jnp.asarray(atoms.cell.diagonal(), dtype)
    disp, shift = space.periodic(box)
    neighbor_fn, energy_fn = energy.lennard_jones_neighbor_list(
        disp, box, sigma=SIGMA, epsilon=EPS, r_onset=0.8 * CUTOFF / SIGMA,
        r_cutoff=CUTOFF / SIGMA, dr_threshold=0.5, format=partition.Dense,
        capacity_multiplier=1.5)  # as biojax's run: the melting fcc start needs room
    init, apply = simulate.nve(energy_fn, shift, dt=LJ_DT_FS * FS)
    R = jnp.asarray(atoms.positions, dtype)
    mass = jnp.asarray(atoms.get_masses(), dtype)
    state = init(jax.random.PRNGKey(0), R, 120.0 * KB, mass=mass,
                 neighbor=neighbor_fn.allocate(R))
    carry = {"state": state, "nbrs": neighbor_fn.allocate(R), "extra": 0, "overflows": 0}

    @jax.jit
    def run(state, nbrs):
        def body(_, c):
            s, n = c
            s = apply(s, neighbor=n)
            return s, n.update(s.position)
        return jax.lax.fori_loop(0, steps, body, (state, nbrs))

    def call():
        while True:
            new_state, new_nbrs = jax.block_until_ready(run(carry["state"], carry["nbrs"]))
            if not new_nbrs.did_buffer_overflow:
                carry["state"], carry["nbrs"] = new_state, new_nbrs
                return
            carry["overflows"] += 1
            carry["extra"] += max(8, carry["nbrs"].idx.shape[-1] // 2)
            carry["nbrs"] = neighbor_fn.allocate(carry["state"].position,
                                                 extra_capacity=carry["extra"])

    timing = repeat_timed(call, repeats, target_s)
    out = _rates(timing, len(atoms), steps, LJ_DT_FS)
    out.update(overflows=carry["overflows"], dtype=str(carry["state"].position.dtype),
               precision=precision, **device_memory())
    return out


def openmm_lj_system(atoms):
    """The LJ argon workload as an OpenMM System: NonbondedForce with biojax's cutoff and
    switch (from 0.8 × cutoff), no dispersion correction, orthorhombic box of ``atoms``."""
    import openmm

    from biojax.core.units import KJ_PER_MOL, NM

    system = openmm.System()
    L = atoms.cell.diagonal() / NM
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(L[0], 0, 0), openmm.Vec3(0, L[1], 0),
                                        openmm.Vec3(0, 0, L[2]))
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(CUTOFF / NM)
    nb.setUseSwitchingFunction(True)
    nb.setSwitchingDistance(0.8 * CUTOFF / NM)
    nb.setUseDispersionCorrection(False)
    for _ in range(len(atoms)):
        system.addParticle(39.948)
        nb.addParticle(0.0, SIGMA / NM, EPS / KJ_PER_MOL)
    system.addForce(nb)
    return system


def case_lj_openmm(n_cells, steps: int, repeats: int = 3, target_s: float = 0.0,
                   platform: str = "CPU", precision: str = "float32") -> dict:
    """OpenMM (``platform`` CPU or CUDA): NonbondedForce LJ, same cutoff and switch,
    Verlet 2 fs; CPU with one thread per core. ``precision``: CUDA's single/double."""
    try:
        import openmm
        import openmm.unit as u
    except ImportError as exc:
        raise Unavailable(f"openmm is not installed ({exc})") from None

    from biojax.core.units import NM

    try:
        platform_ = openmm.Platform.getPlatformByName(platform)
    except Exception as exc:  # noqa: BLE001 - OpenMMException
        raise Unavailable(f"OpenMM platform {platform} not available: {exc}") from None
    atoms = lj_atoms(n_cells)
    system = openmm_lj_system(atoms)
    integrator = openmm.VerletIntegrator(LJ_DT_FS * u.femtoseconds)
    threads = os.cpu_count()
    props = {"Threads": str(threads)} if platform == "CPU" else \
        {"Precision": "double" if precision == "float64" else "single"}
    try:
        ctx = openmm.Context(system, integrator, platform_, props)
    except Exception as exc:  # noqa: BLE001 - e.g. CUDA platform listed but no driver
        raise Unavailable(f"OpenMM {platform} context failed: {exc}") from None
    ctx.setPositions(atoms.positions / NM)
    ctx.setVelocitiesToTemperature(120.0)

    def call():
        integrator.step(steps)
        ctx.getState(getEnergy=True)  # waits for the platform

    timing = repeat_timed(call, repeats, target_s)
    out = _rates(timing, len(atoms), steps, LJ_DT_FS)
    out.update(platform=platform, threads=threads if platform == "CPU" else None,
               precision=precision, **device_memory())
    return out


# ====================================================================== learned potentials
def learned_system(system: str, size: int):
    """``("cu", n)``: copper fcc, n×n×n cubic cells (4n³ atoms, a = 3.61 Å, periodic);
    ``("ala2", _)``: alanine dipeptide in vacuum (22 atoms)."""
    if system == "cu":
        from ase.build import bulk

        return bulk("Cu", "fcc", a=CU_A, cubic=True).repeat((size,) * 3)
    if system == "ala2":
        import ase.io

        return ase.io.read(ALA2)
    raise ValueError(f"unknown system {system!r} (cu, ala2)")


def architecture_dict(architecture: str, options: dict | None = None) -> dict:
    """``{"name": architecture, **options}`` keeping only the options the model accepts
    (the smoke suite shrinks every model it can; the other suites use the defaults)."""
    from biojax.core.registry import models, resolve
    from biojax.nn.models import model_keys

    keys = model_keys(resolve(models, architecture))
    options = {k: v for k, v in (options or {}).items() if keys is None or k in keys}
    return {"name": architecture, **options}


def learned_potential(architecture: str, atoms, precision: str = "float32",
                      options: dict | None = None):
    """A freshly initialised Potential of a registered architecture at its default size
    (or with ``options``; 5 Å cutoff), and its parameter count. Random weights cost what
    trained ones do."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from biojax.nn.models import init_potential

    dtype = jnp.float64 if precision == "float64" else jnp.float32
    # outputs × 0.01 eV: the same cost per step, but random weights then push atoms
    # gently enough that a Langevin run of many replicas does not blow up
    pot = init_potential(architecture_dict(architecture, options),
                         sorted(set(int(z) for z in atoms.numbers)),
                         MODEL_CUTOFF, key=jax.random.PRNGKey(0), dtype=dtype,
                         scale=RANDOM_MODEL_SCALE)
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(pot.params)))
    return pot, n_params


def case_learned_biojax(architecture: str, system: str, size: int, steps: int,
                        replicas: int = 1, repeats: int = 3, target_s: float = 0.0,
                        precision: str = "float32", options: dict | None = None) -> dict:
    """biojax Langevin MD (300 K, 1 fs) of ``replicas`` copies of a system on a randomly
    initialised learned potential. The blow-up checks are off: random weights give
    unphysical forces, and only the cost per step is measured."""
    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation

    _check_precision(precision)
    atoms = learned_system(system, size)
    pot, n_params = learned_potential(architecture, atoms, precision, options)
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=LEARNED_DT_FS,
                         temperature_K=300.0, steps=steps * 100000, chunk_steps=steps,
                         observe_every=math.gcd(50, steps), frame_every=steps,
                         replicas=replicas, check_bonds=False,
                         blowup_temperature_factor=1e6, blowup_energy_kT=1e12)
    sim = Simulation(atoms, pot, cfg)
    timing = time_simulation(sim, repeats, target_s)
    out = _rates(timing, len(atoms), steps, LEARNED_DT_FS, replicas)
    out.update(architecture=architecture, system=system, parameters=n_params,
               model=pot.architecture, compilations=len(sim.compiled), overflows=sim.overflows,
               replica_block=sim.replica_block, precision=precision,
               dtype=_jax_dtype(), **device_memory())
    return out


def case_learned_ase(architecture: str, system: str, size: int, steps: int = 10,
                     repeats: int = 3, target_s: float = 0.0,
                     options: dict | None = None) -> dict:
    """ASE VelocityVerlet (1 fs) driving the same model through BiojaxCalculator; a sample
    is ``steps`` × m ASE steps. Steps in which the calculator recompiled (its edge padding
    grew) stay in the timing: the warm-up runs first so they are rare."""
    import numpy as np
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from biojax.calculator import BiojaxCalculator
    from biojax.core.units import FS

    atoms = learned_system(system, size)
    pot, n_params = learned_potential(architecture, atoms, options=options)
    atoms.calc = BiojaxCalculator(pot)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=LEARNED_DT_FS * FS)
    dyn.run(steps)  # warm-up beyond the first call: padding buckets
    timing = repeat_timed(lambda: dyn.run(steps), repeats, target_s)
    out = _rates(timing, len(atoms), steps, LEARNED_DT_FS)
    out.update(architecture=architecture, system=system, parameters=n_params,
               **device_memory())
    return out


# ====================================================================== training
def case_train_biojax(architecture: str, batch_size: int, n_frames: int = 256,
                      repeats: int = 3, target_s: float = 0.0,
                      precision: str = "float32", options: dict | None = None) -> dict:
    """Training throughput (configurations/s) of biojax.train's jitted step (Adam, EMA,
    energy + force loss) on the first ``n_frames`` frames of examples/data/ala2_xtb.extxyz
    (alanine dipeptide, GFN2-xTB labels) at ``batch_size``. A call is one pass over the
    frames in a fixed order; the first pass compiles every padding bucket."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from biojax.data.graphs import GraphDataset
    from biojax.data.io import elements_of, read_dataset, reference_energies_for
    from biojax.nn.models import init_potential
    from biojax.train.config import TrainingConfig
    from biojax.train.loop import TrainState, make_optimizer, make_train_step

    _check_precision(precision)
    dtype = np.float64 if precision == "float64" else np.float32
    frames = read_dataset(ALA2_DATA)[:n_frames]
    elements = elements_of(frames)
    reference = reference_energies_for(frames, elements, None)
    pot = init_potential(architecture_dict(architecture, options), elements, MODEL_CUTOFF,
                         reference,
                         key=jax.random.PRNGKey(0), dtype=dtype)
    cfg = TrainingConfig(batch_size=batch_size)
    loss = cfg.make_loss()
    data = GraphDataset(frames, MODEL_CUTOFF, pot.species_of, pot.reference_energy, dtype,
                        labels=loss.labels)
    batches = list(data.batches(batch_size, drop_last=True))
    if not batches:
        raise ValueError(f"batch_size {batch_size} > {len(frames)} frames")
    tx = make_optimizer(cfg)
    step = make_train_step(pot, tx, loss, cfg.ema_decay)
    holder = {"state": TrainState(pot.params, tx.init(pot.params), pot.params,
                                  jnp.zeros((), jnp.int32))}
    lr = np.asarray(1e-4, dtype)

    def call():
        state = holder["state"]
        for b in batches:
            state, value = step(state, b, lr)
        holder["state"] = jax.block_until_ready(state)

    timing = repeat_timed(call, repeats, target_s)
    m = timing["calls_per_sample"]
    confs = len(batches) * batch_size * m
    s = summarize(timing["samples"], confs)
    steady = statistics.median(timing["samples"]) / m
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(pot.params)))
    return {"architecture": architecture, "batch_size": batch_size,
            "frames_per_pass": len(batches) * batch_size, "atoms_per_frame": len(frames[0].numbers),
            "calls_per_sample": m, "configurations_per_s": s["median_rate"],
            "configurations_per_s_min": s["min_rate"],
            "configurations_per_s_max": s["max_rate"], "spread": s["spread"],
            "sample_seconds": s["sample_seconds"], "first_call_s": timing["first_call_s"],
            "compile_s": max(timing["first_call_s"] - steady, 0.0),
            "compilations": step._cache_size(), "parameters": n_params,
            "precision": precision, "repeats": repeats, **device_memory()}


CASES = {"lj_biojax": case_lj_biojax, "lj_jaxmd": case_lj_jaxmd, "lj_openmm": case_lj_openmm,
         "learned_biojax": case_learned_biojax, "learned_ase": case_learned_ase,
         "train_biojax": case_train_biojax}
