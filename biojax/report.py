"""The report of a ``biojax run``: ``report.md`` and a self-contained ``report.html``
(plots embedded as base64 PNG) with the key numbers of every step and the plots the
stages wrote (learning curves, force parity, energy and temperature, free-energy surface,
populations, implied timescales, the coarse-grained model's comparison), the machine,
versions, config hash, seeds and wall times.

Each stage kind has a section writer reading the plain files its step left in the run
directory (``metrics.json``, ``summary.json``, ``observables.csv``, PNGs); a stage kind
without one gets its ``summary.json`` scalars and its PNGs.
"""

from __future__ import annotations

import base64
import glob
import html
import json
import os
from typing import Any, Callable

import numpy as np

KB_EV = 8.617333262e-5  # eV/K (CODATA 2018, as ase.units)
EQUILIBRATION_FRACTION = 0.2  # the first 20 % of each replica is left out of averages


class Section:
    """One part of the report: a title, key numbers (label, value text), free text and
    tables, and images (path relative to the run directory, caption)."""

    def __init__(self, title: str):
        self.title = title
        self.numbers: list[tuple[str, str]] = []
        self.paragraphs: list[str] = []
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self.images: list[tuple[str, str]] = []

    def number(self, label: str, value: str) -> None:
        self.numbers.append((label, value))

    def image(self, run_dir: str, rel: str, caption: str) -> None:
        if os.path.isfile(os.path.join(run_dir, rel)):
            self.images.append((rel, caption))


def _load_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if not np.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.{digits}f}"
    return str(x)


# ----------------------------------------------------------------------------- sections

def _train(run_dir: str, name: str, rec: dict, cfg) -> Section:
    s = Section(f"{name}: trained potential")
    folder = os.path.join(run_dir, name)
    m = _load_json(os.path.join(folder, "metrics.json")) or {}
    which = "test" if "test" in m else "valid"
    res = m.get(which, {})
    if res:
        n = m.get(f"n_{which}")
        s.number(f"{which} energy MAE", f"{res.get('energy_mae', float('nan')):.2f} meV "
                 f"({res.get('energy_per_atom_mae', float('nan')):.2f} meV/atom), {n} frames")
        s.number(f"{which} force MAE", f"{res.get('forces_mae', float('nan')):.2f} meV/Å")
    if m:
        s.number("training", f"{m.get('architecture')} · {m.get('n_train')} train / "
                 f"{m.get('n_valid')} valid frames · {m.get('epochs_run')} epochs (best "
                 f"{m.get('best_epoch')}, stop: {m.get('stop_reason')}) · "
                 f"{m.get('training_seconds', 0):.0f} s")
    s.image(run_dir, f"{name}/training_curves.png", "learning curves (loss and validation "
            "errors per epoch)")
    s.image(run_dir, f"{name}/force_parity.png", f"force parity, {which} set")
    return s


def replica_folders(folder: str) -> list[str]:
    """The replica folders of a simulate step's output (the folder itself for one)."""
    reps = sorted(glob.glob(os.path.join(folder, "replica_*")))
    return reps or [folder]


def md_numbers(folder: str, n_atoms: int | None) -> dict:
    """Averages over the replicas of a simulate output folder, the first 20 % of each
    left out: mean temperature (K) with its standard error over replicas, drift of the
    conserved energy (meV/atom/ps, linear fit, mean over replicas) and its RMS
    fluctuation (meV/atom), mean volume (Å³) when the run had a barostat."""
    from biojax.md.output import read_observables

    temps, drifts, rms, vols, times = [], [], [], [], []
    for rep in replica_folders(folder):
        try:
            obs = read_observables(rep)
        except (OSError, ValueError):
            continue
        if "time_fs" not in obs or len(obs["time_fs"]) < 5:
            continue
        k = int(EQUILIBRATION_FRACTION * len(obs["time_fs"]))
        t = obs["time_fs"][k:] / 1000.0
        times.append(obs["time_fs"][-1] / 1000.0)
        temps.append(float(np.mean(obs["temperature"][k:])))
        e = obs.get("conserved", obs.get("total_energy"))
        if e is not None and n_atoms:
            e = e[k:] * 1000.0 / n_atoms
            slope, icpt = np.polyfit(t, e, 1)
            drifts.append(float(slope))
            rms.append(float(np.std(e - (slope * t + icpt))))
        if "volume" in obs:
            vols.append(float(np.mean(obs["volume"][k:])))
    out: dict = {"replicas": len(temps)}
    if temps:
        out["mean_T_K"] = float(np.mean(temps))
        out["mean_T_sem_K"] = float(np.std(temps, ddof=1) / np.sqrt(len(temps))) \
            if len(temps) > 1 else None
        out["length_ps"] = float(np.mean(times))
    if drifts:
        out["drift_meV_atom_ps"] = float(np.mean(drifts))
        out["drift_abs_max_meV_atom_ps"] = float(np.max(np.abs(drifts)))
        out["fluctuation_meV_atom"] = float(np.mean(rms))
    if vols:
        out["mean_volume_A3"] = float(np.mean(vols))
        out["volume_sem_A3"] = float(np.std(vols, ddof=1) / np.sqrt(len(vols))) \
            if len(vols) > 1 else None
    return out


