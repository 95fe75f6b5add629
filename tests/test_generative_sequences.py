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


# ---------------------------------------------------------------- sequences, one-hot
import json  # noqa: E402
import os  # noqa: E402

from biojax.core.errors import ConfigError, DataError  # noqa: E402
from biojax.generative import seqmetrics as sm  # noqa: E402
from biojax.generative import seqmodels as smod  # noqa: E402
from biojax.generative.sequences import decode, one_hot, read_csv, read_fasta  # noqa: E402
from biojax.generative.trainer import fit, read_metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DNA = os.path.join(ROOT, "examples", "data", "dna")


def _random_seqs(n, length, seed=0):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), length)) for _ in range(n)]


def test_one_hot_round_trip_and_real_files():
    seqs = _random_seqs(20, 33) + ["acgtACGT" * 4 + "a"]
    x = one_hot(seqs)
    assert x.shape == (21, 33, 4) and np.all(x.sum(-1) == 1)
    assert decode(x) == [s.upper() for s in seqs]
    names, promoters = read_fasta(os.path.join(DNA, "ecoli_sigma24promoter.fasta"))
    assert len(promoters) == 484 and {len(s) for s in promoters} == {81}
    assert decode(one_hot(promoters)) == promoters
    # padding rule: right-padded empty rows, dropped again by decode
    xp = one_hot(["ACG", "ACGTT"], pad="right")
    assert xp.shape == (2, 5, 4) and np.all(xp[0, 3:] == 0)
    assert decode(xp) == ["ACG", "ACGTT"]


