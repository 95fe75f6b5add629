#!/usr/bin/env bash
# Issue #12's active-learning must-show on one GPU, 3 seeds side by side, within a budget:
#   examples/active_learning_ala2/gpu_run.sh OUTDIR BUDGET_S [PROFILE] [SEEDS]
# PROFILE: gpu (default) or tiny (a smoke run of the whole pipeline on a CPU core).
# Per seed: biojax learn (al, flag policy, MD at 300-1000 K, farthest-point selection,
# GFN2-xTB labels in worker processes) up to 300 labels, the random baseline at each of
# al's label counts, MD at 300/600 K with the initial, al and random models. Writes
# OUTDIR/summary.json, OUTDIR/seed_<s>.json, OUTDIR/seed_<s>.log, OUTDIR/learning_curves.png
# (small files only; the runs themselves stay in $WORK under /tmp and are not kept).
set -u
OUT=${1:?usage: gpu_run.sh OUTDIR BUDGET_S [PROFILE] [SEEDS]}
BUDGET=${2:?usage: gpu_run.sh OUTDIR BUDGET_S [PROFILE] [SEEDS]}
PROFILE=${3:-gpu}
SEEDS=${4:-0,1,2}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
T0=$(date +%s)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# the seeds (and each seed's iterations) compile the same training programs: share them
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/biojax_al_xla_cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK=${AL_WORK:-${TMPDIR:-/tmp}/biojax_al_gpu_$$}
PY=${PYTHON:-python3}
missing=$($PY - <<'EOF'
import importlib.util as u
print(" ".join(m for m in ("jax", "flax", "optax", "ase", "tblite", "jax_md", "matplotlib")
               if u.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "active_learning_ala2: missing python packages: $missing" | tee "$OUT/missing.txt"
  wheels=$(echo "$missing" | sed 's/matplotlib//; s/jax_md/jax-md/')  # no matplotlib wheel: PNG skipped
  if [ -d "$ROOT/.whl" ] && [ -n "${wheels// /}" ]; then  # the wheels brought along (no internet)
    $PY -m pip install -q --no-index --find-links "$ROOT/.whl" $wheels 2>&1 | tail -3
  fi
fi
$PY -c "import jax; print('active_learning_ala2: jax', jax.__version__, jax.devices())"
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
$PY "$HERE/run.py" suite --profile "$PROFILE" --seeds "$SEEDS" --budget-s "$LEFT" \
    --work "$WORK" --out "$OUT" > "$OUT/suite.log" 2>&1
rc=$?
tail -n 12 "$OUT/suite.log"
echo "active_learning_ala2: rc $rc, $(( $(date +%s) - T0 )) s of $BUDGET s; results in $OUT"
rm -rf "$WORK"
exit $rc
