"""Benchmark reports: ``results.md`` tables (absolute numbers, ratios to peers, the device
line), plots (matplotlib, Agg), and ``--compare`` of two or more results files side by
side. Every file is written atomically."""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict

from biojax.bench.machine import device_line
from biojax.core.atomic import atomic_path, atomic_write_text
from biojax.core.errors import ConfigError

METRICS = ("atom_steps_per_s", "configurations_per_s")


def _g(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, (int, float)):
        return f"{x:.{digits}g}"
    return str(x)


def primary(result: dict) -> tuple[str, float] | tuple[None, None]:
    """The headline number of a case result: atom-steps/s, configurations/s, or its
    first positive number."""
    for key in METRICS:
        if isinstance(result.get(key), (int, float)):
            return key, float(result[key])
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return key, float(value)
    return None, None


def _cell(rec: dict | None, key: str = "atom_steps_per_s", spread: bool = False) -> str:
    if rec is None:
        return "—"
    if rec["status"] != "ok":
        return rec["status"]
    value = rec["result"].get(key)
    text = _g(value)
    if spread and rec["result"].get("spread") is not None:
        text += f" (±{100 * rec['result']['spread'] / 2:.0f}%)"
    return text


def _ratio(a: dict | None, b: dict | None, key: str = "atom_steps_per_s") -> str:
    if not a or not b or a["status"] != "ok" or b["status"] != "ok":
        return "—"
    x, y = a["result"].get(key), b["result"].get(key)
    return f"{x / y:.2f}" if x and y else "—"


def _mem(rec: dict | None) -> str:
    if not rec or rec["status"] != "ok":
        return "—"
    r = rec["result"]
    if r.get("peak_device_mb") is not None:
        return f"{r['peak_device_mb']:.0f} (device)"
    return f"{r.get('peak_rss_mb', float('nan')):.0f} (RSS)"


def _by(runs: list[dict], engine: str) -> OrderedDict:
    return OrderedDict((r["label"], r) for r in runs if r["engine"] == engine)


