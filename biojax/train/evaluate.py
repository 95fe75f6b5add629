"""Evaluate a saved potential on any labelled data file."""

from __future__ import annotations

from biojax.data.graphs import GraphDataset
from biojax.data.io import read_dataset
from biojax.core.errors import DataError
from biojax.nn.io import load_potential
from biojax.train.loop import evaluate_dataset, make_predict_fn


def evaluate_file(model_dir: str, data_file: str, batch_size: int = 16) -> dict:
    """Energy (meV, meV/atom) and force (meV/Å) MAE/RMSE of a saved model on a file."""
    potential = load_potential(model_dir)
    structures = read_dataset(data_file)
    if not any(s.energy is not None or s.forces is not None for s in structures):
        raise DataError(f"{data_file}: no energies or forces to compare against")
    dataset = GraphDataset(structures, potential.cutoff, potential.species_of,
                           potential.reference_energy)
    has_stress = any(s.stress is not None for s in structures)
    metrics = evaluate_dataset(dataset, potential.params, make_predict_fn(potential, has_stress),
                               batch_size)
    return {"model": model_dir, "data": data_file, "n_structures": len(structures), **metrics}
