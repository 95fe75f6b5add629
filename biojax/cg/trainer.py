"""Training a CG model through MD: the alternating DiffTRe / relative-entropy trainer.

Loop (Thaler & Zavadlav 2021, Algorithm 1)::

    sample with the current parameters (R replicas, vmapped; frames kept in memory)
    repeat:
        reweight the frames to the current parameters; if N_eff/N < ess_threshold and
        the frames are not fresh: sample again with the current parameters
        loss and gradient by reweighting (DiffTRe) or the relative-entropy gradient
        one optax update; log; checkpoint

An ``anchor`` loss (``train_by_reweighting(..., anchor=fn)``) adds its gradient at every
update: data fusion in the spirit of Röcken & Zavadlav (npj Comput. Mater. 10, 2024,
doi:10.1038/s41524-024-01251-4, who alternate the two), here summed: a force-matching
loss on reference frames keeps a learned potential's forces while DiffTRe moves its
ensemble averages (``examples/water/refine_difftre.py``).

``[reweighting]`` (:class:`ReweightConfig`) holds the settings, read by
``biojax.core.config.load`` with ``table="reweighting"``. Targets are tables of
``[[reweighting.targets]]``: an RDF or ADF curve from a file (:func:`read_target`
formats; RDF r in nm by default, converted to Å) or a pressure in bar.

Files in ``workdir``: ``checkpoint.msgpack`` (parameters, optimizer state, counters;
written atomically after every update), ``trajectory-<k>.npz`` (the k-th sampled
trajectory with the sampler state to continue from, written atomically before it is
used), ``metrics.jsonl`` and ``metrics.csv`` (iteration, loss, each target's RMSE,
N_eff, resampled?, wall time), ``training.png`` and the trained potential in
``potential/``. ``resume=True`` continues from the checkpoint and, because sampling
depends only on (parameters, saved sampler state) and every random key derives from
the config's seed, repeats an uninterrupted run exactly (the tests check it).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Any, Callable, Literal, Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from biojax.core.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from biojax.core.config import load, to_dict
from biojax.core.errors import ConfigError, SimulationError
from biojax.core.progress import progress as progress_bar
from biojax.core.rundir import RunLock
from biojax.core.units import KB
from biojax.cg import observables as obs
from biojax.cg.reweight import (Target, difftre_loss, frame_energies,
                                relative_entropy_gradient)
from biojax.cg.sampler import Sampler, SamplerState, make_energy

CHECKPOINT = "checkpoint.msgpack"
METRICS = "metrics.jsonl"
FORMAT = 1


# ====================================================================== config
@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """One target (``[[reweighting.targets]]``).

    ``kind`` "rdf" (``file``: r in ``length_unit``, g(r); bins on [r_min, r_max] Å),
    "adf" (``file``: θ rad, p(θ); triplets within ``r_outer`` Å) or "pressure"
    (``value`` bar). ``fit_min``/``fit_max`` (Å or rad) limit the bins that enter the
    loss and the RMSE. ``weight`` multiplies the mean squared error (for the pressure:
    per bar²). ``pair`` (two element symbols, e.g. ``["O", "O"]``) restricts an RDF to
    the pairs between atoms of those elements (all atoms when unset).
    """

    kind: Literal["rdf", "adf", "pressure"]
    file: str | None = dataclasses.field(default=None, metadata={"path": True})
    weight: float = 1.0
    value: float | None = None
    length_unit: Literal["nm", "angstrom"] = "nm"
    r_min: float = 0.0
    r_max: float = 10.0
    n_bins: int = 100
    sigma: float | None = None
    r_outer: float = 3.18
    fit_min: float | None = None
    fit_max: float | None = None
    name: str | None = None
    pair: tuple[str, str] | None = None

    def __post_init__(self):
        if self.kind in ("rdf", "adf") and not self.file:
            raise ValueError(f"target {self.kind!r} needs a file")
        if self.pair is not None:
            from ase.data import atomic_numbers

            if self.kind != "rdf" or len(self.pair) != 2:
                raise ValueError(f"pair = {list(self.pair)}: only an rdf target takes a pair "
                                 "of two element symbols")
            unknown = [e for e in self.pair if e not in atomic_numbers]
            if unknown:
                raise ValueError(f"pair: unknown element symbol(s) {unknown}")
        if self.kind == "pressure" and self.value is None:
            raise ValueError("target 'pressure' needs a value (bar)")
        if self.weight < 0:
            raise ValueError(f"target weight must be >= 0, got {self.weight}")

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclasses.dataclass(frozen=True)
class ReweightConfig:
    """Settings of :func:`train_by_reweighting` (``[reweighting]``; units fs, K, Å)."""

    method: Literal["difftre", "relative-entropy"] = "difftre"
    iterations: int = 50
    learning_rate: float = 0.003          # eV per Adam step for spline energies
    lr_decay: float = 1.0                 # learning rate × this at the last iteration
    optimizer: Literal["adam", "sgd"] = "adam"
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    grad_clip: float = 0.0                # global-norm clip; 0 = none
    replicas: int = 4
    equilibration_steps: int = 1000       # before the first trajectory
    resample_equilibration_steps: int = 250  # before every later trajectory
    production_steps: int = 2000
    frame_every: int = 50
    timestep_fs: float = 2.0
    temperature_K: float = 298.0
    friction_per_ps: float = 2.0
    ensemble: str = "nvt-langevin"
    ess_threshold: float = 0.6            # resample when N_eff / N falls below
    targets: tuple[TargetConfig, ...] = ()
    seed: int = 0
    neighbor_skin: float = 0.5
    capacity_multiplier: float = 1.25
    replica_block: int = 0
    energy_batch: int = 8                 # frames per batch when reweighting
    plots: bool = True

    def __post_init__(self):
        checks = [
            (self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}"),
            (self.replicas >= 1, f"replicas must be >= 1, got {self.replicas}"),
            (self.frame_every >= 1, "frame_every must be >= 1"),
            (self.production_steps >= self.frame_every and
             self.production_steps % self.frame_every == 0,
             f"production_steps ({self.production_steps}) must be a positive multiple of "
             f"frame_every ({self.frame_every})"),
            (self.resample_equilibration_steps >= 1,
             "resample_equilibration_steps must be >= 1"),
            (self.equilibration_steps >= 0 and
             self.equilibration_steps % self.resample_equilibration_steps == 0,
             f"equilibration_steps ({self.equilibration_steps}) must be a multiple of "
             f"resample_equilibration_steps ({self.resample_equilibration_steps})"),
            (self.timestep_fs > 0, f"timestep_fs must be > 0, got {self.timestep_fs}"),
            (self.temperature_K > 0, f"temperature_K must be > 0, got {self.temperature_K}"),
            (self.friction_per_ps > 0, "friction_per_ps must be > 0"),
            (0 <= self.ess_threshold < 1, f"ess_threshold must be in [0, 1), got "
                                          f"{self.ess_threshold}"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.energy_batch >= 1, "energy_batch must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        labels = [t.label for t in self.targets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"target names must be unique, got {labels} (set name = ...)")

    @property
    def frames_per_replica(self) -> int:
        return self.production_steps // self.frame_every


def load_config(path: str, overrides=()) -> ReweightConfig:
    """Read a ``[reweighting]`` table (or a top-level one) from TOML, with overrides;
    target file paths are relative to the TOML file's folder."""
    return load(ReweightConfig, path, overrides, table="reweighting")


