"""The affine layer and inverted dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from pure._checks import as_float_array, concrete_scalar
from pure._vjp import hand_written


# ------------------------------------------------------------------------ affine
def affine(x: Float[ArrayLike, "*batch d"], W: Float[ArrayLike, "d c"],
           b: Float[ArrayLike, " c"]) -> Float[Array, "*batch c"]:
    """The dense layer ``Y = X·W + b``, with the vectorised backward (CS231n).

    .. math::
       dX = dY \\cdot W^T, \\qquad dW = X^T \\cdot dY, \\qquad db = \\textstyle\\sum_{rows} dY

    With leading batch axes ``(..., D)``, ``Xᵀ·dY`` and the bias sum run over all of
    them ("dimension analysis": every gradient has its parameter's shape).

    Args:
      x: inputs of shape ``(..., D)``.
      W: weights of shape ``(D, C)``.
      b: bias of shape ``(C,)``.

    Returns:
      Outputs of shape ``(..., C)``.

    Raises:
      ValueError: if the shapes do not chain, e.g. "affine: x has last axis 5 but W
        has shape (4, 3)". TypeError: for non-float inputs.

    Example:
      >>> affine(jnp.ones((2, 4)), jnp.ones((4, 3)), jnp.zeros(3)).shape
      (2, 3)
    """
    x, W, b = (as_float_array("affine", n, v) for n, v in (("x", x), ("W", W), ("b", b)))
    if W.ndim != 2:
        raise ValueError(f"affine: expected W of shape (D, C), got shape {W.shape} instead")
    if x.ndim < 1 or x.shape[-1] != W.shape[0]:
        last = x.shape[-1] if x.ndim else "none (x is a scalar)"
        raise ValueError(f"affine: x has last axis {last} but W has shape {W.shape}")
    if b.shape != (W.shape[1],):
        raise ValueError(f"affine: W has shape {W.shape}, so b must have shape ({W.shape[1]},), got {b.shape}")
    return _affine(x, W, b)


def _affine_fwd(x, W, b):
    return x @ W + b, (x, W)


def _affine_bwd(res, g):
    x, W = res
    batch = tuple(range(g.ndim - 1))
    dx = (g @ W.T).astype(x.dtype)
    dW = jnp.tensordot(x, g, axes=(batch, batch)).astype(W.dtype)
    db = jnp.sum(g, axis=batch).astype(W.dtype)
    return dx, dW, db


_affine = hand_written(_affine_fwd, _affine_bwd)


# ----------------------------------------------------------------------- dropout
def dropout(x: Float[ArrayLike, "*shape"], key: jax.Array | None, rate: float, *,
            deterministic: bool = False) -> Float[Array, "*shape"]:
    """Inverted dropout: drop each unit with probability ``rate``, scale the rest up.

    .. math:: x'_i = 0 \\text{ with probability } p, \\text{ else } x_i / (1 - p), \\qquad E[x'] = x

    The mask is drawn once, in the forward, and the backward reuses exactly that mask:
    ``dx = g · mask / (1 − p)``. Use it on hidden activations in training; pass
    ``deterministic=True`` at inference.

    Args:
      x: a float array of any shape.
      key: a PRNG key (``jax.random.key`` or a raw ``PRNGKey``); may be None only
        when the call is the identity.
      rate: the probability ``p`` of dropping a unit, a Python float in [0, 1].
      deterministic: if True, return ``x`` unchanged.

    Returns:
      Same shape and dtype as ``x``. ``rate == 0`` or ``deterministic`` is the identity;
      ``rate == 1`` gives zeros with a zero gradient (never NaN).

    Example:
      >>> y = dropout(jnp.ones(4), jax.random.key(0), 0.5)
      >>> sorted(set(y.tolist())) in ([0.0, 2.0], [2.0], [0.0])
      True
    """
    x = as_float_array("dropout", "x", x)
    rate = concrete_scalar("dropout", "rate", rate, low=0.0, high=1.0)
    if deterministic or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    if key is None:
        raise ValueError("dropout: a key is required when deterministic=False and rate > 0; "
                         "pass key=jax.random.key(...) or deterministic=True")
    return _dropout(rate, x, key)


def _dropout_fwd(rate, x, key):
    keep = jax.random.bernoulli(key, jnp.float32(1.0 - rate), x.shape)  # float32 draw: same mask with x64 on
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), keep


def _dropout_bwd(rate, keep, g):
    return jnp.where(keep, g / (1.0 - rate), jnp.zeros_like(g)), None


_dropout = hand_written(_dropout_fwd, _dropout_bwd, static=1)
