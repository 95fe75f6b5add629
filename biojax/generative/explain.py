"""Attributions that explain potentials and state assignments.

- :func:`energy_function` / :func:`per_atom_energies`: a biojax Potential on one molecule
  in free space (all pairs within the cutoff, no neighbor list), as a pure JAX function
  of positions (N, 3) Å → eV. biojax models predict per-atom energies and the Potential
  sums them, so the per-atom energies *are* a decomposition of the total (exactly, by
  construction: the test checks it against the jax-md path and the ASE calculator).
  They are interaction energies (the per-species reference energies left out).
- :func:`energy_attributions`: integrated gradients of the energy with respect to the
  positions (per atom, eV) between a baseline structure and a structure, and with respect
  to internal coordinates (per bond/angle/torsion, eV); completeness: they sum to
  E(x) − E(baseline) up to the quadrature error, which is reported.
- :func:`train_state_classifier` / :func:`classifier_attributions`: a small MLP that
  predicts conformational-state labels (k-means clusters of ``biojax.analysis``, or named
  φ/ψ regions) from trajectory features (sin/cos of dihedrals, distances), its held-out
  accuracy, and integrated gradients of the predicted state's logit over the features
  (baseline: the feature mean), averaged over held-out frames.

Integrated gradients come from :mod:`biojax.generative.attributions`.
"""

from __future__ import annotations

import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from biojax.core.errors import AnalysisError
from biojax.core.graph import Graph

__all__ = ["energy_function", "per_atom_energies", "attributions_of", "energy_attributions",
           "StateClassifier", "train_state_classifier", "classifier_attributions",
           "plot_summary"]


# ---------------------------------------------------------------- potentials
def energy_function(potential, numbers, per_atom: bool = False) -> Callable:
    """``f(positions (N, 3) Å) -> E`` (eV, the interaction energy) of ``potential`` for one
    molecule of atoms ``numbers`` in free space; with ``per_atom`` the (N,) per-atom
    energies. Pure JAX (jit/vmap/grad). Edges are all ordered pairs; those beyond the
    cutoff are masked (and the models' envelopes vanish there anyway)."""
    species = jnp.asarray(potential.species_of(numbers))
    n = len(species)
    send, recv = np.nonzero(~np.eye(n, dtype=bool))
    send, recv = jnp.asarray(send, jnp.int32), jnp.asarray(recv, jnp.int32)
    cutoff = float(potential.cutoff)

    def fn(positions, params=None):
        x = jnp.asarray(positions)
        vec = x[recv] - x[send]
        mask = jnp.sum(vec * vec, -1) < cutoff * cutoff
        graph = Graph(vectors=vec, species=species, senders=send, receivers=recv,
                      edge_mask=mask, node_mask=jnp.ones(n, bool))
        e = potential.atomic_energies(potential.params if params is None else params, graph)
        return e if per_atom else jnp.sum(e)

    return fn


def per_atom_energies(potential, numbers, positions) -> np.ndarray:
    """Per-atom interaction energies (eV) of one structure (N, 3) Å or frames (n, N, 3);
    they sum to the potential's interaction energy."""
    x = jnp.asarray(positions, jnp.float32)
    f = energy_function(potential, numbers, per_atom=True)
    return np.asarray(jax.vmap(f)(x) if x.ndim == 3 else f(x))