def test_ambiguous_bases_rejected_or_uniform_as_documented():
    names, seqs, labels = read_csv(os.path.join(DNA, "uci_splice.csv"),
                                   name_column="instance_name")
    assert len(seqs) == 3190 and set(labels) == {"EI", "IE", "N"}
    with pytest.raises(DataError, match=r"'HUMALPI1-DONOR-42' position 20: 'N' is an "
                                        r"ambiguous IUPAC base; pass ambiguous='uniform'"):
        one_hot(seqs, names=names)
    x = one_hot(["ANRY", "BDHV"], ambiguous="uniform")
    np.testing.assert_allclose(x[0], [[1, 0, 0, 0], [.25, .25, .25, .25], [.5, 0, .5, 0],
                                      [0, .5, 0, .5]])
    np.testing.assert_allclose(x[1].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(x[1, 0], [0, 1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    with pytest.raises(DataError, match=r"#1 position 3: 'U' is not a DNA letter"):
        one_hot(["ACGT", "ACUT"], ambiguous="uniform")
    assert decode(x)[0] == "ANNN"  # ties decode as N


def test_bad_input_clear_errors(tmp_path):
    empty = tmp_path / "empty.fasta"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty FASTA"):
        read_fasta(empty)
    with pytest.raises(DataError, match=r"different lengths .* sequence 'b' has 5"):
        one_hot(["ACGT", "ACGTA"], names=["a", "b"])
    with pytest.raises(ConfigError, match=r"unknown class label 'sigma99'; known classes: "
                                          r"'sigma70', 'sigma24'"):
        smod.check_labels(["sigma70", "sigma99"], ["sigma70", "sigma24"])
    with pytest.raises(DataError, match="no sequence"):
        (tmp_path / "nohead.fasta").write_text(">a\n>b\nACGT\n")
        read_fasta(tmp_path / "nohead.fasta")


def test_kmer_and_motif_metrics_against_direct_counts():
    seqs = _random_seqs(30, 40, seed=3)
    x = one_hot(seqs)
    for k in (1, 3):
        spec = sm.kmer_spectrum(x, k)
        counts = {}
        for s in seqs:
            for i in range(len(s) - k + 1):
                counts[s[i:i + k]] = counts.get(s[i:i + k], 0) + 1
        total = sum(counts.values())
        for kmer, c in list(counts.items())[:20]:
            idx = sum("ACGT".index(b) * 4 ** (k - 1 - j) for j, b in enumerate(kmer))
            assert spec[idx] == pytest.approx(c / total)
    assert sm.js_divergence(spec, spec) == pytest.approx(0.0, abs=1e-12)
    planted = [s[:10] + "TATGAT" + s[16:] for s in seqs]  # one mismatch from TATAAT
    hits = sm.motif_hits(one_hot(planted), "TATAAT", max_mismatches=1, window=(10, 10))
    assert hits["rate"] == 1.0 and hits["profile"][10] == 1.0
    assert sm.motif_hits(one_hot(planted), "TATAAT", 0, window=(10, 10))["rate"] == 0.0
    nn = sm.nearest_hamming(one_hot(planted[:5] + seqs[:5]), x)
    assert nn["exact_copy_fraction"] == 0.5 and list(nn["distances"][:5]) == [
        sum(a != b for a, b in zip(p, s)) for p, s in zip(planted[:5], seqs[:5])]


# ---------------------------------------------------------------- training
def _promoters(n=256, length=None):
    _, seqs = read_fasta(os.path.join(DNA, "ecoli_sigma70promoter.fasta"))
    x = one_hot(seqs[:n])
    return x if length is None else x[:, -length:]


def test_vae_elbo_improves_on_a_small_run(tmp_path):
    # sequences from a position-specific distribution (consensus base p = 0.85 at each
    # position, a different consensus per class): entropy 0.59 nats/position against
    # ln 4 = 1.39 for the untrained uniform decoder, so the ELBO can rise by ~21 nats
    rng = np.random.default_rng(0)
    consensus = rng.integers(0, 4, (2, 27))
    labels = np.arange(256) % 2
    bases = np.where(rng.random((256, 27)) < 0.85, consensus[labels],
                     rng.integers(0, 4, (256, 27)))
    x = np.asarray(jax.nn.one_hot(bases, 4))
    gen = smod.VAEGenerator(27, 2, {"steps": 60, "batch_size": 32, "learning_rate": 3e-3,
                                    "channels": 16, "latent": 4, "warmup": 0})
    state = gen.init(0)
    before = smod.vae_elbo(gen.model, state["params"], x, labels)
    state = fit(gen.make_step(x, labels), state, gen.steps, str(tmp_path), "vae",
                log_every=20, progress=False)
    after = smod.vae_elbo(gen.model, state["params"], x, labels)
    assert after > before + 5.0, (before, after)
    log = read_metrics(str(tmp_path), "vae")
    assert [r["step"] for r in log] == [20, 40, 60] and log[-1]["loss"] < log[0]["loss"]
    with pytest.raises(ConfigError, match="class label 2 outside 0..1"):
        gen.make_step(x, np.full(len(x), 2))
    with pytest.raises(ConfigError, match=r"\[model.vae\]: unknown key\(s\) 'stepz'"):
        smod.VAEGenerator(27, 2, {"stepz": 1})


class _Kill(Exception):
    pass


def test_gan_run_killed_and_resumed_equals_uninterrupted(tmp_path):
    x = _promoters(128, length=27)
    labels = np.arange(len(x)) % 3
    gen = smod.GANGenerator(27, 3, {"steps": 6, "batch_size": 16, "channels": 8,
                                    "latent": 8, "n_critic": 1})
    gen.init(0)
    step = gen.make_step(x, labels)
    kw = dict(seed=4, config={"a": 1}, checkpoint_every=2, log_every=1, progress=False)
    whole = fit(step, gen.init(0), 6, str(tmp_path / "a"), "gan", **kw)

    def kill(k):
        if k == 5:  # after the step-4 checkpoint, before the next one
            raise _Kill

    with pytest.raises(_Kill):
        fit(step, gen.init(0), 6, str(tmp_path / "b"), "gan", on_step=kill, **kw)
    assert [r["step"] for r in read_metrics(str(tmp_path / "b"), "gan")] == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match="pass --resume"):
        fit(step, gen.init(0), 6, str(tmp_path / "b"), "gan", **kw)
    with pytest.raises(ConfigError, match="a was 1, now 2"):
        fit(step, gen.init(0), 6, str(tmp_path / "b"), "gan", resume=True,
            **{**kw, "config": {"a": 2}})
    resumed = fit(step, gen.init(0), 6, str(tmp_path / "b"), "gan", resume=True, **kw)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    la, lb = (read_metrics(str(tmp_path / d), "gan") for d in "ab")
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in la] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in lb]
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(gen.sample(whole, np.array([0, 1, 2]), key),
                                  gen.sample(resumed, np.array([0, 1, 2]), key))


