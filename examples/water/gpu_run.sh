#!/usr/bin/env bash
# Liquid water with the committed learned model (examples/water/model) on one accelerator:
# 100 ps of Langevin NVT at 300 K and 100 ps of MTK NPT at 300 K, 1 bar (64 molecules),
# run side by side, then examples/water/analyze.py (O–O g(r) RMSE over 2–8 Å against the
# OpenMM reference, first peak, density mean and 5 block means, blow-up or not, steps/s).
#
#   examples/water/gpu_run.sh OUTDIR BUDGET_S
#
# Run from the repository root (biojax importable, e.g. PYTHONPATH=$PWD). Stops itself
# within BUDGET_S seconds: both MD runs get BUDGET_S minus a reserve for analysis under
# `timeout`; a run cut short keeps every finished chunk (1000 steps) and is analysed as
# far as it got. Writes only small files into OUTDIR: water_md.json, rdf.png, each run's
# observables.csv, summary.json (if it finished), log, plots, and an xz-compressed
# trajectory (one frame per 0.2 ps). Environment overrides (for a tiny local test):
#   WATER_PS (default 100), WATER_DT_FS (default 1.0), WATER_MODEL, WATER_SKIP_PS
#   (default: 10 ps, or a fifth of WATER_PS when that is shorter), WATER_RESERVE_S (60).
set -u
OUT=${1:?usage: gpu_run.sh OUTDIR BUDGET_S}
BUDGET=${2:?usage: gpu_run.sh OUTDIR BUDGET_S}
T_START=$(date +%s)
HERE=examples/water
PS=${WATER_PS:-100}
DT=${WATER_DT_FS:-1.0}
MODEL=${WATER_MODEL:-$HERE/model}
RESERVE=${WATER_RESERVE_S:-60}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/biojax_water_gpu.XXXXXX)

read -r STEPS OBS FRAME CHUNK SKIP <<EOF_
$(python3 - "$PS" "$DT" "${WATER_SKIP_PS:-}" <<'PY'
import sys
ps, dt, skip = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
steps = int(round(ps * 1000 / dt))
obs = max(1, int(round(25 / dt)))            # observables every 25 fs
frame = obs * max(1, int(round(200 / dt / obs)))   # a frame every 0.2 ps
frame = min(frame, obs * max(1, steps // obs))      # (tiny test runs)
chunk = frame * max(1, int(round(min(1000, steps) / frame)))   # ~1000-step chunks
steps = max(chunk, (steps // chunk) * chunk)
skip = float(skip) if skip else min(10.0, ps / 5)
print(steps, obs, frame, chunk, skip)
PY
)
EOF_

MD_S=$((BUDGET - RESERVE - ($(date +%s) - T_START)))
if [ "$MD_S" -lt 20 ]; then MD_S=20; fi
echo "water: $PS ps each at $DT fs ($STEPS steps, chunks of $CHUNK), MD time limit ${MD_S} s, work $WORK"

run_md() {  # name config
    local name=$1 cfg=$2 dir=$WORK/$1
    mkdir -p "$dir"
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=15 "$MD_S" python3 -m biojax.cli simulate "$cfg" \
        --model "$MODEL" --out "$dir" --overwrite --timestep "$DT" --steps "$STEPS" \
        --set observe_every=$OBS --set frame_every=$FRAME --set chunk_steps=$CHUNK \
        > "$dir/run.log" 2>&1
    local rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ] || [ $rc -eq 130 ]; then
        echo "stopped by the time budget after $(( $(date +%s) - t0 )) s (rc $rc)" >> "$dir/run.log"
    fi
    echo "exit code $rc, wall $(( $(date +%s) - t0 )) s" >> "$dir/run.log"
}

run_md nvt "$HERE/nvt.toml" &
P1=$!
run_md npt "$HERE/npt.toml" &
P2=$!
wait $P1 $P2

# analysis (trajectories as far as they got)
RUNS=()
for n in nvt npt; do
    if [ -s "$WORK/$n/observables.csv" ] && [ -s "$WORK/$n/trajectory.extxyz" ]; then RUNS+=("$WORK/$n"); fi
done
if [ ${#RUNS[@]} -gt 0 ]; then
    timeout $(( BUDGET - ($(date +%s) - T_START) - 20 > 10 ? BUDGET - ($(date +%s) - T_START) - 20 : 10 )) \
        python3 $HERE/analyze.py "${RUNS[@]}" --skip-ps "$SKIP" --out "$OUT" > "$OUT/analyze.log" 2>&1 \
        || echo "analysis failed or timed out (see analyze.log)"
else
    echo "no MD output to analyse"
fi

# small files back: logs, observables, summaries, plots, a compressed trajectory
for n in nvt npt; do
    d=$WORK/$n
    [ -d "$d" ] || continue
    mkdir -p "$OUT/$n"
    for f in run.log observables.csv summary.json energy.png temperature.png volume.png pressure.png; do
        [ -f "$d/$f" ] && cp "$d/$f" "$OUT/$n/"
    done
    if [ -f "$d/trajectory.extxyz" ]; then
        timeout 8 xz -T1 -6 -c "$d/trajectory.extxyz" > "$OUT/$n/trajectory.extxyz.xz" \
            || { rm -f "$OUT/$n/trajectory.extxyz.xz"; echo "trajectory of $n not compressed in time: not kept" >> "$OUT/$n/run.log"; }
        if [ "$(stat -c %s "$OUT/$n/trajectory.extxyz.xz")" -gt 9000000 ]; then
            rm -f "$OUT/$n/trajectory.extxyz.xz"
            echo "trajectory of $n over 9 MB compressed: not kept" >> "$OUT/$n/run.log"
        fi
    fi
done
rm -rf "$WORK"

[ -f "$OUT/water_md.json" ] && python3 - "$OUT/water_md.json" <<'PY' || true
import json, sys
for r in json.load(open(sys.argv[1])):
    name = r["folder"].rstrip("/").split("/")[-1]
    dens = (f", density {r['density_g_cm3']:.4f} g/cm3 ({r['density_deviation_percent']:+.2f} %)"
            if "density_g_cm3" in r else "")
    print(f"water {name}: {r['simulated_ps']:.1f} ps, {r['status'][:80]}, "
          f"g_OO RMSE {r.get('rdf_rmse_2_8', float('nan')):.3f}{dens}, "
          f"T {r['temperature_K']:.1f} K, steps/s {r.get('steps_per_s')}")
PY
echo "water: done in $(( $(date +%s) - T_START )) s (budget $BUDGET s), results in $OUT"
