"""The training stage (``biojax train``): reference data in, a trained potential out.
Also the non-stage command ``biojax evaluate`` (errors of a model on a data file)."""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

from biojax.core.config import add_override_option, cli_overrides
from biojax.core.errors import ConfigError
from biojax.core.registry import stages
from biojax.train.config import TrainConfig as Config

NAME = "train"


def load_config(path: str | os.PathLike, overrides=()) -> Config:
    """The training config in ``path`` with ``"section.key=value"`` overrides applied."""
    from biojax.train.config import load_train_config

    return load_train_config(os.fspath(path), overrides)


def _print(msg: str) -> None:
    """A log line on stdout that does not break a progress bar on the terminal."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def run(config: Config, workdir: str | os.PathLike, *, resume: bool = False,
        log: Callable[[str], None] | None = None, progress: bool = False) -> dict:
    """Train as ``config`` says; writes ``workdir/model/``, ``workdir/metrics.json`` and
    the plots, and returns the final metrics. float64 (``[training] precision``) must
    have been enabled at process start (the CLI does it; see biojax.core.precision).
    ``progress``: a progress bar over the training steps on stderr."""
    from biojax.train.loop import train_and_evaluate

    return train_and_evaluate(config, os.fspath(workdir), resume=resume,
                              log=log or _print, progress=progress)


def _train(args) -> int:
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise ConfigError(f"--max-minutes must be > 0, got {args.max_minutes}")
    config = load_config(args.config, cli_overrides(args, {
        "train_file": "data.train_file", "valid_file": "data.valid_file",
        "max_minutes": "training.max_minutes"}))
    if config.training.precision == "float64":  # chosen once, before any JAX work
        from biojax.core.precision import enable_x64

        enable_x64()
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    from biojax.data.io import os_errors

    with os_errors("train"):
        run(config, out, resume=args.resume, progress=not args.quiet)
    print(f"model: {os.path.join(out, 'model')}\nmetrics: {os.path.join(out, 'metrics.json')}"
          f"\nplots: {os.path.join(out, 'training_curves.png')}, "
          f"{os.path.join(out, 'force_parity.png')}")
    return 0


def register(subparsers) -> None:
    """Add the ``train`` subcommand to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "train", help="train a potential on reference data",
        description="Train a potential; writes DIR/model/ and DIR/metrics.json.")
    p.add_argument("config", help="training config (TOML)")
    add_override_option(p, "training.epochs=5")
    p.add_argument("--train-file", help="reference data to train on (sets data.train_file)")
    p.add_argument("--valid-file", help="validation data (sets data.valid_file)")
    p.add_argument("--max-minutes", type=float,
                   help="wall-clock budget for training (sets training.max_minutes)")
    p.add_argument("--out", default=None, help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (training.epochs, "
                        "training.max_minutes and training.patience may change)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


# --------------------------------------------------------------------------- evaluate

def _evaluate(args) -> int:
    from biojax.core.atomic import atomic_write_text
    from biojax.data.io import check_output, os_errors
    from biojax.train.evaluate import evaluate_file

    if args.json_out:  # before the work, not after it
        check_output(args.json_out, "--json file", overwrite=args.overwrite)
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    with os_errors("evaluate"):
        metrics = evaluate_file(args.model, args.data, batch_size=args.batch_size,
                                progress=not args.quiet)
    for key, value in metrics.items():
        if isinstance(value, float):
            unit = "meV/Å" if key.startswith("forces") else (
                "meV/atom" if "per_atom" in key else "meV/Å³" if key.startswith("stress") else "meV")
            print(f"{key:24s} {value:10.3f} {unit}")
    if args.json_out:
        with os_errors("evaluate"):
            atomic_write_text(args.json_out, json.dumps(metrics, indent=2))
        print(f"written: {args.json_out}", file=sys.stderr)
    return 0


def register_evaluate(subparsers) -> None:
    """Add the ``evaluate`` subcommand (not a stage: no config file)."""
    e = subparsers.add_parser(
        "evaluate", help="energy/force errors of a model on a data file",
        description="Print energy and force MAE/RMSE (meV, meV/Å).")
    e.add_argument("model", help="model directory written by biojax train")
    e.add_argument("data", help="labelled structures (extxyz or any ASE-readable file)")
    e.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an existing --json file")
    e.add_argument("--batch-size", type=int, default=16, metavar="B",
                   help="structures per evaluated batch (default 16; memory vs speed)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_evaluate)


stages.register(NAME, sys.modules[__name__])
