"""``biojax train`` and ``biojax evaluate``."""

from __future__ import annotations

import dataclasses
import json
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a potential on reference data",
                              description="Train a potential; writes DIR/model/ and DIR/metrics.json.")
    p.add_argument("config", help="training config (TOML)")
    p.add_argument("--train-file", help="reference data to train on (overrides [data] train_file)")
    p.add_argument("--valid-file", help="validation data (overrides [data] valid_file)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget for training")
    p.add_argument("--out", default=None, help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=_train)

    e = subparsers.add_parser("evaluate", help="energy/force errors of a model on a data file",
                              description="Print energy and force MAE/RMSE (meV, meV/Å).")
    e.add_argument("model", help="model directory written by biojax train")
    e.add_argument("data", help="labelled structures (extxyz or any ASE-readable file)")
    e.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    e.add_argument("--batch-size", type=int, default=16)
    e.set_defaults(func=_evaluate)


def _resolve(path: str, base_dir: str) -> str:
    """A data path as given, or relative to the config file when that is where it exists."""
    if not path or os.path.exists(path) or os.path.isabs(path):
        return path
    candidate = os.path.join(base_dir, path)
    return candidate if os.path.exists(candidate) else path


def _train(args) -> int:
    from biojax.train.config import load_train_config
    from biojax.train.loop import train_and_evaluate

    config = load_train_config(args.config)
    base = os.path.dirname(os.path.abspath(args.config))
    d = config.data
    data = dataclasses.replace(
        d,
        train_file=_resolve(args.train_file or d.train_file, base),
        valid_file=_resolve(args.valid_file or d.valid_file, base),
        test_file=_resolve(d.test_file, base),
        isolated_atoms=_resolve(d.isolated_atoms, base))
    training = config.training
    if args.max_minutes is not None:
        if args.max_minutes <= 0:
            from biojax.core.errors import ConfigError
            raise ConfigError(f"--max-minutes must be > 0, got {args.max_minutes}")
        training = dataclasses.replace(training, max_minutes=args.max_minutes)
    config = dataclasses.replace(config, data=data, training=training)
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    train_and_evaluate(config, out, resume=args.resume,
                                 log=lambda msg: print(msg, flush=True))
    print(f"model: {os.path.join(out, 'model')}\nmetrics: {os.path.join(out, 'metrics.json')}")
    return 0


def _evaluate(args) -> int:
    from biojax.train.evaluate import evaluate_file

    metrics = evaluate_file(args.model, args.data, batch_size=args.batch_size)
    for key, value in metrics.items():
        if isinstance(value, float):
            unit = "meV/Å" if key.startswith("forces") else (
                "meV/atom" if "per_atom" in key else "meV/Å³" if key.startswith("stress") else "meV")
            print(f"{key:24s} {value:10.3f} {unit}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(metrics, f, indent=2)
        print(f"written: {args.json_out}", file=sys.stderr)
    return 0
