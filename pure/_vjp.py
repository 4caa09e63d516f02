"""The one way pure registers a hand-written backward: ``custom_vjp`` + ``defvjp`` + ``jit``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def hand_written(fwd: Callable[..., tuple[Any, Any]], bwd: Callable[..., tuple], *, static: int = 0) -> Callable:
    """The op whose forward is ``fwd(*args)[0]`` and whose VJP is ``bwd``.

    ``fwd(*args) -> (out, residuals)`` and ``bwd(*settings, residuals, g) -> cotangents`` are the
    pair ``jax.custom_vjp`` expects. The first ``static`` arguments are hashable settings (an axis,
    a rate, a dtype): nondifferentiable, and static under ``jit``. The result is jitted, so an
    eager call compiles once per shape. (Not ``inline=True``: inlined, a Python-scalar argument
    would reach the backward as a bare literal instead of an array.)

    Inside ``shard_map`` the float arguments are first made varying over the same mesh axes, as
    jax.numpy does implicitly: a replicated bias meeting sharded weights then gets its gradient
    summed over the shards by JAX (the transpose of that cast), and each cotangent of the backward
    has its primal's type.
    """
    def primal(*args: Any) -> Any:
        return fwd(*args)[0]

    primal.__name__ = primal.__qualname__ = fwd.__name__.removesuffix("_fwd")
    primal.__doc__ = fwd.__doc__
    op = jax.custom_vjp(primal, nondiff_argnums=tuple(range(static)))
    op.defvjp(fwd, bwd)
    jitted = jax.jit(op, static_argnums=tuple(range(static)))

    @functools.wraps(primal)
    def call(*args: Any) -> Any:
        return jitted(*args[:static], *_same_varying_axes(args[static:]))

    return call


def _varying(x: Any) -> frozenset:
    aval = jax.typeof(x)
    axis_type = getattr(aval, "manual_axis_type", None)  # jax ≥ 0.9; earlier releases call it vma
    return axis_type.varying if axis_type is not None else frozenset(getattr(aval, "vma", ()))


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def _same_varying_axes(args: tuple) -> tuple:
    """``args`` with every float leaf varying over the union of the mesh axes any of them varies over."""
    leaves = [x for x in jax.tree_util.tree_leaves(args) if _is_float(x)]
    axes = frozenset().union(*(_varying(x) for x in leaves)) if leaves else frozenset()
    if not axes:
        return args

    def widen(x: Any) -> Any:
        missing = tuple(sorted(axes - _varying(x))) if _is_float(x) else ()
        if not missing:
            return x
        if hasattr(jax.lax, "pcast"):
            return jax.lax.pcast(x, missing, to="varying")
        return jax.lax.pvary(x, missing)  # type: ignore[attr-defined]  # the same cast, before jax 0.9

    return jax.tree_util.tree_map(widen, args)
