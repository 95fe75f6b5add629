"""The benchmark suite behind ``biojax bench``: workloads (``suite``), the cases they run
in child processes (``cases``, ``child``), timing (``timing``), the machine record
(``machine``) and the reports and comparisons (``report``).

    biojax bench --suite quick --out bench-results/
    biojax bench --compare cpu/results.json gpu/results.json --out cmp/
"""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    """Add the ``bench`` subcommand to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "bench", help="benchmark suite on the JAX devices present",
        description="Run benchmark workloads (Lennard-Jones MD, learned-potential MD, "
                    "training throughput, float32 vs float64), each in its own process with "
                    "a timeout, beside peers where installed (raw jax-md, OpenMM, ASE, "
                    "mlip); write DIR/results.json (after every job), results.md and "
                    "plots. --compare renders two or more results files side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suite", default="quick",
                   help="smoke, quick (minutes on a CPU), standard or full")
    p.add_argument("--out", default="bench-results", metavar="DIR", help="output directory")
    p.add_argument("--only", default=None, metavar="W1,W2",
                   help="workloads to run: lj, learned_md, training, precision, or "
                        "'module:function' (a function(suite=...) returning numbers)")
    p.add_argument("--compare", nargs="+", default=None, metavar="JSON",
                   help="compare these results files (no benchmark is run)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds per job (default: by suite)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed samples per figure, >= 3 (default: by suite)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from biojax.core.errors import ConfigError

    if args.compare is not None:
        from biojax.bench.report import compare

        for path in compare(args.compare, args.out):
            print(path)
        return 0
    from biojax.bench.suite import SUITES, parse_only, run_suite

    if args.suite not in SUITES:
        raise ConfigError(f"--suite {args.suite!r}: unknown suite; choose one of "
                          f"{', '.join(SUITES)}")
    parse_only(args.only)  # a bad name is an error before anything runs
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 s, got {args.timeout:g}")
    results = run_suite(args.suite, args.out, args.only, args.timeout, args.repeats)
    print(os.path.join(args.out, "results.md"))
    bad = [n for n, w in results["workloads"].items() if w["status"] == "failed"]
    return 1 if bad else 0
