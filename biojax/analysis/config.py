"""Configuration of ``biojax analyze``: frozen dataclasses read from TOML by
``biojax.core.config.from_dict`` (unknown keys are errors that list the valid ones).

Relative paths in the file are relative to the directory of the config file; they are
resolved when the file is loaded (``biojax.core.config.load``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

from biojax.core.config import load
from biojax.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
    """paths: trajectory files (ASE-readable, .npy/.npz in Å, DCD/XTC via mdtraj);
    topology: PDB (or ASE-readable) file; stride: keep every n-th frame;
    frame_interval_fs: time between consecutive frames of the files in fs (for a biojax
    simulation: frame_every × timestep_fs); when given, lag times and timescales are also
    reported, and plotted, in ps or ns (otherwise in frames)."""

    paths: tuple[str, ...] = dataclasses.field(metadata={"path": True})
    topology: str | None = dataclasses.field(default=None, metadata={"path": True})
    stride: int = 1
    frame_interval_fs: float | None = None

    def __post_init__(self):
        if not self.paths:
            raise ValueError("'paths' must list at least one trajectory file")
        if self.stride < 1:
            raise ValueError(f"'stride' must be >= 1, got {self.stride}")
        if self.frame_interval_fs is not None and not self.frame_interval_fs > 0:
            raise ValueError(f"'frame_interval_fs' must be > 0 fs, got "
                             f"{self.frame_interval_fs}")


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Atom selection: AND across keys, OR within a list."""

    indices: tuple[int, ...] | None = None
    elements: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None
    resnames: tuple[str, ...] | None = None
    resids: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """One feature block. kind:
    backbone_dihedrals (angles from phi/psi/chi1, needs a topology);
    dihedrals (atoms = [[i, j, k, l], ...]); distances (atoms = pairs, or all pairs of
    selection); contacts (as distances, 1 if closer than cutoff Å);
    aligned_coordinates (selection, Kabsch-aligned to reference); rmsd (selection);
    or a user feature by import path "module:function" (biojax.core.registry.features).
    reference: structure file for alignment/RMSD (default: first frame)."""

    kind: str
    angles: tuple[str, ...] = ("phi", "psi")
    atoms: tuple[tuple[int, ...], ...] | None = None
    names: tuple[str, ...] | None = None
    selection: SelectionConfig | None = None
    cutoff: float = 8.0
    reference: str | None = dataclasses.field(default=None, metadata={"path": True})

    def __post_init__(self):
        from biojax.core.registry import features, resolve

        resolve(features, self.kind)  # an unknown kind lists the registered ones


@dataclasses.dataclass(frozen=True)
class ReduceConfig:
    """Dimensionality reduction of the (angle-encoded) features; lag in frames (TICA)."""

    method: Literal["none", "pca", "tica"] = "pca"
    n_components: int = 2
    lag: int = 1


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Clustering; ``space`` picks the encoded features or the reduced coordinates.
    ``scan_k`` lists k values for which inertia and silhouette are reported."""

    method: Literal["kmeans", "minibatch_kmeans", "regspace"] = "kmeans"
    k: int = 4
    n_init: int = 10
    max_iter: int = 300
    tol: float = 1e-4
    seed: int = 0
    dmin: float = 0.5
    max_centers: int = 1000
    batch_size: int = 4096
    n_steps: int = 300
    space: Literal["features", "reduced"] = "features"
    scan_k: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class MSMConfig:
    """Markov state model: ``lag`` (frames) for the model, ``lags`` for implied
    timescales, ``n_timescales`` slowest processes reported."""

    enabled: bool = True
    lag: int = 1
    lags: tuple[int, ...] = (1, 2, 5, 10, 20)
    n_timescales: int = 3


@dataclasses.dataclass(frozen=True)
class RegionConfig:
    """A named region of the FES plane: union of boxes [[lo, hi], [lo, hi]] (FES units)."""

    name: str
    boxes: tuple[tuple[tuple[float, ...], ...], ...]


@dataclasses.dataclass(frozen=True)
class FESConfig:
    """Free-energy surface on one or two features (raw feature names, a unique prefix
    such as "phi", or "pc1"/"tic2" for reduced coordinates). Angles are shown in
    ``angle_unit``; the plot's colour bar in ``energy_unit`` (kJ/mol, kcal/mol or kT).
    ``regions`` report populations and free energies of named basins.
    ``log_weights``: per-frame log weights for biased runs, read from the
    ``observables.csv`` next to each trajectory (rows at the frames' steps): "auto" uses
    the column ``bias_logw`` when every trajectory's observables have it (written by
    ``[[bias]]`` runs, ``biojax.sampling``), "none" never weights, any other value names
    the column (an error if absent). Weights w ∝ exp(log w) then enter the surface and
    the region populations (state populations and the MSM stay unweighted)."""

    features: tuple[str, ...] = ()
    log_weights: str = "auto"
    bins: int = 60
    temperature: float = 300.0
    n_blocks: int = 10
    n_bootstrap: int = 200
    angle_unit: Literal["degree", "radian"] = "degree"
    energy_unit: Literal["kJ/mol", "kcal/mol", "kT"] = "kJ/mol"
    regions: tuple[RegionConfig, ...] = ()


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """directory: where the outputs go (checked before work starts, locked while the
    analysis runs); overwrite: replace the results of an earlier analysis there (otherwise
    that is an error); plots: write the PNG plots."""

    directory: str = dataclasses.field(default="analysis", metadata={"path": True})
    plots: bool = True
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """The whole ``biojax analyze`` configuration."""

    trajectory: TrajectoryConfig
    features: tuple[FeatureConfig, ...]
    reduce: ReduceConfig = ReduceConfig()
    cluster: ClusterConfig = ClusterConfig()
    msm: MSMConfig = MSMConfig()
    fes: FESConfig = FESConfig()
    output: OutputConfig = OutputConfig()
    encode_angles: bool = True

    def path(self, p: str) -> str:
        """``p`` itself: paths are resolved when the config is loaded (kept for callers)."""
        return p


def load_config(path: str | os.PathLike, overrides=()) -> AnalyzeConfig:
    """Read and validate an analysis TOML file with ``"section.key=value"`` overrides."""
    cfg = load(AnalyzeConfig, path, overrides)
    if not cfg.features:
        raise ConfigError(f"{os.fspath(path)}: at least one [[features]] table is required")
    return cfg