LATTICE_ATOMS = {"fcc": 4, "bcc": 2, "sc": 1, "diamond": 8}


def _simulate(run_dir: str, name: str, rec: dict, cfg, options: dict | None = None
              ) -> Section:
    folder = os.path.join(run_dir, name)
    summary = _load_json(os.path.join(folder, "summary.json")) or {}
    n_atoms = summary.get("atoms")
    s = Section(f"{name}: molecular dynamics ({getattr(cfg, 'ensemble', '?')})")
    nums = md_numbers(folder, n_atoms)
    if cfg is not None:
        ps = cfg.steps * cfg.timestep_fs / 1000.0
        s.number("run", f"{cfg.replicas} replica(s) × {cfg.steps} steps of "
                 f"{cfg.timestep_fs:g} fs = {ps:g} ps each, {n_atoms} atoms"
                 + (f" · {summary.get('ns_per_day', 0):.3g} ns/day per replica"
                    if summary.get("ns_per_day") else ""))
    if "mean_T_K" in nums:
        target = (f" (target {cfg.temperature_K:g} K)" if cfg is not None
                  and cfg.ensemble != "nve" else "")
        sem = f" ± {nums['mean_T_sem_K']:.1f}" if nums.get("mean_T_sem_K") else ""
        s.number("mean temperature", f"{nums['mean_T_K']:.1f}{sem} K{target}, first "
                 f"{EQUILIBRATION_FRACTION:.0%} of each replica left out")
    if cfg is not None and cfg.ensemble == "nve" and "drift_meV_atom_ps" in nums:
        s.number("energy conservation (NVE)",
                 f"drift {nums['drift_meV_atom_ps']:+.3f} meV/atom/ps (largest "
                 f"|drift| of a replica {nums['drift_abs_max_meV_atom_ps']:.3f}), RMS "
                 f"fluctuation {nums['fluctuation_meV_atom']:.3f} meV/atom")
    elif "drift_meV_atom_ps" in nums:
        s.number("conserved-quantity drift", f"{nums['drift_meV_atom_ps']:+.3f} "
                 "meV/atom/ps (thermostat/barostat included)")
    if "mean_volume_A3" in nums and n_atoms:
        v_atom = nums["mean_volume_A3"] / n_atoms
        s.number("mean volume", f"{nums['mean_volume_A3']:.2f} Å³ ({v_atom:.4f} Å³/atom)")
        lattice = (options or {}).get("lattice")
        if lattice in LATTICE_ATOMS:
            a = (LATTICE_ATOMS[lattice] * v_atom) ** (1.0 / 3.0)
            nums["lattice_constant_A"] = a
            text = f"{a:.4f} Å ({lattice}, from the mean volume)"
            ref = (options or {}).get("reference_lattice_constant")
            if ref:
                dev = 100.0 * (a - ref) / ref
                nums["lattice_deviation_percent"] = dev
                text += f"; reference {ref:.4f} Å ({(options or {}).get('reference_note', '')}" \
                        f"): {dev:+.2f} %"
            s.number("lattice constant", text)
    if summary.get("minimization"):
        mn = summary["minimization"]
        if isinstance(mn, dict) and mn.get("energy_before_eV"):
            eb, ea = np.ravel(mn["energy_before_eV"]), np.ravel(mn["energy_after_eV"])
            s.number("minimisation (FIRE)", f"potential energy {np.mean(eb):.3f} → "
                     f"{np.mean(ea):.3f} eV (mean over replicas), converged: "
                     f"{mn.get('converged')}")
    s.numbers_dict = nums  # type: ignore[attr-defined]
    s.image(run_dir, f"{name}/temperature.png", "temperature of every replica")
    s.image(run_dir, f"{name}/energy.png", "potential and kinetic energy, and the drift of "
            "the total (NVE) or conserved energy")
    return s


