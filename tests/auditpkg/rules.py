"""Three custom_vjp rules annotated with jaxtyping, as a user's package has them."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


@jax.custom_vjp
def softplus(x: Float[Array, " n"]) -> Float[Array, " n"]:
    return jnp.logaddexp(x, 0.0)


softplus.defvjp(lambda x: (softplus(x), x), lambda x, g: (g * jax.nn.sigmoid(x),))


@jax.custom_vjp
def project(x: Float[Array, "b n"], w: Float[Array, " n"]) -> Float[Array, " b"]:
    return x @ w


def _project_bwd(res: tuple, g: jax.Array) -> tuple:
    x, w = res
    return g[:, None] * w, x.T @ g


project.defvjp(lambda x, w: (project(x, w), (x, w)), _project_bwd)


@jax.custom_vjp
def swish(x: Float[Array, " n"]) -> Float[Array, " n"]:
    return x * jax.nn.sigmoid(x)


swish.defvjp(lambda x: (swish(x), x), lambda x, g: (g * jax.nn.sigmoid(x),))  # planted: σ(x) + x·σ'(x) is right
