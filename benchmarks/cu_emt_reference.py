"""The EMT reference for examples/copper.toml: the lattice constant of fcc copper under
ASE's EMT at 0 K (equation-of-state fit) and at 300 K, 1 bar (isotropic NPT MD with ASE
alone: Langevin at 300 K, and the box rescaled toward zero pressure by a Berendsen-type
isotropic barostat, ``ase.md.nptberendsen.NPTBerendsen``), on the same 3×3×3 conventional
cell (108 atoms) the example simulates and on a 4×4×4 one (256 atoms).

    python3 benchmarks/cu_emt_reference.py            # about 2 minutes on 2 cores

Nothing here uses biojax: it is the yardstick the copper example is measured against.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary


def lattice_0K() -> float:
    """EOS fit of E(V) of the 4-atom cubic cell: a0 in Å."""
    vols, energies = [], []
    for a in np.linspace(3.50, 3.70, 11):
        atoms = bulk("Cu", "fcc", a=a, cubic=True)
        atoms.calc = EMT()
        vols.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    v0, _, _ = EquationOfState(vols, energies).fit()
    return (v0) ** (1.0 / 3.0)


def lattice_T(a0: float, repeat: int, temperature: float = 300.0, steps: int = 20000,
              seed: int = 0) -> dict:
    """Mean cubic lattice constant (Å) of EMT Cu at ``temperature`` and 1 bar from ASE NPT
    MD (2 fs); the first quarter of the run is equilibration."""
    atoms = bulk("Cu", "fcc", a=a0, cubic=True).repeat(repeat)
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature,
                                 rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = NPTBerendsen(atoms, timestep=2.0 * units.fs, temperature_K=temperature,
                       pressure_au=1.0 * units.bar, taut=100 * units.fs,
                       taup=1000 * units.fs, compressibility_au=7.0e-7 / units.bar)
    n = len(atoms)
    samples = []

    def record():
        samples.append((atoms.get_volume() / n * 4) ** (1.0 / 3.0))

    dyn.attach(record, interval=10)
    dyn.run(steps)
    a = np.array(samples[len(samples) // 4:])
    blocks = np.array_split(a, 10)
    means = [b.mean() for b in blocks]
    return {"atoms": n, "a_mean_A": float(a.mean()),
            "a_sem_A": float(np.std(means, ddof=1) / np.sqrt(len(means))),
            "steps": steps, "timestep_fs": 2.0}


def main() -> int:
    a0 = lattice_0K()
    out = {"a_0K_A": a0}
    for rep in (3, 4):
        out[f"T300_{rep}x{rep}x{rep}"] = lattice_T(a0, rep, steps=10000)
    out["thermal_expansion_percent_108"] = 100 * (out["T300_3x3x3"]["a_mean_A"] / a0 - 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
