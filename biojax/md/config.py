"""Configuration of ``biojax simulate``: one dataclass, read from TOML, overridden by --set.

Users give the time step in fs, temperature in K, pressure in bar and friction in 1/ps;
``Units.from_config`` converts them once into ASE units (eV, Å, amu; time in Å·√(amu/eV)).
"""

from __future__ import annotations

import dataclasses
from typing import Literal


from biojax.core.units import BAR, FS, KB, PS
from biojax.core.config import from_dict, load
from biojax.core.errors import ConfigError
from biojax.md.uncertainty import UncertaintyConfig



@dataclasses.dataclass(frozen=True)
class ClassicalConfig:
    """A classical pair potential used instead of a trained model (``[classical]``)."""

    kind: Literal["lennard-jones", "morse"] = "lennard-jones"
    sigma: float = 3.405          # Å (LJ)
    epsilon: float = 0.0103       # eV (LJ; argon ≈ 119.8 K · k_B)
    D: float = 0.3                # eV (Morse)
    alpha: float = 1.5            # 1/Å (Morse)
    r0: float = 2.5               # Å (Morse)
    cutoff: float = 8.5           # Å
    r_onset: float | None = None  # Å; default 0.8 · cutoff


@dataclasses.dataclass(frozen=True)
class MultiscaleConfig:
    """A hybrid fine-grained-in-coarse-grained system (``[multiscale]``, built by
    ``biojax.cg.hybrid.from_config``): the region of the atomistic ``structure`` kept as
    atoms with ``fg_model`` (default: the top-level ``model`` or ``[classical]``),
    everything else mapped to beads by ``environment`` ("water": one bead per water
    molecule; "molecule"; "residue") with the CG model ``cg_model`` (a saved CGPotential
    folder, or "none"), coupled by ``coupling`` (a file from
    ``biojax.cg.hybrid.save_coupling``, or "off"). Region: ``region_atoms`` (0-based
    indices) ∪ ``region_residues`` (numbers or names), or every residue within
    ``region_within`` Å of ``site_atoms`` ∪ ``site_residues``; fixed for the run.
    ``capping``: "none" (cutting a covalent bond is an error), "residues" or "molecules"
    (extend the region to whole ones). ``region_beads``: map the region to its own beads
    too (the ONIOM subtraction of E_CG). ``bead_number``: the beads' number (default: the
    CG model's single element, else each bead's heaviest atom)."""

    region_atoms: tuple[int, ...] = ()
    region_residues: tuple[int | str, ...] = ()
    region_within: float | None = None           # Å
    site_atoms: tuple[int, ...] = ()
    site_residues: tuple[int | str, ...] = ()
    capping: Literal["none", "residues", "molecules"] = "none"
    fg_model: str | None = dataclasses.field(default=None, metadata={"path": True})
    cg_model: str | None = dataclasses.field(default=None, metadata={"path": True})
    coupling: str | None = dataclasses.field(default=None, metadata={"path": True})
    environment: Literal["water", "molecule", "residue"] = "water"
    region_beads: bool = False
    center: Literal["mass", "geometry"] = "mass"
    bead_number: int | None = None

    def __post_init__(self):
        if not (self.region_atoms or self.region_residues or self.region_within is not None):
            raise ValueError("give the region: region_atoms, region_residues or "
                             "region_within (with site_atoms or site_residues)")
        if self.region_within is not None and self.region_within <= 0:
            raise ValueError(f"region_within must be > 0 Å, got {self.region_within}")


