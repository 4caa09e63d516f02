"""References for pure.train: the same step with jax.grad of a plain-jnp loss and an optax optimizer,
and the same epoch driven step by step from the host."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def epoch_order(seed: int, epoch: int, n: int) -> jax.Array:
    """The sample order of one epoch, from ``(seed, epoch)``, as pure.train draws it (tested equal)."""
    return jax.random.permutation(jax.random.fold_in(jax.random.key(seed), epoch), n)


def make_train_step(loss_fn: Any, optimizer: optax.GradientTransformation, *, project: Any = None) -> Any:
    @jax.jit
    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params if project is None else project(params)), opt_state, {"loss": loss,
                                                                             "grad_norm": optax.tree.norm(grads)}

    return step


def make_epoch(loss_fn: Any, optimizer: optax.GradientTransformation, batch_size: int, *, project: Any = None) -> Any:
    """pure.train.make_epoch's batches and step keys, one jitted step at a time from a Python loop."""
    step = make_train_step(loss_fn, optimizer, project=project)

    def epoch_fn(params, opt_state, X, y, seed, epoch, key):
        order = np.asarray(epoch_order(seed, epoch, X.shape[0]))
        losses = []
        for i in range(X.shape[0] // batch_size):
            idx = order[i * batch_size:(i + 1) * batch_size]
            params, opt_state, metrics = step(params, opt_state, (X[idx], y[idx]), jax.random.fold_in(key, i))
            losses.append(metrics["loss"])
        return params, opt_state, {"loss": jnp.stack(losses)}

    return epoch_fn
