"""The registries behind every extension point: built-ins register themselves, an import
path needs no registration, and an unknown name is an error listing the valid ones."""

import pytest

from biojax.core import registry
from biojax.core.errors import ConfigError

BUILT_INS = {
    registry.models: {"schnet", "painn", "lennard-jones", "morse", "zero", "spline-pair"},
    registry.loss_terms: {"energy", "forces", "stress"},
    registry.integrators: {"nve", "nvt-langevin", "nvt-nose-hoover", "npt"},
    registry.energy_terms: {"harmonic-distance"},
    registry.observables: {"distance", "radius-of-gyration"},
    registry.reference_engines: {"gfn2-xtb", "emt", "openmm"},
    registry.features: {"backbone_dihedrals", "dihedrals", "distances", "contacts",
                        "aligned_coordinates", "rmsd"},
    registry.stages: {"sample", "train", "simulate", "analyze", "coarse-grain"},
}


@pytest.mark.parametrize("reg", list(BUILT_INS), ids=lambda r: r.kind)
def test_built_ins_are_registered_and_unknown_names_list_them(reg):
    names = set(registry.load(reg).names())
    assert BUILT_INS[reg] <= names
    with pytest.raises(ConfigError) as err:
        reg.get("no-such-thing")
    message = str(err.value)
    assert f"unknown {reg.kind} 'no-such-thing'" in message
    assert all(name in message for name in BUILT_INS[reg])


def test_import_path_needs_no_registration_and_bad_paths_are_named():
    import math

    assert registry.resolve(registry.observables, "math:sqrt") is math.sqrt
    assert registry.resolve(registry.models, "os.path:join") is __import__("os").path.join
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        registry.resolve(registry.integrators, "no_such_module_xyz:thing")
    with pytest.raises(ConfigError, match="module 'math' has no attribute 'nope'"):
        registry.resolve(registry.loss_terms, "math:nope")


def test_registering_an_import_path_style_name_is_refused():
    with pytest.raises(ValueError, match="must not contain ':'"):
        registry.Registry("thing").register("a:b", object())


def test_reference_engine_by_import_path(tmp_path, monkeypatch):
    """A user's reference engine factory is found by import path like any other entry."""
    (tmp_path / "my_engines.py").write_text(
        "from ase.calculators.lj import LennardJones\n"
        "def lj(base_dir=None, sigma=3.4, epsilon=0.01):\n"
        "    return LennardJones(sigma=sigma, epsilon=epsilon, rc=8.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from ase import Atoms

    from biojax.data.reference import make_calculator

    calc = make_calculator("my_engines:lj", sigma=3.0)
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [3.4, 0, 0]])
    atoms.calc = calc
    assert atoms.get_potential_energy() < 0
    with pytest.raises(ConfigError, match="unknown reference engine 'xtb'.*gfn2-xtb"):
        make_calculator("xtb")


def test_unknown_analysis_feature_kind_is_rejected_when_the_config_is_read():
    from biojax.analysis.config import FeatureConfig
    from biojax.core.config import from_dict

    with pytest.raises(ConfigError, match="unknown analysis feature 'dihedral'.*dihedrals"):
        from_dict(FeatureConfig, {"kind": "dihedral"})
