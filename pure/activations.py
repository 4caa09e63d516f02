"""Elementwise activations, each keeping the smallest residual its backward needs.

Kink convention: every piecewise-linear activation here takes the left (x < 0)
branch at exactly ``x = 0``, so relu'(0) = 0 as in ``jax.nn.relu``. gelu has no kink.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from pure._checks import as_float_array
from pure._vjp import hand_written


# ----------------------------------------------------------------------- sigmoid
def sigmoid(x: Float[ArrayLike, "*shape"] | float) -> Float[Array, "*shape"]:
    """The logistic function, with a backward computed from the forward OUTPUT.

    .. math:: \\sigma(x) = 1 / (1 + e^{-x}), \\qquad \\sigma'(x) = \\sigma(x)(1 - \\sigma(x))

    Only ``σ(x)`` is saved for the backward; ``dx = g · y · (1 − y)``. A classic slip is to use
    the upstream gradient ``g`` in place of ``y``. Note σ' ≤ 1/4, and
    ≈ 0 for large |x|: the source of vanishing gradients in deep sigmoid nets.

    Args:
      x: a float array of any shape.

    Returns:
      ``σ(x)``, same shape and dtype.

    Example:
      >>> jax.grad(sigmoid)(0.0)
      Array(0.25, dtype=float32, weak_type=True)
    """
    return _sigmoid(as_float_array("sigmoid", "x", x))


def _sigmoid_fwd(x):
    y = jax.nn.sigmoid(x)
    return y, y


def _sigmoid_bwd(y, g):
    return (g * y * (1 - y),)


_sigmoid = hand_written(_sigmoid_fwd, _sigmoid_bwd)


# -------------------------------------------------------------------------- tanh
def tanh(x: Float[ArrayLike, "*shape"] | float) -> Float[Array, "*shape"]:
    """Hyperbolic tangent; the backward uses the saved output: ``dx = g · (1 − y²)``.

    Args:
      x: a float array of any shape.

    Returns:
      ``tanh(x)``, same shape and dtype.

    Example:
      >>> jax.grad(tanh)(0.0)
      Array(1., dtype=float32, weak_type=True)
    """
    return _tanh(as_float_array("tanh", "x", x))


def _tanh_fwd(x):
    y = jnp.tanh(x)
    return y, y


def _tanh_bwd(y, g):
    return (g * (1 - y * y),)


_tanh = hand_written(_tanh_fwd, _tanh_bwd)


# -------------------------------------------------------------------------- relu
def relu(x: Float[ArrayLike, "*shape"] | float) -> Float[Array, "*shape"]:
    """Rectified linear unit, ``max(x, 0)``; the backward masks by ``x > 0``.

    .. math:: \\mathrm{relu}'(x) = [x > 0]

    **Kink:** relu'(0) = 0, the same choice as ``jax.nn.relu`` and PyTorch (it keeps a unit
    that sits exactly at 0 from receiving gradient, and is CS231n's backward mask ``x > 0``).

    Args:
      x: a float array of any shape.

    Returns:
      ``max(x, 0)``, same shape and dtype.

    Example:
      >>> jax.grad(relu)(0.0)
      Array(0., dtype=float32, weak_type=True)
    """
    return _relu(as_float_array("relu", "x", x))


def _relu_fwd(x):
    return jnp.maximum(x, 0), x > 0


def _relu_bwd(positive, g):
    return (jnp.where(positive, g, jnp.zeros_like(g)),)


_relu = hand_written(_relu_fwd, _relu_bwd)


# -------------------------------------------------------------------- leaky_relu
def leaky_relu(x: Float[ArrayLike, "*shape"] | float, negative_slope: float = 0.01) -> Float[Array, "*shape"]:
    """``x`` where ``x > 0``, else ``negative_slope · x``.

    .. math:: \\mathrm{leaky\\_relu}'(x) = 1 \\text{ if } x > 0 \\text{ else negative\\_slope}

    **Kink:** at exactly 0 the derivative is ``negative_slope``, consistent with relu'(0) = 0
    (``leaky_relu(x, 0.0)`` is ``relu`` in value and gradient). ``jax.nn.leaky_relu`` takes
    the other side (derivative 1 at 0).

    Args:
      x: a float array of any shape.
      negative_slope: a Python float, static under ``jit``.

    Returns:
      Same shape and dtype as ``x``.

    Example:
      >>> jax.grad(leaky_relu)(-2.0)
      Array(0.01, dtype=float32, weak_type=True)
    """
    if not isinstance(negative_slope, (int, float)):
        raise TypeError(f"leaky_relu: negative_slope must be a Python float, got {type(negative_slope).__name__}")
    return _leaky_relu(float(negative_slope), as_float_array("leaky_relu", "x", x))


def _leaky_relu_fwd(slope, x):
    positive = x > 0
    return jnp.where(positive, x, slope * x), positive


def _leaky_relu_bwd(slope, positive, g):
    return (jnp.where(positive, g, slope * g),)


_leaky_relu = hand_written(_leaky_relu_fwd, _leaky_relu_bwd, static=1)


# -------------------------------------------------------------------------- gelu
def gelu(x: Float[ArrayLike, "*shape"] | float, approximate: bool = True) -> Float[Array, "*shape"]:
    """Gaussian error linear unit ``x·Φ(x)`` (Hendrycks & Gimpel 2016), in ``jax.nn.gelu``'s two forms.

    .. math::
       \\text{exact: } y = x\\Phi(x), \\quad y' = \\Phi(x) + x\\varphi(x); \\qquad
       \\text{tanh: } y = \\tfrac{x}{2}(1 + \\tanh u), \\quad u = \\sqrt{2/\\pi}\\,(x + 0.044715x^3), \\quad
       y' = \\tfrac12(1 + \\tanh u) + \\tfrac{x}{2}(1 - \\tanh^2 u)\\,\\sqrt{2/\\pi}\\,(1 + 3 \\cdot 0.044715x^2)

    Smooth everywhere (no kink). Saved: ``x``.

    Args:
      x: a float array of any shape.
      approximate: True for the tanh form (jax's default), False for the exact ``erf`` form; static.

    Returns:
      Same shape and dtype as ``x``.

    Example:
      >>> jax.grad(gelu)(0.0)  # Φ(0) = 1/2 in both forms
      Array(0.5, dtype=float32)
    """
    if not isinstance(approximate, bool):
        raise TypeError(f"gelu: approximate must be a Python bool, got {approximate!r}")
    return _gelu(approximate, as_float_array("gelu", "x", x))


def _gelu_fwd(approximate, x):
    if approximate:  # jax.nn.gelu's own expressions and constants, so the values agree to the last bit
        c = np.sqrt(2 / np.pi).astype(x.dtype)
        return x * (0.5 * (1.0 + jnp.tanh(c * (x + 0.044715 * (x ** 3))))), x
    return 0.5 * x * lax.erfc(-x * np.sqrt(0.5).astype(x.dtype)), x


def _gelu_bwd(approximate, x, g):
    if approximate:
        c = np.sqrt(2 / np.pi).astype(x.dtype)
        t = jnp.tanh(c * (x + 0.044715 * (x ** 3)))
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)),)
    pdf = jnp.exp(-0.5 * x * x) * np.sqrt(0.5 / np.pi).astype(x.dtype)
    return (g * (0.5 * lax.erfc(-x * np.sqrt(0.5).astype(x.dtype)) + x * pdf),)


_gelu = hand_written(_gelu_fwd, _gelu_bwd, static=1)
