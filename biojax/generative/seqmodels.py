"""Convolutional generators and classifiers for one-hot DNA (B, L, 4), conditional on an
integer class label.

- :class:`SeqVAE`: a conditional convolutional VAE; the decoder gives per-position logits,
  samples are drawn position by position from them. :func:`vae_loss` is the negative
  evidence lower bound (ELBO) in nats per sequence.
- :class:`Generator` / :class:`Critic`: a conditional Wasserstein GAN with gradient
  penalty (Gulrajani et al. 2017); the generator outputs a softmax over bases at each
  position, samples are its argmax.
- :class:`SeqClassifier`: a small CNN giving one logit per class (or one logit for a
  binary task), used as the promoter classifier and as the two-sample test.

``make_*_step`` return pure ``step_fn(state, key) -> (state, metrics)`` for
:func:`biojax.generative.trainer.fit`: the data live on the device and each step draws
its batch from ``key``. Class labels are integers in ``[0, n_classes)``;
:func:`check_labels` turns names into them and rejects unknown names.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from biojax.core.errors import ConfigError, DataError

__all__ = ["SeqVAE", "ARSeqVAE", "Generator", "Critic", "ResGenerator", "ResCritic",
           "sample_arvae", "SeqClassifier", "vae_loss", "check_labels",
           "make_vae_step", "make_gan_step", "make_classifier_step", "init_vae", "init_gan",
           "init_classifier", "sample_vae", "sample_gan", "classifier_logits"]


def check_labels(labels: Sequence[str], classes: Sequence[str], where: str = "labels"
                 ) -> np.ndarray:
    """Integer class indices of label names; ConfigError naming an unknown label and the
    known classes."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(labels), np.int32)
    for i, lab in enumerate(labels):
        if lab not in index:
            raise ConfigError(f"{where}: unknown class label {lab!r}; known classes: "
                              f"{', '.join(map(repr, classes))}")
        out[i] = index[lab]
    return out


def _label_channels(label, n_classes: int, length: int):
    onehot = jax.nn.one_hot(label, n_classes)
    return jnp.broadcast_to(onehot[:, None, :], (onehot.shape[0], length, n_classes))


class _Encoder(nn.Module):
    channels: int
    out: int
    n_classes: int

    @nn.compact
    def __call__(self, x, label):
        h = jnp.concatenate([x, _label_channels(label, self.n_classes, x.shape[1])], -1)
        h = nn.relu(nn.Conv(self.channels, (9,))(h))
        for _ in range(2):  # pooling, not strided convolutions: the gradient penalty's
            # second derivative of a strided convolution is slow on XLA:CPU
            h = nn.avg_pool(h, (3,), strides=(3,), padding="SAME")
            h = nn.relu(nn.Conv(self.channels, (5,))(h))
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(nn.Dense(4 * self.channels)(h))
        return nn.Dense(self.out)(h)


class _Decoder(nn.Module):
    """Latent + label -> (B, length, 4) logits: dense to length/9 positions, two ×3
    upsamplings with convolutions."""
    length: int
    channels: int
    n_classes: int

    @nn.compact
    def __call__(self, z, label):
        base = math.ceil(self.length / 9)
        h = jnp.concatenate([z, jax.nn.one_hot(label, self.n_classes)], -1)
        h = nn.relu(nn.Dense(base * self.channels)(h)).reshape(-1, base, self.channels)
        for _ in range(2):
            h = jnp.repeat(h, 3, axis=1)
            h = nn.relu(nn.Conv(self.channels, (5,))(h))
        h = h[:, :self.length]
        h = jnp.concatenate([h, _label_channels(label, self.n_classes, self.length)], -1)
        h = nn.relu(nn.Conv(self.channels, (9,))(h))
        return nn.Conv(4, (1,))(h)


