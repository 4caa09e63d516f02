"""The text ``handgrad train --model transformer`` learns: the Python standard library's own source, as bytes.

Every machine with Python has it, offline. The corpus is the ``*.py`` files directly in
``sysconfig.get_paths()["stdlib"]`` (no subdirectory: no tests, no site-packages), sorted by name: the same
files, byte for byte, on every machine with the same Python release (another release, or a distribution's
patches, changes the text, so the run records the version, the files and a SHA-256 of their bytes). File ``i``
of that order is validation when ``i % 10 == 9`` (every 10th file), else training; each split is its files'
bytes concatenated. Byte values are the token ids (vocabulary 256).

This module imports no part of the ``train`` extra.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import platform
import sysconfig

import numpy as np

from handgrad.train.data import DataError

VOCAB = 256  # one id per byte value
VAL_EVERY = 10  # file i (0-based, sorted by name) is validation when i % VAL_EVERY == VAL_EVERY - 1


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The two splits as uint8 arrays, and the files they came from."""

    directory: str
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    train: np.ndarray
    val: np.ndarray
    sha256: str  # of the train bytes then the val bytes

    def describe(self) -> dict[str, object]:
        """What the run's JSON records: which text, so that another machine can tell whether it had the same."""
        return {"python": platform.python_version(), "directory": self.directory, "sha256": self.sha256,
                "train_files": list(self.train_files), "val_files": list(self.val_files),
                "train_bytes": int(self.train.size), "val_bytes": int(self.val.size)}

    def signature(self) -> str:
        """One line a checkpoint must agree on: the release, the file counts and bytes, and the hash."""
        return (f"stdlib of Python {platform.python_version()}: {len(self.train_files)} train files "
                f"({self.train.size} bytes), {len(self.val_files)} val files ({self.val.size} bytes), "
                f"sha256 {self.sha256[:16]}")


def split_files(names: list[str]) -> tuple[list[str], list[str]]:
    """``(train, val)``: of the names sorted, every ``VAL_EVERY``-th (the 10th, 20th, ...) is validation."""
    ordered = sorted(names)
    val = [n for i, n in enumerate(ordered) if i % VAL_EVERY == VAL_EVERY - 1]
    return [n for i, n in enumerate(ordered) if i % VAL_EVERY != VAL_EVERY - 1], val


def stdlib(directory: str | None = None) -> Corpus:
    """The corpus of the module docstring, from ``directory`` (default: this Python's standard library)."""
    directory = os.path.abspath(directory or sysconfig.get_paths()["stdlib"])
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".py") and os.path.isfile(os.path.join(directory, n))]
    except OSError as e:
        raise DataError(f"cannot list the standard library's sources in {directory}: {e.strerror or e}") from None
    train, val = split_files(names)
    if not val:
        raise DataError(f"{directory} holds {len(names)} .py files; the split needs at least {VAL_EVERY}")
    digest = hashlib.sha256()
    parts = []
    for files in (train, val):
        with_bytes = b"".join(_read(os.path.join(directory, n)) for n in files)
        digest.update(with_bytes)
        parts.append(np.frombuffer(with_bytes, np.uint8))
    return Corpus(directory, tuple(train), tuple(val), parts[0], parts[1], digest.hexdigest())


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------------------ windows
def windows(text: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """``(len(starts), length)`` int32 ids: the bytes ``text[s : s + length]`` for each start ``s``."""
    return text[np.asarray(starts)[:, None] + np.arange(length)].astype(np.int32)


def batch_starts(seed: int, step: int, size: int, text_length: int, length: int) -> np.ndarray:
    """The window starts of training step ``step``: ``size`` uniform draws from ``[0, text_length − length]`` by a
    numpy Generator seeded with ``[seed, step]``, so a step's batch is the same however the run got there."""
    return np.random.default_rng([seed, step]).integers(0, text_length - length + 1, size)


def val_starts(count: int, text_length: int, length: int) -> np.ndarray:
    """``count`` window starts evenly spaced from the first byte to the last window of the text (no seed)."""
    return np.linspace(0, text_length - length, count).round().astype(np.int64)


# ------------------------------------------------------------------------------------------------ baseline
def bigram_log_probs(train: np.ndarray) -> np.ndarray:
    """``(256, 256)`` natural-log ``P(next | previous)`` from the counts of ``train``'s consecutive byte pairs,
    with add-one (Laplace) smoothing: ``P(b | a) = (c(a, b) + 1) / (c(a) + 256)``."""
    train = np.asarray(train, np.int64)
    counts = np.bincount(train[:-1] * VOCAB + train[1:], minlength=VOCAB * VOCAB).reshape(VOCAB, VOCAB) + 1.0
    return np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))


def bigram_bits(log_probs: np.ndarray, ids: np.ndarray) -> float:
    """Mean bits per character of the bigram model on every consecutive pair within each row of ``ids``
    (the bytes a language model given the same rows predicts)."""
    ids = np.asarray(ids, np.int64)
    return float(-np.mean(log_probs[ids[:, :-1], ids[:, 1:]]) / math.log(2))