# ====================================================================== the model
def _parts(model):
    """(the learned Potential, is it a CGPotential?) for a Potential or CGPotential."""
    learned = getattr(model, "learned", None)
    if learned is not None:
        return learned, True
    if not hasattr(model, "energy_fn") or not hasattr(model, "params"):
        raise ConfigError("train_by_reweighting: the model must be a biojax Potential or "
                          f"a CGPotential, got {type(model).__name__}")
    return model, False


def _with_params(model, params):
    learned, is_cg = _parts(model)
    new = learned.replace(params=params)
    return dataclasses.replace(model, learned=new) if is_cg else new


def _save_model(model, directory: str) -> None:
    learned, is_cg = _parts(model)
    if is_cg:
        try:
            from biojax.cg.potential import save_cg_potential
        except ImportError:
            save_cg_potential = None
        if save_cg_potential is not None:
            save_cg_potential(model, directory)
            return
    from biojax.nn.io import save_potential

    save_potential(learned, directory)


# ====================================================================== targets
@dataclasses.dataclass
class _Observables:
    """Built targets: per-frame structural functions, parameter-dependent ones, the
    reweighting Targets and what to plot."""

    static: dict                # name -> jitted fn(frames) -> (F, ...)
    dynamic: dict               # name -> fn(params, (R, nbrs)) -> value
    targets: tuple              # reweight.Target
    curves: dict                # name -> (x, target y, mask, x label)


