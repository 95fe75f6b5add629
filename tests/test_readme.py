"""The README's examples work as written: every ```python block runs on its own (in a
fresh namespace, from a scratch folder that sees the repository's examples/), and every
shipped file a code block names exists. Snippets stay fast by being small, not by being
edited here."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _blocks(lang: str | None = None) -> list[str]:
    """The fenced code blocks of the README in ``lang`` (None: all)."""
    blocks, current, block_lang = [], None, ""
    with open(README, encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                if current is None:
                    current, block_lang = [], line[3:].strip()
                else:
                    if lang is None or block_lang == lang:
                        blocks.append("".join(current))
                    current = None
            elif current is not None:
                current.append(line)
    return blocks


PYTHON = _blocks("python")


def test_readme_has_python_examples():
    assert len(PYTHON) >= 3


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_snippet_runs(code, tmp_path, monkeypatch):
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md python block {PYTHON.index(code)}", "exec"),
         {"__name__": "__readme__"})


def test_files_named_in_code_blocks_exist():
    """``examples/...``, ``tests/...`` and ``benchmarks/...`` paths in code blocks are shipped
    (a glob such as ``replica_*`` or a placeholder in capitals is not a file)."""
    missing = []
    for block in _blocks():
        for path in re.findall(r"\b((?:examples|tests|benchmarks)/[\w./-]*\w)", block):
            if not os.path.exists(os.path.join(ROOT, path)):
                missing.append(path)
    assert not missing, missing
