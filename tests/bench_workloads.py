"""User workloads for tests/test_bench.py, named by import path ``bench_workloads:NAME``
(tests/ is put on PYTHONPATH): one that works, one that raises, one that hangs."""

import time


def fine(suite: str) -> dict:
    """A workload that measures something trivial: a positive rate."""
    t = time.perf_counter()
    total = sum(i * i for i in range(200000))
    return {"items_per_s": 200000 / (time.perf_counter() - t), "checksum": total % 997}


def broken(suite: str) -> dict:
    """A workload that fails."""
    raise RuntimeError(f"deliberately broken workload (suite {suite})")


def hangs(suite: str) -> dict:
    """A workload that never finishes in the test's timeout."""
    time.sleep(600)
    return {}