class SeqVAE(nn.Module):
    """Conditional convolutional VAE over (B, length, 4) one-hot DNA."""
    length: int
    n_classes: int = 1
    latent: int = 16
    channels: int = 64

    def setup(self):
        self.encoder = _Encoder(self.channels, 2 * self.latent, self.n_classes)
        self.decoder = _Decoder(self.length, self.channels, self.n_classes)

    def __call__(self, x, label, key):
        """(logits, mean, log-variance) for a batch; ``key`` draws the latent."""
        stats = self.encoder(x, label)
        mean, logvar = jnp.split(stats, 2, -1)
        logvar = jnp.clip(logvar, -10.0, 10.0)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        return self.decoder(z, label), mean, logvar

    def decode(self, z, label):
        return self.decoder(z, label)


def vae_loss(logits, mean, logvar, x, beta: float = 1.0):
    """(negative ELBO, reconstruction, KL), each the batch mean in nats per sequence;
    ``x`` one-hot (or probabilities; all-zero padding rows cost nothing)."""
    recon = -jnp.sum(x * jax.nn.log_softmax(logits), axis=(1, 2))
    kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)
    return jnp.mean(recon + beta * kl), jnp.mean(recon), jnp.mean(kl)


class Generator(nn.Module):
    """Noise + label -> (B, length, 4) base probabilities (softmax)."""
    length: int
    n_classes: int = 1
    latent: int = 64
    channels: int = 64

    @nn.compact
    def __call__(self, z, label):
        return jax.nn.softmax(_Decoder(self.length, self.channels, self.n_classes)(z, label))


class Critic(nn.Module):
    """(B, length, 4) + label -> (B,) Wasserstein critic score (no normalisation layers,
    as the gradient penalty requires)."""
    n_classes: int = 1
    channels: int = 64

    @nn.compact
    def __call__(self, x, label):
        h = _Encoder(self.channels, 1, self.n_classes)(x, label)
        return h[:, 0]


class SeqClassifier(nn.Module):
    """A small CNN: (B, length, 4) -> (B, n_out) logits (n_out = 1: binary)."""
    n_out: int = 1
    channels: int = 32
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.channels, (9,))(x))
        h = nn.relu(nn.Conv(self.channels, (5,), strides=(3,))(h))
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(nn.Dense(self.hidden)(h))
        return nn.Dense(self.n_out)(h)


# ---------------------------------------------------------------- autoregressive VAE decoder
class _CausalConv(nn.Module):
    """1-D convolution whose output at position t sees inputs at positions <= t only."""
    features: int
    kernel: int
    dilation: int = 1

    @nn.compact
    def __call__(self, x):
        pad = (self.kernel - 1) * self.dilation
        x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0)))
        return nn.Conv(self.features, (self.kernel,), kernel_dilation=(self.dilation,),
                       padding="VALID")(x)


class _CondTrunk(nn.Module):
    """Latent + label -> (B, length, channels) per-position conditioning features (the
    factorised decoder's trunk, so each position knows where it is)."""
    length: int
    channels: int
    n_classes: int

    @nn.compact
    def __call__(self, z, label):
        base = math.ceil(self.length / 9)
        h = jnp.concatenate([z, jax.nn.one_hot(label, self.n_classes)], -1)
        h = nn.relu(nn.Dense(base * self.channels)(h)).reshape(-1, base, self.channels)
        for _ in range(2):
            h = jnp.repeat(h, 3, axis=1)
            h = nn.relu(nn.Conv(self.channels, (5,))(h))
        h = h[:, :self.length]
        h = jnp.concatenate([h, _label_channels(label, self.n_classes, self.length)], -1)
        return nn.relu(nn.Conv(self.channels, (9,))(h))


class _ARDecoder(nn.Module):
    """WaveNet-style decoder: logits at position t from the bases before t (causal dilated
    convolutions with gated units) plus the latent/label features at t."""
    length: int
    channels: int
    n_classes: int
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16)

    @nn.compact
    def __call__(self, x, z, label):
        c = self.channels
        cond = _CondTrunk(self.length, c, self.n_classes)(z, label)
        prev = jnp.pad(x, ((0, 0), (1, 0), (0, 0)))[:, :-1]  # base t-1 at position t
        h = _CausalConv(c, 2)(prev)
        skip = 0.0
        for d in self.dilations:
            a = _CausalConv(2 * c, self.kernel, d)(h) + nn.Dense(2 * c)(cond)
            g = jnp.tanh(a[..., :c]) * jax.nn.sigmoid(a[..., c:])
            h = h + nn.Dense(c)(g)
            skip = skip + nn.Dense(c)(g)
        out = nn.relu(nn.Dense(c)(nn.relu(skip)))
        return nn.Dense(4)(out)


