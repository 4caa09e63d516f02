"""What check_vjp refuses before it checks anything, with an error that names the argument and what it got."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from reference.oracle.trees import Split, describe


def function_name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def as_args(name: str, args: Any) -> tuple:
    if isinstance(args, tuple | list):
        return tuple(args)
    what = (f"an array of shape {np.shape(args)}" if hasattr(args, "shape") else f"a {type(args).__name__}")
    raise TypeError(f"check_vjp: args must be a tuple of {name}'s arguments, e.g. (x,) for {name}(x); got {what}. "
                    f"Wrap a single argument in a tuple")


def require_checkable(name: str, split: Split) -> None:
    """A float or complex leaf with at least one entry, and no NaN or inf in any."""
    if not any(np.size(split.leaves[i]) for i in split.diff):
        got = ", ".join(f"{p}: {describe(x)}" for p, x in zip(split.paths, split.leaves, strict=True)) or "nothing"
        what = "a float or complex leaf" if not split.diff else "a float or complex leaf with any entries"
        raise TypeError(f"check_vjp: no argument of {name} has {what}, so there is no VJP to check (got {got})")
    for i in split.diff:
        values = np.asarray(split.leaves[i])
        bad = np.flatnonzero(~np.isfinite(values.ravel()))
        if bad.size:
            j = int(bad[0])
            raise ValueError(f"check_vjp: {split.paths[i]} holds {bad.size} non-finite values, e.g. "
                             f"{values.ravel()[j]} at flat index {j}; finite differences need finite inputs")
