"""Several devices and processes (biojax.parallel): sharded MD replicas and data-parallel
training give the numbers of one device, on 4 forced CPU devices and on two processes
joined by jax.distributed (gloo collectives); bad device settings get clear errors.

XLA_FLAGS and jax.distributed must be set before JAX starts, so the cases run in fresh
processes (tests/parallel_worker.py) and this file compares what they write."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from biojax.core.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "parallel_worker.py")
TIMEOUT = 600


def _env(n_devices: int) -> dict:
    env = dict(os.environ)
    # forced host devices share the 2 CI cores with another test worker: the in-process
    # all-reduce may wait longer for all its participants than XLA's default 40 s
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={n_devices} "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=600 "
                        "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120")
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("BIOJAX_COORDINATOR", None)
    return env


def _check(proc: subprocess.Popen, output: str, what: str):
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{output[-4000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_all(jobs: dict, tmp) -> None:
    """Start every job {name: (argv, n_devices)} at once (they share the cores), wait
    for all; one that fails stops the others (a lone process of a distributed pair would
    wait for its peer until JAX's timeout) and fails the test with its output."""
    procs, logs = {}, {}
    try:
        for name, (argv, n) in jobs.items():
            logs[name] = open(tmp / f"{name}.log", "w")
            procs[name] = subprocess.Popen([sys.executable, WORKER] + argv, env=_env(n),
                                           stdout=logs[name], stderr=subprocess.STDOUT,
                                           cwd=str(tmp))
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in procs.values()):
            failed = [k for k, p in procs.items() if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs.values():
            log.close()
    for name, p in procs.items():
        _check(p, (tmp / f"{name}.log").read_text(), name)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Three worker processes, run side by side: one with 4 forced CPU devices (MD on 1
    and 4 devices, a run killed on 4 devices and resumed on 1, training on 1 and 4
    devices, the error cases), and two with 2 devices each, joined by jax.distributed on
    localhost, running the MD and training cases on all 4 devices."""
    tmp = tmp_path_factory.mktemp("parallel")
    address = f"127.0.0.1:{_free_port()}"
    (tmp / "four").mkdir()
    jobs = {"four": (["all", str(tmp / "four.json"), "--devices", "1", "4",
                      "--work", str(tmp / "four"), "--resume-dir", str(tmp / "resumed")], 4)}
    for pid in range(2):
        jobs[f"p{pid}"] = (["both", str(tmp / f"p{pid}.json"), "--devices", "all",
                            "--dist", address, "2", str(pid), "--out-dir", str(tmp / "md"),
                            "--work", str(tmp)], 2)
    _run_all(jobs, tmp)
    return tmp, {name: json.loads((tmp / f"{name}.json").read_text()) for name in jobs}


@pytest.fixture(scope="module")
def four_devices(results):
    return results[1]["four"]


@pytest.fixture(scope="module")
def two_processes(results):
    return results[0], [results[1]["p0"], results[1]["p1"]]


def _params_close(a, b, rtol=1e-5, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_sharded_replicas_equal_one_device(four_devices):
    """8 Langevin replicas of Ar13, 300 steps: 2 replicas on each of 4 devices give the
    positions of all 8 on one device bit for bit (every device runs the same per-replica
    program; nothing is reduced across devices); a run killed after one chunk on 4
    devices and resumed on 1 ends at the same positions."""
    one, four = four_devices["md_1"], four_devices["md_4"]
    assert (one["devices"], four["devices"]) == (1, 4)
    a, b = np.asarray(one["position"]), np.asarray(four["position"])
    assert a.shape == (8, 13, 3)
    assert np.ptp(a[:, 0], axis=0).max() > 0.1  # the replicas differ (their own seeds)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(four_devices["md_resumed"]["position"]), a)


def test_data_parallel_training_equals_one_device(four_devices):
    """One epoch (2 steps of 8 ethanol frames, SchNet) on 4 devices: the same training
    loss, validation errors and parameters as on one device (float32 sums in another
    order: parameters to 1e-5 relative)."""
    one, four = four_devices["train_1"], four_devices["train_4"]
    log1 = [json.loads(x) for x in one["log"].splitlines()]
    log4 = [json.loads(x) for x in four["log"].splitlines()]
    assert log1[1]["train_loss"] == pytest.approx(log4[1]["train_loss"], rel=1e-5)
    assert log1[1]["valid_loss"] == pytest.approx(log4[1]["valid_loss"], rel=1e-5)
    assert log1[1]["valid_loss"] < log1[0]["valid_loss"]  # it trained
    _params_close(one["params"], four["params"])


def test_bad_device_settings_are_clear_errors(four_devices):
    assert "replicas = 6 cannot be split evenly over 4 devices" in four_devices["md_all_6"]
    assert "devices = 8 but only 4 cpu device(s)" in four_devices["md_8_of_4"]
    assert "batch_size = 6 cannot be split evenly over 4 devices" in \
        four_devices["train_batch_6"]


def test_bad_settings_in_process():
    from biojax import parallel
    from biojax.md.config import default_config

    with pytest.raises(ConfigError, match="replicas = 3 cannot be split evenly over devices = 2"):
        default_config(replicas=3, devices=2)
    with pytest.raises(ConfigError, match="devices"):
        default_config(devices=0)
    with pytest.raises(ConfigError, match="process_id must be in 0..1"):
        parallel.initialize("127.0.0.1:1", 2, 5)
    with pytest.raises(ConfigError, match="coordinator"):
        parallel.initialize(num_processes=2, process_id=0)


def test_two_processes_equal_one(two_processes, four_devices):
    """Two processes × 2 devices (jax.distributed, gloo): MD replicas and a training
    epoch give the single-process numbers on both processes, and only process 0 wrote
    files."""
    tmp, (p0, p1) = two_processes
    for r, pid in ((p0, 0), (p1, 1)):
        assert (r["process"], r["n_devices"], r["local_devices"]) == (pid, 4, 2)
        assert r["md_all"]["devices"] == 4 and r["md_all"]["processes"] == 2
        np.testing.assert_array_equal(np.asarray(r["md_all"]["position"]),
                                      np.asarray(four_devices["md_1"]["position"]))
        log = [json.loads(x) for x in p0["train_all"]["log"].splitlines()]
        ref = [json.loads(x) for x in four_devices["train_1"]["log"].splitlines()]
        assert log[1]["train_loss"] == pytest.approx(ref[1]["train_loss"], rel=1e-5)
    _params_close(p0["train_all"]["params"], four_devices["train_1"]["params"])
    assert p1["train_all"]["log"] is None and p1["train_all"]["params"] is None
    assert p1["train_all"]["valid"] == pytest.approx(p0["train_all"]["valid"], rel=1e-5)
    assert p0["md_all"]["last_row"] is not None  # process 0 wrote the trajectory...
    assert p0["md_all"]["last_row"].startswith("300,")
    assert sorted(os.listdir(tmp / "md")) == ["all"]  # ...into one folder, nobody else
