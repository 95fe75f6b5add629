"""The Simulation hook protocol, with do-nothing defaults.

A hook is a host-side object the ``Simulation`` calls between jitted chunks (replica
exchange, the uncertainty monitor, the metadynamics grid-exit check; a user's own through
``Simulation(..., hooks=[...])``). Subclass ``SimulationHook`` and override only what the
hook does; any object with these methods works as well (duck typing)."""

from __future__ import annotations


class SimulationHook:
    """Do-nothing defaults for every method a Simulation calls on a hook."""

    def wrap_terms(self, terms: list) -> list:
        """The energy terms the run uses (called once, before compiling)."""
        return terms

    def setup(self, sim) -> None:
        """Called once the Simulation is built."""

    def start(self, sim, run):
        """Called at the start (or resume) of ``run``; returns the run state to use."""
        return run

    def stops(self, sim, run, obs: dict, frames, n_frames: int, out: str | None) -> dict:
        """After a chunk, before its output is written: ``{replica: last step kept}`` for
        the replicas this hook stops (``run.step`` is the chunk's first step)."""
        return {}

    def after_chunk(self, sim, run, out: str | None) -> None:
        """After a chunk's output is written, before its checkpoint."""

    def columns(self, r: int) -> dict:
        """Extra observable columns of replica ``r`` for the chunk's rows."""
        return {}

    def progress(self) -> dict:
        """Extra fields of the progress bar."""
        return {}

    def summary(self) -> dict:
        """Extra entries of the run's summary.json."""
        return {}

    def state_dict(self) -> dict:
        """What the checkpoint keeps of this hook (JSON)."""
        return {}

    def load_state_dict(self, d: dict) -> None:
        """Restore what ``state_dict`` returned (on resume)."""
