"""Labelling candidate structures with a reference engine in parallel worker processes.

Each worker process builds its own calculator once (``biojax.data.reference
.make_calculator``: "gfn2-xtb" via tblite, "emt", "openmm" or a user's "module:factory")
and labels the structures sent to it. A structure whose calculation fails (SCF not
converged, an element the engine does not know, non-finite results, ...) is recorded
with its index and the error and skipped; the others are returned in input order.
Workers are started with ``spawn`` (never ``fork``: the parent may hold JAX's threads).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from typing import Sequence

from ase import Atoms

from biojax.core.errors import ConfigError

_CALC = None


def _init_worker(engine: str, options: dict, base_dir, threads: int) -> None:
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    global _CALC
    from biojax.data.reference import make_calculator

    _CALC = make_calculator(engine, base_dir, **options)


def _label_one(index: int, atoms: Atoms, calc=None):
    """(index, labelled copy or None, error message or None)."""
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    work = atoms.copy()
    work.calc = _CALC if calc is None else calc
    try:
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=float)
    except Exception as exc:  # noqa: BLE001 - any engine failure is recorded, not fatal
        return index, None, f"structure {index}: {type(exc).__name__}: {exc}"
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        return index, None, f"structure {index}: non-finite energy or forces"
    result = atoms.copy()
    result.calc = SinglePointCalculator(result, energy=energy, forces=forces)
    return index, result, None


def label_parallel(frames: Sequence[Atoms], engine: str = "gfn2-xtb",
                   options: dict | None = None, workers: int = 2, base_dir=None,
                   threads_per_worker: int = 1, on_done=None
                   ) -> tuple[list[Atoms], list[dict]]:
    """Label ``frames`` (energy eV, forces eV/Å, as SinglePointCalculator results) with
    ``engine`` in ``workers`` processes (0: in this process, one after another). Returns
    (labelled frames in input order, without the failed ones; failures
    ``[{"index": i, "error": message}]``). ``on_done(n)`` is called after each structure
    (progress). A bad engine name or option is a ConfigError raised here, before any
    work is sent."""
    if workers < 0:
        raise ConfigError(f"label: workers must be >= 0 (0: in this process), got {workers}")
    options = dict(options or {})
    from biojax.data.reference import make_calculator

    calc = make_calculator(engine, base_dir, **options)  # bad name/options: fail here
    results, failures = {}, []

    def record(i, atoms, error):
        if error is None:
            results[i] = atoms
        else:
            failures.append({"index": i, "error": error})
        if on_done is not None:
            on_done(1)

    if workers == 0:  # in this process (a cheap engine such as EMT: no worker start-up)
        for i, a in enumerate(frames):
            record(*_label_one(i, a, calc))
        return [results[i] for i in sorted(results)], failures
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                initializer=_init_worker,
                                initargs=(engine, options, base_dir,
                                          threads_per_worker)) as pool:
        futures = [pool.submit(_label_one, i, a) for i, a in enumerate(frames)]
        for fut in cf.as_completed(futures):
            record(*fut.result())
    failures.sort(key=lambda f: f["index"])
    return [results[i] for i in sorted(results)], failures
