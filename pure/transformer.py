"""A decoder-only transformer language model with explicit parameter pytrees.

``params`` is a dict (shapes in words: ``V`` the vocabulary, ``D`` the model width, ``N`` the heads, ``H = D/N``
a head's width, ``L`` the context length)::

    {"embed": (V, D), "pos": (L, D),
     "blocks": [{"norm1": {"gamma": (D,), "beta": (D,)},
                 "qkv": {"W": (D, 3, N, H), "b": (3, N, H)},
                 "proj": {"W": (N, H, D), "b": (D,)},
                 "norm2": {"gamma": (D,), "beta": (D,)},
                 "up": {"W": (D, 4D), "b": (4D,)},
                 "down": {"W": (4D, D), "b": (D,)}}, ...],
     "norm": {"gamma": (D,), "beta": (D,)},
     "head": {"W": (D, V), "b": (V,)}}

The attention kernels keep the head axis, as flax's ``MultiHeadDotProductAttention`` does, so the head count is
read from the parameters. Each block is pre-norm (GPT-2, Radford et al. 2019)::

    x = x + proj(attention(qkv(layer_norm(x)), is_causal=True))
    x = x + down(gelu(up(layer_norm(x))))

Every op with a derivative of its own is pure's: :func:`~pure.embedding.embedding`, :func:`~pure.norms.layer_norm`,
:func:`~pure.layers.affine`, :func:`~pure.attention.attention`, :func:`~pure.activations.gelu` and
:func:`~pure.losses.softmax_cross_entropy`. Only reshapes and the residual sums are jax.numpy's.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Int

from pure.activations import gelu
from pure.attention import attention
from pure.embedding import embedding
from pure.layers import affine
from pure.losses import softmax_cross_entropy
from pure.norms import layer_norm

Params = dict[str, Any]

INIT_STD = 0.02  # GPT-2's: N(0, 0.02²) for every weight and embedding; the residual outputs also ÷ √(2·layers)


def init_transformer(key: jax.Array, vocab: int, d_model: int, heads: int, layers: int, seq_len: int, *,
                     dtype: Any = jnp.float32) -> Params:
    """Random parameters of a decoder-only transformer, as GPT-2 initialises them.

    Weights and embeddings are ``N(0, 0.02²)``; the two matrices that write into the residual stream (``proj``
    and ``down``) are further divided by ``√(2·layers)``, one for each residual sum, so that the stream's
    variance does not grow with depth. Biases and ``beta`` are 0, ``gamma`` is 1.

    Args:
      key: a PRNG key.
      vocab: V, the number of token ids (256 for bytes).
      d_model: D, the model width, a multiple of ``heads``.
      heads: N, attention heads per block.
      layers: the number of blocks.
      seq_len: L, the longest context the position embedding covers.
      dtype: the parameter dtype.

    Returns:
      The parameter dict of the module docstring.

    Example:
      >>> params = init_transformer(jax.random.key(0), vocab=256, d_model=32, heads=4, layers=2, seq_len=16)
      >>> params["blocks"][0]["qkv"]["W"].shape, params["head"]["W"].shape
      ((32, 3, 4, 8), (32, 256))
    """
    sizes = {"vocab": vocab, "d_model": d_model, "heads": heads, "layers": layers, "seq_len": seq_len}
    for name, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"init_transformer: expected {name} to be a positive int, got {n!r} instead")
    if d_model % heads:
        raise ValueError(f"init_transformer: d_model {d_model} is not a multiple of heads {heads}; each head "
                         f"takes d_model / heads dimensions")
    D, N, H = d_model, heads, d_model // heads
    keys = iter(jax.random.split(key, 3 + 4 * layers))
    normal = lambda shape, std=INIT_STD: std * jax.random.normal(next(keys), shape, dtype)  # noqa: E731
    norm = lambda: {"gamma": jnp.ones(D, dtype), "beta": jnp.zeros(D, dtype)}  # noqa: E731
    residual = INIT_STD / math.sqrt(2 * layers)
    blocks = [{"norm1": norm(),
               "qkv": {"W": normal((D, 3, N, H)), "b": jnp.zeros((3, N, H), dtype)},
               "proj": {"W": normal((N, H, D), residual), "b": jnp.zeros(D, dtype)},
               "norm2": norm(),
               "up": {"W": normal((D, 4 * D)), "b": jnp.zeros(4 * D, dtype)},
               "down": {"W": normal((4 * D, D), residual), "b": jnp.zeros(D, dtype)}} for _ in range(layers)]
    return {"embed": normal((vocab, D)), "pos": normal((seq_len, D)), "blocks": blocks, "norm": norm(),
            "head": {"W": normal((D, vocab)), "b": jnp.zeros(vocab, dtype)}}


def weights_only(params: Params) -> Params:
    """The usual weight-decay mask: every ``W`` and both embeddings; no bias, no norm's ``gamma`` or ``beta``.

    Example:
      >>> mask = weights_only(init_transformer(jax.random.key(0), 256, 32, 4, 1, 16))
      >>> mask["embed"], mask["blocks"][0]["qkv"], mask["norm"]
      (True, {'W': True, 'b': False}, {'beta': False, 'gamma': False})
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in ("W", "embed", "pos"), params)


