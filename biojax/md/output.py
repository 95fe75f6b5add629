"""Run-directory files: trajectories and observables, written so no work is lost.

Trajectory frames and observables are appended and flushed (and fsync-ed) after every
chunk; the checkpoint that follows (``biojax.md.checkpoint``) records each file's size
(extxyz, DCD, XTC, CSV, JSONL) and frame count (.traj). Resuming truncates every file back
to what the checkpoint saw, so a run killed between a flush and a checkpoint neither loses
nor duplicates frames.

DCD (CHARMM/NAMD binary, Å) and XTC (GROMACS, nm, compressed to 0.001 nm) are what VMD,
PyMOL, MDAnalysis and mdtraj read; both come with ``topology.pdb`` (the starting
structure, atom and residue names kept when it was a PDB) next to them. DCD frames have
a fixed size after a header that counts them; biojax writes its own header (no date, so
a resumed run's file is byte-identical to an uninterrupted one's) and patches the count
after every chunk. XTC frames are self-contained records, written by mdtraj and appended.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from biojax.core.atomic import atomic_path
from biojax.core.errors import SimulationError
from biojax.md.checkpoint import CHECKPOINT_FILE

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


TOPOLOGY_FILE = "topology.pdb"
PLOT_FILES = ("energy.png", "temperature.png")
AKMA_TIME_FS = 48.88821291  # the DCD time unit (CHARMM's AKMA), fs


def replica_dir(out: str, replica: int, n_replicas: int) -> str:
    """Output directory of one replica: ``out`` itself for a single run, else replica_XXX."""
    return out if n_replicas == 1 else os.path.join(out, f"replica_{replica:03d}")


def result_files(out: str, n_replicas: int, traj_format: str, obs_format: str) -> list[str]:
    """The results a run in ``out`` writes that an earlier run may have left: the
    checkpoint and every replica's trajectory and observables."""
    paths = [os.path.join(out, CHECKPOINT_FILE)]
    for r in range(n_replicas):
        folder = replica_dir(out, r, n_replicas)
        paths.append(os.path.join(folder, f"trajectory.{traj_format}"))
        if obs_format in ("csv", "both"):
            paths.append(os.path.join(folder, "observables.csv"))
        if obs_format in ("jsonl", "both"):
            paths.append(os.path.join(folder, "observables.jsonl"))
    return paths


def remove_stale_temporaries(out: str, n_replicas: int) -> None:
    """Remove the temporary files of atomic writes (``.checkpoint.*.tmp.npz`` and the
    like, see ``biojax.core.atomic``) that a run killed mid-write left in ``out``; called
    while the run directory is locked, so no live writer owns them."""
    stems = ("checkpoint", "summary", "topology", "energy", "temperature", "trajectory")
    folders = {out} | {replica_dir(out, r, n_replicas) for r in range(n_replicas)}
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            parts = name.split(".")
            if (name.startswith(".") and len(parts) >= 4 and parts[1] in stems
                    and ".tmp" in name):
                os.remove(os.path.join(folder, name))


# ---------------------------------------------------------------------- DCD
def _dcd_header(n_atoms: int, periodic: bool, timestep_fs: float, frame_every: int) -> bytes:
    """A CHARMM/NAMD DCD header for 0 frames (the count is patched as frames come)."""
    icntrl = [0] * 20
    icntrl[1], icntrl[2] = 0, frame_every          # ISTART (first frame's step), NSAVC
    icntrl[10], icntrl[19] = int(periodic), 24      # unit cell present, CHARMM version
    head = struct.pack("<i4s9if10ii", 84, b"CORD", *icntrl[:9],
                       timestep_fs / AKMA_TIME_FS, *icntrl[10:], 84)
    lines = [f"REMARKS biojax trajectory: {n_atoms} atoms, a frame every {frame_every} "
             f"steps of {timestep_fs:g} fs", "REMARKS positions in Angstrom"]
    title = b"".join(line.encode("ascii")[:80].ljust(80) for line in lines)
    head += struct.pack("<ii", 4 + len(title), len(lines)) + title + \
        struct.pack("<i", 4 + len(title))
    return head + struct.pack("<iii", 4, n_atoms, 4)


def _dcd_set_count(f, n_frames: int, frame_every: int) -> None:
    """Patch NSET (frames) and NSTEP (steps spanned) in an open DCD file's header."""
    f.seek(8)
    f.write(struct.pack("<i", n_frames))
    f.seek(20)
    f.write(struct.pack("<i", n_frames * frame_every))


