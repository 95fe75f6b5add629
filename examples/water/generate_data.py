"""Liquid-water reference data from OpenMM: flexible SPC/Fw, 300 K, 1 bar, PME.

Writes to ``examples/data/water/`` (relative to the repository):

- ``water64.extxyz.xz``: 64 molecules (192 atoms): first 500 frames of an NPT run at 300 K
  and 1 bar (every 0.3 ps), each with its own cell (pbc), energy (eV), forces (eV/Å) and
  stress (eV/Å³, ASE sign, virial only: the strain derivative of the potential energy
  / V); then 100 frames of the same box at 400 K (NVT at the 300 K mean volume, every
  0.3 ps), to show the learned model compressed and stretched configurations
  (``info["temperature_K"]`` says which);
- ``water216.extxyz.xz``: 216 molecules (648 atoms), NPT at 300 K, a transfer test;
- ``reference.json``: the engine's own O–O g(r) (64 and 216 molecules) and densities
  (mean, standard error from blocks), the model parameters, run lengths and timings.

Model: SPC/Fw (Wu, Tepper & Voth, J. Chem. Phys. 124, 024503 (2006)): q_O = −0.82 e,
q_H = +0.41 e, LJ on O only (σ = 3.16549 Å, ε = 0.1554 kcal/mol), harmonic O–H bonds
(k_b = 1059.162 kcal/mol/Å², r0 = 1.012 Å) and H–O–H angle (k_θ = 75.90 kcal/mol/rad²,
θ0 = 113.24°), energies k/2 (x − x0)²; intramolecular non-bonded pairs excluded. Long range:
PME (real-space cutoff 5.5 Å, Ewald tolerance 5e-4), LJ cut at 5.5 Å with a switch from 5 Å
and the long-range dispersion correction (a 64-molecule box is about 12.4 Å wide and
OpenMM needs twice the cutoff below the fluctuating box length; 6 Å failed). Dynamics: LangevinMiddle, 0.5 fs, friction 1/ps, Monte Carlo
barostat (1 bar, every 25 steps); labels from OpenMM's Reference platform (double
precision). Stress: central differences (h = 1e-5) of the energy under the six
upper-triangular strains of box and atoms (OpenMM keeps the box in reduced form).

Run: ``OMP_NUM_THREADS=1 python3 examples/water/generate_data.py`` (about 10 minutes on
one core). Each stage is saved to ``/tmp/biojax_water_gen/`` when it finishes, so a killed
run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "examples", "data", "water")
WORK = "/tmp/biojax_water_gen"
HERE = os.path.dirname(os.path.abspath(__file__))

KCAL = 4.184  # kJ per kcal
SPCFW = {"q_O": -0.82, "q_H": 0.41, "sigma_A": 3.16549, "epsilon_kcal_mol": 0.1554,
         "k_bond_kcal_mol_A2": 1059.162, "r0_A": 1.012, "k_angle_kcal_mol_rad2": 75.90,
         "theta0_deg": 113.24}
CUTOFF_NM, SWITCH_NM = 0.55, 0.5
DT_FS, FRICTION, T_REF, P_BAR = 0.5, 1.0, 300.0, 1.0


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def build(n_molecules: int, seed: int):
    """OpenMM System + positions (nm) + box (nm) of ``n_molecules`` SPC/Fw waters."""
    import openmm
    from openmm import app, unit

    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(app.ForceField("tip3p.xml"), model="tip3p", numAdded=n_molecules,
                        neutralize=False)
    pos = np.array(modeller.getPositions().value_in_unit(unit.nanometer))
    box = np.array(modeller.getTopology().getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    assert len(pos) == 3 * n_molecules, len(pos)
    # TIP3P geometry → SPC/Fw equilibrium geometry is found by the minimiser below
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*v) for v in box])
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    nb.setCutoffDistance(CUTOFF_NM)
    nb.setUseSwitchingFunction(True)
    nb.setSwitchingDistance(SWITCH_NM)
    nb.setUseDispersionCorrection(True)
    nb.setEwaldErrorTolerance(5e-4)
    bonds, angles = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce()
    kb = SPCFW["k_bond_kcal_mol_A2"] * KCAL * 100.0  # kJ/mol/nm²
    ka = SPCFW["k_angle_kcal_mol_rad2"] * KCAL
    for m in range(n_molecules):
        o, h1, h2 = 3 * m, 3 * m + 1, 3 * m + 2
        system.addParticle(15.9994)
        system.addParticle(1.008)
        system.addParticle(1.008)
        nb.addParticle(SPCFW["q_O"], SPCFW["sigma_A"] / 10, SPCFW["epsilon_kcal_mol"] * KCAL)
        nb.addParticle(SPCFW["q_H"], 0.1, 0.0)
        nb.addParticle(SPCFW["q_H"], 0.1, 0.0)
        for a, b in ((o, h1), (o, h2), (h1, h2)):
            nb.addException(a, b, 0.0, 0.1, 0.0)
        bonds.addBond(o, h1, SPCFW["r0_A"] / 10, kb)
        bonds.addBond(o, h2, SPCFW["r0_A"] / 10, kb)
        angles.addAngle(h1, o, h2, np.deg2rad(SPCFW["theta0_deg"]), ka)
    for f in (nb, bonds, angles):
        system.addForce(f)
    rng = np.random.default_rng(seed)
    rng.shuffle(pos.reshape(n_molecules, 3, 3), axis=0)  # order only; seeds the velocities
    return system, pos, box


def make_sim(system, pos, box, temperature, npt, seed):
    import openmm
    from openmm import unit

    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    if npt:
        barostat = openmm.MonteCarloBarostat(P_BAR * unit.bar, temperature * unit.kelvin, 25)
        barostat.setRandomNumberSeed(seed)
        system.addForce(barostat)
    integ = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, FRICTION / unit.picosecond,
                                            DT_FS * unit.femtosecond)
    integ.setRandomNumberSeed(seed)
    platform = openmm.Platform.getPlatformByName("CPU")
    ctx = openmm.Context(system, integ, platform, {"Threads": "1"})
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*v) for v in box])
    ctx.setPositions(pos)
    return ctx, integ


class Labeller:
    """Energy (eV), forces (eV/Å) and virial stress (eV/Å³) on OpenMM's Reference platform."""

    def __init__(self, system):
        import openmm
        from ase import units

        self.openmm = openmm
        self.ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3),
                                  openmm.Platform.getPlatformByName("Reference"))
        self.ev = units.kJ / units.mol  # eV per kJ/mol

    def energy(self, pos_nm, box_nm, forces=False):
        Vec3 = self.openmm.Vec3
        self.ctx.setPeriodicBoxVectors(*[Vec3(*v) for v in box_nm])
        self.ctx.setPositions(pos_nm)
        st = self.ctx.getState(getEnergy=True, getForces=forces)
        e = st.getPotentialEnergy()._value * self.ev
        if not forces:
            return e
        return e, np.asarray(st.getForces(asNumpy=True)._value) * self.ev / 10.0

    def __call__(self, pos_nm, box_nm, h=1e-5):
        e, f = self.energy(pos_nm, box_nm, forces=True)
        volume = abs(np.linalg.det(box_nm)) * 1e3  # Å³
        stress = np.zeros((3, 3))
        for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
            d = []
            for s in (h, -h):
                F = np.eye(3)
                F[i, j] += s  # x' = F x (upper triangular keeps the box reduced)
                d.append(self.energy(pos_nm @ F.T, box_nm @ F.T))
            stress[i, j] = stress[j, i] = (d[0] - d[1]) / (2 * h) / volume
        return e, f, stress