def attributions_of(f: Callable, positions, baseline, steps: int = 64, zmatrix=None) -> dict:
    """Integrated gradients of any scalar ``f(positions (N, 3) Å)`` from ``baseline`` to
    ``positions`` (the baseline superimposed on the structure first). Returns
    ``per_atom`` (N,) (IG summed over x, y, z, units of f), ``completeness_error``,
    ``delta_energy`` = f(x) − f(baseline), and with a ``zmatrix``
    (``biojax.generative.internal.ZMatrix``) ``internal`` (3N − 6,): IG over its bonds,
    angles and torsions along the straight path in internal coordinates (torsion
    differences taken the short way round the circle) with its completeness error."""
    from biojax.core.geometry import align
    from biojax.generative.attributions import completeness_error

    x = jnp.asarray(positions, jnp.float32)
    x0 = align(jnp.asarray(baseline, jnp.float32), x)
    ig = _jitted_ig(f, steps)(x, x0)
    out = {"per_atom": np.asarray(jnp.sum(ig, -1)),
           "completeness_error": completeness_error(f, x, x0, ig),
           "delta_energy": float(f(x) - f(x0))}
    if zmatrix is not None:
        from biojax.generative import internal

        z, z0 = internal.to_internal(zmatrix, x), internal.to_internal(zmatrix, x0)
        nt = zmatrix.n_atoms - 3
        z0 = z0.at[-nt:].set(z[-nt:] - internal.wrap(z[-nt:] - z0[-nt:]))
        key = (f, "internal", zmatrix.order.tobytes(), zmatrix.refs.tobytes())
        if key not in _IG_CACHE:
            _IG_CACHE[key] = jax.jit(lambda zz: f(internal.to_cartesian(zmatrix, zz)))
        g = _IG_CACHE[key]
        igz = _jitted_ig(g, steps)(z, z0)
        out["internal"] = np.asarray(igz)
        out["internal_completeness_error"] = completeness_error(g, z, z0, igz)
    return out


_IG_CACHE: dict = {}


def _jitted_ig(f, steps):
    """jit(integrated_gradients(f, ·, ·, steps)), compiled once per (f, steps)."""
    from biojax.generative.attributions import integrated_gradients

    if (f, steps) not in _IG_CACHE:
        _IG_CACHE[(f, steps)] = jax.jit(lambda a, b: integrated_gradients(f, a, b, steps=steps))
    return _IG_CACHE[(f, steps)]


def energy_attributions(potential, numbers, positions, baseline, steps: int = 64,
                        zmatrix=None) -> dict:
    """:func:`attributions_of` for the interaction energy (eV) of ``potential``."""
    return attributions_of(energy_function(potential, numbers), positions, baseline, steps,
                           zmatrix)


# ---------------------------------------------------------------- state classifier
class StateClassifier(nn.Module):
    """An MLP from standardised features (F,) to state logits (n_states,)."""

    n_states: int
    hidden: int = 64
    depth: int = 2

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = nn.silu(nn.Dense(self.hidden, name=f"dense_{i}")(x))
        return nn.Dense(self.n_states, name="logits")(x)


def train_state_classifier(features, labels, n_states: int, *, hidden: int = 64,
                           steps: int = 1000, batch_size: int = 256,
                           learning_rate: float = 3e-3, test_fraction: float = 0.2,
                           seed: int = 0, workdir: str | None = None, resume: bool = False,
                           log=print, progress: bool = False) -> dict:
    """Train a :class:`StateClassifier` on features (n, F) → integer labels (n,) with Adam
    on the cross-entropy; a random ``test_fraction`` of frames is held out. With
    ``workdir`` it checkpoints and resumes through ``biojax.generative.trainer.fit``.
    Returns ``params``, ``model``, ``mean``/``std`` (standardisation), ``test_index``,
    ``train_accuracy``, ``test_accuracy``."""
    feats = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    if feats.ndim != 2 or len(feats) != len(labels):
        raise AnalysisError(f"state classifier: features {feats.shape} and labels "
                            f"{labels.shape} must have one row per frame")
    if not np.all(np.isfinite(feats)):
        raise AnalysisError("state classifier: features contain NaN or infinite values")
    if labels.min() < 0 or labels.max() >= n_states:
        raise AnalysisError(f"state classifier: labels must be in [0, {n_states})")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(feats))
    n_test = max(1, int(round(test_fraction * len(feats))))
    test, train = perm[:n_test], perm[n_test:]
    mean, std = feats[train].mean(0), np.maximum(feats[train].std(0), 1e-6)
    xs = jnp.asarray((feats - mean) / std)
    ys = jnp.asarray(labels)
    xt, yt = xs[train], ys[train]
    model = StateClassifier(n_states, hidden)
    tx = optax.adam(learning_rate)
    params = model.init(jax.random.PRNGKey(seed), xs[:1])
    state = {"params": params, "opt": tx.init(params)}
    bs = min(batch_size, len(train))

    def loss_fn(p, xb, yb):
        logits = model.apply(p, xb)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

    @jax.jit
    def step_fn(state, key):
        idx = jax.random.randint(key, (bs,), 0, len(train))
        value, grads = jax.value_and_grad(loss_fn)(state["params"], xt[idx], yt[idx])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, \
            {"cross_entropy": value}

    if workdir is not None:
        from biojax.generative.trainer import fit

        state = fit(step_fn, state, steps, workdir, "classifier", seed=seed,
                    config={"hidden": hidden, "steps": steps, "batch_size": batch_size,
                            "learning_rate": learning_rate, "n_states": n_states,
                            "n_features": int(feats.shape[1])},
                    resume=resume, log=log, progress=progress)
    else:
        base = jax.random.PRNGKey(seed)
        for k in range(1, steps + 1):
            state, _ = step_fn(state, jax.random.fold_in(base, k))
    pred = np.asarray(jnp.argmax(model.apply(state["params"], xs), -1))
    return {"params": state["params"], "model": model, "mean": mean, "std": std,
            "test_index": test, "train_index": train,
            "train_accuracy": float(np.mean(pred[train] == labels[train])),
            "test_accuracy": float(np.mean(pred[test] == labels[test]))}


