"""Back-mapping: atomistic structures from coarse-grained frames.

``biojax backmap CG_TRAJ TEMPLATE --model FG_MODEL --out DIR``. For each CG frame:

1. **place**: the atomistic template is moved rigidly (Kabsch, :func:`biojax.core.geometry.
   kabsch_rotation`) so that its mapped positions ``M x`` best fit the beads;
2. **torsions**: where beads are single atoms, every rotatable bond j–k between two bead
   atoms that have bead-atom neighbours i (of j) and l (of k) is turned so that the
   dihedral i-j-k-l of the atoms equals that of the beads (the side of k rotates about
   the j→k axis; bonds in rings are left alone), then the template is placed again. This
   takes the template across torsional barriers that a restrained descent could only
   cross by dragging atoms through each other (or inverting a chiral centre);
3. **relax**: FIRE descent (as :meth:`biojax.md.Simulation._minimize`: unit masses, the
   step of any atom capped) of ``E_FG(x) + ½ k Σ_b |(M x)_b − bead_b|²``, the restraint
   acting through the mapping matrix M, so centre-of-mass beads work as single-atom ones.
   Jitted and vmapped over a batch of frames.

Per frame it reports the FG energy (eV, the model's total with its reference energies),
the restraint RMSD of ``M x`` to the beads (Å), the largest remaining force (eV/Å), the
FIRE steps, whether every covalent bond of the template survived, and for the torsions
set in step 2 the difference between the atoms' and the beads' dihedrals.

The FG energy is evaluated on an all-pairs graph (the model's smooth cutoff removes
distant pairs), which is exact and fine for molecules of up to a few hundred atoms.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Sequence

import numpy as np

from biojax.core.errors import ConfigError, DataError, ModelError

NAME = "backmap"


# ---------------------------------------------------------------------- mapping
def matrix_from_groups(groups: Sequence[Sequence[int]], masses: Sequence[float]
                       ) -> np.ndarray:
    """Mapping matrix (B, N) with centre-of-mass weights for atom-index ``groups`` of a
    template with atom ``masses`` (amu); a one-atom group is that atom."""
    from biojax.cg.mapping import from_groups

    return from_groups(groups, masses, bead_numbers=[0] * len(groups),
                       allow_unassigned=True).matrix


def parse_beads(text: str) -> list[list[int]]:
    """``"4,6,8+9,14"`` → [[4], [6], [8, 9], [14]]: comma-separated beads, each one atom
    index or ``+``-joined indices (a centre-of-mass bead)."""
    groups = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            groups.append([int(i) for i in part.split("+")])
        except ValueError:
            raise ConfigError(f"--beads: {part!r} is not an atom index or indices joined "
                              "by '+' (e.g. --beads 4,6,8,14,16)") from None
    if not groups:
        raise ConfigError("--beads names no beads")
    return groups


def groups_from_names(bead_names: Sequence[str], template) -> list[list[int]]:
    """Atom indices of beads named ``"RESnum:ATOM"`` (as
    :func:`biojax.cg.mapping.from_topology` names them) in a template with PDB names
    (ASE ``residuenames``/``residuenumbers``/``atomtypes`` arrays)."""
    arrays = template.arrays
    if not all(k in arrays for k in ("residuenames", "residuenumbers", "atomtypes")):
        raise DataError("the CG model's mapping is over a different atom set and the "
                        "template has no PDB atom names to match its bead names "
                        f"({', '.join(bead_names[:3])}, ...); give a PDB template, "
                        "--topology PDB, or --beads")
    lookup = {f"{r.strip()}{int(n)}:{a.strip()}": i for i, (r, n, a) in enumerate(zip(
        arrays["residuenames"], arrays["residuenumbers"], arrays["atomtypes"]))}
    missing = [b for b in bead_names if b not in lookup]
    if missing:
        raise DataError(f"bead(s) {', '.join(missing)} of the CG model's mapping not found "
                        "among the template's atoms (residue name, number and atom name "
                        "must match)")
    return [[lookup[b]] for b in bead_names]


# ---------------------------------------------------------------------- torsions
def _bond_graph(numbers, positions) -> list[set[int]]:
    import ase
    import ase.io

    from biojax.md.system import covalent_bonds

    bonds, _ = covalent_bonds(ase.Atoms(numbers=numbers, positions=positions))
    adj: list[set[int]] = [set() for _ in range(len(numbers))]
    for i, j in bonds:
        adj[int(i)].add(int(j))
        adj[int(j)].add(int(i))
    return adj


def _side(adj: list[set[int]], j: int, k: int) -> set[int] | None:
    """Atoms reached from k without crossing the bond j–k (None if j is reached: a ring)."""
    seen, stack = {k}, [k]
    while stack:
        a = stack.pop()
        for b in adj[a]:
            if a == k and b == j:
                continue
            if b == j:
                return None
            if b not in seen:
                seen.add(b)
                stack.append(b)
    return seen


def find_torsions(numbers, positions, groups) -> list[tuple[tuple[int, int, int, int],
                                                            tuple[int, ...], np.ndarray]]:
    """Torsions that beads define: ``(bead quadruple (bi, bj, bk, bl), atom quadruple,
    moving-atom mask (N,))`` for each non-ring bond j–k between single-atom beads with
    single-atom bead neighbours i of j and l of k (the first such i and l)."""
    adj = _bond_graph(numbers, positions)
    atom_of = {g[0]: b for b, g in enumerate(groups) if len(g) == 1}
    out, done = [], set()
    for j, bj in atom_of.items():
        for k in sorted(adj[j]):
            if k not in atom_of or (k, j) in done:
                continue
            done.add((j, k))
            i = next((a for a in sorted(adj[j]) if a != k and a in atom_of), None)
            l_ = next((a for a in sorted(adj[k]) if a != j and a in atom_of), None)
            side = _side(adj, j, k)
            if i is None or l_ is None or side is None:
                continue
            mask = np.zeros(len(numbers), bool)
            mask[sorted(side)] = True
            out.append(((atom_of[i], bj, atom_of[k], atom_of[l_]), (i, j, k, l_), mask))
    out.sort(key=lambda t: t[0][1:3])
    return out


def _rotate_about(x, mask, a, b, angle):
    """Rotate the atoms ``mask`` of frames x (F, N, 3) by ``angle`` (F,) rad about the
    axis a→b (F, 3) (right-hand rule)."""
    u = b - a
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    p = x[:, mask] - a[:, None]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    uu = u[:, None]
    rot = (p * c + np.cross(uu, p) * s + uu * np.sum(uu * p, -1, keepdims=True) * (1 - c))
    x = x.copy()
    x[:, mask] = rot + a[:, None]
    return x


def place_template(template_positions, matrix, beads, torsions=()) -> np.ndarray:
    """Template copies (F, N, 3) Å fitted to ``beads`` (F, B, 3) Å: rigid fit of
    ``matrix @ x``, each of ``torsions`` (from :func:`find_torsions`) turned to the
    beads' dihedral, then fitted again."""
    from biojax.core.geometry import dihedrals_float64

    beads = np.asarray(beads, np.float64)
    M = np.asarray(matrix, np.float64)
    x = np.broadcast_to(np.asarray(template_positions, np.float64),
                        (beads.shape[0],) + np.shape(template_positions)).copy()
    x = _fit_to_beads(x, M, beads)
    for bq, aq, mask in torsions:
        target = dihedrals_float64(beads, np.array([bq]))[:, 0]
        current = dihedrals_float64(x, np.array([aq]))[:, 0]
        x = _rotate_about(x, mask, x[:, aq[1]], x[:, aq[2]], target - current)
    return _fit_to_beads(x, M, beads) if len(torsions) else x