def _dcd_frames(frames: list[ase.Atoms], periodic: bool) -> bytes:
    out = []
    for a in frames:
        if periodic:
            A, B, C, alpha, beta, gamma = a.cell.cellpar()
            cos = np.cos(np.radians([gamma, beta, alpha]))
            cos[np.abs(cos) < 1e-12] = 0.0
            out.append(struct.pack("<i6di", 48, A, cos[0], B, cos[1], cos[2], C, 48))
        xyz = np.asarray(a.positions, np.float32)
        n = 4 * len(a)
        for k in range(3):
            out.append(struct.pack("<i", n) + xyz[:, k].astype("<f4").tobytes() +
                       struct.pack("<i", n))
    return b"".join(out)


# ---------------------------------------------------------------------- XTC
def _xtc_frames(frames: list[ase.Atoms]) -> bytes:
    """XTC records of ``frames`` (nm, ps), written by mdtraj to a scratch file."""
    from mdtraj.formats import XTCTrajectoryFile

    xyz = np.stack([a.positions for a in frames]).astype(np.float32) / 10.0
    time_ps = np.array([a.info["time_fs"] / 1000.0 for a in frames], np.float32)
    step = np.array([a.info["step"] for a in frames], np.int32)
    box = np.stack([a.cell.array.astype(np.float32) / 10.0 for a in frames])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "chunk.xtc")
        with XTCTrajectoryFile(path, "w") as f:
            f.write(xyz, time=time_ps, step=step, box=box)
        with open(path, "rb") as f:
            return f.read()


# ---------------------------------------------------------------------- topology
def write_topology_pdb(path: str, atoms: ase.Atoms) -> None:
    """The starting structure as a PDB (``openmm.app``, no date line, so rewriting it
    gives the same bytes): atom names, residue names and numbers from a PDB start
    (``atoms.arrays`` "atomtypes", "residuenames", "residuenumbers", as ASE's PDB reader
    and biojax's PDB loader set them), else element symbols in one residue "MOL"; a
    CRYST1 record for periodic cells."""
    from openmm import Vec3, app, unit

    from biojax.core.atomic import atomic_path

    n = len(atoms)
    symbols = atoms.get_chemical_symbols()
    names = [str(x).strip() for x in atoms.arrays.get("atomtypes", symbols)]
    resnames = [str(x).strip() or "MOL" for x in atoms.arrays.get("residuenames",
                                                                  ["MOL"] * n)]
    resids = [int(x) for x in atoms.arrays.get("residuenumbers", [1] * n)]
    top = app.Topology()
    chain = top.addChain()
    residue, key = None, None
    for i in range(n):
        if (resids[i], resnames[i]) != key:
            key = (resids[i], resnames[i])
            residue = top.addResidue(resnames[i], chain, id=str(resids[i]))
        top.addAtom(names[i][:4] or symbols[i],
                    app.Element.getByAtomicNumber(int(atoms.numbers[i])), residue)
    positions = [Vec3(*map(float, p)) for p in atoms.positions] * unit.angstrom
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        if atoms.pbc.all():
            a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
            f.write(f"CRYST1{a:9.3f}{b:9.3f}{c:9.3f}{alpha:7.2f}{beta:7.2f}{gamma:7.2f} "
                    "P 1           1 \n")
        app.PDBFile.writeModel(top, positions, f)
        app.PDBFile.writeFooter(top, f)


class ReplicaWriter:
    """Trajectory + observables of one replica (append, flush per chunk, truncate on resume).

    ``start_atoms`` (the replica's starting structure) is needed for DCD/XTC, which get
    ``topology.pdb`` from it; ``timestep_fs`` and ``frame_every`` go into the DCD header.
    """

    def __init__(self, folder: str, traj_format: str, obs_format: str, columns,
                 start_atoms: ase.Atoms | None = None, timestep_fs: float = 1.0,
                 frame_every: int = 1):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.traj_format = traj_format
        self.traj_path = os.path.join(folder, f"trajectory.{traj_format}")
        self.columns = list(columns)
        self.start_atoms = start_atoms
        self.timestep_fs, self.frame_every = timestep_fs, frame_every
        self.periodic = bool(start_atoms is not None and start_atoms.pbc.all())
        self.topology_path = os.path.join(folder, TOPOLOGY_FILE)
        if traj_format in ("dcd", "xtc") and start_atoms is None:
            raise SimulationError(f"trajectory_format = {traj_format!r} needs the starting "
                                  "structure for its topology.pdb")
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
        """Begin a fresh run: empty files with the CSV header (DCD: its header; DCD/XTC:
        ``topology.pdb``)."""
        for key, path in self.paths.items():
            with open(path, "wb") as f:
                if key == "csv":
                    f.write((",".join(self.columns) + "\n").encode())
                elif key == "trajectory" and self.traj_format == "dcd":
                    f.write(_dcd_header(len(self.start_atoms), self.periodic,
                                        self.timestep_fs, self.frame_every))
        if self.traj_format in ("dcd", "xtc"):
            write_topology_pdb(self.topology_path, self.start_atoms)
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
                if key == "trajectory" and self.traj_format == "dcd":
                    _dcd_set_count(f, sizes["n_frames"], self.frame_every)
                f.flush()
                os.fsync(f.fileno())
        if self.traj_format in ("dcd", "xtc") and not os.path.exists(self.topology_path):
            write_topology_pdb(self.topology_path, self.start_atoms)
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
        elif self.traj_format in ("dcd", "xtc"):
            data = (_dcd_frames(frames, self.periodic) if self.traj_format == "dcd"
                    else _xtc_frames(frames))
            with open(self.traj_path, "r+b") as f:
                f.seek(0, os.SEEK_END)
                f.write(data)
                if self.traj_format == "dcd":
                    _dcd_set_count(f, self.n_frames + len(frames), self.frame_every)
                f.flush()
                os.fsync(f.fileno())
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


