"""The sampling stage (``biojax sample``): a recipe in, a labelled extxyz dataset out.
Also the non-stage command ``biojax label`` (label existing structures)."""

from __future__ import annotations

import os
import shlex
import sys

from biojax.core.config import add_override_option, cli_overrides
from biojax.core.errors import ConfigError
from biojax.core.registry import stages
from biojax.data.sample import Recipe as Config

NAME = "sample"
DATASET = "dataset.extxyz"  # the file ``run`` writes in its workdir unless given ``out``


def load_config(path: str | os.PathLike, overrides=()) -> Config:
    """The recipe in ``path`` with ``"section.key=value"`` overrides applied."""
    from biojax.data.sample import load_recipe

    return load_recipe(path, overrides)


def run(config: Config, workdir: str | os.PathLike, *, out: str | os.PathLike | None = None,
        progress: bool = True, command: str | None = None, overwrite: bool = False) -> dict:
    """Sample and label ``config`` into ``out`` (default ``workdir/dataset.extxyz``; an
    existing file is only replaced with ``overwrite``, checked before any work).
    Returns the summary of :func:`biojax.data.sample.run_recipe` (frames, atoms, energy
    range, seconds, out)."""
    from biojax.core.rundir import check_output_dir
    from biojax.data.sample import run_recipe

    if out is None:
        check_output_dir(workdir, "sample directory")
        os.makedirs(workdir, exist_ok=True)
        out = os.path.join(workdir, DATASET)
    return run_recipe(config, out, progress=progress, command=command, overwrite=overwrite)


def _sample(args) -> int:
    overrides = cli_overrides(args, {"frames": "frames", "seed": "seed"})
    recipe = load_config(args.recipe, overrides)
    words = ["biojax", "sample", args.recipe, "--out", args.out]
    for text in args.overrides:
        words += ["--set", text]
    if args.frames is not None:
        words += ["--frames", str(args.frames)]
    if args.seed is not None:
        words += ["--seed", str(args.seed)]
    from biojax.data.io import os_errors

    with os_errors("sample"):
        summary = run(recipe, os.path.dirname(args.out) or ".", out=args.out,
                      progress=not args.quiet, command=" ".join(map(shlex.quote, words)),
                      overwrite=args.overwrite)
    print(f"wrote {summary['frames']} frames ({summary['atoms']} atoms each) to {args.out}; "
          f"energy {summary['energy_min']:.4f} .. {summary['energy_max']:.4f} eV; "
          f"{summary['seconds']:.0f} s")
    return 0


def register(subparsers) -> None:
    """Add the ``sample`` subcommand to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "sample", help="sample conformations from a recipe, labelled, into extxyz",
        description="Sample structures with a recipe (openmm-md or rattle-strain), label "
                    "them with the recipe's reference engine and write extxyz (atomically).")
    p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("--out", required=True, help="output .extxyz file")
    add_override_option(p, "rattle_strain.max_strain=0.05")
    p.add_argument("--frames", type=int, default=None, help="override the recipe's frames")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_sample)


# --------------------------------------------------------------------------- label

def _parse_option(text: str):
    if "=" not in text:
        raise ConfigError(f"--option {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    for conv in (int, float):
        try:
            return key, conv(value)
        except ValueError:
            pass
    if key == "forcefield":  # a list of XML files, comma-separated
        return key, [v for v in value.split(",") if v]
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, value


def _label(args) -> int:
    from biojax.data.io import check_output, os_errors, read_frames
    from biojax.data.reference import label_file, make_calculator

    # the output is checked before the input is read and the engine is set up
    check_output(args.output, "output file", overwrite=args.overwrite)
    options = dict(_parse_option(o) for o in args.option)
    calc = make_calculator(args.reference, base_dir=os.getcwd(), **options)
    frames = read_frames(args.input)
    with os_errors("label"):
        summary = label_file(frames, args.output, calc, args.reference,
                             compute_stress=args.stress, resume=args.resume,
                             overwrite=args.overwrite, progress=not args.quiet)
    resumed = (f" ({summary['resumed_from']} of them by an earlier run)"
               if summary["resumed_from"] else "")
    print(f"wrote {summary['frames']} labelled frames to {args.output}{resumed}")
    return 0


def register_label(subparsers) -> None:
    """Add the ``label`` subcommand (not a stage: no config file)."""
    q = subparsers.add_parser(
        "label", help="label structures with a reference calculator",
        description="Compute energy (eV), forces (eV/Å) and optionally stress (eV/Å³) for "
                    "every structure in INPUT (any ASE-readable file) and write extxyz. "
                    "Frames are appended to OUTPUT.partial as they are labelled and it is "
                    "renamed to OUTPUT at the end; after a failure or a kill, --resume "
                    "continues after the frames it holds.")
    q.add_argument("input", help="input structures (any format ase.io.read understands)")
    q.add_argument("output", help="output .extxyz file")
    q.add_argument("--reference", required=True, help="gfn2-xtb, emt or openmm")
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="calculator option, e.g. prmtop=FILE or forcefield=a.xml,b.xml "
                        "(repeatable)")
    q.add_argument("--stress", action="store_true", help="also compute stress (periodic)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    q.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the frames in OUTPUT.partial and "
                        "label the rest")
    q.add_argument("--quiet", action="store_true", help="no progress display")
    q.set_defaults(func=_label)


stages.register(NAME, sys.modules[__name__])
