"""biojax bench: the suite harness on its smallest sizes, failures and timeouts reported
while the rest completes, --compare of two committed results files, and bad CLI input.
Speed is never asserted."""

import json
import os

import pytest

from biojax.bench.report import compare, primary
from biojax.bench.suite import run_suite
from biojax.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "bench")


def _positive_numbers(run):
    key, value = primary(run["result"])
    assert key is not None and value > 0, run
    return key


@pytest.mark.slow  # eight JAX child processes, each importing and compiling: ~100 s of CPU
def test_smoke_suite_runs_every_workload(tmp_path):
    out = tmp_path / "bench"
    results = run_suite("smoke", str(out), log=lambda msg: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "complete" and saved["suite"] == "smoke"
    for key in ("machine", "started", "finished", "loadavg_before", "loadavg_after",
                "settings", "workloads"):
        assert key in saved, key
    jax_info = saved["machine"]["jax"]
    assert jax_info["device_count"] >= 1 and jax_info["platform"] and jax_info["jaxlib"]
    assert saved["machine"]["host"]["cpu_model"] and saved["machine"]["host"]["hostname"]
    assert set(saved["workloads"]) == {"lj", "learned_md", "training", "precision"}
    for name, w in saved["workloads"].items():
        assert w["status"] == "ok", (name, [r.get("error") for r in w["runs"]])
        assert w["config"], name
        ok = [r for r in w["runs"] if r["status"] == "ok"]
        assert ok, name
        for r in ok:
            _positive_numbers(r)
            assert r["result"]["first_call_s"] > 0 and len(r["result"]["sample_seconds"]) >= 3
            assert r["result"]["peak_rss_mb"] > 0
        for r in w["runs"]:
            assert r["status"] in ("ok", "not installed"), r
    engines = {r["engine"] for r in saved["workloads"]["lj"]["runs"]}
    assert {"biojax", "jax-md", "openmm-cpu", "openmm-cuda"} <= engines
    lj = {r["engine"]: r for r in saved["workloads"]["lj"]["runs"]}
    assert lj["biojax"]["result"]["atoms"] == lj["jax-md"]["result"]["atoms"] == 256
    learned = saved["workloads"]["learned_md"]["runs"]
    archs = {r["params"]["architecture"] for r in learned if r["engine"] == "biojax"}
    assert {"painn", "schnet"} <= archs
    assert any(r["engine"] == "ase" and r["status"] == "ok" for r in learned)
    precision = {r["params"]["precision"]: r for r in saved["workloads"]["precision"]["runs"]}
    assert precision["float64"]["result"]["dtype"] == "float64"
    assert precision["float32"]["result"]["dtype"] == "float32"
    md = (out / "results.md").read_text()
    assert "Lennard-Jones" in md and "Device: " in md and "biojax / jax-md" in md
    assert (out / "lj_scaling.png").stat().st_size > 0
    assert results["workloads"].keys() == saved["workloads"].keys()


def test_failing_and_hanging_workloads_are_reported_and_the_rest_completes(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "bench"
    only = "bench_workloads:broken,bench_workloads:hangs,bench_workloads:fine"
    lines = []
    run_suite("quick", str(out), only=only, timeout_s=8, log=lines.append)
    saved = json.loads((out / "results.json").read_text())
    w = saved["workloads"]
    assert w["bench_workloads:broken"]["status"] == "failed"
    run = w["bench_workloads:broken"]["runs"][0]
    assert "deliberately broken workload (suite quick)" in run["error"]
    assert any("RuntimeError" in line for line in run["traceback"])
    assert w["bench_workloads:hangs"]["runs"][0]["status"] == "timeout"
    assert "timed out after 8 s" in w["bench_workloads:hangs"]["runs"][0]["error"]
    assert w["bench_workloads:fine"]["status"] == "ok"
    assert w["bench_workloads:fine"]["runs"][0]["result"]["items_per_s"] > 0
    assert saved["status"] == "complete"
    md = (out / "results.md").read_text()
    assert "deliberately broken" in md and "timeout" in md
    assert any("[3/3]" in line and "ETA" in line for line in lines)


def test_compare_renders_two_committed_results(tmp_path):
    """smoke_a.json and smoke_b.json are two smoke-suite runs on the development CPU; in
    smoke_b the training workload failed (a bug fixed since), so failed cells show too."""
    a, b = os.path.join(DATA, "smoke_a.json"), os.path.join(DATA, "smoke_b.json")
    written = compare([a, b], str(tmp_path))
    text = (tmp_path / "compare.md").read_text()
    assert "| engine | case | file 1 | file 2 | 2 / 1 |" in text
    assert "| biojax | 256 atoms (atom steps per s) |" in text
    first = json.load(open(a))["workloads"]["lj"]["runs"][0]["result"]["atom_steps_per_s"]
    assert f"{first:.3g}" in text
    pngs = [p for p in written if p.endswith(".png")]
    assert pngs and all(os.path.getsize(p) > 0 for p in pngs)
    assert main(["bench", "--compare", a, b, "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "compare.md").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--suite", "huge"], "unknown suite; choose one of smoke, quick, standard, full"),
    (["--only", "lj,nosuch"], "unknown workload(s) 'nosuch'"),
    (["--compare", "MISSING.json", "MISSING2.json"], "MISSING.json: no such file"),
    (["--compare", "BAD.json", "BAD.json"], "BAD.json: not a JSON results file"),
    (["--compare", "OTHER.json", "OTHER.json"], "not a biojax bench results file"),
    (["--compare", "OTHER.json"], "needs two or more results files"),
    (["--timeout", "0"], "--timeout must be > 0"),
])
def test_bad_cli_input_is_a_clear_error(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD.json").write_text("{not json")
    (tmp_path / "OTHER.json").write_text(json.dumps({"rows": []}))
    assert main(["bench", *argv, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("biojax bench: error: ") and expected in err
    assert not (tmp_path / "o" / "results.json").exists()
