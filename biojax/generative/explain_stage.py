"""The ``biojax explain CONFIG.toml`` command: attributions of a potential and of state
assignments (see ``biojax.generative.explain`` and examples/generative_ala2/explain.toml).

Config (one ``[explain]`` table, optional ``[explain.states]``)::

    [explain]
    potential = "../models/ala2_painn"   # a saved biojax Potential, or
    target = "pkg.module:factory"        # factory(numbers) -> f(positions (N,3) Å) -> scalar
    structures = "frames.extxyz"         # structures to explain
    baseline = 0                         # index (in structures) of the IG baseline
    ig_steps = 64
    internal = true                      # IG over internal coordinates too

    [explain.states]                     # optional: a state classifier explained by IG
    trajectory = ["md/replica_*/trajectory.extxyz"]
    dihedrals = {phi = [4, 6, 8, 14], psi = [6, 8, 14, 16]}   # features: sin, cos
    distance_atoms = [0, 4, 5]           # features: all pairwise distances (Å)
    labels = "kmeans"                    # k-means (biojax.analysis) on label_dihedrals
    label_dihedrals = ["phi", "psi"]
    k = 3

``explain`` is a command of the ``biojax`` CLI (``biojax.cli._COMMANDS``), not a step of
``biojax run`` pipelines (it is not in the ``stages`` registry).

Writes ``explain.json`` (numbers), ``per_atom_energy.png``, ``energy_ig.png`` and
``state_ig.png`` to the output directory (default ``runs/<config name>``)."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Callable

import numpy as np

from biojax.core.config import add_override_option, cli_overrides, load
from biojax.core.errors import ConfigError, DataError

NAME = "explain"


@dataclasses.dataclass(frozen=True)
class StatesConfig:
    """``[explain.states]``: a classifier of conformational states on trajectory features."""

    trajectory: tuple[str, ...] = ()
    stride: int = 1
    dihedrals: dict = dataclasses.field(default_factory=dict)  # name -> 4 atom indices
    distance_atoms: tuple[int, ...] = ()
    labels: str = "kmeans"                    # "kmeans"
    label_dihedrals: tuple[str, ...] = ()     # default: every dihedral
    k: int = 3
    hidden: int = 64
    steps: int = 1000
    batch_size: int = 256
    learning_rate: float = 3e-3
    test_fraction: float = 0.2
    ig_steps: int = 32
    max_frames: int = 4000

    def __post_init__(self):
        if not self.trajectory:
            raise ValueError("[explain.states] 'trajectory' is required")
        if not self.dihedrals and not self.distance_atoms:
            raise ValueError("[explain.states] give features: 'dihedrals' and/or "
                             "'distance_atoms'")
        for name, quad in self.dihedrals.items():
            if not (isinstance(quad, (list, tuple)) and len(quad) == 4
                    and all(isinstance(i, int) for i in quad)):
                raise ValueError(f"[explain.states] dihedrals {name!r}: expected 4 atom "
                                 f"indices, got {quad!r}")
        for name in self.label_dihedrals:
            if name not in self.dihedrals:
                raise ValueError(f"[explain.states] label_dihedrals: {name!r} is not one "
                                 f"of dihedrals ({', '.join(self.dihedrals)})")
        if self.labels != "kmeans":
            raise ValueError(f"[explain.states] labels: expected 'kmeans', got {self.labels!r}")
        if self.k < 2 or self.steps < 1 or not 0 < self.test_fraction < 1:
            raise ValueError("[explain.states] k must be ≥ 2, steps ≥ 1, test_fraction in "
                             "(0, 1)")


@dataclasses.dataclass(frozen=True)
class ExplainTable:
    """``[explain]``: what to explain (see module doc)."""

    potential: str | None = dataclasses.field(default=None, metadata={"path": True})
    target: str | None = None
    structures: str | None = dataclasses.field(default=None, metadata={"path": True})
    baseline: int = 0
    ig_steps: int = 64
    internal: bool = True
    bond_scale: float = 1.2
    seed: int = 0
    plots: bool = True
    states: StatesConfig | None = None

    def __post_init__(self):
        if (self.potential is None) == (self.target is None) and self.structures is not None:
            raise ValueError("give exactly one of 'potential' (a saved model) or 'target' "
                             "(an import path 'package.module:factory')")
        if self.structures is None and self.states is None:
            raise ValueError("nothing to explain: give 'structures' (with a potential or "
                             "target) and/or an [explain.states] table")
        if self.ig_steps < 1:
            raise ValueError(f"ig_steps must be ≥ 1, got {self.ig_steps}")


@dataclasses.dataclass(frozen=True)
class Config:
    explain: ExplainTable


def load_config(path: str | os.PathLike, overrides=()) -> Config:
    """The explain config in ``path`` (strict keys; paths relative to the file)."""
    cfg = load(Config, path, overrides)
    st = cfg.explain.states
    if st is not None:
        base = os.path.dirname(os.path.abspath(os.fspath(path)))
        st = dataclasses.replace(st, trajectory=tuple(
            t if os.path.isabs(t) else os.path.join(base, t) for t in st.trajectory))
        cfg = Config(dataclasses.replace(cfg.explain, states=st))
    return cfg


def _read(pattern_list, stride=1, what="trajectory"):
    from biojax.data.io import read_frames
    from biojax.generative.internal import check_positions

    files = []
    for p in pattern_list:
        hits = sorted(glob.glob(p))
        if not hits:
            raise DataError(f"[explain] {what} {p!r}: no such file")
        files += hits
    pos, numbers = [], None
    for f in files:
        frames = read_frames(f, ":")
        if numbers is not None and list(frames[0].numbers) != list(numbers):
            raise DataError(f"{f}: its atoms differ from those of {files[0]}")
        numbers = frames[0].numbers
        pos.append(check_positions(np.stack([a.positions for a in frames]), f)[::stride])
    return np.concatenate(pos).astype(np.float32), np.asarray(numbers)


def run(config: Config, workdir: str, *, log: Callable[[str], None] = print,
        progress: bool = True, resume: bool = False) -> dict:
    """Compute the attributions ``config`` asks for into ``workdir``; returns the summary
    (also ``workdir/explain.json``)."""
    import jax
    import jax.numpy as jnp

    from biojax.core.atomic import atomic_write_text
    from biojax.generative import explain, internal

    c = config.explain
    os.makedirs(workdir, exist_ok=True)
    out: dict = {}
    if c.structures is not None:
        x, numbers = _read([c.structures], what="structures")
        if not 0 <= c.baseline < len(x):
            raise ConfigError(f"[explain] baseline {c.baseline}: {c.structures} has "
                              f"{len(x)} structure(s)")
        zm = None
        if c.internal:
            zm = internal.build_zmatrix(internal.bonds_from_positions(
                x[c.baseline], numbers, c.bond_scale), len(numbers))
        if c.potential is not None:
            from biojax.nn.io import load_potential

            pot = load_potential(c.potential)
            per_atom = explain.per_atom_energies(pot, numbers, x)
            energy = np.asarray(jax.vmap(explain.energy_function(pot, numbers))(
                jnp.asarray(x)))
            out["per_atom_energies_eV"] = per_atom.tolist()
            out["energies_eV"] = energy.tolist()
            out["decomposition_max_error_eV"] = float(np.max(np.abs(per_atom.sum(1) - energy)))
            f = jax.jit(explain.energy_function(pot, numbers))
        else:
            from biojax.core.registry import import_object

            f = import_object(c.target, "[explain] target")(numbers)
        out["integrated_gradients"] = []
        for i in range(len(x)):
            if i == c.baseline:
                continue
            r = explain.attributions_of(f, x[i], x[c.baseline], c.ig_steps, zm)
            rec = {"structure": i, "delta": r["delta_energy"],
                   "per_atom": np.asarray(r["per_atom"]).tolist(),
                   "completeness_error": r["completeness_error"]}
            if "internal" in r:
                rec["internal"] = np.asarray(r["internal"]).tolist()
                rec["internal_completeness_error"] = r["internal_completeness_error"]
            out["integrated_gradients"].append(rec)
            log(f"structure {i}: ΔE {r['delta_energy']:+.4f} vs structure {c.baseline}; IG "
                f"completeness error {r['completeness_error']:.2e} (Cartesian path)"
                + (f", {r['internal_completeness_error']:.2e} (internal path)"
                   if "internal" in r else ""))
        if zm is not None:
            out["zmatrix"] = {"bonds": zm.bond_pairs.tolist(), "angles": zm.angle_triples.tolist(),
                              "torsions": zm.torsion_quads.tolist()}
        out["numbers"] = numbers.tolist()
    if c.states is not None:
        out["states"] = _states(c.states, c.seed, workdir, log, progress, resume)
    atomic_write_text(os.path.join(workdir, "explain.json"), json.dumps(out, indent=1))
    if c.plots:
        try:
            from biojax.generative.explain import plot_summary

            plot_summary(out, workdir)
        except Exception as exc:  # plots never lose the numbers already written
            log(f"plots not written: {type(exc).__name__}: {exc}")
    return out


def _states(s: StatesConfig, seed, workdir, log, progress, resume) -> dict:
    import jax.numpy as jnp

    from biojax.analysis.cluster import kmeans
    from biojax.analysis.features import all_pairs, dihedrals, distances, sincos
    from biojax.generative import explain

    x, _ = _read(s.trajectory, s.stride)
    if len(x) > s.max_frames:
        x = x[np.linspace(0, len(x) - 1, s.max_frames).astype(int)]
    names, cols = [], []
    if s.dihedrals:
        dn = list(s.dihedrals)
        ang = np.asarray(dihedrals(x, np.asarray([s.dihedrals[n] for n in dn])))
        cols.append(np.asarray(sincos(ang)))
        names += [f"sin {n}" for n in dn] + [f"cos {n}" for n in dn]
        label_idx = [dn.index(n) for n in (s.label_dihedrals or dn)]
        label_feats = np.asarray(sincos(ang[:, label_idx]))
    if s.distance_atoms:
        pairs = all_pairs(s.distance_atoms)
        cols.append(np.asarray(distances(x, pairs)))
        names += [f"d({i},{j})" for i, j in pairs]
        if not s.dihedrals:
            label_feats = cols[-1]
    feats = np.concatenate(cols, 1)
    km = kmeans(jnp.asarray(label_feats), s.k, n_init=10, seed=seed)
    labels = np.asarray(km.labels)
    clf = explain.train_state_classifier(
        feats, labels, s.k, hidden=s.hidden, steps=s.steps, batch_size=s.batch_size,
        learning_rate=s.learning_rate, test_fraction=s.test_fraction, seed=seed,
        workdir=workdir, resume=resume, log=log, progress=progress)
    test = clf["test_index"]
    ig, err = explain.classifier_attributions(clf, feats[test], s.ig_steps)
    profile = np.mean(np.abs(ig), 0)
    share = profile / profile.sum()
    log(f"state classifier: {s.k} k-means states of {len(x)} frames, held-out accuracy "
        f"{clf['test_accuracy']:.3f}; largest mean |IG|: "
        + ", ".join(f"{names[i]} {share[i]:.2f}" for i in np.argsort(-share)[:4]))
    return {"n_frames": int(len(x)), "k": s.k, "feature_names": names,
            "populations": np.bincount(labels, minlength=s.k).astype(float).__truediv__(
                len(labels)).tolist(),
            "train_accuracy": clf["train_accuracy"], "test_accuracy": clf["test_accuracy"],
            "mean_abs_ig": profile.tolist(), "ig_share": share.tolist(),
            "ig_completeness_max_error": err}


def _explain(args) -> int:
    config = load_config(args.config, cli_overrides(args))
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    if os.path.exists(os.path.join(out, "explain.json")) and not (args.resume or args.overwrite):
        raise ConfigError(f"{out} already holds an explain run (explain.json); pass "
                          "--overwrite to replace it, --resume to continue it, or choose "
                          "another --out")
    from biojax.core.rundir import RunLock
    from biojax.data.io import os_errors

    os.makedirs(out, exist_ok=True)
    if args.overwrite and not args.resume:
        cp = os.path.join(out, "classifier.checkpoint.msgpack")
        for f in (cp, os.path.join(out, "classifier.metrics.jsonl")):
            if os.path.exists(f):
                os.remove(f)
    with RunLock(out), os_errors("explain"):
        run(config, out, progress=not args.quiet, resume=args.resume)
    print(f"attributions: {os.path.join(out, 'explain.json')}")
    return 0


def register(subparsers) -> None:
    """Add the ``explain`` subcommand to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "explain", help="attributions of a potential and of state assignments",
        description="Per-atom energy decomposition and integrated gradients of a potential; "
                    "a state classifier on trajectory features explained by integrated "
                    "gradients. Writes DIR/explain.json and plots.")
    p.add_argument("config", help="explain config (TOML)")
    add_override_option(p, "explain.ig_steps=128")
    p.add_argument("--out", default=None, help="output directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the state classifier from its checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_explain)

