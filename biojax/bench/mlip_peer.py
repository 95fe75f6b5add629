"""Peer case for ``biojax bench``: InstaDeep's mlip (PyPI ``mlip``) running NVT-Langevin MD
through its own jax-md engine on copper fcc supercells, with randomly initialised models.

Run by the suite with the interpreter of a separate venv that holds mlip (it pins its own
jax): ``VENV/bin/python mlip_peer.py SPEC_JSON``; it imports neither biojax nor anything
outside that venv, and prints ``RESULT {json}`` per setting like ``biojax.bench.child``.

Models ("mace", "visnet", "nequip") are sized near biojax's default PaiNN/SchNet
(64 features, 3 interactions; see MODELS) and carry their parameter count so that "a
model of the same cost" can be checked in the results. Timing: an episode of ``steps``
steps is one call; the first episode compiles; after a calibration episode, ``repeats``
samples of m episodes each (mlip's own episode timer, which waits for the neighbor-list
overflow flag, i.e. for the device).
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
import traceback

CU_A = 3.61
CUTOFF = 5.0
MODELS = {  # small configurations, comparable in size to biojax's defaults
    "mace": ("Mace", {"num_channels": 32, "l_max": 2, "num_layers": 2, "correlation": 2}),
    "visnet": ("Visnet", {"num_channels": 64, "num_layers": 3, "l_max": 1}),
    "nequip": ("Nequip", {"num_layers": 2, "l_max": 1,
                          "target_irreps": "32x0e + 32x0o + 16x1o + 16x1e"}),
}


class _Enough(Exception):
    pass


def case(model: str, size: int, steps: int = 10, repeats: int = 3,
         target_s: float = 0.0) -> dict:
    import jax
    import numpy as np
    from ase.build import bulk

    import mlip
    import mlip.models as models
    from mlip.data.dataset_info import DatasetInfo
    from mlip.models import ForceField
    from mlip.simulation.configs.jax_md_config import JaxMDSimulationConfig
    from mlip.simulation.jax_md.jax_md_simulation_engine import JaxMDSimulationEngine

    cls_name, hyper = MODELS[model]
    cls = getattr(models, cls_name)
    atoms = bulk("Cu", "fcc", a=CU_A, cubic=True).repeat((size,) * 3)
    info = DatasetInfo(atomic_energies_map={29: 0.0}, graph_cutoff_angstrom=CUTOFF,
                       avg_num_neighbors=42.0)
    net = cls(cls.Config(**hyper), info)
    ff = ForceField.from_mlip_network(net, seed=0)
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(ff.params)))
    episodes = 100000
    cfg = JaxMDSimulationConfig(num_steps=steps * episodes, num_episodes=episodes,
                                timestep_fs=1.0, temperature_kelvin=300.0)
    engine = JaxMDSimulationEngine(atoms, ff, cfg)
    marks: list[float] = []
    info_: dict = {"start": time.perf_counter()}

    def logger(state):
        marks.append(time.perf_counter())
        if len(marks) == 2:
            info_["m"] = max(1, math.ceil(target_s / max(marks[1] - marks[0], 1e-6)))
        if "m" in info_ and len(marks) >= 2 + repeats * info_["m"]:
            raise _Enough

    engine.attach_logger(logger)
    try:
        engine.run()
    except _Enough:
        pass
    m = info_["m"]
    samples = [marks[1 + (k + 1) * m] - marks[1 + k * m] for k in range(repeats)]
    n = len(atoms)
    rates = sorted(steps * m / s for s in samples)
    med = statistics.median(rates)
    stats = jax.devices()[0].memory_stats() or {}
    return {"model": model, "hyperparameters": hyper, "parameters": n_params,
            "atoms": n, "replicas": 1, "steps_per_call": steps, "calls_per_sample": m,
            "steps_per_s": med, "atom_steps_per_s": med * n,
            "atom_steps_per_s_min": rates[0] * n, "atom_steps_per_s_max": rates[-1] * n,
            "spread": (rates[-1] - rates[0]) / med,
            "sample_seconds": [round(s, 6) for s in samples],
            "ns_per_day": med * 1.0 * 86400 / 1e6, "timestep_fs": 1.0,
            "first_call_s": marks[0] - info_["start"],
            "compile_s": max(marks[0] - info_["start"] - statistics.median(samples) / m, 0),
            "repeats": repeats, "mlip_version": getattr(mlip, "__version__", "?"),
            "jax": jax.__version__, "platform": jax.default_backend(),
            "peak_device_mb": stats["peak_bytes_in_use"] / 2**20
            if "peak_bytes_in_use" in stats else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    for i, kwargs in enumerate(spec["runs"]):
        try:
            line = {"index": i, "status": "ok", "result": case(**kwargs)}
        except Exception as exc:  # noqa: BLE001 - reported, the next setting goes on
            line = {"index": i, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc().strip().splitlines()[-12:]}
        print("RESULT " + json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