@dataclasses.dataclass(frozen=True)
class ReplicaExchangeConfig:
    """Replica exchange (``[replica_exchange]``, run by ``biojax.sampling.exchange``): a
    ladder of rungs, each a temperature (K) and optionally a scale of the energy terms
    (Hamiltonian exchange over bias strengths). ``temperatures`` (increasing), or
    ``t_min``/``t_max``/``n`` for a geometric ladder; without either every rung is at
    the simulate ``temperature_K``. ``scales``: one factor per rung multiplying every
    energy term (the bias), e.g. [1.0, 0.5, 0.0]. Exchanges between neighbouring rungs
    are attempted every ``every`` steps (a multiple of chunk_steps), alternating even
    and odd pairs; ``seed`` seeds the acceptance draws. ``replicas`` must be a multiple
    of the number of rungs (independent ladders of consecutive replicas)."""

    temperatures: tuple[float, ...] = ()
    t_min: float | None = None
    t_max: float | None = None
    n: int | None = None
    scales: tuple[float, ...] = ()
    every: int = 1000
    seed: int = 0

    def __post_init__(self):
        geometric = (self.t_min, self.t_max, self.n)
        if self.temperatures and any(x is not None for x in geometric):
            raise ValueError("give either temperatures or t_min/t_max/n, not both")
        if any(x is not None for x in geometric) and any(x is None for x in geometric):
            raise ValueError("a geometric ladder needs all of t_min, t_max (K) and n")
        t = self.temperatures
        if t and (len(t) < 2 or any(not x > 0 for x in t)
                  or any(b <= a for a, b in zip(t, t[1:]))):
            raise ValueError(f"temperatures must be at least 2 values > 0 K, strictly "
                             f"increasing, got {list(t)}")
        if self.n is not None and (self.n < 2 or not 0 < self.t_min < self.t_max):
            raise ValueError(f"a geometric ladder needs n >= 2 and 0 < t_min < t_max, got "
                             f"n = {self.n}, t_min = {self.t_min}, t_max = {self.t_max}")
        if self.scales and len(self.scales) < 2:
            raise ValueError(f"scales must list at least 2 rungs, got {list(self.scales)}")
        if self.scales and (t or self.n) and len(self.scales) != len(self.ladder(1.0)[0]):
            raise ValueError(f"scales ({len(self.scales)}) and temperatures "
                             f"({len(self.ladder(1.0)[0])}) must have one entry per rung")
        if not (t or self.n or self.scales):
            raise ValueError("give a ladder: temperatures, t_min/t_max/n or scales")
        if self.every < 1:
            raise ValueError(f"every must be >= 1 step, got {self.every}")

    def ladder(self, temperature_K: float) -> tuple[list[float], list[float]]:
        """(temperatures in K, scales) per rung; geometric temperatures
        t_min·(t_max/t_min)^(k/(n−1)) from t_min/t_max/n."""
        if self.temperatures:
            temps = [float(x) for x in self.temperatures]
        elif self.n is not None:
            r = self.t_max / self.t_min
            temps = [float(self.t_min * r ** (k / (self.n - 1))) for k in range(self.n)]
        else:
            temps = [float(temperature_K)] * len(self.scales)
        scales = [float(x) for x in self.scales] if self.scales else [1.0] * len(temps)
        return temps, scales


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """Everything one ``biojax simulate`` run needs. See examples/md/*.toml."""

    structure: str | None = dataclasses.field(  # PDB / extxyz / any ASE-readable file
        default=None, metadata={"path": True})
    model: str | None = dataclasses.field(      # directory written by ``biojax train``
        default=None, metadata={"path": True})
    classical: ClassicalConfig | None = None
    # a fine-grained region in a coarse-grained environment (biojax.cg.hybrid); the
    # trajectory frames then hold the hybrid particles (region atoms, then beads)
    multiscale: MultiscaleConfig | None = None
    ensemble: str = "nvt-langevin"      # integrator: a registered name or "module:factory"
    timestep_fs: float = 0.5
    temperature_K: float = 300.0
    pressure_bar: float = 1.0
    steps: int = 1000
    replicas: int = 1
    replica_block: int = 0              # replicas per vmapped block; 0 = auto (see engine)
    # devices the replicas are sharded over: 1, N (the first N of jax.devices()) or "all"
    # (every device of every process, see biojax.parallel); replicas must be a multiple
    devices: int | Literal["all"] = 1
    seed: int = 0
    velocities: Literal["maxwell-boltzmann", "structure"] = "maxwell-boltzmann"
    hydrogen_mass: float = 0.0          # amu; > 0: hydrogen mass repartitioning (HMR)
    friction_per_ps: float = 1.0        # Langevin γ
    thermostat_tau_fs: float = 100.0    # Nosé–Hoover chain time scale
    barostat_tau_fs: float = 1000.0     # NPT box time scale
    chain_length: int = 3
    minimize: bool = False              # FIRE before dynamics
    minimize_steps: int = 500
    minimize_fmax: float = 0.05         # eV/Å
    # FIRE's own step control, independent of timestep_fs: its initial time step (fs, unit
    # masses as in ASE's FIRE; it grows to 10× while going downhill) and the largest
    # displacement of any atom in one step (Å)
    minimize_dt_fs: float = 1.0
    minimize_max_step: float = 0.1      # Å
    chunk_steps: int = 500              # steps per jitted chunk (checkpoint, flush, checks)
    observe_every: int = 10             # observables every K steps
    frame_every: int = 100              # trajectory frame every M steps (multiple of K)
    # extxyz/traj (ASE), or dcd/xtc (VMD, PyMOL, MDAnalysis, mdtraj; with a topology.pdb)
    trajectory_format: Literal["extxyz", "traj", "dcd", "xtc"] = "extxyz"
    write_velocities: bool = False
    write_forces: bool = False
    observables_format: Literal["csv", "jsonl", "both"] = "csv"
    neighbor_skin: float = 0.5          # Å, rebuild threshold for the neighbor list
    capacity_multiplier: float = 1.25
    initial_capacity: int | None = None  # force a (small) neighbor capacity, for tests
    blowup_temperature_factor: float = 5.0   # stop when T > factor · max(target, T0)
    # stop when the potential energy rises more than blowup_energy_kT · kT per atom above
    # its value at step 0 (kT at max(target, initial, 10 K); checked every observe_every)
    check_energy: bool = True
    blowup_energy_kT: float = 10.0
    # stop when a covalent bond of the starting structure (1.2 × the sum of covalent
    # radii) stretches beyond blowup_bond_factor × max(its starting length, the sum of
    # covalent radii); checked every step. Switch off for reactive simulations.
    check_bonds: bool = True
    blowup_bond_factor: float = 1.5
    min_distance: float = 0.5           # Å; closer atoms are "overlapping"
    # neighbor-list format: "auto" takes the model's preference (Dense for pair
    # potentials), else "ordered-sparse" (each pair once)
    neighbor_format: Literal["auto", "dense", "sparse", "ordered-sparse"] = "auto"
    energy_terms: tuple[dict, ...] = ()  # [[energy_terms]] {name, options}: restraints, biases
    observables: tuple[dict, ...] = ()   # [[observables]] {name, label?, options}
    # [[bias]] {name, label?, cv = [...], options}: restraints, walls, metad, opes
    # (biojax.sampling.bias)
    bias: tuple[dict, ...] = ()
    # replica exchange between chunks (parallel tempering, scaled-bias ladders)
    replica_exchange: ReplicaExchangeConfig | None = None
    # ensemble force uncertainty in the loop: record, flag or stop (biojax.md.uncertainty)
    uncertainty: UncertaintyConfig | None = None
    max_timestep_fs: float = 20.0
    out: str = dataclasses.field(default="md_run", metadata={"path": True})  # output folder
    overwrite: bool = False             # replace the results of an earlier run in out
    plots: bool = True                  # energy.png and temperature.png in out

    def __post_init__(self):
        check = [
            (self.timestep_fs > 0, f"timestep_fs must be > 0 fs, got {self.timestep_fs}"),
            (self.timestep_fs <= self.max_timestep_fs,
             f"timestep_fs = {self.timestep_fs} fs is absurd (limit max_timestep_fs = "
             f"{self.max_timestep_fs} fs; atomistic MD uses 0.5–2 fs)"),
            (self.temperature_K > 0 or self.ensemble == "nve",
             f"temperature_K must be > 0 K, got {self.temperature_K}"),
            (self.temperature_K >= 0, f"temperature_K must be >= 0 K, got {self.temperature_K}"),
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.replicas >= 1, f"replicas must be >= 1, got {self.replicas}"),
            (self.devices == "all" or (not isinstance(self.devices, bool)
                                        and isinstance(self.devices, int)
                                        and self.devices >= 1),
             f'devices must be "all" or a number >= 1, got {self.devices!r}'),
            (not isinstance(self.devices, int) or self.devices < 1
             or self.replicas % self.devices == 0,
             f"replicas = {self.replicas} cannot be split evenly over devices = "
             f"{self.devices}; use a multiple of {self.devices}"),
            (self.replica_block >= 0, f"replica_block must be >= 0 (0 = auto), got "
                                      f"{self.replica_block}"),
            (self.observe_every >= 1, "observe_every must be >= 1"),
            (self.frame_every % self.observe_every == 0,
             f"frame_every ({self.frame_every}) must be a multiple of observe_every "
             f"({self.observe_every})"),
            (self.chunk_steps % self.frame_every == 0,
             f"chunk_steps ({self.chunk_steps}) must be a multiple of frame_every "
             f"({self.frame_every})"),
            (self.hydrogen_mass == 0 or self.hydrogen_mass >= 1.0,
             f"hydrogen_mass must be 0 (element masses) or >= 1 amu, got "
             f"{self.hydrogen_mass}"),
            (self.friction_per_ps > 0, "friction_per_ps must be > 0"),
            (self.capacity_multiplier >= 1.0, "capacity_multiplier must be >= 1"),
            (self.blowup_temperature_factor > 1.0, "blowup_temperature_factor must be > 1"),
            (self.blowup_energy_kT > 0, f"blowup_energy_kT must be > 0 (kT per atom), got "
                                        f"{self.blowup_energy_kT}"),
            (self.blowup_bond_factor > 1.0, f"blowup_bond_factor must be > 1 (× the bond "
                                            f"length), got {self.blowup_bond_factor}"),
            (self.minimize_dt_fs > 0, f"minimize_dt_fs must be > 0 fs, got "
                                      f"{self.minimize_dt_fs}"),
            (self.minimize_max_step > 0, f"minimize_max_step must be > 0 Å, got "
                                         f"{self.minimize_max_step}"),
        ]
        for ok, message in check:
            if not ok:
                raise ValueError(message)
        rex = self.replica_exchange
        if rex is not None:
            rungs = len(rex.ladder(self.temperature_K)[0])
            if self.replicas % rungs:
                raise ValueError(f"replica_exchange: replicas = {self.replicas} is not a "
                                 f"multiple of the {rungs} rungs of the ladder")
            if rex.every % self.chunk_steps:
                raise ValueError(f"replica_exchange.every = {rex.every} must be a multiple "
                                 f"of chunk_steps = {self.chunk_steps} (exchanges happen "
                                 "between chunks)")
            if self.ensemble in ("nve", "npt"):
                raise ValueError(f"replica_exchange needs a fixed-volume thermostat "
                                 f"(nvt-langevin or nvt-nose-hoover), not {self.ensemble!r}")


