"""apax's ensemble MD on alanine dipeptide, the peer of bench_ensemble.py (run by the
python of a virtual environment with apax installed: apax pins its own jax).

An apax GMNN model (apax's defaults: nn [256, 256], r_max 5 Å) with a full ensemble of K
members (``ensemble: {kind: full, n_members: K}``; K = 1: a single model) is trained for
one epoch on 40 frames of examples/data/ala2_xtb.extxyz (the weights only set the cost,
not a result), then ``apax.md.run_md`` runs NVT (Nosé–Hoover chain, 0.5 fs, 300 K) with the
ensemble's uncertainty recorded every 10 steps, twice (``n_short`` and ``n_long`` steps);
the steady speed is (n_long − n_short) / (t_long − t_short), so compilation cancels.
"""

from __future__ import annotations

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "examples", "data", "ala2_xtb.extxyz")
START = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")


def case_apax(members: int, steps: int, kind: str = "full", work: str | None = None
              ) -> dict:
    import tempfile

    import yaml
    from apax.md import run_md
    from apax.train.run import run as train

    import apax

    work = work or tempfile.mkdtemp(prefix=f"apax_ens{members}_")
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
    timings = {}
    n_short, n_long = steps, 3 * steps
    for n in (n_short, n_long):
        md = {"ensemble": {"name": "nvt", "dt": 0.5,
                           "temperature_schedule": {"name": "constant", "T0": 300}},
              "duration": n * 0.5, "n_inner": min(100, n), "sampling_rate": 10,
              "buffer_size": 100, "sim_dir": os.path.join(work, f"md_{n}"),
              "initial_structure": START, "restart": False, "disable_pbar": True}
        md_path = os.path.join(work, f"md_{n}.yaml")
        with open(md_path, "w") as f:
            yaml.safe_dump(md, f)
        t = time.perf_counter()
        run_md(model_cfg, md_path)
        timings[n] = time.perf_counter() - t
    sps = (n_long - n_short) / max(timings[n_long] - timings[n_short], 1e-9)
    return {"engine": "apax", "apax_version": apax.__version__, "model": "gmnn",
            "kind": kind if members > 1 else "single", "members": members,
            "uncertainty": members > 1, "steps": n_long - n_short, "steps_per_s": sps,
            "ns_per_day": sps * 0.5 * 86400 / 1e6, "run_s": timings,
            "train_s": train_s}
