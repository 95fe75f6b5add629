"""Back-map CG alanine dipeptide to atoms and check the structures against the FG model.

    python examples/cg_ala2/backmap/run.py [--out runs/cg_ala2_backmap] [--frames 200]

1. FG reference: Langevin MD of the atomistic molecule with the FG model
   (examples/models/ala2_painn, PaiNN on GFN2-xTB) at 300 K, 8 replicas — the model's own
   thermal distribution of bond lengths, bond angles and potential energies;
2. CG frames: (a) the CGnet reference frames (mapped all-atom MD in water,
   examples/data/cgnet_ala2) and (b) CG MD of the force-matched CG model
   (examples/models/cg_ala2_fm) at 300 K;
3. ``biojax backmap`` of each onto examples/md/alanine_dipeptide.extxyz (beads = atoms
   4, 6, 8, 14, 16: C(ACE), N, CA, C, N(NME));
4. the same restrained minimisation applied to every 4th FG MD frame (each
   restrained to its own backbone atoms), so that back-mapped energies are compared with
   minimised thermal structures, like with like;
5. numbers into results.json (next to this file) and a figure, backmap.png.

Every step is skipped when its output exists (delete the folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TEMPLATE = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")
FG_MODEL = os.path.join(ROOT, "examples", "models", "ala2_painn")
CG_MODEL = os.path.join(ROOT, "examples", "models", "cg_ala2_fm")
CGNET = os.path.join(ROOT, "examples", "data", "cgnet_ala2", "ala2_coordinates.npy")
BEADS = [4, 6, 8, 14, 16]
PHI_PSI_ATOMS = np.array([[4, 6, 8, 14], [6, 8, 14, 16]])


def log(msg):
    print(msg, flush=True)


def fg_md(out, replicas, steps):
    """Langevin MD at 300 K of the FG model; returns frames (F, 22, 3) after 1 ps."""
    import ase.io

    from biojax.md import Simulation, output
    from biojax.md.config import SimulateConfig
    from biojax.nn.io import load_potential

    folder = os.path.join(out, "fg_md")
    frame_every = 50
    if not os.path.isfile(os.path.join(folder, "done")):
        cfg = SimulateConfig(ensemble="nvt-langevin", timestep_fs=0.5, temperature_K=300.0,
                             friction_per_ps=1.0, steps=steps, replicas=replicas,
                             minimize=True, chunk_steps=2000, observe_every=50,
                             frame_every=frame_every, plots=False, seed=1)
        sim = Simulation(ase.io.read(TEMPLATE), load_potential(FG_MODEL), cfg, progress=True)
        s = sim.run(folder, overwrite=True)
        log(f"FG MD: {replicas} × {steps} steps in {s['wall_s']:.0f} s")
        open(os.path.join(folder, "done"), "w").close()
    skip = int(1000.0 / (0.5 * frame_every))  # the first ps
    frames = []
    for r in range(replicas):
        traj = ase.io.read(os.path.join(output.replica_dir(folder, r, replicas),
                                        "trajectory.extxyz"), ":")
        frames.append(np.stack([a.positions for a in traj[1 + skip:]]))
    return np.concatenate(frames)


def cg_md(out, replicas, steps):
    """CG MD of the force-matched model from CGnet frames; returns bead frames (F, 5, 3)."""
    import ase.io

    from biojax.cg.mapping import to_atoms
    from biojax.cg.potential import load_cg_potential
    from biojax.md import output
    from biojax.md.config import SimulateConfig

    folder = os.path.join(out, "cg_md")
    cg = load_cg_potential(CG_MODEL)
    if not os.path.isfile(os.path.join(folder, "done")):
        ref = np.load(CGNET)
        rng = np.random.default_rng(0)
        starts = [to_atoms(cg.mapping, ref[k]) for k in rng.choice(len(ref), replicas)]
        cfg = SimulateConfig(ensemble="nvt-langevin", timestep_fs=2.0, temperature_K=300.0,
                             friction_per_ps=1.0, steps=steps, replicas=replicas,
                             minimize=False, chunk_steps=5000, observe_every=500,
                             frame_every=500, plots=False, seed=2)
        s = cg.simulation(starts, cfg, progress=True).run(folder, overwrite=True)
        log(f"CG MD: {replicas} × {steps} steps in {s['wall_s']:.0f} s")
        open(os.path.join(folder, "done"), "w").close()
    frames = []
    for r in range(replicas):
        traj = ase.io.read(os.path.join(output.replica_dir(folder, r, replicas),
                                        "trajectory.extxyz"), ":")
        frames.append(np.stack([a.positions for a in traj[11:]]))  # after 10 ps
    return np.concatenate(frames)


def run_backmap(name, beads, out, n_frames):
    """``biojax backmap`` of ``beads`` (F, 5, 3); returns (summary, positions, energies)."""
    import ase.io

    from biojax.cli import main

    folder = os.path.join(out, f"backmap_{name}")
    if not os.path.isfile(os.path.join(folder, "summary.json")):
        os.makedirs(folder, exist_ok=True)
        npy = os.path.join(folder, "cg_frames.npy")
        np.save(npy, beads)
        argv = ["backmap", npy, TEMPLATE, "--model", FG_MODEL, "--beads",
                ",".join(map(str, BEADS)), "--out", folder, "--frames", str(n_frames)]
        t = time.perf_counter()
        if main(argv) != 0:
            sys.exit(f"biojax {' '.join(argv)} failed")
        log(f"backmap {name}: {time.perf_counter() - t:.0f} s")
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    traj = ase.io.read(os.path.join(folder, "backmapped.extxyz"), ":")
    return (summary, np.stack([a.positions for a in traj]),
            np.array([a.get_potential_energy() for a in traj]))


def minimise_thermal(frames, out):
    """The FG MD frames relaxed under the same restraints to their own bead atoms."""
    import ase.io
    import jax
    import jax.numpy as jnp

    from biojax.cg import backmap as bm
    from biojax.nn.io import load_potential

    path = os.path.join(out, "thermal_minimised.npz")
    if not os.path.isfile(path):
        template = ase.io.read(TEMPLATE)
        pot = load_potential(FG_MODEL)
        M = bm.matrix_from_groups([[i] for i in BEADS], template.get_masses())
        relax = bm.make_relax(pot, template.numbers, M, bm.RelaxSettings())
        xs, es = [], []
        t = time.perf_counter()
        for s in range(0, len(frames), 32):
            log(f"restrained minimisation of FG MD frames: {s}/{len(frames)} "
                f"({time.perf_counter() - t:.0f} s)")
            x = frames[s:s + 32]
            pad = np.concatenate([x, np.repeat(x[-1:], 32 - len(x), 0)])
            r = jax.device_get(relax(jnp.asarray(pad, jnp.float32),
                                     jnp.asarray(pad[:, BEADS], jnp.float32)))
            xs.append(r[0][:len(x)])
            es.append(r[1][:len(x)])
        np.savez(path, positions=np.concatenate(xs),
                 energy=np.concatenate(es) + pot.reference_energy(template.numbers))
    with np.load(path) as z:
        return z["positions"], z["energy"]


def thermalise(out, starts, name, steps=2000):
    """Langevin MD at 300 K of back-mapped structures ``starts`` (R, 22, 3), one replica
    each, with the bead atoms restrained (50 eV/Å², to where back-mapping put them);
    returns the frames of the second half (0.5 ps)."""
    import ase
    import ase.io
    import jax.numpy as jnp

    from biojax.md import Simulation, output
    from biojax.md.config import SimulateConfig
    from biojax.md.terms import EnergyTerm
    from biojax.nn.io import load_potential

    folder = os.path.join(out, f"{name}_thermalised")
    R = len(starts)
    if not os.path.isfile(os.path.join(folder, "done")):
        template = ase.io.read(TEMPLATE)
        idx = jnp.asarray(BEADS)
        term = EnergyTerm(energy=lambda x, ref, **kw: 25.0 * jnp.sum((x[idx] - ref) ** 2),
                          init=lambda x: x[idx])
        cfg = SimulateConfig(ensemble="nvt-langevin", timestep_fs=0.5, temperature_K=300.0,
                             friction_per_ps=5.0, steps=steps, replicas=R, minimize=False,
                             chunk_steps=1000, observe_every=50, frame_every=50,
                             plots=False, seed=3)
        atoms = [ase.Atoms(numbers=template.numbers, positions=x) for x in starts]
        s = Simulation(atoms, load_potential(FG_MODEL), cfg, energy_terms=[term],
                       progress=True).run(folder, overwrite=True)
        log(f"restrained thermalisation {name}: {R} × {steps} steps in {s['wall_s']:.0f} s")
        open(os.path.join(folder, "done"), "w").close()
    frames = []
    n_frames = steps // 50
    for r in range(R):
        traj = ase.io.read(os.path.join(output.replica_dir(folder, r, R),
                                        "trajectory.extxyz"), ":")
        frames.append(np.stack([a.positions for a in traj[1 + n_frames // 2:]]))
    return np.stack(frames)


def fg_energies(frames):
    import ase.io
    import jax
    import jax.numpy as jnp

    from biojax.cg.backmap import fg_energy_fn
    from biojax.nn.io import load_potential

    template = ase.io.read(TEMPLATE)
    pot = load_potential(FG_MODEL)
    e = jax.jit(jax.vmap(fg_energy_fn(pot, template.numbers)))
    out = [np.asarray(e(jnp.asarray(frames[s:s + 256], jnp.float32)))
           for s in range(0, len(frames), 256)]
    return np.concatenate(out) + pot.reference_energy(template.numbers)


def internal(x, bonds, triples):
    from biojax.core.geometry import angles

    lengths = np.linalg.norm(x[:, bonds[:, 0]] - x[:, bonds[:, 1]], axis=-1)
    return lengths, np.degrees(np.asarray(angles(x, triples)))


def window_check(values, reference, labels):
    """Fraction of values inside each column's [0.5, 99.5] % range of the reference, and
    the worst |z| (against the reference's mean and σ)."""
    lo, hi = np.percentile(reference, [0.5, 99.5], axis=0)
    inside = (values >= lo) & (values <= hi)
    z = np.abs(values - reference.mean(0)) / reference.std(0)
    worst = int(np.argmax(z.max(0)))
    return {"fraction_inside_0.5_99.5": float(inside.mean()),
            "columns_all_inside": int(np.sum(inside.all(0))), "columns": int(values.shape[1]),
            "max_abs_z": float(z.max()), "worst": labels[worst],
            "mean_abs_z": float(z.mean()),
            "reference_mean_abs_z": float(np.mean(np.abs(reference - reference.mean(0))
                                                  / reference.std(0)))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "cg_ala2_backmap"))
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--fg-steps", type=int, default=10000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import ase.io

    from biojax.core.geometry import dihedrals_float64
    from biojax.md.system import covalent_bonds

    t0 = time.perf_counter()
    thermal = fg_md(args.out, 8, args.fg_steps)
    log(f"FG thermal frames: {len(thermal)}")
    cg_frames = cg_md(args.out, 8, 50000)
    log(f"CG MD frames: {len(cg_frames)}")
    ref = np.load(CGNET)
    results = {"machine": "2-core AMD EPYC VM, CPU only, shared with other jobs",
               "fg_md": {"replicas": 8, "steps": args.fg_steps, "timestep_fs": 0.5,
                         "temperature_K": 300.0, "frames_used": int(len(thermal)),
                         "discarded_ps": 1.0},
               "thermal_minimised_frames": int(len(thermal[::4]))}
    template = ase.io.read(TEMPLATE)
    bonds, _ = covalent_bonds(template)
    adj = [set() for _ in range(len(template))]
    for i, j in bonds:
        adj[i].add(j)
        adj[j].add(i)
    triples = np.array([(i, j, k) for j in range(len(adj)) for i in sorted(adj[j])
                        for k in sorted(adj[j]) if i < k])
    sym = template.get_chemical_symbols()
    bond_labels = [f"{sym[i]}{i}-{sym[j]}{j}" for i, j in bonds]
    angle_labels = [f"{sym[i]}{i}-{sym[j]}{j}-{sym[k]}{k}" for i, j, k in triples]
    L_ref, A_ref = internal(thermal, bonds, triples)
    e_thermal = fg_energies(thermal)
    x_min, e_min = minimise_thermal(thermal[::4], args.out)  # every 10th ps
    results["fg_thermal_energy_eV"] = {
        "md_mean": float(e_thermal.mean()), "md_p1": float(np.percentile(e_thermal, 1)),
        "md_p99": float(np.percentile(e_thermal, 99)),
        "restrained_minimised_median": float(np.median(e_min)),
        "restrained_minimised_min": float(e_min.min()),
        "restrained_minimised_max": float(e_min.max()),
        "restrained_minimised_p99": float(np.percentile(e_min, 99))}
    plots = {}
    for name, beads in (("cgnet", ref), ("cg_md", cg_frames)):
        summary, x, e = run_backmap(name, beads, args.out, args.frames)
        used = np.load(os.path.join(args.out, f"backmap_{name}", "cg_frames.npy"))
        stride = max(1, len(used) // args.frames)
        used = used[::stride][:args.frames]
        L, A = internal(x, bonds, triples)
        target = np.degrees(dihedrals_float64(used, np.array([[0, 1, 2, 3], [1, 2, 3, 4]])))
        got = np.degrees(dihedrals_float64(x, PHI_PSI_ATOMS))
        err = np.abs((got - target + 180.0) % 360.0 - 180.0)
        r = {"frames": int(len(x)), "wall_s": summary["wall_s"],
             "bonds": window_check(L, L_ref, bond_labels),
             "angles": window_check(A, A_ref, angle_labels),
             "phi_abs_error_deg": {"max": float(err[:, 0].max()), "mean": float(err[:, 0].mean()),
                                   "p95": float(np.percentile(err[:, 0], 95))},
             "psi_abs_error_deg": {"max": float(err[:, 1].max()), "mean": float(err[:, 1].mean()),
                                   "p95": float(np.percentile(err[:, 1], 95))},
             "frames_phi_psi_within_5deg": int(np.sum(err.max(1) <= 5.0)),
             "bead_rmsd_A": summary["bead_rmsd_A"], "fmax_eV_A": summary["fmax_eV_A"],
             "steps": summary["steps"], "converged": summary["converged"],
             "bonds_intact": summary["bonds_intact"],
             "chirality_kept": summary["chirality_kept"],
             "energy_eV": {"min": float(e.min()), "median": float(np.median(e)),
                           "max": float(e.max()),
                           "fraction_below_md_p99": float(np.mean(
                               e <= results["fg_thermal_energy_eV"]["md_p99"])),
                           "fraction_within_minimised_thermal_range": float(np.mean(
                               (e >= e_min.min()) & (e <= e_min.max()))),
                           "fraction_below_minimised_thermal_p99": float(np.mean(
                               e <= np.percentile(e_min, 99)))},
             "alphaL_frames": int(np.sum(target[:, 0] > 0))}
        if name == "cgnet":  # thermalise 32 back-mapped structures under the restraints
            pick = np.linspace(0, len(x) - 1, 32).astype(int)
            th = thermalise(args.out, x[pick], name)
            e_th = fg_energies(th.reshape(-1, *th.shape[2:]))
            plots["thermalised"] = e_th
            md = results["fg_thermal_energy_eV"]
            L_th, A_th = internal(th.reshape(-1, *th.shape[2:]), bonds, triples)
            got = np.degrees(dihedrals_float64(th, PHI_PSI_ATOMS))  # (32, T, 2)
            drift = np.abs((got - target[pick][:, None] + 180.0) % 360.0 - 180.0)
            r["thermalised"] = {
                "replicas": 32, "ps": 1.0, "frames_used": int(len(e_th)),
                "energy_mean": float(e_th.mean()), "energy_p1": float(np.percentile(e_th, 1)),
                "energy_p99": float(np.percentile(e_th, 99)),
                "fraction_within_md_p1_p99": float(np.mean((e_th >= md["md_p1"])
                                                           & (e_th <= md["md_p99"]))),
                "bonds": window_check(L_th, L_ref, bond_labels),
                "angles": window_check(A_th, A_ref, angle_labels),
                "phi_psi_abs_change_deg_mean": float(drift.mean()),
                "phi_psi_abs_change_deg_max": float(drift.max())}
        results[name] = r
        plots[name] = (L, A, e, target, err)
        log(f"{name}: {json.dumps(r, indent=1)}")
    results["wall_s_this_invocation"] = time.perf_counter() - t0  # steps already done skip
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    e_th = plots.pop("thermalised")
    figure(plots, L_ref, A_ref, e_thermal, e_min, e_th, bond_labels, angle_labels)


def figure(plots, L_ref, A_ref, e_thermal, e_min, e_th, bond_labels, angle_labels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
    b = bond_labels.index("N6-C8")  # N–CA
    a = angle_labels.index("N6-C8-C14")  # N–CA–C
    ax[0].hist(L_ref[:, b], 40, density=True, alpha=0.5, label="FG MD 300 K")
    ax[1].hist(A_ref[:, a], 40, density=True, alpha=0.5, label="FG MD 300 K")
    ax[2].hist(e_thermal, 40, density=True, alpha=0.4, label="FG MD 300 K")
    ax[2].hist(e_min, 40, density=True, alpha=0.4, label="FG MD, restrained-minimised")
    ax[2].hist(e_th, 40, density=True, histtype="step", color="k",
               label="back-mapped cgnet, restrained 1 ps MD")
    ax[2].locator_params(axis="x", nbins=4)
    for name, (L, A, e, target, err) in plots.items():
        ax[0].hist(L[:, b], 40, density=True, histtype="step", label=f"back-mapped {name}")
        ax[1].hist(A[:, a], 40, density=True, histtype="step", label=f"back-mapped {name}")
        ax[2].hist(e, 40, density=True, histtype="step", label=f"back-mapped {name}")
        ax[3].scatter(target[:, 0], target[:, 1], s=4, label=f"{name} beads")
    ax[0].set_xlabel("N–CA bond (Å)")
    ax[1].set_xlabel("N–CA–C angle (°)")
    ax[2].set_xlabel("FG energy (eV)")
    ax[3].set_xlabel("φ (°)")
    ax[3].set_ylabel("ψ (°)")
    ax[3].set_xlim(-180, 180)
    ax[3].set_ylim(-180, 180)
    for x in ax:
        x.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "backmap.png"), dpi=90)


if __name__ == "__main__":
    main()
