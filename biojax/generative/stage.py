"""The generation stage (``biojax generate CONFIG.toml``): train generators, sample,
evaluate and report.

The config's ``[generate]`` table names the ``kind`` of generator: ``"sequences"``
(biojax.generative.seqrun), ``"conformations"`` (biojax.generative.conformations), or an
import path ``"package.module:run"`` to a user's own ``run`` function. Every kind's entry
is ``run(config_path, workdir, *, overrides=(), resume=False, log=print, progress=True)
-> dict`` and parses the rest of the file itself (see /work/notes/generative_contract.md
and the README section "Generative models").

``generate`` is a command of the ``biojax`` CLI (``biojax.cli._COMMANDS``), not yet a step
of ``biojax run`` pipelines: a kind's ``run`` reads its whole config file itself."""

from __future__ import annotations

import os
import sys

from biojax.core.config import add_override_option, apply_overrides, cli_overrides, load_toml
from biojax.core.errors import ConfigError
from biojax.core.registry import Registry

NAME = "generate"

#: kind -> import path of its ``run`` function (imported on use)
generate_kinds = Registry("generate kind")
generate_kinds.register("sequences", "biojax.generative.seqrun:run")
generate_kinds.register("conformations", "biojax.generative.conformations:run")

#: files whose presence means ``workdir`` already holds a generation run
RESULT_FILES = ("metrics.json",)


def kind_of(path: str, overrides=()) -> str:
    """The ``[generate] kind`` of the config at ``path`` (with overrides applied)."""
    data, _ = apply_overrides(load_toml(path), list(overrides))
    table = data.get("generate")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: no [generate] table; it must name the kind of "
                          f"generator, e.g. [generate] kind = \"sequences\" (known kinds: "
                          f"{', '.join(generate_kinds.names())})")
    kind = table.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{path} [generate] kind: expected one of "
                          f"{', '.join(generate_kinds.names())} or an import path "
                          f"'package.module:run', got {kind!r}")
    return kind


def entry_for(kind: str):
    """The ``run`` function for ``kind`` (registered name or import path)."""
    from biojax.core.registry import import_object

    entry = generate_kinds.get(kind)
    if isinstance(entry, str):
        try:
            entry = import_object(entry, f"generate kind {kind!r}")
        except ConfigError as exc:
            raise ConfigError(f"[generate] kind = {kind!r} is not available in this "
                              f"installation ({exc})") from None
    if not callable(entry):
        raise ConfigError(f"[generate] kind = {kind!r}: {entry!r} is not a function")
    return entry


def run(config_path: str, workdir: str, *, overrides=(), resume: bool = False,
        log=None, progress: bool = False) -> dict:
    """Run the generation config at ``config_path`` into ``workdir`` (Python entry of
    ``biojax generate``); returns the metrics the kind's ``run`` returns."""
    from biojax.core.rundir import RunLock

    entry = entry_for(kind_of(config_path, overrides))
    there = [n for n in RESULT_FILES if os.path.exists(os.path.join(workdir, n))]
    if not resume and (there or (os.path.isdir(workdir) and any(
            n.endswith(".checkpoint.msgpack") for n in os.listdir(workdir)))):
        raise ConfigError(f"{workdir} already holds a generation run; pass --resume to "
                          "continue it or choose another --out")
    with RunLock(workdir, "generation run"):
        return entry(config_path, workdir, overrides=list(overrides), resume=resume,
                     log=log or _print, progress=progress)


def _print(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def _generate(args) -> int:
    overrides = cli_overrides(args)
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    from biojax.data.io import os_errors

    with os_errors("generate"):
        run(args.config, out, overrides=overrides, resume=args.resume,
            progress=not args.quiet)
    print(f"metrics: {os.path.join(out, 'metrics.json')}")
    return 0


def register(subparsers) -> None:
    """Add the ``generate`` subcommand to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "generate", help="train generative models, sample, evaluate",
        description="Train generators (sequences or conformations, [generate] kind), "
                    "sample, evaluate against held-out data; writes DIR/metrics.json, "
                    "samples and plots.")
    p.add_argument("config", help="generation config (TOML with a [generate] table)")
    add_override_option(p, "model.vae.steps=500")
    p.add_argument("--out", default=None, help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_generate)

