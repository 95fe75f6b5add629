"""Gradients of ensemble averages by reweighting: DiffTRe and relative entropy.

DiffTRe (Thaler & Zavadlav, Nat. Commun. 12, 6884, 2021). Frames x_i (i = 1..N) sampled
with parameters θ_ref stay valid for nearby θ through the weights

    w_i(θ) = exp(−β[U_θ(x_i) − U_θref(x_i)]) / Σ_j exp(−β[U_θ(x_j) − U_θref(x_j)]),

so ⟨O⟩_θ ≈ Σ_i w_i(θ) O_i(θ) is a differentiable function of θ: structural observables
(RDF, ADF) enter through the weights, parameter-dependent ones (pressure) also through
O_i(θ); a loss of these averages is differentiated by JAX, which gives the exact gradient
of the reweighted estimator. At θ = θ_ref it equals the covariance form
d⟨O⟩/dθ = ⟨∂O/∂θ⟩ − β Cov(O, ∂U/∂θ) (the tests check it against finite differences of
independent simulations).

The effective sample size here is the entropy form used by DiffTRe,
N_eff = exp(−Σ_i w_i ln w_i), which is N for equal weights and falls towards 1 as one
frame dominates (:func:`kish_sample_size` gives 1/Σ w² for comparison). The trainer
resamples when N_eff/N drops below a threshold.

Relative entropy (Shell 2008; Carmichael & Shell 2012): for a reference ensemble of
mapped fine-grained frames y_j, ∇_θ S_rel = β(⟨∂U/∂θ⟩_ref − ⟨∂U/∂θ⟩_θ), the model
average reweighted from θ_ref frames like DiffTRe's.

Everything takes a per-frame energy ``u(params, frame)`` (eV) and frames as a pytree
with a leading frame axis (positions alone, or positions with their neighbor lists), so
the same code serves MD frames and exactly drawn test samples. Frames are mapped in
batches (``lax.map``) with the per-frame energy rematerialised on the backward pass, so
memory stays that of a batch, not of the whole trajectory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, xlogy


# ====================================================================== weights
def log_weights(beta: float, u_theta, u_ref):
    """Normalised log-weights (F,) from energies (eV) at θ and at θ_ref."""
    a = -beta * (u_theta - u_ref)
    return a - logsumexp(a)


def weights(beta: float, u_theta, u_ref):
    """Normalised weights w_i ∝ exp(−β[U_θ(x_i) − U_θref(x_i)]) (F,)."""
    return jnp.exp(log_weights(beta, u_theta, u_ref))


def effective_sample_size(w):
    """N_eff = exp(−Σ w ln w) (the entropy form used by DiffTRe); w normalised."""
    return jnp.exp(-jnp.sum(xlogy(w, w)))


def kish_sample_size(w):
    """Kish's N_eff = 1 / Σ w² (w normalised), for comparison."""
    return 1.0 / jnp.sum(w * w)


def reweighted_mean(w, values):
    """Σ_i w_i values_i over the leading (frame) axis."""
    return jnp.tensordot(w, values, axes=(0, 0))


# ====================================================================== per-frame map
def map_frames(fn: Callable, params, frames, batch_size: int | None = None):
    """``fn(params, frame)`` over the leading axis of ``frames`` (a pytree), in batches
    (``lax.map``), with ``fn`` rematerialised on the backward pass (``jax.checkpoint``)."""
    f = jax.checkpoint(lambda fr: fn(params, fr))
    return jax.lax.map(f, frames, batch_size=batch_size)


def frame_energies(u: Callable, params, frames, batch_size: int | None = None):
    """U_θ of every frame (F,) eV for a per-frame energy ``u(params, frame)``."""
    return map_frames(u, params, frames, batch_size)


# ====================================================================== DiffTRe
@dataclasses.dataclass(frozen=True)
class Target:
    """One term of a DiffTRe loss: weight · mean over ``mask`` of (⟨O⟩ − target)².

    ``name`` keys the per-frame values: a structural observable precomputed per frame
    (``static[name]``, shape (F, ...)) or a parameter-dependent one
    (``dynamic[name](params, frame)``). ``mask`` (same shape as target, bool) selects
    the entries that count (e.g. r in 2–10 Å); None = all. The RMSE reported is over the
    same entries.
    """

    name: str
    target: Any
    weight: float = 1.0
    mask: Any = None


