"""Reference for pure.attention: the whole score matrix, softmax(QKᵀ·scale + bias, masked) V, in plain jax.numpy."""

import jax
import jax.numpy as jnp
import numpy as np


def attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None = None,
              mask: jax.Array | None = None, *, scale: float | None = None, is_causal: bool = False) -> jax.Array:
    B, T, N, H = query.shape
    groups = N // key.shape[2]
    k, v = (jnp.repeat(x, groups, axis=2) for x in (key, value))  # query head n reads kv head n // groups
    dtype = jnp.float64 if query.dtype == jnp.float64 else jnp.float32  # softmax in float32 for 16-bit inputs
    scale = 1 / np.sqrt(H) if scale is None else scale
    logits = jnp.einsum("btnh,bsnh->bnts", query.astype(dtype), k.astype(dtype)) * scale
    if bias is not None:
        logits = logits + bias.astype(dtype)
    keep = jnp.ones(logits.shape, bool) if mask is None else jnp.broadcast_to(mask, logits.shape)
    if is_causal:
        keep = keep & jnp.tril(jnp.ones(logits.shape[-2:], bool))
    logits = jnp.where(keep, logits, -0.7 * float(np.finfo(np.float32).max))  # jax.nn's masked logit
    out = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, axis=-1), v.astype(dtype))
    return out.astype(query.dtype)
