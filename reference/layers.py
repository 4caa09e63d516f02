"""References for pure.layers."""

from typing import Any

import jax
import jax.numpy as jnp


def affine(x: jax.Array, W: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(x, W) + b


def dropout(x: jax.Array, key: Any, rate: float, *, deterministic: bool = False) -> jax.Array:
    if deterministic or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, jnp.float32(1.0 - rate), x.shape)  # the same draw as pure's
    return jnp.where(keep, x / (1.0 - rate), 0.0)
