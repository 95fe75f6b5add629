"""The analysis stage: ``biojax analyze CONFIG.toml [--out DIR] [--set KEY=VALUE]``."""

from __future__ import annotations

import os
import sys

from biojax.analysis.config import AnalyzeConfig as Config
from biojax.core.config import add_override_option, cli_overrides
from biojax.core.registry import stages

NAME = "analyze"


def load_config(path: str | os.PathLike, overrides=()) -> Config:
    """The analysis config in ``path`` with ``"section.key=value"`` overrides applied."""
    from biojax.analysis.config import load_config as load

    return load(path, overrides)


def run(config: Config, workdir: str | os.PathLike | None = None,
        show_progress: bool = True) -> dict:
    """Analyse the trajectories ``config`` names; write to ``workdir`` (default
    ``output.directory``) and return the summary (also written as summary.json)."""
    from biojax.analysis.pipeline import run_analysis

    return run_analysis(config, os.fspath(workdir) if workdir is not None else None,
                        show_progress)


def _analyze(args) -> int:
    cfg = load_config(args.config, cli_overrides(args, {"out": "output.directory",
                                                         "overwrite": "output.overwrite"}))
    out = cfg.output.directory
    summary = run(cfg, out, show_progress=not args.quiet)
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
    """Add the ``analyze`` subcommand to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "analyze", help="states, populations, MSM and free energies of trajectories",
        description="Turn trajectories into conformational states with populations, a "
                    "Markov state model and free energies (writes states.csv, fes.npz, "
                    "summary.json and PNG plots). The output directory is checked before "
                    "any work and locked while the analysis runs; results already in it "
                    "are only replaced with --overwrite.")
    p.add_argument("config", help="analysis TOML file")
    add_override_option(p, "cluster.k=6")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (sets output.directory; default: the config's, "
                        "relative to the config file)")
    p.add_argument("--overwrite", action="store_const", const=True, default=None,
                   help="replace the results of an earlier analysis in the output directory "
                        "(sets output.overwrite)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_analyze)


stages.register(NAME, sys.modules[__name__])
