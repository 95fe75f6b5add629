"""Alanine dipeptide: MD reference -> conformation generators -> Boltzmann reweighting,
and attributions of the potential and of a state classifier (issue #16).

    python examples/generative_ala2/run.py            # from the repository root

Runs (skipping a step whose output already exists):
1. ``biojax simulate examples/generative_ala2/md.toml``  -> runs/generative_ala2_md/
2. ``biojax generate examples/generative_ala2/generate.toml --out runs/generative_ala2``
3. ``biojax explain examples/generative_ala2/explain.toml --out runs/generative_ala2_explain``
and prints the numbers the README quotes (results.md beside this file is written from
them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
MD = os.path.join(ROOT, "runs", "generative_ala2_md")
GEN = os.path.join(ROOT, "runs", "generative_ala2")
EXPL = os.path.join(ROOT, "runs", "generative_ala2_explain")


def biojax(*args: str) -> None:
    print("+ biojax", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "biojax.cli", *args], check=True, cwd=ROOT)


def main() -> None:
    if not os.path.exists(os.path.join(MD, "replica_015", "trajectory.extxyz")):
        biojax("simulate", os.path.join(HERE, "md.toml"))
    if not os.path.exists(os.path.join(GEN, "metrics.json")):
        biojax("generate", os.path.join(HERE, "generate.toml"), "--out", GEN, "--quiet")
    if not os.path.exists(os.path.join(EXPL, "explain.json")):
        biojax("explain", os.path.join(HERE, "explain.toml"), "--out", EXPL, "--quiet")
    print(report(json.load(open(os.path.join(GEN, "metrics.json"))),
                 json.load(open(os.path.join(EXPL, "explain.json")))))


def report(m: dict, e: dict) -> str:
    """A markdown summary of the generate and explain results."""
    ref = m["reference"]
    regions = list(ref["populations"])
    lines = [f"MD reference: {m['n_frames']} frames; JS(φ,ψ) between its two halves "
             f"{ref['js_phi_psi_halves']:.3f}; sane bonds {ref['sane_bond_fraction']:.3f}", "",
             "| generator | density | JS(φ,ψ) | JS reweighted | sane bonds | ESS | "
             + " | ".join(f"{r} raw / reweighted" for r in regions) + " |",
             "|---" * (6 + len(regions)) + "|",
             "| MD | | | | | | " + " | ".join(f"{ref['populations'][r]:.3f}"
                                              for r in regions) + " |"]
    for name, g in m["generators"].items():
        pops = " | ".join(f"{g['populations'][r]:.3f} / {g['populations_reweighted'][r]:.3f}"
                          for r in regions)
        lines.append(f"| {name} | {g['density'].split(':')[0].split(' (')[0]} | "
                     f"{g['js_phi_psi']:.3f} | {g['js_phi_psi_reweighted']:.3f} | "
                     f"{g['sane_bond_fraction']:.3f} | {g['ess']:.0f} of {g['n_samples']} | "
                     f"{pops} |")
    lines.append("")
    if "integrated_gradients" in e:
        lines.append(f"per-atom energy decomposition: max |Σ per-atom − total| "
                     f"{e['decomposition_max_error_eV']:.1e} eV")
        for rec in e["integrated_gradients"]:
            lines.append(f"IG of the energy, structure {rec['structure']} vs baseline: "
                         f"ΔE {rec['delta']:+.4f} eV, completeness error "
                         f"{rec['completeness_error']:+.1e} eV (Cartesian path)"
                         + (f", {rec['internal_completeness_error']:+.1e} eV (internal path)"
                            if "internal" in rec else ""))
    st = e.get("states")
    if st:
        order = sorted(range(len(st["ig_share"])), key=lambda i: -st["ig_share"][i])
        top = ", ".join(f"{st['feature_names'][i]} {st['ig_share'][i]:.2f}" for i in order[:6])
        lines.append(f"state classifier: {st['k']} states, held-out accuracy "
                     f"{st['test_accuracy']:.3f}; share of mean |IG|: {top}")
        phipsi = sum(s for n, s in zip(st["feature_names"], st["ig_share"])
                     if n.split()[-1] in ("phi", "psi"))
        lines.append(f"φ/ψ features (4 of {len(st['ig_share'])}) carry {phipsi:.2f} of the "
                     "attribution")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
