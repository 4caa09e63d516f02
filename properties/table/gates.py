"""Rows of the gates (pure/gates.py): add distributes, mul switches, max routes to the winner."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

import pure
import reference
from properties import law
from properties import strategies as hs
from properties.op import Op
from properties.table.examples import array, normal

F32 = np.float32
_BIAS_PAIR = st.tuples(hs.float_arrays(F32, hs.SHAPES[0]), hs.float_arrays(F32, hs.SHAPES[0][1:]))
_SEPARATED = st.tuples(hs.float_arrays(F32, hs.SHAPES[0]), hs.away_from_kinks(F32, hs.SHAPES[0])).map(
    lambda xd: (xd[0], xd[0] + xd[1]))  # |x − y| ≥ 0.1 everywhere: no ties


def _tied(rng: np.random.Generator, dtype: Any) -> tuple:
    x, y = rng.standard_normal((4, 3)), rng.standard_normal(3)
    x[1, 2] = y[2]  # an exact tie, broadcast against a row
    return array(x, dtype), array(y, dtype)


ROWS = (
    Op(name="gates.add", fn=pure.add, ref=reference.gates.add,
       example=lambda r, d: (normal(r, d, 4, 3), normal(r, d, 3)), args=_BIAS_PAIR,
       laws=(law.gate_routing("add"),)),
    Op(name="gates.mul", fn=pure.mul, ref=reference.gates.mul,
       example=lambda r, d: (normal(r, d, 4, 3), normal(r, d, 4, 1)), args=_BIAS_PAIR,
       laws=(law.gate_routing("mul"),)),
    Op(name="gates.maximum", fn=pure.maximum, ref=reference.gates.maximum,
       example=_tied, args=hs.tied_pairs(F32), smooth=_SEPARATED,
       laws=(law.gate_routing("max", ties="x", pairs=hs.tied_pairs(F32)),)),
)
