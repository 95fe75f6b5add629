"""The ``biojax learn`` configuration: one TOML file.

```
[data]          initial (labelled starting frames), test_file, valid_file, n_valid, seed
[model]         as for biojax train (name, cutoff, heads = K for a shallow ensemble, ...)
[training]      as for biojax train (ensemble = K for a full ensemble, epochs, ...)
[md]            simulate settings for the exploration runs (timestep_fs, steps, replicas,
                friction_per_ps, chunk_steps, observe_every, frame_every, ...) plus
                ``temperatures`` (K, one run of ``replicas`` replicas each) and
                ``structure`` (start frames; default: the initial data)
[uncertainty]   as for biojax simulate (policy record/flag/stop, threshold eV/Å, scale,
                measure) plus ``calibrate`` (fit the scale on the validation set each
                iteration)
[select]        method fps | kmeans | random, per_iteration (labels per iteration),
                pool candidates | frames, max_uncertainty (eV/Å: an upper trust bound)
[label]         engine (gfn2-xtb, emt, openmm, module:factory), options, workers
[loop]          iterations, label_budget, time_budget_minutes, target_force_mae (meV/Å on
                the test set, else the validation set), retrain_epochs, seed
```

Everything is checked when the file is read (unknown keys, a threshold <= 0, a label
budget smaller than one selection batch, simulate keys the loop sets itself), so a long
run does not fail at its third iteration on a typo.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from biojax.core.config import from_dict, load
from biojax.core.errors import ConfigError
from biojax.train.config import TrainingConfig

# simulate keys the loop sets itself (per iteration and temperature)
_MD_RESERVED = ("model", "structure", "uncertainty", "out", "temperature_K", "classical",
                "multiscale", "overwrite", "replica_exchange")


@dataclasses.dataclass(frozen=True)
class LearnDataConfig:
    """Starting data and held-out sets (files relative to the config file)."""

    initial: str = dataclasses.field(default="", metadata={"path": True})
    test_file: str = dataclasses.field(default="", metadata={"path": True})
    valid_file: str = dataclasses.field(default="", metadata={"path": True})
    isolated_atoms: str = dataclasses.field(default="", metadata={"path": True})
    n_valid: float = 0.1  # of each iteration's data set, unless valid_file is given
    seed: int = 0

    def __post_init__(self):
        if not self.initial:
            raise ValueError("[data] initial (labelled starting frames) is required")
        if not self.valid_file and not self.n_valid > 0:
            raise ValueError("[data] n_valid must be > 0 without a valid_file")


@dataclasses.dataclass(frozen=True)
class LearnUncertaintyConfig:
    """``[uncertainty]`` of the exploration MD (see biojax.md.uncertainty), plus
    ``calibrate``: multiply the members' std by the scale fitted on the validation set
    of each iteration (maximum likelihood, biojax.learn.calibration) before comparing
    it with the threshold."""

    policy: Literal["record", "flag", "stop"] = "stop"
    threshold: float | None = None  # eV/Å
    scale: float = 1.0
    measure: Literal["max", "mean"] = "max"
    calibrate: bool = False

    def __post_init__(self):
        self.md()  # the simulate checks: threshold > 0, needed for flag/stop, scale > 0

    def md(self, scale: float | None = None):
        """The simulate-side UncertaintyConfig (with ``scale`` if given)."""
        from biojax.md.uncertainty import UncertaintyConfig

        return UncertaintyConfig(self.policy, self.threshold,
                                 self.scale if scale is None else float(scale), self.measure)


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """How each iteration's structures to label are chosen: ``method`` "fps" (farthest
    point on the model's per-atom features), "kmeans" or "random"; from ``pool``
    "candidates" (frames above the uncertainty threshold) or "frames" (every trajectory
    frame); at most ``per_iteration`` per iteration."""

    method: Literal["fps", "kmeans", "random"] = "fps"
    per_iteration: int = 20
    pool: Literal["candidates", "frames"] = "candidates"
    # eV/Å, 0: none. An upper trust bound on the candidates' scaled uncertainty: frames
    # above it are most likely unphysical (a replica about to blow up), so the selection
    # takes those below it and fills up with the least uncertain of the others only
    # when fewer than per_iteration are below it.
    max_uncertainty: float = 0.0

    def __post_init__(self):
        if self.per_iteration < 1:
            raise ValueError(f"[select] per_iteration must be >= 1, got {self.per_iteration}")
        if self.max_uncertainty < 0:
            raise ValueError(f"[select] max_uncertainty must be >= 0 eV/Å (0: none), got "
                             f"{self.max_uncertainty}")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Reference engine (biojax.data.reference.make_calculator) and worker processes
    (``workers = 0``: label in the loop's own process, for cheap engines)."""

    engine: str = "gfn2-xtb"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    workers: int = 1
    threads_per_worker: int = 1

    def __post_init__(self):
        if self.workers < 0 or self.threads_per_worker < 1:
            raise ValueError("[label] workers must be >= 0 (0: in the loop's process) and "
                             "threads_per_worker >= 1")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """When to stop: after ``iterations`` trainings, when ``label_budget`` labels (reference
    calculations, failed ones included) are spent, after ``time_budget_minutes`` (checked
    between steps; 0: none), when the force MAE reaches ``target_force_mae`` (meV/Å; 0:
    none), or when the MD produces no candidate above the threshold. ``retrain_epochs``:
    epochs of each warm-started retraining (0: [training] epochs)."""

    iterations: int = 5
    label_budget: int = 100
    time_budget_minutes: float = 0.0
    target_force_mae: float = 0.0
    retrain_epochs: int = 0
    warm_start: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"[loop] iterations must be >= 1, got {self.iterations}")
        if self.label_budget < 1:
            raise ValueError(f"[loop] label_budget must be >= 1, got {self.label_budget}")
        if self.time_budget_minutes < 0 or self.target_force_mae < 0 or self.retrain_epochs < 0:
            raise ValueError("[loop] time_budget_minutes, target_force_mae and retrain_epochs "
                             "must be >= 0")