def _fit_to_beads(x, M, beads):
    mapped = np.einsum("bn,fnk->fbk", M, x)
    cm, cb = mapped.mean(1, keepdims=True), beads.mean(1, keepdims=True)
    h = np.swapaxes(mapped - cm, 1, 2) @ (beads - cb)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    d = np.where(d == 0, 1.0, d)
    u[:, :, 2] *= d[:, None]
    return (x - cm) @ (u @ vt) + cb


# ---------------------------------------------------------------------- relaxation
def fg_energy_fn(potential, numbers):
    """``energy(x)`` (eV, interaction energy without reference energies) of the template
    atoms at x (N, 3) Å on an all-pairs graph."""
    import jax.numpy as jnp

    from biojax.core.graph import Graph

    species = jnp.asarray(potential.species_of(numbers))
    n = len(numbers)
    s, r = np.nonzero(~np.eye(n, dtype=bool))
    s, r = jnp.asarray(s, jnp.int32), jnp.asarray(r, jnp.int32)
    edge_mask, node_mask = jnp.ones(s.shape, bool), jnp.ones((n,), bool)

    def energy(x):
        g = Graph(vectors=x[r] - x[s], species=species, senders=s, receivers=r,
                  edge_mask=edge_mask, node_mask=node_mask, pairs=False)
        return jnp.sum(potential.atomic_energies(potential.params, g))

    return energy


