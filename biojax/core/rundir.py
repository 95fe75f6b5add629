"""Output locations that never lose a user's results.

- :func:`check_output_file` is called before any work starts: the file's folder must be
  creatable and writable, the path must not be a folder, and an existing file is only
  replaced when the user asked (``overwrite``).
- :class:`RunLock` holds a run directory for the lifetime of one run: a second run in the
  same folder is refused with a message naming the holder (pid, host, command, start
  time); a lock left by a killed process (its pid is gone on this host) is taken over.
  The lock file is created with ``O_EXCL``, so two runs cannot both win.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from biojax.core.errors import ConfigError

LOCK_FILE = ".biojax.lock"


def _writable_dir(folder: str, what: str) -> None:
    folder = os.path.abspath(folder or ".")
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{what} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {folder}: cannot write in {probe} (permission denied)")


def check_output_file(path: str, what: str = "output file", overwrite: bool = False) -> None:
    """Raise ConfigError unless ``path`` can be written (see module doc)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    if os.path.exists(path) and not overwrite:
        raise ConfigError(f"{what} {path} already exists; choose another name or remove it "
                          "first (biojax never overwrites results you did not ask it to)")
    _writable_dir(os.path.dirname(os.path.abspath(path)), what)


def check_output_dir(path: str, what: str = "output directory") -> None:
    """Raise ConfigError unless ``path`` is (or can become) a writable folder."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {path} is an existing file, not a folder")
    _writable_dir(path, what)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive use of a run directory by one process (a context manager)."""

    def __init__(self, folder: str, what: str = "run"):
        self.folder, self.what = os.fspath(folder), what
        self.path = os.path.join(self.folder, LOCK_FILE)
        self.held = False

    def acquire(self) -> "RunLock":
        check_output_dir(self.folder, f"{self.what} directory")
        os.makedirs(self.folder, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        # the lock appears with its contents (written to a temporary file, then hard-linked
        # into place, which fails if the lock exists): another process never reads it empty
        self._remove_stale_temporaries()
        tmp = f"{self.path}.{me['host']}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(me, f)
        try:
            return self._link(tmp, me)
        finally:
            os.remove(tmp)

    def _remove_stale_temporaries(self) -> None:
        """Delete ``LOCK.HOST.PID.tmp`` files of this host's processes that no longer run
        (a run killed between writing its temporary lock and linking it into place)."""
        prefix = f"{os.path.basename(self.path)}.{socket.gethostname()}."
        for name in os.listdir(self.folder):
            pid = name[len(prefix):-len(".tmp")] if (
                name.startswith(prefix) and name.endswith(".tmp")) else ""
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                try:
                    os.remove(os.path.join(self.folder, name))
                except FileNotFoundError:
                    pass

    def _link(self, tmp: str, me: dict) -> "RunLock":
        for _ in range(2):
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.get("host") == me["host"] and not _pid_alive(
                        int(holder.get("pid", -1))):
                    os.remove(self.path)  # left by a killed run: take it over
                    continue
                who = ("another process" if not holder else
                       f"process {holder.get('pid')} on {holder.get('host')} (started "
                       f"{holder.get('started')}: {holder.get('command')})")
                raise ConfigError(f"{self.folder} is in use by {who}; wait for it to finish "
                                  f"or choose another output directory (lock file "
                                  f"{self.path})") from None
            except OSError:  # a file system without hard links: exclusive create, then write
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            self.held = True
            return self
        raise ConfigError(f"{self.folder}: cannot take the run lock {self.path}")

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
