"""Softmax and log-softmax along one axis, each backward computed from the forward OUTPUT.

Both subtract the max along the axis first (so logits of ±1e4 stay finite) and treat it, as
``jax.nn`` does, as a constant: ``lax.stop_gradient``. The max cancels out of the value, so this
changes no derivative; it keeps a tie for the max from reaching the backward (there is no kink).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from pure._checks import as_float_array
from pure._vjp import hand_written


def _axis(fn: str, x: jax.Array, axis: int) -> int:
    """``axis`` as a non-negative Python int (one compilation for -1 and ndim − 1), or an error naming it."""
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"{fn}: axis must be a Python int, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{fn}: axis {axis} is out of range for x of shape {x.shape}")
    return axis % x.ndim


# ----------------------------------------------------------------------- softmax
def softmax(x: Float[ArrayLike, "*shape"], axis: int = -1) -> Float[Array, "*shape"]:
    """``exp(x) / Σ exp(x)`` along ``axis``; the backward uses the saved output ``y``.

    .. math:: y_i = \\frac{e^{x_i - m}}{\\sum_j e^{x_j - m}}, \\qquad dx = y \\odot (g - \\textstyle\\sum_j g_j y_j)

    with ``m = max(x)`` a stop-gradient constant, as in ``jax.nn.softmax``.

    Args:
      x: a float array with at least one axis.
      axis: the axis to normalise, a Python int (static under ``jit``).

    Returns:
      Same shape and dtype; entries along ``axis`` sum to 1.

    Example:
      >>> softmax(jnp.array([1e4, 1e4, -1e4, -1e4]))  # no overflow: the max is subtracted first
      Array([0.5, 0.5, 0. , 0. ], dtype=float32)
    """
    x = as_float_array("softmax", "x", x)
    return _softmax(_axis("softmax", x, axis), x)


def _softmax_fwd(axis, x):
    e = jnp.exp(x - lax.stop_gradient(jnp.max(x, axis, keepdims=True)))
    y = e / jnp.sum(e, axis, keepdims=True)
    return y, y


def _softmax_bwd(axis, y, g):
    return (y * (g - jnp.sum(g * y, axis, keepdims=True)),)


_softmax = hand_written(_softmax_fwd, _softmax_bwd, static=1)


# ------------------------------------------------------------------- log_softmax
def log_softmax(x: Float[ArrayLike, "*shape"], axis: int = -1) -> Float[Array, "*shape"]:
    """``x − log Σ exp(x)`` along ``axis``; the backward uses the saved output ``y``.

    .. math:: y_i = (x_i - m) - \\log \\textstyle\\sum_j e^{x_j - m}, \\qquad dx = g - e^{y} \\textstyle\\sum_j g_j

    with ``m = max(x)`` a stop-gradient constant, as in ``jax.nn.log_softmax``.

    Args:
      x: a float array with at least one axis.
      axis: the axis to normalise, a Python int (static under ``jit``).

    Returns:
      Same shape and dtype; ``exp`` of it sums to 1 along ``axis``.

    Example:
      >>> jax.grad(lambda x: log_softmax(x)[0])(jnp.zeros(4))
      Array([ 0.75, -0.25, -0.25, -0.25], dtype=float32)
    """
    x = as_float_array("log_softmax", "x", x)
    return _log_softmax(_axis("log_softmax", x, axis), x)


def _log_softmax_fwd(axis, x):
    shifted = x - lax.stop_gradient(jnp.max(x, axis, keepdims=True))
    y = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis, keepdims=True))
    return y, y


def _log_softmax_bwd(axis, y, g):
    return (g - jnp.exp(y) * jnp.sum(g, axis, keepdims=True),)


_log_softmax = hand_written(_log_softmax_fwd, _log_softmax_bwd, static=1)
