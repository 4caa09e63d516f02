"""Trace-time argument checks shared by every public op (one helper of each kind).

Each check runs on shapes and dtypes, which are static under ``jit``, so it costs
nothing at run time; messages name the op, the argument and what it got.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def as_float_array(fn: str, name: str, x: Any) -> jax.Array:
    """Returns ``x`` as a floating-point array, or raises TypeError naming it.

    Python floats are accepted (they stay weakly typed); integer, boolean and
    complex arrays are refused rather than silently promoted.
    """
    if isinstance(x, float):
        return jnp.asarray(x)
    if not hasattr(x, "dtype"):
        raise TypeError(f"{fn}: expected {name} to be a floating-point array, got {type(x).__name__} instead")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: expected {name} to have a floating-point dtype, got {x.dtype} instead; "
            f"cast it with {name}.astype(jnp.float32)"
        )
    return x if isinstance(x, jax.Array) else jnp.asarray(x)  # asarray on a tracer would bind a no-op convert


def at_least_float32(*dtypes: Any) -> jnp.dtype:
    """The widest of ``dtypes``, but never narrower than float32 (losses and sums run there)."""
    widest = max((jnp.dtype(d) for d in dtypes), key=lambda d: jnp.finfo(d).bits, default=jnp.dtype(jnp.float32))
    return widest if jnp.finfo(widest).bits >= 32 else jnp.dtype(jnp.float32)


def as_label_array(fn: str, name: str, labels: Any) -> jax.Array:
    """Returns integer class labels as an array, or raises TypeError naming them."""
    if not hasattr(labels, "dtype") or not jnp.issubdtype(labels.dtype, jnp.integer):
        got = getattr(labels, "dtype", type(labels).__name__)
        raise TypeError(f"{fn}: expected {name} to be an integer array of class indices, got {got} instead")
    return jnp.asarray(labels)


def broadcast_shape(fn: str, x: jax.Array, y: jax.Array) -> tuple[int, ...]:
    """The NumPy broadcast of two shapes, or a ValueError that names both."""
    try:
        return tuple(np.broadcast_shapes(x.shape, y.shape))
    except ValueError:
        raise ValueError(f"{fn}: x with shape {x.shape} and y with shape {y.shape} do not broadcast") from None


def require_same_shape(fn: str, a_name: str, a: jax.Array, b_name: str, b: jax.Array) -> None:
    """Refuses silent broadcasting between arrays that must match element for element."""
    if a.shape != b.shape:
        raise ValueError(f"{fn}: {a_name} has shape {a.shape} but {b_name} has shape {b.shape}; they must be equal")


def check_classification(fn: str, logits: Any, labels: Any) -> tuple[jax.Array, jax.Array]:
    """Checks ``logits`` (N, C) float and ``labels`` (N,) int, and eager label values.

    On concrete labels an out-of-range value raises ValueError (JAX would wrap -1
    to the last class and turn C into NaN). Under ``jit`` the labels are abstract,
    and the op itself turns an out-of-range row into a NaN loss.
    """
    logits = as_float_array(fn, "logits", logits)
    labels = as_label_array(fn, "labels", labels)
    if logits.ndim != 2:
        raise ValueError(f"{fn}: expected logits of shape (N, C), got shape {logits.shape} instead")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{fn}: logits has shape {logits.shape}, so labels must have shape "
                         f"{logits.shape[:1]}, got {labels.shape}")
    try:
        values = np.asarray(labels)
    except jax.errors.TracerArrayConversionError:
        return logits, labels  # abstract under jit/vmap: the NaN guard in the op applies
    num_classes = logits.shape[1]
    bad = np.flatnonzero((values < 0) | (values >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{fn}: {bad.size} of {values.size} labels are outside [0, {num_classes}), "
            f"e.g. labels[{i}] = {int(values[i])}"
        )
    return logits, labels


def concrete_scalar(fn: str, name: str, value: Any, *, low: float, high: float = float("inf"),
                    low_open: bool = False, high_open: bool = False) -> float:
    """A Python float in [low, high] (ends open where asked), or ValueError naming it."""
    try:
        v = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise TypeError(f"{fn}: {name} must be a concrete Python number, got {value!r}") from None
    below = v <= low if low_open else v < low
    above = v >= high if high_open else v > high
    if below or above or v != v:
        lb, rb = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{fn}: {name} must be in {lb}{low}, {high}{rb}, got {v}")
    return v


def resolve_mask(fn: str, params: Any, mask: Any) -> list[bool]:
    """Flattens an optax-style mask (None, a pytree of bools, or a callable) to one bool per leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if mask is None:
        return [True] * len(leaves)
    if callable(mask):
        mask = mask(params)
    mask_leaves, mask_def = jax.tree_util.tree_flatten(mask)
    if mask_def != treedef:  # type: ignore[operator]  # PyTreeDef compares; its stub does not say so
        raise TypeError(f"{fn}: mask has tree structure {mask_def} but params has {treedef}")
    return [bool(m) for m in mask_leaves]


def check_same_structure(fn: str, a_name: str, a: Any, b_name: str, b: Any) -> None:
    """Raises TypeError naming both tree structures when two pytrees differ."""
    a_def, b_def = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if a_def != b_def:  # type: ignore[operator]
        raise TypeError(f"{fn}: {a_name} has tree structure {a_def} but {b_name} has {b_def}")