@dataclasses.dataclass(frozen=True)
class RelaxSettings:
    """FIRE settings of the restrained relaxation. ``restraint_k`` eV/Å² per bead;
    ``fmax`` eV/Å; ``dt_fs`` the starting FIRE step (grows to 10×); ``max_step`` Å the
    most any atom moves per step; ``batch`` frames relaxed together."""

    restraint_k: float = 50.0
    fmax: float = 0.01
    steps: int = 2000
    dt_fs: float = 1.0
    max_step: float = 0.1
    batch: int = 32


def make_relax(potential, numbers, matrix, settings: RelaxSettings):
    """A jitted ``relax(x (F, N, 3), beads (F, B, 3))`` → (x, E_FG, E_restraint, fmax,
    steps, F_FG) of FIRE on E_FG + ½ k Σ_b |(M x)_b − bead_b|² (eV, Å), vmapped over frames."""
    import jax
    import jax.numpy as jnp

    from biojax.core.units import FS

    e_fg = fg_energy_fn(potential, numbers)
    M = jnp.asarray(matrix, jnp.float32)
    k = float(settings.restraint_k)
    from biojax.md.integrators import fire_move, fire_start

    dt0, max_step = settings.dt_fs * FS, settings.max_step
    fmax2 = settings.fmax ** 2

    def parts(x, beads):
        d = M @ x - beads
        return e_fg(x), 0.5 * k * jnp.sum(d * d)

    def total(x, beads):
        e, r = parts(x, beads)
        return e + r, (e, r)

    grad = jax.value_and_grad(total, has_aux=True)

    def one(x, beads):
        # one energy-and-force evaluation per iteration, at the top of the loop body (so
        # the network is compiled once); the last iteration and a converged one do not
        # move, so the returned energies and forces are those of the returned x
        def cond(c):
            return ~c[-1]

        def body(c):
            x, fire, f, e, r, i, _ = c
            (_, (e, r)), g = grad(x, beads)
            f = -g
            stop = (jnp.max(jnp.sum(f * f, -1)) <= fmax2) | (i + 1 >= settings.steps)
            dr, fire = fire_move(fire, f, 10.0 * dt0, max_step)
            x = jnp.where(stop, x, x + dr)
            return x, fire, f, e, r, i + 1, stop

        z = jnp.zeros((), x.dtype)
        c = (x, fire_start(x, dt0), jnp.zeros_like(x), z, z, jnp.int32(0), jnp.bool_(False))
        x, fire, f, e, r, i, _ = jax.lax.while_loop(cond, body, c)
        f_fg = f + k * (M.T @ (M @ x - beads))  # the total less the restraint's force
        return x, e, r, jnp.sqrt(jnp.max(jnp.sum(f * f, -1))), i - 1, f_fg

    return jax.jit(jax.vmap(one))


