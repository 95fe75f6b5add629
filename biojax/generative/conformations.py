"""Generators of molecular conformations on internal coordinates, and their reweighting to
the Boltzmann distribution of a biojax potential.

Pipeline (``run``, the ``kind = "conformations"`` of ``biojax generate``):

1. frames (n, N, 3) Å of one molecule → bonded graph (covalent radii, or given) →
   :class:`~biojax.generative.internal.ZMatrix` → internal coordinates z (3N − 6:
   bonds, angles, torsions);
2. a fixed bijection :class:`Transform` z → y ∈ R^D: bonds and angles standardised;
   each torsion is cut at its lowest-density angle (from the data's histogram), so the
   cut lies where hardly any sample is, mapped onto (0, 1) and through a logit onto R,
   then standardised. Its log-Jacobian is exact, so a density on y is an exact density
   on the torus of torsions (× bonds, angles);
3. generators on y, trained with optax through ``biojax.generative.trainer.fit``
   (checkpoints, resume equal to an uninterrupted run, progress, metrics log):

   - ``flow``: RealNVP (Dinh et al. 2017) of affine coupling layers on random halves
     of the coordinates; its log-density is exact (change of variables);
   - ``vae``: a Gaussian VAE (Kingma & Welling 2014); its log-density is *estimated*
     by importance sampling with K posterior samples (the IWAE bound of Burda et al.
     2016): a lower bound on log q that tightens as K grows, so its importance weights
     are approximate;
   - any user generator by import path (see :class:`Generator`);

4. sampling, decoding y → z → Cartesian (NeRF), and importance weights to the target
   p(x) ∝ exp(−U(x)/kT): over internal coordinates the target density is
   exp(−βU(x(z))) J(z) (``internal.log_jacobian``), so
   log w = −βU(x(z)) + log J(z) − log q(z); effective sample size
   (Σw)²/Σw² (Kish).

Metrics: φ/ψ histogram JS divergence to the reference frames (and, for scale, between
two halves of the reference), basin populations raw and reweighted, the fraction of
structures with every bond within ``bond_tolerance`` of its mean reference length.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from biojax.analysis.config import RegionConfig
from biojax.core.atomic import atomic_write_text
from biojax.core.config import load, to_dict
from biojax.core.errors import ConfigError, DataError
from biojax.core.units import KB
from biojax.generative import internal

__all__ = ["Transform", "fit_transform", "RealNVP", "VAE", "Generator", "flow_generator",
           "vae_generator", "importance_weights", "effective_sample_size", "run",
           "ConformationsConfig"]

_LOGIT_EPS = 1e-5


# ---------------------------------------------------------------- the bijection z <-> y
@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Transform:
    """The fixed bijection internal coordinates z → unbounded features y (module doc, 2).

    ``n_bonds``, ``n_angles`` count the leading bond and angle entries of z; ``loc``,
    ``scale`` (D,) standardise [bonds (Å), angles (rad), logit(torsion)]; ``cut`` (n_tors,)
    rad: where each torsion's circle is cut."""

    n_bonds: int
    n_angles: int
    loc: jax.Array
    scale: jax.Array
    cut: jax.Array

    def tree_flatten(self):
        return (self.loc, self.scale, self.cut), (self.n_bonds, self.n_angles)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], *children)

    def _unit(self, z):
        """Torsions as u ∈ (0, 1): the cut at 0 and 1."""
        t = z[..., self.n_bonds + self.n_angles:]
        return jnp.clip(jnp.mod(t - self.cut, 2 * jnp.pi) / (2 * jnp.pi),
                        _LOGIT_EPS, 1 - _LOGIT_EPS)

    def forward(self, z):
        """(y, log|det ∂y/∂z|) for z (..., D)."""
        z = jnp.asarray(z)
        ba = z[..., :self.n_bonds + self.n_angles]
        u = self._unit(z)
        raw = jnp.concatenate([ba, jnp.log(u) - jnp.log1p(-u)], -1)
        y = (raw - self.loc) / self.scale
        logdet = (-jnp.sum(jnp.log(self.scale))
                  - jnp.sum(jnp.log(2 * jnp.pi) + jnp.log(u) + jnp.log1p(-u), -1))
        return y, logdet

    def inverse(self, y):
        """z (..., D) for y (torsions wrapped into (−π, π])."""
        raw = jnp.asarray(y) * self.scale + self.loc
        nba = self.n_bonds + self.n_angles
        u = jax.nn.sigmoid(raw[..., nba:])
        t = internal.wrap(self.cut + 2 * jnp.pi * u)
        return jnp.concatenate([raw[..., :nba], t], -1)

    def to_dict(self) -> dict:
        return {"n_bonds": self.n_bonds, "n_angles": self.n_angles,
                "loc": np.asarray(self.loc).tolist(), "scale": np.asarray(self.scale).tolist(),
                "cut": np.asarray(self.cut).tolist()}


