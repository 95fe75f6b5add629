"""MD benchmarks: biojax vs raw jax-md vs OpenMM (LJ fluid), biojax vs ASE driving the same
learned potential (alanine dipeptide), replica scaling vs OpenMM AMBER/implicit solvent,
compile time of the first chunk and peak memory.

    python benchmarks/bench_md.py            # everything, writes benchmarks/results/md.{json,md}
    python benchmarks/bench_md.py --quick    # small sizes, a smoke test of the script

Every case runs in its own subprocess (``--case NAME --args JSON``) so that peak memory
(ru_maxrss) is per case and OpenMM never shares a process with JAX. Timings exclude
compilation (reported separately as the first chunk's wall time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

from biojax.bench.cases import case_lj_biojax, case_lj_jaxmd, case_lj_openmm
from biojax.bench.timing import peak_rss_mb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ALA2 = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")
ALA2_MODEL = os.path.join(ROOT, "examples", "models", "ala2_painn")
ARCH = {"name": "schnet", "features": 64, "n_interactions": 3, "n_basis": 32}
MODEL_CUTOFF = 5.0


# ====================================================================== cases (children)
# The Lennard-Jones cases live in biojax.bench.cases (shared with `biojax bench`): each is
# the median of repeated timed chunks after a compiling first one.


def _ala2_potential(model: str = "painn"):
    """Alanine dipeptide and a learned potential: "painn" is the shipped model trained on
    GFN2-xTB data (examples/models/ala2_painn: 32 features, 2 interactions); "schnet" a
    freshly initialised SchNet (64 features, 3 interactions): same cost per step as a
    trained one, but not a physical potential."""
    import jax
    import ase.io
    from biojax.nn.io import load_potential
    from biojax.nn.models import init_potential

    atoms = ase.io.read(ALA2)
    if model == "painn":
        return atoms, load_potential(ALA2_MODEL)
    pot = init_potential(ARCH, sorted(set(int(z) for z in atoms.numbers)), MODEL_CUTOFF,
                         key=jax.random.PRNGKey(0))
    return atoms, pot


def case_ala2_biojax(replicas: int, steps: int, timestep_fs: float = 0.5,
                     model: str = "painn", hydrogen_mass: float = 0.0) -> dict:
    """biojax Langevin MD of R alanine-dipeptide replicas on a learned potential
    (``hydrogen_mass`` > 0: hydrogen mass repartitioning, amu)."""
    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation

    atoms, pot = _ala2_potential(model)
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=timestep_fs,
                         temperature_K=300.0, steps=2 * steps, chunk_steps=steps,
                         observe_every=math.gcd(50, steps), frame_every=steps,
                         replicas=replicas, hydrogen_mass=hydrogen_mass)
    s = Simulation(atoms, pot, cfg).run(None)
    steady = s["wall_s"] - s["first_chunk_s"]
    sps = steps / steady
    ns_day = sps * timestep_fs * 86400 / 1e6
    return {"replicas": replicas, "steps": steps, "timestep_fs": timestep_fs,
            "hydrogen_mass": hydrogen_mass,
            "seconds": steady, "steps_per_s": sps, "ns_per_day": ns_day,
            "aggregate_ns_per_day": ns_day * replicas, "first_chunk_s": s["first_chunk_s"],
            "compilations": s["compilations"], "replica_block": s["replica_block"]}


def case_ala2_ase(steps: int, timestep_fs: float = 0.5, model: str = "painn") -> dict:
    """ASE VelocityVerlet driving the same model through BiojaxCalculator."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    import numpy as np
    from biojax.calculator import BiojaxCalculator
    from biojax.core.units import FS

    atoms, pot = _ala2_potential(model)
    atoms.calc = BiojaxCalculator(pot)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * FS)
    t = time.perf_counter()
    dyn.run(5)
    first = time.perf_counter() - t
    dyn.run(100)  # warm-up: the padded edge count visits its buckets (one compile each)
    # time every step; a step in which the calculator compiled (its edge padding grew) is
    # left out, as compilation is left out of the biojax timings
    marks = []
    dyn.attach(lambda: marks.append((time.perf_counter(), atoms.calc._evaluate._cache_size())),
               interval=1)
    marks.append((time.perf_counter(), atoms.calc._evaluate._cache_size()))
    dyn.run(steps)
    kept = [(t1 - t0) for (t0, c0), (t1, c1) in zip(marks, marks[1:]) if c1 == c0]
    steady = sum(kept)
    sps = len(kept) / steady
    return {"steps": steps, "timestep_fs": timestep_fs, "seconds": steady,
            "steps_per_s": sps, "ns_per_day": sps * timestep_fs * 86400 / 1e6,
            "first_chunk_s": first,
            "compilations_while_timed": marks[-1][1] - marks[0][1],
            "steps_timed": len(kept)}


