"""A simulation run: build from Atoms + Potential + SimulateConfig, run in jitted chunks.

The host loop per chunk: run the compiled chunk → if the neighbor list overflowed,
reallocate with more capacity and rerun the chunk from its starting state → check for a
blow-up → write observables and frames (flushed) → write the checkpoint (atomic). A run
killed at any point resumes from the last checkpoint with no lost or duplicated frames.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np
from jax_md import minimize

from biojax.core.atomic import atomic_write_bytes
from biojax.core.config import to_dict
from biojax.core.errors import ConfigError, SimulationError
from biojax.md import engine, output
from biojax.md.config import SimulateConfig, Units
from biojax.md.integrators import make_integrator
from biojax.md.system import (cell_of, check_atoms, make_space, neighbor_box,
                              repartitioned_masses, to_cartesian, to_internal)
from biojax.nn.potential import Potential

_RESUME_KEYS = ("ensemble", "timestep_fs", "temperature_K", "pressure_bar", "replicas",
                "seed", "chunk_steps", "observe_every", "frame_every", "trajectory_format",
                "observables_format", "friction_per_ps", "thermostat_tau_fs",
                "barostat_tau_fs", "chain_length", "hydrogen_mass")


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


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
    """

    def __init__(self, atoms: ase.Atoms | Sequence[ase.Atoms], potential: Potential,
                 config: SimulateConfig, progress: bool = False):
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
        self.mass = jnp.asarray(repartitioned_masses(frames[0], config.hydrogen_mass),
                                jnp.float32)[:, None]
        self.energy_fn = potential.energy_fn(self.space.displacement_fn, numbers)
        self.neighbor_fn = engine.make_neighbor_fn(
            self.space, neighbor_box(frames, self.space, potential.cutoff), potential.cutoff,
            config.neighbor_skin, config.capacity_multiplier, potential.neighbor_format,
            self.n_atoms)
        self.integ = make_integrator(config.ensemble, self.energy_fn, self.space.shift_fn,
                                     self.units, self.n_atoms, config.chain_length)
        self.observe = engine.make_observe(self.integ, self.energy_fn, self.space)
        self.compiled: set = set()
        self.overflows = 0
        self._chunks: dict = {}
        self._batched = R > 1
        self.replica_block = engine.replica_block_size(config.replica_block, R)

    # ------------------------------------------------------------------ helpers
    def _map(self, fn):
        """fn over replicas: vmapped blocks of replicas when R > 1 (engine.map_replicas),
        else fn itself; always jitted."""
        return jax.jit(engine.map_replicas(fn, self.cfg.replicas, self.replica_block)
                       if self._batched else fn)

    def _boxes(self) -> list[dict]:
        if self.cfg.ensemble != "npt":
            return [{}] * self.cfg.replicas
        return [{"box": jnp.asarray(np.asarray(a.cell, np.float64).T, jnp.float32)}
                for a in self.starts]

    def _allocate(self, positions, box_kwargs=None, **kw):
        return engine.allocate(self.neighbor_fn, positions, box_kwargs=box_kwargs, **kw)

    def _positions(self, state) -> list[np.ndarray]:
        p = np.asarray(state.position)
        return list(p) if self._batched else [p]

    def _host_box(self, state):
        """The box of (each replica of) a state on the host, or None for fixed boxes."""
        if self.cfg.ensemble != "npt":
            return None
        return jax.vmap(self.integ.box)(state) if self._batched else self.integ.box(state)

    def _state_boxes(self, state) -> list[dict]:
        box = self._host_box(state)
        if box is None:
            return [{}] * self.cfg.replicas
        b = np.asarray(box)
        return [{"box": jnp.asarray(x)} for x in (b if self._batched else [b])]

    def _unbatch(self, x):
        x = np.asarray(x)
        return x if self._batched else x[None]

    # ------------------------------------------------------------------ setup
    def _minimize(self, positions: list[np.ndarray], boxes: list[dict]) -> list[np.ndarray]:
        """FIRE descent (jax-md) until max |F| < minimize_fmax eV/Å or minimize_steps."""
        cfg, u = self.cfg, self.units
        fire_init, fire_apply = minimize.fire_descent(
            self.energy_fn, self.space.shift_fn, dt_start=u.dt, dt_max=10 * u.dt)
        fmax2 = cfg.minimize_fmax ** 2

        def run(R, nbrs, box=None):
            kw = {} if box is None else {"box": box}
            state = fire_init(R, neighbor=nbrs, **kw)

            def cond(c):
                state, nbrs, i = c
                return (i < cfg.minimize_steps) & (jnp.max(jnp.sum(state.force ** 2, -1)) > fmax2)

            def body(c):
                state, nbrs, i = c
                state = fire_apply(state, neighbor=nbrs, **kw)
                nbrs = nbrs.update(state.position, **kw)
                return state, nbrs, i + 1

            state, nbrs, i = jax.lax.while_loop(cond, body, (state, nbrs, 0))
            return state.position, nbrs, i

        capacity = 0
        while True:
            nbrs = self._allocate(positions, boxes, min_capacity=capacity)
            R = jnp.stack(positions) if self._batched else jnp.asarray(positions[0])
            if boxes[0]:
                b = jnp.stack([x["box"] for x in boxes]) if self._batched else boxes[0]["box"]
                fn = self._map(run)
                pos, nbrs, _ = fn(R, nbrs, b)
            else:
                fn = self._map(lambda r, n: run(r, n))
                pos, nbrs, _ = fn(R, nbrs)
            self.compiled.add(("minimize", engine.capacity_of(nbrs)))
            if not engine.overflowed(nbrs):
                return self._positions(type("S", (), {"position": pos})())
            self.overflows += 1
            capacity = engine.grown_capacity(engine.capacity_of(nbrs))

    def initial_state(self, minimize_first: bool | None = None):
        """(state, neighbor list) at step 0, batched over replicas when R > 1."""
        cfg = self.cfg
        positions = [to_internal(a.positions, self.space) if self.space.kind != "general"
                     else to_internal(a.positions, dataclasses.replace(
                         self.space, box=np.asarray(a.cell, np.float64).T))
                     for a in self.starts]
        boxes = self._boxes()
        if (cfg.minimize if minimize_first is None else minimize_first):
            positions = self._minimize(positions, boxes)
        nbrs = self._allocate(positions, boxes, exact_capacity=cfg.initial_capacity)
        while engine.overflowed(nbrs):  # a forced initial_capacity that is too small
            self.overflows += 1
            nbrs = self._allocate(positions, boxes, min_capacity=engine.grown_capacity(
                engine.capacity_of(nbrs)))
        keys = [jax.random.PRNGKey(cfg.seed + r) for r in range(cfg.replicas)]
        momenta = None
        if cfg.velocities == "structure":
            momenta = [jnp.asarray(a.get_momenta(), jnp.float32) for a in self.starts]
            if self.space.kind == "free" and not np.any([np.any(m) for m in momenta]):
                raise SimulationError("velocities = 'structure' but the structure has no "
                                      "momenta")
        mass = self.mass

        def init(key, R, nbrs, p=None, box=None):
            kw = {"neighbor": nbrs} if box is None else {"neighbor": nbrs, "box": box}
            return self.integ.init(key, R, mass, momenta=p, **kw)

        args = [keys, positions, None, momenta,
                [b["box"] for b in boxes] if boxes[0] else None]
        if self._batched:
            stacked = [None if a is None else jnp.stack([jnp.asarray(x) for x in a])
                       for a in args]
            stacked[2] = nbrs
            in_axes = tuple(None if a is None else 0 for a in stacked)
            state = jax.jit(jax.vmap(init, in_axes=in_axes))(*stacked)
        else:
            single = [None if a is None else jnp.asarray(a[0]) for a in args]
            single[2] = nbrs
            state = jax.jit(init)(*single)
        return state, nbrs

    # ------------------------------------------------------------------ chunks
    def _chunk_fn(self, n_frames: int, capacity: int):
        key = (n_frames, capacity)
        self.compiled.add(("chunk",) + key)
        if n_frames not in self._chunks:
            cfg = self.cfg
            t_limit = cfg.blowup_temperature_factor * max(cfg.temperature_K, self._t0, 10.0)
            ke_limit = 0.5 * self.integ.dof * ase.units.kB * t_limit
            chunk = engine.make_chunk(
                self.integ, self.observe, n_frames, cfg.frame_every // cfg.observe_every,
                cfg.observe_every, ke_limit, cfg.write_velocities, cfg.write_forces)
            self._chunks[n_frames] = self._map(chunk)
        return self._chunks[n_frames]

    def _observe0(self, state, nbrs):
        self.compiled.add(("observe", engine.capacity_of(nbrs)))
        return self._map(self.observe)(state, nbrs)

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
        writers, ckpt_path = [], None
        if out is not None:
            os.makedirs(out, exist_ok=True)
            ckpt_path = os.path.join(out, "checkpoint.npz")
            columns = list(output.OBS_COLUMNS[:7])
            if self.space.periodic:
                columns += ["pressure_bar", "volume"]
            writers = [output.ReplicaWriter(output.replica_dir(out, r, R),
                                            cfg.trajectory_format, cfg.observables_format,
                                            columns) for r in range(R)]
        if resume:
            if out is None:
                raise ConfigError("--resume needs an output directory")
            state, nbrs, step, meta = self._resume(ckpt_path)
            for w, sizes in zip(writers, meta["files"]):
                w.restore(sizes)
            self._t0 = meta["t0"]
        else:
            if out is not None and os.path.exists(ckpt_path):
                raise SimulationError(f"{out} already holds a run (checkpoint.npz); use "
                                      "--resume to continue it or choose another --out")
            state, nbrs = self.initial_state()
            step = 0
            obs0 = jax.device_get(self._observe0(state, nbrs))
            self._t0 = float(np.max(self._unbatch(obs0["temperature"])))
            for r, w in enumerate(writers):
                w.start()
                w.write_observables([self._row(obs0, r, None, 0)])
                w.write_frames([self._frame(state, obs0, r, None, None, 0)])
            if not np.all(np.isfinite(self._unbatch(obs0["potential_energy"]))):
                raise SimulationError("the potential energy of the starting structure is not "
                                      "finite")
            if writers:
                self._checkpoint(ckpt_path, state, nbrs, 0, writers)

        chunk_frames = cfg.chunk_steps // M
        t_start, steps_done, n_chunks = time.perf_counter(), 0, 0
        first_chunk_s = None
        while step < cfg.steps and (max_chunks is None or n_chunks < max_chunks):
            n_frames = min(chunk_frames, (cfg.steps - step) // M)
            t_chunk = time.perf_counter()
            while True:
                fn = self._chunk_fn(n_frames, engine.capacity_of(nbrs))
                new_state, new_nbrs, bad, obs, frames = fn(state, nbrs)
                if not engine.overflowed(new_nbrs):
                    break
                self.overflows += 1
                nbrs = self._allocate(self._positions(state), self._state_boxes(state),
                                      min_capacity=engine.grown_capacity(
                                          engine.capacity_of(nbrs)))
            obs, frames, bad = jax.device_get((obs, frames, bad))
            if first_chunk_s is None:
                first_chunk_s = time.perf_counter() - t_chunk
            bad = self._unbatch(bad)
            stop = int(min(b for b in bad if b >= 0)) + step if np.any(bad >= 0) else None
            for r, w in enumerate(writers):
                rows = [self._row(obs, r, j, step + (j + 1) * K) for j in range(n_frames * M // K)]
                fr = [self._frame(frames, obs, r, f, (f + 1) * (M // K) - 1, step + (f + 1) * M)
                      for f in range(n_frames)]
                if stop is not None:
                    rows = [x for x in rows if x["step"] < stop]
                    fr = [a for a in fr if a.info["step"] < stop]
                w.write_observables(rows)
                w.write_frames(fr)
            if stop is not None:
                self._blowup(bad, obs, step, out)
            state, nbrs = new_state, new_nbrs
            step += n_frames * M
            steps_done += n_frames * M
            n_chunks += 1
            if writers:
                self._checkpoint(ckpt_path, state, nbrs, step, writers)
            if self.progress:
                self._report(step, steps_done, time.perf_counter() - t_start)
        wall = time.perf_counter() - t_start
        summary = {
            "completed": step >= cfg.steps, "step": step, "steps_run": steps_done,
            "replicas": R, "atoms": self.n_atoms, "ensemble": cfg.ensemble,
            "wall_s": wall, "first_chunk_s": first_chunk_s,
            "steps_per_s": steps_done / wall if wall > 0 else 0.0,
            "ns_per_day": steps_done / wall * cfg.timestep_fs * 86400 / 1e6 if wall > 0 else 0,
            "compilations": len(self.compiled), "compiled": sorted(map(str, self.compiled)),
            "neighbor_capacity": engine.capacity_of(nbrs), "overflows": self.overflows,
            "replica_block": self.replica_block,
        }
        summary["aggregate_ns_per_day"] = summary["ns_per_day"] * R
        if out is not None:
            atomic_write_bytes(os.path.join(out, "summary.json"),
                                      json.dumps(summary, indent=2).encode())
        self.final_state = state
        return summary

    # ------------------------------------------------------------------ host pieces
    def _row(self, obs, r: int, j: int | None, step: int) -> dict:
        row = {"step": step, "time_fs": step * self.cfg.timestep_fs}
        for k, v in obs.items():
            v = np.asarray(v)
            v = v[r] if self._batched else v
            row[k] = float(v if j is None else v[j])
        return row

    def _frame(self, src, obs, r: int, f: int | None, j: int | None, step: int) -> ase.Atoms:
        """Frame of replica r from a state (f None) or from chunk frame arrays."""
        cfg = self.cfg

        def pick(x):
            x = np.asarray(x)
            x = x[r] if self._batched else x
            return x if f is None else x[f]

        if f is None:
            pos = pick(src.position)
            vel = pick(src.momentum / src.mass) if cfg.write_velocities else None
            force = pick(src.force) if cfg.write_forces else None
            box = self._host_box(src)
            box = None if box is None else pick(box)
        else:
            pos = pick(src["position"])
            vel = pick(src["velocity"]) if cfg.write_velocities else None
            force = pick(src["force"]) if cfg.write_forces else None
            box = pick(src["box"]) if "box" in src else None
        e = np.asarray(obs["potential_energy"])
        e = e[r] if self._batched else e
        energy = float(e if j is None else e[j])
        return output.make_frame(self.numbers, to_cartesian(pos, self.space, box),
                                 cell_of(self.space, box), self.pbc, step,
                                 step * cfg.timestep_fs, energy, vel, force)

    def _checkpoint(self, path, state, nbrs, step, writers) -> None:
        leaves = jax.device_get(jax.tree_util.tree_leaves(state))
        leaves += [np.asarray(nbrs.idx), np.asarray(nbrs.reference_position)]
        meta = {"step": step, "n_leaves": len(leaves),
                "neighbor_capacity": engine.capacity_of(nbrs), "t0": self._t0,
                "n_atoms": self.n_atoms, "config": to_dict(self.cfg),
                "files": [w.sizes() for w in writers]}
        output.save_checkpoint(path, leaves, meta)

    def _resume(self, path):
        leaves, meta = output.load_checkpoint(path)
        saved = meta["config"]
        for k in _RESUME_KEYS:
            was = saved.get(k, getattr(SimulateConfig, k, None))  # older runs: the default
            if was != getattr(self.cfg, k):
                raise ConfigError(f"cannot resume {path}: {k} was {was!r}, now "
                                  f"{getattr(self.cfg, k)!r}")
        if meta["n_atoms"] != self.n_atoms:
            raise ConfigError(f"cannot resume {path}: {meta['n_atoms']} atoms, structure has "
                              f"{self.n_atoms}")
        if meta["step"] > self.cfg.steps:
            raise ConfigError(f"cannot resume {path}: checkpoint at step {meta['step']} is "
                              f"beyond steps = {self.cfg.steps}")
        template, _ = self.initial_state(minimize_first=False)
        treedef = jax.tree_util.tree_structure(template)
        state_leaves, (idx, ref) = leaves[:-2], leaves[-2:]
        expected = [np.shape(x) for x in jax.tree_util.tree_leaves(template)]
        if [np.shape(x) for x in state_leaves] != expected:
            raise SimulationError(f"cannot resume {path}: saved state does not match this "
                                  "system")
        state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in state_leaves])
        nbrs = self._allocate(self._positions(state), self._state_boxes(state),
                              exact_capacity=meta["neighbor_capacity"])
        nbrs = nbrs.set(idx=jnp.asarray(idx), reference_position=jnp.asarray(ref))
        return state, nbrs, meta["step"], meta

    def _blowup(self, bad, obs, step0, out) -> None:
        cfg = self.cfg
        r = int(np.argmin(np.where(bad >= 0, bad, np.iinfo(np.int32).max)))
        stop = step0 + int(bad[r])
        t = np.asarray(obs["temperature"])
        t = t[r] if self._batched else t
        j = min((int(bad[r]) - 1) // cfg.observe_every, len(t) - 1)
        temp = t[j]
        what = ("the kinetic energy became non-finite (NaN/inf)" if not np.isfinite(temp)
                else f"the temperature reached {temp:.0f} K (limit "
                     f"{cfg.blowup_temperature_factor} × max(target, initial))")
        kept = "" if out is None else (f"; frames before step {stop} and the checkpoint at "
                                       f"step {step0} in {out} are kept")
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
