"""biojax.generative (sequence half of issue #16): integrated-gradient completeness and
in-silico mutagenesis against direct evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biojax.core.errors import AnalysisError
from biojax.generative.attributions import (batched_integrated_gradients,
                                            completeness_error, in_silico_mutagenesis,
                                            integrated_gradients)


def _mlp(seed=0, n=12):
    rng = np.random.default_rng(seed)
    w1, w2 = jnp.asarray(rng.normal(size=(n, 16))), jnp.asarray(rng.normal(size=16))

    def f(x):
        return jnp.tanh(x.reshape(-1) @ w1) @ w2
    return f


def test_ig_completeness_and_convergence():
    f = _mlp()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)
    base = jnp.full_like(x, 0.25)
    attr = integrated_gradients(f, x, base, steps=128)
    assert attr.shape == x.shape
    gap = float(f(x) - f(base))
    assert abs(gap) > 0.1  # a non-trivial check
    assert abs(float(attr.sum()) - gap) < 1e-2 * abs(gap) + 1e-4
    # midpoint rule: the error shrinks with more steps (O(1/steps^2) for smooth f)
    e4, e64 = (abs(completeness_error(f, x, base, steps=s)) for s in (4, 64))
    assert e64 < e4
    # linear f: IG is exact, (x - x') * w for any number of steps
    w = jnp.arange(12.0).reshape(3, 4)
    lin = integrated_gradients(lambda z: jnp.sum(w * z), x, base, steps=1)
    np.testing.assert_allclose(lin, w * (x - base), rtol=1e-5, atol=1e-5)
    batch = batched_integrated_gradients(f, jnp.stack([x, 2 * x]), base, steps=128)
    np.testing.assert_allclose(batch[0], attr, rtol=1e-4, atol=1e-5)
    with pytest.raises(AnalysisError, match="baseline shape"):
        integrated_gradients(f, x, jnp.zeros(5))


def test_in_silico_mutagenesis_matches_direct_mutants():
    f = _mlp(seed=2, n=12)
    seq = np.array([0, 3, 1])
    onehot = jax.nn.one_hot(seq, 4)
    ism = np.asarray(in_silico_mutagenesis(f, onehot))
    assert ism.shape == (3, 4)
    for i in range(3):
        for a in range(4):
            mut = seq.copy()
            mut[i] = a
            expect = float(f(jax.nn.one_hot(mut, 4)) - f(onehot))
            assert ism[i, a] == pytest.approx(expect, abs=1e-5)
    assert np.all(ism[np.arange(3), seq] == 0)
