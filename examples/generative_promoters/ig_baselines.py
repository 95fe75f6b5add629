"""Integrated gradients of the promoter classifier against three baselines, side by side.

    python3 examples/generative_promoters/ig_baselines.py RUN_DIR [--examples 600]

RUN_DIR: a finished ``biojax generate promoters*.toml`` run (its classifier checkpoint is
read; nothing is trained). For each baseline (uniform 0.25, all zeros, the mean over 8
position-shuffled copies of each sequence) it prints the mean |IG| and the signed mean IG
in the −35 box (0-based start positions 24–30), the −10 box (48–54), around the TSS
(58–61) and elsewhere, the completeness error, and the positional base frequencies at
the TSS in promoters vs non-promoters (why the classifier looks there). Writes
RUN_DIR/ig_baselines.json (atomic).
"""

import argparse
import json
import os
import sys

import numpy as np

WINDOWS = {"-35 (24-30)": range(24, 31), "-10 (48-54)": range(48, 55),
           "TSS (58-61)": range(58, 62)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__),
                                                     "promoters.toml"))
    ap.add_argument("--examples", type=int, default=600)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--shuffles", type=int, default=8)
    a = ap.parse_args(argv)

    from biojax.core.atomic import atomic_write_text
    from biojax.generative import seqmodels as smod
    from biojax.generative import seqrun
    from biojax.generative.sequences import one_hot, read_fasta
    from biojax.generative.trainer import load_checkpoint

    cfg = seqrun.load_config(a.config)
    names, seqs, labels, classes = seqrun.read_labelled(cfg)
    x = one_hot(seqs)
    y = smod.check_labels(labels, classes)
    _, held = seqrun.split(y, cfg.data.holdout_fraction, cfg.generate.seed)
    c = cfg.classifier
    model = smod.SeqClassifier(1, c.channels, c.hidden)
    state, _ = smod.init_classifier(model, x.shape[1], c.learning_rate, cfg.generate.seed)
    state, prog = load_checkpoint(os.path.join(a.run_dir, "classifier.checkpoint.msgpack"),
                                  state)
    out = {"run_dir": a.run_dir, "classifier_step": prog["step"], "n": a.examples,
           "steps": a.steps, "baselines": {}}
    background = [i for i in range(x.shape[1]) if not any(i in w for w in WINDOWS.values())]
    for b in ("uniform", "zeros", "shuffled"):
        prof = seqrun.attribution_profile(model, state["params"], x[held], a.steps,
                                          a.examples, cfg.generate.seed, b, a.shuffles)
        absp, sig = np.array(prof["abs_profile"]), np.array(prof["profile"])
        row = {"baseline": prof["baseline"],
               "completeness_mean_abs_error": prof["completeness_mean_abs_error"],
               "mean_logit_minus_baseline": prof["mean_logit_minus_baseline"],
               "abs": {k: float(absp[list(w)].mean()) for k, w in WINDOWS.items()},
               "signed": {k: float(sig[list(w)].mean()) for k, w in WINDOWS.items()},
               "top10_abs": [int(i) for i in np.argsort(-absp)[:10]],
               "top10_signed": [int(i) for i in np.argsort(-sig)[:10]],
               "profile": prof["profile"], "abs_profile": prof["abs_profile"]}
        row["abs"]["other"] = float(absp[background].mean())
        row["signed"]["other"] = float(sig[background].mean())
        out["baselines"][b] = row
        print(f"{b:9s} |IG| " + ", ".join(f"{k} {v:.3f}" for k, v in row["abs"].items())
              + " | signed " + ", ".join(f"{k} {v:+.3f}" for k, v in row["signed"].items())
              + f" | completeness {row['completeness_mean_abs_error']:.3f} of gap "
              f"{row['mean_logit_minus_baseline']:.2f}; top |IG| {row['top10_abs']}",
              flush=True)
    # base composition at the TSS: promoters vs non-promoters
    _, neg = read_fasta(cfg.data.negatives)
    xn = one_hot(neg)
    freq = {}
    for i in (58, 59, 60, 61):
        freq[str(i)] = {"promoters": dict(zip("ACGT", x[:, i].mean(0).round(3).tolist())),
                        "non_promoters": dict(zip("ACGT", xn[:, i].mean(0).round(3).tolist()))}
        print(f"position {i}: promoters {freq[str(i)]['promoters']}, non-promoters "
              f"{freq[str(i)]['non_promoters']}")
    out["tss_base_frequencies"] = freq
    atomic_write_text(os.path.join(a.run_dir, "ig_baselines.json"), json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
