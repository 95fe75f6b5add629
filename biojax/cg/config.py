"""Configuration of ``biojax coarse-grain``: one TOML file, one frozen dataclass.

Tables: ``[coarse_grain]`` (method, temperature, ...), ``[data]`` (the fine-grained or
already mapped frames), ``[mapping]``, ``[prior]``, ``[model]`` and ``[training]`` (as in
``biojax train``, for force matching), ``[reweighting]`` (relative entropy and DiffTRe,
see ``biojax.cg.trainer``), ``[simulate]`` (CG MD after training, as in ``biojax
simulate``; structure and model are filled in) and ``[evaluate]``. Paths are relative to
the config file. See ``examples/cg_ala2/ala2_cg.toml``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from biojax.core.config import from_dict, load, load_toml, resolve_paths, to_dict
from biojax.core.errors import ConfigError
from biojax.md.config import SimulateConfig
from biojax.train.config import TrainingConfig


@dataclasses.dataclass(frozen=True)
class CGDataConfig:
    """Reference frames: bead (or, with a [mapping], atom) coordinates and forces.

    ``coordinates``: a ``.npy`` array (frames, sites, 3) in Å or any ASE-readable
    trajectory (then forces come from it unless ``forces`` is given); ``forces``: ``.npy``
    (frames, sites, 3) in ``force_unit``; ``topology``: a PDB of the sites (names,
    elements, masses; bead systems: one atom per bead)."""

    coordinates: str = dataclasses.field(default="", metadata={"path": True})
    forces: str = dataclasses.field(default="", metadata={"path": True})
    topology: str = dataclasses.field(default="", metadata={"path": True})
    force_unit: Literal["eV/A", "kcal/mol/A", "kJ/mol/nm"] = "eV/A"
    stride: int = 1
    n_frames: int = 0   # 0: all (after stride)
    n_valid: float = 0.1
    n_test: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.stride < 1 or self.n_frames < 0:
            raise ValueError("stride must be ≥ 1 and n_frames ≥ 0")


@dataclasses.dataclass(frozen=True)
class MappingConfig:
    """Atoms → beads. ``scheme``: "none" (the data are beads already), "ca", "backbone",
    "water" (built from ``[data] topology``) or "groups" (``groups`` lists atom indices
    per bead)."""

    scheme: Literal["none", "ca", "backbone", "water", "groups"] = "none"
    groups: tuple[tuple[int, ...], ...] = ()
    center: Literal["mass", "geometry"] = "mass"
    allow_unassigned: bool = False
    # what models see as each bead's species: its central atom's element, or one type per
    # bead index (atomic numbers 1..B stand for the types; for small molecules such as
    # alanine dipeptide, where each backbone bead is chemically distinct)
    bead_types: Literal["element", "index"] = "element"
    bead_masses: tuple[float, ...] = ()   # amu: one for all beads or one per bead


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Prior terms fitted by Boltzmann inversion. ``topology = "chain"``: bonds, angles
    (and dihedrals if ``dihedrals``) along bead order; "explicit": the lists given;
    "none": no bonded prior."""

    topology: Literal["chain", "explicit", "none"] = "chain"
    bonds: tuple[tuple[int, ...], ...] = ()
    angles: tuple[tuple[int, ...], ...] = ()
    dihedral_list: tuple[tuple[int, ...], ...] = ()
    dihedrals: bool = False
    dihedral_terms: int = 3
    repulsion: bool = True
    exclusion: int = 3            # pairs at least this many bonds apart are repelled
    repulsion_percentile: float = 0.5
    repulsion_max_sigma: float = 4.5   # Å: excluded volume, not a distance restraint


@dataclasses.dataclass(frozen=True)
class CGEvaluateConfig:
    """What CG MD is compared on: dihedral features (bead quadruples, e.g. φ/ψ), a 2D grid
    of ``bins``², Ramachandran basins, and Cα RMSD / radius of gyration."""

    dihedrals: tuple[tuple[int, ...], ...] = ()
    names: tuple[str, ...] = ()
    bins: int = 20
    basins: Literal["none", "ramachandran"] = "none"
    structure_metrics: bool = False   # RMSD (to the first reference frame) and Rg
    n_blocks: int = 10


@dataclasses.dataclass(frozen=True)
class CoarseGrainConfig:
    """The whole ``biojax coarse-grain`` configuration (see module)."""

    method: Literal["prior-only", "force-matching", "relative-entropy", "difftre"] = \
        "force-matching"
    temperature_K: float = 300.0
    init_model: str = dataclasses.field(default="", metadata={"path": True})
    data: CGDataConfig = dataclasses.field(default_factory=CGDataConfig)
    mapping: MappingConfig = dataclasses.field(default_factory=MappingConfig)
    prior: PriorConfig = dataclasses.field(default_factory=PriorConfig)
    model: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"name": "schnet", "cutoff": 8.0})
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    reweighting: dict[str, Any] = dataclasses.field(default_factory=dict)
    simulate: SimulateConfig | None = None
    evaluate: CGEvaluateConfig = dataclasses.field(default_factory=CGEvaluateConfig)

    def __post_init__(self):
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0 K, got {self.temperature_K}")

    @property
    def cutoff(self) -> float:
        return float(self.model.get("cutoff", 8.0))

    @property
    def architecture(self) -> dict:
        return {k: v for k, v in self.model.items() if k != "cutoff"}


def load_cg_config(path: str | os.PathLike, overrides=()) -> CoarseGrainConfig:
    """The coarse-grain config in ``path`` with ``"section.key=value"`` overrides. The
    ``[coarse_grain]`` table's keys sit at the top of the dataclass."""
    path = os.fspath(path)
    data = load_toml(path)
    top = data.get("coarse_grain", {})
    if not isinstance(top, dict):
        raise ConfigError(f"{path}: [coarse_grain] must be a table")
    clash = sorted(set(top) & (set(data) - {"coarse_grain"}))
    if clash:
        raise ConfigError(f"{path}: {clash} given both in [coarse_grain] and at the top")
    overrides = [(o.replace("coarse_grain.", "", 1) if isinstance(o, str) else o)
                 for o in overrides]
    config = load(CoarseGrainConfig, path, overrides, flatten="coarse_grain")
    from biojax.nn.models import build_model

    build_model(config.architecture, 1, config.cutoff)  # unknown model keys, early
    if config.reweighting:  # validated now, not after force matching; files found from
        # the config's folder like every other path in it
        rw = resolve_paths(reweight_config(config), os.path.dirname(os.path.abspath(path)))
        config = dataclasses.replace(config, reweighting=to_dict(rw))
    if config.method == "difftre" and not config.reweighting:
        raise ConfigError(f"{path}: method = 'difftre' needs a [reweighting] table with "
                          "its targets")
    return config


def reweight_config(config: CoarseGrainConfig):
    """The ``[reweighting]`` table as ``biojax.cg.trainer.ReweightConfig``."""
    from biojax.cg.trainer import ReweightConfig

    return from_dict(ReweightConfig, config.reweighting, "[reweighting]")