class ARSeqVAE(nn.Module):
    """Conditional VAE whose decoder is autoregressive over positions (left to right):
    p(x | z, label) = prod_t p(x_t | x_<t, z, label), so motifs can shift position and
    neighbouring bases are correlated. Same encoder and loss as :class:`SeqVAE`."""
    length: int
    n_classes: int = 1
    latent: int = 16
    channels: int = 64
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16)

    def setup(self):
        self.encoder = _Encoder(self.channels, 2 * self.latent, self.n_classes)
        self.decoder = _ARDecoder(self.length, self.channels, self.n_classes, self.kernel,
                                  tuple(self.dilations))

    def __call__(self, x, label, key):
        """(logits, mean, log-variance): teacher-forced logits of ``x``."""
        stats = self.encoder(x, label)
        mean, logvar = jnp.split(stats, 2, -1)
        logvar = jnp.clip(logvar, -10.0, 10.0)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        return self.decoder(x, z, label), mean, logvar

    def decode(self, x, z, label):
        return self.decoder(x, z, label)


def sample_arvae(model: ARSeqVAE, params, labels, key, temperature: float = 1.0):
    """One-hot samples (B, length, 4) of the autoregressive VAE: z ~ N(0, 1), then bases
    drawn left to right, each from p(x_t | x_<t, z, label) at ``temperature``."""
    labels = jnp.asarray(labels, jnp.int32)
    k_z, k_x = jax.random.split(key)
    z = jax.random.normal(k_z, (labels.shape[0], model.latent))
    x = jnp.zeros((labels.shape[0], model.length, 4), jnp.float32)
    for t in range(model.length):  # one compiled step, t traced
        x = _ar_sample_step(model, params, x, z, labels, jnp.int32(t),
                            jax.random.fold_in(k_x, t), jnp.float32(temperature))
    return x


@functools.partial(jax.jit, static_argnums=0)
def _ar_sample_step(model, params, x, z, labels, t, key, temperature):
    logits = model.apply({"params": params}, x, z, labels, method=ARSeqVAE.decode)
    lt = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)
    base = jax.random.categorical(key, lt / temperature, axis=-1)
    return jax.lax.dynamic_update_index_in_dim(x, jax.nn.one_hot(base, 4), t, axis=1)


# ---------------------------------------------------------------- residual WGAN-GP
class _ResBlock(nn.Module):
    channels: int
    kernel: int = 5

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.channels, (self.kernel,))(nn.relu(x))
        h = nn.Conv(self.channels, (self.kernel,))(nn.relu(h))
        return x + 0.3 * h


class ResGenerator(nn.Module):
    """Noise + label -> (B, length, 4) base probabilities: a dense projection to every
    position, residual 1-D convolution blocks at full length (Gulrajani et al. 2017's
    language-model generator), softmax. ``hard``: straight-through one-hot output (the
    forward value is the argmax one-hot, the gradient that of the softmax)."""
    length: int
    n_classes: int = 1
    latent: int = 64
    channels: int = 64
    blocks: int = 3
    hard: bool = False

    @nn.compact
    def __call__(self, z, label):
        h = jnp.concatenate([z, jax.nn.one_hot(label, self.n_classes)], -1)
        h = nn.Dense(self.length * self.channels)(h).reshape(-1, self.length, self.channels)
        h = jnp.concatenate([h, _label_channels(label, self.n_classes, self.length)], -1)
        h = nn.Conv(self.channels, (1,))(h)
        for _ in range(self.blocks):
            h = _ResBlock(self.channels)(h)
        p = jax.nn.softmax(nn.Conv(4, (1,))(nn.relu(h)))
        if self.hard:
            hard = jax.nn.one_hot(jnp.argmax(p, -1), 4)
            p = p + jax.lax.stop_gradient(hard - p)
        return p


