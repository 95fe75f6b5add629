"""Training set for the FG solute model: alanine dipeptide in vacuum, AMBER ff14SB energies
and forces (the force field of the explicit-water reference, solute alone, NoCutoff).

    python examples/multiscale_ala2/fg_data.py --out runs/multiscale_ala2/fg_train.extxyz

Three sources of geometries, all labelled here or in the recipe with the same OpenMM system
(``amber14-all.xml``, the 22 atoms alone, no cutoff, no constraints):

1. the force frames of ``examples/data/ala2_tip3p/frames.npz`` (solute geometries from the
   explicit-water run; their ``solute_vacuum_energy`` / ``solute_vacuum_forces`` labels were
   computed by the recipe ``examples/data/recipes/ala2_tip3p.py``);
2. the 2000 geometries of ``examples/data/ala2_xtb.extxyz`` (ff14SB/GBn2 MD seeded in C7eq,
   β, αR and αL), relabelled here with ff14SB in vacuum, so that the model also knows the
   basins that water rarely visits but a vacuum run does (C7ax, αL);
3. ``--vacuum-md`` frames of ff14SB MD in vacuum at each of ``--vacuum-temperatures``
   (OpenMM Langevin, 1 fs, no constraints, one frame every ``--vacuum-every-ps``): the
   thermal spread, the barriers crossed at high temperature and the repulsive walls a
   network needs so that MD with it does not leave its data.

Writes extended XYZ (energy eV, forces eV/Å), one ``source`` entry per frame
(``tip3p`` or ``xtb-geometry``), ``phi``/``psi`` in degrees.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")


def vacuum_labeller():
    """``label(positions Å (22, 3)) -> (energy eV, forces eV/Å)`` for ff14SB alanine dipeptide
    in vacuum (OpenMM Reference platform: deterministic)."""
    import openmm
    import openmm.unit as u
    from openmm import app

    from biojax.core.units import KJ_PER_MOL, NM

    pdb = app.PDBFile(os.path.join(DATA, "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb"))
    ff = app.ForceField("amber14-all.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))

    def label(x):
        ctx.setPositions(np.asarray(x, float) / NM * u.nanometer)
        st = ctx.getState(getEnergy=True, getForces=True)
        e = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * KJ_PER_MOL
        f = np.asarray(st.getForces(asNumpy=True).value_in_unit(
            u.kilojoule_per_mole / u.nanometer)) * KJ_PER_MOL / NM
        return e, f

    return label, [a.element.atomic_number for a in pdb.topology.atoms()]


def vacuum_md(n_frames: int, temperature: float, every_ps: float, seed: int):
    """``n_frames`` (positions Å, energy eV, forces eV/Å) from ff14SB vacuum Langevin MD at
    ``temperature`` K (friction 1/ps, 1 fs, no constraints; 20 ps equilibration first)."""
    import openmm
    import openmm.unit as u
    from openmm import app

    from biojax.core.units import KJ_PER_MOL, NM

    pdb = app.PDBFile(os.path.join(DATA, "alanine-dipeptide-gbsa", "alanine-dipeptide.pdb"))
    system = app.ForceField("amber14-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    integ = openmm.LangevinMiddleIntegrator(temperature * u.kelvin, 1 / u.picosecond,
                                            1 * u.femtosecond)
    integ.setRandomNumberSeed(seed)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": "1"})
    ctx.setPositions(pdb.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx)
    ctx.setVelocitiesToTemperature(temperature * u.kelvin, seed)
    integ.step(20000)
    stride = max(1, int(round(every_ps * 1000)))
    out = []
    for _ in range(n_frames):
        integ.step(stride)
        st = ctx.getState(getPositions=True, getEnergy=True, getForces=True)
        x = np.asarray(st.getPositions(asNumpy=True).value_in_unit(u.nanometer)) * NM
        e = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * KJ_PER_MOL
        f = np.asarray(st.getForces(asNumpy=True).value_in_unit(
            u.kilojoule_per_mole / u.nanometer)) * KJ_PER_MOL / NM
        out.append((x, e, f))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", default=os.path.join(DATA, "ala2_tip3p", "frames.npz"))
    p.add_argument("--xtb", default=os.path.join(DATA, "ala2_xtb.extxyz"))
    p.add_argument("--vacuum-md", type=int, default=0,
                   help="frames of ff14SB vacuum MD per temperature (0: none)")
    p.add_argument("--vacuum-temperatures", type=float, nargs="+",
                   default=[300.0, 450.0, 600.0], help="K")
    p.add_argument("--vacuum-every-ps", type=float, default=0.5)
    p.add_argument("--out", required=True, help="output .extxyz")
    args = p.parse_args(argv)

    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from biojax.core.atomic import atomic_path
    from biojax.core.errors import DataError

    label, numbers = vacuum_labeller()
    frames = []
    if not os.path.isfile(args.frames):
        raise DataError(f"{args.frames}: not found (run examples/data/recipes/ala2_tip3p.py)")
    z = np.load(args.frames)
    if not np.array_equal(z["numbers"], numbers):
        raise DataError(f"{args.frames}: numbers differ from the alanine-dipeptide PDB order")
    # check the recipe's labels against this labeller on the first frame
    e0, f0 = label(z["solute_positions"][0])
    if abs(e0 - z["solute_vacuum_energy"][0]) > 1e-3 or \
            np.abs(f0 - z["solute_vacuum_forces"][0]).max() > 1e-2:
        raise DataError(f"{args.frames}: solute_vacuum_energy/forces of frame 0 differ from "
                        f"ff14SB in vacuum ({z['solute_vacuum_energy'][0]} vs {e0} eV)")
    for x, e, f in zip(z["solute_positions"], z["solute_vacuum_energy"],
                       z["solute_vacuum_forces"]):
        a = ase.Atoms(numbers=numbers, positions=x)
        a.info["source"] = "tip3p"
        a.calc = SinglePointCalculator(a, energy=float(e), forces=np.asarray(f, float))
        frames.append(a)
    n_tip3p = len(frames)
    for a0 in ase.io.read(args.xtb, ":"):
        if list(a0.numbers) != numbers:
            raise DataError(f"{args.xtb}: atom order differs from the alanine-dipeptide PDB")
        e, f = label(a0.positions)
        a = ase.Atoms(numbers=numbers, positions=a0.positions)
        a.info.update({"source": "xtb-geometry", "phi": a0.info.get("phi"),
                       "psi": a0.info.get("psi")})
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        frames.append(a)
    n_md = 0
    for k, temperature in enumerate(args.vacuum_temperatures if args.vacuum_md else []):
        for x, e, f in vacuum_md(args.vacuum_md, temperature, args.vacuum_every_ps, seed=k + 1):
            a = ase.Atoms(numbers=numbers, positions=x)
            a.info["source"] = f"vacuum-md-{temperature:g}K"
            a.calc = SinglePointCalculator(a, energy=e, forces=f)
            frames.append(a)
            n_md += 1
        print(f"vacuum MD at {temperature:g} K: {args.vacuum_md} frames", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with atomic_path(args.out) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    E = np.array([a.get_potential_energy() for a in frames])
    F = np.concatenate([a.get_forces() for a in frames])
    print(f"wrote {args.out}: {len(frames)} frames ({n_tip3p} from TIP3P force frames, "
          f"{len(frames) - n_tip3p - n_md} relabelled xTB-set geometries, {n_md} vacuum MD); "
          f"energies "
          f"{E.min():.3f} … {E.max():.3f} eV, force rms {np.sqrt(np.mean(F ** 2)):.3f} eV/Å")


if __name__ == "__main__":
    main()
