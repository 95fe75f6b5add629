"""Count alanine-dipeptide frames per Ramachandran basin in an extxyz dataset.

    python examples/data/recipes/ala2_basins.py examples/data/ala2_xtb.extxyz

phi = C(ACE)-N-CA-C (atoms 4, 6, 8, 14), psi = N-CA-C-N(NME) (atoms 6, 8, 14, 16), 0-based
in openmmtools' alanine-dipeptide PDB order; computed from the stored positions.
Basins (degrees): C7eq/beta: phi < 0 and (psi > 50 or psi <= -150);
alphaR: phi < 0 and -150 < psi <= 50; alphaL: phi > 0 and -45 <= psi < 120;
other: phi > 0 outside alphaL (C7ax, ...).
"""

import collections
import sys

import ase.io
import numpy as np

from biojax.data.sample import dihedral_degrees

PHI, PSI = [4, 6, 8, 14], [6, 8, 14, 16]


def basin(phi: float, psi: float) -> str:
    if phi < 0:
        return "alphaR" if -150 < psi <= 50 else "C7eq/beta"
    return "alphaL" if -45 <= psi < 120 else "other (phi>0)"


def main(path: str) -> None:
    frames = ase.io.read(path, ":")
    rows = []
    for a in frames:
        phi, psi = dihedral_degrees(a.positions, PHI), dihedral_degrees(a.positions, PSI)
        rows.append((a.info.get("sample_run", "?"), basin(phi, psi)))
    energies = np.array([a.get_potential_energy() for a in frames])
    forces = np.concatenate([a.get_forces().ravel() for a in frames])
    print(f"{path}: {len(frames)} frames, {len(frames[0])} atoms")
    for name, n in sorted(collections.Counter(b for _, b in rows).items()):
        print(f"  {name:14s} {n:5d}  ({100 * n / len(rows):.1f} %)")
    print("  by starting basin of the run:")
    for (run, b), n in sorted(collections.Counter(rows).items()):
        print(f"    run {run:8s} -> {b:14s} {n:5d}")
    print(f"  energy: {energies.min():.3f} .. {energies.max():.3f} eV "
          f"(spread {energies.max() - energies.min():.3f} eV, std {energies.std():.3f} eV)")
    print(f"  |force component| max {np.abs(forces).max():.2f} eV/A, rms {forces.std():.2f} eV/A")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/data/ala2_xtb.extxyz")
