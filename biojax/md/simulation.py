"""A simulation run: build from Atoms + Potential + SimulateConfig, run in jitted chunks.

One code path for any number of replicas: every state has a leading replica axis (R = 1
for a single trajectory) and every jitted function is mapped over it by
``engine.map_replicas``. The host loop per chunk: run the compiled chunk → if the
neighbor list overflowed, reallocate with more capacity and rerun the chunk from its
starting state → check for a blow-up → write observables and frames (flushed) → write the
checkpoint (atomic). A run killed at any point resumes from the last checkpoint with no
lost or duplicated frames. The host-side state is one explicit
:class:`~biojax.md.checkpoint.RunState`; files live in ``output``, checkpoints in
``checkpoint``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np
from jax_md import minimize

from biojax.core.atomic import atomic_write_bytes
from biojax.core.errors import ConfigError, SimulationError
from biojax.core.registry import integrators, resolve
from biojax.core.units import KB
from biojax.md import checkpoint, engine, output
from biojax.md.checkpoint import RunState
from biojax.md.config import SimulateConfig, Units
from biojax.md.integrators import build_integrator
from biojax.md.system import (cell_of, check_atoms, make_space, neighbor_box,
                              repartitioned_masses, to_cartesian, to_internal)
from biojax.md.terms import (System, as_energy_term, energy_terms_from_config,
                             flatten_row, init_term_states, observables_from_config,
                             total_energy_fn)
from biojax.nn.potential import Potential


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Simulation:
    """One MD run of R replicas of the same system (same atoms, same potential).

    Args:
      atoms: one ASE Atoms, or a sequence of starting frames (replica r starts from frame
        r mod len(atoms)); all frames must have the same atoms in the same order.
      potential: any biojax Potential (trained model or classical).
      config: SimulateConfig (time step fs, temperature K, pressure bar, ...).
      progress: print steps/s, ns/day and ETA to stderr after every chunk.
      integrator: an integrator factory (see ``biojax.md.integrators``) used instead of
        the one ``config.ensemble`` names.
      energy_terms: extra energy terms (``biojax.md.terms``) added to the potential inside
        the jitted step, besides those in ``config.energy_terms``.
      observables: extra observables ``{name: fn(state, **kw)}`` recorded per replica,
        besides those in ``config.observables``.
    """

    def __init__(self, atoms: ase.Atoms | Sequence[ase.Atoms], potential: Potential,
                 config: SimulateConfig, progress: bool = False,
                 integrator: Callable | None = None, energy_terms: Sequence = (),
                 observables: dict[str, Callable] | None = None):
        frames = [atoms] if isinstance(atoms, ase.Atoms) else list(atoms)
        if not frames:
            raise SimulationError("no starting structure given")
        self.cfg, self.potential, self.progress = config, potential, progress
        self.units = Units.from_config(config)
        numbers = frames[0].get_atomic_numbers()
        for i, a in enumerate(frames):
            if not np.array_equal(a.get_atomic_numbers(), numbers):
                raise SimulationError(f"starting frame {i} has different atoms than frame 0")
        potential.species_of(numbers)  # ModelError on unknown elements
        R = config.replicas
        self.starts = [frames[r % len(frames)] for r in range(R)]
        for i, a in enumerate(frames[:R]):
            check_atoms(a, potential.cutoff, config.min_distance, f"starting frame {i}")
        npt = config.ensemble == "npt"
        self.space = make_space(frames[0], npt)
        if self.space.periodic and not npt:
            for i, a in enumerate(self.starts):
                if not np.allclose(a.cell, frames[0].cell, atol=1e-6):
                    raise SimulationError(f"starting frame {i}: the box differs from frame 0; "
                                          "fixed-volume replicas must share one box")
        self.numbers, self.pbc = numbers, frames[0].pbc.copy()
        self.n_atoms = len(numbers)
        masses = repartitioned_masses(frames[0], config.hydrogen_mass)
        self.mass = jnp.asarray(masses, jnp.float32)[:, None]
        system = System(numbers, masses, self.space.displacement_fn, self.space.periodic)
        self.terms = ([as_energy_term(t) for t in energy_terms]
                      + energy_terms_from_config(config.energy_terms, system))
        extra = observables_from_config(config.observables, system)
        extra.update(observables or {})
        self.extra_observables = list(extra)
        self.potential_fn = potential.energy_fn(self.space.displacement_fn, numbers)
        self.energy_fn = total_energy_fn(self.potential_fn, self.terms)
        neighbor_format = config.neighbor_format
        if neighbor_format == "auto":
            neighbor_format = getattr(potential.model, "neighbor_format", "ordered-sparse")
        self.neighbor_fn = engine.make_neighbor_fn(
            self.space, neighbor_box(frames, self.space, potential.cutoff), potential.cutoff,
            config.neighbor_skin, config.capacity_multiplier, neighbor_format, self.n_atoms)
        factory = integrator if integrator is not None else resolve(integrators,
                                                                   config.ensemble)
        self.integ = build_integrator(factory, self.energy_fn, self.space.shift_fn,
                                      self.units, self.n_atoms, config.chain_length,
                                      name=config.ensemble if integrator is None else
                                      getattr(integrator, "__name__", "custom"))
        self.observe = engine.make_observe(self.integ, self.potential_fn, self.terms, extra,
                                           self.space)
        # the time step (ASE units) and kT (eV) of each replica, inputs of every chunk
        self.dt = jnp.full((R,), self.units.dt, jnp.float32)
        self.kT = jnp.full((R,), self.units.kT, jnp.float32)
        self.compiled: set = set()
        self.overflows = 0
        self._chunks: dict = {}
        self.replica_block = engine.replica_block_size(config.replica_block, R)

    # ------------------------------------------------------------------ helpers
    def _map(self, fn):
        """fn over the replica axis (engine.map_replicas), jitted."""
        return jax.jit(engine.map_replicas(fn, self.cfg.replicas, self.replica_block))

    def _kw(self, nbrs, box=None) -> dict:
        return {"neighbor": nbrs} if box is None else {"neighbor": nbrs, "box": box}

    def _allocate(self, positions, boxes=None, **kw):
        return engine.allocate(self.neighbor_fn, positions, box_kwargs=boxes, **kw)

    def _start_boxes(self) -> list[dict]:
        if self.cfg.ensemble != "npt":
            return [{}] * self.cfg.replicas
        return [{"box": jnp.asarray(np.asarray(a.cell, np.float64).T, jnp.float32)}
                for a in self.starts]

    def _boxes(self, state):
        """The box of each replica (R, ...) on the host, or None for fixed boxes."""
        if self.integ.box(jax.tree_util.tree_map(lambda x: x[0], state)) is None:
            return None
        return np.asarray(jax.vmap(self.integ.box)(state))

    def _state_boxes(self, state) -> list[dict]:
        boxes = self._boxes(state)
        if boxes is None:
            return [{}] * self.cfg.replicas
        return [{"box": jnp.asarray(b)} for b in boxes]

    # ------------------------------------------------------------------ setup
    def _minimize(self, positions: jax.Array, boxes: list[dict], term_states
                  ) -> list[np.ndarray]:
        """FIRE descent (jax-md) until max |F| < minimize_fmax eV/Å or minimize_steps."""
        cfg, u = self.cfg, self.units
        fire_init, fire_apply = minimize.fire_descent(
            self.energy_fn, self.space.shift_fn, dt_start=u.dt, dt_max=10 * u.dt)
        fmax2 = cfg.minimize_fmax ** 2

        def run(R, nbrs, ts, box):
            kw = self._kw(nbrs, box)
            state = fire_init(R, term_states=ts, **kw)

            def cond(c):
                state, nbrs, i = c
                return (i < cfg.minimize_steps) & (jnp.max(jnp.sum(state.force ** 2, -1)) > fmax2)

            def body(c):
                state, nbrs, i = c
                kw = self._kw(nbrs, box)
                state = fire_apply(state, term_states=ts, **kw)
                nbrs = nbrs.update(state.position, **({} if box is None else {"box": box}))
                return state, nbrs, i + 1

            state, nbrs, i = jax.lax.while_loop(cond, body, (state, nbrs, 0))
            return state.position, nbrs

        box = jnp.stack([b["box"] for b in boxes]) if boxes[0] else None
        capacity = 0
        while True:
            nbrs = self._allocate(list(positions), boxes, min_capacity=capacity)
            pos, nbrs = self._map(run)(positions, nbrs, term_states, box)
            self.compiled.add(("minimize", engine.capacity_of(nbrs)))
            if not engine.overflowed(nbrs):
                return pos
            self.overflows += 1
            capacity = engine.grown_capacity(engine.capacity_of(nbrs))

    def initial_state(self, minimize_first: bool | None = None) -> RunState:
        """The run at step 0: state, term states and neighbor list, each with a leading
        replica axis (``t0`` is filled in by the first observation)."""
        cfg = self.cfg
        positions = jnp.stack([jnp.asarray(
            to_internal(a.positions, self.space) if self.space.kind != "general"
            else to_internal(a.positions, dataclasses.replace(
                self.space, box=np.asarray(a.cell, np.float64).T))) for a in self.starts])
        boxes = self._start_boxes()
        box = jnp.stack([b["box"] for b in boxes]) if boxes[0] else None
        init_terms = self._map(lambda R: init_term_states(self.terms, R))
        term_states = init_terms(positions)
        if (cfg.minimize if minimize_first is None else minimize_first):
            positions = self._minimize(positions, boxes, term_states)
            term_states = init_terms(positions)
        nbrs = self._allocate(list(positions), boxes, exact_capacity=cfg.initial_capacity)
        while engine.overflowed(nbrs):  # a forced initial_capacity that is too small
            self.overflows += 1
            nbrs = self._allocate(list(positions), boxes, min_capacity=engine.grown_capacity(
                engine.capacity_of(nbrs)))
        keys = jnp.stack([jax.random.PRNGKey(cfg.seed + r) for r in range(cfg.replicas)])
        momenta = None
        if cfg.velocities == "structure":
            momenta = jnp.stack([jnp.asarray(a.get_momenta(), jnp.float32)
                                 for a in self.starts])
            if self.space.kind == "free" and not np.any(np.asarray(momenta)):
                raise SimulationError("velocities = 'structure' but the structure has no "
                                      "momenta")
        mass = self.mass

        def init(key, R, nbrs, ts, kT, p, box):
            return self.integ.init(key, R, mass, kT, momenta=p, term_states=ts,
                                   **self._kw(nbrs, box))

        state = self._map(init)(keys, positions, nbrs, term_states, self.kT, momenta, box)
        return RunState(state, term_states, nbrs, 0, 0.0)

    # ------------------------------------------------------------------ chunks
    def _chunk_fn(self, n_frames: int, capacity: int, t0: float):
        self.compiled.add(("chunk", n_frames, capacity))
        if n_frames not in self._chunks:
            cfg = self.cfg
            t_limit = self.temperature_limit(t0)
            ke_limit = 0.5 * self.integ.dof * KB * t_limit
            chunk = engine.make_chunk(
                self.integ, self.observe, self.terms, n_frames,
                cfg.frame_every // cfg.observe_every, cfg.observe_every, ke_limit,
                cfg.write_velocities, cfg.write_forces)
            self._chunks[n_frames] = self._map(chunk)
        return self._chunks[n_frames]

    def temperature_limit(self, t0: float) -> float:
        """The temperature (K) above which a replica counts as blown up."""
        return self.cfg.blowup_temperature_factor * max(self.cfg.temperature_K, t0, 10.0)

    def _observe(self, run: RunState) -> dict:
        self.compiled.add(("observe", engine.capacity_of(run.nbrs)))
        return jax.device_get(self._map(self.observe)(run.state, run.term_states, run.nbrs,
                                                      self.kT))

    # ------------------------------------------------------------------ run
    def run(self, out: str | None = None, resume: bool = False,
            max_chunks: int | None = None) -> dict:
        """Run ``config.steps`` steps; write to ``out`` (None: write nothing, for benchmarks).

        ``max_chunks`` stops after that many chunks (as if killed; used by tests).
        Returns a summary dict (steps, wall time, steps/s, ns/day, compilations, ...).
        """
        cfg = self.cfg
        R, M, K = cfg.replicas, cfg.frame_every, cfg.observe_every
        if cfg.steps % M:
            raise ConfigError(f"steps ({cfg.steps}) must be a multiple of frame_every ({M})")
        ckpt_path = None if out is None else os.path.join(out, checkpoint.CHECKPOINT_FILE)
        if resume:
            if out is None:
                raise ConfigError("--resume needs an output directory")
            run, meta = self._resume(ckpt_path)
            columns = meta["columns"] or output.observable_columns(  # older checkpoints
                self._row(self._observe(run), 0, None, 0), self.extra_observables)
            writers = self._writers(out, columns)
            for w, sizes in zip(writers, meta["files"]):
                w.restore(sizes)
        else:
            if out is not None and os.path.exists(ckpt_path):
                raise SimulationError(f"{out} already holds a run (checkpoint.npz); use "
                                      "--resume to continue it or choose another --out")
            run = self.initial_state()
            obs0 = self._observe(run)
            run.t0 = float(np.max(obs0["temperature"]))
            rows0 = [self._row(obs0, r, None, 0) for r in range(R)]
            writers = [] if out is None else self._writers(out, output.observable_columns(
                rows0[0], self.extra_observables))
            for r, w in enumerate(writers):
                w.start()
                w.write_observables([rows0[r]])
                w.write_frames([self._frame(run.state, obs0, r, None, None, 0)])
            if not np.all(np.isfinite(obs0["potential_energy"])):
                raise SimulationError("the potential energy of the starting structure is not "
                                      "finite")
            if writers:
                self._checkpoint(ckpt_path, run, writers)

        chunk_frames = cfg.chunk_steps // M
        t_start, steps_done, n_chunks = time.perf_counter(), 0, 0
        first_chunk_s = None
        while run.step < cfg.steps and (max_chunks is None or n_chunks < max_chunks):
            n_frames = min(chunk_frames, (cfg.steps - run.step) // M)
            t_chunk = time.perf_counter()
            while True:
                fn = self._chunk_fn(n_frames, engine.capacity_of(run.nbrs), run.t0)
                state, term_states, nbrs, bad, obs, frames = fn(
                    run.state, run.term_states, run.nbrs, self.dt, self.kT)
                if not engine.overflowed(nbrs):
                    break
                self.overflows += 1
                run.nbrs = self._allocate(list(np.asarray(run.state.position)),
                                          self._state_boxes(run.state),
                                          min_capacity=engine.grown_capacity(
                                              engine.capacity_of(run.nbrs)))
            obs, frames, bad = jax.device_get((obs, frames, bad))
            if first_chunk_s is None:
                first_chunk_s = time.perf_counter() - t_chunk
            stop = int(min(b for b in bad if b >= 0)) + run.step if np.any(bad >= 0) else None
            for r, w in enumerate(writers):
                rows = [self._row(obs, r, j, run.step + (j + 1) * K)
                        for j in range(n_frames * M // K)]
                fr = [self._frame(frames, obs, r, f, (f + 1) * (M // K) - 1,
                                  run.step + (f + 1) * M) for f in range(n_frames)]
                if stop is not None:
                    rows = [x for x in rows if x["step"] < stop]
                    fr = [a for a in fr if a.info["step"] < stop]
                w.write_observables(rows)
                w.write_frames(fr)
            if stop is not None:
                self._blowup(bad, obs, run, out)
            run.state, run.term_states, run.nbrs = state, term_states, nbrs
            run.step += n_frames * M
            steps_done += n_frames * M
            n_chunks += 1
            if writers:
                self._checkpoint(ckpt_path, run, writers)
            if self.progress:
                self._report(run.step, steps_done, time.perf_counter() - t_start)
        wall = time.perf_counter() - t_start
        summary = {
            "completed": run.step >= cfg.steps, "step": run.step, "steps_run": steps_done,
            "replicas": R, "atoms": self.n_atoms, "ensemble": cfg.ensemble,
            "wall_s": wall, "first_chunk_s": first_chunk_s,
            "steps_per_s": steps_done / wall if wall > 0 else 0.0,
            "ns_per_day": steps_done / wall * cfg.timestep_fs * 86400 / 1e6 if wall > 0 else 0,
            "compilations": len(self.compiled), "compiled": sorted(map(str, self.compiled)),
            "neighbor_capacity": engine.capacity_of(run.nbrs), "overflows": self.overflows,
            "replica_block": self.replica_block,
        }
        summary["aggregate_ns_per_day"] = summary["ns_per_day"] * R
        if out is not None:
            atomic_write_bytes(os.path.join(out, "summary.json"),
                               json.dumps(summary, indent=2).encode())
        self.final_state = run.state
        return summary

    # ------------------------------------------------------------------ host pieces
    def _writers(self, out: str, columns: list[str]) -> list[output.ReplicaWriter]:
        os.makedirs(out, exist_ok=True)
        R = self.cfg.replicas
        return [output.ReplicaWriter(output.replica_dir(out, r, R), self.cfg.trajectory_format,
                                     self.cfg.observables_format, columns)
                for r in range(R)]

    def _row(self, obs: dict, r: int, j: int | None, step: int) -> dict:
        """Observables of replica r (record j of a chunk, or the single record of obs0)."""
        values = {k: np.asarray(v)[r] if j is None else np.asarray(v)[r, j]
                  for k, v in obs.items()}
        return {"step": step, "time_fs": step * self.cfg.timestep_fs, **flatten_row(values)}

    def _frame(self, src, obs, r: int, f: int | None, j: int | None, step: int) -> ase.Atoms:
        """Frame of replica r from a state (f None) or from chunk frame arrays."""
        cfg = self.cfg

        def pick(x):
            x = np.asarray(x)[r]
            return x if f is None else x[f]

        if f is None:
            pos = pick(src.position)
            vel = pick(src.momentum / src.mass) if cfg.write_velocities else None
            force = pick(src.force) if cfg.write_forces else None
            boxes = self._boxes(src)
            box = None if boxes is None else boxes[r]
        else:
            pos = pick(src["position"])
            vel = pick(src["velocity"]) if cfg.write_velocities else None
            force = pick(src["force"]) if cfg.write_forces else None
            box = pick(src["box"]) if "box" in src else None
        e = np.asarray(obs["potential_energy"])[r]
        energy = float(e if j is None else e[j])
        return output.make_frame(self.numbers, to_cartesian(pos, self.space, box),
                                 cell_of(self.space, box), self.pbc, step,
                                 step * cfg.timestep_fs, energy, vel, force)

    def _checkpoint(self, path: str, run: RunState, writers) -> None:
        files = [w.sizes() for w in writers]
        checkpoint.save(path, run, self.cfg, self.n_atoms, files,
                        columns=writers[0].columns)

    def _resume(self, path: str) -> tuple[RunState, dict]:
        leaves, meta = checkpoint.load(path)
        checkpoint.check_compatible(path, meta, self.cfg, self.n_atoms)
        template = self.initial_state(minimize_first=False)
        state, term_states = checkpoint.restore_leaves(
            path, leaves[:-2], (template.state, template.term_states))
        idx, ref = leaves[-2:]
        if idx.ndim == 2 and self.cfg.replicas == 1:  # written before the replica axis
            idx, ref = idx[None], ref[None]
        nbrs = self._allocate(list(np.asarray(state.position)), self._state_boxes(state),
                              exact_capacity=meta["neighbor_capacity"])
        nbrs = nbrs.set(idx=jnp.asarray(idx), reference_position=jnp.asarray(ref))
        meta.setdefault("columns", None)
        return RunState(state, term_states, nbrs, meta["step"], meta["t0"]), meta

    def _blowup(self, bad, obs, run: RunState, out) -> None:
        cfg = self.cfg
        r = int(np.argmin(np.where(bad >= 0, bad, np.iinfo(np.int32).max)))
        stop = run.step + int(bad[r])
        t = np.asarray(obs["temperature"])[r]
        j = min((int(bad[r]) - 1) // cfg.observe_every, len(t) - 1)
        temp = t[j]
        what = ("the kinetic energy became non-finite (NaN/inf)" if not np.isfinite(temp)
                else f"the temperature reached {temp:.0f} K (limit "
                     f"{self.temperature_limit(run.t0):.0f} K = "
                     f"{cfg.blowup_temperature_factor} × max(target, initial))")
        kept = "" if out is None else (f"; frames before step {stop} and the checkpoint at "
                                       f"step {run.step} in {out} are kept")
        raise SimulationError(
            f"replica {r}: simulation blew up at step {stop} (t = {stop * cfg.timestep_fs:g} "
            f"fs): {what}{kept}. Try a smaller timestep, minimize = true, or check the "
            "structure and model")

    def _report(self, step, steps_done, elapsed) -> None:
        cfg = self.cfg
        sps = steps_done / max(elapsed, 1e-9)
        ns_day = sps * cfg.timestep_fs * 86400 / 1e6
        eta = (cfg.steps - step) / max(sps, 1e-9)
        agg = f" ({ns_day * cfg.replicas:.2f} ns/day aggregate)" if cfg.replicas > 1 else ""
        print(f"step {step}/{cfg.steps}  {sps:.1f} steps/s  {ns_day:.3f} ns/day{agg}  "
              f"ETA {_fmt_time(eta)}  compilations {len(self.compiled)}",
              file=sys.stderr, flush=True)
