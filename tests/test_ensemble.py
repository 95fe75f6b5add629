"""Ensembles (biojax.nn.ensemble): zero spread for identical members, the vmapped
training step equals K separate ones, one model directory, clear errors for members
that cannot be combined, the ASE calculator's spread, and the training loop end to end."""

import json

import jax
import numpy as np
import pytest

from biojax.core.errors import ConfigError, ModelError
from biojax.data.graphs import GraphDataset
from biojax.data.io import read_dataset
from biojax.nn.ensemble import (batch_spread, init_ensemble, load_ensemble, make_ensemble,
                                spread_fn)
from biojax.nn.io import load_potential, save_potential
from biojax.nn.models import init_potential
from biojax.train.loop import init_train_state, make_optimizer, make_train_step
from biojax.train.config import TrainingConfig
from biojax.train.losses import combine, energy, forces

ARCH = {"name": "painn", "features": 8, "n_interactions": 1, "n_basis": 6}
CUTOFF = 4.0


@pytest.fixture(scope="module")
def ethanol(ethanol_train):
    return read_dataset(ethanol_train)[:6]


@pytest.fixture(scope="module")
def trio(ethanol):
    """Three members (seeds 0, 1, 2): the first initialisation compiles, the rest reuse."""
    return [_member(ethanol, s) for s in range(3)]


def _elements(frames):
    return sorted({int(z) for s in frames for z in s.numbers})


def _member(frames, seed, arch=ARCH, cutoff=CUTOFF):
    return init_potential(arch, _elements(frames), cutoff, key=jax.random.PRNGKey(seed),
                          scale=0.5)


def _batch(frames, potential, n=3, start=0):
    data = GraphDataset(frames, potential.cutoff, potential.species_of,
                        potential.reference_energy)
    return next(data.batches(n, np.arange(start, start + n)))


def test_identical_members_have_zero_spread_and_distinct_members_do_not(ethanol, trio,
                                                                        tmp_path):
    one = trio[0]
    same = make_ensemble([one, one, one])
    assert same.members == 3
    batch = _batch(ethanol, one)
    spread = jax.jit(lambda p, b: batch_spread(same, p, b))  # compiled once for both
    out = jax.device_get(spread(same.params, batch))
    assert np.all(out["force_std"] == 0) and np.all(out["energy_std"] == 0)
    # distinct members: spread > 0 on real atoms, 0 on padding; mean = mean of members
    ens = make_ensemble(trio)
    out = jax.device_get(spread(ens.params, batch))
    mask = np.asarray(batch.node_mask)
    assert np.all(out["force_std"][mask] > 0) and np.all(out["force_std"][~mask] == 0)
    np.testing.assert_allclose(out["forces"], out["member_forces"].mean(0), atol=1e-6)
    from biojax.train.losses import predict  # each member's forces, as a model alone
    for k, m in enumerate(trio):
        np.testing.assert_allclose(out["member_forces"][k][mask], np.asarray(
            predict(m, m.params, batch, False)["forces"])[mask], rtol=1e-4, atol=1e-5)
    f_std = np.sqrt(np.var(out["member_forces"], 0).mean(-1))
    np.testing.assert_allclose(out["force_std"][mask], f_std[mask], rtol=1e-4)
    g = np.asarray(batch.graph_index)[mask]
    np.testing.assert_allclose(out["force_std_max"][0], f_std[mask][g == 0].max(), rtol=1e-5)

    # one model directory: saved, loaded, same spread; the jax-md form agrees
    save_potential(ens, tmp_path / "ens")
    meta = json.loads((tmp_path / "ens" / "potential.json").read_text())
    assert meta["ensemble"] == {"kind": "full", "members": 3}
    back = load_potential(tmp_path / "ens")
    out2 = jax.device_get(spread(back.params, batch))
    np.testing.assert_allclose(out2["force_std"], out["force_std"], rtol=1e-5, atol=1e-7)
    s0, n0 = ethanol[0], ethanol[0].n_atoms
    # the ASE calculator exposes the spread
    from biojax.calculator import BiojaxCalculator

    atoms = __import__("ase").Atoms(numbers=s0.numbers, positions=s0.positions)
    atoms.calc = BiojaxCalculator(back)
    atoms.get_forces()
    np.testing.assert_allclose(atoms.calc.results["forces_std"], out["force_std"][:n0],
                               rtol=1e-4, atol=1e-6)
    assert atoms.calc.results["energy_std"] == pytest.approx(float(out["energy_std"][0]),
                                                             rel=1e-4)
    # and separately saved members load as the same ensemble
    for s in range(2):
        save_potential(trio[s], tmp_path / f"m{s}")
    pair = load_ensemble([tmp_path / "m0", tmp_path / "m1"])
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(pair.params)[0][1],
                                  jax.tree_util.tree_leaves(trio[1].params)[0])