def case_ala2_openmm(steps: int) -> dict:
    """OpenMM CPU: AMBER (openmmtools' prmtop, copied to examples/data) + OBC2 implicit
    solvent, HBonds, 2 fs."""
    import openmm
    import openmm.app as app
    import openmm.unit as u

    folder = os.path.join(ROOT, "examples", "data", "alanine-dipeptide-gbsa")
    prmtop = app.AmberPrmtopFile(os.path.join(folder, "alanine-dipeptide.prmtop"))
    pdb = app.PDBFile(os.path.join(folder, "alanine-dipeptide.pdb"))
    system = prmtop.createSystem(implicitSolvent=app.OBC2, nonbondedMethod=app.NoCutoff,
                                 constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond,
                                                 2 * u.femtoseconds)
    threads = os.cpu_count()
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": str(threads)})
    ctx.setPositions(pdb.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx)
    integrator.step(100)
    t = time.perf_counter()
    integrator.step(steps)
    ctx.getState(getEnergy=True)
    steady = time.perf_counter() - t
    sps = steps / steady
    return {"steps": steps, "timestep_fs": 2.0, "seconds": steady, "steps_per_s": sps,
            "ns_per_day": sps * 2.0 * 86400 / 1e6, "threads": threads,
            "force_field": "AMBER (openmmtools alanine-dipeptide-gbsa prmtop) + OBC2, HBonds"}


CASES = {"lj-biojax": case_lj_biojax, "lj-jaxmd": case_lj_jaxmd, "lj-openmm": case_lj_openmm,
         "ala2-biojax": case_ala2_biojax, "ala2-ase": case_ala2_ase,
         "ala2-openmm": case_ala2_openmm}


def child(name: str, kwargs: dict) -> None:
    result = CASES[name](**kwargs)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


# ====================================================================== driver (parent)
def run_case(name: str, timeout: float = 900, **kwargs) -> dict:
    t = time.perf_counter()
    load = os.getloadavg()
    proc = subprocess.run([sys.executable, __file__, "--case", name, "--args",
                           json.dumps(kwargs)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {name} {kwargs} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][7:])
    result.update(case=name, wall_s=time.perf_counter() - t, loadavg_before=load,
                  loadavg_after=os.getloadavg())
    print(f"  {name} {kwargs}: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
        if k in ("atom_steps_per_s", "ns_per_day", "aggregate_ns_per_day", "steps_per_s",
                 "first_chunk_s", "first_call_s", "peak_rss_mb")), flush=True)
    return result


