"""Compare liquid-water MD with a learned potential against the reference engine.

    python3 examples/water/analyze.py runs/water_nvt runs/water_npt --skip-ps 10 \
        --out examples/water/results

For each run folder (``biojax simulate`` output): how far it got (ps, blow-up or not),
the O–O g(r) from its trajectory frames after ``--skip-ps`` (every periodic image within
8 Å, as for the reference) and its RMSE against the reference engine's g(r) of the same
64-molecule box over 2–8 Å, the mean temperature, and for NPT runs the mean density
(g/cm³, block standard error) against the reference engine's NPT density. Writes
``water_md.json`` and ``rdf.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from generate_data import block_error, density, oo_rdf  # noqa: E402

REFERENCE = os.path.join(HERE, "..", "data", "water", "reference.json")


def read_observables(path):
    """Columns of observables.csv as float arrays."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]} if rows else {}


def analyze_run(folder, reference, skip_ps, window=(2.0, 8.0)):
    """g(r), density and temperature of one run folder (see module doc)."""
    import ase.io

    obs = read_observables(os.path.join(folder, "observables.csv"))
    summary = {}
    if os.path.exists(os.path.join(folder, "summary.json")):
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
    t_ps = obs["time_fs"] / 1000.0
    keep = t_ps >= skip_ps
    frames = []
    try:  # a run killed mid-write may leave a truncated last frame: keep the whole ones
        for a in ase.io.iread(os.path.join(folder, "trajectory.extxyz"), ":"):
            frames.append(a)
    except Exception as e:  # noqa: BLE001
        print(f"{folder}: trajectory read stopped after {len(frames)} frames ({e})")
    n_mol = len(frames[0]) // 3 if frames else 64
    # frame times from the observables' step spacing: frames are written every frame_every
    times = np.array([float(a.info.get("time_fs", np.nan)) / 1000.0 for a in frames])
    if not np.isfinite(times).all():
        times = np.linspace(0, t_ps[-1], len(frames))
    use = [a for a, t in zip(frames, times) if t >= skip_ps]
    log_text = ""
    if os.path.exists(os.path.join(folder, "run.log")):  # written by gpu_run.sh
        with open(os.path.join(folder, "run.log"), errors="replace") as f:
            log_text = f.read()
    blew = re.search(r"simulation blew up[^\n]*", log_text)
    if summary:
        status = "finished" if summary.get("completed") else "stopped early"
    elif blew:
        status = "blew up: " + blew.group(0)[:300]
    elif "time budget" in log_text:
        status = "stopped by the time budget (no blow-up)"
    else:
        status = "stopped before the end (a blow-up or a kill: see the run's log), or running"
    rates = re.findall(r"([0-9.]+)steps/s", log_text)
    out = {"folder": folder, "simulated_ps": float(t_ps[-1]), "frames_used": len(use),
           "skip_ps": skip_ps, "temperature_K": float(obs["temperature"][keep].mean()),
           "status": status, "blew_up": bool(blew),
           "steps_per_s": (summary.get("steps_per_s") if summary
                           else float(rates[-1]) if rates else None)}
    if use:
        r, g = oo_rdf([a.positions for a in use], [a.cell.array for a in use])
        ref_r = np.array(reference["rdf_OO"]["r_A"])
        ref_g = np.array(reference["rdf_OO"]["g_64"])
        sel = (ref_r >= window[0]) & (ref_r <= window[1])
        out["rdf_rmse_2_8"] = float(np.sqrt(np.mean((g[sel] - ref_g[sel]) ** 2)))
        out["rdf_first_peak"] = {"r_A": float(r[np.argmax(g)]), "g": float(g.max()),
                                 "ref_r_A": float(ref_r[np.argmax(ref_g)]),
                                 "ref_g": float(ref_g.max())}
        out["_rdf"] = (r, g)
    if "volume" in obs:
        vol = obs["volume"][keep]
        rho = density(n_mol, vol)
        ref_rho = reference["runs"]["w64_300K_npt"]["density_g_cm3"]
        out["density_g_cm3"] = float(rho.mean())
        out["density_stderr"] = block_error(rho)
        out["density_blocks"] = [float(b.mean()) for b in np.array_split(rho, 5) if len(b)]
        out["density_ref_g_cm3"] = ref_rho
        out["density_deviation_percent"] = float(100 * (rho.mean() / ref_rho - 1))
        if "pressure_bar" in obs:
            out["pressure_bar"] = float(obs["pressure_bar"][keep].mean())
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--skip-ps", type=float, default=10.0, help="equilibration to drop (ps)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    with open(REFERENCE) as f:
        reference = json.load(f)
    results = [analyze_run(r, reference, args.skip_ps) for r in args.runs]
    os.makedirs(args.out, exist_ok=True)
    curves = [(res["folder"], res.pop("_rdf")) for res in results if "_rdf" in res]
    with open(os.path.join(args.out, "water_md.json"), "w") as f:  # before the plot:
        json.dump(results, f, indent=1)                             # matplotlib is optional
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available: no rdf.png")
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(reference["rdf_OO"]["r_A"], reference["rdf_OO"]["g_64"], "k-", lw=2,
                label="OpenMM SPC/Fw (64 molecules)")
        rmse = {res["folder"]: res.get("rdf_rmse_2_8") for res in results}
        for folder, (r, g) in curves:
            ax.plot(r, g, "--", label=f"{os.path.basename(folder.rstrip('/'))} "
                    f"(RMSE {rmse[folder]:.3f})")
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("g_OO(r)")
        ax.set_xlim(2, 8)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "rdf.png"), dpi=120)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
