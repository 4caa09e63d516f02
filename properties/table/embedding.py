"""The row of embedding (pure/embedding.py), with repeated ids and an unused row among the special points."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pure
import reference
from properties import law
from properties import strategies as hs
from properties.op import Op
from properties.table.examples import array, normal

F32 = np.float32
VOCAB, D = 5, 3


def _args(rng: np.random.Generator, dtype: Any) -> tuple:
    ids = np.array([[1, 3, 1, 0], [4, 1, 1, 0]])  # id 1 four times, 0 twice; row 2 unused (gradient 0)
    return normal(rng, dtype, VOCAB, D), array(ids, np.int32)


_IDS = hnp.arrays(np.int32, (2, 4), elements=st.integers(0, VOCAB - 1)).map(jax.device_put)

ROWS = (
    Op(name="embedding.embedding", fn=pure.embedding, ref=reference.embedding.embedding, example=_args,
       args=st.tuples(hs.float_arrays(F32, (VOCAB, D)), _IDS), laws=(law.EMBEDDING_GRADIENT_IS_A_SCATTER_SUM,)),
)
