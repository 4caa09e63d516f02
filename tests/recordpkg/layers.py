"""Rules built at call time, as libraries build them: a gated unit (correct) and a scaled softplus (wrong)."""

import jax
import jax.numpy as jnp


def gated(x: jax.Array, w: jax.Array) -> jax.Array:
    """tanh(x @ w) * sigmoid(x @ w), with its VJP written by hand; called eagerly by the tests."""

    @jax.custom_vjp
    def unit(x, w):
        z = x @ w
        return jnp.tanh(z) * jax.nn.sigmoid(z)

    def fwd(x, w):
        z = x @ w
        t, s = jnp.tanh(z), jax.nn.sigmoid(z)
        return t * s, (x, w, t, s)

    def bwd(res, g):
        x, w, t, s = res
        dz = g * ((1 - t**2) * s + t * s * (1 - s))
        return dz @ w.T, x.T @ dz

    unit.defvjp(fwd, bwd)
    return unit(x, w)


def scaled_softplus(x: jax.Array, beta: float) -> jax.Array:
    """softplus(beta x) / beta; its backward forgets to divide the chain rule's beta back out (wrong)."""

    @jax.custom_vjp
    def f(x):
        return jax.nn.softplus(beta * x) / beta

    def bwd(x, g):
        return (g * beta * jax.nn.sigmoid(beta * x),)  # should be g * sigmoid(beta x)

    f.defvjp(lambda x: (f(x), x), bwd)
    return f(x)


@jax.jit
def model(x: jax.Array, w: jax.Array) -> jax.Array:
    """Called under jit by the tests: the recorder sees only the shapes and dtypes of its arguments."""
    return jnp.sum(scaled_softplus(x @ w, 2.0))
