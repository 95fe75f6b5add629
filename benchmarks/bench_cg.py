"""CG benchmarks: one DiffTRe update on CG water (biojax vs chemtrain) and CG MD throughput.

    python benchmarks/bench_cg.py            # writes benchmarks/results/cg.json
    python benchmarks/bench_cg.py --quick    # shorter runs, a smoke test of the script

The DiffTRe case is the same on both sides: the 901-bead CG water box of
examples/data/water_rdf (3 nm, 298 K, 18.0154 amu beads), a tabulated pair potential with
a 0.7 nm cutoff plus the repulsive prior 1 kJ/mol · (0.3165 nm / r)^12, one chain, 2 fs
steps, 0.5 ps re-equilibration + 2 ps production with a frame every 0.1 ps (20 frames),
the experimental O–O RDF (300 → 100 bins to 1 nm) as the only target, and every update
sampling a fresh trajectory (biojax: ess_threshold ≈ 1; chemtrain: reweight_ratio > 1).
One update = sampling + reweighted loss gradient + optimizer step; the first updates
(compilation) are excluded, the median of the following ones is reported.
Differences that remain: biojax integrates with BAOAB Langevin and a cubic spline,
chemtrain (its examples' choice) with a Nosé–Hoover chain and its monotonic spline.

chemtrain runs from its own virtual environment (``--chemtrain-python``, default
/tmp/ctenv/bin/python; made by ``python3 -m venv /tmp/ctenv --system-site-packages &&
/tmp/ctenv/bin/pip install chemtrain``, which brings jax 0.4.37 and jax-md 0.2.8 into that
venv only). Every case runs in its own subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "examples", "data", "water_rdf")
GRO = os.path.join(DATA, "Water_experimental.gro")
RDF = os.path.join(DATA, "O_O_RDF.csv")
CUTOFF_NM, KNOTS, R_MIN_NM = 0.7, 25, 0.22
SIGMA_NM, EPS_KJ = 0.3165, 1.0
T_K, DT_FS, EQUIL_PS, PROD_PS, EVERY_PS = 298.0, 2.0, 0.5, 2.0, 0.1


def read_gro(path):
    """Positions (N, 3) nm and box (3,) nm of a .gro file (no ASE: runs in any venv)."""
    import numpy as np

    with open(path) as f:
        lines = f.read().splitlines()
    n = int(lines[1])
    pos = np.array([[float(x) for x in (l[20:28], l[28:36], l[36:44])]
                    for l in lines[2:2 + n]])
    box = np.array([float(x) for x in lines[2 + n].split()[:3]])
    return pos, box


# ====================================================================== cases
def case_biojax_update(updates: int) -> dict:
    import shutil
    import tempfile

    import ase
    import numpy as np

    from biojax.cg.spline import spline_pair_potential
    from biojax.cg.trainer import ReweightConfig, TargetConfig, train_by_reweighting
    from biojax.core.units import KJ_PER_MOL

    pos, box = read_gro(GRO)
    atoms = ase.Atoms(numbers=[8] * len(pos), positions=pos * 10.0, cell=box * 10.0,
                      pbc=True, masses=[18.0154] * len(pos))
    atoms.wrap()
    pot = spline_pair_potential([8], CUTOFF_NM * 10, KNOTS, R_MIN_NM * 10,
                                prior_epsilon=EPS_KJ * KJ_PER_MOL, prior_sigma=SIGMA_NM * 10)
    steps = lambda ps: int(round(ps * 1000 / DT_FS))  # noqa: E731
    cfg = ReweightConfig(
        iterations=updates, learning_rate=0.002, replicas=1,
        equilibration_steps=steps(EQUIL_PS), resample_equilibration_steps=steps(EQUIL_PS),
        production_steps=steps(PROD_PS), frame_every=steps(EVERY_PS), timestep_fs=DT_FS,
        temperature_K=T_K, ess_threshold=0.999999, plots=False,
        targets=(TargetConfig("rdf", RDF, r_max=10.0, n_bins=100),))
    work = tempfile.mkdtemp(prefix="bench_cg_")
    try:
        t0 = time.perf_counter()
        res = train_by_reweighting(pot, atoms, cfg, work, log=lambda *a: None)
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    walls = [r["wall_s"] for r in res["metrics"]]
    per = np.diff(walls)[1:]  # drop update 2 (first steady one may still compile)
    return {"updates": updates, "update_s": float(np.median(per)),
            "update_s_all": [float(x) for x in np.diff(walls)], "first_update_s": walls[0],
            "total_s": total, "samples": res["samples"],
            "steps_per_update": steps(EQUIL_PS) + steps(PROD_PS)}


def case_biojax_md(replicas: int, steps: int, replica_block: int) -> dict:
    import ase

    from biojax.cg.sampler import Sampler, make_energy
    from biojax.cg.spline import spline_pair_potential
    from biojax.core.units import KJ_PER_MOL
    from biojax.md.system import make_space

    pos, box = read_gro(GRO)
    atoms = ase.Atoms(numbers=[8] * len(pos), positions=pos * 10.0, cell=box * 10.0,
                      pbc=True, masses=[18.0154] * len(pos))
    atoms.wrap()
    pot = spline_pair_potential([8], CUTOFF_NM * 10, KNOTS, R_MIN_NM * 10,
                                prior_epsilon=EPS_KJ * KJ_PER_MOL, prior_sigma=SIGMA_NM * 10)
    energy = make_energy(pot, make_space(atoms, False).displacement_fn, atoms.numbers)
    s = Sampler(energy, atoms, pot.cutoff, replicas=replicas, temperature_K=T_K,
                timestep_fs=DT_FS, replica_block=replica_block)
    state = s.init(pot.params, 0)
    every = 50
    t0 = time.perf_counter()
    _, _, state = s.run(pot.params, state, steps // every, every)  # compiles
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, _, state = s.run(pot.params, state, steps // every, every)
    wall = time.perf_counter() - t0
    n = len(atoms)
    ns_day = steps * DT_FS * 1e-6 / wall * 86400
    return {"beads": n, "replicas": replicas, "sequential": s.sequential, "steps": steps,
            "seconds": wall, "first_chunk_s": first,
            "bead_steps_per_s": n * replicas * steps / wall,
            "ns_per_day_per_replica": ns_day, "aggregate_ns_per_day": ns_day * replicas}


CHEMTRAIN_CASE = r'''
import json, sys, time
import numpy as onp
import jax, jax.numpy as jnp, optax
import chemtrain  # patches jax_md before it is imported
from jax_md import space, partition, simulate
from jax_md_mod import custom_energy
from chemtrain.trainers import trainers
from chemtrain.ensemble import sampling
from chemtrain.quantity.targets import structure, util as tutil
a = json.loads(sys.argv[1])
pos, box = onp.asarray(a["pos"]), onp.asarray(a["box"])
kT = 0.0083145107 * a["T"]
box_tensor = jnp.diag(jnp.asarray(box, jnp.float32))  # chemtrain's convention: general
box = jnp.asarray(box, jnp.float32)                     # box, fractional coordinates
displacement, shift = space.periodic_general(box_tensor, fractional_coordinates=True)
R0 = jnp.asarray(onp.mod(pos / onp.asarray(box), 1.0), jnp.float32)
neighbor_fn = partition.neighbor_list(displacement, box_tensor, a["cutoff"],
                                      dr_threshold=0.05, capacity_multiplier=1.25,
                                      fractional_coordinates=True)
nbrs0 = neighbor_fn.allocate(R0)
x_vals = jnp.linspace(a["r_min"], a["cutoff"], a["knots"])
prior = custom_energy.generic_repulsion_neighborlist(
    displacement, box_tensor, sigma=a["sigma"], epsilon=a["eps"], exp=12.0,
    r_onset=0.9 * a["cutoff"], r_cutoff=a["cutoff"], initialize_neighbor_list=False)
def energy_fn_template(params):
    tab = custom_energy.tabulated_neighbor_list(
        displacement, x_vals, params, box_tensor, r_onset=0.9 * a["cutoff"],
        r_cutoff=a["cutoff"], initialize_neighbor_list=False)
    def energy(R, neighbor, **kw):
        return tab(R, neighbor, **kw) + prior(R, neighbor, **kw)
    return energy
params = jnp.zeros(a["knots"], jnp.float32)
dt = a["dt_ps"]
timings = sampling.process_printouts(dt, a["equil_ps"] + a["prod_ps"], a["equil_ps"],
                                     a["every_ps"])
simulator_template = lambda e: simulate.nvt_nose_hoover(e, shift, dt, kT, chain_length=3)
init, _ = simulator_template(energy_fn_template(params))
state0 = init(jax.random.PRNGKey(0), R0, mass=18.0154, neighbor=nbrs0)
tb = tutil.TargetBuilder()
tb["rdf"] = structure.init_radial_distribution_target(onp.loadtxt(a["rdf"]), rdf_cut=1.0,
                                                      nbins=100, gamma=1.0)
targets, compute_fns = tb.build({"displacement_fn": displacement,
                                 "reference_box": box_tensor})
opt = optax.adam(0.002)
trainer = trainers.Difftre(params, opt, reweight_ratio=1.1,
                           energy_fn_template=energy_fn_template)
t0 = time.perf_counter()
trainer.add_statepoint(energy_fn_template, simulator_template, neighbor_fn, timings,
                       {"kT": kT}, compute_fns, (state0, nbrs0), targets)
setup = time.perf_counter() - t0
walls = []
for i in range(a["updates"]):
    t0 = time.perf_counter()
    trainer.train(1)
    walls.append(time.perf_counter() - t0)
print("RESULT " + json.dumps({"setup_s": setup, "update_s_all": walls,
      "update_s": float(onp.median(walls[2:])) if len(walls) > 2 else walls[-1],
      "losses": [float(x) for x in trainer.epoch_losses],
      "jax": jax.__version__, "chemtrain": getattr(chemtrain, "__version__", "0.2.0")}))
'''


def case_chemtrain_update(python: str, updates: int) -> dict:
    if not os.path.exists(python):
        return {"error": f"{python} not found; make the venv (see module doc)"}
    pos, box = read_gro(GRO)
    args = {"pos": pos.tolist(), "box": box.tolist(), "T": T_K, "cutoff": CUTOFF_NM,
            "r_min": R_MIN_NM, "knots": KNOTS, "sigma": SIGMA_NM, "eps": EPS_KJ,
            "dt_ps": DT_FS / 1000, "equil_ps": EQUIL_PS, "prod_ps": PROD_PS,
            "every_ps": EVERY_PS, "rdf": RDF, "updates": updates}
    t0 = time.perf_counter()
    p = subprocess.run([python, "-c", CHEMTRAIN_CASE, json.dumps(args)],
                       capture_output=True, text=True, cwd="/tmp")
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["total_s"] = wall
            return out
    return {"error": f"chemtrain case failed (exit {p.returncode}): "
                     f"{(p.stderr or p.stdout)[-1500:]}"}


# ====================================================================== driver
def run_case(name: str, **kw) -> dict:
    p = subprocess.run([sys.executable, __file__, "--case", name, "--args", json.dumps(kw)],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"exit {p.returncode}: {p.stderr[-1500:]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case")
    parser.add_argument("--args", default="{}")
    parser.add_argument("--chemtrain-python", default="/tmp/ctenv/bin/python")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "cg.json"))
    args = parser.parse_args()
    if args.case:
        fn = {"biojax_update": case_biojax_update, "biojax_md": case_biojax_md}[args.case]
        print("RESULT " + json.dumps(fn(**json.loads(args.args))))
        return
    sys.path.insert(0, HERE)
    from machine import cpu_model

    updates = 3 if args.quick else 5
    md_steps = 200 if args.quick else 1000
    results = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                           "python": platform.python_version()},
               "setup": {"beads": 901, "cutoff_nm": CUTOFF_NM, "knots": KNOTS,
                         "temperature_K": T_K, "timestep_fs": DT_FS,
                         "equilibration_ps": EQUIL_PS, "production_ps": PROD_PS,
                         "frame_every_ps": EVERY_PS},
               "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    load = os.getloadavg()[0]
    results["load_average_at_start"] = load
    print(f"load average {load:.1f} on {os.cpu_count()} cores", flush=True)
    results["difftre_update"] = {
        "biojax": run_case("biojax_update", updates=updates),
        "chemtrain": case_chemtrain_update(args.chemtrain_python, updates)}
    print(json.dumps(results["difftre_update"], indent=1), flush=True)
    results["cg_md"] = [run_case("biojax_md", replicas=r, steps=md_steps, replica_block=b)
                        for r, b in ((1, 0), (4, 0), (4, 4))]
    print(json.dumps(results["cg_md"], indent=1), flush=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