def test_vmapped_training_equals_separate_trainings(ethanol, trio):
    members = trio[1:]
    ens = init_ensemble(ARCH, _elements(ethanol), CUTOFF, None, seeds=(1, 2), scale=0.5)
    for a, b in zip(jax.tree_util.tree_leaves(ens.params),  # member k from seed k
                    jax.tree_util.tree_leaves(make_ensemble(members).params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    loss = combine(energy(1.0), forces(10.0))
    tx = make_optimizer(TrainingConfig(clip_norm=0.5))  # clipping is per member
    batches = [_batch(ethanol, ens, 3, 0), _batch(ethanol, ens, 3, 3)]
    state = init_train_state(ens, tx)
    step = make_train_step(ens, tx, loss, 0.9)
    for b in batches:
        state, value = step(state, b, np.float32(3e-3))
    assert value.shape == (2,)
    single = make_train_step(members[0], tx, loss, 0.9)  # params are an argument
    for k, m in enumerate(members):
        s = init_train_state(m, tx)
        for b in batches:
            s, v = single(s, b, np.float32(3e-3))
        assert float(v) == pytest.approx(float(value[k]), rel=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(s.ema_params),
                        jax.tree_util.tree_leaves(state.ema_params)):
            np.testing.assert_allclose(np.asarray(b)[k], np.asarray(a), rtol=2e-5, atol=1e-6)


def test_members_that_differ_are_refused(ethanol, trio, tmp_path):
    a = trio[0]
    with pytest.raises(ModelError, match="member 1 .*cutoff"):
        make_ensemble([a, trio[1].replace(cutoff=3.5)])
    with pytest.raises(ModelError, match="member 2 .*elements"):
        make_ensemble([a, trio[1], trio[2].replace(elements=(1, 6, 7))])
    with pytest.raises(ModelError, match="architecture"):
        make_ensemble([a, trio[1].replace(architecture={**ARCH, "features": 16})])
    with pytest.raises(ModelError, match="itself an ensemble"):
        make_ensemble([make_ensemble(trio[:2]), a])
    save_potential(a, tmp_path / "a")
    save_potential(trio[1].replace(cutoff=3.5), tmp_path / "b")
    with pytest.raises(ModelError, match=str(tmp_path / "b")):
        load_ensemble([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ModelError, match="not an ensemble"):
        spread_fn(a, None, ethanol[0].numbers)
    with pytest.raises(ConfigError, match="heads"):
        init_potential({**ARCH, "heads": 0}, [1, 6, 8], CUTOFF)


def test_shallow_ensemble_trains_in_the_loop(tmp_path, ethanol_train,
                                                      ethanol_isolated):
    from biojax.core.config import load
    from biojax.train.config import TrainConfig
    from biojax.train.loop import train_and_evaluate

    text = f"""
[data]
train_file = "{ethanol_train}"
isolated_atoms = "{ethanol_isolated}"
n_train = 8
n_valid = 4
[model]
name = "painn"
cutoff = 4.0
features = 8
n_interactions = 1
n_basis = 6
{{heads}}
[training]
epochs = 3
batch_size = 4
learning_rate = 3e-3
forces_weight = 100.0
{{ensemble}}
"""
    results = {}
    # the full ensemble's step is checked against separate trainings above; here the
    # shallow one (mean of the heads' losses) runs through the loop, saved and reloaded
    for name, heads, ens in (("shallow", "heads = 2", ""),):
        path = tmp_path / f"{name}.toml"
        path.write_text(text.format(heads=heads, ensemble=ens))
        metrics = train_and_evaluate(load(TrainConfig, str(path)), str(tmp_path / name),
                                     log=lambda *_: None)
        log = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert log[-1]["valid_forces_mae"] < log[0]["valid_forces_mae"]  # it learns
        model = load_potential(tmp_path / name / "model")
        assert model.members == 2 and model.model.kind == name
        results[name] = metrics
    assert np.isfinite(results["shallow"]["valid"]["forces_mae"])
    # the heads differ: a shallow ensemble has a spread
    model = load_potential(tmp_path / "shallow" / "model")
    data = read_dataset(ethanol_train)[:2]
    out = jax.device_get(batch_spread(model, model.params, _batch(data, model, 2)))
    assert np.all(out["force_std"][np.asarray(_batch(data, model, 2).node_mask)] > 0)


def test_bootstrap_members_each_train_on_their_own_resample(ethanol, trio):
    from biojax.train.loop import bootstrap_order, bootstrap_samples, device_batches

    samples = bootstrap_samples(6, [1, 2])
    assert samples.shape == (2, 6) and not np.array_equal(samples[0], samples[1])
    order = bootstrap_order(samples, 3, [0, 1]).reshape(2, 2, 3)  # (step, member, batch)
    for k in range(2):  # an epoch visits member k's resample, as a multiset
        np.testing.assert_array_equal(np.sort(order[:, k].ravel()), np.sort(samples[k]))
    # the member-batched vmapped step equals each member stepping on its own batches
    ens = init_ensemble(ARCH, _elements(ethanol), CUTOFF, None, seeds=(1, 2), scale=0.5)
    data = GraphDataset(ethanol, CUTOFF, ens.species_of, ens.reference_energy)
    loss = combine(energy(1.0), forces(10.0))
    tx = make_optimizer(TrainingConfig())
    state = init_train_state(ens, tx)
    step = make_train_step(ens, tx, loss, 0.9, member_batches=True)
    for batch in device_batches(data, 6, order.reshape(-1), 2):
        state, value = step(state, batch, np.float32(3e-3))
    single = make_train_step(trio[1], tx, loss, 0.9)
    for k, m in enumerate(trio[1:]):
        s = init_train_state(m, tx)
        for idx in order[:, k]:
            s, v = single(s, next(data.batches(3, idx)), np.float32(3e-3))
        assert float(v) == pytest.approx(float(value[k]), rel=1e-4)
    with pytest.raises(ValueError, match="bootstrap = true .*ensemble = K"):
        TrainingConfig(bootstrap=True)
