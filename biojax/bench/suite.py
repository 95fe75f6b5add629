"""The benchmark suite: workloads, their jobs, and the runner behind ``biojax bench``.

A *workload* (``WORKLOADS``: name -> plan function) expands, for a suite (smoke, quick,
standard, full) and the machine it runs on, into *jobs*: one child process each
(``python -m biojax.bench.child``) running one case function (``biojax.bench.cases``)
over a list of settings, with a timeout. Each finished setting comes back as it ends, so
a job that crashes or times out keeps its earlier numbers; a failed, timed-out or missing
one is recorded with ``status`` and the error's last lines, and the suite goes on.
``results.json`` is rewritten (atomically) after every job.

A user workload is named by import path (``--only mypkg.bench:my_workload``): a function
``fn(suite=...) -> dict of numbers`` run in its own child process like the built-ins.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Callable

from biojax.bench.machine import host_info, load_average
from biojax.core.atomic import atomic_write_text
from biojax.core.errors import ConfigError

SUITES = ("smoke", "quick", "standard", "full")
SCHEMA = 1
#: the interpreter of the venv that holds InstaDeep's mlip (never the main environment,
#: whose jax it would replace); override with BIOJAX_BENCH_MLIP_PYTHON
MLIP_PYTHON = os.environ.get("BIOJAX_BENCH_MLIP_PYTHON", "/work/venvs/mlip/bin/python")


@dataclasses.dataclass
class Job:
    """One child process: ``case`` over ``runs`` (kwargs each, labelled ``labels``)."""

    workload: str
    engine: str
    case: str
    runs: list[dict]
    labels: list[str]
    timeout_s: float
    env: dict = dataclasses.field(default_factory=dict)
    python: str | None = None
    script: str | None = None        # run this file instead of the biojax child module
    unavailable: str | None = None   # set: not run, every setting is 'not installed'


@dataclasses.dataclass
class Context:
    """What a plan may depend on: the suite, the JAX platform (cpu, gpu, tpu), timing
    targets and which peers are installed."""

    suite: str
    platform: str
    repeats: int
    target_s: float      # seconds per timed sample
    chunk_s: float       # seconds per call (chunk) aimed at, from rough rate estimates
    timeout_s: float
    openmm: bool
    mlip_python: str | None

    @property
    def accelerator(self) -> bool:
        return self.platform != "cpu"


#: the smoke suite shrinks the learned models (where they take these keys): it checks the
#: harness end to end, and compilation of the default sizes would dominate its time
SMOKE_MODEL = {"features": 16, "n_interactions": 1}  # each model takes its own keys

SUITE_SETTINGS = {  # repeats, target s per sample, s per chunk, timeout per job
    "smoke": (3, 0.0, 0.0, 300.0),
    "quick": (3, 0.6, 0.2, 900.0),
    "standard": (3, 1.0, 0.25, 1200.0),
    "full": (5, 2.0, 0.5, 3600.0),
}

# rough rates (atom-steps/s) to size a chunk; the timed sample adapts to the real rate
_RATES = {("lj", "cpu"): 2e6, ("lj", "acc"): 5e7, ("lj_jaxmd", "cpu"): 2.5e5,
          ("lj_jaxmd", "acc"): 3e7, ("learned", "cpu"): 1.5e4, ("learned", "acc"): 2e6}


def chunk_steps(ctx: Context, kind: str, atoms: int, lo: int = 10, hi: int = 1000) -> int:
    """Steps per call for ``atoms`` (all replicas) aiming at ``ctx.chunk_s`` seconds,
    a multiple of 10 in [lo, hi]."""
    if ctx.chunk_s <= 0:
        return lo
    rate = _RATES[(kind, "acc" if ctx.accelerator else "cpu")]
    steps = int(ctx.chunk_s * rate / atoms) // 10 * 10
    return max(lo, min(hi, steps))


# ====================================================================== workloads
LJ_SIZES = {  # fcc cells (4 atoms each): 256, 1000, 4000, 16000, 32000, 64000, ...
    "smoke": [(4, 4, 4)],
    "quick": [(5, 5, 10), (10, 10, 10)],
    "standard": [(5, 5, 10), (10, 10, 10), (10, 20, 20), (20, 20, 20), (20, 20, 40)],
    "full": [(5, 5, 10), (10, 10, 10), (10, 20, 20), (20, 20, 20), (20, 20, 40),
             (40, 40, 40), (40, 40, 80), (50, 50, 100)],
}


def _n_lj(cells) -> int:
    return 4 * cells[0] * cells[1] * cells[2]


def plan_lj(ctx: Context) -> tuple[dict, list[Job]]:
    """Lennard-Jones argon through biojax, raw jax-md and OpenMM (CPU; CUDA if present)."""
    sizes = list(LJ_SIZES[ctx.suite])
    if ctx.suite == "standard" and ctx.accelerator:
        sizes.append((40, 40, 40))  # 256,000 atoms
    if ctx.suite == "full" and not ctx.accelerator:
        sizes = [s for s in sizes if _n_lj(s) <= 256000]
    jobs = []
    for engine, case, kind, extra in (
            ("biojax", "lj_biojax", "lj", {}),
            ("jax-md", "lj_jaxmd", "lj_jaxmd", {}),
            ("openmm-cpu", "lj_openmm", "lj", {"platform": "CPU"}),
            ("openmm-cuda", "lj_openmm", "lj", {"platform": "CUDA"})):
        runs = [dict(n_cells=list(c), steps=chunk_steps(ctx, kind, _n_lj(c)),
                     repeats=ctx.repeats, target_s=ctx.target_s, **extra) for c in sizes]
        if engine == "jax-md" and not ctx.accelerator and ctx.suite != "full":
            runs = [r for r in runs if _n_lj(r["n_cells"]) <= 64000]
        missing = None if ctx.openmm or not engine.startswith("openmm") else \
            "openmm is not installed"
        jobs.append(Job("lj", engine, case, runs,
                        [f"{_n_lj(r['n_cells'])} atoms" for r in runs], ctx.timeout_s,
                        unavailable=missing))
    config = {"system": "argon fcc start, rho* ~ 0.81 (a = 5.8 A), NVE 2 fs, 120 K start",
              "potential": "LJ sigma 3.405 A, epsilon 0.0103 eV, cutoff 8.5 A, switch from "
                           "6.8 A", "atoms": [_n_lj(s) for s in sizes]}
    return config, jobs


def learned_architectures(suite: str | None = None) -> list[str]:
    """Registered learned (neural-network) architectures: flax modules in the models
    registry that are not pair potentials (zero, Lennard-Jones, Morse, spline pairs).
    The smoke suite, which checks the harness rather than measuring, takes PaiNN and
    SchNet only (each architecture compiles for tens of seconds)."""
    import flax.linen as nn

    from biojax.core import registry

    models = registry.load(registry.models)
    names = []
    for name in models.names():
        entry = models.get(name)
        if isinstance(entry, type) and issubclass(entry, nn.Module) \
                and getattr(entry, "neighbor_format", None) != "dense" \
                and "pair" not in name and name != "zero":
            names.append(name)
    if suite == "smoke":
        names = [n for n in names if n in ("painn", "schnet")]
    return names


CU_SIZES = {"smoke": [], "quick": [4], "standard": [4, 6, 8, 10], "full": [4, 6, 8, 10, 13]}
REPLICAS = {"smoke": [1], "quick": [1, 8], "standard": [1, 4, 16, 64],
            "full": [1, 4, 16, 64, 256]}


def _merged(jobs: list[Job], engine: str) -> list[Job]:
    """One job running the settings of ``jobs`` (same workload and case) in turn: one
    child process instead of several (the smoke suite, where start-up dominates)."""
    if len(jobs) < 2:
        return jobs
    return [Job(jobs[0].workload, engine, jobs[0].case, [r for j in jobs for r in j.runs],
                [f"{j.engine} {label}" for j in jobs for label in j.labels],
                jobs[0].timeout_s, jobs[0].env)]


def plan_learned_md(ctx: Context) -> tuple[dict, list[Job]]:
    """MD on each learned architecture (random weights, default size): copper supercells
    of growing size and alanine-dipeptide replicas; ASE and mlip as peers."""
    archs = learned_architectures(ctx.suite)
    opts = {"options": SMOKE_MODEL} if ctx.suite == "smoke" else {}
    cu = list(CU_SIZES[ctx.suite])
    if ctx.accelerator and ctx.suite == "standard":
        cu = [4, 8, 10, 16]  # 256 ... 16,384 atoms, in about as many compiles as on a CPU
    elif ctx.accelerator and ctx.suite == "full":
        cu += [16, 20]  # 16,384 and 32,000 atoms
    replicas = list(REPLICAS[ctx.suite])
    jobs = []
    for arch in archs:
        runs, labels = [], []
        for r in replicas:
            runs.append(dict(architecture=arch, system="ala2", size=0, replicas=r, **opts,
                             steps=chunk_steps(ctx, "learned", 22 * r, hi=500),
                             repeats=ctx.repeats, target_s=ctx.target_s))
            labels.append(f"ala2 x {r} replicas")
        for n in cu:
            runs.append(dict(architecture=arch, system="cu", size=n,
                             steps=chunk_steps(ctx, "learned", 4 * n**3, hi=500),
                             repeats=ctx.repeats, target_s=ctx.target_s))
            labels.append(f"Cu {4 * n**3} atoms")
        jobs.append(Job("learned_md", f"biojax-{arch}", "learned_biojax", runs, labels,
                        ctx.timeout_s))
    if ctx.suite == "smoke":
        jobs = _merged(jobs, "biojax")
    peer_system = ("cu", cu[0]) if cu else ("ala2", 0)
    peer_label = f"Cu {4 * cu[0] ** 3} atoms" if cu else "ala2"
    runs = [dict(architecture=a, system=peer_system[0], size=peer_system[1], **opts,
                 steps=5 if ctx.suite != "smoke" else 2, repeats=ctx.repeats,
                 target_s=ctx.target_s) for a in archs]
    jobs.append(Job("learned_md", "ase", "learned_ase", runs,
                    [f"{a} {peer_label}" for a in archs], ctx.timeout_s))
    if ctx.suite != "smoke":
        mlip_sizes = cu[:1] if ctx.suite == "quick" else (cu[:2] if cu else [4])
        mlip_models = ("mace",) if ctx.suite == "quick" else ("mace", "visnet")
        runs = [dict(model=m, size=n, repeats=ctx.repeats, target_s=ctx.target_s,
                     steps=chunk_steps(ctx, "learned", 4 * n**3, hi=500))
                for m in mlip_models for n in mlip_sizes]
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlip_peer.py")
        jobs.append(Job("learned_md", "mlip", "mlip", runs,
                        [f"{r['model']} Cu {4 * r['size'] ** 3} atoms" for r in runs],
                        ctx.timeout_s, python=ctx.mlip_python, script=script,
                        unavailable=None if ctx.mlip_python else
                        f"no mlip venv at {MLIP_PYTHON} (python3 -m venv DIR && "
                        "DIR/bin/pip install mlip; set BIOJAX_BENCH_MLIP_PYTHON)"))
    config = {"architectures": archs, "hyperparameters": opts.get("options", "each "
              "architecture's defaults"), "weights": "random, outputs x 0.01 eV", "cutoff_A": 5.0, "md": "Langevin 300 K, 1 fs",
              "copper": {"a_A": 3.61, "cells": cu, "atoms": [4 * n**3 for n in cu]},
              "alanine_dipeptide_replicas": replicas, "ase_peer_system": peer_label}
    return config, jobs


TRAIN_BATCHES = {"smoke": [1], "quick": [8], "standard": [1, 8, 32], "full": [1, 8, 32, 64]}


def plan_training(ctx: Context) -> tuple[dict, list[Job]]:
    """Training throughput per learned architecture and batch size on ala2_xtb.extxyz."""
    archs = learned_architectures(ctx.suite)
    opts = {"options": SMOKE_MODEL} if ctx.suite == "smoke" else {}
    batches = TRAIN_BATCHES[ctx.suite]
    frames = 8 if ctx.suite == "smoke" else (64 if ctx.suite == "quick" else 256)
    jobs = [Job("training", f"biojax-{a}", "train_biojax",
                [dict(architecture=a, batch_size=b, n_frames=max(frames, b), **opts,
                      repeats=ctx.repeats, target_s=ctx.target_s) for b in batches],
                [f"{a} batch {b}" for b in batches], ctx.timeout_s) for a in archs]
    if ctx.suite == "smoke":
        jobs = _merged(jobs, "biojax")
    config = {"data": "examples/data/ala2_xtb.extxyz (alanine dipeptide, 22 atoms, "
                      "GFN2-xTB)", "frames_per_pass": frames, "batch_sizes": batches,
              "architectures": archs, "loss": "biojax.train defaults (energy + forces), Adam"}
    return config, jobs


def plan_precision(ctx: Context) -> tuple[dict, list[Job]]:
    """float32 against float64 on one LJ size and one learned size (float64 is enabled
    in that child process only, through JAX_ENABLE_X64)."""
    cells = (4, 4, 4) if ctx.suite == "smoke" else (5, 5, 10)
    arch = learned_architectures()[0]
    system = ("ala2", 0) if ctx.suite == "smoke" else ("cu", 4)
    n_learned = 22 if system[0] == "ala2" else 256
    jobs = []
    for precision in ("float32", "float64"):
        env = {"JAX_ENABLE_X64": "1" if precision == "float64" else "0"}
        jobs.append(Job("precision", f"biojax-{precision}", "lj_biojax",
                        [dict(n_cells=list(cells), steps=chunk_steps(ctx, "lj", _n_lj(cells)),
                              repeats=ctx.repeats, target_s=ctx.target_s,
                              precision=precision)],
                        [f"LJ {_n_lj(cells)} atoms {precision}"], ctx.timeout_s, env=env))
        if ctx.suite == "smoke":
            continue  # LJ only: the learned case compiles for long
        jobs.append(Job("precision", f"biojax-{arch}-{precision}", "learned_biojax",
                        [dict(architecture=arch, system=system[0], size=system[1],
                              steps=chunk_steps(ctx, "learned", n_learned, hi=500),
                              repeats=ctx.repeats, target_s=ctx.target_s,
                              precision=precision)],
                        [f"{arch} {n_learned} atoms {precision}"], ctx.timeout_s, env=env))
    config = {"lj_atoms": _n_lj(cells), "learned": f"{arch} on {n_learned} atoms",
              "float64": "JAX_ENABLE_X64=1 in that child only"}
    return config, jobs


WORKLOADS: dict[str, Callable[[Context], tuple[dict, list[Job]]]] = {
    "lj": plan_lj, "learned_md": plan_learned_md, "training": plan_training,
    "precision": plan_precision}


def plan_custom(path: str, ctx: Context) -> tuple[dict, list[Job]]:
    """A user workload ``module:function`` run as ``function(suite=...)`` in a child."""
    return ({"import_path": path}, [Job(path, "custom", path, [dict(suite=ctx.suite)],
                                        [path], ctx.timeout_s)])


# ====================================================================== running
def _tail(text: str | bytes | None, lines: int = 15) -> list[str]:
    if text is None:
        return []
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text.strip().splitlines()[-lines:]


def _child_env(extra: dict | None = None) -> dict:
    """The environment of a biojax child: this biojax first on PYTHONPATH."""
    env = dict(os.environ, **(extra or {}))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_job(job: Job, cwd: str | None = None) -> list[dict]:
    """Run one job in a child process; one record per setting (status ok, failed,
    timeout or not installed, the result or the error's last lines)."""
    base = [{"workload": job.workload, "engine": job.engine, "case": job.case,
             "label": label, "params": params}
            for label, params in zip(job.labels, job.runs)]
    if job.unavailable:
        return [dict(b, status="not installed", error=job.unavailable) for b in base]
    spec = json.dumps({"case": job.case, "runs": job.runs})
    python = job.python or sys.executable
    cmd = [python, job.script, spec] if job.script else \
        [python, "-m", "biojax.bench.child", spec]
    env = _child_env(job.env) if not job.script else dict(os.environ, **job.env)
    t = time.perf_counter()
    load_before = load_average()
    timed_out, stdout, stderr, code = False, "", "", None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=job.timeout_s,
                              env=env, cwd=cwd)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        timed_out = True
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
        stderr = exc.stderr
    except OSError as exc:
        return [dict(b, status="failed", error=f"cannot start {python}: {exc}") for b in base]
    wall = time.perf_counter() - t
    got = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            try:
                rec = json.loads(line[7:])
                got[int(rec["index"])] = rec
            except (ValueError, KeyError):
                continue
    records = []
    for i, b in enumerate(base):
        rec = got.get(i)
        if rec is None:
            why = (f"timed out after {job.timeout_s:g} s" if timed_out else
                   f"the child process exited with status {code} before this setting "
                   "finished")
            records.append(dict(b, status="timeout" if timed_out else "failed",
                                error=why, stderr_tail=_tail(stderr)))
            continue
        out = dict(b, status=rec["status"])
        if rec["status"] == "ok":
            out["result"] = rec["result"]
        else:
            out["error"] = rec.get("error", "")
            if rec.get("traceback"):
                out["traceback"] = rec["traceback"]
        records.append(out)
    for r in records:
        r["job_wall_s"] = round(wall, 2)
        r["loadavg_before"], r["loadavg_after"] = load_before, load_average()
    return records


