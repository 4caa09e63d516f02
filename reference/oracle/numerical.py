"""Float64 central differences for users: ``numerical_vjp``, ``numerical_grad``, and ``max_abs_diff``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from reference.oracle.differences import Differences
from reference.oracle.refusals import as_args, function_name
from reference.oracle.tolerance import FLOAT64
from reference.oracle.trees import Flat, Split, kind
from reference.oracle.verdict import judge
from reference.oracle.versions import Version, canonical, to64


def numerical_vjp(fn: Callable, args: Sequence[Any], cotangent: Any, *, eps: float | None = None) -> tuple:
    """Float64 central-difference VJP of ``fn`` at ``args`` for the given ``cotangent``.

    Every float or complex entry of every argument is moved by a step relative to itself, at
    h and 2h (Richardson-combined, at the finer steps too where the first does not fit); ``fn``
    runs on float64 copies of the arguments. Integer and key leaves get a float0 zero, as in
    ``jax.vjp``; complex leaves follow JAX's convention.

    Returns:
      A tuple shaped like ``args`` whose float leaves are float64 (complex128) arrays.

    Example:
      >>> numerical_vjp(lambda x: x ** 2, (np.array([3.0]),), np.array([1.0]))[0]
      array([6.])
    """
    args = as_args(function_name(fn), args)
    with jax.enable_x64(True):
        split = Split.of(jax.tree_util.tree_map(to64, jax.tree_util.tree_map(canonical, args)))
    version = Version.of(fn, split, x64=True)
    with version.context():
        out = jax.tree_util.tree_leaves(fn(*split.rebuild(split.diff_leaves())))
    ct = [np.asarray(c).astype(np.asarray(o).dtype) for c, o in zip(jax.tree_util.tree_leaves(cotangent), out,
                                                                     strict=True) if kind(o) is not None]
    with version.context():
        ct = [np.asarray(c, np.complex128 if np.iscomplexobj(c) else np.float64) for c in ct]
    flat = Flat(split.diff_leaves())
    diffs = Differences(version, flat, ct, FLOAT64.eps)
    scale = np.maximum(np.abs(flat.x), 1.0)
    probes = diffs.entry_probes(np.arange(flat.size), np.zeros(flat.size), eps or FLOAT64.step, scale,
                                range(FLOAT64.levels))
    g = judge(probes, np.zeros(flat.size)).numerical
    grads = []
    for i, c in enumerate(flat.complex):
        part = g[flat.part(i)]
        grads.append((part[: part.size // 2] - 1j * part[part.size // 2:] if c else part).reshape(flat.shapes[i]))
    full = [np.zeros(np.shape(x), jax.dtypes.float0) for x in split.leaves]
    for i, grad in zip(split.diff, grads, strict=True):
        full[i] = grad
    return jax.tree_util.tree_unflatten(split.treedef, full)


def numerical_grad(fn: Callable, args: Sequence[Any], *, eps: float | None = None) -> tuple:
    """Float64 central-difference gradient of a scalar ``fn`` w.r.t. every argument.

    Example:
      >>> numerical_grad(lambda x, y: x * y, (np.array(2.0), np.array(5.0)))
      (array(5.), array(2.))
    """
    return numerical_vjp(fn, args, np.ones(()), eps=eps)


def max_abs_diff(a: Any, b: Any) -> float:
    """The largest ``|a − b|`` over the float leaves of two pytrees of the same structure.

    Example:
      >>> max_abs_diff({"w": np.array([1.0, 2.0])}, {"w": np.array([1.0, 2.5])})
      0.5
    """
    def floats(tree: Any) -> list[np.ndarray]:
        return [np.asarray(x).astype(np.complex128) for x in jax.tree_util.tree_leaves(tree) if kind(x) is not None]

    pairs = zip(floats(a), floats(b), strict=True)
    return max([float(np.max(np.abs(x - y), initial=0.0)) for x, y in pairs], default=0.0)
