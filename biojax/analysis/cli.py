"""``biojax analyze CONFIG.toml [--out DIR]``."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from biojax.analysis.config import load_config
    from biojax.analysis.pipeline import run_analysis

    cfg = load_config(args.config)
    summary = run_analysis(cfg, args.out)
    out = args.out or cfg.path(cfg.output.directory)
    print(f"analyzed {summary['n_frames']} frames into "
          f"{summary['clustering']['n_states']} states; wrote "
          f"{', '.join(summary['outputs'])} to {out}")
    for s in summary["states"]:
        print(f"  state {s['state']}: population {s['population']:.3f} ± "
              f"{s['population_error']:.3f}, centre {s['centre_fes']}")
    for r in summary["regions"]:
        print(f"  region {r['name']}: population {r['population']:.3f} ± "
              f"{r['population_error']:.3f}")
    return 0


def register(subparsers) -> None:
    """Add the ``analyze`` subcommand."""
    p = subparsers.add_parser(
        "analyze", help="features, clustering, populations, MSM and free energies of "
                        "trajectories",
        description="Turn trajectories into conformational states with populations and "
                    "free energies (writes states.csv, fes.npz, summary.json, PNG plots).")
    p.add_argument("config", help="analysis TOML file")
    p.add_argument("--out", default=None,
                   help="output directory (default: output.directory in the config, "
                        "relative to the config file)")
    p.set_defaults(func=_run)