# ---------------------------------------------------------------- the CLI
def _tiny_config(tmp_path, files, classes, extra="", name="gen"):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f"""
[generate]
kind = "sequences"
models = ["vae"]
[data]
files = {json.dumps([str(f) for f in files])}
classes = {json.dumps(classes)}
negatives = "{tmp_path / 'neg.fasta'}"
[model.vae]
steps = 4
batch_size = 8
channels = 8
latent = 2
[classifier]
steps = 4
channels = 4
hidden = 4
ig_steps = 4
ig_examples = 8
[evaluate]
kmax = 3
two_sample_test = false
compare_classes = ["a", "b"]
[[evaluate.motifs]]
name = "-10"
consensus = "TATAAT"
window = [10, 20]
{extra}""")
    return cfg


def test_generate_cli_tiny_config_and_errors(tmp_path, capsys):
    from biojax.cli import main

    for name, seed in (("a", 1), ("b", 2), ("neg", 3)):
        (tmp_path / f"{name}.fasta").write_text(
            "".join(f">{name}{i}\n{s}\n" for i, s in enumerate(_random_seqs(24, 27, seed))))
    cfg = _tiny_config(tmp_path, [tmp_path / "a.fasta", tmp_path / "b.fasta"], ["a", "b"])
    out = tmp_path / "run"
    assert main(["generate", str(cfg), "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["n_train"] == 24 and metrics["data"]["classes"] == ["a", "b"]
    vae = metrics["models"]["vae"]
    assert vae["n"] == 24 and set(vae["js_kmer"]) == {"1", "2", "3"}
    assert 0.0 <= vae["exact_copy_fraction"] <= 1.0
    assert set(metrics["class_contrast"]) == {"real", "vae"}
    assert 0.0 <= metrics["classifier"]["heldout_accuracy"] <= 1.0
    att = metrics["attributions"]
    assert len(att["profile"]) == 27 and att["completeness_mean_abs_error"] < 0.05 + 0.05 * abs(
        att["mean_logit_minus_baseline"])
    samples = read_fasta(out / "samples" / "vae.fasta")[1]
    assert len(samples) == 24 and {len(s) for s in samples} == {27}
    # an existing run is not overwritten (resume itself: the GAN test above)
    assert main(["generate", str(cfg), "--out", str(out), "--quiet"]) == 1
    assert "already holds a generation run" in capsys.readouterr().err
    # bad input: one clear line each, exit status 1
    (tmp_path / "empty.fasta").write_text("")
    (tmp_path / "mixed.fasta").write_text(">x\nACGT\n>y\nACGTAC\n")
    cases = [(_tiny_config(tmp_path, [tmp_path / "empty.fasta"], ["a"], name="e"),
              "empty FASTA"),
             (_tiny_config(tmp_path, [tmp_path / "mixed.fasta"], ["a"], name="m"),
              "different lengths"),
             (_tiny_config(tmp_path, [tmp_path / "a.fasta"], ["a", "b"], name="c"),
              "2 labels for 1 files"),
             (_tiny_config(tmp_path, [tmp_path / "a.fasta"], ["a"], "[evaluate.x]\n",
                           name="u"), "unknown key(s) 'x'")]
    for i, (bad, words) in enumerate(cases):
        assert main(["generate", str(bad), "--out", str(tmp_path / f"bad{i}"), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    assert main(["generate", str(cfg), "--out", str(tmp_path / "k"), "--quiet",
                 "--set", "generate.kind=proteins"]) == 1
    assert "unknown generate kind 'proteins'" in capsys.readouterr().err
