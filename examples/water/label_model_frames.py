"""Label a learned water model's own MD frames with the reference engine (one round of
"learn where the model goes", as DP-GEN and biojax learn do).

A model can be right on the engine's frames and still sample slightly different ones; in
water that moves the pressure by hundreds of bar and the NPT density by percent. This reads
the trajectories that ``biojax simulate`` wrote with the model, makes each molecule whole
(the trajectory is wrapped into the box), labels every frame with the same OpenMM SPC/Fw
system as ``generate_data.py`` (energy, forces, virial stress) and writes them as
xz-compressed extended XYZ, the format of ``examples/data/water/``:

    python3 examples/water/label_model_frames.py RUN_DIR [RUN_DIR ...] \\
        --out examples/data/water/water64_model_frames.extxyz.xz [--every 1]

Prints the engine's mean pressure on the frames next to the model's (observables), the
number that says whether the model's ensemble is the engine's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def whole_molecules(positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(3M, 3) O, H, H positions (Å) with each H moved to the periodic image nearest its
    O (orthorhombic or triclinic ``cell``, rows are box vectors)."""
    pos = positions.reshape(-1, 3, 3).copy()
    inv = np.linalg.inv(cell)
    for h in (1, 2):
        d = pos[:, h] - pos[:, 0]
        frac = d @ inv
        pos[:, h] = pos[:, 0] + (frac - np.round(frac)) @ cell
    return pos.reshape(-1, 3)


def main(argv=None) -> int:
    import ase.io
    import generate_data as gen

    from biojax.core.units import BAR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="biojax simulate output directories")
    p.add_argument("--out", required=True, help="xz-compressed extxyz to write")
    p.add_argument("--every", type=int, default=1, help="label every N-th frame")
    p.add_argument("--skip-ps", type=float, default=0.0,
                   help="leave out frames before this time (ps) of each run")
    args = p.parse_args(argv)
    frames = []
    for run in args.runs:
        path = os.path.join(run, "trajectory.extxyz")
        if not os.path.exists(path):
            sys.exit(f"label_model_frames: no trajectory in {run}")
        got = [a for a in ase.io.read(path, ":")
               if float(a.info.get("time_fs", 0.0)) >= 1000.0 * args.skip_ps]
        frames += [(run, a) for a in got[::args.every]]
        print(f"{run}: {len(got[::args.every])} frames", flush=True)
    if not frames:
        sys.exit("label_model_frames: no frames")
    n_mol = len(frames[0][1]) // 3
    if any((a.get_chemical_symbols()[0::3] != ["O"] * n_mol) for _, a in frames):
        sys.exit("label_model_frames: atoms must be ordered O, H, H per molecule")
    system, _, _ = gen.build(n_mol, 0)
    labeller = gen.Labeller(system)
    out = {"positions": [], "boxes": [], "energy": [], "forces": [], "stress": []}
    t0 = time.time()
    for k, (_, a) in enumerate(frames):
        cell = np.asarray(a.cell)
        pos = whole_molecules(a.positions, cell)
        e, f, s = labeller(pos / 10.0, cell / 10.0)
        for key, v in zip(out, (pos, cell, e, f, s)):
            out[key].append(v)
        if (k + 1) % max(1, len(frames) // 10) == 0:
            print(f"labelled {k + 1}/{len(frames)} ({(time.time() - t0) / (k + 1):.2f} s/frame)",
                  flush=True)
    run = {key: np.array(v) for key, v in out.items()}
    run["label_index"] = np.arange(len(frames))
    note = "OpenMM SPC/Fw labels of a learned model's MD frames (label_model_frames.py)"
    labelled = gen.make_frames(run, n_mol, 300.0, note)
    for (src, a), b in zip(frames, labelled):
        b.info["source_run"] = os.path.basename(os.path.normpath(src))
    gen.write_frames(os.path.abspath(args.out), labelled)
    vol = np.abs(np.linalg.det(run["boxes"]))
    pressure = -np.trace(run["stress"], axis1=1, axis2=2) / 3 / BAR
    print(f"wrote {len(labelled)} frames to {args.out}; engine virial pressure on them "
          f"{pressure.mean():+.0f} ± {pressure.std() / np.sqrt(len(pressure)):.0f} bar "
          f"(without the kinetic term), density {gen.density(n_mol, vol).mean():.4f} g/cm3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
