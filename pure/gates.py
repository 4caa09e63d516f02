"""The three gates of backprop: add distributes, mul switches, max routes (CS231n, "Backpropagation, intuitions").

All three broadcast like NumPy. A broadcast input receives the upstream gradient
summed over the axes it was broadcast along, so every cotangent has its input's
shape and dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from pure._checks import as_float_array, broadcast_shape
from pure._vjp import hand_written


def _unbroadcast(g: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    """Sums ``g`` over the axes that broadcasting added or stretched to reach ``g.shape``."""
    lead = g.ndim - len(shape)
    stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    g = jnp.sum(g, axis=tuple(range(lead)) + stretched, keepdims=False) if lead or stretched else g
    return jnp.reshape(g, shape).astype(dtype)


def _prepare(fn: str, x, y) -> tuple[jax.Array, jax.Array]:
    x, y = as_float_array(fn, "x", x), as_float_array(fn, "y", y)
    broadcast_shape(fn, x, y)
    return x, y


# --------------------------------------------------------------------------- add
def add(x: Float[ArrayLike, "*x"] | float, y: Float[ArrayLike, "*y"] | float) -> Float[Array, "*out"]:
    """Elementwise ``x + y`` with NumPy broadcasting; the gradient passes through unchanged.

    .. math:: \\partial(x + y)/\\partial x = \\partial(x + y)/\\partial y = 1

    Args:
      x: a float array or Python float.
      y: a float array or Python float whose shape broadcasts against ``x``.

    Returns:
      ``x + y`` with the broadcast shape. The backward gives each input the upstream
      gradient, summed over the axes along which that input was broadcast.

    Example:
      >>> add(jnp.ones((2, 3)), jnp.arange(3.0))  # a bias row added to each sample
      Array([[1., 2., 3.],
             [1., 2., 3.]], dtype=float32)

    Forward mode (``jax.jvp``, ``jax.jacfwd``) raises TypeError, as for any custom_vjp.
    """
    x, y = _prepare("add", x, y)
    return _add((x.shape, x.dtype, y.shape, y.dtype), x, y)


def _add_fwd(spec, x, y):
    return x + y, None


def _add_bwd(spec, _, g):
    x_shape, x_dtype, y_shape, y_dtype = spec
    return _unbroadcast(g, x_shape, x_dtype), _unbroadcast(g, y_shape, y_dtype)


_add = hand_written(_add_fwd, _add_bwd, static=1)


# --------------------------------------------------------------------------- mul
def mul(x: Float[ArrayLike, "*x"] | float, y: Float[ArrayLike, "*y"] | float) -> Float[Array, "*out"]:
    """Elementwise ``x * y`` with broadcasting; the gradient "switches" the inputs.

    .. math:: dx = y \\cdot g, \\qquad dy = x \\cdot g

    A large value on one branch makes the other branch's gradient large.

    Args:
      x: a float array or Python float.
      y: a float array or Python float whose shape broadcasts against ``x``.

    Returns:
      ``x * y`` with the broadcast shape; cotangents are summed back to each input's shape.

    Example:
      >>> float(jax.grad(lambda a: mul(a, 3.0))(2.0))
      3.0
    """
    x, y = _prepare("mul", x, y)
    return _mul(x, y)


def _mul_fwd(x, y):
    return x * y, (x, y)


def _mul_bwd(res, g):
    x, y = res
    return _unbroadcast(g * y, x.shape, x.dtype), _unbroadcast(g * x, y.shape, y.dtype)


_mul = hand_written(_mul_fwd, _mul_bwd)


# ----------------------------------------------------------------------- maximum
def maximum(x: Float[ArrayLike, "*x"] | float, y: Float[ArrayLike, "*y"] | float) -> Float[Array, "*out"]:
    """Elementwise ``max(x, y)`` with broadcasting; the gradient is routed to the winner.

    .. math:: dx = g \\cdot [x \\ge y], \\qquad dy = g \\cdot [x < y]

    **Tie rule:** where ``x == y`` the whole gradient goes to ``x`` (the first argument)
    and ``y`` gets 0, so the two cotangents always add up to ``g``. This differs from
    ``jnp.maximum``, whose autodiff splits a tie ½ / ½.

    Args:
      x: a float array or Python float; it wins ties.
      y: a float array or Python float whose shape broadcasts against ``x``.

    Returns:
      ``max(x, y)`` with the broadcast shape.

    Example:
      >>> [float(g) for g in jax.grad(maximum, argnums=(0, 1))(1.0, 1.0)]  # a tie: x takes it all
      [1.0, 0.0]
    """
    x, y = _prepare("maximum", x, y)
    return _maximum((x.shape, x.dtype, y.shape, y.dtype), x, y)


def _maximum_fwd(spec, x, y):
    return jnp.maximum(x, y), x >= y  # a bool mask is the smallest residual


def _maximum_bwd(spec, x_wins, g):
    x_shape, x_dtype, y_shape, y_dtype = spec
    zero = jnp.zeros_like(g)
    return (_unbroadcast(jnp.where(x_wins, g, zero), x_shape, x_dtype),
            _unbroadcast(jnp.where(x_wins, zero, g), y_shape, y_dtype))


_maximum = hand_written(_maximum_fwd, _maximum_bwd, static=1)