def machine_info(timeout_s: float = 300.0) -> dict:
    """Host facts, and JAX's devices from a child process (the parent never initialises a
    backend, so it never holds accelerator memory the cases need)."""
    info = {"host": host_info()}
    try:
        proc = subprocess.run([sys.executable, "-m", "biojax.bench.child", "--machine"],
                              capture_output=True, text=True, timeout=timeout_s,
                              env=_child_env())
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        info["jax"] = json.loads(lines[-1][7:])["result"] if lines else \
            {"error": "\n".join(_tail(proc.stderr))}
    except subprocess.TimeoutExpired:
        info["jax"] = {"error": f"jax device query timed out after {timeout_s:g} s"}
    return info


def make_context(suite: str, platform: str, timeout_s: float | None = None,
                 repeats: int | None = None) -> Context:
    """The Context for ``suite`` on ``platform`` (peers detected here)."""
    if suite not in SUITE_SETTINGS:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    r, target, chunk, timeout = SUITE_SETTINGS[suite]
    if repeats is not None and repeats < 3:
        raise ConfigError(f"--repeats must be >= 3 (median of repeated runs), got {repeats}")
    mlip = MLIP_PYTHON if os.path.isfile(MLIP_PYTHON) and os.access(MLIP_PYTHON, os.X_OK) \
        else None
    return Context(suite=suite, platform=platform, repeats=repeats or r, target_s=target,
                   chunk_s=chunk, timeout_s=timeout_s or timeout,
                   openmm=importlib.util.find_spec("openmm") is not None, mlip_python=mlip)


