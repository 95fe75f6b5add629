"""Where training time goes on a periodic water box (192 atoms) against rMD17 ethanol
(9 atoms), same model, same batch size, same process.

    python benchmarks/bench_water_train.py            # writes results/water_train.{json,md}

For each data set: the host-side neighbor search (once per data set, ms/frame), the
batch assembly (every epoch, ms/batch), the padding the bucket ladder adds (atoms, edges)
and the jitted training step (energy + forces loss, ms/batch, median of repeats after
the compiling call); rates in configurations, atoms and edges per second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from biojax.data.graphs import GraphDataset  # noqa: E402
from biojax.data.io import elements_of, read_dataset  # noqa: E402
from biojax.nn.models import init_potential  # noqa: E402
from biojax.train import loop  # noqa: E402
from biojax.train.losses import combine, energy, forces  # noqa: E402
from machine import cpu_model  # noqa: E402

DATA = {"ethanol": os.path.join(ROOT, "examples", "data", "rmd17_ethanol", "train.xyz"),
        "water64": os.path.join(ROOT, "examples", "data", "water", "water64.extxyz.xz")}
ARCHS = {"painn-64x3": {"name": "painn", "features": 64, "n_interactions": 3, "n_basis": 20},
         "painn-32x2": {"name": "painn", "features": 32, "n_interactions": 2, "n_basis": 16}}


def measure(data: str, arch: dict, cutoff: float, batch_size: int, n_frames: int,
            repeats: int) -> dict:
    structures = read_dataset(DATA[data], index=f":{n_frames}")
    elements = elements_of(structures)
    pot = init_potential(arch, elements, cutoff, [0.0] * len(elements),
                         key=jax.random.PRNGKey(0))
    t = time.perf_counter()
    ds = GraphDataset(structures, cutoff, pot.species_of, pot.reference_energy)
    t_edges = (time.perf_counter() - t) / len(ds)
    t = time.perf_counter()
    batches = list(ds.batches(batch_size, drop_last=True))
    t_batch = (time.perf_counter() - t) / len(batches)
    real_atoms = np.mean([b.node_mask.sum() for b in batches])
    real_edges = np.mean([b.edge_mask.sum() for b in batches])
    tx = optax.adam(1e-3)
    step = loop.make_train_step(pot, tx, combine(energy(1.0), forces(100.0)), 0.99)
    state = loop.init_train_state(pot, tx)
    state, value = step(state, batches[0], np.float32(1e-3))
    jax.block_until_ready(value)
    times = []
    for _ in range(repeats):
        for b in batches:
            t = time.perf_counter()
            state, value = step(state, b, np.float32(1e-3))
            jax.block_until_ready(value)
            times.append(time.perf_counter() - t)
    t_step = statistics.median(times)
    per_batch = t_step + t_batch
    return {"data": data, "architecture": arch, "cutoff": cutoff, "batch_size": batch_size,
            "atoms_per_frame": structures[0].n_atoms,
            "edges_per_atom": float(real_edges / real_atoms),
            "padded_atoms": int(batches[0].positions.shape[0]),
            "atom_padding": float(batches[0].positions.shape[0] / real_atoms - 1),
            "edge_padding": float(np.mean([b.senders.shape[0] for b in batches]) / real_edges - 1),
            "neighbor_search_ms_per_frame": 1e3 * t_edges,
            "batch_assembly_ms": 1e3 * t_batch, "train_step_ms": 1e3 * t_step,
            "host_fraction_per_epoch": t_batch / per_batch,
            "configurations_per_s": batch_size / per_batch,
            "atoms_per_s": batch_size * structures[0].n_atoms / per_batch,
            "edges_per_s": float(real_edges / per_batch),
            "loadavg": os.getloadavg()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    rows = []
    for arch_name, cutoff in (("painn-64x3", 5.0), ("painn-32x2", 4.5), ("painn-32x2", 4.0)):
        for data, n in (("ethanol", 200), ("water64", 24)):
            r = measure(data, ARCHS[arch_name], cutoff, 4, n, a.repeats)
            r["arch_name"] = arch_name
            rows.append(r)
            print(f"{arch_name} {data}: {r['configurations_per_s']:.1f} conf/s, "
                  f"{r['atoms_per_s']:.0f} atoms/s, {r['edges_per_s']:.0f} edges/s, step "
                  f"{r['train_step_ms']:.1f} ms, batch {r['batch_assembly_ms']:.2f} ms, "
                  f"search {r['neighbor_search_ms_per_frame']:.1f} ms/frame "
                  f"(load {r['loadavg'][0]:.1f})", flush=True)
    out = {"machine": f"{cpu_model()}, {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "water_train.json"), "w") as f:
        json.dump(out, f, indent=1)
    lines = [f"# Training throughput: periodic water vs ethanol ({out['machine']})", "",
             f"{out['date']}; batch 4, energy + forces loss, median step after compile; "
             "load average (1 min) at the end of each row.", "",
             "| model | data | atoms | edges/atom | padding atoms/edges | search ms/frame "
             "(once) | batch ms | step ms | conf/s | atoms/s | edges/s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['arch_name']} ({r['cutoff']} Å) | {r['data']} | {r['atoms_per_frame']} | "
            f"{r['edges_per_atom']:.1f} | {100 * r['atom_padding']:.0f}% / "
            f"{100 * r['edge_padding']:.0f}% | {r['neighbor_search_ms_per_frame']:.1f} | "
            f"{r['batch_assembly_ms']:.2f} | {r['train_step_ms']:.1f} | "
            f"{r['configurations_per_s']:.1f} | {r['atoms_per_s']:.0f} | "
            f"{r['edges_per_s']:.0f} | {r['loadavg'][0]:.1f} |")
    with open(os.path.join(a.out, "water_train.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
