"""The child process of the benchmark suite: ``python -m biojax.bench.child SPEC_JSON``.

SPEC is ``{"case": NAME or "module:function", "runs": [kwargs, ...]}``; the case runs once
per kwargs, in order, and after each a line ``RESULT {json}`` is printed and flushed, so
the parent keeps the finished runs when a later one crashes or times out. A run that
raises is reported (``status`` failed, the error's last lines) and the next one goes on;
``Unavailable`` (a peer not installed here) is reported as ``not installed``.
``python -m biojax.bench.child --machine`` prints the JAX devices and versions instead.
"""

from __future__ import annotations

import json
import sys
import traceback


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        try:
            return float(value)
        except (TypeError, ValueError):
            return str(value)


def resolve_case(name: str):
    """A case function by registered name (``biojax.bench.cases.CASES``) or import path."""
    from biojax.bench.cases import CASES
    from biojax.core.registry import import_object

    if name in CASES:
        return CASES[name]
    return import_object(name, "benchmark case")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--machine":
        from biojax.bench.machine import jax_info

        print("RESULT " + json.dumps({"index": 0, "status": "ok", "result": jax_info()}),
              flush=True)
        return 0
    spec = json.loads(argv[0])
    from biojax.bench.timing import Unavailable, device_memory

    fn = resolve_case(spec["case"])
    for i, kwargs in enumerate(spec["runs"]):
        try:
            result = fn(**kwargs)
            if not isinstance(result, dict):
                raise TypeError(f"case {spec['case']} returned {type(result).__name__}, "
                                "not a dict of numbers")
            result.setdefault("peak_rss_mb", device_memory()["peak_rss_mb"])
            line = {"index": i, "status": "ok", "result": _jsonable(result)}
        except Unavailable as exc:
            line = {"index": i, "status": "not installed", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported, and the next run goes on
            tail = traceback.format_exc().strip().splitlines()[-12:]
            line = {"index": i, "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}", "traceback": tail}
        print("RESULT " + json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
