#!/usr/bin/env bash
# Train the promoter VAE and WGAN-GP, sample, evaluate, explain (see README.md).
# Resumable: rerun with --resume after an interruption. Extra arguments go to biojax.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/../../runs/generative_promoters}"
python3 -m biojax.cli generate "$here/promoters.toml" --out "$out" "$@"
python3 "$here/summary.py" "$out/metrics.json" | tee "$here/results.md"
cp "$out"/*.png "$here/" 2>/dev/null || true
