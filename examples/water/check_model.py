"""Check a learned water model against the reference engine where MD needs it.

    python3 examples/water/check_model.py examples/water/model --out examples/water/results

1. Thermal 300 K frames (every 5th of the 500 NPT frames of ``water64.extxyz.xz``): force
   MAE (meV/Å) and the mean virial-pressure error (bar) — a systematic pressure error is
   what moves the NPT density (water: 1000 bar ≈ 4.5 % in density).
2. One O–H bond of one molecule stretched from 0.80 to 1.60 Å (the training data reach
   1.40 Å) in a 300 K frame: the model's energy change against OpenMM's (same SPC/Fw
   system as ``generate_data.py``); a model that turns over before ~1.5 Å lets bonds break.

Writes ``model_check.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DATA = os.path.join(HERE, "..", "data", "water", "water64.extxyz.xz")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    import ase.io

    from biojax.calculator import BiojaxCalculator
    from biojax.core.units import BAR  # 1 bar in eV/Å³
    from biojax.nn.io import load_potential
    from generate_data import Labeller, build

    calc = BiojaxCalculator(load_potential(args.model))
    frames = ase.io.read(DATA, ":500:5")
    df, dp = [], []
    for a in frames:
        ref_f, ref_s = a.get_forces(), a.get_stress()
        b = a.copy()
        b.calc = calc
        df.append(np.abs(b.get_forces() - ref_f).ravel())
        dp.append(-(b.get_stress()[:3] - ref_s[:3]).mean() / BAR)
    out = {"model": args.model, "thermal_frames": len(frames),
           "forces_mae_meV_A": float(1000 * np.concatenate(df).mean()),
           "pressure_error_bar_mean": float(np.mean(dp)),
           "pressure_error_bar_std": float(np.std(dp))}
    # O–H stretch scan against the engine
    a = frames[len(frames) // 2]
    system, _, _ = build(len(a) // 3, 0)
    lab = Labeller(system)
    mol = 10
    o, h = 3 * mol, 3 * mol + 1
    u = a.get_distance(o, h, mic=True, vector=True)
    u = u / np.linalg.norm(u)
    rs = np.round(np.arange(0.80, 1.6001, 0.05), 3)
    e_model, e_ref = [], []
    for r in rs:
        b = a.copy()
        b.positions[h] = b.positions[o] + r * u
        e_ref.append(lab.energy(b.positions / 10.0, b.cell.array / 10.0))
        b.calc = calc
        e_model.append(b.get_potential_energy())
    i0 = int(np.argmin(np.abs(rs - 1.0)))
    e_model = np.array(e_model) - e_model[i0]
    e_ref = np.array(e_ref) - e_ref[i0]
    out["oh_scan"] = {"r_A": rs.tolist(), "model_eV": np.round(e_model, 4).tolist(),
                      "engine_eV": np.round(e_ref, 4).tolist(),
                      "model_rises_up_to_A": float(rs[i0 + int(np.argmax(e_model[i0:]))]),
                      "model_barrier_eV": float(e_model[i0:].max())}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "model_check.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
