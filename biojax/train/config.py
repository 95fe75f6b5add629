"""The training configuration: one TOML file with [data], [model] and [training] tables."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from biojax.core.config import load
from biojax.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the reference data comes from and how it is split (sizes: counts or fractions)."""

    # file names: relative to the config file's folder (see biojax.core.config)
    train_file: str = dataclasses.field(default="", metadata={"path": True})
    valid_file: str = dataclasses.field(  # empty: split from train_file
        default="", metadata={"path": True})
    test_file: str = dataclasses.field(  # optional held-out set evaluated at the end
        default="", metadata={"path": True})
    isolated_atoms: str = dataclasses.field(  # empty: reference energies by least squares
        default="", metadata={"path": True})
    # more files whose frames are all trained on (none split off), after train_file's
    # training frames: e.g. frames labelled where an earlier model's MD went
    extra_train_files: tuple[str, ...] = dataclasses.field(default=(),
                                                           metadata={"path": True})
    n_train: int = 0  # 0: all remaining frames
    n_valid: float = 0.1  # held out of train_file unless valid_file is given
    # frames of train_file held out as the test set; None (not given): none. Only a
    # value given explicitly takes test frames out of train_file, also when valid_file
    # is given; with test_file it is ignored
    n_test: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.n_valid < 0 or (self.n_test or 0) < 0 or self.n_train < 0:
            raise ValueError("n_train, n_valid and n_test must be ≥ 0")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimiser, loss and stopping. ``learning_rate`` is the peak reached after a linear
    warm-up; ``schedule`` says how it falls from there."""

    epochs: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3
    final_learning_rate_fraction: float = 0.02
    warmup_epochs: float = 2.0
    weight_decay: float = 0.0
    clip_norm: float = 10.0
    ema_decay: float = 0.99
    energy_weight: float = 1.0  # on (ΔE / N_atoms)², eV²
    forces_weight: float = 10.0  # on |ΔF|² per component, (eV/Å)²
    stress_weight: float = 0.0  # on |Δσ|² per component, (eV/Å³)²
    # [[training.loss]] tables {name, weight, options}: replace the three weights above
    loss: tuple[dict, ...] = ()
    # loss-weight schedule ("forces first, energies later", as MACE trains): at the
    # fraction switch_at of the schedule (of epochs; of max_minutes with schedule =
    # "time") the named loss terms take the weights in switch_weights, e.g.
    # {energy = 1000.0, forces = 100.0}; the best-model record restarts there, as the
    # validation loss changes meaning. 0 or {}: no switch
    switch_at: float = 0.0
    switch_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    patience: int = 30  # epochs without validation improvement before stopping
    max_minutes: float = 0.0  # wall-clock budget for training; 0: none
    # learning-rate schedule after the warm-up (see biojax.train.schedule):
    #   "cosine": cosine decay to final_learning_rate_fraction over `epochs`
    #   "plateau": multiply by plateau_factor after plateau_patience epochs without a
    #              better validation loss, down to final_learning_rate_fraction
    #   "time": cosine decay over the elapsed fraction of max_minutes (not reproducible)
    #   "auto": "plateau" with a max_minutes budget, else "cosine"
    schedule: Literal["auto", "cosine", "plateau", "time"] = "auto"
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    seed: int = 0
    precision: Literal["float32", "float64"] = "float32"
    # data-parallel training: each batch split over 1, N (the first N of jax.devices())
    # or "all" devices (every process's, see biojax.parallel), gradients summed across
    # them; batch_size must be a multiple of the device count
    devices: int | Literal["all"] = 1
    # > 1: a full ensemble of this many members (seeds seed, seed + 1, ...) trained in one
    # vmapped program and saved as one model (biojax.nn.ensemble); a shallow ensemble is
    # [model] heads = K instead
    ensemble: int = 1
    # a full ensemble's members each train on their own bootstrap resample of the training
    # set (N draws with replacement, seeded by the member's seed) instead of all of it
    bootstrap: bool = False

    def __post_init__(self):
        for name in ("epochs", "batch_size", "plateau_patience", "ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1")
        if self.bootstrap and self.ensemble < 2:
            raise ValueError("bootstrap = true resamples the data per member of a full "
                             f"ensemble: set ensemble = K >= 2 (got ensemble = {self.ensemble})")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if not 0 < self.plateau_factor < 1:
            raise ValueError("plateau_factor must be in (0, 1)")
        if not 0 < self.final_learning_rate_fraction <= 1:
            raise ValueError("final_learning_rate_fraction must be in (0, 1]")
        if self.devices != "all" and (isinstance(self.devices, bool) or self.devices < 1):
            raise ValueError(f'devices must be "all" or a number >= 1, got {self.devices!r}')
        if self.schedule == "time" and not self.max_minutes:
            raise ValueError('schedule = "time" needs a max_minutes budget')
        if min(self.energy_weight, self.forces_weight, self.stress_weight) < 0:
            raise ValueError("loss weights must be ≥ 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")
        if not 0 <= self.switch_at < 1:
            raise ValueError(f"switch_at must be in [0, 1) (a fraction of the schedule), "
                             f"got {self.switch_at}")
        if bool(self.switch_at) != bool(self.switch_weights):
            raise ValueError("a loss-weight switch needs both switch_at > 0 and "
                             "switch_weights (e.g. {energy = 1000.0, forces = 100.0})")
        if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0
               for w in self.switch_weights.values()):
            raise ValueError(f"switch_weights must be numbers ≥ 0, got {self.switch_weights}")
        default = TrainingConfig.__dataclass_fields__
        if self.loss and any(getattr(self, k) != default[k].default
                             for k in ("energy_weight", "forces_weight", "stress_weight")):
            raise ValueError("give either energy_weight/forces_weight/stress_weight or "
                             "[[training.loss]] terms, not both")

    def make_loss(self):
        """The Loss these settings describe (``biojax.train.losses``)."""
        from biojax.train import losses

        if self.loss:
            loss = losses.loss_from_config(self.loss)
        else:
            loss = losses.combine(losses.energy(self.energy_weight),
                                  losses.forces(self.forces_weight),
                                  losses.stress(self.stress_weight))
        if self.switch_weights:  # unknown term names fail now, not at the switch
            loss.with_weights(self.switch_weights)
        return loss

    def switched_loss(self):
        """The Loss after the loss-weight switch (``switch_weights`` applied)."""
        return self.make_loss().with_weights(self.switch_weights)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The whole ``biojax train`` configuration. ``model`` holds ``name``, ``cutoff`` (Å)
    and the architecture's hyperparameters (see biojax.nn.models)."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"name": "painn", "cutoff": 5.0})
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

    @property
    def cutoff(self) -> float:
        return float(self.model.get("cutoff", 5.0))

    @property
    def architecture(self) -> dict:
        return {k: v for k, v in self.model.items() if k != "cutoff"}


def load_train_config(path: str, overrides=()) -> TrainConfig:
    """Read and validate a training TOML file with ``"section.key=value"`` overrides;
    relative data paths in the file are relative to its folder."""
    config = load(TrainConfig, path, overrides)
    from biojax.nn.models import build_model

    build_model(config.architecture, 1, config.cutoff)  # validate model keys early
    if config.cutoff <= 0:
        raise ConfigError(f"{path}: [model] cutoff must be > 0 Å, got {config.cutoff}")
    return config
