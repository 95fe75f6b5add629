"""Evaluate a saved potential on any labelled data file."""

from __future__ import annotations

from biojax.core.errors import DataError
from biojax.core.progress import progress as progress_bar
from biojax.data.graphs import GraphDataset
from biojax.data.io import read_dataset
from biojax.nn.io import load_potential
from biojax.train.losses import ErrorAccumulator
from biojax.train.loop import evaluate_dataset, make_predict_fn

#: structures whose graphs are built at a time (bounds memory on large files)
CHUNK = 1024


def evaluate_file(model_dir: str, data_file: str, batch_size: int = 16,
                  progress: bool = False) -> dict:
    """Energy (meV, meV/atom) and force (meV/Å) MAE/RMSE of a saved model on a file.
    ``progress``: a progress bar over the structures on stderr (``biojax.core.progress``).
    """
    potential = load_potential(model_dir)
    structures = read_dataset(data_file)
    if not any(s.energy is not None or s.forces is not None for s in structures):
        raise DataError(f"{data_file}: no energies or forces to compare against")
    has_stress = any(s.stress is not None for s in structures)
    predict_fn = make_predict_fn(potential, has_stress)
    acc, done = ErrorAccumulator(), 0
    with progress_bar(len(structures), "evaluate", progress, unit="structure") as bar:
        def advance(n):
            nonlocal done
            done += n
            bar.update(done)

        for start in range(0, len(structures), CHUNK):
            dataset = GraphDataset(structures[start:start + CHUNK], potential.cutoff,
                                   potential.species_of, potential.reference_energy)
            metrics = evaluate_dataset(dataset, potential.params, predict_fn, batch_size,
                                       accumulator=acc, on_batch=advance)
    return {"model": model_dir, "data": data_file, "n_structures": len(structures), **metrics}
