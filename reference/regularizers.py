"""References for pure.regularizers, in plain jax.numpy (the mask resolved here, not by pure)."""

from typing import Any

import jax
import jax.numpy as jnp


def _selected(params: Any, mask: Any) -> list[jax.Array]:
    """The leaves an optax-style mask (None, a pytree of bools, or a callable) keeps."""
    if mask is None:
        return jax.tree_util.tree_leaves(params)
    mask = mask(params) if callable(mask) else mask
    return [w for w, keep in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask), strict=True)
            if keep]


def l2_penalty(params: Any, strength: Any, *, mask: Any = None) -> jax.Array:
    return 0.5 * strength * sum(jnp.vdot(w, w) for w in _selected(params, mask))


def l1_penalty(params: Any, strength: Any, *, mask: Any = None) -> jax.Array:
    # sign(w)·w is |w| with derivative sign(w): 0 at w = 0, handgrad's subgradient (jnp.abs takes 1 there)
    return strength * sum(jnp.sum(jnp.sign(w) * w) for w in _selected(params, mask))


def max_norm(params: Any, max_value: float, *, axis: int = 0) -> Any:
    def project(w):
        if w.ndim < 2:
            return w
        sq = jnp.sum(w * w, axis=axis, keepdims=True)
        norm = jnp.sqrt(jnp.where(sq > 0, sq, 1.0))  # the double-where keeps grad finite at 0
        return jnp.where(sq > 0, w * jnp.minimum(1.0, max_value / norm), w)

    return jax.tree_util.tree_map(project, params)