@dataclasses.dataclass(frozen=True)
class Units:
    """Run parameters in ASE units."""

    dt: float           # Å·√(amu/eV)
    kT: float           # eV
    pressure: float     # eV/Å³
    gamma: float        # 1/time unit
    tau_thermostat: float
    tau_barostat: float

    @classmethod
    def from_config(cls, cfg: SimulateConfig) -> "Units":
        """Convert fs, K, bar and 1/ps to ASE units (done once, here)."""
        return cls(dt=cfg.timestep_fs * FS,
                   kT=cfg.temperature_K * KB,
                   pressure=cfg.pressure_bar * BAR,
                   gamma=cfg.friction_per_ps / PS,
                   tau_thermostat=cfg.thermostat_tau_fs * FS,
                   tau_barostat=cfg.barostat_tau_fs * FS)


def load_config(path: str, overrides=()) -> SimulateConfig:
    """Read a simulate config from TOML (top level or a ``[simulate]`` table), with
    ``"key=value"`` overrides; relative paths are relative to the file's folder."""
    return load(SimulateConfig, path, overrides, table="simulate")


def default_config(**overrides) -> SimulateConfig:
    """A SimulateConfig from keyword arguments, with the same checks as a TOML file."""
    try:
        return from_dict(SimulateConfig, overrides, where="simulate")
    except ConfigError:
        raise
