"""``biojax run``: the whole micro-to-macro story from one TOML file, in one run directory.

One config file holds a ``[run]`` table and one table per step, each step's table being
exactly what that stage reads standalone (``[train.data]``, ``[train.model]``,
``[train.training]`` are ``biojax train``'s ``[data]``, ``[model]``, ``[training]``;
``[simulate]`` holds ``biojax simulate``'s keys; ``[analyze]`` ``biojax analyze``'s)::

    [run]
    stages = ["train", "simulate", "analyze"]    # in order; the report always ends the run
    seed = 0                                      # optional: fills every unset ``seed`` key
    quick = ["simulate.steps=200"]                # overrides ``--quick`` applies
    [run.alias]                                   # optional: more steps of one stage kind
    nve = "simulate"                              # a step "nve" run by the simulate stage

Steps are stages of the ``stages`` registry (``biojax.core.registry``) by name, so any
registered stage (or an import path ``"module:Name"`` through ``[run.alias]``) can join.
The pipeline wires outputs to inputs by filling paths (a step takes its input from the
latest earlier step of the producing kind):

- ``sample`` → ``train``: ``data.train_file`` = the sampled ``dataset.extxyz``;
- ``train`` → ``simulate``: ``model`` = the trained ``model/``; ``out`` = the step's folder;
- ``simulate`` → ``analyze``: ``trajectory.paths`` = the replicas' trajectories,
  ``trajectory.frame_interval_fs`` = ``frame_every × timestep_fs`` unless given,
  ``output.directory`` = the step's folder;
- ``simulate`` → ``coarse-grain``: ``data.coordinates`` = the fine-grained trajectory
  (one replica, ``write_forces = true``), unless the step names its own data.

A wired key that the config also sets is an error (say which you mean: drop the key or
the producing step). The run directory ``DIR`` holds::

    DIR/config.toml          the resolved config (paths absolute, wiring filled)
    DIR/config/<step>.toml   each step's standalone config: ``biojax <stage>`` accepts it
    DIR/<step>/              each step's outputs (written through the stage protocol)
    DIR/run.json             config hash, versions, device, seeds, per-step hash/status/wall time
    DIR/report.md, DIR/report.html

Every step's config is validated (through the stage's own ``load_config``) and every
input file checked before any work starts. Each step's hash covers its resolved config,
the contents of its input files outside the run directory and the hashes of the steps
before it; with ``--resume`` a step whose hash is unchanged and whose outputs are intact
is skipped, a step killed while running continues through its stage's own resume
(checkpoints), and a changed step reruns, with every step after it.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import sys
import time
import typing
from typing import Any

from biojax.core.config import add_override_option, apply_overrides, from_dict, load_toml, resolve_path, to_dict
from biojax.core.errors import ConfigError

RUN_FILE = "run.json"
CONFIG_FILE = "config.toml"
STAGE_CONFIG_DIR = "config"
REPORT = "report"  # the last step, always run


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """``[run.report]``: for a crystal, the lattice (``fcc``, ``bcc``, ``sc``, ``diamond``)
    whose cubic lattice constant the report derives from a simulate step's mean volume,
    and a reference value (Å) with a note saying where it comes from."""

    lattice: typing.Literal["", "fcc", "bcc", "sc", "diamond"] = ""
    reference_lattice_constant: float | None = None
    reference_note: str = ""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The ``[run]`` table. ``stages``: the steps in order (stage names, or names given a
    stage in ``alias``); ``seed``: fills every ``seed`` key a step's config leaves unset;
    ``quick``: ``"table.key=value"`` overrides applied by ``--quick`` (before ``--set``);
    ``title``: the report's title."""

    stages: tuple[str, ...]
    seed: int | None = None
    quick: tuple[str, ...] = ()
    alias: dict[str, str] = dataclasses.field(default_factory=dict)
    title: str = ""
    report: ReportOptions = ReportOptions()

    def __post_init__(self):
        if not self.stages:
            raise ValueError("'stages' must list at least one stage")
        seen = set()
        for name in self.stages:
            if name in seen:
                raise ValueError(f"'stages' lists {name!r} twice; give the second one "
                                 "another name and its stage in [run.alias]")
            seen.add(name)
        if REPORT in self.stages:
            raise ValueError("'stages' must not list 'report': the report always ends the run")


