"""``biojax run`` (biojax/pipeline.py, biojax/report.py): the quick alanine-dipeptide
pipeline end to end, its report, config errors before any work, skip/rerun on --resume,
and a run killed in the train stage and again in the simulate stage that resumes to the
same results as an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from biojax.core.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "alanine_dipeptide.toml")
STEPS = ["train", "simulate", "analyze", "nve"]


def biojax(*args, **kw):
    return subprocess.run([sys.executable, "-m", "biojax.cli", "run", *map(str, args)],
                          capture_output=True, text=True, timeout=400, **kw)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One uninterrupted quick run (the reference for the other tests)."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    res = biojax(EXAMPLE, "--quick", "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _manifest(out):
    with open(os.path.join(out, "run.json")) as f:
        return json.load(f)


def test_quick_pipeline_end_to_end(quick_run):
    out = quick_run
    m = _manifest(out)
    assert m["steps"] == STEPS
    for name in STEPS:
        rec = m["stages"][name]
        assert rec["status"] == "done" and rec["wall_s"] > 0 and len(rec["hash"]) == 64
    assert len(m["config_hash"]) == 64 and m["quick"] is True
    assert m["versions"]["jax"] and m["versions"]["biojax"]
    assert m["machine"]["device"].startswith("cpu") and m["machine"]["cores"] >= 1
    assert m["seeds"]["train.training.seed"] == 0 and m["seeds"]["simulate.seed"] == 0
    # every step's outputs through its stage, in its own folder
    assert os.path.isfile(out / "train" / "model" / "potential.json")
    assert len(list((out / "simulate").glob("replica_*/trajectory.extxyz"))) == 4
    assert os.path.isfile(out / "analyze" / "summary.json")
    assert os.path.isfile(out / "nve" / "observables.csv")
    # the standalone configs: each stage's own loader accepts its file, with the wiring
    from biojax.core import registry

    stages = registry.load(registry.stages)
    sim = stages.get("simulate").load_config(out / "config" / "simulate.toml")
    assert sim.model == str(out / "train" / "model") and sim.replicas == 4
    ana = stages.get("analyze").load_config(out / "config" / "analyze.toml")
    assert ana.trajectory.paths == (str(out / "simulate" / "replica_*" / "trajectory.extxyz"),)
    assert ana.trajectory.frame_interval_fs == pytest.approx(2.5)  # 10 steps × 0.25 fs
    assert stages.get("train").load_config(out / "config" / "train.toml").training.epochs == 2
    # the report: expected sections, numbers and embedded plots
    md = (out / "report.md").read_text()
    for heading in ("## train: trained potential", "## simulate: molecular dynamics",
                    "## analyze: conformational states", "## nve: molecular dynamics (nve)",
                    "## run"):
        assert heading in md, heading
    for text in ("test force MAE", "mean temperature", "energy conservation (NVE)",
                 "| region | population |", "C7eq", "C7ax", "basins visited", "hash",
                 "wall time (s)"):
        assert text in md, text
    for png in ("train/training_curves.png", "train/force_parity.png",
                "simulate/temperature.png", "simulate/energy.png", "analyze/fes.png",
                "analyze/populations.png", "nve/energy.png"):
        assert f"]({png})" in md, png
    html = (out / "report.html").read_text()
    assert "src='data:image/png;base64," in html and "<img" in html
    assert html.count("data:image/png;base64,") == md.count("![")
    assert "src='train/" not in html  # self-contained: no file references
    report = json.loads((out / "report.json").read_text())
    assert report["md"]  # numbers derived from the observables
    # the report's mean temperature is the observables' mean (first 20 % left out)
    import numpy as np

    from biojax.md.output import read_observables

    temps = []
    for rep in sorted((out / "simulate").glob("replica_*")):
        t = read_observables(str(rep))["temperature"]
        temps.append(t[int(0.2 * len(t)):].mean())
    sim_numbers = next(v for k, v in report["md"].items() if k.startswith("simulate"))
    assert sim_numbers["mean_T_K"] == pytest.approx(np.mean(temps), rel=1e-9)


def _bad_config(tmp_path, edit):
    """The example with ``edit`` applied to its text, saved beside the example's data
    paths (relative paths resolve against the example folder)."""
    text = open(EXAMPLE).read()
    path = os.path.join(ROOT, "examples", f".test_pipeline_{os.getpid()}.toml")
    with open(path, "w") as f:
        f.write(edit(text))
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace('stages = ["train", "simulate",', 'stages = ["train", "simulat",'),
     ["[run] stages", "unknown stage 'simulat'"]),
    (lambda t: t.replace('train_file = "data/ala2_xtb.extxyz"',
                         'train_file = "data/missing.extxyz"'),
     ["[train] data.train_file", "file not found", "missing.extxyz"]),
    (lambda t: t.replace('structure = "alanine_dipeptide_starts.extxyz"   #',
                         'structure = "nowhere.pdb"   #'),
     ["[simulate] structure", "file not found"]),
    (lambda t: t.replace("steps = 40000 ", 'steps = "many" '),
     ["[simulate] 'steps'", "expected an integer"]),
    (lambda t: t.replace("epochs = 60", "epochz = 60"),
     ["[train] 'training'", "unknown key(s) 'epochz'"]),
    (lambda t: t.replace("steps = 40000 ", "stepz = 40000 "),
     ["[simulate]", "unknown key(s) 'stepz'"]),
    (lambda t: t.replace("bins = 36", "binz = 36"),
     ["[analyze] 'fes'", "unknown key(s) 'binz'"]),
    (lambda t: t.replace("steps = 10000 ", "stepz = 10000 "),
     ["[nve]", "unknown key(s) 'stepz'"]),
    (lambda t: t + "\n[simulation]\nsteps = 1\n", ["unknown table [simulation]"]),
    (lambda t: t.replace("seed = 0\n", "seed = 0\nsed = 1\n", 1),
     ["[run]", "unknown key(s) 'sed'"]),
])
def test_config_errors_before_any_work(tmp_path, edit, expected):
    from biojax import pipeline

    path = _bad_config(tmp_path, edit)
    out = tmp_path / "never"
    try:
        with pytest.raises(ConfigError) as err:
            pipeline.run(path, out, progress=False)
    finally:
        os.remove(path)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))
    assert os.path.basename(path) in str(err.value)
    assert not out.exists()  # nothing was started


def test_cli_config_error_is_one_line(tmp_path):
    path = _bad_config(tmp_path, lambda t: t.replace("bins = 36", "binz = 36"))
    try:
        res = biojax(path, "--out", tmp_path / "never")
    finally:
        os.remove(path)
    assert res.returncode == 1
    assert res.stderr.startswith("biojax run: error:") and "binz" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "never").exists()


def _mtimes(folder):
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_resume_skips_unchanged_and_reruns_changed_with_the_rest(quick_run, tmp_path, capsys):
    from biojax import pipeline

    out = tmp_path / "run"
    shutil.copytree(quick_run, out)  # hashes do not depend on where the run folder is
    before = _mtimes(out)
    pipeline.run(EXAMPLE, out, quick=True, resume=True, progress=False)
    err = capsys.readouterr().err
    for name in STEPS:
        assert f"{name}: unchanged, skipped" in err
    after = _mtimes(out)
    for name in STEPS:  # no output of any step was touched
        assert all(after[p] == t for p, t in before.items() if f"/{name}/" in p)
    # without --resume an existing run is refused
    with pytest.raises(ConfigError, match="--resume"):
        pipeline.run(EXAMPLE, out, quick=True, progress=False)
    # a changed analyze step reruns, and the nve step after it; train and simulate do not
    pipeline.run(EXAMPLE, out, quick=True, resume=True, progress=False,
                 overrides=["analyze.cluster.k=2"])
    err = capsys.readouterr().err
    assert "train: unchanged, skipped" in err
    assert "simulate: unchanged, skipped" in err
    assert "analyze (analyze): running (changed)" in err
    assert "nve (simulate): running (changed)" in err
    summary = json.loads((out / "analyze" / "summary.json").read_text())
    assert summary["clustering"]["n_states"] == 2
    m = _manifest(out)
    assert m["stages"]["analyze"]["hash"] != _manifest(quick_run)["stages"]["analyze"]["hash"]
    assert m["stages"]["train"] == _manifest(quick_run)["stages"]["train"]
    # the rerun nve step is the same computation: same observables as the first run
    assert (out / "nve" / "observables.csv").read_bytes() == \
        (quick_run / "nve" / "observables.csv").read_bytes()


def _wait(predicate, proc, timeout=300.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _status(out, name):
    try:
        return _manifest(out)["stages"].get(name, {}).get("status")
    except (OSError, json.JSONDecodeError):
        return None


@pytest.mark.slow
def test_killed_in_train_and_simulate_resumes_to_the_same_results(quick_run, tmp_path):
    """SIGKILL after the train stage's first checkpoint, resume; SIGKILL after the
    simulate stage's first chunk, resume; the results equal the uninterrupted run's."""
    out = tmp_path / "run"
    only_two = ["--set", 'run.stages=["train", "simulate"]']
    args = [sys.executable, "-m", "biojax.cli", "run", EXAMPLE, "--quick", "--out", str(out),
            "--quiet", *only_two]

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = _wait(lambda: (out / "train" / "checkpoint.msgpack").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ok, "train never wrote a checkpoint"
    assert _status(out, "train") == "running"  # killed inside the train stage

    proc = subprocess.Popen(args + ["--resume"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = out / "simulate" / "replica_000" / "observables.csv"

    def one_chunk():  # the first chunk's rows are written (header + step 0 + 10 rows)
        try:
            return sum(1 for _ in open(first)) > 3
        except OSError:
            return False

    ok = _wait(one_chunk, proc)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert ok, err[-3000:]
    assert "train (train): resuming" in err
    assert _status(out, "train") == "done" and _status(out, "simulate") == "running"

    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "train: unchanged, skipped" in res.stderr
    assert "simulate (simulate): resuming" in res.stderr

    ref = quick_run
    for rel in ["train/model/params.msgpack", "train/model/potential.json",
                *[f"simulate/replica_{r:03d}/{f}" for r in range(4)
                  for f in ("observables.csv", "trajectory.extxyz")]]:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    metrics = [json.loads((d / "train" / "metrics.json").read_text()) for d in (out, ref)]
    for m in metrics:
        for key in ("training_seconds", "configurations_per_second"):
            m.pop(key)
    assert metrics[0] == metrics[1]
    m, mr = _manifest(out), _manifest(ref)
    assert m["stages"]["train"]["hash"] == mr["stages"]["train"]["hash"]
    assert m["stages"]["simulate"]["resumed"] is True


def test_report_renders_in_headless_chromium(quick_run):
    """The report as a person sees it: every image of report.html loads in Chromium."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import check_report
    finally:
        sys.path.pop(0)
    if check_report.find_chromium() is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    result = check_report.check_report(str(quick_run / "report.html"))
    assert result["ok"], result["problems"]
    md = (quick_run / "report.md").read_text()
    assert len(result["images"]) == md.count("![") >= 8
    assert all(im["natural_width"] >= 300 for im in result["images"])
