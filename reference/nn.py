"""References for pure.nn: the same MLP in plain jax.numpy / jax.nn, differentiated by JAX."""

from typing import Any

import jax
import jax.numpy as jnp

from reference import activations, layers, losses


def mlp(params: list, x: jax.Array, *, activation: str = "relu", dropout_rate: float = 0.0,
        key: Any = None, deterministic: bool = True, compute_dtype: Any = None) -> jax.Array:
    act = getattr(activations, activation)
    live = dropout_rate > 0 and not deterministic
    keys = jax.random.split(key, len(params)) if live else [None] * len(params)
    if compute_dtype is not None:
        x, params = jnp.asarray(x, compute_dtype), [{k: v.astype(compute_dtype) for k, v in p.items()} for p in params]
    h = x
    for layer, k in zip(params[:-1], keys, strict=False):
        h = act(h @ layer["W"] + layer["b"])
        if live:
            h = layers.dropout(h, k, dropout_rate)
    return h @ params[-1]["W"] + params[-1]["b"]


def classification_loss(params: list, x: jax.Array, labels: jax.Array, *, l2: float = 0.0, loss: str = "softmax",
                        activation: str = "relu", dropout_rate: float = 0.0, key: Any = None,
                        deterministic: bool = True, compute_dtype: Any = None) -> jax.Array:
    logits = mlp(params, x, activation=activation, dropout_rate=dropout_rate, key=key, deterministic=deterministic,
                 compute_dtype=compute_dtype)
    if compute_dtype is not None:  # the loss in float32, as pure's losses compute
        logits = logits.astype(jnp.float32) if jnp.finfo(logits.dtype).bits < 32 else logits
    data = (losses.softmax_cross_entropy if loss == "softmax" else losses.multiclass_hinge)(logits, labels)
    return data + 0.5 * l2 * sum(jnp.sum(layer["W"] ** 2) for layer in params)


def two_layer_net_loss(params: list, x: jax.Array, labels: jax.Array, *, reg: float = 0.0) -> jax.Array:
    hidden = jax.nn.relu(x @ params[0]["W"] + params[0]["b"])
    scores = hidden @ params[1]["W"] + params[1]["b"]
    return losses.softmax_cross_entropy(scores, labels) + reg * sum(jnp.sum(layer["W"] ** 2) for layer in params)