@dataclasses.dataclass
class Step:
    """One step of a run: its name (its table and folder), its stage kind and module, the
    raw table after wiring, the validated config and its hash."""

    name: str
    kind: str
    module: Any
    raw: dict
    config: Any = None
    hash: str = ""
    inputs: dict = dataclasses.field(default_factory=dict)  # path -> content hash
    wired: dict = dataclasses.field(default_factory=dict)    # dotted key -> value


@dataclasses.dataclass
class Plan:
    """A validated run: the config file, run directory, steps and the combined config."""

    config_path: str
    out: str
    run: RunConfig
    steps: list[Step]
    resolved: dict
    config_hash: str
    overrides: list[str]
    quick: bool


# ----------------------------------------------------------------------------- TOML out

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON escapes are valid in TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def dumps_toml(data: dict, _prefix: tuple[str, ...] = ()) -> str:
    """``data`` (nested dicts of TOML values; ``None`` left out) as TOML text: scalars and
    lists inline, nested dicts as ``[a.b]`` tables."""
    lines, tables = [], []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_toml_value(v)}")
    for k, v in tables:
        name = ".".join(_key(p) for p in _prefix + (k,))
        body = dumps_toml(v, _prefix + (k,)).strip("\n")
        if any(not isinstance(x, dict) and x is not None for x in v.values()) or not v:
            lines += ["", f"[{name}]"]
        if body:
            lines.append(body)
    return "\n".join(lines).strip("\n") + "\n"


# ----------------------------------------------------------------------------- config walk

def _dataclass_of(annotation: Any):
    """(dataclass, "one" | "many") when ``annotation`` is a dataclass, an optional one or a
    list/tuple of them; else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation, "one"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in args:
            found = _dataclass_of(arg)
            if found:
                return found
    if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        return args[0], "many"
    return None


def _absolutize(cls: type, raw: dict, base_dir: str) -> dict:
    """``raw`` (a stage's table) with the values of path fields (``metadata={"path": ...}``
    in ``cls``) made absolute against ``base_dir``, as :func:`biojax.core.config.load`
    does for a standalone file. Unknown keys are left for the stage's loader to reject."""
    if not (dataclasses.is_dataclass(cls) and isinstance(raw, dict)):
        return raw
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: leave the table
        return raw
    out = dict(raw)
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value, marked = raw[f.name], f.metadata.get("path")
        if marked:
            if isinstance(value, str):
                out[f.name] = resolve_path(value, base_dir)
            elif isinstance(value, list):
                out[f.name] = [resolve_path(v, base_dir) if isinstance(v, str) else v
                               for v in value]
            elif isinstance(value, dict) and isinstance(marked, (tuple, list)):
                out[f.name] = {k: resolve_path(v, base_dir) if k in marked else v
                               for k, v in value.items()}
            continue
        sub = _dataclass_of(hints.get(f.name))
        if sub and sub[1] == "one" and isinstance(value, dict):
            out[f.name] = _absolutize(sub[0], value, base_dir)
        elif sub and sub[1] == "many" and isinstance(value, list):
            out[f.name] = [_absolutize(sub[0], v, base_dir) for v in value]
    return out


