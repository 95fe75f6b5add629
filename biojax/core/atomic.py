"""Atomic file writes: the one place that writes to a temporary file beside the target and
renames it into place, so an interrupted write never leaves a half-written or missing file
(DESIGN §4, Errors).

The temporary file is created owner-only (``tempfile.mkstemp``), but the file that lands
at the target gets the permissions an ordinary ``open(path, "w")`` would give it: those of
the file it replaces, or ``0o666 & ~umask`` for a new file (0644 under the usual umask
022). :func:`make_temp_dir` does the same for folders that are built and then renamed into
place (``0o777 & ~umask``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from typing import Iterator


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no read-only query elsewhere: set and restore at once
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """Permissions a new file (``0o666 & ~umask``) or folder (``0o777 & ~umask``) gets
    from an ordinary ``open()`` / ``os.mkdir()``."""
    return (0o777 if directory else 0o666) & ~current_umask()


def _target_mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)  # replacing a file keeps its mode
    except OSError:
        return default_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same extension, so writers that infer the
    format from it work); on success it gets ordinary permissions (see module doc), is
    fsynced and renamed onto ``path``; on failure it is removed, leaving any existing
    ``path`` untouched."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=f".tmp{ext}")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _target_mode(path))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def make_temp_dir(parent: str | os.PathLike, prefix: str = ".tmp-") -> str:
    """``tempfile.mkdtemp`` in ``parent`` with the permissions of an ordinary
    ``os.mkdir`` (``0o777 & ~umask``) instead of 0700, for a folder that is filled and then
    renamed into place."""
    tmp = tempfile.mkdtemp(dir=os.fspath(parent), prefix=prefix)
    os.chmod(tmp, default_mode(directory=True))
    return tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, prefix: str = ".tmp-") -> Iterator[str]:
    """Yield a fresh folder beside ``path`` to fill; when the block ends without an error it
    replaces ``path`` whole (an existing folder there is moved aside first and removed
    after), so readers see the old folder or the new one, never a mix. On an error the
    temporary folder is removed and ``path`` is untouched."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = make_temp_dir(parent, prefix=prefix)
    try:
        yield tmp
        old = None
        if os.path.exists(path):
            old = path + ".old-" + os.path.basename(tmp)
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def truncate_jsonl(path: str | os.PathLike, field: str, last: int) -> None:
    """Keep the lines of a JSON-lines log whose ``field`` is at most ``last`` (the records a
    checkpoint already covers), dropping later ones and a line cut short by a kill; the
    file is rewritten atomically. A missing file is left missing."""
    import json

    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill: it is written again
            if line.endswith("\n") and record.get(field, 0) <= last:
                keep.append(line)
    atomic_write_text(path, "".join(keep))