class ResCritic(nn.Module):
    """(B, length, 4) + label -> (B,) critic score: residual convolution blocks at full
    length, then a dense layer over all positions (no normalisation layers)."""
    n_classes: int = 1
    channels: int = 64
    blocks: int = 3

    @nn.compact
    def __call__(self, x, label):
        h = jnp.concatenate([x, _label_channels(label, self.n_classes, x.shape[1])], -1)
        h = nn.Conv(self.channels, (1,))(h)
        for _ in range(self.blocks):
            h = _ResBlock(self.channels)(h)
        return nn.Dense(1)(h.reshape(h.shape[0], -1))[:, 0]



# ---------------------------------------------------------------- steps
def _adam(lr: float, b1: float = 0.9, b2: float = 0.999, clip: float = 10.0):
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr, b1=b1, b2=b2))


def _check_data(x, labels, n_classes):
    x = jnp.asarray(x, jnp.float32)
    labels = jnp.asarray(np.zeros(len(x), np.int32) if labels is None else labels, jnp.int32)
    if x.ndim != 3 or x.shape[-1] != 4:
        raise DataError(f"expected one-hot sequences of shape (N, length, 4), got {x.shape}")
    if labels.shape != (len(x),):
        raise DataError(f"{len(x)} sequences but {labels.shape[0]} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ConfigError(f"class label {int(labels.max())} outside 0..{n_classes - 1}")
    return x, labels


def init_vae(model: SeqVAE, lr: float, seed: int = 0):
    """Initial training state ``{"params", "opt", "step"}`` of ``model`` and its optimiser."""
    x = jnp.zeros((2, model.length, 4))
    params = model.init(jax.random.PRNGKey(seed), x, jnp.zeros(2, jnp.int32),
                        jax.random.PRNGKey(1))["params"]
    tx = _adam(lr)
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}, tx