def _fill_seeds(cls: type, raw: dict, seed: int) -> dict:
    """``raw`` with every ``seed`` field of ``cls`` (and of its table-valued dataclass
    fields) that the table leaves unset set to ``seed``."""
    if not dataclasses.is_dataclass(cls):
        return raw
    hints = typing.get_type_hints(cls)
    out = dict(raw)
    for f in dataclasses.fields(cls):
        if f.name == "seed" and "seed" not in raw:
            out["seed"] = seed
            continue
        sub = hints.get(f.name)
        if dataclasses.is_dataclass(sub):  # a required or defaulted table, not an optional one
            value = raw.get(f.name, {})
            if isinstance(value, dict):
                filled = _fill_seeds(sub, value, seed)
                if filled != value or f.name in raw:
                    out[f.name] = filled
    return out


def _path_values(config: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, path) for every path field of a loaded config dataclass."""
    found = []
    if not dataclasses.is_dataclass(config):
        return found
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), prefix + f.name
        marked = f.metadata.get("path")
        if marked:
            if isinstance(value, str):
                found.append((name, value))
            elif isinstance(value, (list, tuple)):
                found += [(name, v) for v in value if isinstance(v, str)]
            elif isinstance(value, dict) and isinstance(marked, (tuple, list)):
                found += [(f"{name}.{k}", v) for k, v in value.items()
                          if k in marked and isinstance(v, str)]
        elif dataclasses.is_dataclass(value):
            found += _path_values(value, name + ".")
        elif isinstance(value, (list, tuple)):
            for v in value:
                found += _path_values(v, name + ".")
    return found


def _seeds(config: Any, prefix: str = "") -> dict:
    """Every ``seed`` value of a loaded config, by dotted key."""
    out = {}
    if dataclasses.is_dataclass(config):
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.name == "seed" and isinstance(value, int):
                out[prefix + f.name] = value
            elif dataclasses.is_dataclass(value):
                out.update(_seeds(value, prefix + f.name + "."))
    return out


def _get(raw: dict, dotted: str, default=None):
    node = raw
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return default
        node = node[k]
    return node


def _set(raw: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


# ----------------------------------------------------------------------------- wiring

def _latest(steps: list[Step], kind: str) -> Step | None:
    for s in reversed(steps):
        if s.kind == kind:
            return s
    return None


def _wire_train(step, earlier, out):
    src = _latest(earlier, "sample")
    if src is not None:
        from biojax.data.stage import DATASET

        return {"data.train_file": os.path.join(out, src.name, DATASET)}
    return {}


def _wire_simulate(step, earlier, out):
    wired = {"out": os.path.join(out, step.name)}
    src = _latest(earlier, "train")
    if src is not None:
        wired["model"] = os.path.join(out, src.name, "model")
    return wired


def _trajectories(sim: Step, out: str) -> list[str]:
    cfg = sim.raw
    ext = cfg.get("trajectory_format", "extxyz")
    folder = os.path.join(out, sim.name)
    if int(cfg.get("replicas", 1)) == 1:
        return [os.path.join(folder, f"trajectory.{ext}")]
    return [os.path.join(folder, "replica_*", f"trajectory.{ext}")]


def _wire_analyze(step, earlier, out):
    wired = {"output.directory": os.path.join(out, step.name)}
    src = _latest(earlier, "simulate")
    if src is not None:
        wired["trajectory.paths"] = _trajectories(src, out)
        if _get(step.raw, "trajectory.frame_interval_fs") is None:
            wired["trajectory.frame_interval_fs"] = (float(src.raw.get("frame_every", 100))
                                                     * float(src.raw.get("timestep_fs", 0.5)))
    return wired


def _wire_coarse_grain(step, earlier, out):
    """The fine-grained trajectory of this run for the CG stage's ``[data] coordinates``
    (forces from the same file: the simulate step needs ``write_forces = true`` and one
    replica, as the stage reads one file), unless the step names its own data (e.g. the
    shipped CGnet frames). The stage writes into its folder; there is no path to fill."""
    sim = _latest(earlier, "simulate")
    if sim is None or _get(step.raw, "data.coordinates"):
        return {}
    paths = _trajectories(sim, out)
    if len(paths) != 1 or _is_glob(paths[0]):
        return {}
    return {"data.coordinates": paths[0]}


WIRING = {"train": _wire_train, "simulate": _wire_simulate, "analyze": _wire_analyze,
          "coarse-grain": _wire_coarse_grain}
"""Stage kind → function(step, earlier steps, run dir) giving {dotted key: value} to fill."""


# ----------------------------------------------------------------------------- hashing

def _file_hash(path: str, cache: dict) -> str:
    if path in cache:
        return cache[path]
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                p = os.path.join(root, name)
                h.update(os.path.relpath(p, path).encode() + b"\0")
                h.update(_file_hash(p, cache).encode())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    cache[path] = h.hexdigest()
    return cache[path]


def _is_glob(p: str) -> bool:
    return any(c in p for c in "*?[")


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _canonical(obj: Any, out: str) -> Any:
    """``obj`` with the run directory's path replaced by ``<run>`` (hashes do not depend
    on where the run directory is)."""
    if isinstance(obj, dict):
        return {k: _canonical(v, out) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v, out) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and _inside(obj, out):
        return "<run>" + obj[len(os.path.abspath(out)):]
    return obj


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- planning

def _stage_module(kind: str):
    from biojax.core import registry

    module = registry.resolve(registry.stages, kind)
    for attr in ("load_config", "run"):
        if not callable(getattr(module, attr, None)):
            raise ConfigError(f"stage {kind!r} ({module!r}) has no {attr}(); a stage module "
                              "needs NAME, Config, load_config(path, overrides) and "
                              "run(config, workdir, ...)")
    return module


def plan(config_path: str | os.PathLike, out: str | os.PathLike | None = None,
         overrides: list[str] | tuple = (), quick: bool = False,
         only: list[str] | None = None) -> Plan:
    """Read, wire and validate the whole run before any work: every step's config through
    its stage's ``load_config`` (an unknown key or a wrong type is an error naming the
    config file, the step's table and the key), every input file checked. ``out``: the
    run directory (default ``runs/<config name>``, ``-quick`` appended with ``quick``)."""
    config_path = os.fspath(config_path)
    data = load_toml(config_path)
    base = os.path.dirname(os.path.abspath(config_path))
    if "run" not in data or not isinstance(data["run"], dict):
        raise ConfigError(f"{config_path}: no [run] table; it lists the steps, e.g. "
                          "[run] stages = [\"train\", \"simulate\", \"analyze\"]")
    quick_list = list(data["run"].get("quick", [])) if quick else []
    if quick and not quick_list:
        raise ConfigError(f"{config_path}: --quick needs a [run] quick list of overrides, "
                          "e.g. quick = [\"simulate.steps=200\"]")
    overrides = list(overrides)
    data, _ = apply_overrides(data, [str(o) for o in quick_list] + overrides)
    where = config_path + (" (with command-line overrides)" if overrides or quick_list else "")
    run_cfg = from_dict(RunConfig, data["run"], f"{where} [run]")
    if out is None:
        stem = os.path.splitext(os.path.basename(config_path))[0]
        out = os.path.join("runs", stem + ("-quick" if quick else ""))
    out = os.path.abspath(os.fspath(out))

    from biojax.core import registry

    names = registry.load(registry.stages).names()
    kinds = {}
    for name in run_cfg.stages:
        kind = run_cfg.alias.get(name, name)
        if kind not in names and ":" not in kind:
            raise ConfigError(f"{where} [run] stages: unknown stage {name!r}; registered "
                              f"stages: {', '.join(names)} (or name another step's stage in "
                              "[run.alias], e.g. nve = \"simulate\")")
        kinds[name] = kind
    for name, kind in run_cfg.alias.items():
        if kind not in names and ":" not in kind:
            raise ConfigError(f"{where} [run.alias] {name}: unknown stage {kind!r}; "
                              f"registered stages: {', '.join(names)}")
    for table in data:  # tables of steps not run now (a stage or alias name) are allowed
        if table != "run" and table not in kinds and table not in names \
                and table not in run_cfg.alias:
            raise ConfigError(f"{where}: unknown table [{table}]; tables are [run] and one "
                              f"per step of [run] stages ({', '.join(run_cfg.stages)})")
    if only:
        bad = [s for s in only if s not in kinds and s != REPORT]
        if bad:
            raise ConfigError(f"--only {','.join(only)}: {', '.join(map(repr, bad))} not in "
                              f"[run] stages ({', '.join(run_cfg.stages)}, or report)")

    steps: list[Step] = []
    # each step's table is loaded from a file in DIR/config/, where its standalone copy
    # will live, so that defaults that are paths resolve as they will when it runs alone;
    # folders this creates are removed again when the config is wrong
    tmp = os.path.join(out, STAGE_CONFIG_DIR)
    created = [d for d in (out, tmp) if not os.path.exists(d)]
    ok = False
    try:
        os.makedirs(tmp, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"run directory {out}: cannot be created ({exc})") from None
    try:
        for name in run_cfg.stages:
            module = _stage_module(kinds[name])
            raw = data.get(name, {})
            if not isinstance(raw, dict):
                raise ConfigError(f"{where} [{name}]: expected a table, got {raw!r}")
            cls = getattr(module, "Config", None)
            raw = _absolutize(cls, raw, base)
            if run_cfg.seed is not None:
                raw = _fill_seeds(cls, raw, run_cfg.seed)
            step = Step(name, kinds[name], module, raw)
            wire = WIRING.get(kinds[name])
            wired = wire(step, steps, out) if wire else {}
            for key, value in wired.items():
                if _get(raw, key) is not None and not (
                        key == "trajectory.frame_interval_fs"):
                    raise ConfigError(
                        f"{where} [{name}] {key}: set by the pipeline from an earlier step "
                        f"({value}); remove it from the config (or the step that makes it)")
                _set(raw, key, value)
            step.wired = wired
            step.config = _load_step(step, tmp, where)
            steps.append(step)
        _check_inputs(steps, out, where, only)
        ok = True
    finally:
        if not ok:
            for d in reversed(created):
                shutil.rmtree(d, ignore_errors=True)

    if any(getattr(getattr(s.config, "training", None), "precision", "") == "float64"
           for s in steps):
        from biojax.core.precision import enable_x64

        enable_x64()
    resolved = {"run": dataclasses.asdict(run_cfg)}
    resolved["run"]["stages"] = list(run_cfg.stages)
    resolved["run"]["quick"] = list(run_cfg.quick)
    for s in steps:
        resolved[s.name] = s.raw
    _hash_steps(steps, out)
    config_hash = _hash(_canonical({s.name: to_dict(s.config) for s in steps}, out)
                        | {"run": {"stages": list(run_cfg.stages), "alias": run_cfg.alias}})
    return Plan(config_path, out, run_cfg, steps, resolved, config_hash, overrides, quick)


def _load_step(step: Step, tmp: str, where: str):
    """The step's config through its stage's own ``load_config`` (from a standalone file
    written from its table); errors name the config file and the step's table."""
    path = os.path.join(tmp, f".plan-{os.getpid()}-{step.name}.toml")
    try:
        text = dumps_toml(step.raw)
    except TypeError as exc:
        raise ConfigError(f"{where} [{step.name}]: {exc}") from None
    with open(path, "w") as f:
        f.write(text)
    try:
        return step.module.load_config(path, ())
    except ConfigError as exc:
        msg = str(exc)
        tag = f"{where} [{step.name}]"
        if path in msg:
            msg = msg.replace(path + " ", tag + " ").replace(path, tag)
        else:
            msg = f"{tag}: {msg}"
        raise ConfigError(msg) from None
    finally:
        os.remove(path)


