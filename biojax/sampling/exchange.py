"""Replica exchange between chunks of a Simulation: parallel tempering and Hamiltonian
exchange over bias strengths.

A ``[replica_exchange]`` table (``biojax.md.config.ReplicaExchangeConfig``) turns the
replica axis into one or more ladders of *slots*: with n rungs, replica r is rung r mod n
of ladder r // n, at temperature T_k and with its own energy-term states (its bias, its
umbrella window; with ``scales``, every energy term multiplied by λ_k). What moves on an
accepted exchange is the **configuration**: positions, momenta (rescaled by
√(T_new/T_old)), the neighbor list, and the forces, recomputed with the receiving
slot's term states. A slot keeps its temperature, its term states and its output files,
so ``replica_XXX/`` is always one thermodynamic state (the usual layout for reweighting
and for reading the lowest-temperature ensemble); the column ``walker`` of every
observables row says which walker (continuous trajectory) was in the slot, so walkers can
be followed across slots.

Exchanges are attempted every ``every`` steps, at the end of a chunk, between the
neighbouring rungs (k, k+1) of every ladder, even pairs and odd pairs in turn. A pair of
slots i, j holding configurations x_i, x_j swaps with probability
min(1, exp(−Δ)), Δ = β_i [E_i(x_j) − E_i(x_i)] + β_j [E_j(x_i) − E_j(x_j)], where E_k is
the total energy the slot integrates (the Potential plus every energy term, with slot
k's term states): for plain tempering Δ = (β_i − β_j)(E(x_j) − E(x_i)). The uniform
numbers come from ``numpy.random.default_rng([seed, attempt])``, so the exchange state
(attempt count, walker of each slot, acceptance counts, round-trip bookkeeping) is a
small JSON dict kept in the checkpoint, and a killed run resumes identically.

Statistics (also in ``replica_exchange.json`` of the run folder and in the summary):
per neighbouring pair the attempts, acceptances, acceptance rate and the mean Metropolis
probability min(1, e^−Δ) (a lower-variance estimate of the rate); per walker the number
of round trips (bottom rung → top rung → bottom rung).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.atomic import atomic_write_bytes
from biojax.core.errors import ConfigError
from biojax.core.units import KB
from biojax.md.integrators import kinetic_energy
from biojax.md.terms import EnergyTerm

STATS_FILE = "replica_exchange.json"


def _scaled_columns(columns: dict, lam) -> dict:
    """A scaled term's observed columns: the energies it applies (``bias_energy``,
    ``L.energy``, eV) and the unbiasing log-weight ``bias_logw`` are λ times the inner
    term's (the slot samples exp(−β(U + λV)), so its frames are unbiased by
    exp(βλ(V − c))); CV values and bias-state columns are unchanged."""
    return {k: v * lam if (k in ("bias_energy", "bias_logw") or k.endswith(".energy"))
            else v for k, v in columns.items()}


def scaled_terms(terms: Sequence[EnergyTerm]) -> list[EnergyTerm]:
    """Each energy term multiplied by a per-replica factor λ kept in its state, which
    becomes ``(λ, inner state)`` (λ = 1 after ``init``; the exchange sets it per slot).
    Optional ``observe``/``sync`` fields of a term (``biojax.sampling.bias``) are passed
    to the inner state; the observed energies and ``bias_logw`` are scaled by λ."""
    out = []
    for t in terms:
        def energy(R, s, _t=t, **kw):
            return s[0] * _t.energy(R, s[1], **kw)

        def init(R, _t=t):
            return (jnp.float32(1.0), None if _t.init is None else _t.init(R))

        def update(s, R, _t=t, **kw):
            return (s[0], s[1] if _t.update is None else _t.update(s[1], R, **kw))

        extra = {}
        for name in ("observe", "sync"):
            fn = getattr(t, name, None)
            if fn is None:
                continue
            if name == "observe":
                extra[name] = (lambda R, s, _fn=fn, **kw: _scaled_columns(
                    _fn(R, s[1], **kw), s[0]))
            else:
                extra[name] = (lambda s, _fn=fn: (s[0], _fn(s[1])))
        out.append(t._replace(energy=energy, init=init, update=update, **extra))
    return out


@dataclasses.dataclass
class ExchangeState:
    """What the host carries between exchanges (JSON in the checkpoint)."""

    attempts: int                 # exchange rounds done
    walker: list[int]             # walker in each slot
    pair_attempts: list[int]      # per neighbouring rung pair k, k+1 (summed over ladders)
    pair_accepted: list[int]
    pair_probability: list[float]  # Σ min(1, e^−Δ)
    last_end: list[int]           # per walker: -1 none yet, 0 bottom, 1 top visited last
    round_trips: list[int]        # per walker


class ReplicaExchange:
    """The host-loop hook of a Simulation that runs replica exchange (see module doc).

    Built by ``Simulation`` from ``config.replica_exchange``; ``columns``, ``after_chunk``,
    ``state_dict``/``load_state_dict``, ``summary`` and ``progress`` are called by its host
    loop."""

    def __init__(self, config):
        rex = config.replica_exchange
        if rex is None:
            raise ConfigError("replica exchange needs a [replica_exchange] table")
        self.cfg = rex
        self.temperatures, self.scales = rex.ladder(config.temperature_K)
        self.n = len(self.temperatures)
        self.R = config.replicas
        if self.R % self.n:
            raise ConfigError(f"replica_exchange: replicas = {self.R} is not a multiple of "
                              f"the {self.n} rungs")
        self.hamiltonian = bool(rex.scales)
        self.every = rex.every
        self.slot_T = np.array([self.temperatures[r % self.n] for r in range(self.R)])
        self.slot_beta = 1.0 / (KB * self.slot_T)
        self.state = ExchangeState(0, list(range(self.R)), [0] * (self.n - 1),
                                   [0] * (self.n - 1), [0.0] * (self.n - 1),
                                   [0 if r % self.n == 0 else
                                    (1 if r % self.n == self.n - 1 else -1)
                                    for r in range(self.R)], [0] * self.R)
        self._fns = None

    # ---------------------------------------------------------------- simulation hooks
    def wrap_terms(self, terms: list) -> list:
        """The energy terms with a per-slot scale when the ladder has ``scales``."""
        if self.hamiltonian and not terms:
            raise ConfigError("replica_exchange.scales multiplies the energy terms (biases), "
                              "but the simulation has none")
        return scaled_terms(terms) if self.hamiltonian else list(terms)

    def setup(self, sim) -> None:
        """Per-replica temperatures from the ladder (kT of every chunk, eV)."""
        sim.kT = jnp.asarray(self.slot_T * KB, jnp.float32)

    def start(self, sim, run):
        """At step 0: each slot's scale in its term states, forces recomputed."""
        if not self.hamiltonian:
            return run
        lam = jnp.asarray([self.scales[r % self.n] for r in range(self.R)], jnp.float32)
        run.term_states = tuple((lam, s[1]) for s in run.term_states)
        run.state = self._functions(sim)[1](run.state, run.nbrs, run.term_states)
        return run

    def columns(self, r: int) -> dict:
        """Host-side observable columns of slot r: the walker it holds."""
        return {"walker": float(self.state.walker[r])}

    def after_chunk(self, sim, run, out: str | None) -> None:
        """Attempt exchanges when ``run.step`` is a multiple of ``every``; write the
        statistics to ``out``/replica_exchange.json."""
        if run.step % self.every or run.step == 0:
            return
        self.attempt(sim, run)
        if out is not None:
            atomic_write_bytes(os.path.join(out, STATS_FILE),
                               json.dumps(self.summary()["replica_exchange"],
                                          indent=2).encode())

    def state_dict(self) -> dict:
        return dataclasses.asdict(self.state)

    def load_state_dict(self, d: dict) -> None:
        self.state = ExchangeState(**d)

    # ---------------------------------------------------------------- exchange
    def _functions(self, sim):
        """Jitted functions over the replica axis: (energies, refresh, cross, swap) —
        the total energy of each replica's configuration with its term states; a state
        whose force is recomputed (and Nosé–Hoover chain kinetic energy refreshed); the
        energies with the term states of ``partner``; the configurations permuted by
        ``perm`` with momenta × ``scale`` and forces recomputed."""
        if self._fns is None:
            energy_fn = sim.energy_fn

            def energy(R, nbrs, ts):
                return energy_fn(R, neighbor=nbrs, term_states=ts)

            def refresh(state, nbrs, ts):
                f = -jax.grad(energy)(state.position, nbrs, ts)
                state = dataclasses.replace(state, force=f)
                chain = getattr(state, "chain", None)
                if chain is not None and hasattr(chain, "kinetic_energy"):
                    chain = dataclasses.replace(chain, kinetic_energy=kinetic_energy(
                        state.momentum, state.mass))
                    state = dataclasses.replace(state, chain=chain)
                return state

            energies, refreshed = sim._map(energy), sim._map(refresh)

            @jax.jit
            def cross(R, nbrs, ts, partner):
                return energies(R, nbrs, jax.tree_util.tree_map(lambda x: x[partner], ts))

            @jax.jit
            def swap(state, nbrs, ts, perm, scale):
                state = dataclasses.replace(
                    state, position=state.position[perm],
                    momentum=state.momentum[perm] * scale[:, None, None])
                nbrs = jax.tree_util.tree_map(lambda x: x[perm], nbrs)
                return refreshed(state, nbrs, ts), nbrs

            self._fns = (energies, refreshed, cross, swap)
        return self._fns

    def pairs(self, attempt: int) -> list[tuple[int, int, int]]:
        """(slot i, slot j = i + 1, rung k of i) of the pairs tried at ``attempt``."""
        out = []
        for ladder in range(self.R // self.n):
            for k in range(attempt % 2, self.n - 1, 2):
                i = ladder * self.n + k
                out.append((i, i + 1, k))
        return out

    def attempt(self, sim, run) -> np.ndarray:
        """One round of exchanges on ``run`` (modified in place). Returns the permutation
        applied: slot r now holds the configuration slot perm[r] held."""
        st = self.state
        pairs = self.pairs(st.attempts)
        energy, _, cross_fn, swap = self._functions(sim)
        partner = np.arange(self.R)
        for i, j, _ in pairs:
            partner[i], partner[j] = j, i
        own = np.asarray(energy(run.state.position, run.nbrs, run.term_states), np.float64)
        # without term states every slot has the same Hamiltonian: E_j(x_i) = E_i(x_i);
        # with them (scales, a bias or umbrella window per slot) evaluate E_j(x_i)
        cross = (np.asarray(cross_fn(run.state.position, run.nbrs, run.term_states,
                                     jnp.asarray(partner)), np.float64)
                 if jax.tree_util.tree_leaves(run.term_states) else own)
        u = np.random.default_rng([self.cfg.seed, st.attempts]).random(len(pairs))
        perm = np.arange(self.R)
        b = self.slot_beta
        for (i, j, k), ui in zip(pairs, u):
            # cross[j] = E_i(x_j), cross[i] = E_j(x_i)
            delta = b[i] * (cross[j] - own[i]) + b[j] * (cross[i] - own[j])
            p = float(np.exp(-delta)) if delta > 0 else 1.0
            st.pair_attempts[k] += 1
            st.pair_probability[k] += p
            if ui < p:
                st.pair_accepted[k] += 1
                perm[i], perm[j] = j, i
        st.attempts += 1
        if np.any(perm != np.arange(self.R)):
            scale = jnp.asarray(np.sqrt(self.slot_T / self.slot_T[perm]), jnp.float32)
            run.state, run.nbrs = swap(run.state, run.nbrs, run.term_states,
                                       jnp.asarray(perm), scale)
            st.walker = [st.walker[p] for p in perm]
        self._count_round_trips()
        return perm

    def _count_round_trips(self) -> None:
        st = self.state
        for r, w in enumerate(st.walker):
            k = r % self.n
            if k == 0:
                if st.last_end[w] == 1:
                    st.round_trips[w] += 1
                st.last_end[w] = 0
            elif k == self.n - 1 and st.last_end[w] == 0:
                st.last_end[w] = 1

    # ---------------------------------------------------------------- reporting
    def summary(self) -> dict:
        st = self.state
        pairs = []
        for k in range(self.n - 1):
            a = st.pair_attempts[k]
            pairs.append({"rungs": [k, k + 1],
                          "temperatures_K": [self.temperatures[k], self.temperatures[k + 1]],
                          "scales": [self.scales[k], self.scales[k + 1]],
                          "attempts": a, "accepted": st.pair_accepted[k],
                          "acceptance": st.pair_accepted[k] / a if a else None,
                          "mean_probability": st.pair_probability[k] / a if a else None})
        return {"replica_exchange": {
            "temperatures_K": self.temperatures, "scales": self.scales,
            "ladders": self.R // self.n, "every_steps": self.every,
            "swapped": "configurations (slots keep temperature, term states and files)",
            "rounds": st.attempts, "pairs": pairs,
            "round_trips": st.round_trips, "round_trips_total": int(sum(st.round_trips)),
            "walker_in_slot": st.walker}}

    def progress(self) -> dict:
        st = self.state
        acc = "/".join(f"{a / n:.2f}" if n else "-" for a, n in
                       zip(st.pair_accepted, st.pair_attempts))
        return {"acc": acc, "trips": int(sum(st.round_trips))}


def from_config(config):
    """The exchange hook for ``config`` (``Simulation`` imports it by this name)."""
    return ReplicaExchange(config)