def difftre_loss(u: Callable, beta: float, targets: tuple[Target, ...],
                 dynamic: Mapping[str, Callable] | None = None,
                 batch_size: int | None = None) -> Callable:
    """loss(params, frames, u_ref, static) → (loss, aux) for DiffTRe (see module doc).

    ``frames``: pytree with leading frame axis; ``u_ref`` (F,) energies at θ_ref (eV);
    ``static``: {name: (F, ...)} structural observables per frame. ``aux`` holds the
    reweighted ``averages`` {name: array}, ``rmse`` {name: scalar}, ``n_eff`` (entropy
    form) and the ``weights``. Use with ``jax.value_and_grad(..., has_aux=True)``.
    """
    dynamic = dict(dynamic or {})

    def per_frame(params, frame):
        out = {"energy": u(params, frame)}
        for name, fn in dynamic.items():
            out[name] = fn(params, frame)
        return out

    def loss(params, frames, u_ref, static):
        values = map_frames(per_frame, params, frames, batch_size)
        w = weights(beta, values["energy"], u_ref)
        averages, rmse = {}, {}
        total = 0.0
        for t in targets:
            per = values[t.name] if t.name in dynamic else static[t.name]
            avg = reweighted_mean(w, per)
            sq = (avg - jnp.asarray(t.target, avg.dtype)) ** 2
            if t.mask is not None:
                m = jnp.asarray(t.mask, avg.dtype)
                mse = jnp.sum(sq * m) / jnp.maximum(jnp.sum(m), 1.0)
            else:
                mse = jnp.mean(sq)
            averages[t.name] = avg
            rmse[t.name] = jnp.sqrt(mse)
            total = total + t.weight * mse
        aux = {"averages": averages, "rmse": rmse, "n_eff": effective_sample_size(w),
               "weights": w}
        return total, aux

    return loss


def reweighted_average_fn(u: Callable, beta: float, batch_size: int | None = None
                          ) -> Callable:
    """avg(params, frames, u_ref, values) → Σ_i w_i(θ) values_i: the reweighted average
    of fixed per-frame values (F, ...) as a differentiable function of θ (for gradients
    of a single ensemble average, e.g. in tests and sensitivity studies)."""

    def avg(params, frames, u_ref, values):
        u_theta = frame_energies(u, params, frames, batch_size)
        return reweighted_mean(weights(beta, u_theta, u_ref), values)

    return avg


# ====================================================================== relative entropy
def relative_entropy_gradient(u: Callable, beta: float, batch_size: int | None = None
                              ) -> Callable:
    """grad(params, model_frames, u_ref, ref_frames, u_ref_on_ref=None) → (∇S_rel, aux).

    ∇_θ S_rel = β(⟨∂U/∂θ⟩_ref − ⟨∂U/∂θ⟩_θ), the model average reweighted from frames
    sampled at θ_ref (energies ``u_ref`` there). ``aux``: ``n_eff`` of the model frames
    and, when the θ_ref energies of the reference frames are given, ``delta_srel`` =
    S_rel(θ) − S_rel(θ_ref) = β⟨U_θ − U_θref⟩_ref + ln⟨exp(−β(U_θ − U_θref))⟩_θref
    (dimensionless; 0 at θ = θ_ref).
    """

    def surrogate(params, model_frames, u_ref, ref_frames, u_ref_on_ref):
        u_model = frame_energies(u, params, model_frames, batch_size)
        u_aa = frame_energies(u, params, ref_frames, batch_size)
        w = weights(beta, u_model, u_ref)
        s = beta * (jnp.mean(u_aa) - jnp.sum(jax.lax.stop_gradient(w) * u_model))
        aux = {"n_eff": effective_sample_size(w)}
        if u_ref_on_ref is not None:
            a = -beta * (u_model - u_ref)
            aux["delta_srel"] = (beta * jnp.mean(u_aa - u_ref_on_ref)
                                 + logsumexp(a) - jnp.log(a.shape[0]))
        return s, aux

    def grad(params, model_frames, u_ref, ref_frames, u_ref_on_ref=None):
        g, aux = jax.grad(surrogate, has_aux=True)(params, model_frames, u_ref, ref_frames,
                                                  u_ref_on_ref)
        return g, aux

    return grad


def as_numpy(tree):
    """A pytree of device arrays as NumPy (for logs and checkpoints)."""
    return jax.tree_util.tree_map(np.asarray, tree)
