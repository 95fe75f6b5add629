"""The ``biojax`` command. Each stage registers its own subcommand from its subpackage's
``cli`` module; this file only dispatches and turns BiojaxError into a clean exit."""

from __future__ import annotations

import argparse
import importlib
import sys

from biojax.core.errors import BiojaxError

# subcommand modules; each exposes register(subparsers) which sets ``func`` on its parser
_COMMAND_MODULES = (
    "biojax.data.cli",
    "biojax.train.cli",
    "biojax.md.cli",
    "biojax.analysis.cli",
)


def build_parser() -> argparse.ArgumentParser:
    from biojax import __version__

    parser = argparse.ArgumentParser(prog="biojax", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"biojax {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BiojaxError as exc:
        print(f"biojax {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"biojax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
