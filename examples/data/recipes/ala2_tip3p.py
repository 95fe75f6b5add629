"""Alanine dipeptide in explicit TIP3P water (AMBER ff14SB): the atomistic reference for the
hybrid FG-in-CG-water example (issue #11).

    OMP_NUM_THREADS=1 nice python examples/data/recipes/ala2_tip3p.py --max-wall-min 60
    python examples/data/recipes/ala2_tip3p.py --production-ps 20 --out-dir /tmp/a   # a quick try

What it does (all numbers are the defaults; ``--help`` lists the options):

1. Structure: ``examples/data/alanine-dipeptide-gbsa/alanine-dipeptide.pdb`` (ACE-ALA-NME,
   22 atoms, the atom order of every ala2 file in biojax: φ = atoms 4, 6, 8, 14 and
   ψ = 6, 8, 14, 16, 0-based), solvated by OpenMM's ``Modeller.addSolvent`` with TIP3P in
   a cube of edge ``--box-nm`` 2.4 nm (about 1 nm of water around the solute; OpenMM's
   ``padding`` gave a 1.83 nm box, too close to twice the cutoff). Solute atoms come first, then
   the waters (O, H, H each).
2. Force field: AMBER ff14SB (``amber14-all.xml``) + TIP3P (``amber14/tip3p.xml``), PME,
   0.9 nm cutoff, rigid water, X–H bonds constrained, hydrogen mass repartitioning to
   4 amu (solute only: OpenMM leaves rigid water alone), LangevinMiddleIntegrator 300 K,
   friction 1/ps, 4 fs. CPU platform, ``--threads`` (default 1).
3. Protocol: minimise, ``--npt-ps`` of NPT (MonteCarloBarostat, 1 bar, every 25 steps);
   the box is then set to the mean box length of the second half of the NPT run (molecule
   centres scaled, molecules kept rigid) and production is NVT in that box.
4. Saved during production: φ/ψ every ``--phipsi-ps`` (1 ps) and a *force frame* every
   ``--frame-ps`` (5 ps): solute positions and force-field forces of the full system
   (``State.getForces``: never constraint forces), water centres of mass (real masses,
   wrapped into the box) and the summed force on each water molecule (the generalised force
   conjugate to a rigid translation of the molecule: the one-bead-per-water mapping), and
   the solute's energy and forces in vacuum from a separate OpenMM system of the 22 atoms
   alone with the same force field (NoCutoff, no constraints) at the same coordinates
   (the FG training labels).
5. Units are converted once, at write time: Å, eV, eV/Å, amu, ps, degrees.

Output (``--out-dir``, default ``examples/data/ala2_tip3p``):

- ``frames.npz`` (float32, compressed): ``solute_positions`` (F, 22, 3) Å,
  ``solute_forces`` (F, 22, 3) eV/Å, ``water_positions`` (F, W, 3) Å, ``water_forces``
  (F, W, 3) eV/Å, ``solute_vacuum_energy`` (F,) eV, ``solute_vacuum_forces`` (F, 22, 3) eV/Å,
  ``time_ps`` (F,), ``box`` (3,) Å, ``numbers`` (22,), ``solute_masses`` (22,) amu (real
  masses), ``water_mass`` amu, ``recipe`` (JSON: settings, versions, timings, ns/day).
- ``phi_psi.npy`` (T, 2) float32 degrees, one row every ``--phipsi-ps`` of production.
- ``solvated.pdb``: the equilibrated start of production (full system, for OpenMM reruns).

Resumable: every ``--chunk-ps`` of production, the OpenMM checkpoint and everything saved so
far go atomically to ``<out-dir>/.ala2_tip3p.partial.npz``, and the output files are
rewritten from it; a killed run loses at most one chunk, and the same command continues.
``--max-wall-min`` stops cleanly after that much wall time (the partial file stays, so a
later run with a larger limit or a longer ``--production-ps`` continues). The partial file is
kept at the end too (delete it to start over); it is not part of the shipped data.
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
from biojax.core.units import KJ_PER_MOL, NM

KJMOL_PER_NM = KJ_PER_MOL / NM          # 1 kJ/mol/nm in eV/Å
HERE = os.path.dirname(os.path.abspath(__file__))
PDB = os.path.join(HERE, "..", "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb")
PHI = (4, 6, 8, 14)
PSI = (6, 8, 14, 16)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=os.path.join(HERE, "..", "ala2_tip3p"),
                   help="output folder (default examples/data/ala2_tip3p)")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep-fs", type=float, default=4.0, help="fs")
    p.add_argument("--hydrogen-mass", type=float, default=4.0,
                   help="amu (solute hydrogen mass repartitioning; 0 = off)")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--box-nm", type=float, default=2.4,
                   help="edge of the cubic box before NPT, nm (2.4 nm: about 1 nm of water "
                        "around the solute, ~450 waters)")
    p.add_argument("--cutoff-nm", type=float, default=0.9, help="PME real-space cutoff, nm")
    p.add_argument("--npt-ps", type=float, default=40.0, help="ps of NPT equilibration")
    p.add_argument("--production-ps", type=float, default=20000.0, help="target ps of NVT")
    p.add_argument("--phipsi-ps", type=float, default=1.0, help="ps between φ/ψ samples")
    p.add_argument("--frame-ps", type=float, default=5.0, help="ps between force frames")
    p.add_argument("--chunk-ps", type=float, default=20.0, help="ps between checkpoints")
    p.add_argument("--max-wall-min", type=float, default=None,
                   help="stop cleanly after this many minutes of wall time (this process)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for OpenMM")
    p.add_argument("--seed", type=int, default=20261130)
    return p.parse_args(argv)


def steps_of(ps: float, dt_fs: float, what: str) -> int:
    n = ps * 1000.0 / dt_fs
    if n < 1 or abs(n - round(n)) > 1e-6:
        raise SystemExit(f"ala2_tip3p.py: {what} = {ps} ps is not a positive whole number of "
                         f"{dt_fs} fs steps")
    return int(round(n))


def dihedral_deg(x: np.ndarray, idx) -> np.ndarray:
    """Dihedral angle (degrees, (-180, 180]) of atoms ``idx`` in (..., N, 3) positions."""
    p0, p1, p2, p3 = (x[..., i, :] for i in idx)
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1n, -1, keepdims=True) * b1n
    w = b2 - np.sum(b2 * b1n, -1, keepdims=True) * b1n
    return np.degrees(np.arctan2(np.sum(np.cross(b1n, v) * w, -1), np.sum(v * w, -1)))


def build(args):
    """Solvated topology/positions, the full System (no barostat), the solute-only System."""
    import openmm.unit as u
    from openmm import app

    pdb = app.PDBFile(PDB)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    mod = app.Modeller(pdb.topology, pdb.positions)
    if mod.topology.getNumAtoms() != 22:
        raise SystemExit(f"ala2_tip3p.py: {PDB} has {mod.topology.getNumAtoms()} atoms, not 22")
    import openmm
    mod.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(1, 1, 1) * args.box_nm * u.nanometer,
                   neutralize=False)
    hm = args.hydrogen_mass * u.amu if args.hydrogen_mass > 0 else None
    system = ff.createSystem(mod.topology, nonbondedMethod=app.PME,
                             nonbondedCutoff=args.cutoff_nm * u.nanometer,
                             constraints=app.HBonds, rigidWater=True, hydrogenMass=hm)
    vac = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None,
                          rigidWater=False)
    return mod.topology, mod.positions, system, vac, pdb.topology


def water_groups(top) -> np.ndarray:
    """(W, 3) atom indices of the water molecules (O first), checking that they follow the solute."""
    out = []
    for res in top.residues():
        if res.name == "HOH":
            idx = [a.index for a in res.atoms()]
            if len(idx) != 3 or list(res.atoms())[0].element.symbol != "O":
                raise SystemExit(f"ala2_tip3p.py: water residue {res.id} is not O,H,H")
            out.append(idx)
    w = np.asarray(out)
    if w.min() != 22 or not np.array_equal(w.ravel(), np.arange(22, 22 + w.size)):
        raise SystemExit("ala2_tip3p.py: the waters do not directly follow the 22 solute atoms")
    return w


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version(), "machine": platform.machine(),
           "processor": platform.processor()}
    for pkg in ("openmm", "numpy", "biojax"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    import openmm
    import openmm.unit as u
    from openmm import app

    t_start = time.time()
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    partial = os.path.join(out, ".ala2_tip3p.partial.npz")
    dt = args.timestep_fs
    n_npt = steps_of(args.npt_ps, dt, "--npt-ps")
    n_pp = steps_of(args.phipsi_ps, dt, "--phipsi-ps")
    n_fr = steps_of(args.frame_ps, dt, "--frame-ps")
    n_chunk = steps_of(args.chunk_ps, dt, "--chunk-ps")
    n_prod = steps_of(args.production_ps, dt, "--production-ps")
    if n_fr % n_pp or n_chunk % n_fr:
        raise SystemExit("ala2_tip3p.py: --frame-ps must be a multiple of --phipsi-ps and "
                         "--chunk-ps a multiple of --frame-ps")
    settings = {k: v for k, v in vars(args).items()
                if k not in ("out_dir", "threads", "production_ps", "max_wall_min")}

    top, pos0, system, vac_system, solute_top = build(args)
    wat = water_groups(top)
    n_atoms = top.getNumAtoms()
    masses_real = np.array([a.element.mass.value_in_unit(u.dalton) for a in top.atoms()])
    wmass = masses_real[wat]                                  # (W, 3)
    water_mass = float(wmass[0].sum())
    plat = openmm.Platform.getPlatformByName("CPU")
    props = {"Threads": str(args.threads)}
    vac_ctx = openmm.Context(vac_system, openmm.VerletIntegrator(0.001), plat, props)

    def make_nvt():
        integ = openmm.LangevinMiddleIntegrator(args.temperature * u.kelvin,
                                                args.friction / u.picosecond, dt * u.femtosecond)
        integ.setRandomNumberSeed(args.seed + 1)
        return openmm.Context(system, integ, plat, props), integ

    rec = {"x": [], "f": [], "wx": [], "wf": [], "ev": [], "fv": [], "t": [], "pp": []}
    meta = {}
    if os.path.exists(partial):
        with np.load(partial, allow_pickle=False) as z:
            old = json.loads(str(z["settings"]))
            if old != settings:
                raise SystemExit(f"ala2_tip3p.py: {partial} was written with other settings "
                                 f"({old}); delete it or rerun with those settings")
            for k in rec:
                rec[k] = list(z[k])
            meta = json.loads(str(z["meta"]))
            box = float(z["box"])
            system.setDefaultPeriodicBoxVectors(*(np.eye(3) * box / NM * u.nanometer))
            ctx, integ = make_nvt()
            ctx.loadCheckpoint(z["openmm_checkpoint"].tobytes())
        step = int(meta["production_steps"])
        print(f"resumed from {partial}: {step * dt / 1000:.1f} ps of production, "
              f"{len(rec['t'])} force frames", flush=True)
    else:
        # --- minimise + NPT in a system with a barostat (a copy) ---
        npt_system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
        npt_system.addForce(openmm.MonteCarloBarostat(1.0 * u.bar, args.temperature * u.kelvin, 25))
        integ = openmm.LangevinMiddleIntegrator(args.temperature * u.kelvin,
                                                args.friction / u.picosecond, dt * u.femtosecond)
        integ.setRandomNumberSeed(args.seed)
        ctx = openmm.Context(npt_system, integ, plat, props)
        ctx.setPositions(pos0)
        t = time.time()
        openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 5000)
        meta["minimise_s"] = time.time() - t
        ctx.setVelocitiesToTemperature(args.temperature * u.kelvin, args.seed)
        t = time.time()
        boxes = []
        chunk = max(1, n_npt // 40)
        bar = progress(n_npt, "ala2 TIP3P NPT", unit="step")
        done = 0
        while done < n_npt:
            k = min(chunk, n_npt - done)
            integ.step(k)
            done += k
            st = ctx.getState()
            boxes.append(st.getPeriodicBoxVectors(asNumpy=True)[0][0].value_in_unit(u.nanometer))
            bar.update(done)
            bar.set(L=f"{boxes[-1] * 10:.2f}A")
        bar.close()
        meta["npt_s"] = time.time() - t
        meta["npt_ns_per_day"] = args.npt_ps / 1000.0 / (meta["npt_s"] / 86400.0)
        st = ctx.getState(getPositions=True, getVelocities=True)
        L_end = st.getPeriodicBoxVectors(asNumpy=True)[0][0].value_in_unit(u.nanometer)
        L = float(np.mean(boxes[len(boxes) // 2:]))
        x = np.asarray(st.getPositions(asNumpy=True).value_in_unit(u.nanometer))
        v = st.getVelocities()
        # scale molecule centres from L_end to L, each molecule moved rigidly
        groups = [np.arange(22)] + list(wat)
        s = L / L_end
        for g in groups:
            c = (masses_real[g, None] * x[g]).sum(0) / masses_real[g].sum()
            x[g] += (s - 1.0) * c
        del ctx
        system.setDefaultPeriodicBoxVectors(*(np.eye(3) * L * u.nanometer))
        ctx, integ = make_nvt()
        ctx.setPositions(x * u.nanometer)
        ctx.setVelocities(v)
        ctx.applyConstraints(1e-6)
        ctx.applyVelocityConstraints(1e-6)
        box = L * NM
        meta.update({"box_npt_mean_A": box, "box_npt_end_A": L_end * NM,
                     "box_start_A": top.getPeriodicBoxVectors()[0][0].value_in_unit(u.nanometer) * NM,
                     "production_s": 0.0, "production_steps": 0})
        st = ctx.getState(getPositions=True)
        with atomic_path(os.path.join(out, "solvated.pdb")) as tmp, open(tmp, "w") as f:
            app.PDBFile.writeFile(top, st.getPositions(), f)
        step = 0
        print(f"minimised in {meta['minimise_s']:.1f} s; NPT {args.npt_ps} ps in "
              f"{meta['npt_s']:.0f} s ({meta['npt_ns_per_day']:.1f} ns/day); box "
              f"{box:.3f} Å (mean of 2nd half), {len(wat)} waters, {n_atoms} atoms", flush=True)

    meta.update({"atoms": n_atoms, "waters": int(len(wat)), "constraints": system.getNumConstraints(),
                 "threads": args.threads, "versions": versions()})

    def write_outputs():
        F = len(rec["t"])
        meta["production_ps"] = meta["production_steps"] * dt / 1000.0
        meta["production_ns_per_day"] = (meta["production_ps"] / 1000.0
                                         / max(meta["production_s"], 1e-9) * 86400.0)
        meta["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        meta["settings"] = settings
        meta["command"] = " ".join(["python", "examples/data/recipes/ala2_tip3p.py"] + sys.argv[1:])
        numbers = np.array([a.element.atomic_number for a in solute_top.atoms()])
        with atomic_path(os.path.join(out, "frames.npz")) as tmp:
            np.savez_compressed(
                tmp,
                solute_positions=np.asarray(rec["x"], np.float32).reshape(F, 22, 3),
                solute_forces=np.asarray(rec["f"], np.float32).reshape(F, 22, 3),
                water_positions=np.asarray(rec["wx"], np.float32).reshape(F, len(wat), 3),
                water_forces=np.asarray(rec["wf"], np.float32).reshape(F, len(wat), 3),
                solute_vacuum_energy=np.asarray(rec["ev"], np.float64),
                solute_vacuum_forces=np.asarray(rec["fv"], np.float32).reshape(F, 22, 3),
                time_ps=np.asarray(rec["t"], np.float32),
                box=np.full(3, box), numbers=numbers, solute_masses=masses_real[:22],
                water_mass=water_mass, recipe=json.dumps(meta))
        with atomic_path(os.path.join(out, "phi_psi.npy")) as tmp:
            np.save(tmp, np.asarray(rec["pp"], np.float32).reshape(-1, 2))

    def checkpoint():
        with atomic_path(partial) as tmp:
            np.savez(tmp, settings=json.dumps(settings), meta=json.dumps(meta), box=box,
                     openmm_checkpoint=np.frombuffer(ctx.createCheckpoint(), np.uint8),
                     **{k: np.asarray(v) for k, v in rec.items()})

    deadline = None if args.max_wall_min is None else t_start + 60.0 * args.max_wall_min
    bar = progress(n_prod, "ala2 TIP3P NVT production", unit="step")
    bar.update(step)
    while step < n_prod and (deadline is None or time.time() < deadline):
        t = time.time()
        k_end = min(step + n_chunk, n_prod)
        while step < k_end:
            integ.step(n_pp)
            step += n_pp
            want_forces = step % n_fr == 0
            st = ctx.getState(getPositions=True, getForces=want_forces)
            x = np.asarray(st.getPositions(asNumpy=True).value_in_unit(u.nanometer)) * NM
            rec["pp"].append((dihedral_deg(x[:22], PHI), dihedral_deg(x[:22], PSI)))
            if want_forces:
                f = np.asarray(st.getForces(asNumpy=True).value_in_unit(
                    u.kilojoule_per_mole / u.nanometer)) * KJMOL_PER_NM
                if not (np.all(np.isfinite(x)) and np.all(np.isfinite(f))):
                    raise SystemExit(f"ala2_tip3p.py: non-finite positions/forces at step {step}")
                com = (wmass[..., None] * x[wat]).sum(1) / wmass.sum(1)[:, None]
                vac_ctx.setPositions(x[:22] / NM * u.nanometer)
                sv = vac_ctx.getState(getEnergy=True, getForces=True)
                rec["x"].append(x[:22])
                rec["f"].append(f[:22])
                rec["wx"].append(com - box * np.floor(com / box))
                rec["wf"].append(f[wat].sum(1))
                rec["ev"].append(sv.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
                                 * KJ_PER_MOL)
                rec["fv"].append(np.asarray(sv.getForces(asNumpy=True).value_in_unit(
                    u.kilojoule_per_mole / u.nanometer)) * KJMOL_PER_NM)
                rec["t"].append(step * dt / 1000.0)
        meta["production_s"] += time.time() - t
        meta["production_steps"] = step
        checkpoint()
        write_outputs()
        nsd = step * dt / 1e6 / max(meta["production_s"], 1e-9) * 86400.0
        bar.update(step)
        bar.set(ns_day=f"{nsd:.1f}", frames=len(rec["t"]))
        print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] production "
              f"{step * dt / 1000:.0f} ps, {len(rec['t'])} force frames, {nsd:.1f} ns/day",
              flush=True)
    bar.close()
    print(f"done: {meta['production_ps']:.0f} ps production at {meta['production_ns_per_day']:.1f} "
          f"ns/day; wrote {out}", flush=True)


if __name__ == "__main__":
    main()
