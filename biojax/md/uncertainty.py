"""Ensemble force uncertainty inside the jitted MD loop, and what a run does about it.

The ``[uncertainty]`` table of a simulate config (the model must be an ensemble,
``biojax.nn.ensemble``) adds the observable ``force_uncertainty`` (eV/Å): ``scale`` ×
the max (or mean, ``measure``) over atoms of the per-atom force std of the members,
computed inside the compiled chunk every ``observe_every`` steps, per replica. The policy:

- ``"record"``: only the observable.
- ``"flag"``: also keep every trajectory frame above ``threshold`` as a candidate for
  labelling, in ``OUT/candidates.extxyz`` (``info``: replica, step, force_uncertainty).
- ``"stop"``: as ``"flag"``, and a replica whose uncertainty exceeds the threshold stops
  at that record: its observables and frames up to that step are kept, it is frozen
  (time step 0) while the other replicas go on, and the run ends when all have stopped.

Candidates are trajectory frames (``frame_every``): with ``frame_every = observe_every``
every record above the threshold is a candidate. What was stopped and how much of the
candidates file belongs to a checkpoint is kept in the checkpoint, so a killed run resumes
with the same replicas stopped and no duplicate candidates.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Literal

import numpy as np

from biojax.core.errors import ConfigError
from biojax.md.hooks import SimulationHook

CANDIDATES_FILE = "candidates.extxyz"
OBSERVABLE = "force_uncertainty"


@dataclasses.dataclass(frozen=True)
class UncertaintyConfig:
    """``[uncertainty]``: ``policy`` "record" | "flag" | "stop"; ``threshold`` (eV/Å, on
    the scaled measure; required for flag and stop, > 0); ``scale``: calibration factor
    on the raw member std (``biojax.learn.calibration.fit_scale``); ``measure``: "max" or
    "mean" of the per-atom force std over the atoms."""

    policy: Literal["record", "flag", "stop"] = "record"
    threshold: float | None = None
    scale: float = 1.0
    measure: Literal["max", "mean"] = "max"

    def __post_init__(self):
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"threshold must be > 0 eV/Å (a force uncertainty), got "
                             f"{self.threshold}")
        if self.policy != "record" and self.threshold is None:
            raise ValueError(f'policy = "{self.policy}" needs a threshold (eV/Å, > 0)')
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


class UncertaintyMonitor(SimulationHook):
    """The host side of a run's uncertainty policy (see the module docstring), a
    Simulation hook: ``observables`` ({"force_uncertainty": fn(state, **kw)}) recorded
    with the others; ``stops(sim, run, obs, frames, n_frames, out)`` → ``{replica: last
    step kept}`` for the replicas it stops in a chunk (called before the chunk's output
    is written); ``stopped`` (every replica stopped so far) and the candidates file's
    length are kept in the checkpoint (``state_dict``), so a resumed run continues with
    the same replicas stopped and no duplicate candidates."""

    def __init__(self, cfg: UncertaintyConfig, potential, displacement_fn: Callable,
                 numbers):
        self.cfg = cfg
        spread = potential.spread_fn(displacement_fn, numbers)
        key = "force_std_max" if cfg.measure == "max" else "force_std_mean"
        scale = float(cfg.scale)
        self.observables = {OBSERVABLE: lambda state, **kw: scale * spread(
            state.position, **kw)[key]}
        self.stopped: dict[int, int] = {}
        self.n_candidates = 0
        self.out: str | None = None
        self._truncate_to: int | None = 0  # a fresh run: drop an earlier run's candidates

    # ---------------------------------------------------------------- the hook protocol
    def progress(self) -> dict:
        return {"stopped": len(self.stopped)} if self.cfg.policy == "stop" else {}

    def state_dict(self) -> dict:
        path = None if self.out is None else os.path.join(self.out, CANDIDATES_FILE)
        size = os.path.getsize(path) if path is not None and os.path.exists(path) else 0
        if self._truncate_to is not None:  # not written to yet since a resume
            size = self._truncate_to
        return {"stopped": {str(k): int(v) for k, v in self.stopped.items()},
                "candidates": self.n_candidates, "candidates_bytes": int(size)}

    def load_state_dict(self, d: dict) -> None:
        self.stopped = {int(k): int(v) for k, v in d["stopped"].items()}
        self.n_candidates = int(d["candidates"])
        self._truncate_to = int(d["candidates_bytes"])

    def summary(self) -> dict:
        return {"uncertainty": {
            "policy": self.cfg.policy, "threshold": self.cfg.threshold,
            "scale": self.cfg.scale, "measure": self.cfg.measure,
            "stopped_replicas": {str(k): v for k, v in sorted(self.stopped.items())},
            "candidates": self.n_candidates,
            "candidates_file": None if self.cfg.policy == "record" else CANDIDATES_FILE}}

    # ---------------------------------------------------------------- per chunk
    def stops(self, sim, run, obs: dict, frames: dict, n_frames: int, out: str | None
              ) -> dict:
        """Append this chunk's candidate frames (policy flag/stop) and return the
        replicas to stop ``{r: last step kept}`` (policy stop): a replica stops at its
        first record above the threshold. ``run.step`` is the chunk's first step."""
        cfg = self.cfg
        self.out = out
        path = None if out is None else os.path.join(out, CANDIDATES_FILE)
        if path is not None and self._truncate_to is not None:
            if os.path.exists(path):
                with open(path, "r+b") as f:
                    f.truncate(self._truncate_to)
            self._truncate_to = None
        if cfg.policy == "record":
            return {}
        K = sim.cfg.observe_every
        per_frame = sim.cfg.frame_every // K
        values = np.asarray(obs[OBSERVABLE])  # (R, records)
        halted, found = {}, []
        for r in range(values.shape[0]):
            if r in self.stopped:
                continue
            above = np.flatnonzero(values[r] > cfg.threshold)
            last = None
            if cfg.policy == "stop" and above.size:
                last = run.step + (int(above[0]) + 1) * K
                halted[r] = last
            for f in range(n_frames):
                j = (f + 1) * per_frame - 1
                step = run.step + (j + 1) * K
                if values[r, j] > cfg.threshold and (last is None or step <= last):
                    atoms = sim._frame(frames, obs, r, f, j, step)
                    atoms.info.update(replica=r, force_uncertainty=float(values[r, j]))
                    found.append(atoms)
        if found and path is not None:
            import ase.io

            with open(path, "a") as f:
                ase.io.write(f, found, format="extxyz")
                f.flush()
                os.fsync(f.fileno())
        self.n_candidates += len(found)
        self.stopped.update(halted)
        return halted


def monitor_from_config(config, potential, displacement_fn: Callable, numbers
                        ) -> UncertaintyMonitor | None:
    """The monitor a simulate config's ``[uncertainty]`` table asks for (None without
    one); ConfigError when the model is not an ensemble."""
    cfg = getattr(config, "uncertainty", None)
    if cfg is None:
        return None
    from biojax.nn.ensemble import is_ensemble

    if not is_ensemble(potential):
        raise ConfigError("[uncertainty] needs an ensemble model (trained with [training] "
                          "ensemble = K or [model] heads = K); this model is a single one")
    if cfg.policy == "stop" and getattr(config, "replica_exchange", None) is not None:
        raise ConfigError('[uncertainty] policy = "stop" cannot be combined with '
                          "[replica_exchange] (a stopped replica would hold an exchanged "
                          'configuration); use policy = "flag"')
    return UncertaintyMonitor(cfg, potential, displacement_fn, numbers)
