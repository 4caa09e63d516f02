"""The embedding lookup: a gather forward, a scatter-add backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Int

from pure._checks import as_float_array, at_least_float32
from pure._vjp import hand_written


def embedding(table: Float[ArrayLike, "vocab d"], ids: Int[ArrayLike, "*ids"]) -> Float[Array, "*ids d"]:
    """Rows of ``table`` picked by integer ``ids``: ``table[ids]``.

    .. math:: y_{i} = W_{\\mathrm{ids}_i}, \\qquad dW_v = \\textstyle\\sum_{i:\\ \\mathrm{ids}_i = v} g_i

    An id used several times gets the SUM of its rows' gradients (a scatter-add, accumulated
    in at least float32), a row no id picks gets 0, and ``ids`` gets no cotangent. Saved: ``ids``.

    **Out of range:** on an eager call (concrete ids) an id outside ``[0, vocab)`` raises ValueError;
    NumPy would wrap -1 to the last row. Under ``jit`` the ids are abstract, so such an id gives a
    row of NaN and sends no gradient anywhere, never another row's value.

    Args:
      table: ``(vocab, D)`` float.
      ids: integer array of any shape.

    Returns:
      ``(*ids.shape, D)`` in ``table``'s dtype.

    Example:
      >>> table = jnp.arange(6.0).reshape(3, 2)
      >>> jax.grad(lambda t: embedding(t, jnp.array([2, 0, 2])).sum())(table)
      Array([[1., 1.],
             [0., 0.],
             [2., 2.]], dtype=float32)
    """
    table = as_float_array("embedding", "table", table)
    if table.ndim != 2:
        raise ValueError(f"embedding: expected table of shape (vocab, D), got shape {table.shape} instead")
    if not hasattr(ids, "dtype") or not jnp.issubdtype(ids.dtype, jnp.integer):
        got = getattr(ids, "dtype", type(ids).__name__)
        raise TypeError(f"embedding: expected ids to be an integer array of row indices, got {got} instead")
    ids = jnp.asarray(ids)
    vocab = table.shape[0]
    _check_range(ids, vocab)
    return _embedding(vocab, table, ids)


def _check_range(ids: jax.Array, vocab: int) -> None:
    """On concrete ids, a ValueError naming how many are outside [0, vocab) and the first; abstract ones pass."""
    try:
        values = np.asarray(ids)
    except jax.errors.TracerArrayConversionError:
        return  # abstract under jit/vmap: an out-of-range id gives a NaN row
    bad = np.flatnonzero((values < 0) | (values >= vocab))
    if bad.size:
        i = np.unravel_index(int(bad[0]), values.shape)
        where = f"ids[{', '.join(map(str, i))}]" if i else "ids"
        raise ValueError(f"embedding: {bad.size} of {values.size} ids are outside [0, {vocab}), e.g. "
                         f"{where} = {int(values[i])}")


def _embedding_fwd(vocab, table, ids):
    valid = (ids >= 0) & (ids < vocab)
    rows = table[jnp.where(valid, ids, 0)]
    return jnp.where(valid[..., None], rows, jnp.nan), ids


def _embedding_bwd(vocab, ids, g):
    valid = (ids >= 0) & (ids < vocab)
    total = jnp.zeros((vocab, g.shape[-1]), at_least_float32(g.dtype))
    # An out-of-range id goes to index vocab, which mode="drop" discards (a negative index would wrap around).
    dtable = total.at[jnp.where(valid, ids, vocab)].add(g.astype(total.dtype), mode="drop")
    return dtable.astype(g.dtype), None


_embedding = hand_written(_embedding_fwd, _embedding_bwd, static=1)
