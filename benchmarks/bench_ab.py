"""Before/after: the same MD benchmark cases on two git revisions, interleaved.

    python benchmarks/bench_ab.py BEFORE_REV [AFTER_REV] [--repeats 2]

Checks out BEFORE_REV (and AFTER_REV, default the working tree) into temporary git
worktrees, then runs each case of ``bench_md.py`` (``--case``, one subprocess each, with
that tree first on PYTHONPATH) alternately on the two trees, ``--repeats`` times, so slow
drift of a shared machine hits both alike. Prints and writes
``benchmarks/results/ab.json``: per case the best and all rates of each tree and the
after/before ratio of the best rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CASES = [("lj-biojax", {"n_cells": 7, "steps": 1000}, "atom_steps_per_s"),
         ("lj-biojax", {"n_cells": 11, "steps": 400}, "atom_steps_per_s"),
         ("ala2-biojax", {"replicas": 1, "steps": 2000}, "steps_per_s"),
         ("ala2-biojax", {"replicas": 64, "steps": 200}, "aggregate_ns_per_day")]


def run_case(tree: str, name: str, args: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    proc = subprocess.run([sys.executable, os.path.join(tree, "benchmarks", "bench_md.py"),
                           "--case", name, "--args", json.dumps(args)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=1800)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{name} {args} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default=None, help="default: the working tree")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "ab.json"))
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="biojax-ab-")
    trees = {}
    for label, rev in (("before", args.before), ("after", args.after)):
        if rev is None:
            trees[label] = ROOT
            continue
        path = os.path.join(tmp, label)
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, rev],
                       check=True, capture_output=True)
        trees[label] = path
    revs = {k: subprocess.run(["git", "-C", v, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
            for k, v in trees.items()}
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "revisions": revs,
               "dirty_after": args.after is None,
               "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "cases": []}
    try:
        for name, case_args, metric in CASES:
            rates = {"before": [], "after": []}
            for _ in range(args.repeats):
                for label in ("before", "after"):
                    r = run_case(trees[label], name, case_args)
                    rates[label].append(r[metric])
            row = {"case": name, "args": case_args, "metric": metric, **rates,
                   "ratio_best": max(rates["after"]) / max(rates["before"])}
            results["cases"].append(row)
            print(f"{name} {case_args}: {metric} before {max(rates['before']):.4g}, after "
                  f"{max(rates['after']):.4g} (ratio {row['ratio_best']:.3f}; all: "
                  f"{rates})", flush=True)
    finally:
        for label, path in trees.items():
            if path != ROOT:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path],
                               capture_output=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
