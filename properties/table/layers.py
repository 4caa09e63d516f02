"""Rows of the layers (pure/layers.py): the affine map and dropout."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import pure
import reference
from properties import law
from properties import strategies as hs
from properties.op import Op, bind
from properties.table.examples import normal, raw_key

F32 = np.float32

ROWS = (
    Op(name="layers.affine", fn=pure.affine, ref=reference.layers.affine,
       example=lambda r, d: (normal(r, d, 4, 5), normal(r, d, 5, 3), normal(r, d, 3)), args=hs.affine_inputs(F32),
       laws=(law.MATRIX_CALCULUS,)),
    Op(name="layers.dropout", fn=bind(pure.dropout, rate=0.5), ref=bind(reference.layers.dropout, rate=0.5),
       example=lambda r, d: (normal(r, d, 4, 3), raw_key(r)), args=st.tuples(hs.float_arrays(F32), hs.prng_keys()),
       laws=(law.DROPOUT_MASK_CONSISTENCY, law.DROPOUT_IS_UNBIASED, law.DROPOUT_DETERMINISTIC_IDENTITY)),
)
