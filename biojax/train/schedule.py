"""Learning-rate schedules, computed on the host and passed to the jitted step.

Every schedule starts with a linear warm-up from 1 % of ``learning_rate`` to
``learning_rate`` over ``warmup_epochs``; after it:

- ``cosine``: cosine decay to ``learning_rate * final_learning_rate_fraction`` at the last
  step of ``epochs``. The rate of a step depends only on the step and the current
  settings, so resuming with another ``epochs`` continues on the schedule of the new
  epoch count as if the run had been started with it: at the step where it resumes the
  rate jumps to that schedule's value (up when epochs are added, a warm restart; down
  when they are removed), and a run resumed during the warm-up is bit-identical to one
  started with the new count. A resume with unchanged ``epochs`` gives the rates of an
  uninterrupted run, so the results are bit-identical.
- ``plateau``: the rate stays at ``learning_rate`` and is multiplied by
  ``plateau_factor`` whenever ``plateau_patience`` epochs pass without a better
  validation loss (never below the final value). It depends only on validation losses,
  so it is deterministic, resumable and independent of ``epochs`` and of the machine:
  the choice for a wall-clock budget (``schedule = "auto"`` with ``max_minutes``).
- ``time``: cosine decay over the elapsed fraction of the ``max_minutes`` budget
  (the rate of each epoch is set from the training time spent before it). It uses the
  whole budget on any machine, but its numbers depend on the machine's speed and load:
  runs are not bit-reproducible, and a resumed run differs from an uninterrupted one.

The loss-weight switch (``switch_at``, ``switch_weights``) follows the same clock:
:func:`switch_due` says whether the epoch about to run trains with the switched weights.

The schedule's state (its kind, fixed when a run starts, and the plateau rate) is a small
JSON dict stored in the training checkpoint.
"""

from __future__ import annotations

import math


def resolve_kind(cfg) -> str:
    """The schedule a new run uses: ``cfg.schedule``, with "auto" → "plateau" under a
    ``max_minutes`` budget, else "cosine"."""
    if cfg.schedule != "auto":
        return cfg.schedule
    return "plateau" if cfg.max_minutes else "cosine"


def _warmup(cfg, steps_per_epoch: int) -> tuple[int, int]:
    total = max(cfg.epochs * steps_per_epoch, 2)
    return max(min(int(cfg.warmup_epochs * steps_per_epoch), total - 1), 0), total


def new_state(cfg) -> dict:
    """The schedule state at step 0."""
    return {"kind": resolve_kind(cfg), "lr": cfg.learning_rate, "since": 0}


def learning_rate(state: dict, cfg, step: int, steps_per_epoch: int,
                  elapsed_fraction: float = 0.0) -> float:
    """The learning rate of optimiser step ``step`` (0-based)."""
    peak = cfg.learning_rate
    end = peak * cfg.final_learning_rate_fraction
    warmup, total = _warmup(cfg, steps_per_epoch)
    if step < warmup:
        return peak * 0.01 + (peak - peak * 0.01) * step / warmup
    kind = state["kind"]
    if kind == "plateau":
        return state["lr"]
    if kind == "time":
        frac = elapsed_fraction
    else:
        frac = (step - warmup) / max(total - warmup, 1)
    frac = min(max(frac, 0.0), 1.0)
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


def after_epoch(state: dict, cfg, improved: bool, step: int, steps_per_epoch: int
                ) -> str | None:
    """Plateau rule, applied after each epoch's validation (nothing for other kinds);
    returns a sentence for the log when the rate falls."""
    if state["kind"] != "plateau" or step < _warmup(cfg, steps_per_epoch)[0]:
        return None
    floor = cfg.learning_rate * cfg.final_learning_rate_fraction
    state["since"] = 0 if improved else state["since"] + 1
    if state["since"] >= cfg.plateau_patience and state["lr"] > floor:
        state["lr"] = max(state["lr"] * cfg.plateau_factor, floor)
        state["since"] = 0
        return (f"learning rate reduced to {state['lr']:.3g} ({cfg.plateau_patience} epochs "
                "without a better validation loss)")
    return None


def switch_due(state: dict, cfg, epoch: int, elapsed_fraction: float = 0.0) -> bool:
    """Whether epoch ``epoch`` (1-based) trains with the switched loss weights: from the
    first epoch that starts at or after ``switch_at`` of the schedule (of ``epochs``;
    of the ``max_minutes`` budget for the "time" kind). Never without ``switch_weights``."""
    if not cfg.switch_weights or cfg.switch_at <= 0:
        return False
    if state["kind"] == "time":
        return elapsed_fraction >= cfg.switch_at
    return (epoch - 1) >= cfg.switch_at * cfg.epochs
