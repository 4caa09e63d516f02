"""Which leaves of a user's arguments are differentiable, the arguments as a function of them, and the
differentiable leaves laid end to end as one real vector."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
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


def describe(x: Any) -> str:
    """``float32[4, 3]`` for an array, the type's name for anything else."""
    dtype = getattr(x, "dtype", None)
    return f"{dtype}{list(np.shape(x))}" if dtype is not None else type(x).__name__


def comparable(x: Any) -> np.ndarray:
    """A leaf as a numpy array that can be compared entry by entry (a typed key as its key data)."""
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


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

    def diff_paths(self) -> list[str]:
        return [self.paths[i] for i in self.diff]

    def fixed(self) -> tuple[str, ...]:
        """The leaves held fixed (integers, booleans, keys), described."""
        return tuple(f"{p} ({describe(x)})" for i, (p, x) in enumerate(zip(self.paths, self.leaves, strict=True))
                     if i not in self.diff)

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


class Flat:
    """Every differentiable leaf laid end to end as real numbers (a complex entry as re, im)."""

    def __init__(self, leaves: Sequence[Any]):
        self.shapes = [np.shape(x) for x in leaves]
        self.dtypes = [jnp.result_type(x) for x in leaves]
        self.complex = [bool(jnp.issubdtype(d, jnp.complexfloating)) for d in self.dtypes]
        sizes = [int(np.prod(s, dtype=np.int64)) * (2 if c else 1) for s, c in zip(self.shapes, self.complex,
                                                                                   strict=True)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.x = self.real(leaves)
        self.component_dtypes = [jnp.finfo(d).dtype if c else d for d, c in zip(self.dtypes, self.complex,
                                                                                  strict=True)]

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def part(self, leaf: int) -> slice:
        return slice(int(self.offsets[leaf]), int(self.offsets[leaf + 1]))

    def per_entry(self, values: Sequence[float]) -> np.ndarray:
        """One value per leaf, laid out per entry of the flat vector."""
        return np.concatenate([np.full(self.part(i).stop - self.part(i).start, v) for i, v in enumerate(values)]
                              or [np.zeros(0)])

    def real(self, leaves: Sequence[Any], *, conjugate: bool = False) -> np.ndarray:
        """The leaves as one float64 vector; ``conjugate`` stores a complex leaf as (re, −im), as a gradient."""
        parts: list[np.ndarray] = []
        for x, c in zip(leaves, self.complex, strict=True):
            v = np.asarray(x).astype(np.complex128 if c else np.float64).ravel()
            parts += [v.real, -v.imag if conjugate else v.imag] if c else [v]
        return np.concatenate(parts) if parts else np.zeros(0)

    def leaves_of(self, flat: jax.Array) -> list:
        """Inside jit: the flat vector back to leaves of their own dtypes (a complex one from re, im)."""
        out = []
        for i, (shape, dtype, c) in enumerate(zip(self.shapes, self.dtypes, self.complex, strict=True)):
            part = flat[self.part(i)]
            if c:
                half = part.shape[0] // 2
                # lax.complex, not re + 1j·im: a Python complex meets a float array, which strict promotion refuses
                out.append(jax.lax.complex(part[:half], part[half:]).astype(dtype).reshape(shape))
            else:
                out.append(part.astype(dtype).reshape(shape))
        return out

    def leaf_of(self, index: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, index, side="right") - 1

    def round_to_leaf(self, values: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``values`` at flat ``index`` rounded to their leaf's (component) dtype, back in float64."""
        out = np.empty_like(values)
        leaf = self.leaf_of(index)
        for i in np.unique(leaf):
            sel = leaf == i
            out[sel] = np.asarray(values[sel]).astype(self.component_dtypes[i]).astype(np.float64)
        return out

    def locate(self, k: int) -> tuple[int, int, str | None]:
        """Flat entry ``k`` as (leaf, flat index in the leaf, "real"/"imaginary" for a complex leaf)."""
        leaf = int(self.leaf_of(np.array([k]))[0])
        i = k - int(self.offsets[leaf])
        if self.complex[leaf]:
            n = int(np.prod(self.shapes[leaf], dtype=np.int64))
            return leaf, i % n, "real" if i < n else "imaginary"
        return leaf, i, None