def _check_inputs(steps: list[Step], out: str, where: str, only) -> None:
    """Every input file a step names exists (outputs of earlier steps: when those steps
    do not run now, i.e. with ``--only``)."""
    running = set(only or [s.name for s in steps])
    for i, step in enumerate(steps):
        if step.name not in running:
            continue
        own = os.path.join(out, step.name)
        for key, value in _path_values(step.config):
            if not value or re.match(r"^[A-Za-z][A-Za-z0-9+._-]+:", value):
                continue
            if _get(step.raw, key) is None:
                continue  # a default, not an input the config names
            if _inside(value, own):
                continue  # the step's own output
            produced = _inside(value, out)
            if produced:
                producer = next((s for s in steps[:i] if _inside(value, os.path.join(
                    out, s.name))), None)
                if producer is not None and producer.name in running:
                    continue
            exists = bool(glob.glob(value)) if _is_glob(value) else os.path.exists(value)
            if not exists:
                hint = (" (an output of an earlier step: run that step first, or drop "
                        "--only)" if produced else "")
                raise ConfigError(f"{where} [{step.name}] {key}: file not found: {value}"
                                  f"{hint}")


def _hash_steps(steps: list[Step], out: str) -> None:
    cache: dict = {}
    previous = ""
    for step in steps:
        inputs = {}
        own = os.path.join(out, step.name)
        for key, value in _path_values(step.config):
            if not value or _inside(value, out) or not os.path.isabs(value) \
                    or _get(step.raw, key) is None:
                continue
            matches = sorted(glob.glob(value)) if _is_glob(value) else [value]
            for p in matches:
                if os.path.exists(p) and not _inside(p, own):
                    inputs[p] = _file_hash(p, cache)
        step.inputs = inputs
        step.hash = _hash({"kind": step.kind, "config": _canonical(to_dict(step.config), out),
                           "inputs": inputs, "previous": previous})
        previous = step.hash