def oo_rdf(frames_pos, frames_box, r_max=8.0, dr=0.05):
    """O–O g(r) (bins of ``dr`` Å up to ``r_max``) over frames in orthorhombic boxes (Å),
    counting every periodic image within ``r_max`` (valid beyond half the box length)."""
    edges = np.arange(0.0, r_max + 1e-9, dr)
    hist = np.zeros(len(edges) - 1)
    norm = 0.0
    images = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    for pos, box in zip(frames_pos, frames_box):
        o = pos[0::3]
        L = np.diag(box)
        d = o[:, None] - o[None]
        d -= L * np.round(d / L)
        for shift in images * L:
            r = np.sqrt(((d + shift) ** 2).sum(-1))
            hist += np.histogram(r[r > 1e-6], edges)[0]
        n = len(o)
        norm += n * n / np.prod(L)
    shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return 0.5 * (edges[1:] + edges[:-1]), hist / (shell * norm)


def density(n_molecules, volume_A3):
    """g/cm³ of ``n_molecules`` H2O in ``volume_A3``."""
    return n_molecules * 18.01528 / 6.02214076e23 / (np.asarray(volume_A3) * 1e-24)


def block_error(x, n_blocks=5):
    x = np.asarray(x)
    blocks = np.array_split(x, n_blocks)
    return float(np.std([b.mean() for b in blocks], ddof=1) / np.sqrt(n_blocks))


