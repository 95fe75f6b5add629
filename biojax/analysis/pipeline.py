"""``biojax analyze``: trajectories → features → (PCA/TICA) → states → populations, MSM,
free-energy surface → ``states.csv``, ``fes.npz``, ``summary.json`` and PNG plots."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import shutil
import time

import numpy as np

from biojax.analysis import cluster as clu
from biojax.analysis import decomposition, features, fes, msm, selection
from biojax.analysis.config import AnalyzeConfig, FeatureConfig
from biojax.analysis.trajectory import Trajectory, load_trajectory, read_positions
from biojax.core.atomic import atomic_path, atomic_write_text, make_temp_dir
from biojax.core.errors import AnalysisError, ConfigError, DataError
from biojax.core.progress import progress
from biojax.core.rundir import RunLock, check_output_dir
from biojax.core.registry import features as feature_registry
from biojax.core.registry import resolve
from biojax.core.units import KJ_PER_MOL


@dataclasses.dataclass(frozen=True)
class FeatureTable:
    """Raw features (n_frames, n) with a name and a periodic (angle) flag per column, and
    optionally a unit per column ("rad", "Å", "" for dimensionless; used in plot labels;
    empty tuple = unknown)."""

    values: np.ndarray
    names: tuple[str, ...]
    periodic: tuple[bool, ...]
    units: tuple[str, ...] = ()

    def unit(self, i: int) -> str | None:
        """Unit of column ``i`` (None if the feature did not say)."""
        if self.units:
            return self.units[i]
        return "rad" if self.periodic[i] else None


def _selection(traj: Trajectory, sel) -> np.ndarray:
    if sel is None:
        return np.arange(traj.n_atoms)
    return selection.select(traj.topology, traj.n_atoms, selection.Selection(
        **{f.name: getattr(sel, f.name) for f in dataclasses.fields(sel)}))


def _reference(cfg: AnalyzeConfig, fc: FeatureConfig, traj: Trajectory) -> np.ndarray:
    if fc.reference is None:
        return traj.positions[0]
    ref = read_positions(cfg.path(fc.reference))[0]
    if ref.shape != traj.positions.shape[1:]:
        raise AnalysisError(f"reference {fc.reference} has {ref.shape[0]} atoms, "
                            f"trajectory {traj.source} has {traj.n_atoms}")
    return ref


def compute_features(cfg: AnalyzeConfig, traj: Trajectory, fc: FeatureConfig
                     ) -> FeatureTable:
    """One feature block of the config evaluated on one trajectory: the feature named by
    ``fc.kind`` (``biojax.core.registry.features``: registered, or ``"module:function"``
    taking ``(cfg, traj, fc)`` and returning a FeatureTable)."""
    return resolve(feature_registry, fc.kind)(cfg, traj, fc)


@feature_registry.register("backbone_dihedrals")
def _backbone_dihedrals(cfg, traj, fc) -> FeatureTable:
    if traj.topology is None:
        raise AnalysisError(f"backbone_dihedrals need a topology for {traj.source}; "
                            f"set trajectory.topology to a PDB file")
    quads, names = selection.backbone_dihedrals(traj.topology, fc.angles)
    return FeatureTable(np.asarray(features.dihedrals(traj.positions, quads)), tuple(names),
                        (True,) * len(names), ("rad",) * len(names))


@feature_registry.register("dihedrals")
def _dihedrals(cfg, traj, fc) -> FeatureTable:
    if not fc.atoms:
        raise ConfigError("features kind 'dihedrals' needs atoms = [[i, j, k, l], ...]")
    names = fc.names or tuple(f"dihedral_{'_'.join(map(str, q))}" for q in fc.atoms)
    _check_names(names, len(fc.atoms))
    return FeatureTable(np.asarray(features.dihedrals(traj.positions, np.asarray(fc.atoms))),
                        tuple(names), (True,) * len(names), ("rad",) * len(names))


def _pair_feature(cfg, traj, fc) -> FeatureTable:
    pairs = (np.asarray(fc.atoms) if fc.atoms else
             features.all_pairs(_selection(traj, fc.selection)))
    if fc.kind == "distances":
        vals = features.distances(traj.positions, pairs)
    else:
        vals = features.contacts(traj.positions, pairs, fc.cutoff)
    names = fc.names or tuple(f"{fc.kind[:-1]}_{i}_{j}" for i, j in pairs)
    _check_names(names, len(pairs))
    unit = "Å" if fc.kind == "distances" else ""
    return FeatureTable(np.asarray(vals), tuple(names), (False,) * len(names),
                        (unit,) * len(names))


feature_registry.register("distances", _pair_feature)
feature_registry.register("contacts", _pair_feature)


@feature_registry.register("aligned_coordinates")
def _aligned_coordinates(cfg, traj, fc) -> FeatureTable:
    idx = _selection(traj, fc.selection)
    vals = np.asarray(features.aligned_coordinates(traj.positions, _reference(cfg, fc, traj),
                                                   idx))
    names = tuple(f"{c}{i}" for i in idx for c in "xyz")
    return FeatureTable(vals, names, (False,) * len(names), ("Å",) * len(names))


@feature_registry.register("rmsd")
def _rmsd(cfg, traj, fc) -> FeatureTable:
    idx = _selection(traj, fc.selection)
    vals = np.asarray(features.rmsd(traj.positions, _reference(cfg, fc, traj), idx))[:, None]
    return FeatureTable(vals, ("rmsd",), (False,), ("Å",))


def _check_names(names, n):
    if len(names) != n:
        raise ConfigError(f"feature names {list(names)} must have one entry per feature "
                          f"({n})")


def _concat(tables: list[FeatureTable]) -> FeatureTable:
    names = sum((t.names for t in tables), ())
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"duplicate feature names {dup}; set 'names' in [[features]]")
    units = (sum((tuple(t.unit(i) or "?" for i in range(len(t.names))) for t in tables), ())
             if any(t.units for t in tables) else ())
    return FeatureTable(np.concatenate([t.values for t in tables], 1), names,
                        sum((t.periodic for t in tables), ()), units)


def check_finite_features(table: FeatureTable, source: str, stride: int = 1) -> None:
    """Raise AnalysisError naming ``source``, the first frame (in the file, counting from
    0) and the feature whose value is NaN or infinite."""
    good = np.isfinite(table.values)
    if good.all():
        return
    rows = np.flatnonzero(~good.all(axis=1))
    cols = np.flatnonzero(~good[rows[0]])
    shown = ", ".join(table.names[c] for c in cols[:5]) + (" ..." if cols.size > 5 else "")
    raise AnalysisError(
        f"{source} frame {int(rows[0]) * stride}: feature(s) {shown} are NaN or infinite "
        f"({rows.size} such frame(s); frames count from 0 in the file)")


def _encoded_unit(table: FeatureTable, encode_angles: bool) -> str | None:
    """The common unit of the encoded feature columns (sin/cos are dimensionless), or
    None if they differ or are unknown."""
    units = {("" if (p and encode_angles) else table.unit(i))
             for i, p in enumerate(table.periodic)}
    return units.pop() if len(units) == 1 and None not in units else None


def encode(table: FeatureTable, encode_angles: bool) -> np.ndarray:
    """Angles → (sin, cos) columns when ``encode_angles``; other columns unchanged."""
    per = np.asarray(table.periodic)
    if not encode_angles or not per.any():
        return table.values.astype(np.float32)
    ang = table.values[:, per]
    return np.concatenate([table.values[:, ~per], np.asarray(features.sincos(ang))],
                          1).astype(np.float32)


def _resolve(name: str, names: tuple[str, ...]) -> int:
    if name in names:
        return names.index(name)
    hits = [i for i, n in enumerate(names) if n.startswith(name)]
    if len(hits) != 1:
        raise ConfigError(f"fes feature {name!r} {'is ambiguous' if hits else 'not found'};"
                          f" available: {', '.join(names)}")
    return hits[0]


def _region_mask(values: np.ndarray, boxes) -> np.ndarray:
    m = np.zeros(values.shape[0], bool)
    for box in boxes:
        if len(box) != values.shape[1]:
            raise ConfigError(f"region box {box} needs one [lo, hi] per FES dimension "
                              f"({values.shape[1]})")
        inside = np.ones(values.shape[0], bool)
        for d, (lo, hi) in enumerate(box):
            inside &= (values[:, d] >= lo) & (values[:, d] < hi)
        m |= inside
    return m


def _state_centres(values: np.ndarray, periodic, labels: np.ndarray, n: int,
                   to_unit: float) -> np.ndarray:
    out = np.full((n, values.shape[1]), np.nan)
    for s in range(n):
        v = values[labels == s]
        if len(v) == 0:
            continue
        for d in range(values.shape[1]):
            if periodic[d]:
                out[s, d] = math.atan2(np.sin(v[:, d] / to_unit).mean(),
                                       np.cos(v[:, d] / to_unit).mean()) * to_unit
            else:
                out[s, d] = v[:, d].mean()
    return out


def _json_float(x):
    x = float(x)
    return x if math.isfinite(x) else None


OUTPUT_FILES = ("states.csv", "fes.npz", "summary.json", "fes.png", "populations.png",
                "projection.png", "timescales.png")


def check_output(out_dir: str, overwrite: bool = False) -> None:
    """Before any work: ``out_dir`` must be (or become) a writable folder, and results of
    an earlier analysis in it are only replaced when the user asked (``overwrite``)."""
    check_output_dir(out_dir, "analysis output directory")
    old = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(out_dir, f))]
    if old and not overwrite:
        raise ConfigError(
            f"analysis output directory {out_dir} already holds results ({', '.join(old)});"
            f" pass --overwrite (output.overwrite = true) to replace them, or choose "
            f"another --out")


def run_analysis(cfg: AnalyzeConfig, out_dir: str | None = None,
                 show_progress: bool = True) -> dict:
    """Run the analysis described by ``cfg``; write outputs to ``out_dir`` (default the
    config's output.directory) and return the summary dict.

    The folder is checked before any work (:func:`check_output`) and locked for the whole
    run (``biojax.core.rundir.RunLock``: a second analysis into it is refused, naming this
    one). Outputs are first written to a hidden folder inside it and moved into place only
    when all of them are complete, so a failed run leaves earlier results untouched."""
    out_dir = os.fspath(out_dir or cfg.path(cfg.output.directory))
    overwrite = cfg.output.overwrite
    check_output(out_dir, overwrite)
    created = not os.path.exists(out_dir)
    lock = RunLock(out_dir, "analysis output")
    lock.acquire()
    staging = None
    try:
        check_output(out_dir, overwrite)  # a run that finished while we waited counts
        staging = make_temp_dir(out_dir, ".analysis-tmp-")
        summary = _analyze(cfg, staging, show_progress)
        for name in OUTPUT_FILES:  # all complete: move into place, drop stale ones
            target = os.path.join(out_dir, name)
            if name in summary["outputs"]:
                os.replace(os.path.join(staging, name), target)
            elif os.path.exists(target):
                os.remove(target)
        return summary
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        lock.release()
        if created and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)  # a failed first run leaves no empty folder behind


def expand_paths(paths) -> list[str]:
    """Trajectory paths with shell patterns (``replica_*/trajectory.extxyz``) expanded,
    sorted; a pattern that matches nothing is an error."""
    out = []
    for p in paths:
        if not os.path.exists(p) and any(c in p for c in "*?["):
            hits = sorted(glob.glob(p))
            if not hits:
                raise DataError(f"no trajectory file matches {p}")
            out += hits
        else:
            out.append(p)
    return out


def _time_unit(frame_fs: float | None, max_frames: float) -> tuple[str, float]:
    """(unit, fs per unit) for reporting times: frames without an interval, else ps or ns
    (ns from 1 ns of lag time on)."""
    if not frame_fs:
        return "frames", 1.0
    return ("ns", 1e6) if max_frames * frame_fs >= 1e6 else ("ps", 1e3)


def _analyze(cfg: AnalyzeConfig, out_dir: str, show_progress: bool = True) -> dict:
    with contextlib.ExitStack() as stack:
        tc = cfg.trajectory
        paths = expand_paths([cfg.path(p) for p in tc.paths])
        n_steps = 2 * len(paths) + 5 + bool(cfg.output.plots)
        bar = stack.enter_context(progress(n_steps, "analyze", show_progress, unit="step"))
        done = iter(range(n_steps))

        def stage(what):  # one progress step per stage of the pipeline
            bar.set(now=what)
            bar.update(next(done))

        summary = _pipeline(cfg, out_dir, paths, stage)
        bar.update(n_steps)
        return summary


def _pipeline(cfg: AnalyzeConfig, out_dir: str, paths: list[str], stage) -> dict:
    t_start = time.perf_counter()
    tc = cfg.trajectory
    top = cfg.path(tc.topology) if tc.topology else None
    trajs, tables = [], []
    for p in paths:
        stage(f"reading {os.path.basename(p)}")
        t = load_trajectory(p, top, tc.stride)
        if trajs and t.n_atoms != trajs[0].n_atoms:
            raise AnalysisError(f"trajectories have different atom counts "
                                f"{[(u.source, u.n_atoms) for u in trajs + [t]]}")
        stage(f"features of {os.path.basename(p)}")
        table = _concat([compute_features(cfg, t, fc) for fc in cfg.features])
        check_finite_features(table, t.source, tc.stride)
        trajs.append(t), tables.append(table)
    lengths = [t.n_frames for t in trajs]
    # per-frame log weights of biased runs (before any work, so a bad column fails fast)
    log_w = frame_log_weights(paths, lengths, tc.stride, cfg.fes.log_weights)
    weights = None if log_w is None else np.exp(log_w[0] - np.max(log_w[0]))
    table = FeatureTable(np.concatenate([t.values for t in tables]), tables[0].names,
                         tables[0].periodic, tables[0].units)
    x = encode(table, cfg.encode_angles)
    n = x.shape[0]

    # dimensionality reduction
    stage("reduction")
    red = None
    y = None
    rc = cfg.reduce
    if rc.method != "none":
        n_comp = min(rc.n_components, x.shape[1])
        if rc.method == "pca":
            red = decomposition.pca(x, n_comp)
        else:
            red = decomposition.tica(decomposition.split_frames(x, lengths), rc.lag, n_comp)
        y = red.transform(x)
    prefix = {"pca": "pc", "tica": "tic"}.get(rc.method, "")
    # unit of the projected coordinates: PCA keeps the features' unit, TICA whitens
    y_unit = "" if rc.method == "tica" else _encoded_unit(table, cfg.encode_angles)

    # clustering
    stage("clustering")
    cc = cfg.cluster
    if cc.space == "reduced" and y is None:
        raise ConfigError("cluster.space = 'reduced' needs reduce.method = 'pca' or 'tica'")
    space = y if cc.space == "reduced" else x
    if cc.method == "kmeans":
        res = clu.kmeans(space, cc.k, n_init=cc.n_init, max_iter=cc.max_iter, tol=cc.tol,
                         seed=cc.seed)
        centers, labels, inertia = res.centers, res.labels, res.inertia
    elif cc.method == "minibatch_kmeans":
        res = clu.minibatch_kmeans(space, cc.k, batch_size=cc.batch_size,
                                   n_steps=cc.n_steps, seed=cc.seed)
        centers, labels, inertia = res.centers, res.labels, res.inertia
    else:
        centers = clu.regspace(space, cc.dmin, cc.max_centers)
        labels, inertia = clu.assign(space, centers)
    n_states = int(centers.shape[0])
    sil = clu.silhouette(space, labels, 5000, cc.seed) if n_states > 1 else None
    scan = clu.scan_k(space, cc.scan_k, seed=cc.seed) if cc.scan_k else []
    dtrajs = decomposition.split_frames(labels, lengths)

    # populations and kinetics
    stage("populations and MSM")
    fc = cfg.fes
    pops = msm.populations(dtrajs, n_states, fc.n_blocks, fc.n_bootstrap, cc.seed)
    f_states = fes.state_free_energies(pops.populations, fc.temperature)
    msm_out = None
    if cfg.msm.enabled and n_states > 1:
        model = msm.estimate_msm(dtrajs, cfg.msm.lag, n_states)
        lags = [lag for lag in cfg.msm.lags if lag < max(lengths)]
        its = msm.implied_timescales(dtrajs, lags, cfg.msm.n_timescales, n_states)
        msm_out = (model, lags, its)

    # free-energy surface
    stage("free-energy surface")
    to_unit = 180.0 / math.pi if fc.angle_unit == "degree" else 1.0
    angle_unit = "°" if fc.angle_unit == "degree" else "rad"
    fnames = fc.features or table.names[:2]
    cols, fper, fvals, funits = [], [], [], []
    for name in fnames:
        if prefix and name.startswith(prefix) and name[len(prefix):].isdigit():
            i = int(name[len(prefix):]) - 1
            if not 0 <= i < y.shape[1]:
                raise ConfigError(f"fes feature {name!r}: only {y.shape[1]} components")
            fvals.append(y[:, i]), fper.append(False), cols.append(name)
            funits.append(y_unit)
        else:
            i = _resolve(name, table.names)
            v = table.values[:, i] * (to_unit if table.periodic[i] else 1.0)
            fvals.append(v), fper.append(table.periodic[i]), cols.append(table.names[i])
            funits.append(angle_unit if table.periodic[i] else table.unit(i))
    if not 1 <= len(cols) <= 2:
        raise ConfigError(f"fes.features must name 1 or 2 features, got {list(fnames)}")
    fv = np.stack(fvals, 1)
    ranges = [(-math.pi * to_unit, math.pi * to_unit) if p else
              (float(fv[:, d].min()), float(fv[:, d].max())) for d, p in enumerate(fper)]
    surface = fes.free_energy_surface(fv, fc.bins, ranges, fc.temperature, fc.n_blocks,
                                      fc.n_bootstrap, cc.seed, cols, weights=weights)
    centres_fes = _state_centres(fv, fper, labels, n_states, to_unit)
    regions = []
    if fc.regions:  # one state trajectory: region index, or len(regions) for "elsewhere"
        region_of = np.full(n, len(fc.regions), np.int64)
        for r, reg in reversed(list(enumerate(fc.regions))):
            region_of[_region_mask(fv, reg.boxes)] = r
        if weights is None:
            rp = msm.populations(decomposition.split_frames(region_of, lengths),
                                 len(fc.regions) + 1, fc.n_blocks, fc.n_bootstrap, cc.seed)
            r_pop, r_err = rp.populations, rp.errors
        else:
            r_pop, r_err = weighted_populations(region_of, weights, len(fc.regions) + 1,
                                                fc.n_blocks)
        regions = [{"name": reg.name, "population": float(r_pop[r]),
                    "population_error": float(r_err[r])}
                   for r, reg in enumerate(fc.regions)]
    if regions:
        p = np.array([r["population"] for r in regions])
        fr = fes.state_free_energies(p, fc.temperature)
        for r, f in zip(regions, fr):
            r["free_energy_eV"] = _json_float(f)
            r["free_energy_kJmol"] = _json_float(f / KJ_PER_MOL)

    # times: frames of the analysed (strided) trajectories, and physical units if known
    frame_fs = None if tc.frame_interval_fs is None else tc.frame_interval_fs * tc.stride
    max_lag = max(list(msm_out[1]) if msm_out and msm_out[1] else [1])
    t_unit, fs_per_unit = _time_unit(frame_fs, max_lag)
    to_time = (frame_fs or 1.0) / fs_per_unit  # frames -> t_unit

    # outputs
    stage("writing outputs")
    frame_in_traj = np.concatenate([np.arange(m) for m in lengths]) * tc.stride
    traj_idx = np.concatenate([np.full(m, i) for i, m in enumerate(lengths)])
    _write_states_csv(os.path.join(out_dir, "states.csv"), traj_idx, frame_in_traj,
                      labels, fv, cols, y, prefix)
    _atomic_savez(os.path.join(out_dir, "fes.npz"), free_energy_eV=surface.free_energy,
                  error_eV=surface.error, probability=surface.probability,
                  edges_0=surface.edges[0],
                  **({"edges_1": surface.edges[1]} if len(surface.edges) > 1 else {}),
                  names=np.array(cols), state_centres=centres_fes,
                  temperature=surface.temperature)
    plots = []
    if cfg.output.plots:
        stage("plots")
        from biojax.analysis import plots as pl
        plots.append(pl.plot_fes(surface, os.path.join(out_dir, "fes.png"), centres_fes,
                                 units=funits, periodic=fper, energy_unit=fc.energy_unit))
        plots.append(pl.plot_populations(
            pops.populations, pops.errors, os.path.join(out_dir, "populations.png"),
            stationary=msm_out[0].stationary_full() if msm_out else None))
        if y is not None:
            plots.append(pl.plot_projection(
                y, labels, os.path.join(out_dir, "projection.png"),
                (f"{prefix.upper()} 1", f"{prefix.upper()} 2"), unit=y_unit))
        if msm_out and msm_out[1]:
            plots.append(pl.plot_timescales(
                np.asarray(msm_out[1]) * to_time, msm_out[2] * to_time,
                os.path.join(out_dir, "timescales.png"), unit=t_unit))

    def times(values):
        return [_json_float(t * to_time) for t in values]

    msm_summary = None
    if msm_out:
        model, lags, its = msm_out
        msm_summary = {
            "lag_frames": model.lag, "active_set": model.active_set.tolist(),
            "stationary": model.stationary_full().tolist(),
            "timescales_frames": [_json_float(t) for t in model.timescales(
                cfg.msm.n_timescales)],
            "implied_timescales": {"lags_frames": list(lags),
                                   "timescales_frames": [[_json_float(t) for t in row]
                                                         for row in its]},
            "frame_interval_fs": frame_fs}
        if frame_fs:
            msm_summary.update({
                "time_unit": t_unit, "lag_time": model.lag * to_time,
                "timescales": times(model.timescales(cfg.msm.n_timescales))})
            msm_summary["implied_timescales"].update({
                "lag_times": times(lags), "timescales": [times(row) for row in its]})
    summary = {
        "n_frames": int(n), "trajectories": [t.source for t in trajs],
        "frames_per_trajectory": lengths, "stride": tc.stride, "n_atoms": trajs[0].n_atoms,
        "features": list(table.names), "n_encoded_features": int(x.shape[1]),
        "reduction": None if red is None else {
            "method": red.kind, "explained": red.explained.tolist(),
            "eigenvalues": red.eigenvalues.tolist(),
            "timescales_frames": None if red.timescales is None else
            [_json_float(t) for t in red.timescales],
            **({"timescales": times(red.timescales), "time_unit": t_unit}
               if frame_fs and red.timescales is not None else {})},
        "clustering": {"method": cc.method, "space": cc.space, "n_states": n_states,
                       "inertia": float(inertia), "silhouette": sil, "scan_k": scan},
        "states": [{
            "state": s, "population": float(pops.populations[s]),
            "population_error": float(pops.errors[s]),
            "free_energy_eV": _json_float(f_states[s]),
            "free_energy_kJmol": _json_float(f_states[s] / KJ_PER_MOL),
            "centre_fes": {c: _json_float(v) for c, v in zip(cols, centres_fes[s])},
            "msm_stationary": (float(msm_out[0].stationary_full()[s])
                               if msm_out else None)} for s in range(n_states)],
        "regions": regions,
        "msm": msm_summary,
        "weights": None if log_w is None else {
            "column": log_w[1], "effective_samples": float(weights.sum() ** 2
                                                           / np.sum(weights ** 2)),
            "applies_to": ["fes", "regions"]},
        "fes": {"features": cols, "units": funits, "bins": fc.bins,
                "temperature_K": fc.temperature, "angle_unit": fc.angle_unit,
                "ranges": ranges},
        "outputs": ["states.csv", "fes.npz", "summary.json"] +
                   [os.path.basename(p) for p in plots],
        "seconds": time.perf_counter() - t_start,
    }
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def frame_log_weights(paths: list[str], lengths: list[int], stride: int, column: str
                      ) -> tuple[np.ndarray, str] | None:
    """Per-frame log weights of the (strided) frames of ``paths`` from the
    ``observables.csv`` next to each trajectory, or None (``column`` "none", or "auto"
    with no ``bias_logw`` column everywhere). Frames are matched to rows by step: a run
    writes a frame every M steps from step 0 and a row every K steps (M a multiple of
    K), so the rows at steps 0, M, 2M, ... are the frames' rows."""
    if column == "none":
        return None
    name = "bias_logw" if column == "auto" else column
    found = []
    for p, n in zip(paths, lengths):
        obs = os.path.join(os.path.dirname(os.path.abspath(p)), "observables.csv")
        header = []
        if os.path.isfile(obs):
            with open(obs) as fh:
                header = fh.readline().strip().split(",")
        if name not in header or "step" not in header:
            if column == "auto":
                return None
            raise ConfigError(f"fes.log_weights = {column!r}: {obs} "
                              f"{'has no column ' + repr(name) if header else 'not found'}"
                              f"{' (columns: ' + ', '.join(header) + ')' if header else ''}")
        found.append((obs, header, n))
    out = []
    for obs, header, n in found:
        table = np.loadtxt(obs, delimiter=",", skiprows=1, ndmin=2)
        steps, lw = table[:, header.index("step")], table[:, header.index(name)]
        # frames in the file: n strided frames come from (n-1)*stride+1 .. n*stride
        # frames; the frame interval M is the last frame's step / (frames - 1)
        candidates = range((n - 1) * stride + 1, n * stride + 1)
        picked = None
        for n_frames in candidates:
            if n_frames < 2:
                continue
            last = steps[-1]
            M = last / (n_frames - 1)
            if M != int(M):
                continue
            rows = np.flatnonzero(np.mod(steps, int(M)) == 0)
            if rows.size == n_frames:
                picked = rows[::stride]
                break
        if picked is None or picked.size != n:
            raise AnalysisError(f"{obs}: cannot match its rows (steps {int(steps[0])}.."
                                f"{int(steps[-1])}) to the {n} analysed frames of the "
                                "trajectory next to it; was the run completed or resumed "
                                "to the same step?")
        out.append(lw[picked])
    return np.concatenate(out), name


def weighted_populations(labels: np.ndarray, weights: np.ndarray, n: int, n_blocks: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted populations of ``n`` labels and their block standard errors (the frames
    cut into ``n_blocks`` contiguous blocks; std of the block populations / √blocks)."""
    pops = np.bincount(labels, weights=weights, minlength=n) / weights.sum()
    blocks = []
    for idx in np.array_split(np.arange(labels.size), max(2, n_blocks)):
        w = weights[idx]
        if w.sum() > 0:
            blocks.append(np.bincount(labels[idx], weights=w, minlength=n) / w.sum())
    err = (np.std(blocks, axis=0, ddof=1) / np.sqrt(len(blocks)) if len(blocks) > 1
           else np.full(n, np.nan))
    return pops, err


def _atomic_savez(path: str, **arrays) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def _write_states_csv(path, traj_idx, frames, labels, fv, cols, y, prefix) -> None:
    header = ["trajectory", "frame", "state"] + list(cols)
    data = [traj_idx, frames, labels] + [fv[:, d] for d in range(fv.shape[1])]
    if y is not None:
        header += [f"{prefix}{i + 1}" for i in range(min(2, y.shape[1]))]
        data += [y[:, i] for i in range(min(2, y.shape[1]))]
    fmt = ["%d", "%d", "%d"] + ["%.6g"] * (len(header) - 3)
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.column_stack(data), fmt=fmt, delimiter=",",
                   header=",".join(header), comments="")
