"""DNA sequences: reading FASTA and CSV files and one-hot encoding.

One-hot rule: alphabet ``ACGT`` (channels in that order), case-insensitive; a sequence
becomes a (length, 4) float array. Ambiguous IUPAC codes (N, R, Y, S, W, K, M, B, D, H, V)
are, by choice of ``ambiguous``:

- ``"error"`` (default): rejected with a :class:`DataError` naming the sequence (its name,
  or its index) and the 1-based position and letter;
- ``"uniform"``: encoded as uniform probabilities over the bases the code allows (N →
  0.25 each, R → A and G 0.5 each, B → C/G/T 1/3 each, ...).

Any other letter (including U, gaps, digits) is always an error. Sequences of different
lengths are an error unless a padding rule is given: ``pad="right"`` appends all-zero rows
(no base) up to the longest sequence (or ``length``); a sequence longer than ``length`` is
an error. :func:`decode` inverts :func:`one_hot` (argmax per position; all-zero rows are
padding and are dropped; rows with a tie decode as ``N``).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from biojax.core.errors import DataError

ALPHABET = "ACGT"
#: the bases each IUPAC code allows
IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "S": "CG",
         "W": "AT", "K": "GT", "M": "AC", "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG",
         "N": "ACGT"}

__all__ = ["ALPHABET", "IUPAC", "read_fasta", "read_csv", "one_hot", "decode", "gc_content"]


def _table(ambiguous: str) -> np.ndarray:
    table = np.full((256, 4), np.nan, np.float32)
    for code, bases in IUPAC.items():
        if len(bases) > 1 and ambiguous != "uniform":
            continue
        row = np.array([1.0 / len(bases) if b in bases else 0.0 for b in ALPHABET], np.float32)
        table[ord(code)] = row
        table[ord(code.lower())] = row
    return table


def read_fasta(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Names and sequences (uppercase, line breaks joined) of FASTA file ``path``.
    DataError for a missing file, an empty file, text before the first ``>`` or a record
    without sequence."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"FASTA file not found: {path}")
    names, seqs, current = [], [], None
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                if current is not None and not current:
                    raise DataError(f"{path}: record {names[-1]!r} has no sequence "
                                    f"(line {lineno - 1})")
                names.append(line[1:].strip())
                seqs.append(current := [])
            elif current is None:
                raise DataError(f"{path} line {lineno}: sequence text before the first "
                                "'>' header; is this a FASTA file?")
            else:
                current.append(line.upper())
    if not names:
        raise DataError(f"{path}: empty FASTA file (no '>' records)")
    if not seqs[-1]:
        raise DataError(f"{path}: record {names[-1]!r} has no sequence")
    return names, ["".join(s) for s in seqs]


def read_csv(path: str | os.PathLike, sequence_column: str = "sequence",
             label_column: str | None = "label", name_column: str | None = None
             ) -> tuple[list[str], list[str], list[str] | None]:
    """Names, sequences (uppercase, surrounding spaces removed) and labels (or None) of a
    CSV file with a header row. DataError for a missing file or column or no rows."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"CSV file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        for col in (sequence_column, label_column, name_column):
            if col is not None and col not in header:
                raise DataError(f"{path}: no column {col!r}; columns are {header}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path}: no sequences (only a header or an empty file)")
    seqs = [r[sequence_column].strip().upper() for r in rows]
    names = ([r[name_column].strip() for r in rows] if name_column
             else [f"row {i + 2}" for i in range(len(rows))])
    labels = [r[label_column].strip() for r in rows] if label_column else None
    return names, seqs, labels


def one_hot(seqs, ambiguous: str = "error", pad: str | None = None,
            length: int | None = None, names=None) -> np.ndarray:
    """One-hot (N, L, 4) float32 array of DNA strings ``seqs`` (rules in the module doc).
    ``names``: used in error messages (default: the sequence's index)."""
    if isinstance(seqs, str):
        seqs = [seqs]
    seqs = list(seqs)
    if ambiguous not in ("error", "uniform"):
        raise DataError(f"one_hot: ambiguous must be 'error' or 'uniform', got {ambiguous!r}")
    if pad not in (None, "right"):
        raise DataError(f"one_hot: pad must be None or 'right', got {pad!r}")
    if not seqs:
        raise DataError("one_hot: no sequences given")
    label = (lambda i: repr(names[i])) if names is not None else (lambda i: f"#{i}")
    lengths = np.array([len(s) for s in seqs])
    if np.any(lengths == 0):
        raise DataError(f"sequence {label(int(np.argmin(lengths)))} is empty")
    target = int(length or lengths.max())
    if pad is None and (np.any(lengths != lengths[0]) or (length and lengths[0] != length)):
        i = int(np.argmax(lengths != (length or lengths[0])))
        raise DataError(f"sequences have different lengths ({lengths.min()}..{lengths.max()} "
                        f"bp; sequence {label(i)} has {lengths[i]}, sequence {label(0)} "
                        f"{lengths[0]}) and no padding rule was given (pad='right' pads "
                        "with empty positions)" if length is None else
                        f"sequence {label(i)} has {lengths[i]} bp, expected {length}")
    if np.any(lengths > target):
        i = int(np.argmax(lengths > target))
        raise DataError(f"sequence {label(i)} has {lengths[i]} bp, longer than length={target}")
    table = _table(ambiguous)
    out = np.zeros((len(seqs), target, 4), np.float32)
    for i, s in enumerate(seqs):
        codes = np.frombuffer(s.encode("latin-1", "replace"), np.uint8)
        rows = table[codes]
        bad = np.isnan(rows[:, 0])
        if bad.any():
            j = int(np.argmax(bad))
            letter = s[j]
            why = ("an ambiguous IUPAC base; pass ambiguous='uniform' to encode it as "
                   "uniform probabilities over the bases it allows"
                   if letter.upper() in IUPAC else "not a DNA letter (A, C, G, T or IUPAC)")
            raise DataError(f"sequence {label(i)} position {j + 1}: {letter!r} is {why}")
        out[i, :len(s)] = rows
    return out


def decode(onehot) -> list[str]:
    """DNA strings of a one-hot (N, L, 4) or (L, 4) array: argmax per position, ``N`` where
    the maximum is shared (ambiguous), all-zero rows (padding) dropped."""
    x = np.asarray(onehot)
    single = x.ndim == 2
    x = x[None] if single else x
    letters = np.array(list(ALPHABET + "N"))
    best = np.argmax(x, -1)
    top = np.max(x, -1)
    ties = np.sum(np.isclose(x, top[..., None]), -1) > 1
    idx = np.where(ties, 4, best)
    out = ["".join(letters[idx[i][top[i] > 0]]) for i in range(len(x))]
    return out[0] if single else out


def gc_content(onehot) -> np.ndarray:
    """Fraction of G+C per sequence of a one-hot (N, L, 4) array (padding excluded)."""
    x = np.asarray(onehot, np.float64)
    return (x[..., 1] + x[..., 2]).sum(-1) / np.maximum(x.sum((-1, -2)), 1e-12)
