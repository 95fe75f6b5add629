#!/bin/bash
# rMD17 ethanol with the MACE-class recipe on a GPU: two batch sizes side by side, each
# within the wall budget. Usage: examples/recipes/gpu_run.sh OUTDIR BUDGET_S
# Writes OUTDIR/mace_b{8,32}/{metrics.json,metrics.jsonl,train.log} and OUTDIR/summary.txt.
# The training budget is BUDGET_S minus 150 s (the final test on test_MD.xyz and start-up).
set -u
OUT=$1; BUDGET=$2
HERE=$(cd "$(dirname "$0")" && pwd)
MINUTES=$(python3 -c "print(max(0.5, ($BUDGET - 150) / 60))")
mkdir -p "$OUT"
run() {  # name batch learning_rate
  local dir="$OUT/$1"
  timeout $((BUDGET - 5)) python3 -m biojax.cli train "$HERE/ethanol_mace.toml" --out "$dir" \
    --quiet --max-minutes "$MINUTES" --set training.batch_size=$2 \
    --set training.learning_rate=$3 > "$dir.log" 2>&1
  echo "$1 rc=$?" >> "$OUT/summary.txt"
}
run mace_b8 8 5e-3 &
run mace_b32 32 1e-2 &
wait
for d in "$OUT"/mace_b*/; do
  rm -rf "$d"/checkpoint* 2>/dev/null
  python3 - "$d" >> "$OUT/summary.txt" <<'PY'
import json, sys, os
d = sys.argv[1]
try:
    m = json.load(open(os.path.join(d, "metrics.json")))
except OSError:
    print(d, "no metrics.json"); raise SystemExit
test = m.get("test", {})
print(os.path.basename(d.rstrip("/")), "epochs", m.get("epochs_run"), "conf/s",
      m.get("configurations_per_second"), "device", m.get("device"), "test F MAE",
      test.get("forces_mae"), "meV/A, E MAE", test.get("energy_mae"), "meV")
PY
done
cat "$OUT/summary.txt"