@dataclasses.dataclass(frozen=True)
class LearnConfig:
    """The whole ``biojax learn`` configuration (see the module doc)."""

    data: LearnDataConfig = dataclasses.field(default_factory=LearnDataConfig)
    model: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"name": "painn", "cutoff": 5.0})
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    md: dict[str, Any] = dataclasses.field(default_factory=dict)
    uncertainty: LearnUncertaintyConfig = dataclasses.field(
        default_factory=LearnUncertaintyConfig)
    select: SelectConfig = dataclasses.field(default_factory=SelectConfig)
    label: LabelConfig = dataclasses.field(default_factory=LabelConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)

    @property
    def temperatures(self) -> tuple[float, ...]:
        return tuple(float(t) for t in self.md.get("temperatures", (300.0,)))

    def simulate_config(self, temperature: float, seed: int, uncertainty=None,
                        model: str | None = None):
        """The SimulateConfig of one exploration run."""
        from biojax.md.config import default_config

        md = {k: v for k, v in self.md.items() if k not in ("temperatures", "structure")}
        md.update(temperature_K=float(temperature), seed=int(seed), model=model,
                  uncertainty=uncertainty, plots=False, overwrite=True)
        return default_config(**md)


def check_config(cfg: LearnConfig, where: str) -> LearnConfig:
    """The cross-table checks (see the module doc); ConfigError naming ``where`` and the key."""
    if cfg.loop.label_budget < cfg.select.per_iteration:
        raise ConfigError(
            f"{where}: [loop] label_budget = {cfg.loop.label_budget} is smaller than one "
            f"selection batch ([select] per_iteration = {cfg.select.per_iteration})")
    bad = [k for k in cfg.md if k in _MD_RESERVED]
    if bad:
        raise ConfigError(f"{where}: [md] {', '.join(bad)}: set by the learning loop itself "
                          "(temperatures go in [md] temperatures, the uncertainty policy in "
                          "[uncertainty])")
    temps = cfg.md.get("temperatures", (300.0,))
    if (not isinstance(temps, (list, tuple)) or not temps
            or not all(isinstance(t, (int, float)) and t > 0 for t in temps)):
        raise ConfigError(f"{where}: [md] temperatures must be a list of temperatures > 0 K, "
                          f"got {temps!r}")
    try:
        cfg.simulate_config(cfg.temperatures[0], 0)
    except ConfigError as exc:
        raise ConfigError(f"{where}: [md]: {exc}") from None
    mx, thr = cfg.select.max_uncertainty, cfg.uncertainty.threshold
    if mx and (cfg.select.pool != "candidates" or thr is None or mx <= thr):
        raise ConfigError(f"{where}: [select] max_uncertainty = {mx} needs pool = "
                          f'"candidates" and must be above [uncertainty] threshold = {thr}')
    if cfg.uncertainty.policy == "record" and cfg.select.pool == "candidates":
        raise ConfigError(f'{where}: [select] pool = "candidates" needs [uncertainty] policy '
                          '"flag" or "stop" (with "record" no frame is a candidate); use '
                          'pool = "frames"')
    ensemble = cfg.training.ensemble > 1 or int(cfg.model.get("heads", 1) or 1) > 1
    if not ensemble:
        raise ConfigError(f"{where}: the loop needs an ensemble for its uncertainty: set "
                          "[training] ensemble = K or [model] heads = K (K >= 2)")
    from biojax.nn.models import build_model

    try:
        build_model({k: v for k, v in cfg.model.items() if k != "cutoff"}, 1,
                    float(cfg.model.get("cutoff", 5.0)))
    except ConfigError as exc:
        raise ConfigError(f"{where}: [model]: {exc}") from None
    from biojax.data.reference import make_calculator

    try:
        make_calculator(cfg.label.engine, None, **cfg.label.options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: [label]: {exc}") from None
    for name in ("initial", "test_file", "valid_file", "isolated_atoms"):
        path = getattr(cfg.data, name)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{where}: [data] {name}: file not found: {path}")
    if cfg.md.get("structure") and not os.path.isfile(cfg.md["structure"]):
        raise ConfigError(f"{where}: [md] structure: file not found: {cfg.md['structure']}")
    return cfg


def load_learn_config(path: str | os.PathLike, overrides=()) -> LearnConfig:
    """Read and check a learn TOML file (``"section.key=value"`` overrides applied);
    relative paths are relative to its folder."""
    path = os.fspath(path)
    cfg = load(LearnConfig, path, overrides)
    if cfg.md.get("structure"):  # a path inside a free-form table: resolve it here
        full = os.path.join(os.path.dirname(os.path.abspath(path)), cfg.md["structure"])
        cfg = dataclasses.replace(cfg, md={**cfg.md, "structure": os.path.normpath(full)})
    return check_config(cfg, path)


def config_from_dict(data: dict, where: str = "learn") -> LearnConfig:
    """A checked LearnConfig from a mapping (paths as given)."""
    return check_config(from_dict(LearnConfig, data, where), where)
