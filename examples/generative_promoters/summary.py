"""Print the issue-#16 must-show table of a promoter generation run (metrics.json)."""

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


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/generative_promoters/metrics.json")
