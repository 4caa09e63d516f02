"""Penalties on parameter pytrees (L2 weight decay, L1 lasso) and the max-norm projection.

``mask`` follows optax: None (every leaf), a pytree of bools with the structure of
``params``, or a callable ``params -> pytree of bools``. Biases are usually left
out (d2l, §weight decay), e.g. ``mask=lambda p: [{"W": True, "b": False} for _ in p]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from pure._checks import as_float_array, at_least_float32, concrete_scalar, resolve_mask
from pure._vjp import hand_written


def _masked_leaves(fn: str, params: Any, mask: Any) -> tuple[jax.Array, ...]:
    leaves = jax.tree_util.tree_leaves(params)
    keep = resolve_mask(fn, params, mask)
    return tuple(as_float_array(fn, "every params leaf", w) for w, k in zip(leaves, keep, strict=True) if k)


def _strength(fn: str, strength: Any) -> jax.Array:
    """A scalar strength, checked to be ≥ 0 when concrete (a traced one, e.g. under vmap, is taken as is)."""
    strength = as_float_array(fn, "strength", float(strength) if isinstance(strength, int) else strength)
    if strength.shape != ():
        raise ValueError(f"{fn}: strength must be a scalar, got shape {strength.shape}")
    try:
        concrete_scalar(fn, "strength", strength, low=0.0)
    except TypeError:
        pass  # abstract under jit/vmap: nothing to check at trace time
    return strength


def _total(leaves: tuple[jax.Array, ...], term) -> jax.Array:
    dtype = at_least_float32(*(w.dtype for w in leaves))
    return sum((jnp.sum(term(w)).astype(dtype) for w in leaves), jnp.zeros((), dtype))


# ---------------------------------------------------------------------------- L2
def l2_penalty(params: Any, strength: float | Float[Array, ""], *, mask: Any = None) -> Float[Array, ""]:
    """The d2l weight-decay penalty ``strength/2 · Σ w²`` over the masked leaves (d2l).

    .. math:: R(w) = \\frac{\\lambda}{2}\\lVert w\\rVert^2, \\qquad \\nabla R = \\lambda w

    With plain SGD, adding this to the loss is the same update as weight decay
    ``w ← (1 − ηλ)w − η∇ℓ``. **CS231n's convention** ``reg · Σ W²`` (gradient
    ``2·reg·W``) is ``l2_penalty(params, 2 * reg)``: never pass ``reg`` itself.

    Args:
      params: a pytree of float arrays.
      strength: λ ≥ 0; a float or a scalar array (differentiable, so it can be vmapped).
      mask: which leaves to penalise (see the module docstring).

    Returns:
      A scalar.

    Example:
      >>> l2_penalty({"W": jnp.array([3.0, 4.0]), "b": jnp.ones(2)}, 0.1, mask={"W": True, "b": False})
      Array(1.25, dtype=float32)
    """
    return _l2_penalty(_masked_leaves("l2_penalty", params, mask), _strength("l2_penalty", strength))


def _l2_penalty_fwd(leaves, strength):
    sq = _total(leaves, lambda w: w * w)
    return 0.5 * strength.astype(sq.dtype) * sq, (leaves, strength, sq)


def _l2_penalty_bwd(res, g):
    leaves, strength, sq = res
    gs = g * strength.astype(g.dtype)
    return tuple((gs * w.astype(g.dtype)).astype(w.dtype) for w in leaves), (0.5 * g * sq).astype(strength.dtype)


_l2_penalty = hand_written(_l2_penalty_fwd, _l2_penalty_bwd)


# ---------------------------------------------------------------------------- L1
def l1_penalty(params: Any, strength: float | Float[Array, ""], *, mask: Any = None) -> Float[Array, ""]:
    """The lasso penalty ``strength · Σ|w|`` over the masked leaves; it drives weights to 0.

    .. math:: R(w) = \\lambda \\lVert w\\rVert_1, \\qquad \\partial R = \\lambda\\,\\mathrm{sign}(w)

    **Subgradient at 0:** ``sign(0) = 0``, so a weight that is exactly 0 gets no
    gradient from the penalty (0 lies in the subdifferential [−λ, λ]).

    Args:
      params: a pytree of float arrays.
      strength: λ ≥ 0; a float or a scalar array.
      mask: which leaves to penalise.

    Returns:
      A scalar.

    Example:
      >>> l1_penalty([jnp.array([-2.0, 0.0, 1.0])], 0.5)
      Array(1.5, dtype=float32)
    """
    return _l1_penalty(_masked_leaves("l1_penalty", params, mask), _strength("l1_penalty", strength))


def _l1_penalty_fwd(leaves, strength):
    total = _total(leaves, lambda w: jnp.sign(w) * w)  # |w|, with the subgradient 0 at 0 at every order
    return strength.astype(total.dtype) * total, (leaves, strength, total)


def _l1_penalty_bwd(res, g):
    leaves, strength, total = res
    gs = g * strength.astype(g.dtype)
    return tuple((gs * jnp.sign(w).astype(g.dtype)).astype(w.dtype) for w in leaves), (g * total).astype(strength.dtype)


_l1_penalty = hand_written(_l1_penalty_fwd, _l1_penalty_bwd)


# ---------------------------------------------------------------------- max-norm
def max_norm(params: Any, max_value: float, *, axis: int = 0) -> Any:
    """Projects each weight matrix so every slice along ``axis`` has norm ≤ ``max_value``.

    .. math:: w \\leftarrow w \\cdot \\min\\big(1,\\ c / \\lVert w\\rVert\\big)

    A projection, applied after an update step (the max-norm constraint of Srivastava et al., 2014).
    With ``W`` of shape ``(D, C)`` and ``axis=0`` each unit's incoming weight vector
    is bounded. Only leaves with ``ndim ≥ 2`` are projected; biases pass through.
    An all-zero slice stays zero (no NaN). **Kink:** at exactly ``‖w‖ = c`` the
    identity branch is taken. Where the projection is active, the backward is
    ``(c/‖w‖)(g − ŵ(ŵ·g))`` with ``ŵ = w/‖w‖``.

    Args:
      params: a pytree of float arrays.
      max_value: the bound ``c > 0``, a Python float.
      axis: the axis along which norms are taken.

    Returns:
      A pytree with the structure of ``params``.

    Example:
      >>> max_norm({"W": jnp.array([[3.0], [4.0]])}, 1.0)["W"].ravel()
      Array([0.6, 0.8], dtype=float32)
    """
    c = concrete_scalar("max_norm", "max_value", max_value, low=0.0, low_open=True)

    def project(path, w):
        w = as_float_array("max_norm", f"params{jax.tree_util.keystr(path)}", w)
        if w.ndim < 2:
            return w
        if not -w.ndim <= axis < w.ndim:
            raise ValueError(f"max_norm: axis {axis} is out of range for a leaf of shape {w.shape}")
        return _max_norm((c, axis), w)

    return jax.tree_util.tree_map_with_path(project, params)


def _norm_scale(c, axis, w):
    sq = jnp.sum(w * w, axis=axis, keepdims=True)
    active = sq > c * c
    norm = jnp.sqrt(jnp.where(active, sq, 1))  # never sqrt(0): grad-of-grad stays finite at a zero column
    return norm, active, jnp.where(active, c / norm, 1)


def _max_norm_fwd(setting, w):
    norm, active, scale = _norm_scale(*setting, w)
    return w * scale, (w, norm, active, scale)


def _max_norm_bwd(setting, res, g):
    _, axis = setting
    w, norm, active, scale = res
    unit = w / norm
    radial = unit * jnp.sum(unit * g, axis=axis, keepdims=True)
    return (jnp.where(active, scale * (g - radial), g),)


_max_norm = hand_written(_max_norm_fwd, _max_norm_bwd, static=1)
