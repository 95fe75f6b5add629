"""``biojax sample`` and ``biojax label``: make and label reference datasets (extxyz)."""

from __future__ import annotations

import os
import shlex

from biojax.core.errors import ConfigError


def _sample(args) -> int:
    from biojax.data.sample import load_recipe, run_recipe

    recipe = load_recipe(args.recipe, frames=args.frames, seed=args.seed)
    words = ["biojax", "sample", args.recipe, "--out", args.out]
    if args.frames is not None:
        words += ["--frames", str(args.frames)]
    if args.seed is not None:
        words += ["--seed", str(args.seed)]
    summary = run_recipe(recipe, args.out, base_dir=os.path.dirname(os.path.abspath(args.recipe)),
                         progress=not args.quiet, command=" ".join(map(shlex.quote, words)))
    print(f"wrote {summary['frames']} frames ({summary['atoms']} atoms each) to {args.out}; "
          f"energy {summary['energy_min']:.4f} .. {summary['energy_max']:.4f} eV; "
          f"{summary['seconds']:.0f} s")
    return 0


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
    from biojax.data.io import read_frames
    from biojax.data.reference import label, make_calculator
    from biojax.data.sample import write_extxyz_atomic

    options = dict(_parse_option(o) for o in args.option)
    calc = make_calculator(args.reference, base_dir=os.getcwd(), **options)
    frames = read_frames(args.input)
    out = label(frames, calc, compute_stress=args.stress, progress=not args.quiet,
                what=f"label {args.reference}")
    for atoms in out:
        atoms.info["reference"] = args.reference
    write_extxyz_atomic(out, args.output)
    print(f"wrote {len(out)} labelled frames to {args.output}")
    return 0


def register(subparsers) -> None:
    """Add the ``sample`` and ``label`` subcommands to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "sample", help="sample conformations from a recipe and label them into extxyz",
        description="Sample structures with a recipe (openmm-md or rattle-strain), label "
                    "them with the recipe's reference engine and write extxyz (atomically).")
    p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("--out", required=True, help="output .extxyz file")
    p.add_argument("--frames", type=int, default=None, help="override the recipe's frames")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_sample)

    q = subparsers.add_parser(
        "label", help="label structures with a reference calculator",
        description="Compute energy (eV), forces (eV/Å) and optionally stress (eV/Å³) for "
                    "every structure in INPUT (any ASE-readable file) and write extxyz.")
    q.add_argument("input", help="input structures (any format ase.io.read understands)")
    q.add_argument("output", help="output .extxyz file")
    q.add_argument("--reference", required=True, help="gfn2-xtb, emt or openmm")
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="calculator option, e.g. prmtop=FILE or forcefield=a.xml,b.xml (repeatable)")
    q.add_argument("--stress", action="store_true", help="also compute stress (periodic)")
    q.add_argument("--quiet", action="store_true", help="no progress display")
    q.set_defaults(func=_label)
