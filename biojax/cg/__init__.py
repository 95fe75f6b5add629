"""Coarse-grained models learned from fine-grained ones.

``mapping`` (atoms → beads, mapped forces), ``prior`` (Boltzmann inversion),
``potential.CGPotential`` (prior + any learned model on bead graphs, save/load, CG MD),
force matching through the training loop (``forcematch``), training through MD by
reweighting (``trainer``: relative entropy and DiffTRe, on ``sampler``, ``reweight`` and
``observables``), the ``spline-pair`` model, evaluation against the reference and
back-mapping to atoms (``backmap``), hybrid fine-grained-in-coarse-grained systems
(``hybrid``). ``biojax coarse-grain`` and ``biojax backmap`` are the
CLI.

The names below are imported on first use (importing jax-md takes seconds).
"""

import importlib

_EXPORTS = {
    "Mapping": "biojax.cg.mapping", "from_groups": "biojax.cg.mapping",
    "from_topology": "biojax.cg.mapping", "map_positions": "biojax.cg.mapping",
    "map_forces": "biojax.cg.mapping", "Prior": "biojax.cg.prior",
    "fit_prior": "biojax.cg.prior", "CGPotential": "biojax.cg.potential",
    "save_cg_potential": "biojax.cg.potential", "load_cg_potential": "biojax.cg.potential",
    "SplinePairModel": "biojax.cg.spline", "spline_pair_potential": "biojax.cg.spline",
    "ReweightConfig": "biojax.cg.trainer", "TargetConfig": "biojax.cg.trainer",
    "train_by_reweighting": "biojax.cg.trainer", "Sampler": "biojax.cg.sampler",
    "RDF": "biojax.cg.observables", "ADF": "biojax.cg.observables",
    "read_target": "biojax.cg.observables", "CoarseGrainConfig": "biojax.cg.config",
    "HybridPotential": "biojax.cg.hybrid", "HybridSystem": "biojax.cg.hybrid",
    "Coupling": "biojax.cg.hybrid", "select_region": "biojax.cg.hybrid",
    "build_hybrid": "biojax.cg.hybrid", "fit_coupling": "biojax.cg.hybrid",
    "save_coupling": "biojax.cg.hybrid", "load_coupling": "biojax.cg.hybrid",
    "hybrid_atoms": "biojax.cg.hybrid", "map_reference": "biojax.cg.hybrid",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'biojax.cg' has no attribute {name!r}")
