"""Named registries: the one way biojax turns a name in a config into code.

Each extension point (models, loss terms, integrators, energy terms, observables,
reference engines, analysis features, stages) is a :class:`Registry`. Built-in entries
register themselves by name; user code needs no registration call at all, because any
entry may also be given as an import path ``"package.module:Name"`` (the module must be
importable, e.g. on ``PYTHONPATH``)::

    [model]
    name = "mymodels:TinyNet"     # imported, not registered

An unknown name raises :class:`~biojax.core.errors.ConfigError` listing the registered
names, so a typo is answered with the valid choices.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterator

from biojax.core.errors import ConfigError


def import_object(path: str, what: str = "object") -> Any:
    """The object named by ``"package.module:Name"`` (``Name`` may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {path!r}: an import path must look like "
                          "'package.module:Name'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {path!r}: cannot import module {module_name!r} ({exc}); "
                          "is its folder on PYTHONPATH?") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what} {path!r}: module {module_name!r} has no "
                              f"attribute {attr!r}") from None
    return obj


class Registry:
    """A name → entry mapping for one extension point (``kind`` names it in errors)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: Any = None) -> Any:
        """Register ``entry`` under ``name``; without ``entry``, a decorator."""
        if entry is None:
            return lambda obj: self.register(name, obj)
        if ":" in name:
            raise ValueError(f"{self.kind} name {name!r} must not contain ':' "
                             "(reserved for import paths)")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Any:
        """The entry registered as ``name``, or imported from ``"module:Name"``."""
        if not isinstance(name, str):
            raise ConfigError(f"{self.kind}: expected a name or import path, got {name!r}")
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return import_object(name, self.kind)
        raise ConfigError(f"unknown {self.kind} {name!r}; registered: "
                          f"{', '.join(sorted(self._entries)) or '(none)'}, or an import "
                          "path 'package.module:Name'")

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# One registry per extension point. Entries are registered by the modules that define
# them (imported on first use through ``load``), so importing the ground floor stays cheap.
models = Registry("model")                    # flax module class (num_species, cutoff, ...)
loss_terms = Registry("loss term")            # factory(**options) -> LossTerm
integrators = Registry("integrator")          # factory(energy_fn, shift_fn, **settings)
energy_terms = Registry("energy term")        # factory(**options) -> energy term
observables = Registry("observable")          # factory(**options) -> fn(state, **kw)
reference_engines = Registry("reference engine")  # factory(**options) -> ASE calculator
features = Registry("analysis feature")       # factory(trajectory, config) -> table
stages = Registry("stage")                    # module with Config, load_config, run
collective_variables = Registry("collective variable")  # factory(system, **options) -> CV
biases = Registry("bias")                     # factory(system, context, **options) -> EnergyTerm

_PROVIDERS: dict[str, tuple[str, ...]] = {
    "model": ("biojax.nn.models", "biojax.nn.classical", "biojax.cg.spline"),
    "loss term": ("biojax.train.losses",),
    "integrator": ("biojax.md.integrators",),
    "energy term": ("biojax.md.terms",),
    "observable": ("biojax.md.terms",),
    "reference engine": ("biojax.data.reference",),
    "analysis feature": ("biojax.analysis.pipeline",),
    "collective variable": ("biojax.sampling.cv",),
    "bias": ("biojax.sampling.bias",),
    "stage": ("biojax.data.stage", "biojax.train.stage", "biojax.md.stage",
              "biojax.analysis.stage", "biojax.cg.stage"),
}


def load(registry: Registry) -> Registry:
    """``registry`` with its built-in entries imported (they register on import)."""
    for module in _PROVIDERS.get(registry.kind, ()):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return registry


def resolve(registry: Registry, name: str) -> Any:
    """``load(registry).get(name)``: the entry for a name or import path."""
    return load(registry).get(name)


Factory = Callable[..., Any]
