"""biojax.generative, session-6 additions: the autoregressive VAE decoder is causal and
samples in its own support, the residual WGAN-GP's straight-through output, integrated
gradients against per-input (shuffled) baselines, and the options' clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biojax.core.errors import AnalysisError, ConfigError
from biojax.generative import seqmodels as smod
from biojax.generative.attributions import (batched_integrated_gradients,
                                            shuffled_baselines)


def test_autoregressive_decoder_is_causal_and_learns_a_shifted_motif(tmp_path):
    from biojax.generative.trainer import fit

    length = 20
    gen = smod.VAEGenerator(length, 2, {"decoder": "autoregressive", "channels": 16,
                                        "latent": 2, "dilations": [1, 2], "steps": 80,
                                        "batch_size": 32, "learning_rate": 5e-3,
                                        "warmup": 0})
    state = gen.init(0)
    model, params = gen.model, state["params"]
    rng = np.random.default_rng(0)
    x = np.asarray(jax.nn.one_hot(rng.integers(0, 4, (3, length)), 4))
    z = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    lab = jnp.array([0, 1, 0])
    logits = model.apply({"params": params}, x, z, lab, method=smod.ARSeqVAE.decode)
    t = 9
    x2 = x.copy()
    x2[:, t:] = np.asarray(jax.nn.one_hot(rng.integers(0, 4, (3, length - t)), 4))
    logits2 = model.apply({"params": params}, x2, z, lab, method=smod.ARSeqVAE.decode)
    # logits at positions <= t depend on bases < t only
    np.testing.assert_allclose(logits[:, :t + 1], logits2[:, :t + 1], atol=1e-5)
    assert np.abs(np.asarray(logits[:, t + 1:] - logits2[:, t + 1:])).max() > 1e-4

    # data: "TATAAT" at a random start 5..9 (jitter), else uniform bases: entropy
    # 14 ln 4 + ln 5 = 21.0 nats against 20 ln 4 = 27.7 for the untrained (uniform)
    # decoder. A factorised decoder cannot place the whole motif together at a jittered
    # start; the autoregressive one learns it.
    n = 128
    seqs = rng.integers(0, 4, (n, length))
    starts = rng.integers(5, 10, n)
    motif = np.array([3, 0, 3, 0, 0, 3])
    for i, s in enumerate(starts):
        seqs[i, s:s + 6] = motif
    data = np.asarray(jax.nn.one_hot(seqs, 4))
    labels = np.arange(n) % 2
    before = smod.vae_elbo(model, params, data, labels)
    state = fit(gen.make_step(data, labels), state, gen.steps, str(tmp_path), "vae",
                log_every=50, progress=False)
    after = smod.vae_elbo(model, state["params"], data, labels)
    assert after > before + 4.0, (before, after)
    xs = np.asarray(gen.sample(state, np.arange(100) % 2, jax.random.PRNGKey(3)))
    assert xs.shape == (100, length, 4) and np.all(xs.sum(-1) == 1)
    text = ["".join("ACGT"[b] for b in row) for row in xs.argmax(-1)]
    rate = np.mean([("TATAAT" in s[5:15]) for s in text])
    assert rate > 0.3, rate  # uniform random bases: 5 windows x 4^-6 = 0.001


def test_resnet_gan_straight_through_and_option_errors():
    gen = smod.GANGenerator(15, 2, {"architecture": "resnet", "channels": 8, "latent": 4,
                                    "blocks": 1, "output": "straight_through",
                                    "n_critic": 1, "batch_size": 8})
    state = gen.init(0)
    z = jnp.ones((3, 4))
    lab = jnp.array([0, 1, 1])
    out = gen.gen.apply({"params": state["gen"]}, z, lab)
    np.testing.assert_allclose(np.asarray(out).sum(-1), 1.0, atol=1e-6)
    assert set(np.unique(np.round(np.asarray(out), 6))) <= {0.0, 1.0}  # one-hot forward
    g = jax.grad(lambda p: jnp.sum(gen.gen.apply({"params": p}, z, lab) * jnp.arange(4.0)))(
        state["gen"])
    assert any(float(jnp.abs(v).max()) > 0 for v in jax.tree_util.tree_leaves(g))
    critic = smod.ResCritic(2, 8, 1)
    pc = critic.init(jax.random.PRNGKey(1), out, lab)["params"]
    assert critic.apply({"params": pc}, out, lab).shape == (3,)
    with pytest.raises(ConfigError, match=r"\[model.vae\] decoder: expected 'factorised' or "
                                          r"'autoregressive', got 'wavenet'"):
        smod.VAEGenerator(15, 1, {"decoder": "wavenet"})
    with pytest.raises(ConfigError, match="architecture: expected 'upsample' or 'resnet'"):
        smod.GANGenerator(15, 1, {"architecture": "dcgan"})
    with pytest.raises(ConfigError, match="'straight_through' needs architecture = 'resnet'"):
        smod.GANGenerator(15, 1, {"output": "straight_through"})


def test_ig_against_per_input_shuffled_baselines_is_complete():
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(12, 4)), jnp.float32)

    def f(x):
        return jnp.tanh(jnp.sum(w * x)) + jnp.sum(x[3:6] * w[3:6]) ** 2

    xs = np.asarray(jax.nn.one_hot(rng.integers(0, 4, (5, 12)), 4), np.float32)
    bases = shuffled_baselines(xs, 3, seed=1)
    assert bases.shape == (3, 5, 12, 4)
    np.testing.assert_array_equal(bases.sum(2), np.broadcast_to(xs.sum(1), (3, 5, 4)))
    assert np.any(bases[0] != xs)  # shuffled, same composition
    mean_attr = np.mean([batched_integrated_gradients(f, xs, b, steps=64, batch=4)
                         for b in bases], axis=0)
    fx = np.array([float(f(x)) for x in xs])
    fb = np.array([[float(f(b)) for b in bk] for bk in bases]).mean(0)
    np.testing.assert_allclose(mean_attr.sum((1, 2)), fx - fb, atol=2e-3)
    with pytest.raises(AnalysisError, match="baseline shape"):
        batched_integrated_gradients(f, xs, np.zeros((5, 12, 3)))
