"""Print the issue-#16 must-show table of a promoter generation run (metrics.json).

    python3 summary.py RUN/metrics.json [OLD_RUN/metrics.json]   # second: side by side
"""

import json
import sys


def main(path: str) -> None:
    m = json.load(open(path))
    real = m["real"]
    half = real["split_half_js"]["6"]["mean"]
    rm = real["heldout"]["motifs"]
    print(f"# Promoter generation results ({path.rsplit('/', 2)[-2]})\n")
    print(f"data: {m['data']['n']} promoters, {m['data']['n_train']} train / "
          f"{m['data']['n_heldout']} held out; device {m.get('device')}\n")
    if "classifier" in m:
        c = m["classifier"]
        print(f"promoter classifier: held-out accuracy {c['heldout_accuracy']:.3f} "
              f"(AUC {c['heldout_auc']:.3f}); calls {c['heldout_promoter_rate']:.3f} of "
              f"held-out real promoters and {c['heldout_negative_called_promoter']:.3f} of "
              "held-out non-promoters promoters\n")
    print("| set | 6-mer JS to held-out | ratio to split-half | -10 rate | -35 rate | "
          "exact copies | called promoter | 2-sample AUC | GC |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| real halves (yardstick) | {half:.4f} | 1.00 | {rm['-10']:.3f} | "
          f"{rm['-35']:.3f} | {real['heldout']['exact_copy_fraction']:.4f} | "
          f"{m.get('classifier', {}).get('heldout_promoter_rate', float('nan')):.3f} | 0.5 | "
          f"{real['heldout']['gc_content']:.3f} |")
    for name, g in m["models"].items():
        ts = g.get("two_sample_test", {}).get("auc", float("nan"))
        print(f"| {name} | {g['js_kmer']['6']:.4f} | {g['js_ratio_to_split_half']['6']:.2f} | "
              f"{g['motifs']['-10']:.3f} ({g['motifs']['-10'] / rm['-10'] - 1:+.0%}) | "
              f"{g['motifs']['-35']:.3f} ({g['motifs']['-35'] / rm['-35'] - 1:+.0%}) | "
              f"{g['exact_copy_fraction']:.4f} | "
              f"{g.get('classifier_promoter_rate', float('nan')):.3f} | {ts:.3f} | "
              f"{g['gc_content']:.3f} |")
    if "class_contrast" in m:
        print("\nsigma70 minus sigma24 motif rates (per set):\n")
        for name, d in m["class_contrast"].items():
            print(f"- {name}: " + ", ".join(f"{k} {v:+.3f}" for k, v in d.items()))
        pcm = {"real": real["per_class_motifs"],
               **{k: v["per_class_motifs"] for k, v in m["models"].items()}}
        print("\nper-class motif rates (-10 / -35):\n")
        for name, per in pcm.items():
            print(f"- {name}: " + "; ".join(
                f"{c} {d['-10']:.3f}/{d['-35']:.3f} (n={d['n']})" for c, d in per.items()))
    if "attributions" in m:
        a = m["attributions"]
        prof = a["profile"]
        top = sorted(range(len(prof)), key=lambda i: -prof[i])[:8]
        print(f"\nintegrated gradients ({a['n']} held-out promoters, baseline "
              f"{a['baseline']}, {a['steps']} steps; completeness error "
              f"{a['completeness_mean_abs_error']:.3g} logit): top positions (0-based, TSS "
              f"= 60): {', '.join(f'{i} ({i - 60:+d})' for i in sorted(top))}")
        print("\nprofile (position: mean IG):\n")
        print(" ".join(f"{i}:{v:.3f}" for i, v in enumerate(prof)))


def compare(old_path: str, new_path: str) -> None:
    """Side by side: the issue-#16 targets for the models of two runs (e.g. session 5's
    promoters.toml and session 6's promoters_ar.toml)."""
    runs = {"before": json.load(open(old_path)), "after": json.load(open(new_path))}
    rm = runs["after"]["real"]["heldout"]["motifs"]
    c = runs["after"].get("class_contrast", {}).get("real", {})
    print(f"\n## Side by side ({old_path} -> {new_path})\n")
    print("| model | 6-mer JS ratio (<= 1.5) | -10 vs real | -35 vs real | copies | "
          "called promoter | 2-sample AUC | sigma70-sigma24 -10 / -35 (real "
          f"{c.get('-10', float('nan')):+.3f} / {c.get('-35', float('nan')):+.3f}) |")
    print("|---|---|---|---|---|---|---|---|")
    for tag, m in runs.items():
        for name, g in m["models"].items():
            cc = m.get("class_contrast", {}).get(name, {})
            ts = g.get("two_sample_test", {}).get("auc", float("nan"))
            print(f"| {name} ({tag}) | {g['js_ratio_to_split_half']['6']:.2f} | "
                  f"{g['motifs']['-10'] / rm['-10'] - 1:+.0%} | "
                  f"{g['motifs']['-35'] / rm['-35'] - 1:+.0%} | "
                  f"{g['exact_copy_fraction']:.4f} | "
                  f"{g.get('classifier_promoter_rate', float('nan')):.3f} | {ts:.3f} | "
                  f"{cc.get('-10', float('nan')):+.3f} / {cc.get('-35', float('nan')):+.3f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/generative_promoters/metrics.json")
    if len(sys.argv) > 2:
        compare(sys.argv[2], sys.argv[1])
