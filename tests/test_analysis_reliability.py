"""Fail loudly and lose nothing (analysis side): non-finite coordinates are named by file
and frame, output folders are checked before work and locked while written, atomic writes
get ordinary permissions, plots carry units, the README's Python snippets run."""

import os
import stat

import pytest

from biojax.core import atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_ordinary_permissions(tmp_path, umask022):
    new = tmp_path / "new.txt"
    atomic.atomic_write_text(new, "x")
    assert _mode(new) == 0o644                       # what open(path, "w") gives
    with atomic.atomic_path(tmp_path / "arr.npz") as tmp:
        import numpy as np
        np.savez(tmp, a=np.zeros(2))
    assert _mode(tmp_path / "arr.npz") == 0o644
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    os.chmod(kept, 0o640)                            # replacing a file keeps its mode
    atomic.atomic_write_text(kept, "new")
    assert _mode(kept) == 0o640 and kept.read_text() == "new"
    folder = atomic.make_temp_dir(tmp_path, prefix=".model-tmp-")
    assert _mode(folder) == 0o755                    # what os.mkdir gives, not mkdtemp's 0700
    os.rmdir(folder)
    os.umask(0o077)
    atomic.atomic_write_text(tmp_path / "private.txt", "x")
    assert _mode(tmp_path / "private.txt") == 0o600
    assert atomic.current_umask() == 0o077
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
