"""Worker of tests/test_parallel.py, run in a fresh process because XLA_FLAGS (forced
host devices) and jax.distributed must be set before JAX starts.

    python tests/parallel_worker.py CASE OUT.json [--devices D ...] [--dist ADDR N ID]

CASE "md": 8 replicas of a 13-atom argon cluster, Langevin NVT, 300 steps, once per
``--devices`` value, plus (single process) a run on devices[-1] killed after one chunk
and resumed on devices[0]; "train": one data-parallel epoch of a small PaiNN on ethanol
per ``--devices`` value. Results (final positions, energies, losses, parameters) go to
OUT.json for the test to compare.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRAIN_TOML = """
[data]
train_file = "{data}/train.xyz"
isolated_atoms = "{data}/isolated_atoms.xyz"
n_train = 16
n_valid = 8
seed = 1

[model]
name = "schnet"
cutoff = 4.0
features = 8
n_interactions = 1

[training]
epochs = 1
batch_size = 8
learning_rate = 3e-3
warmup_epochs = 0.0
forces_weight = 10.0
seed = 2
devices = {devices}
"""


def devices_value(text):
    return text if text == "all" else int(text)


def md(args, result):
    import jax
    import numpy as np
    from ase.cluster import Icosahedron

    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn.classical import lennard_jones

    atoms = Icosahedron("Ar", 2, latticeconstant=5.3)
    pot = lennard_jones([18], 3.405, 0.0103, cutoff=8.5)

    def config(devices):
        return default_config(ensemble="nvt-langevin", timestep_fs=5.0, temperature_K=60.0,
                              steps=300, chunk_steps=100, observe_every=10,
                              frame_every=100, replicas=8, devices=devices, seed=3,
                              plots=False)

    def read(sim, summary):
        return {"position": np.asarray(sim.final_state.position).tolist(),
                "devices": summary["devices"], "processes": summary["processes"]}

    for d in args.devices:
        sim = Simulation(atoms, pot, config(d))
        out = os.path.join(args.out_dir, str(d)) if args.out_dir else None
        summary = sim.run(out)
        result[f"md_{d}"] = read(sim, summary)
        if out and jax.process_index() == 0:
            obs = os.path.join(out, "replica_007", "observables.csv")
            result[f"md_{d}"]["last_row"] = (open(obs).read().strip().splitlines()[-1]
                                             if os.path.exists(obs) else None)
    if args.resume_dir:  # killed after one chunk on the most devices, resumed on the fewest
        first, last = args.devices[0], args.devices[-1]
        Simulation(atoms, pot, config(last)).run(args.resume_dir, max_chunks=1)
        sim = Simulation(atoms, pot, config(first))
        summary = sim.run(args.resume_dir, resume=True)
        result["md_resumed"] = read(sim, summary)


def train(args, result):
    import jax
    import numpy as np

    from biojax.train.config import load_train_config
    from biojax.train.loop import train_and_evaluate

    data = os.path.join(ROOT, "examples", "data", "rmd17_ethanol")
    for d in args.devices:
        path = os.path.join(args.work, f"train_{d}_p{jax.process_index()}.toml")
        with open(path, "w") as f:
            f.write(TRAIN_TOML.format(data=data, devices=json.dumps(d)))
        out = os.path.join(args.work, f"train_{d}")
        logs = []
        metrics = train_and_evaluate(load_train_config(path), out, log=logs.append)
        from biojax.nn.io import load_potential

        params = None  # the files are process 0's: only it writes
        if jax.process_index() == 0:
            params = [np.asarray(x).ravel().tolist() for x in
                      jax.tree_util.tree_leaves(load_potential(os.path.join(out, "model")).params)]
        log_file = os.path.join(out, "metrics.jsonl")
        result[f"train_{d}"] = {
            "valid": metrics["valid"], "params": params,
            "log": open(log_file).read() if jax.process_index() == 0 else None}


def errors(args, result):
    """The ConfigError messages of settings that cannot be split over the devices."""
    from ase.cluster import Icosahedron

    from biojax.core.errors import ConfigError
    from biojax.md.config import default_config
    from biojax.md.simulation import Simulation
    from biojax.nn.classical import lennard_jones
    from biojax.train.config import load_train_config
    from biojax.train.loop import train_and_evaluate

    atoms = Icosahedron("Ar", 2, latticeconstant=5.3)
    pot = lennard_jones([18], 3.405, 0.0103, cutoff=8.5)
    cases = {"md_all_6": lambda: Simulation(atoms, pot, default_config(
                 replicas=6, devices="all", steps=100)),
             "md_8_of_4": lambda: Simulation(atoms, pot, default_config(
                 replicas=8, devices=8, steps=100))}

    def train_6():
        path = os.path.join(args.work, "bad.toml")
        data = os.path.join(ROOT, "examples", "data", "rmd17_ethanol")
        with open(path, "w") as f:
            f.write(TRAIN_TOML.format(data=data, devices=4).replace("batch_size = 8",
                                                                     "batch_size = 6"))
        train_and_evaluate(load_train_config(path), os.path.join(args.work, "bad"))

    cases["train_batch_6"] = train_6
    for name, fn in cases.items():
        try:
            fn()
            result[name] = None
        except ConfigError as exc:
            result[name] = str(exc)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=["md", "train", "both", "errors", "all"])
    p.add_argument("out")
    p.add_argument("--devices", nargs="+", type=devices_value, default=[1])
    p.add_argument("--dist", nargs=3, default=None)
    p.add_argument("--out-dir", default=None)
    p.add_argument("--resume-dir", default=None)
    p.add_argument("--work", default=None)
    args = p.parse_args()
    if args.dist:
        from biojax import parallel

        parallel.initialize(args.dist[0], int(args.dist[1]), int(args.dist[2]), timeout_s=60)
    import jax

    result = {"process": jax.process_index(), "n_devices": len(jax.devices()),
              "local_devices": len(jax.local_devices())}
    if args.case in ("md", "both", "all"):
        md(args, result)
    if args.case in ("train", "both", "all"):
        train(args, result)
    if args.case in ("errors", "all"):
        errors(args, result)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