def classifier_attributions(clf: dict, features, steps: int = 32) -> tuple[np.ndarray, float]:
    """Integrated gradients (n, F) of each frame's predicted-state logit over its
    standardised features (baseline: the training mean, i.e. 0), and the largest
    completeness error (logit units) over the frames."""
    from biojax.generative.attributions import integrated_gradients

    xs = jnp.asarray((np.asarray(features, np.float32) - clf["mean"]) / clf["std"])
    model, params = clf["model"], clf["params"]
    pred = jnp.argmax(model.apply(params, xs), -1)
    base = jnp.zeros(xs.shape[1], xs.dtype)

    def one(x, c):
        f = lambda v: model.apply(params, v)[c]  # noqa: E731
        ig = integrated_gradients(f, x, base, steps=steps)
        return ig, jnp.sum(ig) - (f(x) - f(base))

    ig, err = jax.jit(jax.vmap(one))(xs, pred)
    return np.asarray(ig), float(jnp.max(jnp.abs(err)))


def plot_summary(out: dict, workdir: str) -> list[str]:
    """PNG plots of an explain summary (``biojax.generative.explain_stage.run``):
    per-atom energies, per-atom energy IG, state-classifier IG profile. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.data import chemical_symbols

    from biojax.core.atomic import atomic_path

    written = []

    def save(fig, name):
        path = os.path.join(workdir, name)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path)

    labels = [f"{chemical_symbols[z]}{i}" for i, z in enumerate(out.get("numbers", []))]
    if "per_atom_energies_eV" in out:
        e = np.asarray(out["per_atom_energies_eV"])
        fig, ax = plt.subplots(figsize=(8, 3))
        for k, row in enumerate(e[:4]):
            ax.plot(row, "o-", ms=3, label=f"structure {k}: E = {row.sum():+.3f} eV")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_ylabel("per-atom energy (eV)")
        ax.legend(fontsize=7)
        save(fig, "per_atom_energy.png")
    if out.get("integrated_gradients"):
        fig, ax = plt.subplots(figsize=(8, 3))
        for rec in out["integrated_gradients"][:4]:
            ax.bar(np.arange(len(rec["per_atom"])), rec["per_atom"], alpha=0.5,
                   label=f"structure {rec['structure']}: ΔE = {rec['delta']:+.3f}")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_ylabel("integrated gradients (per atom)")
        ax.legend(fontsize=7)
        save(fig, "energy_ig.png")
    st = out.get("states")
    if st:
        fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(st["feature_names"])), 3))
        ax.bar(range(len(st["ig_share"])), st["ig_share"])
        ax.set_xticks(range(len(st["feature_names"])), st["feature_names"], rotation=90,
                      fontsize=7)
        ax.set_ylabel("share of mean |IG|")
        ax.set_title(f"state classifier ({st['k']} states), held-out accuracy "
                     f"{st['test_accuracy']:.3f}", fontsize=9)
        save(fig, "state_ig.png")
    return written
