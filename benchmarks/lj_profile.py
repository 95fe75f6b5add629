"""Where a biojax Lennard-Jones MD step spends its time, and biojax vs OpenMM CPU back to back.

    python benchmarks/lj_profile.py parts 11          # force call, rebuild, step, rebuilds/step
    python benchmarks/lj_profile.py ratio 7 11 16 20  # biojax Simulation vs OpenMM, 3 repeats
    BEFORE=/tmp/old python benchmarks/lj_profile.py ratio 7  # also the biojax in /tmp/old

Argon LJ fluid as in benchmarks/bench_md.py (fcc start, a = 5.8 Å, 8.5 Å cutoff, NVE 2 fs,
120 K). ``ratio`` runs every engine in its own subprocess, alternating, and reports medians.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time

SIGMA, EPS, CUTOFF, A_FCC = 3.405, 0.0103, 8.5, 5.8
STEPS = {7: 1000, 11: 400, 16: 200, 20: 100}


def lj_atoms(n_cells: int):
    from ase.lattice.cubic import FaceCenteredCubic

    return FaceCenteredCubic("Ar", size=(n_cells,) * 3, latticeconstant=A_FCC)


def timeit(fn, *args, reps=10, agg=min, cpu=bool(int(os.environ.get("CPU_TIME", "1")))):
    """Time per call (s) after a warm-up call: the ``agg`` (min) of ``reps`` calls, in wall
    time or, with ``cpu=True``, in CPU time of this process (all threads), which on a
    machine shared with other jobs varies much less than the wall time."""
    import jax

    jax.block_until_ready(fn(*args))
    out = []
    for _ in range(reps):
        t = time.process_time() if cpu else time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append((time.process_time() if cpu else time.perf_counter()) - t)
    return (agg or statistics.median)(out)


def parts(n_cells: int, skin: float = 0.5):
    """Times (ms) of a force call, a forced rebuild, and a plain NVE step with and without
    the neighbor update; rebuilds per step in a melted liquid."""
    import jax
    import jax.numpy as jnp
    from jax_md import simulate

    from biojax.core.units import FS, KB
    from biojax.md import cells
    from biojax.md.system import make_space
    from biojax.nn.classical import lennard_jones

    atoms = lj_atoms(n_cells)
    box = atoms.cell.diagonal()
    sys_space = make_space(atoms, npt=False)
    disp, shift = sys_space.displacement_fn, sys_space.shift_fn
    pot = lennard_jones([18], SIGMA, EPS, cutoff=CUTOFF)
    efn = pot.energy_fn(disp, atoms.numbers)
    nfn = cells.dense_cell_neighbor_list(disp, box, CUTOFF, skin, 1.5)
    R = jnp.asarray(atoms.positions, jnp.float32)
    nbrs = nfn.allocate(R)
    init, apply = simulate.nve(lambda R, neighbor: efn(R, neighbor=neighbor), shift,
                               dt=2.0 * FS)
    mass = jnp.asarray(atoms.get_masses(), jnp.float32)[:, None]
    state = init(jax.random.PRNGKey(0), R, 120.0 * KB, mass=mass, neighbor=nbrs)

    def run(n_steps, update=True):
        @jax.jit
        def go(state, nbrs):
            def body(_, c):
                s, nb, k = c
                s = apply(s, neighbor=nb)
                if not update:
                    return s, nb, k
                new = nb.update(s.position)
                moved = jnp.any(new.reference_position != nb.reference_position)
                return s, new, k + moved.astype(jnp.int32)
            return jax.lax.fori_loop(0, n_steps, body, (state, nbrs, jnp.int32(0)))
        return go

    # melt first (the fcc start is not the liquid)
    melt = run(400)
    state, nbrs, _ = melt(state, nbrs)
    nbrs = nfn.allocate(state.position)
    state, nbrs, _ = melt(state, nbrs)
    assert not nbrs.did_buffer_overflow
    R = state.position
    force = jax.jit(jax.grad(lambda R, n: efn(R, neighbor=n)))
    energy = jax.jit(lambda R, n: efn(R, neighbor=n))
    rebuild = jax.jit(lambda R, n: nfn.update(R, n.set(reference_position=R + 2.0)))
    steps = 100
    with_update, without = run(steps), run(steps, update=False)
    _, _, k = with_update(state, nbrs)
    out = {"atoms": len(atoms), "skin": skin, "capacity": int(nbrs.idx.shape[1]),
           "candidates": nbrs.cell_list_capacity,
           "force_ms": 1e3 * timeit(force, R, nbrs),
           "energy_ms": 1e3 * timeit(energy, R, nbrs),
           "rebuild_ms": 1e3 * timeit(rebuild, R, nbrs),
           "step_ms": 1e3 * timeit(with_update, state, nbrs, reps=3) / steps,
           "step_no_update_ms": 1e3 * timeit(without, state, nbrs, reps=3) / steps,
           "rebuilds_per_step": int(k) / steps}
    print(json.dumps(out))
    return out


def case_biojax(n_cells: int, steps: int, **cfg_extra) -> dict:
    """biojax Simulation, exactly the bench_md.py case."""
    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn.classical import lennard_jones

    atoms = lj_atoms(n_cells)
    pot = lennard_jones([18], SIGMA, EPS, cutoff=CUTOFF)
    cfg = default_config(ensemble="nve", timestep_fs=2.0, temperature_K=120.0,
                         steps=2 * steps, chunk_steps=steps, capacity_multiplier=1.5,
                         observe_every=math.gcd(100, steps), frame_every=steps, **cfg_extra)
    s = Simulation(atoms, pot, cfg).run(None)
    steady = s["wall_s"] - s["first_chunk_s"]
    return {"atoms": len(atoms), "atom_steps_per_s": len(atoms) * steps / steady,
            "overflows": s["overflows"], "first_chunk_s": s["first_chunk_s"]}


def case_openmm(n_cells: int, steps: int) -> dict:
    """OpenMM CPU platform, as bench_md.py: NonbondedForce LJ, same cutoff and switch."""
    import openmm
    import openmm.unit as u

    from biojax.bench.cases import openmm_lj_system
    from biojax.core.units import NM

    atoms = lj_atoms(n_cells)
    system = openmm_lj_system(atoms)
    integrator = openmm.VerletIntegrator(2.0 * u.femtoseconds)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": str(os.cpu_count())})
    ctx.setPositions(atoms.positions / NM)
    ctx.setVelocitiesToTemperature(120.0)
    integrator.step(steps)  # melt and warm up, as biojax's first chunk
    t = time.perf_counter()
    integrator.step(steps)
    ctx.getState(getEnergy=True)
    steady = time.perf_counter() - t
    return {"atoms": len(atoms), "atom_steps_per_s": len(atoms) * steps / steady}


def child(name: str, n_cells: int, extra: dict, root: str | None = None) -> dict:
    """One case in its own process; ``root`` (a folder holding a biojax package) is put
    first on the path, to time another version of biojax against this one."""
    env = dict(os.environ)
    if root:
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import json, lj_profile as p; "
            f"print('RESULT', json.dumps(p.case_{name}({n_cells}, {STEPS[n_cells]}, "
            f"**json.loads({json.dumps(json.dumps(extra))}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(out.stderr[-2000:])


def ratio(sizes, repeats=3, extra=None, before: str | None = None):
    """biojax (and, with ``before``, the biojax package under that folder) against
    OpenMM CPU, alternating, ``repeats`` times per size; medians and their ratios."""
    extra = extra or {}
    rows = []
    for n in sizes:
        b, o, old = [], [], []
        for _ in range(repeats):
            if before:
                old.append(child("biojax", n, extra, before)["atom_steps_per_s"])
            b.append(child("biojax", n, extra)["atom_steps_per_s"])
            o.append(child("openmm", n, {})["atom_steps_per_s"])
        bm, om = statistics.median(b), statistics.median(o)
        row = {"atoms": len(lj_atoms(n)), "biojax": bm, "openmm": om, "ratio": bm / om,
               "load": os.getloadavg()[0], "biojax_all": b, "openmm_all": o}
        if before:
            row.update(before=statistics.median(old), before_all=old,
                       before_ratio=statistics.median(old) / om)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "parts":
        skin = float(os.environ.get("SKIN", "0.5"))
        for n in sys.argv[2:]:
            parts(int(n), skin)
    elif mode == "ratio":
        extra = json.loads(os.environ.get("EXTRA", "{}"))
        print("load", os.getloadavg())
        ratio([int(n) for n in sys.argv[2:]], int(os.environ.get("REPEATS", "3")), extra,
              os.environ.get("BEFORE"))