# ====================================================================== results.md
def _lj_table(w: dict) -> list[str]:
    runs = w["runs"]
    engines = ["biojax", "jax-md", "openmm-cpu", "openmm-cuda"]
    by = {e: _by(runs, e) for e in engines}
    lines = ["| atoms | biojax atom-steps/s | ns/day | raw jax-md | OpenMM CPU | OpenMM CUDA | "
             "biojax / jax-md | biojax / OpenMM CPU | biojax / OpenMM CUDA | compile (s) | "
             "peak memory (MB) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, b in by["biojax"].items():
        j, oc, og = (by[e].get(label) for e in engines[1:])
        lines.append(f"| {label.split()[0]} | {_cell(b, spread=True)} | "
                     f"{_cell(b, 'ns_per_day')} | {_cell(j)} | {_cell(oc)} | {_cell(og)} | "
                     f"{_ratio(b, j)} | {_ratio(b, oc)} | {_ratio(b, og)} | "
                     f"{_cell(b, 'compile_s')} | {_mem(b)} |")
    lines += ["", "Published point for reference (another machine): jax-md's LJ benchmark at "
              "64,000 particles on one A100, about 2.9e7 atom-steps/s."]
    return lines


def _learned_tables(w: dict) -> list[str]:
    runs = w["runs"]
    ours = [r for r in runs if r["engine"].startswith("biojax")]
    lines = ["| architecture (parameters) | system | atoms × replicas | atom-steps/s | "
             "ns/day per replica | aggregate ns/day | compile (s) | peak memory (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in ours:
        res = r.get("result", {})
        arch = r["params"].get("architecture")
        lines.append(f"| {arch} ({_g(res.get('parameters'), 6)}) | {r['label']} | "
                     f"{_g(res.get('atoms'))} × {r['params'].get('replicas', 1)} | "
                     f"{_cell(r, spread=True)} | {_cell(r, 'ns_per_day')} | "
                     f"{_cell(r, 'aggregate_ns_per_day')} | {_cell(r, 'compile_s')} | "
                     f"{_mem(r)} |")
    peers = [r for r in runs if r["engine"] in ("ase", "mlip")]
    if peers:
        lines += ["", "Peers on the same systems (biojax: the same architecture, or the "
                  "biojax architecture nearest in parameter count for mlip):", "",
                  "| peer | model (parameters) | system | peer atom-steps/s | biojax model "
                  "(parameters) | biojax atom-steps/s | biojax / peer |",
                  "|---|---|---|---:|---|---:|---:|"]
        for p in peers:
            res = p.get("result", {})
            system, size = p["params"].get("system", "cu"), p["params"].get("size")
            cands = [r for r in ours if r["status"] == "ok" and r["params"].get("system") == system
                     and r["params"].get("size") == size and r["params"].get("replicas", 1) == 1]
            if p["engine"] == "ase":
                cands = [r for r in cands if r["params"]["architecture"] ==
                         p["params"]["architecture"]]
                model = p["params"]["architecture"]
            else:
                model = p["params"].get("model")
                n = res.get("parameters")
                if n:
                    cands.sort(key=lambda r: abs(math.log(r["result"]["parameters"] / n)))
            b = cands[0] if cands else None
            lines.append(f"| {p['engine']} | {model} ({_g(res.get('parameters'), 6)}) | "
                         f"{p['label']} | {_cell(p)} | "
                         f"{b['params']['architecture'] if b else '—'} "
                         f"({_g(b['result'].get('parameters'), 6) if b else '—'}) | "
                         f"{_cell(b)} | {_ratio(b, p)} |")
        versions = sorted({f"mlip {p['result'].get('mlip_version')} on jax "
                           f"{p['result'].get('jax')}" for p in peers
                           if p["engine"] == "mlip" and p["status"] == "ok"})
        if versions:
            lines += ["", f"mlip ran in its own virtual environment ({', '.join(versions)}), "
                      "NVT-Langevin through its jax-md engine, 1 fs."]
    lines += ["", "Published point for reference (another machine and system): mlip's MACE "
              "on a 1,205-atom protein on one H100, 19.2 ms/step."]
    return lines


def _training_table(w: dict) -> list[str]:
    lines = ["| architecture | batch size | configurations/s | compile (s) | parameters | "
             "peak memory (MB) |", "|---|---:|---:|---:|---:|---:|"]
    for r in w["runs"]:
        res = r.get("result", {})
        lines.append(f"| {r['params'].get('architecture')} | {r['params'].get('batch_size')} | "
                     f"{_cell(r, 'configurations_per_s', spread=True)} | "
                     f"{_cell(r, 'compile_s')} | {_g(res.get('parameters'), 6)} | {_mem(r)} |")
    return lines


def _precision_table(w: dict) -> list[str]:
    pairs: OrderedDict = OrderedDict()
    for r in w["runs"]:
        key = r["label"].rsplit(" ", 1)[0]
        pairs.setdefault(key, {})[r["params"].get("precision", "float32")] = r
    lines = ["| case | float32 atom-steps/s | float64 atom-steps/s | float64 / float32 | "
             "compile f32 / f64 (s) | peak memory f32 / f64 (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, p in pairs.items():
        a, b = p.get("float32"), p.get("float64")
        lines.append(f"| {key} | {_cell(a, spread=True)} | {_cell(b, spread=True)} | "
                     f"{_ratio(b, a)} | {_cell(a, 'compile_s')} / {_cell(b, 'compile_s')} | "
                     f"{_mem(a)} / {_mem(b)} |")
    return lines


def _generic_table(w: dict) -> list[str]:
    lines = ["| engine | case | status | headline | value |", "|---|---|---|---|---:|"]
    for r in w["runs"]:
        key, value = primary(r.get("result", {})) if r["status"] == "ok" else (None, None)
        lines.append(f"| {r['engine']} | {r['label']} | {r['status']} | {key or '—'} | "
                     f"{_g(value)} |")
    return lines


TABLES = {"lj": ("Lennard-Jones MD (argon, NVE 2 fs)", _lj_table),
          "learned_md": ("Learned-potential MD (random weights, Langevin 1 fs)",
                         _learned_tables),
          "training": ("Training throughput (alanine dipeptide, ala2_xtb.extxyz)",
                       _training_table),
          "precision": ("float32 against float64", _precision_table)}


def markdown(results: dict) -> str:
    """results.md: the device line, then a table per workload, then every failure."""
    m = results.get("machine", {})
    j = m.get("jax", {})
    lines = [f"# biojax bench: suite {results.get('suite')}", "",
             f"Device: {device_line(m)} (jaxlib {j.get('jaxlib', '?')}). Started "
             f"{results.get('started')}, {results.get('elapsed_s', '?')} s; load average "
             f"{_load(results.get('loadavg_before'))} before, "
             f"{_load(results.get('loadavg_after'))} after.", "",
             "Each rate is the median of the timed samples after a compiling first call "
             "(± half the min–max spread); compile = first call minus one steady call; "
             "memory is the device's peak where JAX reports it, else the process peak RSS.",
             ""]
    for name, w in results.get("workloads", {}).items():
        title, table = TABLES.get(name, (name, _generic_table))
        lines += [f"## {title} — {w.get('status')}", ""]
        try:
            lines += table(w)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            lines += [f"(table failed: {exc})", ""] + _generic_table(w)
        lines.append("")
    bad = [r for w in results.get("workloads", {}).values() for r in w.get("runs", [])
           if r["status"] != "ok"]
    if bad:
        lines += ["## Not run or failed", ""]
        for r in bad:
            lines.append(f"- {r['workload']}/{r['engine']} {r['label']}: **{r['status']}** — "
                         f"{(r.get('error') or '').splitlines()[0] if r.get('error') else ''}")
        lines.append("")
    return "\n".join(lines)


def _load(x) -> str:
    return f"{x[0]:.1f}" if x else "?"


# ====================================================================== plots
def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _series(runs, engine_filter, x_of) -> dict:
    series: dict = OrderedDict()
    for r in runs:
        if r["status"] != "ok" or not engine_filter(r):
            continue
        key, value = primary(r["result"])
        x = x_of(r)
        if value is not None and x is not None:
            series.setdefault(r["engine"], ([], []))
            series[r["engine"]][0].append(x)
            series[r["engine"]][1].append(value)
    return series


def plots(results: dict, out: str) -> list[str]:
    """atom-steps/s against N (LJ, copper), against replicas (alanine dipeptide), and
    configurations/s against batch size; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    w = results.get("workloads", {})
    specs = [
        ("lj", "lj_scaling.png", "Lennard-Jones MD", "atoms", "atom-steps/s",
         lambda r: True, lambda r: r["result"].get("atoms")),
        ("learned_md", "learned_scaling.png", "learned MD, copper", "atoms", "atom-steps/s",
         lambda r: r["params"].get("system") == "cu", lambda r: r["result"].get("atoms")),
        ("learned_md", "learned_replicas.png", "learned MD, alanine dipeptide replicas",
         "replicas", "atom-steps/s (all replicas)",
         lambda r: r["params"].get("system") == "ala2" and r["engine"].startswith("biojax"),
         lambda r: r["params"].get("replicas", 1)),
        ("training", "training.png", "training", "batch size", "configurations/s",
         lambda r: True, lambda r: r["params"].get("batch_size")),
    ]
    for name, fname, title, xlabel, ylabel, keep, x_of in specs:
        if name not in w:
            continue
        series = _series(w[name]["runs"], keep, x_of)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for engine, (xs, ys) in series.items():
            order = sorted(range(len(xs)), key=lambda i: xs[i])
            ax.plot([xs[i] for i in order], [ys[i] for i in order], "o-", label=engine)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} — {device_line(results.get('machine', {})).split(',')[0]}",
                     fontsize=9)
        ax.legend(fontsize=7)
        path = os.path.join(out, fname)
        _save(fig, path)
        written.append(path)
    return written


def write_reports(results: dict, out: str) -> list[str]:
    """results.md and the plots into ``out``; returns the files written."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.md")
    atomic_write_text(path, markdown(results))
    return [path] + plots(results, out)


# ====================================================================== --compare
def load_results(path: str) -> dict:
    """A results.json, checked enough to compare (ConfigError naming the file)."""
    if not os.path.isfile(path):
        raise ConfigError(f"--compare: {path}: no such file")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--compare: {path}: not a JSON results file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("workloads"), dict) \
            or "schema" not in data:
        raise ConfigError(f"--compare: {path}: not a biojax bench results file (expected "
                          "the keys 'schema' and 'workloads' of results.json)")
    for name, w in data["workloads"].items():
        if not isinstance(w, dict) or not isinstance(w.get("runs"), list):
            raise ConfigError(f"--compare: {path}: workload {name!r} has no 'runs' list")
    return data


def compare(paths: list[str], out: str) -> list[str]:
    """Render two or more results files side by side: compare.md (one table per workload:
    each file's headline number per case and its ratio to the first file) and one plot per
    workload (headline number against atoms or the case index). Returns the files."""
    if len(paths) < 2:
        raise ConfigError(f"--compare needs two or more results files, got {len(paths)}")
    files = [load_results(p) for p in paths]
    names = [f"{i + 1}: {device_line(d.get('machine', {})).split(', host')[0]}"
             for i, d in enumerate(files)]
    lines = ["# biojax bench: comparison", ""]
    for i, (p, d) in enumerate(zip(paths, files)):
        lines.append(f"{i + 1}. `{p}` — suite {d.get('suite')}, {names[i].split(': ', 1)[1]}, "
                     f"started {d.get('started')}, load {_load(d.get('loadavg_before'))}")
    lines.append("")
    workloads = list(OrderedDict.fromkeys(n for d in files for n in d["workloads"]))
    os.makedirs(out, exist_ok=True)
    written = []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for wname in workloads:
        keys = list(OrderedDict.fromkeys(
            (r["engine"], r["label"]) for d in files
            for r in d["workloads"].get(wname, {}).get("runs", [])))
        table = {i: {(r["engine"], r["label"]): r
                     for r in d["workloads"].get(wname, {}).get("runs", [])}
                 for i, d in enumerate(files)}
        head = "| engine | case | " + " | ".join(f"file {i + 1}" for i in range(len(files))) \
            + " | " + " | ".join(f"{i + 1} / 1" for i in range(1, len(files))) + " |"
        lines += [f"## {TABLES.get(wname, (wname,))[0]}", "", head,
                  "|---|---|" + "---:|" * (2 * len(files) - 1)]
        for key in keys:
            vals = []
            for i in range(len(files)):
                r = table[i].get(key)
                vals.append(primary(r["result"]) if r and r["status"] == "ok" else
                            (None, r["status"] if r else None))
            metric = next((k for k, v in vals if k), "")
            cells = [(_g(v) if k else (v or "—")) for k, v in vals]
            ratios = [f"{vals[i][1] / vals[0][1]:.2f}" if vals[i][0] and vals[0][0]
                      and vals[0][1] else "—" for i in range(1, len(files))]
            lines.append(f"| {key[0]} | {key[1]} ({metric.replace('_', ' ')}) | "
                         + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        lines.append("")
        fig, ax = plt.subplots(figsize=(6, 4))
        plotted = False
        for i, d in enumerate(files):
            series: dict = OrderedDict()
            for j, r in enumerate(d["workloads"].get(wname, {}).get("runs", [])):
                if r["status"] != "ok":
                    continue
                _, value = primary(r["result"])
                x = r["result"].get("atoms")
                if x is not None and r["params"].get("replicas", 1) != 1:
                    x = x * r["params"]["replicas"]
                x = x if x is not None else r["params"].get("batch_size", j + 1)
                if value is not None:
                    series.setdefault(r["engine"], []).append((x, value))
            for engine, pts in series.items():
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if i == 0 else "s--",
                        label=f"{engine} [{i + 1}]")
                plotted = True
        if plotted:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("atoms (× replicas) / batch size")
            ax.set_ylabel("atom-steps/s or configurations/s")
            ax.set_title(wname + ": " + "; ".join(names), fontsize=7)
            ax.legend(fontsize=6)
            path = os.path.join(out, f"compare_{wname.replace(':', '_').replace('.', '_')}.png")
            _save(fig, path)
            written.append(path)
        else:
            plt.close(fig)
    path = os.path.join(out, "compare.md")
    atomic_write_text(path, "\n".join(lines))
    return [path] + written
