"""Attributions for any differentiable model: integrated gradients and in-silico
mutagenesis.

``f`` is a JAX function from one input array to a scalar (a classifier logit, an energy
in eV, a log-likelihood); attributions have the shape of the input and the units of
``f``. Integrated gradients (Sundararajan et al., ICML 2017) integrate ∇f along the
straight path from a baseline x' to x:

    IG_i = (x_i - x'_i) ∫_0^1 ∂f/∂x_i (x' + a (x - x')) da

approximated here by the midpoint rule with ``steps`` points; by the fundamental theorem
of calculus the attributions sum to f(x) − f(x') ("completeness") up to that
quadrature error, which :func:`completeness_error` reports.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import AnalysisError

__all__ = ["integrated_gradients", "completeness_error", "in_silico_mutagenesis",
           "batched_integrated_gradients", "shuffled_baselines"]


def _check(x, baseline):
    x = jnp.asarray(x)
    baseline = jnp.zeros_like(x) if baseline is None else jnp.asarray(baseline, x.dtype)
    if baseline.shape != x.shape:
        raise AnalysisError(f"integrated_gradients: baseline shape {baseline.shape} "
                            f"differs from input shape {x.shape}")
    return x, baseline


def integrated_gradients(f: Callable, x, baseline=None, steps: int = 64,
                         chunk: int | None = None):
    """Integrated-gradient attributions of scalar ``f`` at ``x`` (shape of ``x``, units
    of ``f``) against ``baseline`` (default zeros), midpoint rule with ``steps`` points.
    ``chunk``: evaluate the path gradients this many at a time (memory); default all."""
    if int(steps) < 1:
        raise AnalysisError(f"integrated_gradients: steps must be ≥ 1, got {steps}")
    x, baseline = _check(x, baseline)
    if chunk is None and not isinstance(x, jax.core.Tracer):  # one compiled call, not
        return jax.jit(lambda a, b: _ig(f, a, b, int(steps), None))(x, baseline)  # per op
    return _ig(f, x, baseline, int(steps), chunk)


def _ig(f, x, baseline, steps, chunk):
    alphas = (jnp.arange(steps, dtype=x.dtype) + 0.5) / steps
    grad = jax.grad(lambda z: jnp.asarray(f(z)).reshape(()))
    delta = x - baseline

    def path_grad(a):
        return grad(baseline + a * delta)

    if chunk is None or chunk >= steps:
        total = jnp.sum(jax.vmap(path_grad)(alphas), axis=0)
    else:
        total = jnp.zeros_like(x)
        for i in range(0, steps, int(chunk)):
            total = total + jnp.sum(jax.vmap(path_grad)(alphas[i:i + int(chunk)]), axis=0)
    return delta * total / steps


def completeness_error(f: Callable, x, baseline=None, attributions=None, steps: int = 64):
    """``sum(attributions) − (f(x) − f(baseline))`` (units of ``f``): the quadrature error
    of :func:`integrated_gradients` (computed with ``steps`` if ``attributions`` is None).
    Decreases as O(1/steps²) for smooth ``f``."""
    x, baseline = _check(x, baseline)
    if attributions is None:
        attributions = integrated_gradients(f, x, baseline, steps=steps)
    return float(jnp.sum(attributions) - (jnp.asarray(f(x)) - jnp.asarray(f(baseline))))


def batched_integrated_gradients(f: Callable, xs, baseline=None, steps: int = 32,
                                 batch: int = 128):
    """Integrated gradients for each input in ``xs`` (leading axis), jitted once and run
    ``batch`` inputs at a time (the last chunk padded). ``baseline``: the shape of one
    input (shared; default zeros) or the shape of ``xs`` (one baseline per input).
    Returns an array shaped like ``xs`` (units of ``f``)."""
    xs = np.asarray(xs)
    base = np.zeros(xs.shape[1:], xs.dtype) if baseline is None else np.asarray(baseline,
                                                                                 xs.dtype)
    per_input = base.shape == xs.shape and base.shape != xs.shape[1:]
    if not per_input and base.shape != xs.shape[1:]:
        raise AnalysisError(f"batched_integrated_gradients: baseline shape {base.shape} "
                            f"differs from one input's shape {xs.shape[1:]} and from "
                            f"the inputs' shape {xs.shape}")
    if per_input:
        fn = jax.jit(jax.vmap(lambda x, b: integrated_gradients(f, x, b, steps=steps)))
    else:
        shared = jnp.asarray(base)
        fn = jax.jit(jax.vmap(lambda x, b: integrated_gradients(f, x, shared, steps=steps)))
    size = min(batch, len(xs))
    out = []
    for i in range(0, len(xs), size):
        chunk = xs[i:i + size]
        bchunk = base[i:i + size] if per_input else chunk
        n = len(chunk)
        if n < size:
            pad = np.zeros((size - n, *xs.shape[1:]), xs.dtype)
            chunk = np.concatenate([chunk, pad])
            bchunk = np.concatenate([bchunk, pad])
        out.append(np.asarray(fn(jnp.asarray(chunk), jnp.asarray(bchunk)))[:n])
    return np.concatenate(out)


def shuffled_baselines(xs, n_shuffles: int, seed: int = 0):
    """``n_shuffles`` baselines per input: each input of ``xs`` (N, L, ...) with its
    positions (axis 1) randomly permuted, so a baseline keeps the input's composition but
    not its order. Returns (n_shuffles, N, L, ...); the shuffle-averaged attribution is
    the mean over the first axis of the attributions against each (Σ = f(x) − mean f(b))."""
    xs = np.asarray(xs)
    if n_shuffles < 1:
        raise AnalysisError(f"shuffled_baselines: n_shuffles must be ≥ 1, got {n_shuffles}")
    rng = np.random.default_rng([seed, 23])
    out = np.empty((n_shuffles,) + xs.shape, xs.dtype)
    for k in range(n_shuffles):
        perm = np.argsort(rng.random(xs.shape[:2]), axis=1)
        out[k] = np.take_along_axis(xs, perm.reshape(perm.shape + (1,) * (xs.ndim - 2)), 1)
    return out


def in_silico_mutagenesis(f: Callable, onehot):
    """Effect of every single substitution on scalar ``f`` for a one-hot sequence
    ``onehot`` of shape (L, A): returns (L, A) with ``f(mutant) − f(onehot)`` where the
    mutant has letter ``a`` at position ``i`` (0 at the letters already present)."""
    x = jnp.asarray(onehot)
    if x.ndim != 2:
        raise AnalysisError(f"in_silico_mutagenesis: expected a one-hot (length, alphabet) "
                            f"array, got shape {x.shape}")
    length, alpha = x.shape
    eye = jnp.eye(alpha, dtype=x.dtype)

    def mutant(i, a):
        return x.at[i].set(eye[a])

    ii, aa = np.meshgrid(np.arange(length), np.arange(alpha), indexing="ij")
    mutants = jax.vmap(mutant)(jnp.asarray(ii.ravel()), jnp.asarray(aa.ravel()))
    values = jax.vmap(f)(mutants).reshape(length, alpha) - f(x)
    return jnp.where(x > 0.5, 0.0, values)  # exact zeros where nothing changed