# ---------------------------------------------------------------------- driver
def check_inputs(beads, template, matrix, potential) -> np.ndarray:
    """Validate and return the beads (F, B, 3) float64; raises DataError / ModelError."""
    beads = np.asarray(beads, np.float64)
    if beads.ndim == 2:
        beads = beads[None]
    if beads.ndim != 3 or beads.shape[-1] != 3 or beads.shape[0] == 0:
        raise DataError(f"CG frames have shape {beads.shape}; expected (frames, beads, 3)")
    B = np.shape(matrix)[0]
    if beads.shape[1] != B:
        raise DataError(f"the CG frames have {beads.shape[1]} beads but the mapping has {B}")
    if np.shape(matrix)[1] != len(template):
        raise DataError(f"the mapping is over {np.shape(matrix)[1]} atoms but the template "
                        f"has {len(template)}")
    bad = np.nonzero(~np.all(np.isfinite(beads), axis=(1, 2)))[0]
    if len(bad):
        raise DataError(f"CG frame(s) {bad[:5].tolist()} have non-finite coordinates")
    if not np.all(np.isfinite(template.positions)):
        raise DataError("the template has non-finite coordinates")
    potential.species_of(template.numbers)  # unknown elements → ModelError
    return beads


def backmap(beads, template, potential, matrix, groups=None,
            settings: RelaxSettings = RelaxSettings(), set_torsions: bool = True,
            progress: bool = False, checkpoint: str | None = None) -> dict:
    """Back-map CG ``beads`` (F, B, 3) Å onto the atomistic ``template`` (ase.Atoms) with
    the FG ``potential`` and mapping ``matrix`` (B, N) (``groups``: the atom indices per
    bead, for the torsion step; None skips it). Returns ``positions`` (F, N, 3) Å,
    ``energy`` (F,) eV (FG total incl. reference energies), ``forces`` (F, N, 3) eV/Å
    (FG only), ``restraint_energy`` (F,) eV, ``bead_rmsd`` (F,) Å, ``fmax`` (F,) eV/Å of
    the restrained total, ``steps`` (F,), ``bonds_intact`` (F,) bool and per torsion
    ``dihedral_error_deg`` (F, T) (atoms − beads, wrapped to ±180°). ``checkpoint``: an
    .npz updated after every batch and resumed from."""
    import jax
    import jax.numpy as jnp

    from biojax.core.atomic import atomic_path
    from biojax.core.geometry import dihedrals_float64
    from biojax.core.progress import progress as bar
    from biojax.md.system import covalent_bonds

    beads = check_inputs(beads, template, matrix, potential)
    F, N = beads.shape[0], len(template)
    numbers = template.get_atomic_numbers()
    torsions = (find_torsions(numbers, template.positions, groups)
                if set_torsions and groups is not None else [])
    relax = make_relax(potential, numbers, matrix, settings)
    keys = ("positions", "e_fg", "restraint_energy", "fmax", "steps", "forces")
    done = 0
    store = {"positions": np.zeros((F, N, 3)), "e_fg": np.zeros(F),
             "restraint_energy": np.zeros(F), "fmax": np.zeros(F),
             "steps": np.zeros(F, np.int64), "forces": np.zeros((F, N, 3))}
    if checkpoint and os.path.isfile(checkpoint):
        with np.load(checkpoint) as z:  # resumed only for the same frames and settings
            same = ("beads" in z and z["beads"].shape == beads.shape
                    and np.array_equal(z["beads"], beads)
                    and str(z["settings"]) == repr((settings, bool(torsions))))
            if same:
                done = int(z["done"])
                for key in keys:
                    store[key] = z[key].copy()
    nb = settings.batch
    with bar(F, "backmap", progress, unit="frame") as pb:
        pb.update(done)
        for start in range(done, F, nb):
            idx = np.arange(start, min(start + nb, F))
            pad = np.concatenate([idx, np.full(nb - len(idx), idx[-1])])  # one compiled shape
            x0 = place_template(template.positions, matrix, beads[pad], torsions)
            x, e, r, fm, st, f = jax.device_get(relax(jnp.asarray(x0, jnp.float32),
                                                      jnp.asarray(beads[pad], jnp.float32)))
            n = len(idx)
            for key, val in zip(keys, (x, e, r, fm, st, f)):
                store[key][idx] = np.asarray(val)[:n]
            done = int(idx[-1]) + 1
            pb.update(done)
            pb.set(fmax=f"{float(np.max(fm[:n])):.3f}")
            if checkpoint:
                with atomic_path(checkpoint) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, done=done, beads=beads,
                                 settings=repr((settings, bool(torsions))), **store)
    pos = store["positions"]
    bad = np.nonzero(~(np.all(np.isfinite(pos), axis=(1, 2)) & np.isfinite(store["e_fg"])))[0]
    if len(bad):
        from biojax.core.errors import SimulationError

        raise SimulationError(f"back-mapping gave non-finite positions or energies for "
                              f"frame(s) {bad[:10].tolist()}; check that the template "
                              "matches the beads, or lower --restraint")
    bonds, ref = covalent_bonds(template)
    lengths = np.linalg.norm(pos[:, bonds[:, 0]] - pos[:, bonds[:, 1]], axis=-1)
    mapped = np.einsum("bn,fnk->fbk", np.asarray(matrix, np.float64), pos)
    chiral = _chiral_centres(template)
    out = {"positions": pos,
           "energy": store["e_fg"] + potential.reference_energy(numbers),
           "interaction_energy": store["e_fg"], "forces": store["forces"],
           "restraint_energy": store["restraint_energy"],
           "bead_rmsd": np.sqrt(np.mean(np.sum((mapped - beads) ** 2, -1), -1)),
           "fmax": store["fmax"], "steps": store["steps"],
           "bonds_intact": np.all(lengths < 1.3 * ref, axis=-1),
           "chirality_kept": np.all(_signed_volumes(pos, chiral)
                                    * _signed_volumes(template.positions[None], chiral) > 0,
                                    axis=-1),
           "bonds": bonds, "torsions": [(list(b), list(a)) for b, a, _ in torsions]}
    if torsions:
        bq = np.array([t[0] for t in torsions])
        aq = np.array([t[1] for t in torsions])
        diff = dihedrals_float64(pos, aq) - dihedrals_float64(beads, bq)
        out["dihedral_error_deg"] = np.degrees(np.angle(np.exp(1j * diff)))
    return out


