"""SIGKILL ``biojax train`` at 4 seeded random moments; ``--resume`` each to completion and
compare with an uninterrupted run.

Compared byte for byte: ``model/params.msgpack``, ``model/potential.json`` and
``training_curves.png``; compared as records: ``metrics.jsonl`` without its ``seconds``
field and ``metrics.json`` without ``training_seconds`` and
``configurations_per_second`` (wall-clock timings: they depend on when the kill came and
on the machine's load, not on the numbers). ``checkpoint.msgpack`` is not compared: it
records those timings too. ``force_parity.png`` is compared as well (its data and title
are deterministic).

A moment is drawn per run from a seeded generator: "after k lines of metrics.jsonl
(k = 0: during start-up, before the first checkpoint) plus a random delay", so kills land
in start-up, in compilation, mid-epoch, between the checkpoint and the model write, and in
the final writes, not only in the long import phase. The plateau learning-rate schedule
with ``plateau_patience = 1`` makes the schedule's own state (the reduced rate) part of
what a resume must restore.
"""

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

CONFIG = """
[data]
train_file = "{train}"
isolated_atoms = "{isolated}"
n_train = 16
n_valid = 8
seed = 1

[model]
name = "schnet"  # compiles in half the time of PaiNN: the runs are start-up bound
cutoff = 4.0
features = 8
n_interactions = 1

[training]
epochs = {epochs}
batch_size = 4
learning_rate = 1e-2
forces_weight = 100.0
seed = 2
schedule = "plateau"
plateau_patience = 1
plateau_factor = 0.5
"""
EPOCHS = 10
TIMINGS = {"seconds"}
SUMMARY_TIMINGS = {"training_seconds", "configurations_per_second"}


def command(config, out, *extra):
    return [sys.executable, "-m", "biojax.cli", "train", str(config), "--out", str(out),
            "--quiet", *extra]


def records(path):
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in f]


def outcome(run):
    summary = json.loads((run / "metrics.json").read_text())
    return {
        "params": (run / "model" / "params.msgpack").read_bytes(),
        "potential": (run / "model" / "potential.json").read_bytes(),
        "log": records(run / "metrics.jsonl"),
        "summary": {k: v for k, v in summary.items() if k not in SUMMARY_TIMINGS},
        "curves": (run / "training_curves.png").read_bytes(),
        "parity": (run / "force_parity.png").read_bytes(),
    }


def lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_and_resume(config, run, after, delay):
    """Start a run, SIGKILL it ``delay`` s after metrics.jsonl has ``after + 1`` lines
    (``after = 0``: after start, before any line), resume it to completion; returns
    (moment, exit status of the killed run, epochs logged, checkpoint existed, resumed)."""
    proc = subprocess.Popen(command(config, run), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while after and lines(run / "metrics.jsonl") < after + 1 and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = ((after, round(delay, 3)), proc.returncode,
             max(lines(run / "metrics.jsonl") - 1, 0), (run / "checkpoint.msgpack").exists())
    resumed = subprocess.run(command(config, run, "--resume"), capture_output=True, text=True,
                             timeout=300)
    return state, resumed


N_TRIALS = 2  # seeded kill moments (start-up, mid-training), each resumed to completion


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_identical_results(
        tmp_path, ethanol_train, ethanol_isolated):
    from ase.io import read, write

    data = tmp_path / "train.xyz"  # the first 40 frames: reading 1000 costs every start
    write(data, read(ethanol_train, index=":40"))
    config = tmp_path / "kill.toml"
    config.write_text(CONFIG.format(train=data, isolated=ethanol_isolated, epochs=EPOCHS))
    reference = tmp_path / "reference"
    start = time.perf_counter()
    subprocess.run(command(config, reference), check=True, capture_output=True, timeout=300)
    reference_seconds = time.perf_counter() - start
    expected = outcome(reference)
    lrs = [r["learning_rate"] for r in expected["log"][1:]]
    assert len(set(lrs)) > 2, f"the plateau rule never lowered the rate: {lrs}"

    rng = np.random.default_rng(20261130)
    moments = []
    for trial in range(N_TRIALS):
        # trial 0: always during start-up (before the first checkpoint exists); then
        # after a random number of logged epochs, before the last
        after = 0 if trial == 0 else int(rng.integers(1, EPOCHS))
        delay = float(rng.uniform(0.5, 4.0)) if after == 0 else float(rng.uniform(0, 0.05))
        moments.append((after, delay))
    with ThreadPoolExecutor(2) as pool:  # two runs at a time (each is mostly one core)
        results = list(pool.map(lambda i: kill_and_resume(config, tmp_path / f"run{i}",
                                                          *moments[i]), range(N_TRIALS)))
    killed_at = [state for state, _ in results]
    for trial, (state, resumed) in enumerate(results):
        assert resumed.returncode == 0, (state, resumed.stderr[-2000:])
        run = tmp_path / f"run{trial}"
        got = outcome(run)
        for key in expected:
            assert got[key] == expected[key], f"trial {trial} (killed at {state}): {key} differs"
        # nothing left behind: no lock, no temporary files or folders
        assert sorted(p.name for p in run.iterdir()) == sorted(
            p.name for p in reference.iterdir()), trial
    kills = [k for k in killed_at if k[1] == -signal.SIGKILL]
    assert len(kills) == N_TRIALS, killed_at
    assert any(not k[3] for k in kills), "no kill landed before the first checkpoint"
    assert any(0 < k[2] < EPOCHS for k in kills), "no kill landed mid-training"
    print(f"reference run {reference_seconds:.1f} s; kills ((after lines, delay s), status, "
          f"epochs logged, checkpoint): {killed_at}")