def make_vae_step(model: SeqVAE, tx, x, labels=None, batch_size: int = 64,
                  beta: float = 1.0, warmup: int = 0):
    """jit step_fn(state, key) -> (state, {"loss", "recon", "kl"}) on a random batch of
    ``x`` (N, length, 4). ``warmup``: KL weight rises linearly from 0 to ``beta`` over
    this many steps (state["step"] counts them)."""
    x, labels = _check_data(x, labels, model.n_classes)

    def step(state, key):
        k_batch, k_z = jax.random.split(key)
        idx = jax.random.randint(k_batch, (batch_size,), 0, x.shape[0])
        xb, lb = x[idx], labels[idx]
        n = state["step"]
        b = beta * (jnp.minimum(1.0, (n + 1) / warmup) if warmup else 1.0)

        def loss_fn(p):
            logits, mean, logvar = model.apply({"params": p}, xb, lb, k_z)
            loss, recon, kl = vae_loss(logits, mean, logvar, xb, b)
            return loss, (recon, kl)

        (loss, (recon, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "opt": opt,
               "step": n + 1}
        return new, {"loss": recon + kl, "recon": recon, "kl": kl}

    return jax.jit(step)


def vae_elbo(model: SeqVAE, params, x, labels=None, key=None, n_samples: int = 1):
    """Mean ELBO (nats per sequence, higher is better) of ``x`` under the VAE (β = 1)."""
    x, labels = _check_data(x, labels, model.n_classes)
    key = jax.random.PRNGKey(0) if key is None else key
    total = 0.0
    for k in jax.random.split(key, n_samples):
        total += float(_neg_elbo(model, params, x, labels, k))
    return -total / n_samples


@functools.partial(jax.jit, static_argnums=0)
def _neg_elbo(model, params, x, labels, key):
    logits, mean, logvar = model.apply({"params": params}, x, labels, key)
    return vae_loss(logits, mean, logvar, x)[0]


def sample_vae(model: SeqVAE, params, labels, key, temperature: float = 1.0):
    """One-hot samples (B, length, 4) for integer ``labels`` (B,): z ~ N(0, 1), then a
    base at each position drawn from the decoder's softmax at ``temperature``."""
    return _sample_vae(model, params, jnp.asarray(labels, jnp.int32), key,
                       jnp.float32(temperature))


@functools.partial(jax.jit, static_argnums=0)
def _sample_vae(model, params, labels, key, temperature):
    k_z, k_x = jax.random.split(key)
    z = jax.random.normal(k_z, (labels.shape[0], model.latent))
    logits = model.apply({"params": params}, z, labels, method=SeqVAE.decode)
    bases = jax.random.categorical(k_x, logits / temperature, axis=-1)
    return jax.nn.one_hot(bases, 4)


def init_gan(gen: Generator, critic: Critic, lr: float, seed: int = 0):
    """Initial state ``{"gen", "critic", "gen_opt", "critic_opt"}`` and the optimiser
    (Adam, β = (0.5, 0.9) as in WGAN-GP)."""
    kg, kc = jax.random.split(jax.random.PRNGKey(seed))
    lab = jnp.zeros(2, jnp.int32)
    pg = gen.init(kg, jnp.zeros((2, gen.latent)), lab)["params"]
    pc = critic.init(kc, jnp.zeros((2, gen.length, 4)), lab)["params"]
    tx = _adam(lr, 0.5, 0.9)
    return {"gen": pg, "critic": pc, "gen_opt": tx.init(pg), "critic_opt": tx.init(pc)}, tx


def make_gan_step(gen: Generator, critic: Critic, tx, x, labels=None, batch_size: int = 64,
                  n_critic: int = 5, gp_weight: float = 10.0):
    """jit step_fn(state, key) -> (state, {"wasserstein", "gp", "gen_loss"}): ``n_critic``
    critic updates with gradient penalty, then one generator update."""
    x, labels = _check_data(x, labels, gen.n_classes)

    def critic_loss(pc, real, fake, lab, eps):
        mix = eps[:, None, None] * real + (1 - eps[:, None, None]) * fake
        f = lambda m: jnp.sum(critic.apply({"params": pc}, m, lab))  # noqa: E731
        g = jax.grad(f)(mix)
        norm = jnp.sqrt(jnp.sum(g ** 2, axis=(1, 2)) + 1e-12)
        gp = jnp.mean((norm - 1.0) ** 2)
        w = jnp.mean(critic.apply({"params": pc}, real, lab)) - jnp.mean(
            critic.apply({"params": pc}, fake, lab))
        return -w + gp_weight * gp, (w, gp)

    def critic_update(carry, key):
        state = carry
        kb, kz, ke = jax.random.split(key, 3)
        idx = jax.random.randint(kb, (batch_size,), 0, x.shape[0])
        real, lab = x[idx], labels[idx]
        z = jax.random.normal(kz, (batch_size, gen.latent))
        fake = gen.apply({"params": state["gen"]}, z, lab)
        eps = jax.random.uniform(ke, (batch_size,))
        (_, (w, gp)), g = jax.value_and_grad(critic_loss, has_aux=True)(
            state["critic"], real, fake, lab, eps)
        upd, opt = tx.update(g, state["critic_opt"], state["critic"])
        state = {**state, "critic": optax.apply_updates(state["critic"], upd),
                 "critic_opt": opt}
        return state, (w, gp)

    def step(state, key):
        keys = jax.random.split(key, n_critic + 2)
        ws, gps = [], []
        for i in range(n_critic):  # unrolled: convolutions inside lax.scan are ~10x slower
            state, (w, gp) = critic_update(state, keys[i])  # on XLA:CPU
            ws.append(w)
            gps.append(gp)
        kb, kz = jax.random.split(keys[-1])
        lab = labels[jax.random.randint(kb, (batch_size,), 0, x.shape[0])]
        z = jax.random.normal(kz, (batch_size, gen.latent))

        def gen_loss(pg):
            fake = gen.apply({"params": pg}, z, lab)
            return -jnp.mean(critic.apply({"params": state["critic"]}, fake, lab))

        gl, g = jax.value_and_grad(gen_loss)(state["gen"])
        upd, opt = tx.update(g, state["gen_opt"], state["gen"])
        state = {**state, "gen": optax.apply_updates(state["gen"], upd), "gen_opt": opt}
        return state, {"wasserstein": ws[-1], "gp": gps[-1], "gen_loss": gl}

    return jax.jit(step)


def sample_gan(gen: Generator, params, labels, key):
    """One-hot samples (B, length, 4): the argmax base of the generator's output."""
    return _sample_gan(gen, params, jnp.asarray(labels, jnp.int32), key)


@functools.partial(jax.jit, static_argnums=0)
def _sample_gan(gen, params, labels, key):
    z = jax.random.normal(key, (labels.shape[0], gen.latent))
    probs = gen.apply({"params": params}, z, labels)
    return jax.nn.one_hot(jnp.argmax(probs, -1), 4)


def init_classifier(model: SeqClassifier, length: int, lr: float, seed: int = 0,
                    weight_decay: float = 1e-4):
    """Initial state ``{"params", "opt"}`` and optimiser (AdamW) of a classifier."""
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((2, length, 4)))["params"]
    tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(lr, weight_decay=weight_decay))
    return {"params": params, "opt": tx.init(params)}, tx


