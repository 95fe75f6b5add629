"""Unit conversions, all taken from ``ase.units`` and written nowhere else.

biojax works in ASE units: energy eV, length Å, mass amu, time Å·√(amu/eV), forces eV/Å,
stress and pressure eV/Å³. Users give time steps in fs, temperatures in K and pressures
in bar; data in other units is converted once, where it is read. Multiply a value in the
named unit by the constant to get ASE units (``2.0 * FS`` is 2 fs in ASE time), divide to
go back (``energy / KJ_PER_MOL`` is kJ/mol).
"""

from __future__ import annotations

from ase import units as _ase

EV = 1.0                                   # eV
ANGSTROM = 1.0                             # Å
NM = 10.0 * _ase.Angstrom                  # 1 nm in Å
FS = _ase.fs                               # 1 fs in ASE time units
PS = 1000.0 * _ase.fs                      # 1 ps in ASE time units
KB = _ase.kB                               # Boltzmann constant, eV/K
BAR = _ase.bar                             # 1 bar in eV/Å³
KCAL_PER_MOL = _ase.kcal / _ase.mol        # 1 kcal/mol in eV
KJ_PER_MOL = _ase.kJ / _ase.mol            # 1 kJ/mol in eV
HARTREE = _ase.Hartree                     # 1 Hartree in eV
BOHR = _ase.Bohr                           # 1 Bohr in Å
COULOMB = _ase.Hartree * _ase.Bohr         # e²/(4π ε0) in eV·Å


def kT(temperature_K: float) -> float:
    """Thermal energy k_B T in eV for a temperature in K."""
    return KB * float(temperature_K)
