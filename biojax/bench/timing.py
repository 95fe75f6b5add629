"""Timing and memory helpers for benchmark cases: repeated timed samples after a warm-up,
their median and spread, and peak memory (device where JAX reports it, else process RSS).

Every figure the suite reports is the median of ``repeats`` (>= 3) timed samples; a
sample is ``m`` consecutive calls of a step function whose results are waited for
(``jax.block_until_ready`` or the host loop's own synchronisation), with ``m`` chosen from
one calibration call so that a sample lasts about ``target_s`` seconds.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from typing import Callable


class Unavailable(Exception):
    """A peer or platform that is not installed or not usable here (not a failure)."""


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MB, Linux ru_maxrss)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_memory() -> dict:
    """Peak device memory (MB) of JAX's first device where the backend reports it
    (``memory_stats()['peak_bytes_in_use']``; GPUs and TPUs), else None; always the
    process peak RSS (MB)."""
    peak = None
    try:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            peak = stats["peak_bytes_in_use"] / 2**20
    except Exception:  # noqa: BLE001 - a backend without memory stats
        peak = None
    return {"peak_device_mb": peak, "peak_rss_mb": peak_rss_mb()}


def summarize(samples: list[float], work: float) -> dict:
    """Rates from sample durations (s) of ``work`` units each: the median rate and its
    spread (min, max and relative spread (max-min)/median)."""
    rates = sorted(work / s for s in samples)
    med = statistics.median(rates)
    return {"median_rate": med, "min_rate": rates[0], "max_rate": rates[-1],
            "spread": (rates[-1] - rates[0]) / med if med > 0 else float("nan"),
            "sample_seconds": [round(s, 6) for s in samples]}


def chunks_per_sample(calibration_s: float, target_s: float, cap: int = 100000) -> int:
    """How many calls of ``calibration_s`` seconds make a sample of about ``target_s``."""
    return max(1, min(cap, math.ceil(target_s / max(calibration_s, 1e-6))))


def repeat_timed(call: Callable[[], None], repeats: int, target_s: float) -> dict:
    """Time ``call`` (which must wait for its own results): a first call (compile and
    warm-up, reported as ``first_call_s``), one calibration call that sets ``calls_per_sample``,
    then ``repeats`` samples of that many calls. Returns first_call_s, calls_per_sample and
    the sample durations (s)."""
    t = time.perf_counter()
    call()
    first = time.perf_counter() - t
    t = time.perf_counter()
    call()
    m = chunks_per_sample(time.perf_counter() - t, target_s)
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(m):
            call()
        samples.append(time.perf_counter() - t)
    return {"first_call_s": first, "calls_per_sample": m, "samples": samples}


class _Enough(Exception):
    """Raised from inside Simulation.run once enough chunks are timed."""


def time_simulation(sim, repeats: int, target_s: float) -> dict:
    """Time the chunks of a biojax ``Simulation`` (``sim.cfg.steps`` must be large: the run
    is stopped once ``repeats`` samples are timed). Each chunk's results are waited for
    (``block_until_ready``); a sample is the wall time between chunk completions over
    ``m`` chunks, so the host loop's work between chunks (and any neighbor-list overflow
    rerun) counts. Returns first_call_s (the compiling first chunk), calls_per_sample and
    the sample durations (s)."""
    import jax

    if not hasattr(sim, "_chunk_fn"):
        raise RuntimeError("biojax.md.Simulation has no _chunk_fn to time chunks with")
    marks: list[float] = []
    info: dict = {}
    original = sim._chunk_fn

    def chunk_fn(*args, **kwargs):
        fn = original(*args, **kwargs)

        def timed(*a, **kw):
            if not marks and "start" not in info:
                info["start"] = time.perf_counter()
            out = jax.block_until_ready(fn(*a, **kw))
            marks.append(time.perf_counter())
            if len(marks) == 2:
                info["m"] = chunks_per_sample(marks[1] - marks[0], target_s)
            if "m" in info and len(marks) >= 2 + repeats * info["m"]:
                raise _Enough
            return out
        return timed

    sim._chunk_fn = chunk_fn
    try:
        sim.run(None)
    except _Enough:
        pass
    finally:
        sim._chunk_fn = original
    m = info.get("m")
    if m is None or len(marks) < 2 + repeats * m:
        raise RuntimeError(f"the simulation ended after {len(marks)} chunks, before "
                           f"{repeats} timed samples (raise its steps)")
    samples = [marks[1 + (k + 1) * m] - marks[1 + k * m] for k in range(repeats)]
    return {"first_call_s": marks[0] - info["start"], "calls_per_sample": m,
            "samples": samples}
