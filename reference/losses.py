"""References for pure.losses: optax where optax has the same function, else jax.numpy."""

import jax
import jax.numpy as jnp
import optax


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean(optax.l2_loss(pred, target))  # optax.l2_loss is ½(pred − target)²


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def multiclass_hinge(scores: jax.Array, labels: jax.Array, margin: float = 1.0) -> jax.Array:
    # CS231n's sum form; optax.multiclass_hinge_loss is the Crammer–Singer max form.
    true_score = jnp.take_along_axis(scores, labels[:, None], axis=1)
    slack = jax.nn.relu(scores - true_score + margin)  # relu: a margin hit exactly has gradient 0
    not_true = jnp.arange(scores.shape[1], dtype=labels.dtype) != labels[:, None]
    return jnp.mean(jnp.sum(jnp.where(not_true, slack, 0.0), axis=1))


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))
