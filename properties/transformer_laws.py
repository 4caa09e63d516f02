"""The laws of the transformer's ops: what shift invariance and a lookup table say about their VJPs.

Part of :mod:`properties.laws`, which exports them; the same conventions hold (both sides of a law come from one
``jax.jit`` function cached per op; a broken law raises :class:`~properties.violation.PropertyViolation`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from properties.violation import PropertyViolation, agreement, assert_close

# A sum along an axis is zero to a few ulps of what the backward summed: of Σ|dx| and of Σ|c| (softmax's
# rowsum(g·y), which cancels to leave dx near 0 for a cotangent constant along the axis): four times the agreement.
AXIS_SUM_FACTOR = 4.0


@functools.cache
def _first_vjp(fn: Callable) -> Callable:
    return jax.jit(lambda args, c: jax.vjp(fn, *args)[1](c)[0])


def vjp_sums_to_zero(fn: Callable, args: tuple, cotangent: Any, axis: int = -1) -> None:
    """For an op invariant to adding a constant along ``axis`` of its first argument (softmax, log_softmax, a
    layer norm), the VJP with respect to that argument sums to 0 along the axis, for every cotangent: the change
    a shift makes is in the VJP's null space."""
    dx = np.asarray(_first_vjp(fn)(tuple(args), cotangent), np.float64)
    sums = dx.sum(axis=axis)
    scale = np.abs(dx).sum(axis=axis) + np.abs(np.asarray(cotangent, np.float64)).sum(axis=axis)
    bound = AXIS_SUM_FACTOR * agreement(args[0]) * (scale + 1e-30)
    if not np.all(np.abs(sums) <= bound):
        raise PropertyViolation("vjp_sums_to_zero", fn, f"sums of dx along axis {axis}", sums, "0",
                                np.zeros_like(sums))


def embedding_gradient_is_a_scatter_sum(fn: Callable, table: jax.Array, ids: jax.Array, cotangent: Any) -> None:
    """The gradient of a table lookup ``fn(table, ids)`` with respect to the table is each row's cotangents summed
    over every place its id was looked up (and 0 for a row no id names), in plain numpy."""
    got = _first_vjp(fn)((table, ids), cotangent)
    want = np.zeros(np.shape(table), np.float64)
    np.add.at(want, np.asarray(ids).ravel(), np.asarray(cotangent, np.float64).reshape(-1, np.shape(table)[-1]))
    assert_close("embedding_gradient_is_a_scatter_sum", fn, "d table", got, "Σ cotangents per id",
                 jnp.asarray(want, jnp.result_type(table)))