def _analyze(run_dir: str, name: str, rec: dict, cfg) -> Section:
    folder = os.path.join(run_dir, name)
    sm = _load_json(os.path.join(folder, "summary.json")) or {}
    s = Section(f"{name}: conformational states and free energies")
    if sm:
        s.number("frames", f"{sm.get('n_frames')} from {len(sm.get('trajectories', []))} "
                 f"trajectories; features {', '.join(sm.get('features', []))}")
        rows = []
        for st in sm.get("states", []):
            centre = ", ".join(f"{k} {v:.0f}" for k, v in (st.get("centre_fes") or {}).items()
                               if v is not None)
            rows.append([str(st["state"]), f"{st['population']:.3f} ± "
                         f"{st['population_error']:.3f}",
                         _fmt(st.get("free_energy_kJmol"), 2), centre])
        if rows:
            s.tables.append((["state", "population", "ΔG (kJ/mol)", "centre"], rows))
        rows = [[r["name"], f"{r['population']:.3f} ± {r['population_error']:.3f}",
                 _fmt(r.get("free_energy_kJmol", r.get("free_energy_kT")), 2)]
                for r in sm.get("regions", [])]
        if rows:
            s.tables.append((["region", "population", "ΔG (kJ/mol)"], rows))
        found = [r["name"] for r in sm.get("regions", []) if r.get("population", 0) > 0.01]
        if sm.get("regions"):
            s.number("basins visited", f"{len(found)} of {len(sm['regions'])} named regions "
                     f"hold > 1 % of the frames ({', '.join(found) or 'none'})")
        msm = sm.get("msm") or {}
        if msm.get("timescales"):
            unit = msm.get("time_unit", "")
            s.number("slowest implied timescales", ", ".join(
                f"{_fmt(t)} {unit}" for t in msm["timescales"] if t is not None)
                + f" (MSM lag {_fmt(msm.get('lag_time'))} {unit})")
        elif msm.get("timescales_frames"):
            s.number("slowest implied timescales", ", ".join(
                f"{_fmt(t)} frames" for t in msm["timescales_frames"] if t is not None))
    s.image(run_dir, f"{name}/fes.png", "free-energy surface with the states")
    s.image(run_dir, f"{name}/populations.png", "state populations with errors")
    s.image(run_dir, f"{name}/timescales.png", "implied timescales against lag time")
    s.image(run_dir, f"{name}/projection.png", "frames in the reduced coordinates")
    return s