def _chiral_centres(template) -> np.ndarray:
    """(C, 4) atom quadruples: each atom with four covalent neighbours and its first three
    neighbours (their signed volume fixes the centre's handedness)."""
    adj = _bond_graph(template.numbers, template.positions)
    rows = [[c] + sorted(n)[:3] for c, n in enumerate(adj) if len(n) == 4]
    return np.array(rows, int).reshape(-1, 4)


def _signed_volumes(x, quads) -> np.ndarray:
    """(a − c)·((b − c) × (d − c)) (Å³) for quadruples (c, a, b, d) of frames x (F, N, 3)."""
    c, a, b, d = (x[:, quads[:, i]] for i in range(4))
    return np.sum((a - c) * np.cross(b - c, d - c), -1)


def summarize(result: dict, settings: RelaxSettings) -> dict:
    """JSON-ready per-frame values and their ranges."""
    def stats(a):
        a = np.asarray(a, np.float64)
        return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}

    s = {"frames": int(len(result["energy"])), "settings": dataclasses.asdict(settings),
         "energy_eV": stats(result["energy"]), "bead_rmsd_A": stats(result["bead_rmsd"]),
         "fmax_eV_A": stats(result["fmax"]), "steps": stats(result["steps"]),
         "converged": int(np.sum(result["fmax"] <= settings.fmax)),
         "bonds_intact": int(np.sum(result["bonds_intact"])),
         "chirality_kept": int(np.sum(result["chirality_kept"])),
         "torsions": result["torsions"],
         "per_frame": {"energy_eV": result["energy"], "bead_rmsd_A": result["bead_rmsd"],
                       "fmax_eV_A": result["fmax"], "steps": result["steps"],
                       "restraint_energy_eV": result["restraint_energy"]}}
    if "dihedral_error_deg" in result:
        err = np.abs(result["dihedral_error_deg"])
        s["dihedral_abs_error_deg"] = {"max": err.max(0).tolist(),
                                       "mean": err.mean(0).tolist()}
        s["per_frame"]["dihedral_error_deg"] = result["dihedral_error_deg"]
    return s


