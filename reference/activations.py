"""References for pure.activations: jax.nn and jax.numpy."""

import jax
import jax.numpy as jnp


def sigmoid(x: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(x)


def tanh(x: jax.Array) -> jax.Array:
    return jnp.tanh(x)


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)  # relu'(0) = 0 by jax.nn's own convention


def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    # jax.nn.leaky_relu takes slope 1 at x = 0; handgrad takes negative_slope there.
    return jnp.where(x > 0, x, negative_slope * x)


def gelu(x: jax.Array, approximate: bool = True) -> jax.Array:
    return jax.nn.gelu(x, approximate=approximate)
