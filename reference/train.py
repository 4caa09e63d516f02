"""References for pure.train: the same step with jax.grad of a plain-jnp loss and an optax optimizer."""

from typing import Any

import jax
import optax

from pure.train import global_norm


def make_train_step(loss_fn: Any, optimizer: optax.GradientTransformation) -> Any:
    @jax.jit
    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "grad_norm": global_norm(grads)}

    return step
