"""References for pure.norms: the textbook formulas in plain jax.numpy, computed in at least float32."""

import jax
import jax.numpy as jnp


def layer_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = 1e-5) -> jax.Array:
    dtype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32  # at least float32, without promotion
    x32 = x.astype(dtype)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.var(x32, axis=-1, keepdims=True)
    return ((x32 - mean) / jnp.sqrt(var + eps) * gamma.astype(dtype) + beta.astype(dtype)).astype(x.dtype)


def rms_norm(x: jax.Array, gamma: jax.Array, eps: float = 1e-6) -> jax.Array:
    dtype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32  # at least float32, without promotion
    x32 = x.astype(dtype)
    return (x32 / jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps) * gamma.astype(dtype)).astype(x.dtype)
