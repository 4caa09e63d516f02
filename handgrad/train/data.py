"""Data sets for ``handgrad train``: scikit-learn's bundled ones or a ``.npz``, checked, split and standardised.

Needs the ``train`` extra (scikit-learn), imported only when a function here runs. Every bad
input raises :class:`DataError`, whose message is one line naming the array and what it holds.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

# name -> (scikit-learn loader, task)
BUNDLED = {
    "digits": ("load_digits", "classification"),
    "breast_cancer": ("load_breast_cancer", "binary"),
    "iris": ("load_iris", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}
TASKS = ("classification", "binary", "regression")


class DataError(ValueError):
    """Bad data: the message is one line, fit for a command line."""


@dataclass(frozen=True)
class Dataset:
    """Features ``X`` (n, d) float32, targets ``y`` (n,): int32 classes or float32 values."""

    name: str
    X: np.ndarray
    y: np.ndarray
    task: str  # "classification" (softmax or hinge), "binary" (binary_cross_entropy) or "regression" (mse)

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if self.task != "regression" else 0

    @property
    def outputs(self) -> int:
        """Width of the network's last layer: one logit per class, or one for binary and regression."""
        return self.num_classes if self.task == "classification" else 1


def load(source: str, task: str | None = None) -> Dataset:
    """A bundled data set by name, or a ``.npz`` holding arrays ``X`` and ``y``.

    A ``.npz``'s task is ``task`` if given, else classification for integer (or bool) ``y``
    and regression for float ``y``. A bundled set has its own task; ``task`` may only repeat it.
    """
    if task is not None and task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if source in BUNDLED:
        loader, own_task = BUNDLED[source]
        if task not in (None, own_task):
            raise DataError(f"{source} is a {own_task} data set; --task {task} does not apply to it")
        import sklearn.datasets

        X, y = getattr(sklearn.datasets, loader)(return_X_y=True)
        return check(source, X, y, own_task)
    if not source.endswith(".npz"):
        raise DataError(f"dataset {source!r} is neither a bundled data set ({', '.join(BUNDLED)}) nor a .npz file")
    if not os.path.isfile(source):
        raise DataError(f"no such file: {source}")
    if not zipfile.is_zipfile(source):
        raise DataError(f"{source} is not a .npz (zip) archive; write one with numpy.savez(path, X=X, y=y)")
    try:
        with np.load(source, allow_pickle=False) as archive:
            missing = {"X", "y"} - set(archive.files)
            if missing:
                raise DataError(f"{source} holds arrays {sorted(archive.files)}; expected X and y")
            X, y = archive["X"], archive["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read {source} as a .npz: {e}") from None
    if task is None:
        task = "classification" if y.dtype.kind in "biu" else "regression"
    return check(source, X, y, task)


def check(name: str, X: np.ndarray, y: np.ndarray, task: str) -> Dataset:
    """Validates ``X`` and ``y`` for ``task`` and returns them as a :class:`Dataset`."""
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or X.dtype.kind not in "biuf" or 0 in X.shape:
        raise DataError(f"{name}: X must be a non-empty 2-D numeric array (samples, features), "
                        f"got shape {X.shape} of {X.dtype}")
    if y.ndim != 1 or y.dtype.kind not in "biuf":
        raise DataError(f"{name}: y must be a 1-D numeric array, got shape {y.shape} of {y.dtype}")
    if len(X) != len(y):
        raise DataError(f"{name}: X has {len(X)} rows but y has {len(y)}")
    _require_finite(name, "X", X)
    _require_finite(name, "y", y)
    if task == "regression":
        return Dataset(name, X.astype(np.float32), y.astype(np.float32), task)
    labels = y.astype(np.int64)
    bad = np.flatnonzero((labels != y) | (labels < 0))
    if bad.size:
        raise DataError(f"{name}: {task} labels must be integers 0..C-1, got y[{bad[0]}] = {y[bad[0]]} "
                        f"({bad.size} such labels); pass --task regression for a real-valued target")
    present = np.unique(labels)
    if len(present) != present[-1] + 1:
        absent = sorted(set(range(present[-1] + 1)) - set(present.tolist()))
        raise DataError(f"{name}: {task} labels must be the integers 0..C-1 with every class present; labels run "
                        f"{present[0]}..{present[-1]} but class {absent[0]} never occurs"
                        + (" (are they 1-based?)" if present[0] == 1 else ""))
    if task == "binary" and len(present) != 2:
        raise DataError(f"{name}: binary labels must be 0 and 1, got {len(present)} classes")
    if len(present) < 2:
        raise DataError(f"{name}: classification needs at least 2 classes, got only class {present[0]}")
    return Dataset(name, X.astype(np.float32), labels.astype(np.int32), task)


def _require_finite(name: str, what: str, a: np.ndarray) -> None:
    bad = np.argwhere(~np.isfinite(a)) if a.dtype.kind == "f" else np.empty((0, a.ndim))
    if len(bad):
        where = ", ".join(str(int(i)) for i in bad[0])
        raise DataError(f"{name}: {what} has {len(bad)} non-finite values, e.g. {what}[{where}] = {a[tuple(bad[0])]}")


def split(data: Dataset, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Index arrays ``train``, ``val`` and ``test`` (``test`` may be empty), stratified by class
    for classification (scikit-learn's ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    for what, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise DataError(f"--{what.replace('_', '-')} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"--val-fraction + --test-fraction must be below 1, got {val_fraction} + {test_fraction}")
    index = np.arange(len(data.y))
    strat = data.task != "regression"
    parts = {}
    try:
        for name, f, left in (("test", test_fraction, 1.0), ("val", val_fraction, 1.0 - test_fraction)):
            if f == 0:
                parts[name] = index[:0]
                continue
            index, parts[name] = train_test_split(index, test_size=f / left, random_state=seed,
                                                  stratify=data.y[index] if strat else None)
    except ValueError as e:  # e.g. a class too small to stratify, or a split with no samples
        raise DataError(f"{data.name}: cannot split {len(data.y)} samples {val_fraction:g}/{test_fraction:g} "
                        f"for validation/test: {e}") from None
    return {"train": np.sort(index), "val": np.sort(parts["val"]), "test": np.sort(parts["test"])}


def kfold(data: Dataset, index: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, val) index pairs over ``index``: StratifiedKFold for classes, KFold for regression."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if not isinstance(k, int) or k < 2:
        raise DataError(f"--kfold must be an int of at least 2, got {k!r}")
    folds = (KFold if data.task == "regression" else StratifiedKFold)(n_splits=k, shuffle=True, random_state=seed)
    try:
        return [(index[a], index[b]) for a, b in folds.split(index, data.y[index])]
    except ValueError as e:
        raise DataError(f"{data.name}: cannot cut {len(index)} samples into {k} folds: {e}") from None


def standardize(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Zero mean and unit variance per column, with statistics from ``train`` only (a constant
    column is centred, not scaled); returns ``train`` and ``others`` transformed alike."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return tuple(((a - mean) / std).astype(np.float32) for a in (train, *others))
