"""Configuration: TOML files mapped onto frozen dataclasses, with strict key checking.

Each stage (train, simulate, analyze, ...) declares its config as a dataclass; this module
is the one place that reads TOML and turns nested tables into those dataclasses. An unknown
key is an error that lists the valid keys; a value of the wrong type names the field.

:func:`load` is the one loader every stage uses. It applies, in this order:

1. the TOML file (optionally the table ``[table]`` of it);
2. command-line overrides ``"section.key=value"`` (``biojax ... --set``), the value parsed
   as a TOML value (``5``, ``"painn"``, ``[1, 2]``, ``true``; anything that is not valid
   TOML is taken as a bare string), merged into the raw dict *before* validation, so an
   unknown key or a wrong type is the same :class:`ConfigError` as in the file;
3. the one path rule: fields marked ``dataclasses.field(..., metadata={"path": True})``
   hold file names; a relative one written in the config file (or a default) is relative
   to the config file's folder and becomes absolute, a relative one given on the command
   line is relative to the current directory and is kept as given. For a ``dict`` field,
   ``metadata={"path": ("key", ...)}`` names the entries that are file names. Values
   such as ``"openmmtools:alanine.prmtop"`` (a ``scheme:`` prefix) are left alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar

from biojax.core.errors import ConfigError

T = TypeVar("T")


def load_toml(path: str | os.PathLike) -> dict:
    """Read a TOML file into a dict; missing or malformed files raise ConfigError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_check_value(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    ``where`` names the table in error messages (e.g. ``"train.toml [model]"``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"valid keys are: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check_value(value, hints[name], f"{where} {name!r}")
    missing = [
        n for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(map(repr, missing))}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(config: Any) -> dict:
    """The plain-dict (TOML/JSON-serialisable) form of a config dataclass."""
    out = dataclasses.asdict(config)

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, tuple):
            return [clean(x) for x in v]
        return v

    return clean(out)


Override = typing.Union[str, tuple[str, Any]]
"""A command-line override: ``"section.key=value"`` text, or ``("section.key", value)``
with the value already typed (how convenience flags such as ``--steps`` pass theirs)."""


def parse_override(override: str | tuple[str, Any]) -> tuple[tuple[str, ...], Any]:
    """``"training.epochs=5"`` → ``(("training", "epochs"), 5)``; the value is read as a
    TOML value, or taken as a bare string when it is not one (``model.name=painn``)."""
    if isinstance(override, tuple):
        key, value = override
    else:
        key, sep, text = str(override).partition("=")
        if not sep:
            raise ConfigError(f"--set {override!r}: expected SECTION.KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
    keys = tuple(k.strip() for k in key.strip().split("."))
    if not all(keys):
        raise ConfigError(f"--set {override!r}: expected SECTION.KEY=VALUE, got key {key!r}")
    return keys, value


def apply_overrides(data: dict, overrides: Iterable[Override],
                    table: str | None = None) -> tuple[dict, list[str]]:
    """``data`` with ``overrides`` merged in (a new dict), and the dotted keys they set.

    With ``table``, a leading ``table.`` in a key is dropped (``simulate.steps=10`` and
    ``steps=10`` both set ``steps`` of a config that lives in ``[simulate]`` or at the top).
    """
    data = _copy_tables(data)
    keys_set = []
    for override in overrides:
        keys, value = parse_override(override)
        if table and len(keys) > 1 and keys[0] == table:
            keys = keys[1:]
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(keys)}: {'.'.join(keys[:i + 1])!r} is "
                                  f"not a table (it is {child!r}); set it whole")
            node = child
        node[keys[-1]] = value
        keys_set.append(".".join(keys))
    return data, keys_set


def _copy_tables(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy_tables(v) for k, v in data.items()}
    return data


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+._-]+:")  # "openmmtools:x", not "C:\\x"


def resolve_path(value: str, base_dir: str | os.PathLike) -> str:
    """``value`` made absolute against ``base_dir`` unless empty, absolute or ``scheme:``."""
    if not isinstance(value, str) or not value or _SCHEME.match(value):
        return value
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.abspath(
        os.path.join(os.fspath(base_dir), value))


def resolve_paths(config: T, base_dir: str | os.PathLike, keep: Iterable[str] = (),
                  _prefix: str = "") -> T:
    """``config`` with its path fields resolved against ``base_dir`` (see the module doc).

    ``keep`` lists dotted keys set on the command line: paths at or under them stay as given
    (relative to the current directory).
    """
    keep = tuple(keep)

    def kept(name: str) -> bool:
        return any(name == k or name.startswith(k + ".") for k in keep)

    def walk(value: Any, name: str) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return resolve_paths(value, base_dir, keep, name + ".")
        if isinstance(value, (list, tuple)) and any(
                dataclasses.is_dataclass(v) for v in value):
            return type(value)(walk(v, name) for v in value)
        return value

    changes = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        name, value = _prefix + f.name, getattr(config, f.name)
        marked = f.metadata.get("path")
        if marked and not kept(name):
            if isinstance(value, str):
                new = resolve_path(value, base_dir)
            elif isinstance(value, (list, tuple)):
                new = type(value)(resolve_path(v, base_dir) for v in value)
            elif isinstance(value, dict) and isinstance(marked, (tuple, list)):
                new = {k: (resolve_path(v, base_dir)
                           if k in marked and not kept(f"{name}.{k}") else v)
                       for k, v in value.items()}
            else:
                new = value
        else:
            new = walk(value, name)
        if new is not value and new != value:
            changes[f.name] = new
    return dataclasses.replace(config, **changes) if changes else config


def load(cls: type[T], path: str | os.PathLike, overrides: Iterable[Override] = (),
         table: str | None = None, flatten: str | None = None) -> T:
    """Read TOML file ``path`` into dataclass ``cls``: overrides merged, types checked,
    paths resolved (see the module doc). ``table``: the config may sit in ``[table]``.
    ``flatten``: the keys of that table join the top level (a ``[coarse_grain]`` table
    holding the top-level settings beside the other tables)."""
    path = os.fspath(path)
    data = load_toml(path)
    if table and isinstance(data.get(table), dict):
        data = data[table]
    if flatten and isinstance(data.get(flatten), dict):
        data = {**{k: v for k, v in data.items() if k != flatten}, **data[flatten]}
    overrides = list(overrides)
    data, keys_set = apply_overrides(data, overrides, table)
    where = f"{path} (with command-line overrides)" if overrides else path
    config = from_dict(cls, data, where)
    try:
        return resolve_paths(config, os.path.dirname(os.path.abspath(path)), keep=keys_set)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def add_override_option(parser, example: str) -> None:
    """Add the ``--set SECTION.KEY=VALUE`` option (repeatable) to an argparse parser."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable); VALUE is read as TOML (5, 1e-3, "
             f"true, \"text\", [1, 2]) or else taken as a bare string; e.g. --set {example}")


def cli_overrides(args, flags: Mapping[str, str] = {}) -> list[Override]:
    """The overrides of a parsed command line: its ``--set`` entries, then one
    ``(key, value)`` per convenience flag given (``flags``: argparse dest → config key)."""
    overrides: list[Override] = list(getattr(args, "overrides", None) or [])
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides.append((key, value))
    return overrides
