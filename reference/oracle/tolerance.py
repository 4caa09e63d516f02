"""handgrad's one tolerance policy: how close a VJP must be, by the precision it is computed in.

Used by :func:`reference.check_vjp`, :func:`reference.check_transforms` and the laws of
:mod:`properties.laws`. Two kinds of closeness are different questions and get different numbers:

* ``rtol``: a VJP against the truth (the same rule in float64, or finite differences of the
  function). A correct float32 rule is within 1e-4 of it; one that silently goes through
  bfloat16 (2⁻⁸ ≈ 4e-3 relative per operation) is not.
* ``agree``: two evaluations of the same VJP in the same precision (eager and under vmap, the
  two sides of a law). They differ only by the order XLA rounds in, a few units of round-off.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Precision:
    """What the oracle expects of a computation in one floating-point format."""

    name: str
    key: int  # 64, 32, 16 (float16) or 8 (bfloat16): the rows of PRECISIONS
    eps: float  # machine epsilon, the spacing of floats at 1
    tiny: float  # the smallest normal number: below it a value may be flushed to zero (XLA on CPU does)
    rtol: float  # a VJP against the truth
    agree: float  # two evaluations of the same VJP in this precision
    step: float  # the first finite-difference step, relative to each entry
    levels: int  # how many steps (each a quarter of the one before) the differences may try
    # A passing entry's tolerance over its own scale, at most: past it the differences cannot tell the entry from
    # an error of its own size, and it is unchecked (a 16-bit function's differences resolve a few percent at best).
    loosest: float = 0.25

    @property
    def sixteen_bit(self) -> bool:
        """float16 or bfloat16: differences in it resolve a few percent at best, so they make no proof."""
        return self.key < 32

    @property
    def ulps(self) -> float:
        """rtol in units of eps: how many roundings a correct rule may accumulate."""
        return self.rtol / self.eps


# The first step is about eps^(1/4): where Richardson's h⁴ truncation and the round-off eps/h balance for a
# function whose length scale is |x|. The levels below it reach steps 4^(levels-1) times smaller, for
# functions that vary faster than |x| suggests (sin at 10⁶: 1e-4·10⁶/4⁷ = 6e-3); float32 has room for fewer.
# A 16-bit function's outputs are rounded to 2⁻⁸ or so, which only steps of about eps^(1/3) ≈ 0.2 rise above
# (at 0.05 the round-off bound of tanh in bfloat16 was 100% of its derivative).
FLOAT64 = Precision("float64", 64, 2.0**-52, 2.0**-1022, rtol=1e-7, agree=1e-9, step=1e-4, levels=8)
FLOAT32 = Precision("float32", 32, 2.0**-23, 2.0**-126, rtol=1e-4, agree=2e-5, step=1e-2, levels=5)
FLOAT16 = Precision("float16", 16, 2.0**-10, 2.0**-14, rtol=4e-3, agree=4e-3, step=0.2, levels=3, loosest=1.0)
BFLOAT16 = Precision("bfloat16", 8, 2.0**-7, 2.0**-126, rtol=3e-2, agree=3e-2, step=0.2, levels=3, loosest=1.0)
PRECISIONS: dict[int, Precision] = {p.key: p for p in (FLOAT64, FLOAT32, FLOAT16, BFLOAT16)}


# A leaf narrower than the computation it feeds (bfloat16 weights cast to float32 inside): its VJP is the
# computation's, rounded to the leaf's dtype where it leaves it, and once more where two uses of the leaf meet.
LEAF_ROUNDINGS = 2


def rounded_to_leaf(computed: Precision, leaf: Precision, roundings: int = LEAF_ROUNDINGS) -> float:
    """The rtol of a VJP computed in ``computed`` and rounded to a narrower ``leaf``: the computation's, plus
    ``roundings`` roundings of half an ulp of the leaf (bfloat16 under float32: 7.9e-3, where bfloat16's own rtol,
    for a computation in bfloat16, is 3e-2)."""
    return computed.rtol + roundings * leaf.eps / 2


def of_dtype(dtype: Any) -> Precision:
    """The precision of a float or complex dtype (a complex one by its parts)."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        dtype = jnp.finfo(dtype).dtype
    info = jax.dtypes.finfo(dtype)
    return FLOAT64 if info.bits >= 64 else FLOAT32 if info.bits >= 32 else FLOAT16 if info.nmant >= 10 else BFLOAT16


def of_mantissa(bits: int) -> Precision:
    """The precision with ``bits`` mantissa bits (52, 23, 10, 7), or the next narrower one we know."""
    return FLOAT64 if bits >= 52 else FLOAT32 if bits >= 23 else FLOAT16 if bits >= 10 else BFLOAT16


def narrowest(values: Any) -> Precision:
    """The least precise of the float and complex leaves of a pytree (float64 if there are none)."""
    found = [of_dtype(jnp.result_type(x)) for x in jax.tree_util.tree_leaves(values)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return min(found, key=lambda p: p.key, default=FLOAT64)


def agree(a: Any, b: Any, rtol: float, floor: float = 0.0) -> np.ndarray:
    """Entry by entry, whether ``|a − b| ≤ rtol·(|b| + max(max|b|, floor))``: two evaluations of one
    quantity agree to ``rtol`` of the larger of the entry and the leaf's largest finite entry. Equal
    values agree (the same inf too), and so do two NaNs; a NaN against a number never does."""
    a, b = np.asarray(a).astype(np.complex128), np.asarray(b).astype(np.complex128)
    finite = np.abs(b[np.isfinite(b)])
    scale = np.abs(b) + max(float(np.max(finite, initial=0.0)), floor)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= rtol * scale
    return close | (a == b) | (np.isnan(a) & np.isnan(b))
