"""One progress facility for every long stage (tqdm on stderr).

``progress(total, what, enabled)`` returns a bar with ``update(done)`` (absolute count),
``set(**values)`` (short status such as a loss or ns/day) and ``close()``; it is also a
context manager. On a terminal tqdm redraws one line; in a log file (not a terminal) it
prints a line at most every ``log_every_s`` seconds, so CI logs and ``nohup`` files stay
readable. A disabled bar does nothing.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """A progress bar over ``total`` items of ``what`` (see module doc)."""

    def __init__(self, total: int | None, what: str, enabled: bool = True, unit: str = "it",
                 log_every_s: float = 10.0, stream=None):
        stream = stream or sys.stderr
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self._bar = tqdm(total=total, desc=what, unit=unit, file=stream, disable=not enabled,
                         dynamic_ncols=tty, mininterval=0.2 if tty else log_every_s,
                         ascii=not tty, leave=True)
        self._done = 0

    def update(self, done: int) -> None:
        """Report that ``done`` items (in total, not since the last call) are finished."""
        if done > self._done:
            self._bar.update(done - self._done)
            self._done = done

    def set(self, **values) -> None:
        """Show short status values after the bar (e.g. ``loss=0.1``)."""
        self._bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None, what: str, enabled: bool = True, unit: str = "it"
             ) -> Progress:
    """A :class:`Progress` bar (see module doc)."""
    return Progress(total, what, enabled, unit)
