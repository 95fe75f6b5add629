"""The active-learning command: ``biojax learn CONFIG.toml [--out DIR] [--resume]
[--set SECTION.KEY=VALUE]`` (see biojax.learn.loop for what it does and writes, and
biojax.learn.config for the configuration)."""

from __future__ import annotations

import os
import sys

from biojax.core.config import add_override_option, cli_overrides


def _print(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def run(config_path: str, workdir: str, *, overrides=(), resume: bool = False,
        log=None, progress: bool = False) -> dict:
    """Read and check the learn config at ``config_path`` and run the loop in
    ``workdir`` (Python entry of ``biojax learn``); returns result.json's contents."""
    from biojax.learn.config import load_learn_config
    from biojax.learn.loop import run as run_loop

    cfg = load_learn_config(config_path, overrides)
    return run_loop(cfg, workdir, resume=resume, log=log or _print, progress=progress)


def _learn(args) -> int:
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    from biojax.data.io import os_errors

    with os_errors("learn"):
        result = run(args.config, out, overrides=cli_overrides(args), resume=args.resume,
                     progress=not args.quiet)
    print(f"stopped: {result['stop_reason']}\nlabels: {result['labels']}\n"
          f"final model: {result['final_model']}\nlog: {os.path.join(out, 'log.jsonl')}\n"
          f"learning curve: {os.path.join(out, 'learning_curve.png')}")
    return 0


def register(subparsers) -> None:
    """Add the ``learn`` subcommand to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "learn", help="active learning: train, explore by MD, label, retrain",
        description="Grow a training set with reference labels where an ensemble is "
                    "uncertain: train -> MD with uncertainty -> select -> label -> retrain, "
                    "until a target error or the label/time budget; one iter_NNN/ folder "
                    "per iteration in DIR.")
    p.add_argument("config", help="learn config (TOML; see biojax/learn/config.py)")
    add_override_option(p, "loop.label_budget=50")
    p.add_argument("--out", default=None, help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run in --out where it stopped")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_learn)