def _scalars(d: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            out.append((prefix + k, _fmt(float(v)) if isinstance(v, float) else str(v)))
        elif isinstance(v, str) and len(v) < 80 and depth < 2:
            out.append((prefix + k, v))
        elif isinstance(v, dict) and depth < 2:
            out += _scalars(v, prefix + k + ".", depth + 1)
    return out


def _generic(run_dir: str, name: str, rec: dict, cfg) -> Section:
    """A stage without its own writer (e.g. coarse-grain): the scalar numbers of its
    summary.json (or of what its run returned) and every PNG in its folder."""
    folder = os.path.join(run_dir, name)
    s = Section(f"{name}: {rec.get('kind', name)}")
    sm = _load_json(os.path.join(folder, "summary.json")) or rec.get("summary") or {}
    for label, value in _scalars(sm)[:40]:
        s.number(label, value)
    for png in sorted(glob.glob(os.path.join(folder, "**", "*.png"), recursive=True)):
        rel = os.path.relpath(png, run_dir)
        s.image(run_dir, rel, os.path.splitext(os.path.basename(png))[0].replace("_", " "))
    return s


def _coarse_grain(run_dir: str, name: str, rec: dict, cfg) -> Section:
    """The CG model against the fine-grained reference it was built from: held-out force
    errors (with the prior alone), the CG MD's φ/ψ distribution against the reference
    (Jensen–Shannon divergence beside the reference's own split-half value, free-energy
    RMSE) and basin populations side by side."""
    folder = os.path.join(run_dir, name)
    sm = _load_json(os.path.join(folder, "summary.json")) or {}
    s = Section(f"{name}: coarse-grained model against the fine-grained reference")
    if not sm:
        return _generic(run_dir, name, rec, cfg)
    s.number("CG model", f"{sm.get('method')} · {sm.get('beads')} beads · "
             f"{sm.get('frames')} reference frames at {sm.get('temperature_K')} K")
    f, f0 = sm.get("held_out_forces") or {}, sm.get("held_out_forces_prior_only") or {}
    if f:
        s.number("CG held-out force RMSE", f"{f.get('rmse_kcal_mol_A', float('nan')):.2f} "
                 f"kcal/mol/Å ({f.get('frames')} frames; prior alone "
                 f"{f0.get('rmse_kcal_mol_A', float('nan')):.2f})")
    ev = sm.get("evaluation") or {}
    if ev:
        s.number("CG vs fine-grained φ/ψ", f"Jensen–Shannon divergence "
                 f"{ev.get('js_divergence', float('nan')):.3f} (the reference against its "
                 f"own other half: {ev.get('reference_split_half_js', float('nan')):.3f}), "
                 f"free-energy RMSE {ev.get('fes_rmse_kT', float('nan')):.2f} kT; "
                 f"{ev.get('frames_model')} CG frames from {ev.get('replicas')} replicas")
        rows = [[b, f"{v['reference']:.3f} ± {v['reference_error']:.3f}",
                 f"{v['model']:.3f} ± {v['model_error']:.3f}"]
                for b, v in (ev.get("basins") or {}).items()]
        if rows:
            s.tables.append((["basin", "fine-grained reference", "CG model"], rows))
    sim = sm.get("simulation") or {}
    if sim:
        s.number("CG MD", f"{sim.get('replicas')} replicas × {sim.get('steps_run')} steps, "
                 f"{sim.get('aggregate_ns_per_day', 0):.3g} ns/day aggregate")
    for png in ("fes_comparison.png", "simulate/temperature.png", "simulate/energy.png"):
        s.image(run_dir, f"{name}/{png}", {"fes_comparison.png": "φ/ψ free energy: "
                "fine-grained reference against CG MD"}.get(png, "CG MD " + png.split("/")[-1]
                                                              .replace(".png", "")))
    return s


SECTIONS: dict[str, Callable] = {"train": _train, "simulate": _simulate, "analyze": _analyze,
                                 "coarse-grain": _coarse_grain}


# ----------------------------------------------------------------------------- writing

def build(run_dir: str, manifest: dict, plan=None) -> tuple[list[Section], dict]:
    """The report's sections (one per finished step) and its headline numbers."""
    steps = manifest.get("steps", [])
    configs = {s.name: s.config for s in plan.steps} if plan is not None else {}
    import dataclasses

    options = dataclasses.asdict(plan.run.report) if plan is not None else {}
    sections, key = [], {}
    for name in steps:
        rec = manifest.get("stages", {}).get(name)
        if not rec or rec.get("status") != "done":
            continue
        kind = rec.get("kind", name)
        writer = SECTIONS.get(kind, _generic)
        sec = (writer(run_dir, name, rec, configs.get(name), options) if kind == "simulate"
               else writer(run_dir, name, rec, configs.get(name)))
        sections.append(sec)
        for label, value in sec.numbers:
            key[f"{name}: {label}"] = value
    return sections, key


def _run_section(manifest: dict) -> Section:
    s = Section("run")
    m = manifest.get("machine", {})
    s.number("machine", f"{m.get('cpu')} · {m.get('cores')} cores · {m.get('device')} · "
             f"{m.get('host')} (load average at start {m.get('load_average')})")
    v = manifest.get("versions", {})
    s.number("versions", ", ".join(f"{k} {x}" for k, x in v.items()))
    s.number("config", f"{manifest.get('config_file')} · hash {manifest.get('config_hash', '')[:16]}"
             + (" · quick" if manifest.get("quick") else ""))
    if manifest.get("command"):
        s.number("command", f"`{manifest['command']}`")
    if manifest.get("seeds"):
        s.number("seeds", ", ".join(f"{k} = {x}" for k, x in manifest["seeds"].items()))
    rows = []
    total = 0.0
    for name in manifest.get("steps", []):
        rec = manifest.get("stages", {}).get(name, {})
        total += rec.get("wall_s", 0.0) or 0.0
        rows.append([name, rec.get("kind", "—"), rec.get("status", "not run"),
                     f"{rec.get('wall_s', 0):.1f}", "yes" if rec.get("resumed") else "",
                     rec.get("finished", "")])
    rows.append(["total", "", "", f"{total:.1f}", "", ""])
    s.tables.append((["step", "stage", "status", "wall time (s)", "resumed", "finished"],
                     rows))
    return s


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(title: str, sections: list[Section]) -> str:
    """The report as Markdown (images referenced by path relative to the run folder)."""
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for label, value in s.numbers:
            lines.append(f"- **{label}**: {value}")
        if s.numbers:
            lines.append("")
        for p in s.paragraphs:
            lines += [p, ""]
        for header, rows in s.tables:
            lines += [_md_table(header, rows), ""]
        for rel, caption in s.images:
            lines += [f"![{caption}]({rel})", f"*{caption}*", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #345}
h2{margin-top:2em;color:#234;border-bottom:1px solid #ccd}table{border-collapse:collapse;
margin:.8em 0}td,th{border:1px solid #ccd;padding:.25em .6em;text-align:left}
th{background:#eef}ul.numbers{list-style:none;padding-left:0}ul.numbers li{margin:.2em 0}
.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;flex:1 1 420px;max-width:540px}
figure.wide{flex-basis:100%;max-width:100%}figure img{width:100%;border:1px solid #dde}figcaption{font-size:.9em;color:#555}
code{background:#f4f4f8;padding:0 .2em}"""


def render_html(title: str, sections: list[Section], run_dir: str) -> str:
    """The report as one self-contained HTML page (images base64-embedded)."""
    esc = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    for s in sections:
        parts.append(f"<section><h2>{esc(s.title)}</h2>")
        if s.numbers:
            parts.append("<ul class='numbers'>" + "".join(
                f"<li><b>{esc(label)}</b>: {_inline(value)}</li>" for label, value in s.numbers)
                + "</ul>")
        for p in s.paragraphs:
            parts.append(f"<p>{esc(p)}</p>")
        for header, rows in s.tables:
            parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header)
                         + "</tr>" + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r)
                                            + "</tr>" for r in rows) + "</table>")
        if s.images:
            parts.append("<div class='figs'>")
            for rel, caption in s.images:
                with open(os.path.join(run_dir, rel), "rb") as f:
                    data = base64.b64encode(f.read()).decode()
                wide = _aspect(os.path.join(run_dir, rel)) > 2.0
                parts.append(f"<figure{' class=wide' if wide else ''}><img alt='{esc(caption)}' "
                             f"src='data:image/png;base64,{data}'><figcaption>{esc(rel)}: "
                             f"{esc(caption)}</figcaption></figure>")
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _aspect(path: str) -> float:
    """Width / height of a PNG (from its IHDR chunk); 1.0 when unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
        w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        return w / h if head[:8] == b"\x89PNG\r\n\x1a\n" and h else 1.0
    except OSError:
        return 1.0


def _inline(text: str) -> str:
    """Escape, keeping `code` spans."""
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


HEADLINES = ("test energy MAE", "test force MAE", "valid force MAE", "mean temperature",
             "energy conservation (NVE)", "mean volume", "lattice constant",
             "basins visited", "slowest implied timescales", "CG held-out force RMSE",
             "CG vs fine-grained φ/ψ")


def _key_section(sections: list[Section]) -> Section:
    """The headline numbers of every step, first in the report."""
    s = Section("key numbers")
    for sec in sections:
        step = sec.title.split(":")[0]
        chosen = [(label, value) for label, value in sec.numbers if label in HEADLINES]
        if not chosen and sec.numbers and not any(
                sec.title.endswith(t) for t in ("trained potential", "free energies")):
            chosen = sec.numbers[:4]
        for label, value in chosen:
            s.number(f"{step} · {label}", value)
        for header, rows in sec.tables[-1:]:
            if header[0] == "region":
                s.number(f"{step} · basin populations", "; ".join(
                    f"{r[0]} {r[1]}" for r in rows))
            elif header[0] == "basin":
                s.number(f"{step} · basin populations, reference → CG", "; ".join(
                    f"{r[0]} {r[1]} → {r[2]}" for r in rows))
    return s


def write_report(run_dir: str, manifest: dict, plan=None) -> list[str]:
    """Write ``report.md``, ``report.html`` and ``report.json`` (the headline numbers) in
    ``run_dir``; returns their names."""
    from biojax.core.atomic import atomic_write_text

    title = (getattr(plan.run, "title", "") if plan is not None else "") or \
        f"biojax run: {os.path.basename(manifest.get('config_file', 'run'))}"
    sections, key = build(run_dir, manifest, plan)
    sections = [_key_section(sections)] + sections + [_run_section(manifest)]
    numbers = {s.title: getattr(s, "numbers_dict", None) for s in sections
               if getattr(s, "numbers_dict", None)}
    atomic_write_text(os.path.join(run_dir, "report.md"), render_markdown(title, sections))
    atomic_write_text(os.path.join(run_dir, "report.html"),
                      render_html(title, sections, run_dir))
    atomic_write_text(os.path.join(run_dir, "report.json"), json.dumps(
        {"title": title, "key_numbers": key, "md": numbers,
         "sections": [s.title for s in sections],
         "images": [rel for s in sections for rel, _ in s.images]}, indent=2))
    return ["report.md", "report.html", "report.json"]
