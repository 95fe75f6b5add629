"""Potentials: Flax models on a Graph (SchNet, PaiNN, user models by import path),
classical pair potentials, the Potential that couples a model with its parameters, and
saving/loading."""

from biojax.nn.classical import PairModel, lennard_jones, morse
from biojax.nn.io import load_potential, save_potential
from biojax.nn.models import PaiNN, SchNet, build_model, init_potential
from biojax.nn.potential import Potential, graph_energy_forces_stress

__all__ = ["PairModel", "lennard_jones", "morse", "load_potential", "save_potential",
           "PaiNN", "SchNet", "build_model", "init_potential", "Potential",
           "graph_energy_forces_stress"]