def parse_only(only: str | None) -> list[str]:
    """Workload names (registered, or import paths ``module:function``) from --only."""
    if not only:
        return list(WORKLOADS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    bad = [n for n in names if n not in WORKLOADS and ":" not in n]
    if bad or not names:
        raise ConfigError(f"--only: unknown workload(s) {', '.join(map(repr, bad)) or '(none)'}; "
                          f"registered: {', '.join(WORKLOADS)}, or an import path "
                          "'package.module:function'")
    return names


def _status(records: list[dict]) -> str:
    states = {r["status"] for r in records}
    if not records or states <= {"not installed"}:
        return "not installed" if records else "failed"
    if states <= {"ok", "not installed"}:
        return "ok"
    if "ok" in states:
        return "partial"
    return "failed"


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def run_suite(suite: str, out: str, only: str | None = None, timeout_s: float | None = None,
              repeats: int | None = None, log=None, write_reports: bool = True) -> dict:
    """Run ``suite`` (workloads ``only``: comma-separated names or import paths) and
    write ``out``/results.json (after every job), results.md and plots. Returns the
    results dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    names = parse_only(only)
    if suite not in SUITE_SETTINGS:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    log(f"bench: suite {suite}, workloads {', '.join(names)}; querying JAX devices")
    machine = machine_info()
    platform = machine.get("jax", {}).get("platform", "cpu")
    ctx = make_context(suite, platform, timeout_s, repeats)
    plans = {}
    for name in names:
        plans[name] = WORKLOADS[name](ctx) if name in WORKLOADS else plan_custom(name, ctx)
    results = {"schema": SCHEMA, "suite": suite, "workload_names": names,
               "command": " ".join(["biojax"] + sys.argv[1:])
               if sys.argv[1:2] == ["bench"] else None,
               "machine": machine, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "loadavg_before": load_average(), "status": "running",
               "settings": dataclasses.asdict(ctx), "workloads": {}}
    for name, (config, jobs) in plans.items():
        results["workloads"][name] = {"config": config, "status": "pending", "runs": [],
                                      "elapsed_s": 0.0}
    path = os.path.join(out, "results.json")

    def save():
        atomic_write_text(path, json.dumps(results, indent=1, allow_nan=True) + "\n")

    save()
    all_jobs = [j for _, jobs in plans.values() for j in jobs]
    weights = [len(j.runs) * (0 if j.unavailable else 1) + 0.2 for j in all_jobs]
    done_w = 0.0
    log(f"bench: {len(all_jobs)} jobs on {platform} "
        f"({machine.get('jax', {}).get('device_kind', '?')}); results in {path}")
    k = 0
    for name, (config, jobs) in plans.items():
        w = results["workloads"][name]
        w["status"] = "running"
        for job in jobs:
            k += 1
            t = time.perf_counter()
            records = run_job(job)
            w["runs"].extend(records)
            w["elapsed_s"] = round(w["elapsed_s"] + time.perf_counter() - t, 2)
            done_w += weights[k - 1]
            elapsed = time.perf_counter() - t0
            eta = elapsed / done_w * (sum(weights) - done_w) if done_w else 0.0
            states = ", ".join(f"{r['label']}: {r['status']}" for r in records)
            log(f"bench [{k}/{len(all_jobs)}] {name}/{job.engine} "
                f"{time.perf_counter() - t:.1f} s ({states}) | elapsed "
                f"{_fmt_s(elapsed)}, ETA ~{_fmt_s(eta)}")
            save()
        w["status"] = _status(w["runs"])
    results.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   elapsed_s=round(time.perf_counter() - t0, 1),
                   loadavg_after=load_average())
    save()
    if write_reports:
        from biojax.bench.report import write_reports as write

        write(results, out)
    log(f"bench: done in {_fmt_s(time.perf_counter() - t0)}; "
        + ", ".join(f"{n}: {w['status']}" for n, w in results["workloads"].items()))
    return results