# ---------------------------------------------------------------------- CLI
def read_cg_frames(path: str) -> np.ndarray:
    """CG frames (F, B, 3) Å from a .npy array or any ASE-readable trajectory."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: CG trajectory not found")
    if path.endswith(".npy"):
        try:
            x = np.load(path)
        except Exception as exc:
            raise DataError(f"{path}: cannot read as .npy ({exc})") from None
        if x.ndim != 3 or x.shape[-1] != 3:
            raise DataError(f"{path}: array of shape {x.shape}; expected (frames, beads, 3)")
        return np.asarray(x, np.float64)
    from biojax.data.io import read_frames

    frames = read_frames(path)
    sizes = {len(a) for a in frames}
    if len(sizes) != 1:
        raise DataError(f"{path}: frames have different bead counts {sorted(sizes)}")
    return np.stack([a.positions for a in frames])


def _read_template(path: str, topology: str | None):
    """The template's first frame (PDB through openmm, names kept; else ASE), with atom
    names from ``topology`` (a PDB) if given."""
    from biojax.md.stage import load_structure

    if not os.path.isfile(path):
        raise DataError(f"{path}: template structure not found")
    template = load_structure(path)[0]
    if topology:
        names = load_structure(topology)[0]
        if len(names) != len(template):
            raise DataError(f"{topology}: {len(names)} atoms, the template {len(template)}")
        if not np.array_equal(names.numbers, template.numbers):
            raise DataError(f"{topology}: its elements differ from the template's")
        for key in ("residuenames", "residuenumbers", "atomtypes"):
            if key in names.arrays:
                template.arrays[key] = names.arrays[key]
    return template


def _mapping_for(args, template):
    if args.beads:
        groups = parse_beads(args.beads)
    elif args.cg_model:
        from biojax.cg.potential import load_cg_potential

        mapping = load_cg_potential(args.cg_model).mapping
        if mapping is None:
            raise DataError(f"{args.cg_model}: the CG model stores no mapping; use --beads")
        if mapping.n_atoms == len(template):
            groups = [list(g) for g in mapping.groups]
        else:
            groups = groups_from_names(mapping.bead_names, template)
    else:
        raise ConfigError("give the mapping: --beads i,j,k,... or --cg-model DIR")
    bad = [i for g in groups for i in g if not 0 <= i < len(template)]
    if bad:
        raise ConfigError(f"--beads names atom(s) {bad} outside the template "
                          f"({len(template)} atoms)")
    return groups, matrix_from_groups(groups, template.get_masses())


def _backmap(args) -> int:
    import ase
    import ase.io

    from biojax.core.atomic import atomic_write_text
    from biojax.data.io import os_errors
    from biojax.nn.io import load_potential

    t0 = time.perf_counter()
    with os_errors("backmap"):
        template = _read_template(args.template, args.topology)
        groups, matrix = _mapping_for(args, template)
        beads = read_cg_frames(args.cg_traj)
        if args.frames:
            stride = max(1, len(beads) // args.frames) if args.stride is None else args.stride
            beads = beads[::stride][:args.frames]
        if not os.path.isdir(args.model):
            raise ModelError(f"{args.model}: FG model directory not found")
        potential = load_potential(args.model)
        settings = RelaxSettings(restraint_k=args.restraint, fmax=args.fmax,
                                 steps=args.steps, batch=args.batch)
        os.makedirs(args.out, exist_ok=True)
        ckpt = os.path.join(args.out, "checkpoint.npz")
        if not args.resume and os.path.exists(ckpt):
            os.remove(ckpt)
        res = backmap(beads, template, potential, matrix, groups, settings,
                      set_torsions=not args.no_torsions, progress=not args.quiet,
                      checkpoint=ckpt)
        frames = []
        for k in range(len(beads)):
            a = ase.Atoms(numbers=template.numbers, positions=res["positions"][k])
            a.info.update(energy=float(res["energy"][k]), bead_rmsd=float(res["bead_rmsd"][k]),
                          fmax=float(res["fmax"][k]), cg_frame=k)
            a.arrays["forces"] = res["forces"][k]
            frames.append(a)
        from biojax.core.atomic import atomic_path

        path = os.path.join(args.out, "backmapped.extxyz")
        with atomic_path(path) as tmp:
            ase.io.write(tmp, frames, format="extxyz")
        summary = summarize(res, settings)
        summary.update(cg_traj=os.path.abspath(args.cg_traj),
                       template=os.path.abspath(args.template),
                       model=os.path.abspath(args.model), groups=groups,
                       wall_s=time.perf_counter() - t0)
        atomic_write_text(os.path.join(args.out, "summary.json"),
                          json.dumps(summary, indent=1, default=_json_default))
        os.remove(ckpt) if os.path.exists(ckpt) else None
    e, r = summary["energy_eV"], summary["bead_rmsd_A"]
    print(f"backmap: {summary['frames']} frames, FG energy {e['min']:.3f} .. {e['max']:.3f} eV, "
          f"bead RMSD ≤ {r['max']:.4f} Å, {summary['converged']} converged, "
          f"{summary['bonds_intact']} with all bonds intact, {summary['chirality_kept']} with every "
          "tetrahedral centre's handedness kept")
    if "dihedral_abs_error_deg" in summary:
        print("backmap: largest |dihedral(atoms) − dihedral(beads)| per torsion: "
              + ", ".join(f"{x:.2f}°" for x in summary["dihedral_abs_error_deg"]["max"]))
    print(f"written: {path}, {os.path.join(args.out, 'summary.json')}")
    return 0


def _json_default(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    raise TypeError(type(x).__name__)


def register(subparsers) -> None:
    """Add the ``backmap`` subcommand to the ``biojax`` parser."""
    import argparse

    p = subparsers.add_parser(
        "backmap", help="atomistic structures from CG frames",
        description="Place an atomistic template on each CG frame (rigid fit, backbone "
                    "torsions set from the beads) and relax it with the FG model under "
                    "harmonic restraints of its mapped positions to the beads; writes "
                    "DIR/backmapped.extxyz (energies, forces) and DIR/summary.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("cg_traj", metavar="CG_TRAJ",
                   help="CG frames: .npy (frames, beads, 3) Å or any ASE-readable file")
    p.add_argument("template", metavar="TEMPLATE", help="atomistic structure (ASE-readable)")
    p.add_argument("--model", required=True, metavar="DIR", help="FG model directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--cg-model", default=None, metavar="DIR",
                   help="take the mapping from this CG model (bead names are matched to "
                        "PDB atom names when its mapping is over another atom set)")
    p.add_argument("--beads", default=None, metavar="I,J,...",
                   help="template atom index of each bead; '+' joins a centre-of-mass group")
    p.add_argument("--topology", default=None, metavar="PDB",
                   help="PDB giving the template's atom names (for --cg-model)")
    p.add_argument("--restraint", type=float, default=50.0, metavar="K",
                   help="restraint constant, eV/Å² per bead")
    p.add_argument("--fmax", type=float, default=0.01, help="FIRE stops below this eV/Å")
    p.add_argument("--steps", type=int, default=2000, help="FIRE steps at most")
    p.add_argument("--frames", type=int, default=None, metavar="N",
                   help="back-map N frames evenly spread over the trajectory")
    p.add_argument("--stride", type=int, default=None, help="frame stride with --frames")
    p.add_argument("--batch", type=int, default=32, help="frames relaxed together")
    p.add_argument("--no-torsions", action="store_true",
                   help="skip setting the torsions from the beads (restraints only)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_backmap)
