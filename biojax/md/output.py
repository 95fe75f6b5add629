"""Run-directory files: trajectories and observables, written so no work is lost.

Trajectory frames and observables are appended and flushed (and fsync-ed) after every
chunk; the checkpoint that follows (``biojax.md.checkpoint``) records each file's size
(extxyz, CSV, JSONL) or frame count (.traj). Resuming truncates every file back to what the
checkpoint saw, so a run killed between a flush and a checkpoint neither loses nor
duplicates frames.
"""

from __future__ import annotations

import json
import os

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from biojax.core.atomic import atomic_path
from biojax.core.errors import SimulationError

BASE_COLUMNS = ("step", "time_fs", "potential_energy", "kinetic_energy", "total_energy",
                "temperature", "conserved")


def observable_columns(sample: dict, extra: list[str] = ()) -> list[str]:
    """CSV columns for observable rows like ``sample`` (one host row, vectors flattened
    as ``name[i]``): the standard ones, then ``terms_energy``/``pressure_bar``/``volume``
    where present, then the extra observables in the order given."""
    columns = list(BASE_COLUMNS) + [k for k in ("terms_energy", "pressure_bar", "volume")
                                    if k in sample]
    for name in extra:
        columns += [k for k in sample if k == name or (k.startswith(name + "[")
                                                        and k[len(name) + 1:-1].isdigit())]
    return columns + [k for k in sample if k not in columns]


def replica_dir(out: str, replica: int, n_replicas: int) -> str:
    """Output directory of one replica: ``out`` itself for a single run, else replica_XXX."""
    return out if n_replicas == 1 else os.path.join(out, f"replica_{replica:03d}")


class ReplicaWriter:
    """Trajectory + observables of one replica (append, flush per chunk, truncate on resume)."""

    def __init__(self, folder: str, traj_format: str, obs_format: str, columns):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.traj_format = traj_format
        self.traj_path = os.path.join(folder, f"trajectory.{traj_format}")
        self.columns = list(columns)
        self.paths = {"trajectory": self.traj_path}
        if obs_format in ("csv", "both"):
            self.paths["csv"] = os.path.join(folder, "observables.csv")
        if obs_format in ("jsonl", "both"):
            self.paths["jsonl"] = os.path.join(folder, "observables.jsonl")
        self.n_frames = 0

    # ------------------------------------------------------------------ state
    def sizes(self) -> dict:
        """What a checkpoint records: byte sizes of text files and the frame count."""
        out = {k: os.path.getsize(p) if os.path.exists(p) else 0 for k, p in self.paths.items()}
        out["n_frames"] = self.n_frames
        return out

    def start(self) -> None:
        """Begin a fresh run: empty files with the CSV header."""
        for key, path in self.paths.items():
            with open(path, "w") as f:
                if key == "csv":
                    f.write(",".join(self.columns) + "\n")
        self.n_frames = 0

    def restore(self, sizes: dict) -> None:
        """Cut every file back to the sizes a checkpoint recorded."""
        for key, path in self.paths.items():
            if not os.path.exists(path):
                raise SimulationError(f"cannot resume: {path} is missing")
            if key == "trajectory" and self.traj_format == "traj":
                frames = ase.io.read(path, index=":") if os.path.getsize(path) else []
                if len(frames) < sizes["n_frames"]:
                    raise SimulationError(f"cannot resume: {path} has {len(frames)} frames, "
                                          f"checkpoint expects {sizes['n_frames']}")
                with atomic_path(path) as tmp, ase.io.Trajectory(tmp, "w") as t:
                    for a in frames[:sizes["n_frames"]]:
                        t.write(a)
                continue
            size = os.path.getsize(path)
            if size < sizes[key]:
                raise SimulationError(f"cannot resume: {path} is shorter ({size} bytes) than "
                                      f"the checkpoint recorded ({sizes[key]} bytes)")
            with open(path, "r+b") as f:
                f.truncate(sizes[key])
        self.n_frames = sizes["n_frames"]

    # ------------------------------------------------------------------ writing
    def write_observables(self, rows: list[dict]) -> None:
        if "csv" in self.paths:
            with open(self.paths["csv"], "a") as f:
                for row in rows:
                    f.write(",".join(_fmt(row.get(c, "")) for c in self.columns) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if "jsonl" in self.paths:
            with open(self.paths["jsonl"], "a") as f:
                for row in rows:
                    f.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def write_frames(self, frames: list[ase.Atoms]) -> None:
        if not frames:
            return
        if self.traj_format == "traj":
            with ase.io.Trajectory(self.traj_path, "a") as t:
                for a in frames:
                    t.write(a)
        else:
            with open(self.traj_path, "a") as f:
                ase.io.write(f, frames, format="extxyz")
                f.flush()
                os.fsync(f.fileno())
        self.n_frames += len(frames)


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _fmt(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def make_frame(numbers, positions, cell, pbc, step: int, time_fs: float, energy=None,
               velocities=None, forces=None) -> ase.Atoms:
    """An ASE Atoms frame (Å, Å/fs-free ASE velocity units, eV, eV/Å) with step/time info."""
    atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    atoms.info["step"] = int(step)
    atoms.info["time_fs"] = float(time_fs)
    if velocities is not None:
        atoms.set_velocities(velocities)
    if energy is not None or forces is not None:
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms
