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

Fail loudly, lose nothing: a run holds its output folder (``RunLock``: a second run there
is refused, naming the first), never replaces an earlier run's results unless asked
(``overwrite``), refuses to resume with another model, and stops a replica whose
temperature, potential energy or covalent bonds leave their plausible range (checked
inside the jitted chunk), keeping every frame before that step. Minimisation (FIRE) has
its own step control and must lower the energy without breaking bonds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np

from biojax import parallel
from biojax.core.atomic import atomic_write_bytes
from biojax.core.errors import ConfigError, SimulationError
from biojax.core.progress import progress as progress_bar
from biojax.core.registry import import_object, integrators, resolve
from biojax.core.rundir import RunLock, check_output_dir
from biojax.core.units import FS, KB
from biojax.md import checkpoint, engine, output
from biojax.md.checkpoint import RunState
from biojax.md.config import SimulateConfig, Units
from biojax.md.integrators import build_integrator, fire_move, fire_start
from biojax.md.system import (cell_of, check_atoms, covalent_bonds, make_space,
                              neighbor_box, repartitioned_masses, to_cartesian, to_internal)
from biojax.md.uncertainty import monitor_from_config
from biojax.md.terms import (System, as_energy_term, biases_from_config,
                             energy_terms_from_config, sync_term_states,
                             flatten_row, init_term_states, observables_from_config,
                             total_energy_fn)
from biojax.nn.potential import Potential


class Simulation:
    """One MD run of R replicas of the same system (same atoms, same potential).

    Args:
      atoms: one ASE Atoms, or a sequence of starting frames (replica r starts from frame
        r mod len(atoms)); all frames must have the same atoms in the same order.
      potential: any biojax Potential (trained model or classical).
      config: SimulateConfig (time step fs, temperature K, pressure bar, ...).
      progress: show a progress bar (``biojax.core.progress``: steps, steps/s, ETA,
        ns/day) on stderr.
      integrator: an integrator factory (see ``biojax.md.integrators``) used instead of
        the one ``config.ensemble`` names.
      energy_terms: extra energy terms (``biojax.md.terms``) added to the potential inside
        the jitted step, besides those in ``config.energy_terms``.
      observables: extra observables ``{name: fn(state, **kw)}`` recorded per replica,
        besides those in ``config.observables``.
      hooks: host-side objects called between chunks (replica exchange is one, built from
        ``config.replica_exchange``): ``wrap_terms(terms)``, ``setup(sim)``,
        ``start(sim, run)``, ``after_chunk(sim, run, out)``, ``columns(r)`` (extra
        observable columns of replica r), ``state_dict()``/``load_state_dict(d)`` (kept
        in the checkpoint), ``summary()``, ``progress()``, and optionally
        ``stops(sim, run, obs, frames, n_frames, out)``; ``biojax.md.hooks.SimulationHook``
        has do-nothing defaults for all of them.
    """

    def __init__(self, atoms: ase.Atoms | Sequence[ase.Atoms], potential: Potential,
                 config: SimulateConfig, progress: bool = False,
                 integrator: Callable | None = None, energy_terms: Sequence = (),
                 observables: dict[str, Callable] | None = None, hooks: Sequence = ()):
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
        self.model_id = checkpoint.model_identity(potential)
        # covalent bonds of the start (for the bond check and the minimisation check)
        self.bonds, self.bond_ref = covalent_bonds(frames[0])
        self.bond_stretch = (engine.make_bond_stretch(self.space.displacement_fn,
                                                      self.bonds, self.bond_ref)
                             if len(self.bonds) else None)
        self.minimization: dict | None = None
        masses = repartitioned_masses(frames[0], config.hydrogen_mass)
        self.mass = jnp.asarray(masses, jnp.float32)[:, None]
        system = System(numbers, masses, self.space.displacement_fn, self.space.periodic)
        self.terms = ([as_energy_term(t) for t in energy_terms]
                      + energy_terms_from_config(config.energy_terms, system)
                      + biases_from_config(config.bias, system, config))
        extra = observables_from_config(config.observables, system)
        extra.update(observables or {})
        # ensemble force uncertainty ([uncertainty], biojax.md.uncertainty): a hook with
        # its own observable, which may stop replicas (``stops``)
        monitor = monitor_from_config(config, potential, self.space.displacement_fn, numbers)
        if monitor is not None:
            extra.update(monitor.observables)
        self.extra_observables = list(extra)
        self.hooks = list(hooks) + ([monitor] if monitor is not None else [])
        if config.replica_exchange is not None:  # biojax.sampling.exchange
            self.hooks.append(import_object("biojax.sampling.exchange:from_config")(config))
        # hooks that energy terms bring (``term.hook``: the metad grid-exit check)
        self.hooks += [t.hook for t in self.terms if getattr(t, "hook", None) is not None]
        for h in self.hooks:
            self.terms = h.wrap_terms(self.terms)
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
        for h in self.hooks:
            h.setup(self)
        self.compiled: set = set()
        self.overflows = 0
        self._chunks: dict = {}
        # replicas sharded over devices (biojax.parallel); the block size is per device
        self.mesh = parallel.mesh(config.devices, engine.REPLICA_AXIS, "simulate: devices")
        self.n_devices = 1 if self.mesh is None else self.mesh.size
        local = parallel.check_divisible(R, self.mesh, "replicas", "simulate: devices")
        self.replica_block = engine.replica_block_size(config.replica_block, local,
                                                         self.n_atoms)

    # ------------------------------------------------------------------ helpers
    def _map(self, fn):
        """fn over the replica axis (engine.map_replicas), jitted; sharded over
        ``self.mesh`` when several devices are used."""
        return engine.replica_fn(fn, self.cfg.replicas, self.replica_block, self.mesh)

    def _allocate(self, positions, boxes=None, **kw):
        return engine.allocate(self.neighbor_fn, positions, box_kwargs=boxes, **kw)

    def _start_boxes(self) -> list[dict]:
        if self.cfg.ensemble != "npt":
            return [{}] * self.cfg.replicas
        return [{"box": jnp.asarray(np.asarray(a.cell, np.float64).T, jnp.float32)}
                for a in self.starts]

    def _boxes(self, state):
        """The box of each replica (R, ...) on the host, or None for fixed boxes."""
        # replica 0's state copied to the host first: indexing a state sharded over
        # several devices would run an eager cross-device computation per leaf
        if self.integ.box(jax.tree_util.tree_map(lambda x: np.asarray(x)[0], state)) is None:
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
        """FIRE descent until max |F| < minimize_fmax eV/Å or minimize_steps, then checked.

        FIRE (:func:`biojax.md.integrators.fire_move`; the time step grows up to
        10 × ``minimize_dt_fs``) with its own step control: no atom moves more than
        ``minimize_max_step`` Å per step. The MD time step plays
        no part (taken from it, FIRE blew alanine dipeptide apart from 3 fs up). Raises
        SimulationError, naming the energies, when the energy did not go down or a
        covalent bond of the start broke (``check_bonds``)."""
        cfg = self.cfg
        dt0, max_step = cfg.minimize_dt_fs * FS, cfg.minimize_max_step
        fmax2 = cfg.minimize_fmax ** 2
        energy_fn, shift_fn = self.energy_fn, self.space.shift_fn

        def run(R, nbrs, ts, box):
            def energy_force(R, nbrs):
                # in fractional coordinates jax-md's periodic_general differentiates to
                # Cartesian forces, and shift_fn takes Cartesian displacements
                e, g = jax.value_and_grad(energy_fn)(R, term_states=ts, **engine.space_kwargs(nbrs, box))
                return e, -g

            def cond(c):
                R, fire, f, e, nbrs, i = c
                return (i < cfg.minimize_steps) & (jnp.max(jnp.sum(f * f, -1)) > fmax2)

            def body(c):
                R, fire, f, e, nbrs, i = c
                dr, fire = fire_move(fire, f, 10.0 * dt0, max_step)
                R = shift_fn(R, dr, **({} if box is None else {"box": box}))
                nbrs = nbrs.update(R, **({} if box is None else {"box": box}))
                e, f = energy_force(R, nbrs)
                return R, fire, f, e, nbrs, i + 1

            e0, f0 = energy_force(R, nbrs)
            c = (R, fire_start(f0, dt0), f0, e0, nbrs, jnp.int32(0))
            R, fire, f, e, nbrs, i = jax.lax.while_loop(cond, body, c)
            return R, nbrs, e0, e, i, jnp.sqrt(jnp.max(jnp.sum(f * f, -1)))

        box = jnp.stack([b["box"] for b in boxes]) if boxes[0] else None
        capacity = 0
        while True:
            nbrs = self._allocate(list(positions), boxes, min_capacity=capacity)
            pos, nbrs, e_before, e_after, steps, fmax = self._map(run)(
                positions, nbrs, term_states, box)
            self.compiled.add(("minimize", engine.capacity_of(nbrs)))
            if not engine.overflowed(nbrs):
                break
            self.overflows += 1
            capacity = engine.grown_capacity(engine.capacity_of(nbrs))
        e_before, e_after, steps, fmax = (np.asarray(x) for x in jax.device_get(
            (e_before, e_after, steps, fmax)))
        self.minimization = {"energy_before_eV": e_before.tolist(),
                             "energy_after_eV": e_after.tolist(), "steps": steps.tolist(),
                             "fmax_eV_per_A": fmax.tolist(),
                             "converged": bool(np.all(fmax <= cfg.minimize_fmax))}
        settings = (f"{int(np.max(steps))} FIRE step(s), minimize_dt_fs = "
                    f"{cfg.minimize_dt_fs:g}, minimize_max_step = {max_step:g} Å")
        for r in range(cfg.replicas):
            tol = 1e-3 + 1e-5 * abs(float(e_before[r]))
            if not np.isfinite(e_after[r]) or e_after[r] > e_before[r] + tol:
                raise SimulationError(
                    f"replica {r}: energy minimisation raised the energy from "
                    f"{e_before[r]:.4f} eV to {e_after[r]:.4f} eV instead of lowering it "
                    f"({settings}); use a smaller minimize_max_step or minimize_dt_fs, or "
                    "check the structure and model")
        if cfg.check_bonds and self.bond_stretch is not None:
            ratio, k, dist = jax.device_get(self._map(
                lambda R, b: self.bond_stretch(R, **({} if b is None else {"box": b})))(
                    pos, box))
            for r in range(cfg.replicas):
                if ratio[r] > cfg.blowup_bond_factor:
                    raise SimulationError(
                        f"replica {r}: energy minimisation: "
                        f"{self._bond_text(int(k[r]), float(dist[r]))} (energy "
                        f"{e_before[r]:.4f} eV → {e_after[r]:.4f} eV, {settings}); use a "
                        "smaller minimize_max_step, check the structure and model, or set "
                        "check_bonds = false for a reactive system")
        return pos

    def _bond_text(self, k: int, dist: float) -> str:
        """'the covalent bond between atoms i (H) and j (C) broke: d Å, x × its ...'"""
        from ase.data import chemical_symbols

        i, j = (int(x) for x in self.bonds[k])
        ref = float(self.bond_ref[k])
        return (f"the covalent bond between atoms {i} ({chemical_symbols[self.numbers[i]]}) "
                f"and {j} ({chemical_symbols[self.numbers[j]]}) broke: {dist:.2f} Å, "
                f"{dist / ref:.2f} × its reference length {ref:.2f} Å (limit "
                f"blowup_bond_factor = {self.cfg.blowup_bond_factor:g})")

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
        init_map = self._map(lambda R: init_term_states(self.terms, R))
        init_terms = lambda R: self._sync_terms(init_map(R))  # noqa: E731
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
                                   **engine.space_kwargs(nbrs, box))

        state = self._map(init)(keys, positions, nbrs, term_states, self.kT, momenta, box)
        run = RunState(state, term_states, nbrs, 0, 0.0)
        for h in self.hooks:
            run = h.start(self, run)
        return run

    def _sync_terms(self, term_states):
        """The terms' ``sync`` on the replica-stacked states (multiple walkers merge
        their hills, umbrella windows set their centres), jitted once."""
        if not any(t.sync is not None for t in self.terms):
            return term_states
        if not hasattr(self, "_sync_fn"):
            self._sync_fn = jax.jit(lambda ts: sync_term_states(self.terms, ts))
        return self._sync_fn(term_states)

    # ------------------------------------------------------------------ chunks
    def _chunk_fn(self, n_frames: int, capacity: int):
        self.compiled.add(("chunk", n_frames, capacity))
        if n_frames not in self._chunks:
            cfg = self.cfg
            check_bonds = cfg.check_bonds and self.bond_stretch is not None
            chunk = engine.make_chunk(
                self.integ, self.observe, self.terms, n_frames,
                cfg.frame_every // cfg.observe_every, cfg.observe_every,
                cfg.write_velocities, cfg.write_forces,
                self.bond_stretch if check_bonds else None, cfg.blowup_bond_factor)
            self._chunks[n_frames] = self._map(chunk)
        return self._chunks[n_frames]

    def temperature_limit(self, t0: float) -> float:
        """The temperature (K) above which a replica counts as blown up."""
        return self.cfg.blowup_temperature_factor * max(self.cfg.temperature_K, t0, 10.0)

    def energy_margin(self, t0: float) -> float:
        """How far (eV) the potential energy may rise above its step-0 value:
        ``blowup_energy_kT`` · N · kT at max(target, initial, 10 K)."""
        return (self.cfg.blowup_energy_kT * self.n_atoms * KB
                * max(self.cfg.temperature_K, t0, 10.0))

    def _limits(self, run: RunState) -> tuple[jax.Array, jax.Array]:
        """Per-replica kinetic-energy and potential-energy limits (eV), chunk inputs."""
        R = self.cfg.replicas
        ke = 0.5 * self.integ.dof * KB * self.temperature_limit(run.t0)
        if self.cfg.check_energy and run.e0 is not None:
            pe = np.asarray(run.e0, np.float64) + self.energy_margin(run.t0)
        else:
            pe = np.full(R, np.inf)
        return jnp.full((R,), ke, jnp.float32), jnp.asarray(pe, jnp.float32)

    def _observe(self, run: RunState) -> dict:
        self.compiled.add(("observe", engine.capacity_of(run.nbrs)))
        return jax.device_get(self._map(self.observe)(run.state, run.term_states, run.nbrs,
                                                      self.kT))

    # ------------------------------------------------------------------ run
    def run(self, out: str | None = None, resume: bool = False,
            max_chunks: int | None = None, overwrite: bool | None = None) -> dict:
        """Run ``config.steps`` steps; write to ``out`` (None: write nothing, for benchmarks).

        The folder is locked for the run (a second run there is refused, naming this
        one). Without ``resume``, results of an earlier run in ``out`` (checkpoint,
        trajectory, observables) are an error unless ``overwrite`` (default
        ``config.overwrite``). ``max_chunks`` stops after that many chunks (as if killed;
        used by tests). Returns a summary dict (steps, wall time, steps/s, ns/day,
        compilations, ...); ``energy.png``/``temperature.png`` are written with it.
        """
        cfg = self.cfg
        if cfg.steps % cfg.frame_every:
            raise ConfigError(f"steps ({cfg.steps}) must be a multiple of frame_every "
                              f"({cfg.frame_every})")
        overwrite = cfg.overwrite if overwrite is None else overwrite
        if out is None:
            if resume:
                raise ConfigError("--resume needs an output directory")
            return self._run(None, False, max_chunks)
        out = os.fspath(out)
        check_output_dir(out, "simulation output directory")
        if resume and not os.path.isfile(os.path.join(out, checkpoint.CHECKPOINT_FILE)):
            checkpoint.load(os.path.join(out, checkpoint.CHECKPOINT_FILE))  # the error
        if parallel.process_count() > 1:
            # every process checks, then all wait for each other before process 0 writes;
            # the others compute the same chunks (they read a checkpoint to resume) and
            # write nothing
            from jax.experimental import multihost_utils

            if not resume:
                self.check_no_results(out, overwrite)
            multihost_utils.sync_global_devices("biojax simulate: output checked")
            if not parallel.is_writer():
                return self._run(out, resume, max_chunks, write=False)
        with RunLock(out, "simulation"):
            if not resume:
                self.check_no_results(out, overwrite)
            output.remove_stale_temporaries(out, cfg.replicas)
            return self._run(out, resume, max_chunks)

    def check_no_results(self, out: str, overwrite: bool = False) -> None:
        """Raise unless a fresh run may write to ``out``: an earlier run's checkpoint,
        trajectory or observables there are kept unless ``overwrite``."""
        cfg = self.cfg
        found = [p for p in output.result_files(out, cfg.replicas, cfg.trajectory_format,
                                                cfg.observables_format) if os.path.exists(p)]
        if not found or overwrite:
            return
        if os.path.basename(found[0]) == checkpoint.CHECKPOINT_FILE:
            raise SimulationError(
                f"{out} already holds a run (checkpoint.npz); use --resume to continue it, "
                "--overwrite to start it again, or choose another --out")
        shown = ", ".join(os.path.relpath(p, out) for p in found[:4])
        raise SimulationError(
            f"{out} already holds results ({shown}{' ...' if len(found) > 4 else ''}) "
            "without a checkpoint to resume from; biojax never overwrites results you did "
            "not ask it to: choose another --out, or give --overwrite (overwrite = true) to "
            "replace them")

    def _run(self, out: str | None, resume: bool, max_chunks: int | None,
             write: bool = True) -> dict:
        cfg = self.cfg
        R, M, K = cfg.replicas, cfg.frame_every, cfg.observe_every
        ckpt_path = None if out is None else os.path.join(out, checkpoint.CHECKPOINT_FILE)
        if resume:
            run, meta = self._resume(ckpt_path)
            columns = meta["columns"] or output.observable_columns(  # older checkpoints
                self._row(self._observe(run), 0, None, 0), self.extra_observables)
            writers = self._writers(out, columns) if write else []
            if run.started:
                for w, sizes in zip(writers, meta["files"]):
                    w.restore(sizes)
            elif writers:  # killed after the first checkpoint, before its step-0 output
                self._start_output(run, self._observe(run), writers, ckpt_path)
        else:
            run = self.initial_state()
            obs0 = self._observe(run)
            if not np.all(np.isfinite(obs0["potential_energy"])):
                raise SimulationError("the potential energy of the starting structure is not "
                                      "finite")
            run.t0 = float(np.max(obs0["temperature"]))
            run.e0 = [float(e) for e in obs0["potential_energy"]]
            writers = [] if out is None or not write else self._writers(
                out, output.observable_columns(
                self._row(obs0, 0, None, 0), self.extra_observables))
            if writers:
                # the first checkpoint comes before any output file: a run killed before
                # it leaves no results, one killed after it resumes
                run.started = False
                self._checkpoint(ckpt_path, run, writers)
                self._start_output(run, obs0, writers, ckpt_path)

        ke_limit, pe_limit = self._limits(run)
        chunk_frames = cfg.chunk_steps // M
        t_start, steps_done, n_chunks = time.perf_counter(), 0, 0
        first_chunk_s = None
        bar = progress_bar(cfg.steps - run.step, "simulate",
                           enabled=self.progress and write, unit="steps")
        try:
            while (run.step < cfg.steps and (max_chunks is None or n_chunks < max_chunks)
                   and len(self._stopped()) < R):
                n_frames = min(chunk_frames, (cfg.steps - run.step) // M)
                t_chunk = time.perf_counter()
                stopped = self._stopped()  # replicas a hook stopped: frozen (dt = 0)
                dt = self.dt if not stopped else self.dt.at[jnp.asarray(list(stopped))].set(0.0)
                while True:
                    fn = self._chunk_fn(n_frames, engine.capacity_of(run.nbrs))
                    state, term_states, nbrs, alarm, obs, frames = fn(
                        run.state, run.term_states, run.nbrs, dt, self.kT, ke_limit,
                        pe_limit)
                    if not engine.overflowed(nbrs):
                        break
                    self.overflows += 1
                    run.nbrs = self._allocate(list(np.asarray(run.state.position)),
                                              self._state_boxes(run.state),
                                              min_capacity=engine.grown_capacity(
                                                  engine.capacity_of(run.nbrs)))
                obs, frames, alarm = jax.device_get((obs, frames, alarm))
                if first_chunk_s is None:
                    first_chunk_s = time.perf_counter() - t_chunk
                halted = {}  # replicas a hook stops in this chunk: {r: last step kept}
                for h in self.hooks:
                    if hasattr(h, "stops"):
                        halted.update(h.stops(self, run, obs, frames, n_frames,
                                              out if write else None))
                alarm = tuple(np.array(a) for a in alarm)
                for r in range(R):  # no alarm from frozen replicas or after a stop
                    if r in stopped or (r in halted and alarm[0][r] > halted[r] - run.step):
                        alarm[0][r] = -1
                bad = np.asarray(alarm[0])
                stop = int(min(b for b in bad if b >= 0)) + run.step if np.any(bad >= 0) \
                    else None
                for r, w in enumerate(writers):
                    if r in stopped:
                        continue
                    rows = [self._row(obs, r, j, run.step + (j + 1) * K)
                            for j in range(n_frames * M // K)]
                    fr = [self._frame(frames, obs, r, f, (f + 1) * (M // K) - 1,
                                      run.step + (f + 1) * M) for f in range(n_frames)]
                    if stop is not None:
                        rows = [x for x in rows if x["step"] < stop]
                        fr = [a for a in fr if a.info["step"] < stop]
                    if r in halted:  # stopped by a hook: its output up to that step
                        rows = [x for x in rows if x["step"] <= halted[r]]
                        fr = [a for a in fr if a.info["step"] <= halted[r]]
                    w.write_observables(rows)
                    w.write_frames(fr)
                if stop is not None:
                    bar.close()
                    if write:
                        self._write_plots(out)
                    self._blowup(alarm, run, out, ke_limit, pe_limit)
                if halted:  # a stopped replica keeps its state from the chunk's start
                    keep = jnp.asarray(np.isin(np.arange(R), list(halted)))
                    state, term_states = jax.tree_util.tree_map(
                        lambda old, new: jnp.where(keep.reshape((R,) + (1,) * (new.ndim - 1)),
                                                   old, new),
                        (run.state, run.term_states), (state, term_states))
                run.state, run.term_states, run.nbrs = state, term_states, nbrs
                run.term_states = self._sync_terms(run.term_states)
                run.step += n_frames * M
                steps_done += n_frames * M
                n_chunks += 1
                for h in self.hooks:
                    h.after_chunk(self, run, out if write else None)
                if writers:
                    self._checkpoint(ckpt_path, run, writers)
                elapsed = time.perf_counter() - t_start
                bar.set(step=run.step, ns_day=f"{self._ns_per_day(steps_done, elapsed):.3g}",
                        compilations=len(self.compiled),
                        **{k: v for h in self.hooks for k, v in h.progress().items()})
                bar.update(steps_done)
        finally:
            bar.close()
        wall = time.perf_counter() - t_start
        summary = {
            "completed": run.step >= cfg.steps, "step": run.step, "steps_run": steps_done,
            "replicas": R, "atoms": self.n_atoms, "ensemble": cfg.ensemble,
            "wall_s": wall, "first_chunk_s": first_chunk_s,
            "steps_per_s": steps_done / wall if wall > 0 else 0.0,
            "ns_per_day": self._ns_per_day(steps_done, wall),
            "compilations": len(self.compiled), "compiled": sorted(map(str, self.compiled)),
            "neighbor_capacity": engine.capacity_of(run.nbrs), "overflows": self.overflows,
            "replica_block": self.replica_block, "devices": self.n_devices,
            "processes": parallel.process_count(),
        }
        summary["aggregate_ns_per_day"] = summary["ns_per_day"] * R
        if self.minimization is not None:
            summary["minimization"] = self.minimization
        for h in self.hooks:
            summary.update(h.summary())
        if out is not None and write:
            atomic_write_bytes(os.path.join(out, "summary.json"),
                               json.dumps(summary, indent=2).encode())
            summary["plots"] = self._write_plots(out)
        self.final_state = run.state
        return summary

    def _stopped(self) -> dict:
        """Replicas stopped by hooks (``stopped``: {r: last step kept}), frozen since."""
        return {r: s for h in self.hooks for r, s in getattr(h, "stopped", {}).items()}

    def _ns_per_day(self, steps: int, seconds: float) -> float:
        return steps / seconds * self.cfg.timestep_fs * 86400 / 1e6 if seconds > 0 else 0.0

    def _start_output(self, run: RunState, obs0: dict, writers, ckpt_path: str) -> None:
        """Step 0 into fresh files (header, observables, frame), then the checkpoint that
        says so."""
        for r, w in enumerate(writers):
            w.start()
            w.write_observables([self._row(obs0, r, None, 0)])
            w.write_frames([self._frame(run.state, obs0, r, None, None, 0)])
        run.started = True
        self._checkpoint(ckpt_path, run, writers)

    def _write_plots(self, out: str | None) -> list[str]:
        """energy.png and temperature.png from the observables files (cfg.plots)."""
        if out is None or not self.cfg.plots:
            return []
        R = self.cfg.replicas
        thermostat = self.integ.conserved is not None
        target = self.cfg.temperature_K if thermostat else None
        return output.write_plots(out, [output.replica_dir(out, r, R) for r in range(R)],
                                  target, "conserved energy" if thermostat else
                                  "total energy")

    # ------------------------------------------------------------------ host pieces
    def _writers(self, out: str, columns: list[str]) -> list[output.ReplicaWriter]:
        os.makedirs(out, exist_ok=True)
        R = self.cfg.replicas
        return [output.ReplicaWriter(output.replica_dir(out, r, R), self.cfg.trajectory_format,
                                     self.cfg.observables_format, columns, self.starts[r],
                                     self.cfg.timestep_fs, self.cfg.frame_every)
                for r in range(R)]

    def _row(self, obs: dict, r: int, j: int | None, step: int) -> dict:
        """Observables of replica r (record j of a chunk, or the single record of obs0)."""
        values = {k: np.asarray(v)[r] if j is None else np.asarray(v)[r, j]
                  for k, v in obs.items()}
        row = {"step": step, "time_fs": step * self.cfg.timestep_fs, **flatten_row(values)}
        for h in self.hooks:
            row.update(h.columns(r))
        return row

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
                        columns=writers[0].columns, model=self.model_id,
                        hooks=[h.state_dict() for h in self.hooks])

    def _resume(self, path: str) -> tuple[RunState, dict]:
        leaves, meta = checkpoint.load(path)
        checkpoint.check_compatible(path, meta, self.cfg, self.n_atoms)
        checkpoint.check_same_model(path, meta, self.model_id)
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
        for h, saved in zip(self.hooks, meta.get("hooks") or []):
            h.load_state_dict(saved)
        run = RunState(state, term_states, nbrs, meta["step"], meta["t0"], meta.get("e0"),
                       meta.get("started", True))
        if run.e0 is None:  # written before the energy check: its reference is now
            run.e0 = [float(e) for e in self._observe(run)["potential_energy"]]
        return run, meta

    def _blowup(self, alarm, run: RunState, out, ke_limit, pe_limit) -> None:
        """Raise the SimulationError for the first alarm of a chunk: which replica, step
        and time, what happened (temperature, energy or bond, with the values and the
        limit that was applied) and what was kept."""
        cfg = self.cfg
        steps, kinds, index, value = (np.asarray(x) for x in alarm)
        r = int(np.argmin(np.where(steps >= 0, steps, np.iinfo(np.int32).max)))
        stop = run.step + int(steps[r])
        kind, v = int(kinds[r]), float(value[r])
        if kind == engine.ALARM_TEMPERATURE:
            to_K = 2.0 / (self.integ.dof * KB)
            limit = float(ke_limit[r]) * to_K
            what = ("the kinetic energy became non-finite (NaN/inf)" if not np.isfinite(v)
                    else f"the temperature reached {v * to_K:.0f} K (limit {limit:.0f} K = "
                         f"blowup_temperature_factor {cfg.blowup_temperature_factor:g} × "
                         f"max(target, initial, 10 K))")
            hint = "Try a smaller timestep, minimize = true, or check the structure and model"
        elif kind == engine.ALARM_BOND:
            what = self._bond_text(int(index[r]), v)
            hint = ("Try a smaller timestep, minimize = true, or check the structure and "
                    "model; for a reactive simulation set check_bonds = false")
        else:
            e0 = float(run.e0[r])
            what = ("the potential energy became non-finite (NaN/inf)" if not np.isfinite(v)
                    else f"the potential energy jumped to {v:.4f} eV, {v - e0:.4f} eV above "
                         f"its value at step 0 ({e0:.4f} eV; limit +"
                         f"{float(pe_limit[r]) - e0:.4f} eV = blowup_energy_kT "
                         f"{cfg.blowup_energy_kT:g} × {self.n_atoms} atoms × kT at "
                         f"{max(cfg.temperature_K, run.t0, 10.0):.0f} K)")
            hint = ("Try a smaller timestep, minimize = true, or check the structure and "
                    "model; set check_energy = false (or raise blowup_energy_kT) if the "
                    "rise is expected")
        kept = "" if out is None else (f"; frames before step {stop} and the checkpoint at "
                                       f"step {run.step} in {out} are kept")
        raise SimulationError(
            f"replica {r}: simulation blew up at step {stop} (t = "
            f"{stop * cfg.timestep_fs:g} fs): {what}{kept}. {hint}")
