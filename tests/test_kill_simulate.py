"""``biojax simulate`` killed with SIGKILL at random moments, then resumed, writes the same
bytes as a run that was never interrupted.

The run is the shipped liquid-argon example (256 atoms, NVE) cut to 4000 steps in chunks
of 20, written as DCD (whose header counts the frames, so it is patched after every
chunk and on resume). An uninterrupted run is timed first; two kills then land at seeded
random delays: one before its first checkpoint appeared, one while its chunks ran
(counted from the moment the killed process's own trajectory passed step 0). After each kill:

- a checkpoint exists → ``--resume`` continues from it;
- no checkpoint yet → the same command without ``--resume`` starts again. This is the
  documented behaviour: the first checkpoint is written before any output file, so a
  run killed before it has left no results to keep (and ``--resume`` there is an error
  saying to start again).

Every time, observables.csv, trajectory.dcd and topology.pdb must equal the
uninterrupted run's byte for byte (summary.json holds timings and is not compared).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "md", "lj_argon_nve.toml")
COMPARED = ("observables.csv", "trajectory.dcd", "topology.pdb")
STEPS, FRAME_EVERY = 4000, 20
DCD_HEADER = 276  # bytes before the first frame (biojax's two title lines)


def command(out, *extra):
    return [sys.executable, "-m", "biojax.cli", "simulate", CONFIG, "--steps", str(STEPS),
            "--set", "chunk_steps=20", "--set", f"frame_every={FRAME_EVERY}", "--set",
            "observe_every=10", "--set", "trajectory_format=dcd", "--set", "plots=false",
            "--out", str(out), *extra]


def finish(argv) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def timed_run(out) -> tuple[float, float, float]:
    """Run to the end; return when the first checkpoint appeared and when the trajectory
    first grew past step 0 and reached its final size (s since the start)."""
    start = time.monotonic()
    log = open(out.parent / f"{out.name}.log", "w")  # not a pipe: it could fill and block
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=log)
    t_checkpoint, samples = None, []
    traj = out / "trajectory.dcd"
    while proc.poll() is None:
        now = time.monotonic() - start
        if t_checkpoint is None and (out / "checkpoint.npz").exists():
            t_checkpoint = now
        if traj.exists():
            samples.append((now, traj.stat().st_size))
        time.sleep(0.05)
    log.close()
    assert proc.returncode == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]
    final = traj.stat().st_size
    frame = (final - DCD_HEADER) // (STEPS // FRAME_EVERY + 1)
    t_run = next(t for t, sz in samples if sz > DCD_HEADER + frame)  # past step 0
    t_done = next(t for t, sz in samples if sz == final)
    assert t_checkpoint is not None and t_checkpoint <= t_run <= t_done
    return t_checkpoint, t_run, t_done


@pytest.mark.slow
def test_sigkill_then_resume_gives_byte_identical_results(tmp_path):
    from biojax.md import checkpoint

    t_checkpoint, t_run, t_done = timed_run(tmp_path / "ref")  # uninterrupted, timed
    reference = {name: (tmp_path / "ref" / name).read_bytes() for name in COMPARED}

    # (after start, s) one kill before the first checkpoint; (after the chunks began, s)
    # one while they run: timed from the moment the killed process's own trajectory grows
    # past step 0, so a slower or faster start (a loaded machine) does not move them
    # out of the run
    frame = (len(reference["trajectory.dcd"]) - DCD_HEADER) // (STEPS // FRAME_EVERY + 1)
    rng = np.random.default_rng(20261130)
    kills = [("start", t) for t in rng.uniform(0.05, 1.0, 1) * t_checkpoint] + \
        [("chunks", t) for t in rng.uniform(0.0, 0.5 * (t_done - t_run), 1)]
    phases = []
    for k in rng.permutation(len(kills)):
        since, delay = kills[k]
        out = tmp_path / f"kill{k}"
        ckpt = out / checkpoint.CHECKPOINT_FILE
        traj = out / "trajectory.dcd"
        proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while since == "chunks" and proc.poll() is None and not (
                traj.exists() and traj.stat().st_size > DCD_HEADER + frame):
            time.sleep(0.01)
        time.sleep(max(delay, 0.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        delay = f"{delay:.2f} s after the {since}"
        if ckpt.exists():
            step = checkpoint.load(str(ckpt))[1]["step"]
            phases.append(f"{delay}: checkpoint at step {step}")
            finish(command(out, "--resume"))
        else:
            phases.append(f"{delay}: no checkpoint, started again")
            finish(command(out))
        for name in COMPARED:
            assert (out / name).read_bytes() == reference[name], (k, name, phases[-1])
    print(f"timeline: checkpoint {t_checkpoint:.2f} s, chunks {t_run:.2f}-{t_done:.2f} s; "
          "kills: " + "; ".join(phases))
    mid = [p for p in phases if "step" in p and "step 0" not in p and f"step {STEPS}" not in p]
    assert mid, phases  # kills landed between chunks, not only before or after the run
