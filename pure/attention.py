"""Scaled dot-product attention with a flash-style backward (FlashAttention-2, Dao 2023, algorithms 1 and 2).

Queries and keys are cut into blocks of :data:`QUERY_BLOCK` and :data:`KEY_BLOCK`, and one ``lax.scan`` runs over
the pairs of blocks that meet: under ``is_causal`` a pair wholly above the diagonal is not in the list, so its work
is skipped, not masked. The forward runs an online softmax per query block and saves only the output (in the
float32-or-wider dtype it was computed in) and each row's logsumexp, beside the inputs; the backward recomputes each
pair's probabilities from them. Nothing of size ``q_len × kv_len`` is kept or built (unless the bias itself is that
big): the temporaries are one pair's ``QUERY_BLOCK × KEY_BLOCK`` per head and a few of ``q_len × head_dim``.
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike
from jaxtyping import Array, Bool, Float

from pure._checks import as_float_array, at_least_float32, concrete_scalar
from pure._vjp import hand_written

# A pair's temporaries are QUERY_BLOCK·KEY_BLOCK per head, never q_len·kv_len. 128 × 64 was the fastest step of
# 64–512 × 32–512 on a 2-core CPU at T = 512 to 4096 (its scores, 128 KiB for 4 heads, stay in L2).
QUERY_BLOCK = 128  # queries per block
KEY_BLOCK = 64  # keys per block
# The logit jax.nn.dot_product_attention gives a masked-out key (its _get_large_negative): finite, so a row with
# every key masked attends uniformly to all of them instead of turning into NaN.
MASKED = -0.7 * float(np.finfo(np.float32).max)


def attention(query: Float[ArrayLike, "batch q_len heads head_dim"],
              key: Float[ArrayLike, "batch kv_len kv_heads head_dim"],
              value: Float[ArrayLike, "batch kv_len kv_heads head_dim"],
              bias: Float[ArrayLike, "#batch #heads #q_len #kv_len"] | None = None,
              mask: Bool[ArrayLike, "#batch #heads #q_len #kv_len"] | None = None, *,
              scale: float | None = None, is_causal: bool = False) -> Float[Array, "batch q_len heads head_dim"]:
    """Multi-head attention ``softmax(scale·QKᵀ + bias, masked) V``, as ``jax.nn.dot_product_attention``.

    .. math:: P = \\mathrm{softmax}_s(\\mathrm{scale}\\cdot q_t k_s^T + b_{ts}), \\quad O = P V, \\quad
              dS = P \\odot (dO\\,V^T - \\mathrm{rowsum}(dO \\odot O)), \\quad dQ = \\mathrm{scale}\\cdot dS\\,K,
              \\quad dK = \\mathrm{scale}\\cdot dS^T Q, \\quad dV = P^T dO

    Flash-style: ``P`` is never stored. The forward keeps ``O`` and each row's logsumexp, and the backward
    rebuilds ``P`` from them one block of :data:`QUERY_BLOCK` queries × :data:`KEY_BLOCK` keys at a time: nothing
    of size ``T·S`` is kept or built. Under ``is_causal`` the blocks above the diagonal are skipped.

    Args:
      query: ``(B, T, N, H)``: batch, query length, heads, head dimension.
      key: ``(B, S, K, H)`` with ``N`` a multiple of ``K``: query head ``n`` reads key head ``n // (N // K)``
        (grouped-query attention; ``K == 1`` is multi-query attention).
      value: the same shape as ``key``. query, key and value share one float dtype.
      bias: optional float logits added before masking, broadcastable to ``(B, N, T, S)`` (each axis 1 or full;
        fewer than 4 axes are leading 1s, as in jax). It gets a real cotangent, summed to its own shape.
      mask: optional boolean, ``True`` = attend, broadcastable like ``bias``; gets no cotangent.
      scale: a Python float; default ``1/√H``.
      is_causal: query ``t`` sees keys ``s ≤ t`` only (``jnp.tril`` of ``(T, S)``, as jax).

    Returns:
      ``(B, T, N, H)`` in the inputs' dtype. bfloat16 and float16 run the softmax and sums in float32, as jax
      does; float64 runs in float64 (jax's own softmax is float32 even there).

    **Conventions (jax's):** a masked logit becomes :data:`MASKED`, so a row with every key masked attends to all
    ``S`` keys uniformly (its output is the mean of ``value``) and passes no gradient to query, key or bias.

    Example:
      >>> q = k = v = jnp.arange(24.0).reshape(1, 3, 2, 4) / 24
      >>> bool(jnp.allclose(attention(q, k, v, is_causal=True),
      ...                   jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=1e-6))
      True
    """
    query, key, value = (as_float_array("attention", n, x) for n, x in (("query", query), ("key", key),
                                                                          ("value", value)))
    for name, x in (("query", query), ("key", key), ("value", value)):
        if x.ndim != 4:
            raise ValueError(f"attention: expected {name} of shape (batch, seq, heads, head_dim), got shape "
                             f"{x.shape} instead")
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(f"attention: query, key and value must share a dtype, got {query.dtype}, {key.dtype} and "
                        f"{value.dtype}; cast them to one")
    if key.shape != value.shape:
        raise ValueError(f"attention: key has shape {key.shape} but value has shape {value.shape}; they must be "
                         f"equal (the same kv_len, heads and head_dim)")
    (B, T, N, H), (Bk, S, K, Hk) = query.shape, key.shape
    if (B, H) != (Bk, Hk):
        what = "batch" if B != Bk else "head_dim"
        raise ValueError(f"attention: query has shape {query.shape} and key {key.shape}; their {what} must match")
    if not K or N % K:
        raise ValueError(f"attention: query has {N} heads, which is not a multiple of key's {K} heads")
    if not S:
        raise ValueError("attention: key has kv_len 0: there is nothing to attend to")
    full = (B, N, T, S)
    if bias is not None:
        bias = _broadcastable("bias", as_float_array("attention", "bias", bias), full)
    if mask is not None:
        if not hasattr(mask, "dtype") or mask.dtype != jnp.bool_:
            got = getattr(mask, "dtype", type(mask).__name__)
            raise TypeError(f"attention: expected mask to be a boolean array (True = attend), got {got} instead; "
                            f"pass an additive mask as bias")
        mask = _broadcastable("mask", jnp.asarray(mask), full)
    if not isinstance(is_causal, bool):
        raise TypeError(f"attention: is_causal must be a Python bool, got {is_causal!r}")
    scale = 1.0 / float(np.sqrt(H)) if scale is None else concrete_scalar("attention", "scale", scale,
                                                                           low=-np.inf)
    return _attention(scale, is_causal, query, key, value, bias, mask)


def _broadcastable(name: str, x: jax.Array, full: tuple[int, ...]) -> jax.Array:
    """``x`` with leading 1s up to 4 axes, or a ValueError unless each axis is 1 or that of ``full``."""
    if x.ndim > 4 or any(d not in (1, f) for d, f in zip(x.shape[::-1], full[::-1], strict=False)):
        raise ValueError(f"attention: {name} has shape {x.shape}, which does not broadcast to (batch, heads, "
                         f"q_len, kv_len) = {full}; each of its (at most 4) axes must be 1 or that size")
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


# ----------------------------------------------------------- the tiles, shared by forward and backward
class _Tiles(NamedTuple):
    """The inputs head-major, in the compute dtype, padded to whole blocks: the layout every pair of blocks reads."""
    q: jax.Array  # (B, K, G, T', H): query head n = k·G + g reads key head k
    k: jax.Array  # (B, K, S', H)
    v: jax.Array  # (B, K, S', H)
    bias: jax.Array | None  # (b, k, g, t', s'), the scores' layout; an axis of length 1 broadcasts
    mask: jax.Array | None  # the same; padding is False
    qb: int  # queries per block
    kb: int  # keys per block
    T: int
    S: int


def _tiled(query, key, value, bias, mask) -> _Tiles:
    T, S, K = query.shape[1], key.shape[1], key.shape[2]
    qb, kb = min(QUERY_BLOCK, T), min(KEY_BLOCK, S)
    tp, sp = -(-T // qb) * qb, -(-S // kb) * kb
    ctype = at_least_float32(query.dtype)
    k, v = (_padded(jnp.swapaxes(x, 1, 2).astype(ctype), 2, sp) for x in (key, value))
    b, m = (None if x is None else _padded(_padded(_grouped(x, K), 3, tp), 4, sp) for x in (bias, mask))
    return _Tiles(_heads_first(query, K, tp), k, v, b, m, qb, kb, T, S)


def _heads_first(x: jax.Array, K: int, total: int) -> jax.Array:
    """A (B, T, N, H) array as (B, K, G, T', H) in the compute dtype, zero-padded to ``total`` queries."""
    B, T, N, H = x.shape
    x = x.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
    return _padded(x.astype(at_least_float32(x.dtype)), 3, total)


def _heads_last(x: jax.Array, T: int) -> jax.Array:
    """(B, K, G, T', H) back to (B, T, N, H), the padding dropped."""
    B, K, G, _, H = x.shape
    return x[:, :, :, :T].transpose(0, 3, 1, 2, 4).reshape(B, T, K * G, H)


def _grouped(x: jax.Array, K: int) -> jax.Array:
    """A (b, n, t, s) bias or mask as (b, K, G, t, s), the scores' layout; a 1-long head axis stays 1."""
    b, n, t, s = x.shape
    return x.reshape(b, K, n // K, t, s) if n > 1 else x[:, :, None]


def _padded(x: jax.Array, axis: int, total: int) -> jax.Array:
    """``x`` zero-padded (False for a mask) along ``axis`` to ``total`` (an axis of length 1 broadcasts: kept)."""
    n = x.shape[axis]
    return x if n in (1, total) else jnp.pad(x, [(0, total - n if a == axis else 0) for a in range(x.ndim)])


def _pairs(T: int, S: int, qb: int, kb: int, causal: bool) -> tuple[jax.Array, jax.Array]:
    """The (query block, key block) pairs to visit; under ``causal``, only those with a key some query sees."""
    nk = -(-S // kb)
    i, j = np.divmod(np.arange(-(-T // qb) * nk), nk)
    if causal:  # the block's first key ≤ the query block's last real query: a pair above the diagonal is skipped
        seen = j * kb <= np.minimum((i + 1) * qb, T) - 1
        i, j = i[seen], j[seen]
    return jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)


def _starts(x: jax.Array, at: dict[int, tuple[jax.Array, int]]) -> list:
    # int32 like the pairs' indices: dynamic_slice takes one integer type (a bare 0 is int64 under x64)
    return [at[a][0] * at[a][1] if a in at and n > 1 else np.int32(0) for a, n in enumerate(x.shape)]


def _window(x: jax.Array, at: dict[int, tuple[jax.Array, int]]) -> jax.Array:
    """``x``'s block: along each axis ``a`` of ``at``, block ``at[a] = (index, size)`` (a 1-long axis: whole)."""
    return lax.dynamic_slice(x, _starts(x, at), [at[a][1] if a in at and n > 1 else n for a, n in enumerate(x.shape)])


def _add(x: jax.Array, at: dict[int, tuple[jax.Array, int]], update: jax.Array) -> jax.Array:
    return lax.dynamic_update_slice(x, _window(x, at) + update, _starts(x, at))


def _scores(scale, causal, t: _Tiles, q, k, i, j):
    """Pair (i, j)'s logits (B, K, G, qb, kb); a masked one (mask, causality, the keys' padding) is MASKED."""
    s = jnp.einsum("bkgqh,bksh->bkgqs", q, k) * scale
    both = {3: (i, t.qb), 4: (j, t.kb)}
    if t.bias is not None:
        s = s + _window(t.bias, both).astype(s.dtype)
    keys = j * t.kb + jnp.arange(t.kb, dtype=jnp.int32)
    keep = [keys < t.S] if t.k.shape[2] > t.S else []
    if t.mask is not None:
        keep.append(_window(t.mask, both))
    if causal:
        keep.append(keys <= i * t.qb + jnp.arange(t.qb, dtype=jnp.int32)[:, None])
    return jnp.where(functools.reduce(operator.and_, keep), s, MASKED) if keep else s


def _attention_fwd(scale, causal, query, key, value, bias, mask):
    t = _tiled(query, key, value, bias, mask)

    def step(carry, ij):  # the online softmax: rescale query block i's sums by exp(old max − new max)
        i, j = ij
        rows = {3: (i, t.qb)}
        top, total, acc = (_window(x, rows) for x in carry)
        k, v = (_window(x, {2: (j, t.kb)}) for x in (t.k, t.v))
        s = _scores(scale, causal, t, _window(t.q, rows), k, i, j)
        # The running max cancels out of out and lse: a constant, as jax.nn's stop-gradient max. (Differentiated,
        # as in grad-of-grad, max's rule divides by the count of entries equal to it, which rounding can make 0.)
        new = lax.stop_gradient(jnp.maximum(top, jnp.max(s, axis=-1)))
        p = jnp.exp(s - new[..., None])
        shrink = jnp.exp(top - new)
        pv = jnp.einsum("bkgqs,bksh->bkgqh", p, v)
        sums = (new, shrink * total + jnp.sum(p, axis=-1), shrink[..., None] * acc + pv)
        return tuple(lax.dynamic_update_slice(x, y, _starts(x, rows)) for x, y in zip(carry, sums, strict=True)), None

    shape = t.q.shape[:-1]
    start = (jnp.full(shape, MASKED, t.q.dtype), jnp.zeros(shape, t.q.dtype), jnp.zeros_like(t.q))
    (top, total, acc), _ = lax.scan(step, start, _pairs(t.T, t.S, t.qb, t.kb, causal))
    out = acc / total[..., None]  # kept in float32 for 16-bit inputs: the backward's rowsum(dO ⊙ O) needs it
    if mask is not None:  # only a mask hides a row's every key (causality shows each query key 0); jax's softmax of
        # equal logits then spreads it over all S keys, skipped blocks included: the mean of value
        out = jnp.where((top <= MASKED / 2)[..., None], jnp.mean(t.v[:, :, :t.S], axis=2)[:, :, None, None], out)
    return _heads_last(out, t.T).astype(query.dtype), (query, key, value, bias, mask, out, top + jnp.log(total))


def _attention_bwd(scale, causal, res, g):
    query, key, value, bias, mask, out, lse = res
    t = _tiled(query, key, value, bias, mask)
    do = _heads_first(g, t.k.shape[1], t.q.shape[3])
    rows = jnp.sum(do * out, axis=-1)  # rowsum(dO ⊙ O) = Σ_s P·dP: softmax's backward, per row
    # A row with every key masked has lse = MASKED + log(count), which rounds to MASKED. Its logits are all MASKED,
    # so with lse 0 its P is exp(MASKED) = 0 in every block; its uniform 1/S is added to dV below.
    uniform = lse <= MASKED / 2
    lse = jnp.where(uniform, 0.0, lse)

    def step(carry, ij):
        i, j = ij
        dq, dk, dv, db = carry
        rows_at, keys_at = {3: (i, t.qb)}, {2: (j, t.kb)}
        q, do_i, lse_i, rows_i = (_window(x, rows_at) for x in (t.q, do, lse, rows))
        k, v = (_window(x, keys_at) for x in (t.k, t.v))
        p = jnp.exp(_scores(scale, causal, t, q, k, i, j) - lse_i[..., None])  # 0 exactly at a masked logit
        ds = p * (jnp.einsum("bkgqh,bksh->bkgqs", do_i, v) - rows_i[..., None])
        dq = _add(dq, rows_at, scale * jnp.einsum("bkgqs,bksh->bkgqh", ds, k))
        dk = _add(dk, keys_at, scale * jnp.einsum("bkgqs,bkgqh->bksh", ds, q))
        dv = _add(dv, keys_at, jnp.einsum("bkgqs,bkgqh->bksh", p, do_i))
        if db is not None:  # summed over the axes the bias broadcasts
            db = _add(db, {3: (i, t.qb), 4: (j, t.kb)}, _sum_to(ds, db.shape))
        return (dq, dk, dv, db), None

    start = (jnp.zeros_like(t.q), jnp.zeros_like(t.k), jnp.zeros_like(t.v),
             None if t.bias is None else jnp.zeros(t.bias.shape, t.q.dtype))
    (dq, dk, dv, db), _ = lax.scan(step, start, _pairs(t.T, t.S, t.qb, t.kb, causal))
    if mask is not None:
        dv = dv + jnp.sum(jnp.where(uniform[..., None], do, 0.0), axis=(2, 3))[:, :, None] / t.S
    dk, dv = (jnp.swapaxes(x[:, :, :t.S], 1, 2).astype(key.dtype) for x in (dk, dv))
    dbias = None if bias is None else db[:, :, :, :bias.shape[2], :bias.shape[3]].reshape(bias.shape).astype(bias.dtype)
    return _heads_last(dq, t.T).astype(query.dtype), dk, dv, dbias, None


def _sum_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``x`` summed over the axes where ``shape`` is 1 (a broadcast operand's cotangent)."""
    return jnp.sum(x, axis=tuple(i for i, d in enumerate(shape) if d == 1 and x.shape[i] != 1), keepdims=True)


_attention = hand_written(_attention_fwd, _attention_bwd, static=2)