def run_stage(name, n_molecules, temperature, npt, equil_ps, prod_ps, label_every_ps,
              observe_every_ps, seed, start=None, volume=None):
    """One MD run; returns (and caches) observed boxes/positions and labelled frames."""
    from openmm import unit

    work = WORK
    path = os.path.join(work, name + ".npz")
    if os.path.exists(path):
        log(f"{name}: cached in {path}")
        return dict(np.load(path, allow_pickle=True))
    os.makedirs(work, exist_ok=True)
    system, pos, box = build(n_molecules, seed)
    if start is not None:
        pos, box = start
    if volume is not None:  # NVT at a given volume: scale molecule centres
        f = (volume / abs(np.linalg.det(box))) ** (1 / 3)
        mol = pos.reshape(n_molecules, 3, 3)
        centre = mol[:, :1]
        pos = (mol - centre + centre * f).reshape(-1, 3)
        box = box * f
    ctx, integ = make_sim(system, pos, box, temperature, npt, seed)
    if start is None:
        import openmm
        openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 500)
    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, seed)
    steps_per_ps = int(round(1000 / DT_FS))
    t0 = time.time()
    integ.step(int(equil_ps * steps_per_ps))
    log(f"{name}: {equil_ps} ps equilibration in {time.time() - t0:.0f} s")
    labeller = Labeller(system)
    obs_stride = int(round(observe_every_ps * steps_per_ps))
    label_every = int(round(label_every_ps / observe_every_ps))
    n_obs = int(round(prod_ps / observe_every_ps))
    boxes, positions, labelled = [], [], []
    t1 = time.time()
    for k in range(1, n_obs + 1):
        integ.step(obs_stride)
        st = ctx.getState(getPositions=True)
        p = np.asarray(st.getPositions(asNumpy=True)._value)
        b = np.asarray(st.getPeriodicBoxVectors(asNumpy=True)._value)
        boxes.append(b * 10)
        positions.append(p * 10)
        if k % label_every == 0:
            e, f, s = labeller(p, b)
            labelled.append((k, e, f, s))
        if k % max(1, n_obs // 10) == 0:
            log(f"{name}: {k * observe_every_ps:.0f}/{prod_ps} ps, "
                f"{(time.time() - t1) / (k * observe_every_ps):.1f} s/ps")
    st = ctx.getState(getPositions=True)
    out = {"boxes": np.array(boxes), "positions": np.array(positions),
           "label_index": np.array([x[0] - 1 for x in labelled]),
           "energy": np.array([x[1] for x in labelled]),
           "forces": np.array([x[2] for x in labelled]),
           "stress": np.array([x[3] for x in labelled]),
           "last_positions": np.asarray(st.getPositions(asNumpy=True)._value),
           "last_box": np.asarray(st.getPeriodicBoxVectors(asNumpy=True)._value),
           "seconds": time.time() - t0}
    tmp = path + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def rotate(v, axis, angle):
    """``v`` (…, 3) rotated by ``angle`` (rad) about the unit vectors ``axis`` (Rodrigues)."""
    c, s_ = np.cos(angle)[..., None], np.sin(angle)[..., None]
    return v * c + np.cross(axis, v) * s_ + axis * (axis * v).sum(-1, keepdims=True) * (1 - c)


def distort(pos, rng, sigma_r=0.06, sigma_deg=8.0, n_long=4, n_short=2):
    """Intramolecular distortions of whole molecules (O, H, H; Å), O fixed: every O–H
    length changes by N(0, ``sigma_r``) and every H–O–H angle by N(0, ``sigma_deg``),
    then ``n_long`` random molecules get one bond stretched to U(1.15, 1.40) Å and
    ``n_short`` one compressed to U(0.82, 0.92) Å (the thermal 300 K spread is
    ±0.025 Å, ±5°): what a learned potential must push back from."""
    mol = pos.reshape(-1, 3, 3).copy()
    n = len(mol)
    oh = mol[:, 1:] - mol[:, :1]                       # (n, 2, 3)
    r = np.linalg.norm(oh, axis=-1)
    u = oh / r[..., None]
    r_new = np.clip(r + rng.normal(0.0, sigma_r, r.shape), 0.82, 1.40)
    pick = rng.choice(n, n_long + n_short, replace=False)
    which = rng.integers(0, 2, n_long + n_short)
    r_new[pick[:n_long], which[:n_long]] = rng.uniform(1.15, 1.40, n_long)
    r_new[pick[n_long:], which[n_long:]] = rng.uniform(0.82, 0.92, n_short)
    normal = np.cross(u[:, 0], u[:, 1])
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    half = 0.5 * np.deg2rad(np.clip(rng.normal(0.0, sigma_deg, n), -30.0, 30.0))
    u0 = rotate(u[:, 0], normal, -half)                 # open (or close) the angle
    u1 = rotate(u[:, 1], normal, half)                  # symmetrically about the bisector
    mol[:, 1] = mol[:, 0] + u0 * r_new[:, :1]
    mol[:, 2] = mol[:, 0] + u1 * r_new[:, 1:]
    return mol.reshape(-1, 3)


def distorted_stage(name, source, n_frames, seed):
    """Labelled distorted frames (see :func:`distort`) from observed, unlabelled frames of
    the cached run ``source``; cached like :func:`run_stage`."""
    path = os.path.join(WORK, name + ".npz")
    if os.path.exists(path):
        log(f"{name}: cached in {path}")
        return dict(np.load(path, allow_pickle=True))
    rng = np.random.default_rng(seed)
    unlabelled = np.setdiff1d(np.arange(len(source["positions"])), source["label_index"])
    take = np.sort(rng.choice(unlabelled, n_frames, replace=False))
    system, _, _ = build(len(source["positions"][0]) // 3, seed)
    labeller = Labeller(system)
    t0 = time.time()
    positions, boxes, labels = [], [], []
    for k, i in enumerate(take):
        p = distort(source["positions"][i], rng)
        b = source["boxes"][i]
        labels.append(labeller(p / 10.0, b / 10.0))
        positions.append(p)
        boxes.append(b)
        if (k + 1) % max(1, n_frames // 10) == 0:
            log(f"{name}: {k + 1}/{n_frames} frames, {(time.time() - t0) / (k + 1):.2f} s/frame")
    out = {"boxes": np.array(boxes), "positions": np.array(positions),
           "label_index": np.arange(n_frames), "energy": np.array([x[0] for x in labels]),
           "forces": np.array([x[1] for x in labels]),
           "stress": np.array([x[2] for x in labels]), "source_index": take,
           "seconds": time.time() - t0}
    tmp = path + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def make_frames(run, n_molecules, temperature, note):
    """Labelled frames as ASE Atoms, values rounded to keep the file small."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for k, i in enumerate(run["label_index"]):
        atoms = Atoms("OH2" * n_molecules, positions=np.round(run["positions"][i], 5),
                      cell=np.round(run["boxes"][i], 6), pbc=True)
        atoms.wrap()
        atoms.positions = np.round(atoms.positions, 5)
        s = run["stress"][k]
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(np.round(run["energy"][k], 6)),
            forces=np.round(run["forces"][k], 5),
            stress=np.round([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], 8))
        atoms.info.update(temperature_K=temperature, source=note)
        frames.append(atoms)
    return frames


def write_frames(path, frames):
    """Frames as xz-compressed extended XYZ, written atomically."""
    import ase.io

    tmp = path[:-3]
    ase.io.write(tmp, frames, format="extxyz")
    with open(tmp, "rb") as f, lzma.open(path + ".tmp", "wb", preset=9) as g:
        g.write(f.read())
    os.replace(path + ".tmp", path)
    os.remove(tmp)
    return len(frames)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny run lengths (a smoke test)")
    args = p.parse_args(argv)
    q = 0.02 if args.quick else 1.0
    global OUT, WORK
    if args.quick:
        OUT, WORK = "/tmp/biojax_water_quick/out", "/tmp/biojax_water_quick/work"
    os.makedirs(OUT, exist_ok=True)
    import openmm

    ref = {"model": "SPC/Fw (Wu, Tepper & Voth 2006)", "parameters": SPCFW,
           "electrostatics": f"PME, cutoff {CUTOFF_NM * 10} Å, ewald tolerance 5e-4",
           "lj": f"cutoff {CUTOFF_NM * 10} Å, switched from {SWITCH_NM * 10} Å, "
                 "long-range dispersion correction",
           "dynamics": f"LangevinMiddle {DT_FS} fs, friction {FRICTION}/ps; Monte Carlo "
                       f"barostat {P_BAR} bar every 25 steps",
           "openmm": openmm.__version__, "runs": {}}
    note = "OpenMM SPC/Fw (biojax examples/water/generate_data.py)"
    plan = (("w64_300K_npt", "water64_300K", 64, T_REF, True, 20, 150, 0.3, 0.1, 1),
            ("w64_400K_nvt", "water64_400K", 64, 400.0, False, 10, 30, 0.3, 0.3, 2),
            ("w216_300K_npt", "water216_300K", 216, T_REF, True, 15, 20, 1.0, 0.1, 3),
            ("w64_500K_nvt", "water64_500K", 64, 500.0, False, 5, 12, 0.2, 0.2, 4))
    runs, n = {}, {}
    for key, fname, nmol, T, npt, eq, prod, every, obs, seed in plan:
        start = volume = None
        if key in ("w64_400K_nvt", "w64_500K_nvt"):  # from the end of the 300 K run, at its mean volume
            r64 = runs["w64_300K_npt"]
            start = (r64["last_positions"], r64["last_box"])
            volume = np.abs(np.linalg.det(r64["boxes"])).mean() / 1e3
        run_ = runs[key] = run_stage(key, nmol, T, npt, eq * q, prod * q, every, obs, seed,
                                     start=start, volume=volume)
        n[fname] = make_frames(run_, nmol, T, note)
        vol = np.abs(np.linalg.det(run_["boxes"]))
        ref["runs"][key] = {"molecules": nmol, "temperature_K": T, "ensemble": "NPT" if npt else "NVT",
                            "equilibration_ps": eq * q, "production_ps": prod * q,
                            "observed_every_ps": obs, "labelled_every_ps": every,
                            "labelled_frames": len(run_["energy"]),
                            "density_g_cm3": float(density(nmol, vol).mean()),
                            "density_stderr": block_error(density(nmol, vol)),
                            "volume_A3": float(vol.mean()),
                            "wall_seconds": float(run_["seconds"])}
        log(f"{fname}: {len(n[fname])} frames, density {ref['runs'][key]['density_g_cm3']:.4f} g/cm3")
    # distorted molecules (stretched/compressed O–H, opened/closed angles) in 300 K frames
    n_dist = 8 if args.quick else 240
    dist = runs["w64_distorted"] = distorted_stage("w64_distorted", runs["w64_300K_npt"], n_dist, 5)
    n["water64_distorted"] = make_frames(dist, 64, T_REF, note + ", distorted molecules")
    ref["runs"]["w64_distorted"] = {
        "molecules": 64, "from": "w64_300K_npt (unlabelled observed frames)",
        "labelled_frames": n_dist, "wall_seconds": float(dist["seconds"]),
        "distortion": "every O–H length + N(0, 0.06 Å), every H–O–H angle + N(0, 8°) "
                      "(clipped to ±30°); per frame 4 bonds set to U(1.15, 1.40) Å and 2 to "
                      "U(0.82, 0.92) Å; lengths clipped to 0.82–1.40 Å"}
    log(f"water64_distorted: {n_dist} frames")
    r, g64 = oo_rdf(runs["w64_300K_npt"]["positions"], runs["w64_300K_npt"]["boxes"])
    _, g216 = oo_rdf(runs["w216_300K_npt"]["positions"], runs["w216_300K_npt"]["boxes"])
    # the MD start (examples/water/start64.extxyz): the 300 K frame whose volume is nearest
    # the run's mean, without labels
    import ase.io
    vols = np.array([f.get_volume() for f in n["water64_300K"]])
    start = n["water64_300K"][int(np.argmin(np.abs(vols - vols.mean())))].copy()
    start.calc = None
    ase.io.write(os.path.join(os.path.dirname(OUT) if args.quick else HERE, "start64.extxyz"),
                 start, format="extxyz")
    # the 64-molecule frames (300 K then 400 K) in one file, the 216-molecule ones in another
    write_frames(os.path.join(OUT, "water64.extxyz.xz"),
                 n["water64_300K"] + n["water64_400K"] + n["water64_500K"]
                 + n["water64_distorted"])
    write_frames(os.path.join(OUT, "water216.extxyz.xz"), n["water216_300K"])
    ref["frames"] = {"water64.extxyz.xz": {"300 K": len(n["water64_300K"]),
                                           "400 K": len(n["water64_400K"]),
                                           "500 K": len(n["water64_500K"]),
                                           "300 K distorted": len(n["water64_distorted"])},
                     "water216.extxyz.xz": {"300 K": len(n["water216_300K"])}}
    ref["rdf_OO"] = {"r_A": np.round(r, 4).tolist(), "g_64": np.round(g64, 4).tolist(),
                     "g_216": np.round(g216, 4).tolist(),
                     "note": "from every observed frame (0.1 ps apart) of the 300 K NPT runs"}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    log("done:", json.dumps({k: (v["density_g_cm3"], v["density_stderr"]) for k, v in ref["runs"].items()
                             if "density_g_cm3" in v}))


if __name__ == "__main__":
    sys.exit(main())