def build_observables(config: ReweightConfig, box, n_atoms: int, energy: Callable,
                      kT: float, log: Callable = print, numbers=None) -> _Observables:
    """The configured targets as observables on this system (box (3,) Å or None;
    ``numbers`` (N,) atomic numbers, needed by an RDF target with a ``pair``)."""
    static, dynamic, targets, curves = {}, {}, [], {}
    for t in config.targets:
        name = t.label
        if t.kind in ("rdf", "adf"):
            data = obs.read_target(t.file, t.kind, t.length_unit)
            if data.note:
                log(f"target {name}: {t.file}: {data.note}")
            if t.kind == "rdf":
                groups = _pair_groups(t, numbers)
                o = obs.RDF(None if box is None else tuple(box), t.r_max, t.n_bins,
                            t.r_min, t.sigma, *groups)
                batch = 4
            else:
                o = obs.ADF(None if box is None else tuple(box), t.r_outer,
                            t.n_bins, t.sigma)
                batch = 2
            x = o.centers
            y = data.on(x)
            lo = -np.inf if t.fit_min is None else t.fit_min
            hi = np.inf if t.fit_max is None else t.fit_max
            mask = (x >= lo) & (x <= hi)
            fn = obs.frames_fn(o.per_frame(n_atoms), batch)
            if t.kind == "adf":
                static[name] = _adf_checked(fn, o)
            else:
                static[name] = fn
            targets.append(Target(name, jnp.asarray(y, jnp.float32), t.weight,
                                  jnp.asarray(mask)))
            curves[name] = (x, y, mask, "r (Å)" if t.kind == "rdf" else "θ (rad)")
        else:  # pressure
            if box is None:
                raise ConfigError("a pressure target needs a periodic box")
            p = obs.make_pressure(energy, box, n_atoms, kT)
            dynamic[name] = lambda params, fr, p=p: p(fr[0], fr[1], params)
            targets.append(Target(name, jnp.float32(t.value), t.weight, None))
    return _Observables(static, dynamic, tuple(targets), curves)


def _pair_groups(t: TargetConfig, numbers) -> tuple:
    """(group_a, group_b) atom indices of an RDF target's ``pair`` (None, None: all)."""
    if t.pair is None:
        return None, None
    from ase.data import atomic_numbers

    if numbers is None:
        raise ConfigError(f"target {t.label}: pair {list(t.pair)} needs the system's atomic "
                          "numbers (build_observables(..., numbers=...))")
    numbers = np.asarray(numbers)
    groups = []
    for symbol in t.pair:
        idx = np.flatnonzero(numbers == atomic_numbers[symbol])
        if idx.size == 0:
            raise ConfigError(f"target {t.label}: pair {list(t.pair)}, but the system has "
                              f"no {symbol} atoms")
        groups.append(tuple(idx.tolist()))
    return tuple(groups)


def _adf_checked(fn, adf: obs.ADF):
    def run(frames):
        p, count = fn(frames)
        if int(np.max(count)) > adf.max_neighbors:
            raise SimulationError(f"ADF: an atom has {int(np.max(count))} neighbours within "
                                  f"{adf.r_outer} Å (max_neighbors = {adf.max_neighbors})")
        return p

    return run


