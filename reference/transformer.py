"""Reference for pure.transformer: the same model in plain jax.numpy and jax.nn, differentiated by JAX."""

import jax
import jax.numpy as jnp


def _layer_norm(x: jax.Array, norm: dict) -> jax.Array:
    return jax.nn.standardize(x, axis=-1, epsilon=1e-5) * norm["gamma"] + norm["beta"]


def transformer_logits(params: dict, ids: jax.Array) -> jax.Array:
    T = ids.shape[1]
    x = params["embed"][ids] + params["pos"][:T]
    for block in params["blocks"]:
        qkv = jnp.einsum("btd,dcnh->btcnh", _layer_norm(x, block["norm1"]), block["qkv"]["W"]) + block["qkv"]["b"]
        heads = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=True)
        x = x + jnp.einsum("btnh,nhd->btd", heads, block["proj"]["W"]) + block["proj"]["b"]
        hidden = jax.nn.gelu(_layer_norm(x, block["norm2"]) @ block["up"]["W"] + block["up"]["b"])
        x = x + hidden @ block["down"]["W"] + block["down"]["b"]
    return _layer_norm(x, params["norm"]) @ params["head"]["W"] + params["head"]["b"]


def lm_loss(params: dict, ids: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(transformer_logits(params, ids[:, :-1]), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, ids[:, 1:, None], axis=-1))
