"""Layer normalisation and RMS normalisation over the last axis.

Both run in at least float32: a bfloat16 or float16 input is cast up before the hand-written
core and the output cast back, and the casts' own transposes return each cotangent in its
argument's dtype (as pure.losses does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from pure._checks import as_float_array, at_least_float32, concrete_scalar
from pure._vjp import hand_written


def _checked(fn: str, x: jax.Array, **params: jax.Array) -> tuple[jax.Array, ...]:
    """``x`` and each parameter (shape ``(D,)`` for ``x`` of shape ``(..., D)``) in their float32-or-wider dtype."""
    if x.ndim < 1:
        raise ValueError(f"{fn}: expected x of shape (..., D), got a scalar")
    for name, p in params.items():
        if p.shape != x.shape[-1:]:
            raise ValueError(f"{fn}: x has shape {x.shape}, so {name} must have shape {x.shape[-1:]}, got {p.shape}")
    ctype = at_least_float32(x.dtype, *(p.dtype for p in params.values()))
    return tuple(a.astype(ctype) for a in (x, *params.values()))


def _batch_sum(x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


# -------------------------------------------------------------------- layer_norm
def layer_norm(x: Float[ArrayLike, "*batch d"], gamma: Float[ArrayLike, " d"], beta: Float[ArrayLike, " d"],
               eps: float = 1e-5) -> Float[Array, "*batch d"]:
    """Layer normalisation (Ba et al. 2016): standardise each row, then scale and shift it.

    .. math::
       \\hat x = (x - \\mu)\\,r, \\quad r = (\\sigma^2 + \\epsilon)^{-1/2}, \\quad y = \\gamma \\hat x + \\beta,
       \\qquad dx = r\\,\\big(d\\hat x - \\overline{d\\hat x} - \\hat x\\,\\overline{d\\hat x \\odot \\hat x}\\big)

    with ``μ``, ``σ²`` (the biased variance) and the bars means over the last axis, ``dx̂ = g·γ``,
    ``dγ = Σ g·x̂`` and ``dβ = Σ g`` over every leading axis. Saved: ``x̂`` and ``r``.

    Args:
      x: ``(..., D)``.
      gamma: the scale, ``(D,)``.
      beta: the shift, ``(D,)``.
      eps: ε ≥ 0, a Python float (static under ``jit``).

    Returns:
      ``(..., D)`` in ``x``'s dtype.

    Example:
      >>> layer_norm(jnp.array([1.0, 3.0]), jnp.ones(2), jnp.zeros(2), eps=0.0)
      Array([-1.,  1.], dtype=float32)
    """
    x = as_float_array("layer_norm", "x", x)
    eps = concrete_scalar("layer_norm", "eps", eps, low=0.0)
    args = _checked("layer_norm", x, gamma=as_float_array("layer_norm", "gamma", gamma),
                    beta=as_float_array("layer_norm", "beta", beta))
    return _layer_norm(eps, *args).astype(x.dtype)


def _layer_norm_fwd(eps, x, gamma, beta):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    r = lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    xhat = centred * r
    return xhat * gamma + beta, (xhat, r, gamma)


def _layer_norm_bwd(eps, res, g):
    xhat, r, gamma = res
    dxhat = g * gamma
    mean = lambda a: jnp.mean(a, axis=-1, keepdims=True)  # noqa: E731
    dx = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    return dx, _batch_sum(g * xhat), _batch_sum(g)


_layer_norm = hand_written(_layer_norm_fwd, _layer_norm_bwd, static=1)


# ---------------------------------------------------------------------- rms_norm
def rms_norm(x: Float[ArrayLike, "*batch d"], gamma: Float[ArrayLike, " d"],
             eps: float = 1e-6) -> Float[Array, "*batch d"]:
    """RMS normalisation (Zhang & Sennrich 2019): divide each row by its root mean square, then scale it.

    .. math::
       \\hat x = x\\,r, \\quad r = (\\overline{x^2} + \\epsilon)^{-1/2}, \\quad y = \\gamma \\hat x,
       \\qquad dx = r\\,\\big(d\\hat x - \\hat x\\,\\overline{d\\hat x \\odot \\hat x}\\big)

    with the bars means over the last axis, ``dx̂ = g·γ`` and ``dγ = Σ g·x̂`` over every leading
    axis. No mean is subtracted and there is no shift. Saved: ``x̂`` and ``r``.

    Args:
      x: ``(..., D)``.
      gamma: the scale, ``(D,)``.
      eps: ε ≥ 0, a Python float (static under ``jit``).

    Returns:
      ``(..., D)`` in ``x``'s dtype.

    Example:
      >>> rms_norm(jnp.array([3.0, -3.0]), jnp.array([1.0, 2.0]), eps=0.0)
      Array([ 1., -2.], dtype=float32)
    """
    x = as_float_array("rms_norm", "x", x)
    eps = concrete_scalar("rms_norm", "eps", eps, low=0.0)
    args = _checked("rms_norm", x, gamma=as_float_array("rms_norm", "gamma", gamma))
    return _rms_norm(eps, *args).astype(x.dtype)


def _rms_norm_fwd(eps, x, gamma):
    r = lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    xhat = x * r
    return xhat * gamma, (xhat, r, gamma)


def _rms_norm_bwd(eps, res, g):
    xhat, r, gamma = res
    dxhat = g * gamma
    dx = r * (dxhat - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx, _batch_sum(g * xhat)


_rms_norm = hand_written(_rms_norm_fwd, _rms_norm_bwd, static=1)