def transformer_logits(params: Params, ids: Int[ArrayLike, "batch t"]) -> Float[Array, "batch t vocab"]:
    """The next-token logits at every position of ``ids``: position ``t`` sees ``ids[:, :t+1]`` only.

    Args:
      params: from :func:`init_transformer`.
      ids: integer token ids of shape ``(B, T)``, ``T`` at most the ``seq_len`` of ``params``, each in
        ``[0, V)`` (checked on an eager call; under ``jit`` an id outside gives NaN logits, as
        :func:`~pure.embedding.embedding` says).

    Returns:
      ``(B, T, V)`` logits in the parameters' dtype.

    Example:
      >>> params = init_transformer(jax.random.key(0), vocab=256, d_model=32, heads=4, layers=2, seq_len=16)
      >>> transformer_logits(params, jnp.zeros((2, 16), jnp.int32)).shape
      (2, 16, 256)
    """
    if not hasattr(ids, "dtype") or not jnp.issubdtype(ids.dtype, jnp.integer) or jnp.ndim(ids) != 2:
        got = f"shape {jnp.shape(ids)} of {ids.dtype}" if hasattr(ids, "dtype") else type(ids).__name__
        raise TypeError(f"transformer_logits: expected ids to be a 2-D integer array (batch, seq), got {got} "
                        f"instead")
    B, T = jnp.shape(ids)
    if T > params["pos"].shape[0]:
        raise ValueError(f"transformer_logits: ids has {T} positions but the position embedding covers "
                         f"{params['pos'].shape[0]} (the seq_len of init_transformer)")
    x = embedding(params["embed"], ids) + embedding(params["pos"], jnp.arange(T))
    for block in params["blocks"]:
        x = x + _attend(block, layer_norm(x, block["norm1"]["gamma"], block["norm1"]["beta"]))
        h = layer_norm(x, block["norm2"]["gamma"], block["norm2"]["beta"])
        x = x + affine(gelu(affine(h, block["up"]["W"], block["up"]["b"])), block["down"]["W"], block["down"]["b"])
    x = layer_norm(x, params["norm"]["gamma"], params["norm"]["beta"])
    return affine(x, params["head"]["W"], params["head"]["b"])


def _attend(block: Params, h: jax.Array) -> jax.Array:
    """Causal multi-head self-attention of ``h`` (B, T, D), projected back to (B, T, D)."""
    (D, _, N, H), (B, T, _) = block["qkv"]["W"].shape, h.shape
    qkv = affine(h, block["qkv"]["W"].reshape(D, 3 * N * H), block["qkv"]["b"].reshape(3 * N * H))
    q, k, v = (qkv.reshape(B, T, 3, N, H)[:, :, i] for i in range(3))
    out = attention(q, k, v, is_causal=True).reshape(B, T, N * H)
    return affine(out, block["proj"]["W"].reshape(N * H, D), block["proj"]["b"])


def lm_loss(params: Params, ids: Int[ArrayLike, "batch t_plus_1"]) -> Float[Array, ""]:
    """Next-token cross-entropy in nats, the mean over every predicted position of every row.

    .. math:: L = -\\frac{1}{B\\,T} \\sum_{b}\\sum_{t=1}^{T} \\log \\mathrm{softmax}(s_{b,t-1})_{x_{b,t}}

    with ``s = transformer_logits(params, ids[:, :-1])``: the first ``T`` ids of a row predict its last ``T``.
    Divide by ``ln 2`` for bits per token (bits per character for bytes).

    Args:
      params: from :func:`init_transformer`.
      ids: integer token ids of shape ``(B, T + 1)``, ``T ≥ 1`` at most the ``seq_len`` of ``params``.

    Returns:
      A scalar.

    Example:
      >>> params = init_transformer(jax.random.key(0), vocab=256, d_model=32, heads=4, layers=2, seq_len=16)
      >>> bool(abs(lm_loss(params, jnp.zeros((2, 17), jnp.int32)) - jnp.log(256.0)) < 0.1)  # ≈ uniform at init
      True
    """
    if not hasattr(ids, "dtype") or jnp.ndim(ids) != 2 or jnp.shape(ids)[1] < 2:
        got = f"shape {jnp.shape(ids)}" if hasattr(ids, "dtype") else type(ids).__name__
        raise ValueError(f"lm_loss: expected ids of shape (batch, T + 1) with T ≥ 1, got {got} instead")
    ids = jnp.asarray(ids)
    logits = transformer_logits(params, ids[:, :-1])
    return softmax_cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
