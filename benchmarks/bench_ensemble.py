"""The cost of uncertainty inside the MD loop: Langevin MD of alanine dipeptide (22 atoms)
with one PaiNN vs a full ensemble of K = 4 and 8 members and a shallow one (K heads), with
and without the ensemble's force-uncertainty observable ([uncertainty] policy "record",
computed every ``observe_every`` steps inside the compiled chunk); apax's ensemble MD on
the same system in the same run when apax is installed (in its own virtual environment,
``--apax-python``; see ``apax_md_case``).

Members are the shipped examples/models/ala2_painn model (32 features, 2 interactions,
GFN2-xTB-trained) with its parameters perturbed by 1 % noise per member, so the dynamics
stay physical and the spread is non-zero; the cost per step is that of any trained
ensemble of this architecture. Every case runs in its own subprocess; timings exclude
the first (compiling) chunk.

    python benchmarks/bench_ensemble.py [--steps 400] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ALA2 = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")
MODEL = os.path.join(ROOT, "examples", "models", "ala2_painn")


def _ensemble(kind: str, members: int):
    import jax
    import numpy as np

    from biojax.nn.ensemble import EnsembleModel, make_ensemble
    from biojax.nn.io import load_potential
    from biojax.nn.models import build_model

    base = load_potential(MODEL)
    if kind == "single":
        return base

    def perturbed(params, seed):
        rng = np.random.default_rng(seed)
        return jax.tree_util.tree_map(
            lambda x: np.asarray(x) * (1 + 0.01 * rng.standard_normal(np.shape(x))).astype(
                np.asarray(x).dtype), params)

    if kind == "full":
        return make_ensemble([base.replace(params=perturbed(base.params, k))
                              for k in range(members)])
    # shallow: the trunk of the shipped model, K perturbed copies of its last layer
    arch = {**base.architecture, "heads": members}
    model = build_model(arch, len(base.elements), base.cutoff)
    assert isinstance(model, EnsembleModel)
    params = jax.tree_util.tree_map(np.asarray, base.params)
    p = {"params": dict(params["params"])}
    ro = p["params"]["readout_1"]
    rng = np.random.default_rng(0)
    kernel = np.repeat(np.asarray(ro["kernel"]), members, axis=1)
    p["params"]["readout_1"] = {
        "kernel": (kernel * (1 + 0.01 * rng.standard_normal(kernel.shape))).astype(
            kernel.dtype),
        "bias": np.repeat(np.asarray(ro["bias"]), members)}
    return base.replace(model=model, params=p, architecture=arch)


def case_biojax(kind: str, members: int, uncertainty: bool, steps: int,
                replicas: int = 1, observe_every: int = 10) -> dict:
    """biojax Langevin MD, 0.5 fs, 300 K; ``uncertainty``: the force-std observable."""
    import ase.io

    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation

    atoms = ase.io.read(ALA2)
    pot = _ensemble(kind, members)
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=0.5, temperature_K=300.0,
                         steps=3 * steps, chunk_steps=steps, observe_every=observe_every,
                         frame_every=steps, replicas=replicas, plots=False,
                         uncertainty={"policy": "record"} if uncertainty else None)
    s = Simulation(atoms, pot, cfg).run(None)
    steady = s["wall_s"] - s["first_chunk_s"]
    sps = 2 * steps / steady
    return {"kind": kind, "members": members, "uncertainty": uncertainty,
            "observe_every": observe_every, "replicas": replicas, "steps": 2 * steps,
            "seconds": steady, "steps_per_s": sps, "ns_per_day": sps * 0.5 * 86400 / 1e6,
            "first_chunk_s": s["first_chunk_s"]}


CASES = {"biojax": case_biojax}


def run_case(name: str, timeout: float = 1200, python: str = sys.executable, **kwargs):
    from biojax.bench.machine import load_average

    t = time.perf_counter()
    load = load_average()
    proc = subprocess.run([python, __file__, "--case", name, "--args", json.dumps(kwargs)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"case": name, **kwargs, "error": proc.stderr[-2000:]}
    result = json.loads(lines[-1][7:])
    result.update(case=name, wall_s=round(time.perf_counter() - t, 1),
                  loadavg_before=load, loadavg_after=load_average())
    print(f"  {name} {kwargs}: {result.get('steps_per_s') or float('nan'):.1f} steps/s "
          f"(load {load})", flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case")
    ap.add_argument("--args", default="{}")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--apax-python", default="/tmp/apaxenv/bin/python",
                    help="a python with apax installed (its own venv: apax pins its jax)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    if args.case:
        if args.case == "apax":
            from apax_ensemble_peer import case_apax  # noqa: F401 (run by the apax python)
            result = case_apax(**json.loads(args.args))
        else:
            result = CASES[args.case](**json.loads(args.args))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    from biojax.bench.machine import host_info, jax_info

    results = {"machine": {"host": host_info(), "jax": jax_info()},
               "note": ("each case in its own process, one after another; the load average "
                        "when each case ended is in its row"),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": []}
    steps = args.steps
    plan = [("single", 1, False), ("full", 4, False), ("full", 4, True), ("full", 8, False),
            ("full", 8, True), ("shallow", 4, True), ("shallow", 8, True)]
    for kind, k, unc in plan:
        results["cases"].append(run_case("biojax", kind=kind, members=k, uncertainty=unc,
                                         steps=steps))
    results["apax"] = apax_cases(args.apax_python, steps)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ensemble.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "ensemble.md"), "w") as f:
        f.write(table(results))
    print(table(results))
    return 0


def apax_cases(python: str, steps: int) -> list[dict] | dict:
    """apax's ensemble MD on the same system, or why it did not run."""
    if not os.path.exists(python):
        return {"skipped": f"no apax python at {python} (pip install apax into a venv)"}
    out = []
    for k in (1, 4, 8):
        out.append(run_case("apax", python=python, members=k, steps=steps))
    return out


def table(results: dict) -> str:
    m = results["machine"]
    lines = ["# Ensemble MD cost (alanine dipeptide, 22 atoms, 1 replica, 0.5 fs)\n",
             f"Machine: {m['host']['cpu_model']} ({m['host']['cpu_cores']} cores), "
             f"JAX {m['jax']['jax']}, {results['started']}; {results['note']}.\n",
             "| engine | model | K | uncertainty every 10 steps | steps/s | vs single | "
             "load |", "|---|---|---|---|---|---|---|"]
    base = next((c["steps_per_s"] for c in results["cases"]
                 if c.get("kind") == "single" and "steps_per_s" in c), None)
    rows = results["cases"] + (results["apax"] if isinstance(results["apax"], list) else [])
    for c in rows:
        if c.get("invalid"):
            lines.append(f"| {c['case']} | apax {c.get('model', '')} | {c.get('members')} | "
                         f"yes | invalid ({c['invalid']}) | | {c['loadavg_before'][0]} |")
            continue
        if "steps_per_s" not in c:
            lines.append(f"| {c['case']} | {c.get('kind', '')} | {c.get('members')} | | "
                         f"failed | | |")
            continue
        rel = f"{c['steps_per_s'] / base:.2f}" if base else ""
        lines.append(f"| {c['case']} | {c.get('kind', 'apax ' + str(c.get('model', '')))} | "
                     f"{c.get('members')} | {'yes' if c.get('uncertainty') else 'no'} | "
                     f"{c['steps_per_s']:.1f} | {rel} | {c['loadavg_before'][0]} |")
    if isinstance(results["apax"], dict):
        lines.append(f"\napax: {results['apax']['skipped']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main())
