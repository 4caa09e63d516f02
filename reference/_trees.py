"""Which leaves of a user's arguments are differentiable, and the arguments as a function of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


def kind(x: Any) -> str | None:
    """"float" or "complex" for a leaf that has a cotangent; None for ints, bools, keys and float0.

    Python floats and complex numbers count (JAX differentiates them); Python ints and bools do not.
    """
    if isinstance(x, bool | int):
        return None
    if isinstance(x, float):
        return "float"
    if isinstance(x, complex):
        return "complex"
    dtype = getattr(x, "dtype", None)
    if dtype is None or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jax.dtypes.float0:
        return None
    if jax.dtypes.issubdtype(dtype, np.complexfloating):
        return "complex"
    return "float" if jax.dtypes.issubdtype(dtype, np.floating) else None


def path_name(keypath: Sequence[Any]) -> str:
    return "args" + jax.tree_util.keystr(tuple(keypath))


@dataclasses.dataclass(frozen=True)
class Split:
    """``args`` flattened: every leaf, its path, and which of them are differentiable."""

    treedef: Any
    leaves: tuple
    paths: tuple[str, ...]
    diff: tuple[int, ...]  # indices of the differentiable leaves

    @classmethod
    def of(cls, args: tuple) -> Split:
        keyed, treedef = jax.tree_util.tree_flatten_with_path(args)
        leaves = tuple(leaf for _, leaf in keyed)
        return cls(treedef, leaves, tuple(path_name(p) for p, _ in keyed),
                   tuple(i for i, leaf in enumerate(leaves) if kind(leaf) is not None))

    def diff_leaves(self) -> tuple:
        return tuple(self.leaves[i] for i in self.diff)

    def rebuild(self, diff_leaves: Sequence[Any]) -> tuple:
        """``args`` with the differentiable leaves replaced, the others (labels, keys) as they were."""
        full = list(self.leaves)
        for i, leaf in zip(self.diff, diff_leaves, strict=True):
            full[i] = leaf
        return jax.tree_util.tree_unflatten(self.treedef, full)

    def over_diff(self, fn: Callable) -> Callable:
        """``fn`` as a function of the differentiable leaves alone."""
        return lambda *diff_leaves: fn(*self.rebuild(diff_leaves))


def outputs(fn: Callable) -> Callable:
    """``fn`` returning just its float and complex output leaves, in order (what has a cotangent)."""
    return lambda *a: [o for o in jax.tree_util.tree_leaves(fn(*a)) if kind(o) is not None]


def random_like(shapes: Sequence[Any], rng: np.random.Generator) -> list[np.ndarray]:
    """A standard normal draw for each of ``shapes`` (complex where they are), in its dtype, cast in numpy."""
    def draw(s: Any) -> np.ndarray:
        x = rng.standard_normal(np.shape(s))
        if np.issubdtype(np.dtype(s.dtype), np.complexfloating):
            x = x + 1j * rng.standard_normal(np.shape(s))
        return np.asarray(x).astype(s.dtype)
    return [draw(s) for s in shapes]