# ====================================================================== the trainer
def _optimizer(config: ReweightConfig) -> optax.GradientTransformation:
    n = max(config.iterations, 1)
    schedule = optax.exponential_decay(config.learning_rate, n, config.lr_decay)
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    if config.optimizer == "adam":
        parts.append(optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2))
    else:
        parts.append(optax.sgd(schedule))
    return optax.chain(*parts)


_RESUME_KEYS = ("method", "learning_rate", "lr_decay", "optimizer", "adam_b1", "adam_b2",
                "grad_clip", "replicas", "equilibration_steps",
                "resample_equilibration_steps", "production_steps", "frame_every",
                "timestep_fs", "temperature_K", "friction_per_ps", "ensemble",
                "ess_threshold", "targets", "seed", "energy_batch")


def train_by_reweighting(model, start: ase.Atoms | Sequence[ase.Atoms],
                         config: ReweightConfig, workdir: str, resume: bool = False,
                         progress: bool = False, log: Callable = print,
                         reference_frames=None, prior_energy: Callable | None = None,
                         stop_after: int | None = None,
                         anchor: Callable | None = None) -> dict:
    """Train ``model``'s parameters by reweighting (see module doc).

    Args:
      model: a :class:`~biojax.nn.potential.Potential` (e.g. ``spline_pair_potential``)
        or a CGPotential (its learned part is trained, its prior held fixed).
      start: starting structure(s) of the CG system (ase.Atoms with masses set).
      config: :class:`ReweightConfig`.
      workdir: folder for checkpoint, trajectories, metrics, plots and the result.
      resume: continue from ``workdir``'s checkpoint (same config required).
      progress: show a progress bar (updates, loss, N_eff).
      log: where one-line messages go (``print``; ``lambda *a: None`` for silence).
      reference_frames: (F, N, 3) Å mapped fine-grained frames (relative entropy).
      prior_energy: extra fixed energy, ``prior_energy(displacement_fn)`` →
        ``fn(R, **kw)`` eV, added to a plain Potential.
      stop_after: stop after this many updates in this call (time-boxed runs; tests
        use it to simulate a kill); the checkpoint lets a later call resume.
      anchor: an extra loss ``anchor(params, update) -> scalar`` added to the
        reweighting loss at every update (its gradient with ``jax.grad``; ``update`` is
        the 0-based update number, e.g. to cycle through batches). Fused training: a
        force-matching loss on reference frames keeps a learned potential's forces
        while DiffTRe moves its ensemble averages. Logged as ``anchor``.

    Returns a dict: ``model`` (trained, same type as given), ``params``, ``metrics``
    (list of dicts), ``samples`` (trajectories sampled), ``completed``, ``wall_s``.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    with RunLock(workdir, "reweighting"):
        return _Trainer(model, start, config, workdir, progress, log, reference_frames,
                        prior_energy, anchor).run(resume, stop_after)


class _Trainer:
    def __init__(self, model, start, config: ReweightConfig, workdir: str, progress: bool,
                 log: Callable, reference_frames, prior_energy, anchor=None):
        self.model, self.cfg, self.workdir = model, config, workdir
        self.anchor = anchor
        self.progress, self.log = progress, log
        learned, _ = _parts(model)
        self.learned = learned
        frames = [start] if isinstance(start, ase.Atoms) else list(start)
        if not frames:
            raise ConfigError("train_by_reweighting: no starting structure")
        numbers = frames[0].get_atomic_numbers()
        learned.species_of(numbers)  # unknown beads -> ModelError
        from biojax.md.system import make_space

        space = make_space(frames[0], npt=False)
        self.energy = make_energy(model, space.displacement_fn, numbers, prior_energy)
        neighbor_format = getattr(learned.model, "neighbor_format", "ordered-sparse")
        self.sampler = Sampler(
            self.energy, frames, learned.cutoff, replicas=config.replicas,
            temperature_K=config.temperature_K, timestep_fs=config.timestep_fs,
            friction_per_ps=config.friction_per_ps, ensemble=config.ensemble,
            neighbor_format=neighbor_format, skin=config.neighbor_skin,
            capacity_multiplier=config.capacity_multiplier,
            replica_block=config.replica_block)
        self.kT = KB * config.temperature_K
        self.beta = 1.0 / self.kT
        box = None if not self.sampler.space.periodic else np.asarray(
            self.sampler.space.box, np.float64)
        self.n_atoms = len(numbers)
        self.observables = build_observables(config, box, self.n_atoms, self.energy,
                                             self.kT, log, numbers)
        if config.method == "relative-entropy":
            if reference_frames is None:
                raise ConfigError("method 'relative-entropy' needs reference_frames "
                                  "(mapped fine-grained frames, (F, N, 3) Å)")
            ref = np.asarray(reference_frames, np.float32)
            if ref.ndim != 3 or ref.shape[1:] != (self.n_atoms, 3):
                raise ConfigError(f"reference_frames must have shape (F, {self.n_atoms}, "
                                  f"3), got {ref.shape}")
            from biojax.md.system import to_internal

            self.reference = np.stack([to_internal(r, self.sampler.space) for r in ref])
        elif not self.observables.targets:
            raise ConfigError("method 'difftre' needs at least one target "
                              "([[reweighting.targets]])")
        else:
            self.reference = None
        self.optimizer = _optimizer(config)
        u = self._frame_energy
        if config.method == "difftre":
            loss = difftre_loss(u, self.beta, self.observables.targets,
                                self.observables.dynamic, config.energy_batch)
            self._step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        else:
            self._srel = jax.jit(relative_entropy_gradient(u, self.beta,
                                                           config.energy_batch))
            if self.observables.targets:
                loss = difftre_loss(u, self.beta, self.observables.targets,
                                    self.observables.dynamic, config.energy_batch)
                self._monitor = jax.jit(loss)
        self._energies = jax.jit(lambda p, fr: frame_energies(u, p, fr,
                                                              config.energy_batch))
        self._apply = jax.jit(self.optimizer.update)
        self.frame_capacity = 0
        self.ref_capacity = 0

    # ----------------------------------------------------------------- pieces
    def _frame_energy(self, params, frame):
        R, nbrs = frame
        return self.energy(R, nbrs, params)

    def _traj_path(self, k: int) -> str:
        return os.path.join(self.workdir, f"trajectory-{k}.npz")

    def _sample(self, params, state: SamplerState, k: int, first: bool):
        """Trajectory k with ``params`` from ``state``; written to trajectory-k.npz."""
        cfg, t0 = self.cfg, time.perf_counter()
        E = cfg.resample_equilibration_steps
        n_equil = cfg.equilibration_steps // E if first else 1
        for _ in range(n_equil):
            _, _, state = self.sampler.run(params, state, 1, E)
        frames, _, state = self.sampler.run(params, state, cfg.frames_per_replica,
                                            cfg.frame_every)
        arrays = {"frames": frames.astype(np.float32), "k": np.asarray(k)}
        arrays.update(self.sampler.state_arrays(state))
        arrays.update({f"params_{i}": np.asarray(x)
                       for i, x in enumerate(jax.tree_util.tree_leaves(params))})
        with atomic_path(self._traj_path(k)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        self.log(f"sample {k}: {cfg.replicas} replicas × {cfg.frames_per_replica} frames "
                 f"({(n_equil * E + cfg.production_steps) * cfg.timestep_fs / 1000:.3g} ps "
                 f"each) in {time.perf_counter() - t0:.1f} s")
        return frames, state

    def _prepare(self, params, frames):
        """Reference data of a trajectory: flat frames with neighbor lists, U_ref,
        structural observables per frame (and the reference set's, for S_rel)."""
        flat = frames.reshape((-1,) + frames.shape[2:])
        nbrs, self.frame_capacity = self.sampler.frame_neighbors(flat, self.frame_capacity)
        fr = (jnp.asarray(flat), nbrs)
        ref = {"frames": fr, "u_ref": self._energies(params, fr),
               "static": {name: jnp.asarray(fn(flat))
                          for name, fn in self.observables.static.items()}}
        if self.reference is not None:
            rn, self.ref_capacity = self.sampler.frame_neighbors(self.reference,
                                                                 self.ref_capacity)
            rfr = (jnp.asarray(self.reference), rn)
            ref["ref_frames"] = rfr
            ref["u_ref_on_ref"] = self._energies(params, rfr)
        return ref

    def _load_traj(self, k: int, params0):
        path = self._traj_path(k)
        try:
            with np.load(path) as z:
                arrays = {key: z[key] for key in z.files}
        except (OSError, ValueError) as exc:
            raise SimulationError(f"{path}: cannot be read ({exc}); delete the workdir or "
                                  "start without resume") from None
        leaves, treedef = jax.tree_util.tree_flatten(params0)
        params_ref = jax.tree_util.tree_unflatten(
            treedef, [jnp.asarray(arrays[f"params_{i}"]) for i in range(len(leaves))])
        state = self.sampler.state_from_arrays(params0, arrays)
        return arrays["frames"], state, params_ref

    def _checkpoint(self, params, opt_state, meta: dict) -> None:
        blob = serialization.msgpack_serialize({
            "params": serialization.to_state_dict(params),
            "opt_state": serialization.to_state_dict(opt_state),
            "meta": json.dumps(meta)})
        atomic_write_bytes(os.path.join(self.workdir, CHECKPOINT), blob)

    def _restore(self, params0, opt0):
        path = os.path.join(self.workdir, CHECKPOINT)
        try:
            with open(path, "rb") as f:
                raw = serialization.msgpack_restore(f.read())
            meta = json.loads(raw["meta"])
            params = serialization.from_state_dict(params0, raw["params"])
            opt_state = serialization.from_state_dict(opt0, raw["opt_state"])
        except Exception as exc:  # damaged or foreign file
            raise SimulationError(f"{path}: damaged or not a reweighting checkpoint "
                                  f"({type(exc).__name__}: {exc})") from None
        saved = meta.get("config", {})
        now = to_dict(self.cfg)
        changed = [k for k in _RESUME_KEYS if saved.get(k) != now.get(k)]
        if changed:
            raise ConfigError(f"resume: {', '.join(changed)} differ(s) from the run in "
                              f"{self.workdir}; resume with the same settings (only "
                              "iterations and plots may change)")
        params = jax.tree_util.tree_map(jnp.asarray, params)
        opt_state = jax.tree_util.tree_map(jnp.asarray, opt_state)
        return params, opt_state, meta

    # ----------------------------------------------------------------- metrics
    def _metrics_path(self):
        return os.path.join(self.workdir, METRICS)

    def _read_metrics(self, upto: int) -> list[dict]:
        rows = []
        if os.path.isfile(self._metrics_path()):
            with open(self._metrics_path()) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill
                    if row.get("iteration", 0) <= upto:
                        rows.append(row)
        atomic_write_text(self._metrics_path(), "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def _write_csv(self, rows: list[dict]) -> None:
        if not rows:
            return
        keys = list(rows[0])
        for r in rows:
            keys += [k for k in r if k not in keys]
        lines = [",".join(keys)] + [",".join("" if r.get(k) is None else str(r.get(k))
                                             for k in keys) for r in rows]
        atomic_write_text(os.path.join(self.workdir, "metrics.csv"), "\n".join(lines) + "\n")

    # ----------------------------------------------------------------- run
    def run(self, resume: bool, stop_after: int | None) -> dict:
        cfg, t_start = self.cfg, time.perf_counter()
        params = jax.tree_util.tree_map(jnp.asarray, self.learned.params)
        opt_state = self.optimizer.init(params)
        meta = {"format": FORMAT, "iteration": 0, "samples": 0, "traj": -1,
                "need_sample": True, "frame_capacity": 0, "ref_capacity": 0,
                "config": to_dict(cfg), "wall_s": 0.0}
        state, ref, frames = None, None, None
        if resume and not os.path.isfile(os.path.join(self.workdir, CHECKPOINT)):
            self.log(f"resume: no checkpoint in {self.workdir} yet (killed before the "
                     "first update); starting from the beginning")
            resume = False
        if resume:
            params, opt_state, meta = self._restore(params, opt_state)
            rows = self._read_metrics(meta["iteration"])
            self.frame_capacity = meta["frame_capacity"]
            self.ref_capacity = meta["ref_capacity"]
            if meta["traj"] >= 0:
                frames, state, params_ref = self._load_traj(meta["traj"], params)
                if not meta["need_sample"]:
                    ref = self._prepare(params_ref, frames)
            self.log(f"resumed at iteration {meta['iteration']} ({meta['samples']} "
                     f"trajectories sampled)")
        else:
            if os.path.exists(os.path.join(self.workdir, CHECKPOINT)):
                raise ConfigError(f"{self.workdir} holds an earlier reweighting run "
                                  f"({CHECKPOINT}); resume it or choose another workdir")
            rows = []
            atomic_write_text(self._metrics_path(), "")
        for old in glob.glob(os.path.join(self.workdir, "trajectory-*.npz")):
            if old != self._traj_path(meta["traj"]):
                os.remove(old)
        wall0 = meta["wall_s"]
        done_here = 0
        fresh = False
        bar = progress_bar(cfg.iterations, "reweighting", enabled=self.progress,
                           unit="update")
        bar.update(meta["iteration"])
        try:
            while meta["iteration"] < cfg.iterations:
                if stop_after is not None and done_here >= stop_after:
                    break
                if meta["need_sample"]:
                    k = meta["samples"]
                    if state is None:
                        state = self.sampler.init(params, cfg.seed)
                    frames, state = self._sample(params, state, k, first=k == 0)
                    ref = self._prepare(params, frames)
                    meta.update(samples=k + 1, traj=k, need_sample=False,
                                frame_capacity=self.frame_capacity,
                                ref_capacity=self.ref_capacity)
                    fresh = True
                grads, info = self._gradient(params, ref, meta["iteration"])
                n_frames = int(ref["u_ref"].shape[0])
                frac = info["n_eff"] / n_frames
                if not fresh and frac < cfg.ess_threshold:
                    meta["need_sample"] = True
                    self.log(f"iteration {meta['iteration']}: N_eff/N = {frac:.3f} < "
                             f"{cfg.ess_threshold}: sampling again")
                    continue
                updates, opt_state = self._apply(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
                meta["iteration"] += 1
                done_here += 1
                row = {"iteration": meta["iteration"], "loss": info.get("loss"),
                       **{f"rmse_{k}": v for k, v in info["rmse"].items()},
                       **{k: info[k] for k in ("pressure_bar", "delta_srel", "anchor",
                                               "grad_norm") if k in info},
                       "n_eff": info["n_eff"], "n_eff_fraction": frac,
                       "resampled": fresh, "samples": meta["samples"],
                       "wall_s": wall0 + time.perf_counter() - t_start}
                fresh = False
                rows.append(row)
                with open(self._metrics_path(), "a") as f:
                    f.write(json.dumps(row) + "\n")
                meta["wall_s"] = row["wall_s"]
                self._checkpoint(params, opt_state, meta)
                for old in glob.glob(os.path.join(self.workdir, "trajectory-*.npz")):
                    if old != self._traj_path(meta["traj"]):
                        os.remove(old)
                bar.update(meta["iteration"])
                bar.set(loss=f"{row['loss']:.4g}" if row["loss"] is not None else "-",
                        neff=f"{frac:.2f}", samples=meta["samples"])
        finally:
            bar.close()
        self._write_csv(rows)
        trained = _with_params(self.model, params)
        completed = meta["iteration"] >= cfg.iterations
        plots = []
        if cfg.plots and rows:
            plots.append(training_plot(rows, os.path.join(self.workdir, "training.png")))
        if completed:
            _save_model(trained, os.path.join(self.workdir, "potential"))
        return {"model": trained, "params": params, "metrics": rows,
                "samples": meta["samples"], "completed": completed,
                "iteration": meta["iteration"], "plots": plots,
                "wall_s": time.perf_counter() - t_start,
                "sampler_traces": self.sampler.traces,
                "sampler_overflows": self.sampler.overflows}

    def _gradient(self, params, ref, update: int = 0) -> tuple[Any, dict]:
        """Gradient and a dict of plain floats (loss, rmse, n_eff, ...)."""
        out: dict = {"rmse": {}}
        if self.cfg.method == "difftre":
            (loss, aux), grads = self._step(params, ref["frames"], ref["u_ref"],
                                            ref["static"])
            out["loss"] = float(loss)
        else:
            grads, aux_s = self._srel(params, ref["frames"], ref["u_ref"],
                                      ref["ref_frames"], ref["u_ref_on_ref"])
            out["loss"] = None
            out["delta_srel"] = float(aux_s["delta_srel"])
            aux = {"n_eff": aux_s["n_eff"], "rmse": {}, "averages": {}}
            if self.observables.targets:
                _, aux = self._monitor(params, ref["frames"], ref["u_ref"], ref["static"])
        out["n_eff"] = float(aux["n_eff"])
        out["rmse"] = {k: float(v) for k, v in aux["rmse"].items()}
        for t in self.cfg.targets:
            if t.kind == "pressure":
                out["pressure_bar"] = float(aux["averages"][t.label])
        if self.anchor is not None:
            value, extra = jax.value_and_grad(self.anchor)(params, update)
            grads = jax.tree_util.tree_map(jnp.add, grads, extra)
            out["anchor"] = float(value)
            if out["loss"] is not None:
                out["loss"] += out["anchor"]
        out["grad_norm"] = float(optax.tree.norm(grads))
        if not all(np.all(np.isfinite(np.asarray(x)))
                   for x in jax.tree_util.tree_leaves(grads)):
            raise SimulationError("reweighting: the gradient is not finite (check the "
                                  "targets and the model's prior)")
        return grads, out


# ====================================================================== plots
def training_plot(rows: list[dict], path: str) -> str:
    """Loss, the distribution targets' RMSE, the pressure (when a target) and N_eff/N
    against the update; updates that sampled a fresh trajectory are marked (grey)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    it = np.array([r["iteration"] for r in rows])
    rmse_keys = [k for k in rows[0] if k.startswith("rmse_") and
                 not ("pressure_bar" in rows[0] and k == "rmse_pressure")]
    panels = 4 if "pressure_bar" in rows[0] else 3
    fig = Figure(figsize=(3.3 * panels, 3.2))
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, panels))
    loss = np.array([np.nan if r.get("loss") is None else r["loss"] for r in rows], float)
    if np.any(np.isfinite(loss)):
        axes[0].semilogy(it, loss, "k-")
        axes[0].set_ylabel("loss (reweighted)")
    elif "delta_srel" in rows[0]:
        axes[0].plot(it, [r["delta_srel"] for r in rows], "k-")
        axes[0].set_ylabel("ΔS_rel since sampling")
    for k in rmse_keys:
        axes[1].semilogy(it, [r[k] for r in rows], label=k[5:])
    if rmse_keys:
        axes[1].legend(fontsize=8)
    axes[1].set_ylabel("target RMSE (reweighted)")
    if panels == 4:
        axes[2].plot(it, [r["pressure_bar"] for r in rows], "C3-")
        axes[2].set_ylabel("pressure (bar, reweighted)")
    axes[-1].plot(it, [r["n_eff_fraction"] for r in rows], "b-")
    axes[-1].set_ylabel("N_eff / N")
    axes[-1].set_ylim(0, 1.05)
    res = [r["iteration"] for r in rows if r.get("resampled")]
    for ax in axes:
        for x in res:
            ax.axvline(x, color="0.88", lw=0.8, zorder=0)
        ax.set_xlabel("update (grey: fresh trajectory)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    return path
