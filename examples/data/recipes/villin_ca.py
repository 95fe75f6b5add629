"""Villin headpiece Cα dataset for force matching: all-atom OpenMM MD mapped to one bead per residue.

    OMP_NUM_THREADS=2 python examples/data/recipes/villin_ca.py            # writes examples/data/villin_ca/
    python examples/data/recipes/villin_ca.py --production-ps 20 --out-dir /tmp/v   # a quick try

What it does (all numbers are the defaults; ``--help`` lists the options):

1. Structure: OpenMM's own ``openmm/app/data/test.pdb`` (villin headpiece HP35 N68H, 35
   residues, in explicit water); the water and the Cl⁻ ion are deleted, the hydrogens
   are already there (``Modeller.addHydrogens`` adds none, it is run as a check).
2. Force field: AMBER ff14SB (``amber14-all.xml``) with OBC2 implicit solvent
   (``implicit/obc2.xml``, Amber igb=5, no cutoff). OpenMM builds OBC2 as a CustomGBForce,
   which is ~6x slower on the CPU platform than its native ``GBSAOBCForce``; the recipe
   replaces it with a native ``GBSAOBCForce`` of the same per-atom charges, radii and
   scale factors and checks on the start structure that energies and forces agree with
   the CustomGBForce (the check fails the run if they do not).
3. Dynamics: LangevinMiddleIntegrator, 300 K, friction 1/ps, 4 fs steps with X–H bonds
   constrained and hydrogen mass repartitioning (H 1.5 amu, as OpenMM's manual suggests
   for 4 fs); CPU platform, 2 threads at most. Masses only change the dynamics, not the
   configurational ensemble that force matching and the RMSD/Rg distributions use.
   Minimise, equilibrate 50 ps, then save a frame every 0.2 ps for 500 ps.
4. Mapping: one bead per residue at its Cα atom. The mapped force of a bead is the sum of
   the force-field forces (``State.getForces``: never constraint forces) on the Cα atom
   and on the hydrogens bonded to it (HA; HA2/HA3 in Gly). With X–H constraints the Cα–HA
   bond is rigid, so moving a Cα while everything else stays put must carry its HA along:
   the force conjugate to the Cα position is the total force on that rigid cluster (the
   force on the Cα atom alone would miss the part transmitted by the constraint). The
   constraint metric (Fixman) factor does not change under that rigid translation, so the
   mapped force is unbiased. ``forces_ca_atom_only`` keeps the Cα-atom force for comparison.
   (``biojax.cg.mapping.from_topology(villin_aa.pdb, "ca")`` gives the same positions —
   tests/test_cg_villin.py checks it — but its ``map_forces`` takes the Cα atom alone, which
   suits unconstrained data only; so the clusters are built here.)
5. Units are converted once, here: Å, eV/Å, ps, K, amu.

Output (``--out-dir``):

- ``coordinates.npy`` (F, 35, 3) Å float32 and ``forces.npy`` (F, 35, 3) eV/Å float32: the
  Cα positions and mapped forces, as ``biojax coarse-grain`` reads them.
- ``villin_ca.npz``: ``forces_ca_atom_only`` (F, 35, 3) eV/Å, ``time_ps`` (F,),
  ``potential_energy`` (F,) eV (all-atom force field), ``kinetic_temperature`` (F,) K,
  ``rmsd`` (F,) Å (Cα RMSD to the minimised structure after Kabsch superposition),
  ``rg`` (F,) Å (Cα radius of gyration, unweighted),
  ``reference_coordinates`` (35, 3) Å (minimised Cα), ``residue_names`` (35,),
  ``residue_masses`` (35,) amu (whole residues, standard masses), ``ca_indices`` and
  ``cluster_indices`` (atom indices in ``villin_aa.pdb``), scalars ``temperature_K``,
  ``timestep_fs``, ``frame_spacing_ps``, and ``recipe`` (JSON: settings, versions, timings).
- ``villin_ca.pdb``: the Cα beads of the first saved frame (residue names, one chain).
- ``villin_aa.pdb``: the all-atom protein (minimised) and ``villin_aa_sample.npz``: all-atom
  ``positions``/``forces`` (Å, eV/Å) of every ``--aa-sample-every``-th frame (``frame``
  indices), so a mapping can be checked against the shipped Cα arrays without rerunning.

The run is resumable: every ``--checkpoint-frames`` frames the state (OpenMM checkpoint and
the frames so far) is written atomically to ``<out-dir>/.villin_ca.partial.npz``; running
the same command again continues from it. The final files are written atomically and the
partial file is removed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

from biojax.core.atomic import atomic_path
from biojax.core.progress import progress
from biojax.core.units import KB, KJ_PER_MOL, NM

KJMOL_PER_NM = KJ_PER_MOL / NM          # 1 kJ/mol/nm in eV/Å
IONS = {"CL", "Cl", "NA", "Na", "K", "MG", "Mg", "CA2", "ZN", "Zn"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "..", "villin_ca"),
                   help="output folder (default examples/data/villin_ca)")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep-fs", type=float, default=4.0, help="fs")
    p.add_argument("--hydrogen-mass", type=float, default=1.5, help="amu (mass repartitioning)")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--equilibration-ps", type=float, default=50.0, help="ps before the first frame")
    p.add_argument("--production-ps", type=float, default=500.0, help="ps of saved MD")
    p.add_argument("--frame-spacing-ps", type=float, default=0.2, help="ps between saved frames")
    p.add_argument("--aa-sample-every", type=int, default=100,
                   help="keep all-atom positions/forces of every n-th frame")
    p.add_argument("--checkpoint-frames", type=int, default=100, help="frames between checkpoints")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for OpenMM (at most 2 here)")
    p.add_argument("--seed", type=int, default=20240610)
    return p.parse_args(argv)


def steps_of(ps: float, dt_fs: float, what: str) -> int:
    n = ps * 1000.0 / dt_fs
    if n < 1 or abs(n - round(n)) > 1e-6:
        raise SystemExit(f"villin_ca.py: {what} = {ps} ps is not a positive whole number of "
                         f"{dt_fs} fs steps")
    return int(round(n))


def build_system(args):
    """Protein topology, start positions and the OpenMM System (native OBC2, checked)."""
    import openmm
    import openmm.unit as u
    from openmm import app

    pdb_path = os.path.join(os.path.dirname(app.__file__), "data", "test.pdb")
    pdb = app.PDBFile(pdb_path)
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.deleteWater()
    modeller.delete([a for a in modeller.topology.atoms() if a.residue.name in IONS])
    ff = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    n_before = modeller.topology.getNumAtoms()
    modeller.addHydrogens(ff)
    if modeller.topology.getNumAtoms() != n_before:
        print(f"addHydrogens added {modeller.topology.getNumAtoms() - n_before} atoms")
    top, pos = modeller.topology, modeller.positions
    top.setPeriodicBoxVectors(None)   # implicit solvent: no box (and none in the PDBs written)

    def make(native: bool):
        system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=app.HBonds,
                                 hydrogenMass=args.hydrogen_mass * u.amu)
        for i, f in enumerate(system.getForces()):
            f.setForceGroup(1 if isinstance(f, openmm.CustomGBForce) else 0)
        if native:
            idx = [i for i, f in enumerate(system.getForces()) if isinstance(f, openmm.CustomGBForce)]
            if len(idx) != 1:
                raise SystemExit(f"villin_ca.py: expected one CustomGBForce, found {len(idx)}")
            custom = system.getForce(idx[0])
            obc = openmm.GBSAOBCForce()
            obc.setNonbondedMethod(openmm.GBSAOBCForce.NoCutoff)
            obc.setSoluteDielectric(1.0)
            obc.setSolventDielectric(78.5)
            for i in range(custom.getNumParticles()):
                q, offset_radius, scaled_radius = custom.getParticleParameters(i)
                # implicit/obc2.xml stores or = radius - 0.009 nm and sr = scale * or
                obc.addParticle(q, offset_radius + 0.009, scaled_radius / offset_radius)
            obc.setForceGroup(1)
            system.removeForce(idx[0])
            system.addForce(obc)
        return system

    plat = openmm.Platform.getPlatformByName("Reference")
    check = {}
    for native in (False, True):
        ctx = openmm.Context(make(native), openmm.VerletIntegrator(0.001), plat)
        ctx.setPositions(pos)
        st = ctx.getState(getEnergy=True, getForces=True, groups={1})
        check[native] = (st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                         np.asarray(st.getForces(asNumpy=True).value_in_unit(
                             u.kilojoule_per_mole / u.nanometer)))
        del ctx
    (e0, f0), (e1, f1) = check[False], check[True]
    f_err = float(np.max(np.abs(f1 - f0)) / np.sqrt(np.mean(f0 ** 2)))
    print(f"OBC2 check (Reference platform, start structure): CustomGBForce {e0:.4f} kJ/mol, "
          f"GBSAOBCForce {e1:.4f} kJ/mol, max |dF| / rms F = {f_err:.2e}")
    if abs(e1 - e0) > 1e-4 * abs(e0) or f_err > 1e-4:
        raise SystemExit("villin_ca.py: native GBSAOBCForce does not reproduce implicit/obc2.xml")
    return top, pos, make(True), {"obc2_custom_kjmol": e0, "obc2_native_kjmol": e1,
                                  "obc2_max_force_err_rel": f_err, "pdb": pdb_path}


def ca_clusters(top):
    """Cα atom index per residue and the atoms whose forces make its bead force (Cα + bonded H)."""
    ca, clusters = [], []
    bonded = {a.index: [] for a in top.atoms()}
    for a, b in top.bonds():
        bonded[a.index].append(b)
        bonded[b.index].append(a)
    for res in top.residues():
        cas = [a for a in res.atoms() if a.name == "CA"]
        if len(cas) != 1:
            raise SystemExit(f"villin_ca.py: residue {res.name}{res.id} has {len(cas)} CA atoms")
        hs = sorted(b.index for b in bonded[cas[0].index]
                    if b.element is not None and b.element.symbol == "H")
        ca.append(cas[0].index)
        clusters.append([cas[0].index] + hs)
    return np.array(ca), clusters


def radius_of_gyration(x: np.ndarray) -> np.ndarray:
    """Unweighted radius of gyration (Å) of (..., B, 3) bead positions."""
    c = x - x.mean(axis=-2, keepdims=True)
    return np.sqrt(np.mean(np.sum(c * c, axis=-1), axis=-1))


def write_pdb(top, positions_A, path, keep=None) -> None:
    """A PDB of ``top`` (optionally only atom indices ``keep``) at ``positions_A`` (Å), atomically."""
    import openmm.unit as u
    from openmm import app

    if keep is not None:
        m = app.Modeller(top, [(0, 0, 0)] * top.getNumAtoms() * u.angstrom)
        keep = set(int(i) for i in keep)
        m.delete([a for a in m.topology.atoms() if a.index not in keep])
        top = m.topology
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        app.PDBFile.writeFile(top, np.asarray(positions_A, float) * u.angstrom, f)


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version(), "machine": platform.machine(),
           "processor": platform.processor()}
    for pkg in ("openmm", "numpy", "biojax", "jax"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads < 1:
        raise SystemExit("villin_ca.py: --threads must be at least 1")
    import openmm
    import openmm.unit as u

    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    partial = os.path.join(out, ".villin_ca.partial.npz")
    t_start = time.time()
    dt = args.timestep_fs
    n_equil = steps_of(args.equilibration_ps, dt, "--equilibration-ps")
    save_every = steps_of(args.frame_spacing_ps, dt, "--frame-spacing-ps")
    n_frames = int(round(args.production_ps / args.frame_spacing_ps))
    settings = {k: v for k, v in vars(args).items() if k not in ("out_dir", "threads",
                                                                  "checkpoint_frames")}

    top, pos0, system, check = build_system(args)
    ca_idx, clusters = ca_clusters(top)
    n_atoms = top.getNumAtoms()
    dof = 3 * n_atoms - system.getNumConstraints() - 3   # CMMotionRemover takes 3
    integ = openmm.LangevinMiddleIntegrator(args.temperature * u.kelvin,
                                            args.friction / u.picosecond, dt * u.femtosecond)
    integ.setRandomNumberSeed(args.seed)
    plat = openmm.Platform.getPlatformByName("CPU")
    ctx = openmm.Context(system, integ, plat, {"Threads": str(args.threads)})

    rec = {"ca": [], "f": [], "fca": [], "epot": [], "temp": [], "aa_x": [], "aa_f": [],
           "aa_frame": []}
    meta = {}
    if os.path.exists(partial):
        with np.load(partial, allow_pickle=False) as z:
            old = json.loads(str(z["settings"]))
            if old != settings:
                raise SystemExit(f"villin_ca.py: {partial} was written with other settings "
                                 f"({old}); delete it or rerun with those settings")
            ctx.loadCheckpoint(z["openmm_checkpoint"].tobytes())
            for k in rec:
                rec[k] = list(z[k])
            meta = json.loads(str(z["meta"]))
            ref_aa = z["ref_aa"]
        print(f"resumed from {partial}: {len(rec['ca'])} of {n_frames} frames")
    else:
        ctx.setPositions(pos0)
        t = time.time()
        openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 10000)
        st = ctx.getState(getPositions=True, getEnergy=True)
        ref_aa = np.asarray(st.getPositions(asNumpy=True).value_in_unit(u.nanometer)) * NM
        meta["minimised_energy_eV"] = st.getPotentialEnergy().value_in_unit(
            u.kilojoule_per_mole) * KJ_PER_MOL
        meta["minimise_s"] = time.time() - t
        print(f"minimised: {meta['minimised_energy_eV']:.3f} eV in {meta['minimise_s']:.1f} s")
        ctx.setVelocitiesToTemperature(args.temperature * u.kelvin, args.seed)
        t = time.time()
        bar = progress(n_equil, "villin equilibration", unit="step")
        chunk = max(1, n_equil // 20)
        for done in range(0, n_equil, chunk):
            integ.step(min(chunk, n_equil - done))
            bar.update(min(done + chunk, n_equil))
        bar.close()
        meta["equilibrate_s"] = time.time() - t
        meta["production_s"] = 0.0

    def checkpoint():
        arrays = {k: np.asarray(v) for k, v in rec.items()}
        with atomic_path(partial) as tmp:
            np.savez(tmp, settings=json.dumps(settings), meta=json.dumps(meta), ref_aa=ref_aa,
                     openmm_checkpoint=np.frombuffer(ctx.createCheckpoint(), np.uint8), **arrays)

    bar = progress(n_frames, "villin production", unit="frame")
    bar.update(len(rec["ca"]))
    t = time.time()
    done_at_start = len(rec["ca"])
    while len(rec["ca"]) < n_frames:
        integ.step(save_every)
        st = ctx.getState(getPositions=True, getForces=True, getEnergy=True)
        x = np.asarray(st.getPositions(asNumpy=True).value_in_unit(u.nanometer)) * NM
        f = np.asarray(st.getForces(asNumpy=True).value_in_unit(
            u.kilojoule_per_mole / u.nanometer)) * KJMOL_PER_NM
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(f))):
            raise SystemExit(f"villin_ca.py: non-finite positions/forces at frame {len(rec['ca'])}")
        i = len(rec["ca"])
        rec["ca"].append(x[ca_idx])
        rec["f"].append(np.stack([f[c].sum(axis=0) for c in clusters]))
        rec["fca"].append(f[ca_idx])
        rec["epot"].append(st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * KJ_PER_MOL)
        rec["temp"].append(2 * st.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
                           * KJ_PER_MOL / (dof * KB))
        if i % args.aa_sample_every == 0:
            rec["aa_x"].append(x)
            rec["aa_f"].append(f)
            rec["aa_frame"].append(i)
        bar.update(i + 1)
        if (i + 1) % 10 == 0:
            bar.set(T=f"{np.mean(rec['temp'][-50:]):.0f}K")
        if (i + 1) % args.checkpoint_frames == 0 and i + 1 < n_frames:
            meta["production_s"] += time.time() - t
            t = time.time()
            checkpoint()
    bar.close()
    meta["production_s"] += time.time() - t
    meta["production_frames_this_process"] = n_frames - done_at_start

    from biojax.core.geometry import rmsd   # imports jax: after the OpenMM work
    coords = np.asarray(rec["ca"], np.float64)
    ref_ca = ref_aa[ca_idx]
    rmsd_A = np.asarray(rmsd(coords, ref_ca), np.float64)
    rg_A = radius_of_gyration(coords)
    masses = np.array([sum(a.element.mass.value_in_unit(u.dalton) for a in res.atoms())
                       for res in top.residues()])
    names = np.array([res.name for res in top.residues()])
    temps = np.asarray(rec["temp"])
    meta.update(check)
    meta.update({"settings": settings, "versions": versions(), "threads": args.threads,
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                 "atoms": n_atoms, "constraints": system.getNumConstraints(),
                 "mean_kinetic_temperature_K": float(temps.mean()),
                 "total_s": meta.get("minimise_s", 0) + meta.get("equilibrate_s", 0)
                 + meta["production_s"],
                 "wall_s_this_process": time.time() - t_start})
    time_ps = args.frame_spacing_ps * (1 + np.arange(n_frames))
    # coordinates/forces as plain .npy arrays (what ``biojax coarse-grain`` [data] reads)
    for name, arr in (("coordinates.npy", coords), ("forces.npy", rec["f"])):
        with atomic_path(os.path.join(out, name)) as tmp:
            np.save(tmp, np.asarray(arr, np.float32))
    with atomic_path(os.path.join(out, "villin_ca.npz")) as tmp:
        np.savez_compressed(
            tmp, forces_ca_atom_only=np.asarray(rec["fca"], np.float32),
            time_ps=time_ps, potential_energy=np.asarray(rec["epot"]), kinetic_temperature=temps,
            rmsd=rmsd_A, rg=rg_A, reference_coordinates=ref_ca, residue_names=names,
            residue_masses=masses, ca_indices=ca_idx,
            cluster_indices=np.array([c + [-1] * (4 - len(c)) for c in clusters]),
            temperature_K=args.temperature, timestep_fs=dt, frame_spacing_ps=args.frame_spacing_ps,
            recipe=json.dumps(meta))
    with atomic_path(os.path.join(out, "villin_aa_sample.npz")) as tmp:
        np.savez_compressed(tmp, positions=np.asarray(rec["aa_x"], np.float32),
                            forces=np.asarray(rec["aa_f"], np.float32),
                            frame=np.asarray(rec["aa_frame"]))
    write_pdb(top, coords[0], os.path.join(out, "villin_ca.pdb"), keep=ca_idx)
    write_pdb(top, ref_aa, os.path.join(out, "villin_aa.pdb"))
    if os.path.exists(partial):
        os.remove(partial)
    print(json.dumps({k: meta[k] for k in ("mean_kinetic_temperature_K", "total_s")}))
    print(f"{n_frames} frames; Cα RMSD to minimised {rmsd_A.mean():.2f} ± {rmsd_A.std():.2f} Å "
          f"(max {rmsd_A.max():.2f}); Rg {rg_A.mean():.2f} ± {rg_A.std():.2f} Å; "
          f"mean T {temps.mean():.1f} K; wrote {out}")


if __name__ == "__main__":
    main()