# ----------------------------------------------------------------------------- running

def _versions() -> dict:
    from importlib import metadata

    import platform

    out = {"python": platform.python_version()}
    for pkg in ("biojax", "jax", "jaxlib", "flax", "optax", "jax-md", "e3nn-jax", "numpy",
                "ase", "matplotlib", "scipy", "tblite", "openmm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    """Host, CPU model, cores, OS and the JAX device of this process."""
    import platform
    import socket

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(),
            "os": platform.platform()}
    try:
        import jax

        dev = jax.devices()[0]
        info["device"] = f"{dev.platform} ({dev.device_kind})"
        info["device_count"] = jax.device_count()
    except Exception as exc:  # noqa: BLE001
        info["device"] = f"unknown ({exc})"
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _listing(folder: str) -> dict:
    """Relative path → size of the files of a finished step (lock files left out)."""
    out = {}
    if not os.path.isdir(folder):
        return out
    for root, dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".biojax.lock") or name.endswith(".tmp"):
                continue
            p = os.path.join(root, name)
            out[os.path.relpath(p, folder)] = os.path.getsize(p)
    return out


def _intact(folder: str, listing: dict) -> bool:
    for rel, size in listing.items():
        p = os.path.join(folder, rel)
        if not os.path.isfile(p) or os.path.getsize(p) != size:
            return False
    return True


def _read_manifest(out: str) -> dict | None:
    path = os.path.join(out, RUN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); choose another --out") from None


def _write_manifest(out: str, manifest: dict) -> None:
    from biojax.core.atomic import atomic_write_text

    atomic_write_text(os.path.join(out, RUN_FILE),
                      json.dumps(manifest, indent=2, default=_json_default))


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    return str(obj)


def _call_run(module, config, workdir: str, resume: bool, progress: bool):
    params = inspect.signature(module.run).parameters
    kwargs = {}
    if "resume" in params:
        kwargs["resume"] = resume
    if "progress" in params:
        kwargs["progress"] = progress
    elif "show_progress" in params:
        kwargs["show_progress"] = progress
    return module.run(config, workdir, **kwargs)


def _remove(folder: str) -> None:
    if os.path.isdir(folder):
        trash = folder.rstrip(os.sep) + f".old-{os.getpid()}"
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def execute(p: Plan, resume: bool = False, only: list[str] | None = None,
            progress: bool = True, command: str | None = None) -> dict:
    """Run the steps of plan ``p`` in order in ``p.out`` and write the report; returns the
    run manifest (also ``run.json``). See the module doc for ``resume`` and ``only``."""
    from biojax.core.atomic import atomic_write_text
    from biojax.core.rundir import RunLock, check_output_dir

    out = p.out
    check_output_dir(out, "run directory")
    old = _read_manifest(out)
    if old is not None and not resume and not only:
        raise ConfigError(f"{out} already holds a run ({RUN_FILE}); pass --resume to continue "
                          "it (unchanged steps are skipped), or choose another --out")
    if old is None and os.path.isdir(out) and [n for n in os.listdir(out) if not
                                                n.startswith(".") and n != STAGE_CONFIG_DIR]:
        raise ConfigError(f"run directory {out} is not empty and holds no {RUN_FILE}; "
                          "choose another --out")
    run_only = set(only) if only else None
    with RunLock(out, "pipeline run"):
        records = (old or {}).get("stages", {})
        manifest = {
            "format": 1, "config_file": os.path.abspath(p.config_path), "run_dir": out,
            "command": command, "config_hash": p.config_hash, "quick": p.quick,
            "overrides": p.overrides, "versions": _versions(), "machine": machine(),
            "seeds": {f"{s.name}.{k}": v for s in p.steps for k, v in _seeds(s.config).items()},
            "steps": [s.name for s in p.steps],
            "stages": {},
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        # keep the records of steps not run now (--only); run.json comes first, so a run
        # killed at any later moment is recognised by --resume
        manifest["stages"] = {k: v for k, v in records.items()}
        _write_manifest(out, manifest)
        os.makedirs(os.path.join(out, STAGE_CONFIG_DIR), exist_ok=True)
        atomic_write_text(os.path.join(out, CONFIG_FILE),
                          f"# resolved config of {os.path.abspath(p.config_path)}\n"
                          f"# config hash {p.config_hash}\n" + dumps_toml(p.resolved))
        for s in p.steps:
            atomic_write_text(os.path.join(out, STAGE_CONFIG_DIR, f"{s.name}.toml"),
                              f"# step {s.name!r} of {os.path.abspath(p.config_path)}: "
                              f"biojax {s.kind} accepts this file\n" + dumps_toml(s.raw))
        t_run = time.perf_counter()
        rerun_rest = False
        for i, step in enumerate(p.steps):
            rec = records.get(step.name)
            folder = os.path.join(out, step.name)
            if run_only is not None and step.name not in run_only:
                if rec is None or rec.get("status") != "done":
                    _log(f"[{i + 1}/{len(p.steps)}] {step.name}: not run (--only)")
                continue
            same = rec is not None and rec.get("hash") == step.hash and not rerun_rest
            if same and rec.get("status") == "done" and _intact(folder, rec.get("files", {})):
                _log(f"[{i + 1}/{len(p.steps)}] {step.name}: unchanged, skipped")
                continue
            # a killed step continues through its stage's resume when it left results
            # (a folder with only a lock file: killed before its first checkpoint)
            resume_step = bool(same and rec.get("status") == "running" and _listing(folder)
                               and "resume" in inspect.signature(step.module.run).parameters)
            if resume_step:
                _log(f"[{i + 1}/{len(p.steps)}] {step.name} ({step.kind}): resuming")
            else:
                why = ("new" if rec is None else "changed" if rec.get("hash") != step.hash
                       else "incomplete")
                _log(f"[{i + 1}/{len(p.steps)}] {step.name} ({step.kind}): running ({why})")
                _remove(folder)
            rerun_rest = True
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            wall_before = rec.get("wall_s", 0.0) if resume_step and rec else 0.0
            manifest["stages"][step.name] = {
                "kind": step.kind, "hash": step.hash, "status": "running",
                "started": started, "inputs": step.inputs, "wall_s": wall_before,
                "resumed": resume_step}
            _write_manifest(out, manifest)
            t0 = time.perf_counter()
            os.makedirs(folder, exist_ok=True)
            result = _call_run(step.module, step.config, folder, resume_step, progress)
            wall = time.perf_counter() - t0
            manifest["stages"][step.name].update({
                "status": "done", "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "wall_s": round(wall_before + wall, 2), "wall_s_last": round(wall, 2),
                "summary": result if isinstance(result, dict) else None,
                "files": _listing(folder)})
            _write_manifest(out, manifest)
        for name in list(manifest["stages"]):
            if name not in manifest["steps"]:
                del manifest["stages"][name]  # steps no longer in the config
        manifest["wall_s_this_invocation"] = round(time.perf_counter() - t_run, 2)
        manifest["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        _write_manifest(out, manifest)
        if run_only is None or REPORT in run_only or all(
                manifest["stages"].get(s.name, {}).get("status") == "done" for s in p.steps):
            from biojax.report import write_report

            t0 = time.perf_counter()
            files = write_report(out, manifest, p)
            manifest["report"] = {"files": files, "wall_s": round(time.perf_counter() - t0, 2)}
            _write_manifest(out, manifest)
            _log(f"report: {', '.join(os.path.join(out, f) for f in files)}")
    return manifest


def run(config_path: str, out: str | None = None, *, overrides=(), quick: bool = False,
        resume: bool = False, only: list[str] | None = None, progress: bool = True,
        command: str | None = None) -> dict:
    """Plan (validate everything) and execute a run; returns the manifest (``run.json``)."""
    p = plan(config_path, out, overrides, quick, only)
    return execute(p, resume=resume, only=only, progress=progress, command=command)


def _run(args) -> int:
    import shlex

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    words = ["biojax", "run", args.config] + (["--out", args.out] if args.out else []) + \
        (["--quick"] if args.quick else []) + (["--resume"] if args.resume else []) + \
        (["--only", args.only] if args.only else []) + \
        [w for o in args.overrides for w in ("--set", o)]
    from biojax.data.io import os_errors

    with os_errors("run"):
        manifest = run(args.config, args.out, overrides=args.overrides, quick=args.quick,
                       resume=args.resume, only=only, progress=not args.quiet,
                       command=" ".join(map(shlex.quote, words)))
    walls = ", ".join(f"{k} {v.get('wall_s', 0):.0f} s" for k, v in manifest["stages"].items())
    report = ", ".join(os.path.join(manifest["run_dir"], f)
                       for f in manifest.get("report", {}).get("files", []))
    print(f"biojax run: done ({walls}); report: {report or '(not written)'}")
    return 0


def register(subparsers) -> None:
    """Add the ``run`` subcommand (the main job) to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "run", help="the main job: all stages in one run folder, with a report",
        description="Run the stages a config's [run] table lists (e.g. sample, train, "
                    "simulate, analyze, coarse-grain) in order in one run directory, "
                    "wiring each step's outputs to the next one's inputs, and end with "
                    "report.md and report.html. The whole config is validated before any "
                    "work starts.")
    p.add_argument("config", help="pipeline TOML file (see examples/alanine_dipeptide.toml)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run directory (default runs/<config name>[-quick])")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: unchanged finished steps are skipped, a "
                        "killed step continues from its checkpoint, a changed step reruns "
                        "with every step after it")
    p.add_argument("--only", metavar="STEP,...", default=None,
                   help="run only these steps (their inputs from earlier steps must exist); "
                        "'report' rewrites the report")
    p.add_argument("--quick", action="store_true",
                   help="apply the config's [run] quick overrides (a smoke test)")
    add_override_option(p, "train.training.epochs=5")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