def make_classifier_step(model: SeqClassifier, tx, x, y, batch_size: int = 64,
                         shift: int = 0):
    """jit step_fn(state, key) -> (state, {"loss", "accuracy"}): cross-entropy (binary
    when ``model.n_out == 1``) on a random batch; ``shift``: random circular shift by up
    to ±shift positions as augmentation (0: none)."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.int32)
    binary = model.n_out == 1

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb)
        if binary:
            lo = logits[:, 0]
            loss = jnp.mean(optax.sigmoid_binary_cross_entropy(lo, yb.astype(jnp.float32)))
            acc = jnp.mean((lo > 0) == (yb == 1))
        else:
            loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))
            acc = jnp.mean(jnp.argmax(logits, -1) == yb)
        return loss, acc

    def step(state, key):
        kb, ks = jax.random.split(key)
        idx = jax.random.randint(kb, (batch_size,), 0, x.shape[0])
        xb, yb = x[idx], y[idx]
        if shift:
            s = jax.random.randint(ks, (), -shift, shift + 1)
            xb = jnp.roll(xb, s, axis=1)
        (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], xb, yb)
        upd, opt = tx.update(g, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], upd), "opt": opt}, {
            "loss": loss, "accuracy": acc}

    return jax.jit(step)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, x):
    return model.apply({"params": params}, x)


def classifier_logits(model: SeqClassifier, params, x, batch: int = 512) -> np.ndarray:
    """Logits (N, n_out) of ``x`` in batches of ``batch`` (the last one padded, so one
    compiled shape), as host numpy."""
    x = np.asarray(x, np.float32)
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        n = len(xb)
        if n < batch and len(x) > batch:
            xb = np.concatenate([xb, np.zeros((batch - n, *x.shape[1:]), np.float32)])
        out.append(np.asarray(_apply(model, params, xb))[:n])
    return np.concatenate(out)


# ---------------------------------------------------------------- the generator protocol
# A sequence generator for ``biojax generate`` (kind = "sequences") is built by a factory
# ``factory(length, n_classes, options: dict) -> generator`` where ``options`` is the
# model's config table (``[model.<name>]``) and the generator has
#   init(seed) -> state                               (any pytree)
#   make_step(x, labels) -> step_fn(state, key) -> (state, metrics dict)
#   sample(state, labels, key) -> one-hot (B, length, 4)
#   steps: int, batch_size: int                       (how long fit runs)
# Built-ins are registered here; a user factory is named by import path
# ("mypkg.models:make_generator") in ``[generate] models``.
import dataclasses  # noqa: E402

from biojax.core.config import from_dict  # noqa: E402
from biojax.core.registry import Registry  # noqa: E402

sequence_generators = Registry("sequence generator")


@dataclasses.dataclass(frozen=True)
class VAEOptions:
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    latent: int = 16
    channels: int = 64
    beta: float = 1.0
    warmup: int = 500
    temperature: float = 1.0
    decoder: str = "factorised"      # or "autoregressive" (ARSeqVAE)
    kernel: int = 3                  # autoregressive decoder: causal kernel and dilations
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16)


@dataclasses.dataclass(frozen=True)
class GANOptions:
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-4
    latent: int = 64
    channels: int = 64
    n_critic: int = 5
    gp_weight: float = 10.0
    architecture: str = "upsample"   # or "resnet" (ResGenerator / ResCritic)
    blocks: int = 3                  # resnet: residual blocks in the generator
    output: str = "softmax"          # resnet: or "straight_through" (one-hot forward)
    critic: str = "pooled"           # resnet: critic "pooled" (Critic) or "resnet" (ResCritic)


class VAEGenerator:
    """The conditional convolutional VAE behind the generator protocol."""

    def __init__(self, length: int, n_classes: int, options: dict, where: str = "[model.vae]"):
        self.options = from_dict(VAEOptions, options, where)
        o = self.options
        self.steps, self.batch_size = o.steps, o.batch_size
        if o.decoder == "factorised":
            self.model = SeqVAE(length, n_classes, o.latent, o.channels)
        elif o.decoder == "autoregressive":
            self.model = ARSeqVAE(length, n_classes, o.latent, o.channels, o.kernel,
                                  tuple(o.dilations))
        else:
            raise ConfigError(f"{where} decoder: expected 'factorised' or 'autoregressive', "
                              f"got {o.decoder!r}")
        self.tx = None

    def init(self, seed: int):
        state, self.tx = init_vae(self.model, self.options.learning_rate, seed)
        return state

    def make_step(self, x, labels):
        o = self.options
        return make_vae_step(self.model, self.tx, x, labels, o.batch_size, o.beta, o.warmup)

    def sample(self, state, labels, key):
        if isinstance(self.model, ARSeqVAE):
            return sample_arvae(self.model, state["params"], labels, key,
                                self.options.temperature)
        return sample_vae(self.model, state["params"], labels, key, self.options.temperature)


class GANGenerator:
    """The conditional WGAN-GP behind the generator protocol."""

    def __init__(self, length: int, n_classes: int, options: dict, where: str = "[model.gan]"):
        self.options = from_dict(GANOptions, options, where)
        o = self.options
        self.steps, self.batch_size = o.steps, o.batch_size
        if o.output not in ("softmax", "straight_through"):
            raise ConfigError(f"{where} output: expected 'softmax' or 'straight_through', "
                              f"got {o.output!r}")
        if o.architecture == "upsample":
            if o.output != "softmax":
                raise ConfigError(f"{where} output: {o.output!r} needs architecture = "
                                  "'resnet'")
            self.gen = Generator(length, n_classes, o.latent, o.channels)
            self.critic = Critic(n_classes, o.channels)
        elif o.architecture == "resnet":
            self.gen = ResGenerator(length, n_classes, o.latent, o.channels, o.blocks,
                                    o.output == "straight_through")
            if o.critic not in ("pooled", "resnet"):
                raise ConfigError(f"{where} critic: expected 'pooled' or 'resnet', got "
                                  f"{o.critic!r}")
            self.critic = (ResCritic(n_classes, o.channels, o.blocks) if o.critic == "resnet"
                           else Critic(n_classes, o.channels))
        else:
            raise ConfigError(f"{where} architecture: expected 'upsample' or 'resnet', got "
                              f"{o.architecture!r}")
        self.tx = None

    def init(self, seed: int):
        state, self.tx = init_gan(self.gen, self.critic, self.options.learning_rate, seed)
        return state

    def make_step(self, x, labels):
        o = self.options
        return make_gan_step(self.gen, self.critic, self.tx, x, labels, o.batch_size,
                             o.n_critic, o.gp_weight)

    def sample(self, state, labels, key):
        return sample_gan(self.gen, state["gen"], labels, key)


sequence_generators.register("vae", VAEGenerator)
sequence_generators.register("gan", GANGenerator)
