"""apax's ensemble MD on alanine dipeptide, the peer of bench_ensemble.py (run by the
python of a virtual environment with apax installed: apax pins its own jax).

An apax GMNN model (apax's defaults: nn [256, 256], r_max 5 Å) with a full ensemble of K
members (``ensemble: {kind: full, n_members: K}``; K = 1: a single model) is trained for
one epoch on 40 frames of examples/data/ala2_xtb.extxyz (the weights only set the cost,
not a result), then ``apax.md.run_md`` runs NVT (Nosé–Hoover chain, 0.5 fs, 300 K) with the
ensemble's uncertainty recorded every 10 steps.

``run_md`` compiles its MD program (``jax.jit`` of its chunk function, inside the call)
on every call, and that compilation (seconds) is far longer than a few hundred steps, so
differencing two calls of different lengths measured mostly compile-time noise (session
6: 4e11 steps/s, the long call finishing faster than the short one). JAX's persistent
cache cannot help: apax's chunk writes frames through ``io_callback``, and programs with
host callbacks are never cached. So the ``jax.jit`` that ``apax.md.simulate`` uses is
wrapped (``_TimedJit``): it lowers and compiles ahead of time on the first call of each
argument shape, timing that, and then calls the compiled program. The steady speed is
(n_long − n_short) / ((t_long − c_long) − (t_short − c_short)), t the call's wall time
and c its compile time, after an untimed warm-up call (the first call also pays one-time
costs outside the chunk: 8 s more than a later one in a check on 2026-12-01). A
difference under 20 % of the long call's, or negative, is reported as invalid instead of
a speed.
"""

from __future__ import annotations

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "examples", "data", "ala2_xtb.extxyz")
START = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")


class _TimedJit:
    """The ``jax`` module with a ``jit`` that compiles ahead of time on the first call of
    each argument shape and adds the lowering + compile seconds to ``compile_s``."""

    def __init__(self, jax_module):
        self._jax, self.compile_s = jax_module, 0.0

    def __getattr__(self, name):
        return getattr(self._jax, name)

    def jit(self, fn=None, **kwargs):
        if fn is None:
            return lambda f: self.jit(f, **kwargs)
        jitted, compiled, jax = self._jax.jit(fn, **kwargs), {}, self._jax

        def call(*args):
            key = str(jax.tree_util.tree_map(
                lambda x: (getattr(x, "shape", None), str(getattr(x, "dtype", type(x)))),
                args))
            if key not in compiled:
                t = time.perf_counter()
                compiled[key] = jitted.lower(*args).compile()
                self.compile_s += time.perf_counter() - t
            return compiled[key](*args)

        return call


def case_apax(members: int, steps: int, kind: str = "full", work: str | None = None
              ) -> dict:
    import tempfile

    import yaml
    from apax.md import run_md
    from apax.train.run import run as train

    import apax

    work = work or tempfile.mkdtemp(prefix=f"apax_ens{members}_")
    import apax.md.simulate as apax_simulate

    timer = _TimedJit(apax_simulate.jax)
    apax_simulate.jax = timer  # only apax's MD module sees the timed jit
    model = {"name": "gmnn"}
    if members > 1:
        model["ensemble"] = {"kind": kind, "n_members": members}
    config = {"n_epochs": 1, "seed": 1,
              "data": {"directory": work, "experiment": "model", "data_path": DATA,
                       "n_train": 40, "n_valid": 8, "batch_size": 8,
                       "valid_batch_size": 8},
              "model": model,
              "loss": [{"name": "energy"}, {"name": "forces", "weight": 4.0}],
              "metrics": [{"name": "energy", "reductions": ["mae"]}]}
    cfg_path = os.path.join(work, "config.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(config, f)
    t = time.perf_counter()
    train(cfg_path)
    train_s = time.perf_counter() - t
    model_cfg = os.path.join(work, "model", "config.yaml")
    timings, compiles = {}, {}
    n_short, n_long = steps, 8 * steps
    for n in ("warm-up", n_short, n_long):  # the first call also pays one-time costs
        length = n_short if n == "warm-up" else n  # outside the chunk (eager compiles)
        md = {"ensemble": {"name": "nvt", "dt": 0.5,
                           "temperature_schedule": {"name": "constant", "T0": 300}},
              "duration": length * 0.5, "n_inner": min(100, n_short), "sampling_rate": 10,
              "buffer_size": 100, "sim_dir": os.path.join(work, f"md_{n}"),
              "initial_structure": START, "restart": False, "disable_pbar": True}
        md_path = os.path.join(work, f"md_{n}.yaml")
        with open(md_path, "w") as f:
            yaml.safe_dump(md, f)
        timer.compile_s = 0.0
        t = time.perf_counter()
        run_md(model_cfg, md_path)
        timings[n] = time.perf_counter() - t
        compiles[n] = timer.compile_s
    run_short, run_long = (timings[n] - compiles[n] for n in (n_short, n_long))
    diff = run_long - run_short
    valid = diff > 0.2 * run_long
    sps = (n_long - n_short) / diff if valid else None
    return {"engine": "apax", "apax_version": apax.__version__, "model": "gmnn",
            "kind": kind if members > 1 else "single", "members": members,
            "uncertainty": members > 1, "steps": n_long - n_short, "steps_per_s": sps,
            "ns_per_day": sps * 0.5 * 86400 / 1e6 if valid else None,
            "call_s": {str(k): v for k, v in timings.items()},
            "compile_s": {str(k): v for k, v in compiles.items()},
            "invalid": None if valid else (
                f"{n_long} steps took {run_long:.2f} s, {n_short} steps {run_short:.2f} s "
                "without compilation"),
            "train_s": train_s}
