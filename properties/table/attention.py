"""The row of attention (pure/attention.py): grouped-query, causal, with a bias and a mask at once.

One row, since a row's name is its op's: two query heads read one key/value head, ``is_causal`` is
bound, the bias is per head (so it gets a full cotangent) and the mask hides keys at random. The
example's special point is query 0 with every key masked (causality leaves it key 0 alone, and the
mask takes that too): it attends uniformly to all keys, jax's convention. The property suite draws
the same shapes; tests/test_transformer_ops.py covers the other settings against jax.nn.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pure
import reference
from properties import strategies as hs
from properties.op import Op, bind
from properties.table.examples import array, normal

F32 = np.float32
B, T, S, N, K, H = 1, 6, 7, 2, 1, 4
SHAPES = ((B, T, N, H), (B, S, K, H), (B, S, K, H), (1, N, T, S))
MASK = (B, 1, T, S)


def _args(rng: np.random.Generator, dtype: Any) -> tuple:
    mask = rng.uniform(size=MASK) < 0.8
    mask[0, 0, 0, 0] = False  # query 0 sees no key: the fully masked row
    return (*(normal(rng, dtype, *shape) for shape in SHAPES), array(mask, np.bool_))


_DRAWN = st.tuples(*(hs.float_arrays(F32, shape, max_magnitude=2.0) for shape in SHAPES),
                   hnp.arrays(np.bool_, MASK).map(jax.device_put))

ROWS = (
    Op(name="attention.attention", fn=bind(pure.attention, is_causal=True),
       ref=bind(reference.attention.attention, is_causal=True), example=_args, args=_DRAWN),
)