def fit_transform(zm: internal.ZMatrix, z, bins: int = 72) -> Transform:
    """The :class:`Transform` for internal coordinates z (n, 3N − 6): each torsion cut at
    the centre of its least populated of ``bins`` bins (counts smoothed over 3 bins), then
    every feature standardised to mean 0, variance 1 over z."""
    z = np.asarray(z, np.float64)
    nb, na = zm.n_atoms - 1, zm.n_atoms - 2
    tors = z[:, nb + na:]
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    cuts = []
    for c in range(tors.shape[1]):
        h, _ = np.histogram(tors[:, c], edges)
        smooth = h + np.roll(h, 1) + np.roll(h, -1)
        cuts.append(0.5 * (edges[np.argmin(smooth)] + edges[np.argmin(smooth) + 1]))
    t = Transform(nb, na, jnp.zeros(z.shape[1]), jnp.ones(z.shape[1]),
                  jnp.asarray(cuts, jnp.float32))
    raw = np.asarray(t.forward(jnp.asarray(z, jnp.float32))[0], np.float64)
    loc, scale = raw.mean(0), np.maximum(raw.std(0), 1e-6)
    return Transform(nb, na, jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32),
                     t.cut)


# ---------------------------------------------------------------- generators
def _mlp(features: int, n_hidden: int, out: int, name: str, zero_last: bool):
    layers = []
    for i in range(n_hidden):
        layers += [nn.Dense(features, name=f"{name}_{i}"), nn.silu]
    layers.append(nn.Dense(out, name=f"{name}_out",
                           kernel_init=nn.initializers.zeros if zero_last
                           else nn.initializers.lecun_normal()))
    return nn.Sequential(layers)


