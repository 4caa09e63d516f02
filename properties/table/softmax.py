"""Rows of softmax and log_softmax (pure/softmax.py), with a tie for the max among the special points.

The max is a stop-gradient constant that cancels out of the value, so a tie is no kink: both rows
are smooth everywhere. softmax runs along the last axis, log_softmax (bound) along the first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import pure
import reference
from properties import law
from properties import strategies as hs
from properties.op import Op, bind
from properties.table.examples import array

F32 = np.float32
_ANY = hs.float_arrays(F32).map(lambda x: (x,))


def _tied(rng: np.random.Generator, dtype: Any) -> tuple:
    x = np.round(4 * rng.standard_normal((4, 5))) / 2  # halves: exact in every float dtype
    x[0, 1] = x[0, 3] = x[0].max() + 1.0  # two entries tie for the max of row 0 (and of columns 1 and 3)
    x[2, 1] = x[0, 1]  # and two tie for the max of column 1
    return (array(x, dtype),)


ROWS = (
    Op(name="softmax.softmax", fn=pure.softmax, ref=reference.softmax.softmax, example=_tied, args=_ANY,
       laws=(law.VJP_SUMS_TO_ZERO,)),
    Op(name="softmax.log_softmax", fn=bind(pure.log_softmax, axis=0), ref=bind(reference.softmax.log_softmax, axis=0),
       example=_tied, args=_ANY, laws=(law.VJP_SUMS_TO_ZERO,)),
)