def device_info() -> dict:
    import jax

    return {"jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "jax": jax.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case")
    ap.add_argument("--args", default="{}")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="lj,ala2,replicas")
    ap.add_argument("--model", default="painn", choices=["painn", "schnet"],
                    help="learned potential for the alanine-dipeptide cases")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    if args.case:
        child(args.case, json.loads(args.args))
        return 0
    only = set(args.only.split(","))
    results = {"device": device_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "loadavg_start": os.getloadavg(),
               "model": args.model,
               "notes": [{"painn": "learned potential = the shipped PaiNN trained on "
                                   "GFN2-xTB alanine-dipeptide data (examples/models/"
                                   "ala2_painn: 32 features, 2 interactions, 5 Å cutoff)",
                          "schnet": "learned potential = SchNet (64 features, 3 "
                                    "interactions, 5 Å cutoff) with freshly initialised "
                                    "weights: same cost per step as trained ones, but not "
                                    "a physical potential"}[args.model],
                         "ASE: BiojaxCalculator keeps its largest padding, so the timed "
                         "ASE steps recompile only if the edge count grows "
                         "(compilations_while_timed in the JSON); such steps are left out "
                         "of the ASE timing",
                         "timings exclude compilation; first_chunk_s is the wall time of "
                         "the first (compiling) chunk",
                         "machine shared with other engineers: see loadavg per case",
                         "overflow reruns: neighbor-list overflows after the first chunk, "
                         "each rerunning a chunk (counted in the timing)",
                         "replicas run as vmapped blocks (replica_block in the JSON)",
                         "1 fs rows: hydrogen mass repartitioning to 4 amu; in NVE on this "
                         "model the total energy then fluctuates about half as much as with "
                         "element masses at 1 fs and about 2.3x as much as at 0.5 fs "
                         "(tests/test_md.py checks the first)"]}
    results["section_started"] = {key: results["started"] for key in only}
    partial = os.path.join(args.out, "md_partial.json")
    os.makedirs(args.out, exist_ok=True)

    def save_partial():  # a crash late in the run keeps the earlier cases
        with open(partial, "w") as f:
            json.dump(results, f, indent=2)

    # ---- 1. LJ fluid
    if "lj" in only:
        sizes = [(7, 200), (11, 50)] if args.quick else \
            [(7, 1000), (11, 400), (16, 200), (20, 100)]  # 1372, 5324, 16384, 32000 atoms
        results["lj"] = []
        for n, steps in sizes:
            row = {}
            for engine in ("biojax", "jaxmd", "openmm"):
                row[engine] = run_case(f"lj-{engine}", n_cells=n, steps=steps)
            results["lj"].append(row)
            save_partial()
    # ---- 2. learned potential: biojax vs ASE; 3. replicas vs OpenMM AMBER
    replica_steps = {1: 200, 16: 100} if args.quick else \
        {1: 2000, 4: 1000, 16: 400, 64: 200, 256: 100}
    runs = {}
    if "ala2" in only:
        runs[1] = run_case("ala2-biojax", replicas=1, steps=replica_steps[1], model=args.model)
        runs[64] = run_case("ala2-biojax", replicas=64, steps=100 if args.quick else 200,
                            model=args.model)
        results["ala2"] = {"biojax_1": runs[1], "biojax_64": runs[64],
                           "ase": run_case("ala2-ase", steps=50 if args.quick else 500,
                                          model=args.model)}
        save_partial()
    if "replicas" in only:
        results["replicas"] = {
            "openmm": run_case("ala2-openmm", steps=2000 if args.quick else 20000),
            "biojax": [runs.get(r) or run_case("ala2-biojax", replicas=r, steps=steps,
                                               model=args.model)
                       for r, steps in replica_steps.items()],
            # hydrogen mass repartitioning makes a 1 fs step usable (see the notes)
            "biojax_hmr": [run_case("ala2-biojax", replicas=r, steps=steps, model=args.model,
                                    timestep_fs=1.0, hydrogen_mass=4.0)
                           for r, steps in replica_steps.items() if r in (1, 16, 64)]}
        save_partial()
    results["loadavg_end"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    name = "md_quick" if args.quick else "md"
    previous = os.path.join(args.out, name + ".json")
    if only != {"lj", "ala2", "replicas"} and os.path.exists(previous):
        with open(previous) as f:  # a partial rerun keeps the other sections
            old = json.load(f)
        for key in ("lj", "ala2", "replicas"):
            if key not in only and key in old:
                results[key] = old[key]
                started = old.get("section_started", {}).get(key, old["started"])
                results["section_started"][key] = started
                results.setdefault("sections_from_earlier_run", []).append(
                    f"{key} (started {started})")
    with open(os.path.join(args.out, name + ".json.tmp"), "w") as f:
        json.dump(results, f, indent=2)
    os.replace(os.path.join(args.out, name + ".json.tmp"), os.path.join(args.out, name + ".json"))
    if os.path.exists(partial):
        os.remove(partial)
    md = markdown(results)
    with open(os.path.join(args.out, name + ".md.tmp"), "w") as f:
        f.write(md)
    os.replace(os.path.join(args.out, name + ".md.tmp"), os.path.join(args.out, name + ".md"))
    print(md)
    return 0


def markdown(r: dict) -> str:
    d = r["device"]
    name = {"painn": "trained PaiNN", "schnet": "SchNet"}[r.get("model", "schnet")]
    lines = [f"# biojax MD benchmarks", "",
             f"Device: JAX {d['jax']} on {d['jax_backend']} ({d['cores']} CPU cores, "
             f"{d['cpu']}); OpenMM CPU platform with {d['cores']} threads. Started "
             f"{r['started']}, load average {r['loadavg_start'][0]:.1f} at start, "
             f"{r['loadavg_end'][0]:.1f} at end (shared machine).", ""]
    if "lj" in r:
        lines += ["## 1. Lennard-Jones fluid (argon, ρ* ≈ 0.81, 8.5 Å cutoff, NVE 2 fs)", "",
                  "| atoms | biojax atom-steps/s | raw jax-md | OpenMM CPU | biojax / jax-md | "
                  "biojax / OpenMM | biojax first chunk (s) | biojax peak RSS (MB) | "
                  "overflow reruns |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in r["lj"]:
            b, j, o = row["biojax"], row["jaxmd"], row["openmm"]
            lines.append(
                f"| {b['atoms']} | {b['atom_steps_per_s']:.3g} | {j['atom_steps_per_s']:.3g} | "
                f"{o['atom_steps_per_s']:.3g} | {b['atom_steps_per_s'] / j['atom_steps_per_s']:.2f} | "
                f"{b['atom_steps_per_s'] / o['atom_steps_per_s']:.2f} | "
                f"{b.get('first_chunk_s', b.get('first_call_s')):.1f} | {b['peak_rss_mb']:.0f} | "
                f"{b.get('overflows', '')} |")
        lines.append("")
    if "ala2" in r:
        a = r["ala2"]
        b1, b64, ase_ = a["biojax_1"], a["biojax_64"], a["ase"]
        lines += [f"## 2. Learned potential ({name}) on alanine dipeptide, 0.5 fs", "",
                  "| engine | steps/s | ns/day per trajectory | aggregate ns/day | "
                  "speed-up vs ASE | first chunk (s) | peak RSS (MB) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, x, agg in (("ASE VelocityVerlet + BiojaxCalculator", ase_, ase_["ns_per_day"]),
                              ("biojax, 1 trajectory", b1, b1["aggregate_ns_per_day"]),
                              ("biojax, 64 replicas", b64, b64["aggregate_ns_per_day"])):
            lines.append(f"| {label} | {x['steps_per_s']:.3g} | {x['ns_per_day']:.3g} | "
                         f"{agg:.3g} | {agg / ase_['ns_per_day']:.1f}× | "
                         f"{x['first_chunk_s']:.1f} | {x['peak_rss_mb']:.0f} |")
        lines.append("")
    if "replicas" in r:
        o = r["replicas"]["openmm"]
        lines += [f"## 3. Replicas: aggregate ns/day, alanine dipeptide ({name})", "",
                  f"OpenMM CPU, {o['force_field']}, 2 fs Langevin, one trajectory: "
                  f"**{o['ns_per_day']:.0f} ns/day** (peak RSS {o['peak_rss_mb']:.0f} MB).", "",
                  "| replicas R | time step | biojax steps/s | ns/day per replica | "
                  "aggregate ns/day | vs OpenMM | first chunk (s) | peak RSS (MB) |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for x in r["replicas"]["biojax"] + r["replicas"].get("biojax_hmr", []):
            step = f"{x['timestep_fs']:g} fs" + (
                f", H {x['hydrogen_mass']:g} amu" if x.get("hydrogen_mass") else "")
            lines.append(f"| {x['replicas']} | {step} | {x['steps_per_s']:.3g} | "
                         f"{x['ns_per_day']:.3g} | "
                         f"{x['aggregate_ns_per_day']:.3g} | "
                         f"{x['aggregate_ns_per_day'] / o['ns_per_day']:.2f}× | "
                         f"{x['first_chunk_s']:.1f} | {x['peak_rss_mb']:.0f} |")
        lines.append("")
    if r.get("sections_from_earlier_run"):
        lines += ["Sections kept from an earlier run of this script: "
                  + ", ".join(r["sections_from_earlier_run"]) + ".", ""]
    lines += ["Notes: " + " ".join(f"({i + 1}) {n}." for i, n in enumerate(r["notes"])), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