class RealNVP(nn.Module):
    """RealNVP on R^dim: ``layers`` affine couplings, each transforming a random half of
    the coordinates (fixed by ``seed``) as x_B → x_B·exp(s(x_A)) + t(x_A), the log-scale
    bounded by ``scale_cap``·tanh; standard-normal base. ``log_prob`` is exact."""

    dim: int
    layers: int = 8
    hidden: int = 128
    depth: int = 2
    scale_cap: float = 3.0
    seed: int = 0

    def _halves(self):
        rng = np.random.default_rng(self.seed)
        out = []
        for _ in range(self.layers):
            perm = rng.permutation(self.dim)
            out.append((np.sort(perm[:self.dim // 2]), np.sort(perm[self.dim // 2:])))
        return out

    def setup(self):
        self.nets = [_mlp(self.hidden, self.depth, 2 * (self.dim - self.dim // 2), f"c{i}", True)
                     for i in range(self.layers)]

    def _st(self, i, xa):
        s, t = jnp.split(self.nets[i](xa), 2, -1)
        return self.scale_cap * jnp.tanh(s / self.scale_cap), t

    def to_base(self, y):
        """(u, log|det ∂u/∂y|): data → base (inverse of :meth:`sample_from`)."""
        x, logdet = y, jnp.zeros(y.shape[:-1])
        for i, (a, b) in reversed(list(enumerate(self._halves()))):
            s, t = self._st(i, x[..., a])
            x = x.at[..., b].set((x[..., b] - t) * jnp.exp(-s))
            logdet = logdet - jnp.sum(s, -1)
        return x, logdet

    def sample_from(self, u):
        """Data-space points for base points u."""
        x = u
        for i, (a, b) in enumerate(self._halves()):
            s, t = self._st(i, x[..., a])
            x = x.at[..., b].set(x[..., b] * jnp.exp(s) + t)
        return x

    def log_prob(self, y):
        """Exact log-density of y (..., dim) (nats)."""
        u, logdet = self.to_base(y)
        return -0.5 * jnp.sum(u * u, -1) - 0.5 * self.dim * jnp.log(2 * jnp.pi) + logdet

    def __call__(self, y):
        return self.log_prob(y)


def _normal_logpdf(x, mu, log_sigma):
    return jnp.sum(-0.5 * ((x - mu) * jnp.exp(-log_sigma)) ** 2 - log_sigma
                   - 0.5 * jnp.log(2 * jnp.pi), -1)


class VAE(nn.Module):
    """Gaussian VAE on R^dim: encoder y → N(μ, σ²) over ``latent`` dimensions, decoder
    h → N(μ(h), σ(h)²) with a per-point learned σ, bounded below by ``min_log_sigma``."""

    dim: int
    latent: int = 8
    hidden: int = 256
    depth: int = 2
    min_log_sigma: float = -6.0

    def setup(self):
        self.enc = _mlp(self.hidden, self.depth, 2 * self.latent, "enc", False)
        self.dec = _mlp(self.hidden, self.depth, 2 * self.dim, "dec", False)

    def encode(self, y):
        mu, log_sigma = jnp.split(self.enc(y), 2, -1)
        return mu, jnp.clip(log_sigma, -8.0, 4.0)

    def decode(self, h):
        mu, log_sigma = jnp.split(self.dec(h), 2, -1)
        return mu, self.min_log_sigma + jax.nn.softplus(log_sigma - self.min_log_sigma)

    def elbo(self, y, key):
        """Per-point evidence lower bound (nats) with one reparametrised sample:
        E_r[log p(y|h)] − KL(r(h|y) ‖ N(0, I))."""
        mu, ls = self.encode(y)
        h = mu + jnp.exp(ls) * jax.random.normal(key, mu.shape)
        dmu, dls = self.decode(h)
        rec = _normal_logpdf(y, dmu, dls)
        kl = 0.5 * jnp.sum(jnp.exp(2 * ls) + mu ** 2 - 1.0 - 2 * ls, -1)
        return rec - kl, rec, kl

    def log_prob_iw(self, y, key, k: int = 64):
        """log q(y) estimated with ``k`` importance samples from the encoder (the IWAE
        bound: ≤ log q(y) in expectation, exact as k → ∞)."""
        mu, ls = self.encode(y)
        eps = jax.random.normal(key, (k,) + mu.shape)
        h = mu + jnp.exp(ls) * eps
        dmu, dls = self.decode(h)
        log_p = (_normal_logpdf(y, dmu, dls) + _normal_logpdf(h, 0.0, jnp.zeros_like(h))
                 - _normal_logpdf(h, mu, ls))
        return jax.nn.logsumexp(log_p, 0) - jnp.log(k)

    def sample(self, key, n: int):
        k1, k2 = jax.random.split(key)
        dmu, dls = self.decode(jax.random.normal(k1, (n, self.latent)))
        return dmu + jnp.exp(dls) * jax.random.normal(k2, dmu.shape)

    def __call__(self, y, key):
        return self.elbo(y, key)


@dataclasses.dataclass(frozen=True)
class Generator:
    """The protocol every conformation generator follows (built-ins and user ones):

    - ``init(key) -> params``;
    - ``loss(params, y, key) -> (scalar, dict of scalar metrics)`` on a batch y (B, D);
    - ``sample(params, key, n) -> y`` (n, D);
    - ``log_prob(params, y, key) -> (n,)`` log-density of y (nats);
    - ``density``: "exact" or how it is estimated (reported beside the weights).

    A user generator is a factory ``f(dim, **options) -> Generator`` named by import path
    in ``[[generate.generators]] name = "package.module:factory"``."""

    init: Callable
    loss: Callable
    sample: Callable
    log_prob: Callable
    density: str = "exact"


def flow_generator(dim: int, **options) -> Generator:
    """A :class:`RealNVP` generator (options: layers, hidden, depth, scale_cap, seed);
    exact density; loss: mean negative log-likelihood (nats per structure)."""
    model = RealNVP(dim=dim, **options)

    def loss(params, y, key):
        nll = -jnp.mean(model.apply(params, y))
        return nll, {"nll": nll}

    def sample(params, key, n):
        u = jax.random.normal(key, (n, dim))
        return model.apply(params, u, method=RealNVP.sample_from)

    return Generator(init=lambda key: model.init(key, jnp.zeros((1, dim))), loss=loss,
                     sample=sample, log_prob=lambda p, y, key: model.apply(p, y),
                     density="exact (change of variables)")


def vae_generator(dim: int, iw_samples: int = 64, **options) -> Generator:
    """A :class:`VAE` generator (options: latent, hidden, depth, min_log_sigma;
    ``iw_samples``: K of the density estimate); loss: mean negative ELBO (nats)."""
    model = VAE(dim=dim, **options)

    def loss(params, y, key):
        elbo, rec, kl = model.apply(params, y, key)
        return -jnp.mean(elbo), {"neg_elbo": -jnp.mean(elbo), "kl": jnp.mean(kl),
                                 "reconstruction": jnp.mean(rec)}

    def log_prob(params, y, key):
        return model.apply(params, y, key, iw_samples, method=VAE.log_prob_iw)

    return Generator(
        init=lambda key: model.init(key, jnp.zeros((1, dim)), key),
        loss=loss, sample=lambda p, key, n: model.apply(p, key, n, method=VAE.sample),
        log_prob=log_prob,
        density=f"estimated: importance-weighted ELBO with K = {iw_samples} (a lower bound "
                "on log q; the weights are approximate)")


GENERATORS = {"flow": flow_generator, "vae": vae_generator}


def make_generator(name: str, dim: int, options: dict) -> Generator:
    """The generator ``name`` ("flow", "vae" or "package.module:factory") on R^dim."""
    from biojax.core.registry import import_object

    if name in GENERATORS:
        factory = GENERATORS[name]
    elif ":" in name:
        factory = import_object(name, "generator")
    else:
        raise ConfigError(f"unknown generator {name!r}; built-in: {', '.join(GENERATORS)}, "
                          "or an import path 'package.module:factory'")
    try:
        gen = factory(dim, **options)
    except TypeError as exc:
        raise ConfigError(f"generator {name!r}: {exc} (check its options table)") from None
    if not isinstance(gen, Generator):
        raise ConfigError(f"generator {name!r} must return a "
                          "biojax.generative.conformations.Generator")
    return gen


def train_generator(gen: Generator, y_train, *, steps: int, batch_size: int,
                    learning_rate: float, workdir: str, name: str, seed: int = 0,
                    config: dict | None = None, resume: bool = False, log=print,
                    progress: bool = True, checkpoint_every: int = 200, log_every: int = 50,
                    on_step=None, energy: dict | None = None, weight_decay: float = 0.0,
                    frame_weights=None):
    """Fit ``gen`` to y_train (n, D) with Adam (clipped at global norm 10, cosine decay),
    batches drawn by step from the seed (so resume equals an uninterrupted run); returns
    the trained parameters. Files: ``workdir/<name>.checkpoint.msgpack`` and
    ``<name>.metrics.jsonl`` (``biojax.generative.trainer``).

    ``energy``: train by energy as well (Noé et al., Science 2019): a dict with
    ``fn`` (positions (N, 3) Å → eV), ``kt`` (eV), ``zmatrix``, ``transform``, ``weight``
    and ``batch_size``; the loss gains ``weight`` × the reverse KL divergence
    E_q[log q(z) + U(x(z))/kT − log J(z)] (up to a constant) over a batch sampled from
    the generator, with U/kT above 1000 damped logarithmically. Needs an exact
    ``log_prob`` and a sampler differentiable in the parameters (the flow).
    ``frame_weights`` (n,): draw training frames with these relative probabilities
    (default: uniformly)."""
    from biojax.generative.trainer import fit

    y_train = jnp.asarray(y_train, jnp.float32)
    n = y_train.shape[0]
    batch_size = min(int(batch_size), n)
    sched = optax.cosine_decay_schedule(learning_rate, max(int(steps), 1), alpha=0.05)
    tx = optax.chain(optax.clip_by_global_norm(10.0),
                     optax.adamw(sched, weight_decay=weight_decay))
    params = gen.init(jax.random.PRNGKey(seed))
    state = {"params": params, "opt": tx.init(params)}

    # one compiled step per generator and settings (the data is an argument, so a resumed
    # or repeated run in the same process reuses it)
    key = (id(gen), n, batch_size, float(learning_rate), int(steps), float(weight_decay))
    probs = None
    if frame_weights is not None:
        fw = np.asarray(frame_weights, np.float64)
        if fw.shape != (n,) or not np.all(fw >= 0) or fw.sum() <= 0:
            raise ConfigError(f"frame_weights: expected {n} non-negative weights, not all "
                              f"zero, got shape {fw.shape}")
        probs = jnp.asarray(fw / fw.sum(), jnp.float32)
    cached = _STEPS.get(key) if energy is None and probs is None else None
    if cached is not None and cached[0] is gen:
        step = cached[1]
    else:
        loss = gen.loss
        if energy is not None and energy.get("weight", 0.0) > 0:
            loss = _with_energy(gen, energy)

        @jax.jit
        def step(state, key, data):
            kb, kl = jax.random.split(key)
            if probs is None:
                batch = data[jax.random.randint(kb, (batch_size,), 0, n)]
            else:
                batch = data[jax.random.choice(kb, n, (batch_size,), p=probs)]
            (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
                state["params"], batch, kl)
            updates, opt = tx.update(grads, state["opt"], state["params"])
            return ({"params": optax.apply_updates(state["params"], updates), "opt": opt},
                    metrics)

        if energy is None and probs is None:
            _STEPS[key] = (gen, step)

    def step_fn(state, key):
        return step(state, key, y_train)

    state = fit(step_fn, state, int(steps), workdir, name, seed=seed, config=config,
                resume=resume, checkpoint_every=checkpoint_every, log_every=log_every,
                log=log, progress=progress, on_step=on_step)
    return state["params"]


_STEPS: dict = {}


def _with_energy(gen: Generator, energy: dict) -> Callable:
    """``gen.loss`` plus weight × the reverse KL divergence to exp(−U/kT) (see
    :func:`train_generator`)."""
    e_fn = jax.vmap(energy["fn"])
    zm, tf, kt, w = energy["zmatrix"], energy["transform"], energy["kt"], energy["weight"]
    nb = int(energy.get("batch_size", 32))

    def loss(params, batch, key):
        value, metrics = gen.loss(params, batch, key)
        y = gen.sample(params, jax.random.fold_in(key, 1), nb)
        z = tf.inverse(y)
        log_q = gen.log_prob(params, y, key) + tf.forward(z)[1]
        bu = e_fn(internal.to_cartesian(zm, z)) / kt
        bu = jnp.where(bu < 1000.0, bu, 1000.0 + jnp.log1p(jnp.maximum(bu - 1000.0, 0.0)))
        kl_rev = jnp.mean(log_q + bu - internal.log_jacobian(zm, z))
        return value + w * kl_rev, {**metrics, "reverse_kl": kl_rev}

    return loss


# ---------------------------------------------------------------- reweighting
def importance_weights(log_target, log_q):
    """Self-normalised importance weights (sum 1) from log p̃ (unnormalised target) and log q
    of the same samples; samples with a non-finite value get weight 0."""
    lw = np.asarray(log_target, np.float64) - np.asarray(log_q, np.float64)
    lw = np.where(np.isfinite(lw), lw, -np.inf)
    if not np.isfinite(lw).any():
        return np.zeros_like(lw)
    w = np.exp(lw - lw[np.isfinite(lw)].max())
    return w / w.sum()


def effective_sample_size(w) -> float:
    """Kish effective sample size (Σw)²/Σw² of weights w."""
    w = np.asarray(w, np.float64)
    return float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300))


def _inside(pp, region) -> np.ndarray:
    inside = np.zeros(len(pp), bool)
    for (plo, phi_hi), (slo, shi) in region.boxes:
        inside |= ((pp[:, 0] >= plo) & (pp[:, 0] < phi_hi)
                   & (pp[:, 1] >= slo) & (pp[:, 1] < shi))
    return inside


def region_populations(phi_psi_deg, regions, weights=None, errors: bool = False) -> dict:
    """Weighted fraction of (φ, ψ) points (degrees) in each named region (union of boxes
    [[φ_lo, φ_hi], [ψ_lo, ψ_hi]]). ``errors``: instead ``{name: standard error}``, the
    delta-method error of a self-normalised importance-sampling estimate,
    sqrt(Σ w_i² (1_i − p)²) with normalised weights (√(p(1−p)/n) for equal weights)."""
    pp = np.asarray(phi_psi_deg)
    w = np.ones(len(pp)) / len(pp) if weights is None else np.asarray(weights) / np.sum(weights)
    out = {}
    for r in regions:
        inside = _inside(pp, r)
        p = float(np.sum(w[inside]))
        out[r.name] = (float(np.sqrt(np.sum(w ** 2 * (inside - p) ** 2))) if errors else p)
    return out


def phi_psi_histogram(phi_psi_rad, bins: int, weights=None) -> np.ndarray:
    """Normalised 2D histogram of (φ, ψ) (radians) on a bins × bins grid over [−π, π)²."""
    e = np.linspace(-np.pi, np.pi, bins + 1)
    pp = np.asarray(phi_psi_rad, np.float64)
    ok = np.all(np.isfinite(pp), 1)
    w = None if weights is None else np.asarray(weights, np.float64)[ok] / max(
        np.sum(np.asarray(weights, np.float64)[ok]), 1e-300)
    h, _, _ = np.histogram2d(pp[ok, 0], pp[ok, 1], [e, e], weights=w)
    return h / h.sum() if h.sum() > 0 else h


# ---------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """One generator to train (``[[generate.generators]]``)."""

    name: str = "flow"            # "flow", "vae" or "package.module:factory"
    steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    energy_weight: float = 0.0    # > 0: also train by energy (reverse KL; the flow only)
    energy_batch_size: int = 32
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError(f"generator {self.name!r}: steps and batch_size must be ≥ 1 and "
                             "learning_rate > 0")


@dataclasses.dataclass(frozen=True)
class GenerateTable:
    """``[generate]`` for ``kind = "conformations"`` (see examples/generative_ala2)."""

    kind: str = "conformations"
    trajectory: tuple[str, ...] = ()    # files or glob patterns (relative to the config)
    stride: int = 1
    max_frames: int | None = None
    numbers: tuple[int, ...] = ()       # atomic numbers when the files carry none (.npy)
    bonds: tuple[tuple[int, int], ...] = ()   # default: from covalent radii
    bond_scale: float = 1.2
    root: int | None = None
    potential: str | None = None        # saved biojax Potential to reweight to
    temperature_K: float = 300.0
    n_samples: int = 4000
    valid_fraction: float = 0.1
    seed: int = 0
    phi: tuple[int, ...] = ()           # 4 atom indices (0-based) of φ, and of ψ
    psi: tuple[int, ...] = ()
    bins: int = 36
    bond_tolerance: float = 0.1         # sane: every bond within 10 % of its mean length
    regions: tuple[RegionConfig, ...] = ()
    generators: tuple[GeneratorConfig, ...] = (GeneratorConfig("flow"),)
    energy_batch: int = 256
    # {region name: factor}: training frames in that (φ, ψ) region are drawn this many
    # times as often (a proposal that covers a rare basin; reweighting removes the bias
    # for a generator with a density)
    oversample: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.trajectory:
            raise ValueError("'trajectory' is required: files or glob patterns of frames")
        for key in ("phi", "psi"):
            v = getattr(self, key)
            if v and len(v) != 4:
                raise ValueError(f"{key!r} must be 4 atom indices, got {list(v)}")
        if not 0 < self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.stride < 1 or self.n_samples < 1 or self.bins < 2:
            raise ValueError("stride, n_samples must be ≥ 1 and bins ≥ 2")
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {self.temperature_K}")


@dataclasses.dataclass(frozen=True)
class ConformationsConfig:
    """A ``biojax generate`` config of kind "conformations": one ``[generate]`` table."""

    generate: GenerateTable


def load_config(path, overrides=()) -> ConformationsConfig:
    """The config in ``path`` (strict keys; paths relative to the file)."""
    cfg = load(ConformationsConfig, path, overrides)
    g = cfg.generate
    base = os.path.dirname(os.path.abspath(os.fspath(path)))
    traj = tuple(t if os.path.isabs(t) else os.path.join(base, t) for t in g.trajectory)
    pot = g.potential
    if pot is not None and not os.path.isabs(pot):
        pot = os.path.join(base, pot)
    return ConformationsConfig(dataclasses.replace(g, trajectory=traj, potential=pot))


# ---------------------------------------------------------------- data
def read_frames(cfg: GenerateTable):
    """(positions (n, N, 3) Å float32, atomic numbers (N,)) of every trajectory file."""
    from biojax.data.io import read_frames as ase_frames

    files = []
    for pattern in cfg.trajectory:
        hits = sorted(glob.glob(pattern))
        if not hits:
            raise DataError(f"[generate] trajectory {pattern!r}: no such file")
        files += hits
    pos, numbers = [], None
    for f in files:
        if f.endswith(".npy"):
            x = np.load(f)
            nums = np.asarray(cfg.numbers, int) if cfg.numbers else None
        else:
            frames = ase_frames(f, ":")
            x = np.stack([a.positions for a in frames])
            nums = frames[0].numbers
        if nums is None:
            raise DataError(f"{f}: no atomic numbers in the file; give [generate] numbers")
        if numbers is not None and (len(nums) != len(numbers) or np.any(nums != numbers)):
            raise DataError(f"{f}: its atoms differ from those of {files[0]}; every file "
                            "must hold the same molecule")
        numbers = np.asarray(nums, int)
        pos.append(internal.check_positions(x, f)[::cfg.stride])
    x = np.concatenate(pos).astype(np.float32)
    if cfg.max_frames is not None and len(x) > cfg.max_frames:
        x = x[np.linspace(0, len(x) - 1, cfg.max_frames).astype(int)]
    return x, numbers


# ---------------------------------------------------------------- evaluation
def _phi_psi(cfg, x):
    from biojax.core.geometry import dihedrals

    quads = jnp.asarray(np.array([cfg.phi, cfg.psi], np.int32))
    return np.asarray(dihedrals(jnp.asarray(x), quads), np.float64)


def evaluate_samples(cfg: GenerateTable, zm, x_gen, log_q, x_ref, energy_fn=None,
                     ref_bond_lengths=None, ref_split=None) -> dict:
    """Metrics of generated structures x_gen (n, N, 3) Å with model log-densities log_q
    (over internal coordinates) against reference frames x_ref (see module doc)."""
    out: dict[str, Any] = {"n_samples": int(len(x_gen))}
    sane = internal.sanity(zm, x_gen, ref_bond_lengths, cfg.bond_tolerance)
    out["sane_bond_fraction"] = float(np.mean(sane))
    weights = None
    if energy_fn is not None:
        kt = KB * cfg.temperature_K
        energies = np.concatenate([np.asarray(energy_fn(jnp.asarray(x_gen[i:i + cfg.energy_batch])))
                                   for i in range(0, len(x_gen), cfg.energy_batch)])
        z = internal.to_internal(zm, jnp.asarray(x_gen))
        log_target = -energies / kt + np.asarray(internal.log_jacobian(zm, z))
        weights = importance_weights(log_target, log_q)
        out.update({"ess": effective_sample_size(weights),
                    "ess_fraction": effective_sample_size(weights) / len(x_gen),
                    "energy_mean_eV": float(np.nanmean(energies)),
                    "non_finite_energies": int(np.sum(~np.isfinite(energies))),
                    "max_weight": float(weights.max())})
    if cfg.phi and cfg.psi:
        pp = _phi_psi(cfg, x_gen)
        ref = _phi_psi(cfg, x_ref)
        out["js_phi_psi"] = float(_js(phi_psi_histogram(pp, cfg.bins),
                                      phi_psi_histogram(ref, cfg.bins)))
        if weights is not None:
            out["js_phi_psi_reweighted"] = float(_js(phi_psi_histogram(pp, cfg.bins, weights),
                                                     phi_psi_histogram(ref, cfg.bins)))
        if cfg.regions:
            deg = np.degrees(pp)
            out["populations"] = region_populations(deg, cfg.regions)
            if weights is not None:
                out["populations_reweighted"] = region_populations(deg, cfg.regions, weights)
                out["populations_reweighted_error"] = region_populations(
                    deg, cfg.regions, weights, errors=True)
    return out


def _js(p, q) -> float:
    """JS divergence (nats) of two histograms; NaN if either is empty."""
    from biojax.analysis.fes import js_divergence

    if not (np.sum(p) > 0 and np.sum(q) > 0):
        return float("nan")
    return js_divergence(p, q)


# ---------------------------------------------------------------- the run
def run(config_path: str, workdir: str, *, overrides=(), resume: bool = False,
        log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Train, sample, reweight and evaluate the conformation generators of the config at
    ``config_path`` in ``workdir`` (files: ``<generator>.checkpoint.msgpack``,
    ``<generator>.metrics.jsonl``, ``samples/<generator>.extxyz`` with each
    structure's log_q, ``zmatrix.json``, ``metrics.json``, ``phi_psi.png``). Returns the
    metrics (also in ``metrics.json``)."""
    cfg = load_config(config_path, overrides).generate
    os.makedirs(workdir, exist_ok=True)
    x, numbers = read_frames(cfg)
    n_atoms = x.shape[1]
    for key in ("phi", "psi"):
        idx = getattr(cfg, key)
        if idx and (min(idx) < 0 or max(idx) >= n_atoms):
            raise ConfigError(f"{config_path} [generate] {key}: atom indices must be in "
                              f"[0, {n_atoms}), got {list(idx)}")
    bonds = (np.asarray(cfg.bonds, np.int32) if cfg.bonds
             else internal.bonds_from_positions(x[0], numbers, cfg.bond_scale))
    zm = internal.build_zmatrix(bonds, n_atoms, cfg.root)
    z = np.asarray(internal.to_internal(zm, jnp.asarray(x)))
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(x))
    n_valid = max(1, int(round(cfg.valid_fraction * len(x))))
    valid, train = perm[:n_valid], perm[n_valid:]
    tf = fit_transform(zm, z[train])
    y = np.asarray(tf.forward(jnp.asarray(z))[0])
    frame_weights = None
    if cfg.oversample:
        names = {r.name: r for r in cfg.regions}
        unknown = sorted(set(cfg.oversample) - set(names))
        if unknown or not (cfg.phi and cfg.psi):
            raise ConfigError(f"{config_path} [generate] oversample: regions "
                              f"{unknown or list(cfg.oversample)} need [[generate.regions]] "
                              f"of those names and phi/psi; known: {sorted(names)}")
        deg = np.degrees(_phi_psi(cfg, x[train]))
        frame_weights = np.ones(len(train))
        for name, factor in cfg.oversample.items():
            if not float(factor) > 0:
                raise ConfigError(f"{config_path} [generate] oversample {name!r}: factor "
                                  f"must be > 0, got {factor!r}")
            frame_weights[_inside(deg, names[name])] *= float(factor)
    dim = y.shape[1]
    log(f"{len(x)} frames of {n_atoms} atoms, {len(bonds)} bonds → {dim} internal "
        f"coordinates ({len(train)} train, {n_valid} validation)")
    atomic_write_text(os.path.join(workdir, "zmatrix.json"),
                      json.dumps({"zmatrix": zm.to_dict(), "transform": tf.to_dict(),
                                  "numbers": numbers.tolist()}))
    energy_fn = energy_single = None
    kt = KB * cfg.temperature_K   # eV
    if cfg.potential:
        from biojax.generative.explain import energy_function
        from biojax.nn.io import load_potential

        energy_single = energy_function(load_potential(cfg.potential), numbers)
        energy_fn = jax.jit(jax.vmap(energy_single))
    for gc in cfg.generators:
        if gc.energy_weight and (energy_single is None or gc.name != "flow"):
            raise ConfigError(f"{config_path} [[generate.generators]] {gc.name!r}: "
                              "energy_weight needs [generate] potential and the 'flow' "
                              "generator (an exact density and a differentiable sampler)")
    ref_len = np.asarray(jnp.mean(jnp.asarray(
        np.asarray(internal.geometry.distances(jnp.asarray(x), jnp.asarray(zm.bonds)))), 0))
    metrics: dict[str, Any] = {"n_frames": int(len(x)), "n_atoms": int(n_atoms),
                               "dim": int(dim), "temperature_K": cfg.temperature_K,
                               "bond_tolerance": cfg.bond_tolerance, "generators": {}}
    # the reference itself through the same evaluation (its weights against a flat q
    # are meaningless, so no energies): the noise floor of the JS divergence
    if cfg.phi and cfg.psi:
        half = len(x) // 2
        a, b = _phi_psi(cfg, x[:half]), _phi_psi(cfg, x[half:])
        metrics["reference"] = {
            "js_phi_psi_halves": float(_js(phi_psi_histogram(a, cfg.bins),
                                           phi_psi_histogram(b, cfg.bins))),
            "sane_bond_fraction": float(np.mean(internal.sanity(zm, x, ref_len,
                                                                cfg.bond_tolerance)))}
        if cfg.regions:
            metrics["reference"]["populations"] = region_populations(
                np.degrees(_phi_psi(cfg, x)), cfg.regions)
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    plot_data = {}
    for gc in cfg.generators:
        label = gc.name if gc.name in GENERATORS else gc.name.rsplit(":", 1)[-1]
        gen = make_generator(gc.name, dim, dict(gc.options))
        params = train_generator(
            gen, y[train], steps=gc.steps, batch_size=gc.batch_size,
            learning_rate=gc.learning_rate, workdir=workdir, name=label, seed=cfg.seed,
            config={"generate": to_dict(cfg), "generator": to_dict(gc)}, resume=resume,
            log=log, progress=progress, weight_decay=gc.weight_decay,
            frame_weights=frame_weights, energy=None if not gc.energy_weight else {
                "fn": energy_single, "kt": kt, "zmatrix": zm, "transform": tf,
                "weight": gc.energy_weight, "batch_size": gc.energy_batch_size})
        key = jax.random.PRNGKey(cfg.seed + 1)
        k_valid, k_sample, k_lq = jax.random.split(key, 3)
        yv = jnp.asarray(y[valid])
        valid_nll = -float(jnp.mean(gen.log_prob(params, yv, k_valid)))
        y_gen = np.asarray(gen.sample(params, k_sample, cfg.n_samples))
        y_gen = y_gen[np.all(np.isfinite(y_gen), 1)]
        z_gen = tf.inverse(jnp.asarray(y_gen))
        y_back, logdet = tf.forward(z_gen)   # log q(z) = log q(y(z)) + log|∂y/∂z|
        log_q = np.asarray(gen.log_prob(params, y_back, k_lq) + logdet)
        x_gen = np.asarray(internal.to_cartesian(zm, z_gen))
        m = evaluate_samples(cfg, zm, x_gen, log_q, x, energy_fn, ref_len)
        m.update({"density": gen.density, "valid_nll_y": valid_nll, "steps": gc.steps})
        metrics["generators"][label] = m
        _write_samples(os.path.join(workdir, "samples", f"{label}.extxyz"), x_gen, numbers,
                       log_q, m)
        if cfg.phi and cfg.psi:
            plot_data[label] = _phi_psi(cfg, x_gen)
        log(f"{label}: {_summary(m)}")
    atomic_write_text(os.path.join(workdir, "metrics.json"), json.dumps(metrics, indent=2))
    if plot_data:
        try:
            _plot(os.path.join(workdir, "phi_psi.png"), _phi_psi(cfg, x), plot_data, cfg.bins)
        except Exception as exc:  # a plot must not lose the metrics already written
            log(f"phi_psi.png not written: {type(exc).__name__}: {exc}")
    return metrics


def _summary(m: dict) -> str:
    parts = [f"sane bonds {m['sane_bond_fraction']:.3f}"]
    if "js_phi_psi" in m:
        parts.append(f"JS(φ,ψ) {m['js_phi_psi']:.3f}")
    if "ess" in m:
        parts.append(f"ESS {m['ess']:.1f} of {m['n_samples']}")
    if "populations_reweighted" in m:
        parts.append("reweighted " + ", ".join(
            f"{k} {v:.2f}" for k, v in m["populations_reweighted"].items()))
    return "; ".join(parts)


def _write_samples(path, x_gen, numbers, log_q, m):
    import ase
    import ase.io

    from biojax.core.atomic import atomic_path

    frames = []
    for i, pos in enumerate(x_gen):
        a = ase.Atoms(numbers=numbers, positions=pos)
        a.info["log_q"] = float(log_q[i])
        frames.append(a)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")


def _plot(path, ref, data: dict, bins: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biojax.core.atomic import atomic_path

    panels = [("MD reference", ref)] + list(data.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2))
    for ax, (name, pp) in zip(np.atleast_1d(axes), panels):
        d = np.degrees(pp)
        ax.hist2d(d[:, 0], d[:, 1], bins=bins, range=[[-180, 180], [-180, 180]], cmap="viridis",
                  cmin=1)
        ax.set_title(name)
        ax.set_xlabel("φ (°)")
        ax.set_ylabel("ψ (°)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