# ---------------------------------------------------------------------- plots
def read_observables(folder: str) -> dict[str, np.ndarray]:
    """The observables a ReplicaWriter wrote in ``folder`` (CSV, else JSONL) as arrays."""
    csv, jsonl = os.path.join(folder, "observables.csv"), os.path.join(folder,
                                                                      "observables.jsonl")
    if os.path.exists(csv):
        with open(csv) as f:
            header = f.readline().strip().split(",")
            rows = [line.strip().split(",") for line in f if line.strip()]
        data = {}
        for k, name in enumerate(header):
            try:
                data[name] = np.array([float(r[k]) for r in rows])
            except (ValueError, IndexError):
                continue
        return data
    with open(jsonl) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))] if rows else []
    return {k: np.array([r.get(k, np.nan) for r in rows], float) for k in keys}


def plot_figures(folders: list[str], target_K: float | None, conserved_name: str) -> dict:
    """The figures :func:`write_plots` saves, by file name (matplotlib Figures, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = [read_observables(f) for f in folders]
    series = [s for s in series if "time_fs" in s and len(s["time_fs"])]
    if not series:
        return {}
    many = len(series) > 1
    labels = [f"replica {r}" for r in range(len(series))]
    panels = [("potential_energy", "potential energy (eV)"),
              ("kinetic_energy", "kinetic energy (eV)"),
              ("conserved", f"{conserved_name} drift (meV)")]

    energy = Figure(figsize=(6.4, 6.4), layout="constrained")
    FigureCanvasAgg(energy)
    axes = energy.subplots(len(panels), 1, sharex=True)
    for ax, (key, ylabel) in zip(axes, panels):
        for r, s in enumerate(series):
            if key in s:
                y = s[key] if key != "conserved" else 1000.0 * (s[key] - s[key][0])
                ax.plot(s["time_fs"] / 1000.0, y, lw=0.8, label=labels[r])
        ax.set_ylabel(ylabel)
    axes[-1].set_xlabel("time (ps)")
    axes[0].set_title("energies")
    if many:
        axes[0].legend(fontsize="small", ncol=min(4, len(series)), loc="best")

    temperature = Figure(figsize=(6.4, 3.6), layout="constrained")
    FigureCanvasAgg(temperature)
    ax = temperature.subplots()
    for r, s in enumerate(series):
        ax.plot(s["time_fs"] / 1000.0, s["temperature"], lw=0.8,
                label=labels[r] if many else "_nolegend_")
    if target_K is not None:
        ax.axhline(target_K, color="k", ls="--", lw=1.0, label=f"target {target_K:g} K")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("temperature (K)")
    ax.set_title("temperature")
    if many or target_K is not None:
        ax.legend(fontsize="small", ncol=min(4, len(series) + 1), loc="best")
    return {"energy.png": energy, "temperature.png": temperature}


def write_plots(out: str, folders: list[str], target_K: float | None,
                conserved_name: str) -> list[str]:
    """``energy.png`` (potential and kinetic energy in eV, and the drift of the total or
    conserved energy from its start in meV, vs time in ps) and ``temperature.png`` (K vs
    ps, with the thermostat's target as a dashed line when ``target_K`` is given) in
    ``out``: every replica in one figure, a legend naming them only when there are
    several. Returns the paths written."""
    written = []
    for name, fig in plot_figures(folders, target_K, conserved_name).items():
        path = os.path.join(out, name)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        written.append(path)
    return written
