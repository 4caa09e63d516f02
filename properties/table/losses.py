"""Rows of the losses (pure/losses.py), with the hinge's margin hit exactly among the special points."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

import pure
import reference
from properties import law
from properties import strategies as hs
from properties.op import Op
from properties.table.examples import array, labels, normal

F32 = np.float32
_PAIR_6x2 = st.tuples(hs.float_arrays(F32, (6, 2)), hs.float_arrays(F32, (6, 2)))
_PROBABILITIES = st.tuples(hs.float_arrays(F32, (6, 2)), hs.float_arrays(F32, (6, 2), max_magnitude=1.0).map(abs))


def _hinge_args(rng: np.random.Generator, dtype: Any) -> tuple:
    s = np.round(2 * rng.standard_normal((4, 5))) / 2  # halves: exact in every float dtype
    y = rng.integers(0, 5, 4)
    s[0, (y[0] + 1) % 5] = s[0, y[0]] - 1.0  # s_j − s_y + 1 = 0: the margin hit exactly
    return array(s, dtype), array(y, np.int32)


def _hinge_is_smooth(batch: tuple) -> bool:
    scores, y = (np.asarray(a) for a in batch)
    slack = scores - scores[np.arange(len(y)), y][:, None] + 1.0
    slack[np.arange(len(y)), y] = 1.0
    return bool(np.all(np.abs(slack) > 1e-2))


ROWS = (
    Op(name="losses.mse", fn=pure.mse, ref=reference.losses.mse,
       example=lambda r, d: (normal(r, d, 4, 3), normal(r, d, 4, 3)), args=_PAIR_6x2),
    Op(name="losses.softmax_cross_entropy", fn=pure.softmax_cross_entropy,
       ref=reference.losses.softmax_cross_entropy,
       example=lambda r, d: (normal(r, d, 4, 5, scale=2.0), labels(r, 4, 5)), args=hs.classification_batches(F32),
       laws=(law.SOFTMAX_SHIFT_INVARIANCE, law.GRADIENT_ROWS_SUM_TO_ZERO)),
    Op(name="losses.multiclass_hinge", fn=pure.multiclass_hinge, ref=reference.losses.multiclass_hinge,
       example=_hinge_args, args=hs.hinge_margin_hits(F32),
       smooth=hs.classification_batches(F32).filter(_hinge_is_smooth), laws=(law.GRADIENT_ROWS_SUM_TO_ZERO,)),
    Op(name="losses.binary_cross_entropy", fn=pure.binary_cross_entropy,
       ref=reference.losses.binary_cross_entropy,
       example=lambda r, d: (normal(r, d, 4, 3, scale=2.0), array(r.uniform(size=(4, 3)), d)), args=_PROBABILITIES),
)
