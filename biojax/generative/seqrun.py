"""``biojax generate`` with ``[generate] kind = "sequences"``: train conditional sequence
generators (VAE, WGAN-GP, or a user model by import path), sample, evaluate against held-out
real sequences, explain a classifier with integrated gradients, and report.

Config (TOML; paths relative to the config file)::

    [generate]
    kind = "sequences"
    seed = 0
    models = ["vae", "gan"]          # registered names or "package.module:factory"
    n_samples = 0                    # per model; 0: as many as held-out sequences
                                     # (same class mix)
    [data]
    files = ["sigma70.fasta", "sigma24.fasta"]   # FASTA (.fa/.fasta/.fna) or CSV
    classes = ["sigma70", "sigma24"]             # one class label per FASTA file
    negatives = "non_promoters.fasta"            # optional: trains the classifier
    holdout_fraction = 0.5
    ambiguous = "error"              # or "uniform" (see biojax.generative.sequences)
    pad = "none"                     # or "right"
    sequence_column = "sequence"     # CSV files: columns; class labels from label_column
    label_column = "label"

    [model.vae]                      # options of each model (see seqmodels.VAEOptions)
    steps = 3000
    [classifier]
    steps = 2000
    [[evaluate.motifs]]
    name = "-10"
    consensus = "TATAAT"
    window = [42, 54]                # 0-based start positions counted as a hit

Run directory: ``metrics.json``, ``samples/<model>.fasta``, ``<name>.checkpoint.msgpack``
and ``<name>.metrics.jsonl`` per trained network (biojax.generative.trainer), and plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable

import numpy as np

from biojax.core.atomic import atomic_write_text
from biojax.core.config import load, to_dict
from biojax.core.errors import ConfigError, DataError

FASTA_EXT = (".fa", ".fasta", ".fna", ".fas")


@dataclasses.dataclass(frozen=True)
class GenerateSection:
    kind: str = "sequences"
    seed: int = 0
    models: tuple[str, ...] = ("vae", "gan")
    n_samples: int = 0
    max_minutes: float = 0.0


@dataclasses.dataclass(frozen=True)
class DataSection:
    files: tuple[str, ...] = dataclasses.field(default=(), metadata={"path": True})
    classes: tuple[str, ...] = ()
    negatives: str = dataclasses.field(default="", metadata={"path": True})
    holdout_fraction: float = 0.5
    ambiguous: str = "error"
    pad: str = "none"
    sequence_column: str = "sequence"
    label_column: str = "label"


@dataclasses.dataclass(frozen=True)
class ClassifierSection:
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    channels: int = 32
    hidden: int = 32
    ig_steps: int = 32
    ig_examples: int = 500
    ig_baseline: str = "uniform"     # or "zeros", "shuffled" (see attribution_profile)
    ig_shuffles: int = 8


@dataclasses.dataclass(frozen=True)
class Motif:
    name: str
    consensus: str
    window: tuple[int, ...] = ()
    max_mismatches: int = 1


@dataclasses.dataclass(frozen=True)
class EvaluateSection:
    kmax: int = 6
    motifs: tuple[Motif, ...] = ()
    two_sample_test: bool = True
    compare_classes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    generate: GenerateSection = GenerateSection()
    data: DataSection = DataSection()
    model: dict = dataclasses.field(default_factory=dict)
    classifier: ClassifierSection = ClassifierSection()
    evaluate: EvaluateSection = EvaluateSection()


def load_config(path: str, overrides=()) -> SequenceConfig:
    """The sequence-generation config in ``path`` (strict keys, paths resolved)."""
    config = load(SequenceConfig, path, overrides)
    d = config.data
    where = f"{path} [data]"
    if not d.files:
        raise ConfigError(f"{where} files: give at least one FASTA or CSV file")
    if d.classes and len(d.classes) != len(d.files):
        raise ConfigError(f"{where} classes: {len(d.classes)} labels for {len(d.files)} files "
                          "(one class label per file)")
    if d.ambiguous not in ("error", "uniform"):
        raise ConfigError(f"{where} ambiguous: expected 'error' or 'uniform', got {d.ambiguous!r}")
    if d.pad not in ("none", "right"):
        raise ConfigError(f"{where} pad: expected 'none' or 'right', got {d.pad!r}")
    if not 0.0 < d.holdout_fraction < 1.0:
        raise ConfigError(f"{where} holdout_fraction: expected 0 < value < 1, got "
                          f"{d.holdout_fraction}")
    if config.classifier.ig_baseline not in ("uniform", "zeros", "shuffled"):
        raise ConfigError(f"{path} [classifier] ig_baseline: expected 'uniform', 'zeros' or "
                          f"'shuffled', got {config.classifier.ig_baseline!r}")
    if not config.generate.models:
        raise ConfigError(f"{path} [generate] models: name at least one model")
    for m in config.evaluate.motifs:
        if m.window and len(m.window) != 2:
            raise ConfigError(f"{path} [evaluate.motifs] {m.name!r} window: expected "
                              f"[first, last], got {list(m.window)}")
    return config


# ---------------------------------------------------------------- data
def read_labelled(config: SequenceConfig) -> tuple[list[str], list[str], list[str], list[str]]:
    """Names, sequences, class labels and the ordered class list of ``[data]``."""
    from biojax.generative.sequences import read_csv, read_fasta

    d = config.data
    names, seqs, labels, classes = [], [], [], []
    for i, path in enumerate(d.files):
        if path.lower().endswith(FASTA_EXT):
            n, s = read_fasta(path)
            lab = d.classes[i] if d.classes else os.path.splitext(os.path.basename(path))[0]
            lab = [lab] * len(s)
        elif path.lower().endswith(".csv"):
            n, s, lab = read_csv(path, d.sequence_column, d.label_column or None)
            if lab is None:
                lab = [d.classes[i] if d.classes else "all"] * len(s)
            elif d.classes:
                lab = [d.classes[i]] * len(s)
        else:
            raise DataError(f"{path}: unknown sequence file type (expected "
                            f"{', '.join(FASTA_EXT)} or .csv)")
        names += [f"{os.path.basename(path)}:{x}" for x in n]
        seqs += s
        labels += lab
        classes += [c for c in dict.fromkeys(lab) if c not in classes]
    return names, seqs, labels, classes


def split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices, stratified by class (each class split ``fraction``)."""
    rng = np.random.default_rng([seed, 7])
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = int(round(fraction * len(idx)))
        held.append(idx[:n_held])
        train.append(idx[n_held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def write_fasta(path: str, seqs: list[str], labels: list[str]) -> None:
    """Write ``seqs`` as FASTA records named ``<i>|<label>`` (atomic)."""
    atomic_write_text(path, "".join(f">{i}|{lab}\n{s}\n"
                                    for i, (s, lab) in enumerate(zip(seqs, labels))))


# ---------------------------------------------------------------- evaluation
def evaluate_set(x, held, train, evaluate: EvaluateSection, kmax: int) -> dict:
    """Metrics of one-hot set ``x`` against held-out ``held`` and training ``train``."""
    from biojax.generative import seqmetrics as sm
    from biojax.generative.sequences import gc_content

    out = {"n": int(len(x))}
    out["js_kmer"] = {str(k): sm.js_divergence(sm.kmer_spectrum(x, k), sm.kmer_spectrum(held, k))
                      for k in range(1, kmax + 1)}
    out["gc_content"] = float(np.mean(gc_content(x)))
    out["positional_l1"] = float(np.abs(sm.positional_frequencies(x)
                                        - sm.positional_frequencies(held)).sum(1).mean())
    out["motifs"] = {m.name: sm.motif_hits(x, m.consensus, m.max_mismatches,
                                           tuple(m.window) or None)["rate"]
                     for m in evaluate.motifs}
    nn = sm.nearest_hamming(x, train)
    out["nearest_train_hamming_mean"] = nn["mean"]
    out["exact_copy_fraction"] = nn["exact_copy_fraction"]
    out["diversity"] = sm.diversity(x)
    return out


def run(config_path: str, workdir: str, *, overrides=(), resume: bool = False,
        log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Train, sample, evaluate and report as the config at ``config_path`` says (module
    doc); returns the metrics (also ``workdir/metrics.json``)."""
    config = load_config(config_path, overrides)
    return run_config(config, workdir, resume=resume, log=log, progress=progress)


def run_config(config: SequenceConfig, workdir: str, *, resume: bool = False,
               log: Callable[[str], None] = print, progress: bool = True) -> dict:
    import jax

    from biojax.generative import seqmetrics as sm
    from biojax.generative import seqmodels as smod
    from biojax.generative.sequences import decode, one_hot
    from biojax.generative.trainer import fit, read_metrics

    g, d = config.generate, config.data
    os.makedirs(workdir, exist_ok=True)
    names, seqs, labels, classes = read_labelled(config)
    x = one_hot(seqs, ambiguous=d.ambiguous, pad=None if d.pad == "none" else "right",
                names=names)
    y = smod.check_labels(labels, classes, "[data] classes")
    length = x.shape[1]
    train_idx, held_idx = split(y, d.holdout_fraction, g.seed)
    if len(train_idx) < 2 or len(held_idx) < 2:
        raise DataError(f"[data]: {len(x)} sequences are too few to split into training and "
                        f"held-out sets (holdout_fraction {d.holdout_fraction})")
    x_train, y_train, x_held, y_held = x[train_idx], y[train_idx], x[held_idx], y[held_idx]
    data_digest = _digest(x, y)
    log(f"data: {len(x)} sequences of {length} bp in {len(classes)} class(es) "
        f"({', '.join(f'{c}: {int(np.sum(y == i))}' for i, c in enumerate(classes))}); "
        f"{len(train_idx)} train, {len(held_idx)} held out")
    base = {"data": data_digest, "length": length, "classes": classes}
    metrics: dict = {"data": {"n": int(len(x)), "length": int(length), "classes": classes,
                              "n_train": int(len(train_idx)), "n_heldout": int(len(held_idx)),
                              "files": list(d.files)}}
    budget = g.max_minutes or None

    # real-data yardsticks
    kmax = config.evaluate.kmax
    real = {"split_half_js": {}, "motifs": {}}
    for k in range(1, kmax + 1):
        mean, std = sm.split_half_js(x, k, seed=g.seed)
        real["split_half_js"][str(k)] = {"mean": mean, "std": std}
    real["heldout_vs_train_js"] = {str(k): sm.js_divergence(sm.kmer_spectrum(x_held, k),
                                                            sm.kmer_spectrum(x_train, k))
                                   for k in range(1, kmax + 1)}
    real["heldout"] = evaluate_set(x_held, x_held, x_train, config.evaluate, kmax)
    metrics["real"] = real

    # promoter (class) classifier
    clf = None
    if d.negatives:
        from biojax.generative.sequences import read_fasta

        nn_names, nn_seqs = read_fasta(d.negatives)
        xn = one_hot(nn_seqs, ambiguous=d.ambiguous, names=nn_names,
                     pad=None if d.pad == "none" else "right", length=length)
        n_tr, n_he = split(np.zeros(len(xn), int), d.holdout_fraction, g.seed)
        c = config.classifier
        model = smod.SeqClassifier(1, c.channels, c.hidden)
        state, tx = smod.init_classifier(model, length, c.learning_rate, g.seed)
        xc = np.concatenate([x_train, xn[n_tr]])
        yc = np.r_[np.ones(len(x_train)), np.zeros(len(n_tr))].astype(np.int32)
        step = smod.make_classifier_step(model, tx, xc, yc, c.batch_size)
        state = fit(step, state, c.steps, workdir, "classifier", seed=g.seed,
                    config={**base, "negatives": _digest(xn),
                            **{k: v for k, v in dataclasses.asdict(c).items()
                               if k not in ("steps", "ig_steps", "ig_examples",
                                            "ig_baseline", "ig_shuffles")}},
                    resume=resume, log=log, progress=progress, max_minutes=budget)
        clf = (model, state["params"])
        lp = smod.classifier_logits(model, state["params"], x_held)[:, 0]
        ln = smod.classifier_logits(model, state["params"], xn[n_he])[:, 0]
        acc = float((np.sum(lp > 0) + np.sum(ln <= 0)) / (len(lp) + len(ln)))
        metrics["classifier"] = {
            "heldout_accuracy": acc,
            "heldout_auc": sm.auc(np.r_[lp, ln], np.r_[np.ones(len(lp)), np.zeros(len(ln))]),
            "heldout_promoter_rate": float(np.mean(lp > 0)),
            "heldout_negative_called_promoter": float(np.mean(ln > 0)),
            "n_heldout": [int(len(lp)), int(len(ln))]}
        log(f"classifier: held-out accuracy {acc:.3f}, promoters called promoter "
            f"{np.mean(lp > 0):.3f}")
        metrics["attributions"] = attribution_profile(model, state["params"], x_held,
                                                      c.ig_steps, c.ig_examples, g.seed,
                                                      c.ig_baseline, c.ig_shuffles)
        metrics["classifier"]["training"] = read_metrics(workdir, "classifier")[-1:]

    # generators
    n_samples = g.n_samples or len(x_held)
    sample_labels = (y_held if n_samples == len(x_held) else
                     np.random.default_rng([g.seed, 3]).choice(y_held, n_samples))
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    samples = {}
    metrics["models"] = {}
    for mi, name in enumerate(g.models):
        factory = smod.sequence_generators.get(name)
        options = dict(config.model.get(name, {}))
        gen = factory(length, len(classes), options)
        state = gen.init(g.seed)
        step = gen.make_step(x_train, y_train)
        tag = name.replace(":", "_").replace(".", "_")
        state = fit(step, state, gen.steps, workdir, tag, seed=g.seed,
                    config={**base, "model": name,  # steps may grow on --resume
                            "options": {k: v for k, v in options.items() if k != "steps"}},
                    resume=resume,
                    log=log, progress=progress, max_minutes=budget)
        key = jax.random.fold_in(jax.random.PRNGKey(g.seed), 1_000_003 + mi)
        xs = np.asarray(gen.sample(state, sample_labels, key), np.float32)
        samples[name] = xs
        write_fasta(os.path.join(workdir, "samples", f"{tag}.fasta"), decode(xs),
                    [classes[i] for i in sample_labels])
        m = evaluate_set(xs, x_held, x_train, config.evaluate, kmax)
        m["js_ratio_to_split_half"] = {k: m["js_kmer"][k] / real["split_half_js"][k]["mean"]
                                       for k in m["js_kmer"]}
        if config.evaluate.two_sample_test:
            m["two_sample_test"] = sm.two_sample_test(xs, x_held, seed=g.seed)
        if clf is not None:
            m["classifier_promoter_rate"] = float(np.mean(
                smod.classifier_logits(clf[0], clf[1], xs)[:, 0] > 0))
        m["per_class_motifs"] = per_class_motifs(xs, sample_labels, classes, config.evaluate)
        m["training"] = read_metrics(workdir, tag)[-1:]
        metrics["models"][name] = m
        log(f"{name}: 6-mer JS {m['js_kmer'].get(str(min(6, kmax)), float('nan')):.4f} "
            f"(x{m['js_ratio_to_split_half'].get(str(min(6, kmax)), float('nan')):.2f} of "
            f"split-half), motifs {m['motifs']}, copies {m['exact_copy_fraction']:.4f}")
    metrics["real"]["per_class_motifs"] = per_class_motifs(x_held, y_held, classes,
                                                           config.evaluate)
    if config.evaluate.compare_classes:
        metrics["class_contrast"] = class_contrast(metrics, config.evaluate.compare_classes)
    try:
        from biojax.generative import seqplots

        seqplots.write_all(workdir, metrics, x_held, samples, config.evaluate, log)
    except Exception as exc:  # noqa: BLE001 - plots are a convenience
        log(f"warning: plots not written ({type(exc).__name__}: {exc})")
    metrics["device"] = jax.devices()[0].device_kind
    atomic_write_text(os.path.join(workdir, "metrics.json"),
                      json.dumps(_plain(metrics), indent=2))
    return metrics


def per_class_motifs(x, y, classes, evaluate: EvaluateSection) -> dict:
    """Motif occurrence rate per class (classes with ≥ 1 sequence)."""
    from biojax.generative import seqmetrics as sm

    out = {}
    for i, c in enumerate(classes):
        sel = np.asarray(y) == i
        if sel.any():
            out[c] = {m.name: sm.motif_hits(x[sel], m.consensus, m.max_mismatches,
                                            tuple(m.window) or None)["rate"]
                      for m in evaluate.motifs}
            out[c]["n"] = int(sel.sum())
    return out


def class_contrast(metrics: dict, pair) -> dict:
    """Motif-rate differences between two classes, real held-out and per model."""
    a, b = pair[:2]
    out = {}
    sets = {"real": metrics["real"]["per_class_motifs"],
            **{k: v["per_class_motifs"] for k, v in metrics["models"].items()}}
    for name, per in sets.items():
        if a in per and b in per:
            out[name] = {m: per[a][m] - per[b][m] for m in per[a] if m != "n"}
    return out


def attribution_profile(model, params, x, steps: int, n_examples: int, seed: int,
                        baseline: str = "uniform", n_shuffles: int = 8) -> dict:
    """Integrated gradients of the classifier logit over real sequences ``x``, summed over
    the 4 channels and averaged over up to ``n_examples`` sequences: the profile against
    position (logit units). ``baseline``: "uniform" (0.25 at every position), "zeros"
    (the all-zero input) or "shuffled" (the mean of the attributions against
    ``n_shuffles`` position-shuffled copies of each sequence: same composition, no order;
    the usual choice for sequence models, as a uniform or zero input is far from any real
    sequence)."""
    import jax.numpy as jnp

    from biojax.generative.attributions import (batched_integrated_gradients,
                                                shuffled_baselines)

    rng = np.random.default_rng([seed, 11])
    sub = np.asarray(x, np.float32)[rng.permutation(len(x))[:n_examples]]
    f = lambda s: model.apply({"params": params}, s[None])[0, 0]  # noqa: E731
    logits = np.asarray(jax_apply(model, params, sub))
    if baseline in ("uniform", "zeros"):
        base = jnp.full(sub.shape[1:], 0.25 if baseline == "uniform" else 0.0, jnp.float32)
        per_pos = batched_integrated_gradients(f, sub, base, steps=steps, batch=128).sum(-1)
        logit_base = np.full(len(sub), float(jax_apply(model, params,
                                                       np.asarray(base)[None])[0]))
        label = "uniform 0.25" if baseline == "uniform" else "all zeros"
    elif baseline == "shuffled":
        bases = shuffled_baselines(sub, n_shuffles, seed)
        per_pos = np.zeros(sub.shape[:2], np.float32)
        logit_base = np.zeros(len(sub))
        for b in bases:
            per_pos += batched_integrated_gradients(f, sub, b, steps=steps,
                                                    batch=128).sum(-1) / n_shuffles
            logit_base += jax_apply(model, params, b) / n_shuffles
        label = f"mean over {n_shuffles} position-shuffled copies of each sequence"
    else:
        raise ConfigError(f"[classifier] ig_baseline: expected 'uniform', 'zeros' or "
                          f"'shuffled', got {baseline!r}")
    completeness = float(np.mean(np.abs(per_pos.sum(1) - (logits - logit_base))))
    profile = per_pos.mean(0)
    return {"profile": profile.tolist(), "abs_profile": np.abs(per_pos).mean(0).tolist(),
            "n": int(len(sub)), "steps": int(steps), "baseline": label,
            "completeness_mean_abs_error": completeness,
            "mean_logit_minus_baseline": float(np.mean(logits - logit_base))}


def jax_apply(model, params, x):
    return np.asarray(model.apply({"params": params}, np.asarray(x, np.float32)))[:, 0]


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


__all__ = ["SequenceConfig", "load_config", "run", "run_config", "read_labelled", "split",
           "evaluate_set", "write_fasta", "attribution_profile", "to_dict"]
