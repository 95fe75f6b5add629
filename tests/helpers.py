"""Helpers shared by test modules (the tests folder is on sys.path under pytest)."""

import hashlib
import os


def snapshot(folder) -> dict:
    """sha256 of every file under ``folder`` (relative path -> digest): compare two
    snapshots to show that a failed command left earlier files byte-identical."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out
