"""The ``biojax`` command: one subcommand per stage, plus ``label`` and ``evaluate``.

Stages (``biojax.<pkg>.stage`` modules in the ``stages`` registry) add their own
subcommands; this file orders them, applies the global ``--x64`` flag and turns a
BiojaxError into a one-line message and exit status 1."""

from __future__ import annotations

import argparse
import os
import sys

from biojax.core.errors import BiojaxError

# the order of ``biojax --help``: stage names, and the non-stage commands' register functions
_ORDER = ("run", "sample", "label", "train", "evaluate", "simulate", "analyze",
          "coarse-grain", "backmap", "generate", "explain", "learn", "bench")
_COMMANDS = {"run": "biojax.pipeline:register",
             "label": "biojax.data.stage:register_label",
             "evaluate": "biojax.train.stage:register_evaluate",
             "backmap": "biojax.cg.backmap:register",
             "generate": "biojax.generative.stage:register",
             "explain": "biojax.generative.explain_stage:register",
             "learn": "biojax.learn.stage:register",
             "bench": "biojax.bench:register"}


# environment variables that make the CLI join a multi-process run (biojax.parallel.ENV)
_DIST_ENV = ("BIOJAX_COORDINATOR", "BIOJAX_NUM_PROCESSES", "BIOJAX_PROCESS_ID")


class _HelpFormatter(argparse.HelpFormatter):
    """Leaves room for the longest command name (``coarse-grain``) beside its help."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=20)

    def add_argument(self, action):
        super().add_argument(action)
        for sub in getattr(action, "_get_subactions", lambda: [])():
            self._action_max_length = max(self._action_max_length,
                                          len(sub.dest) + self._current_indent + 4)


def build_parser() -> argparse.ArgumentParser:
    from biojax import __version__
    from biojax.core import registry

    parser = argparse.ArgumentParser(
        prog="biojax", formatter_class=_HelpFormatter,
        description="A JAX engine for molecular simulation with machine-learned "
        "potentials: sample reference data, train, simulate, analyze, coarse-grain.",
        epilog="Errors are printed as one line naming the file and field, with exit "
        "status 1 (no traceback).")
    parser.add_argument("--version", action="version", version=f"biojax {__version__}")
    parser.add_argument("--x64", action="store_true",
                        help="compute in float64 (chosen once, before any JAX work)")
    dist = parser.add_argument_group(
        "multi-process runs (biojax.parallel; one command per host, see README)")
    dist.add_argument("--coordinator", metavar="ADDR",
                      help="HOST:PORT of process 0 (env BIOJAX_COORDINATOR)")
    dist.add_argument("--num-processes", type=int, metavar="N",
                      help="number of processes (env BIOJAX_NUM_PROCESSES)")
    dist.add_argument("--process-id", type=int, metavar="I",
                      help="this process, 0..N-1 (env BIOJAX_PROCESS_ID)")
    dist.add_argument("--distributed", action="store_true",
                      help="join a multi-process run that JAX detects itself (SLURM, ...)")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands",
        help="one of the following; 'biojax COMMAND --help' lists its options")
    stages = registry.load(registry.stages)
    for name in list(_ORDER) + [n for n in stages.names() if n not in _ORDER]:
        if name in _COMMANDS:
            registry.import_object(_COMMANDS[name], "command")(subparsers)
        elif name in stages:
            stages.get(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.x64:
            from biojax.core.precision import enable_x64

            enable_x64()
        if (args.coordinator or args.num_processes is not None or args.distributed
                or args.process_id is not None
                or any(os.environ.get(v) for v in _DIST_ENV)):
            from biojax import parallel

            parallel.initialize(args.coordinator, args.num_processes, args.process_id,
                                auto=args.distributed)
        return int(args.func(args) or 0)
    except BiojaxError as exc:
        print(f"biojax {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"biojax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
