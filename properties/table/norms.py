"""Rows of layer_norm and rms_norm (pure/norms.py), with a row that has nothing to normalise.

The special points: a constant row for layer_norm (variance 0, so r = 1/√ε) and an all-zero row
for rms_norm (mean square 0). Both are smooth there, with ε keeping the slope finite.
"""

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
D = 6
_X, _P = hs.float_arrays(F32, (4, D)), hs.float_arrays(F32, (D,))


def _layer_norm_args(rng: np.random.Generator, dtype: Any) -> tuple:
    x = rng.standard_normal((4, D))
    x[1] = 0.5  # variance 0
    return array(x, dtype), normal(rng, dtype, D), normal(rng, dtype, D)


def _rms_norm_args(rng: np.random.Generator, dtype: Any) -> tuple:
    x = rng.standard_normal((4, D))
    x[2] = 0.0  # mean square 0
    return array(x, dtype), normal(rng, dtype, D)


ROWS = (
    Op(name="norms.layer_norm", fn=pure.layer_norm, ref=reference.norms.layer_norm, example=_layer_norm_args,
       args=st.tuples(_X, _P, _P), laws=(law.VJP_SUMS_TO_ZERO,)),
    Op(name="norms.rms_norm", fn=pure.rms_norm, ref=reference.norms.rms_norm, example=_rms_norm_args,
       args=st.tuples(_X, _P)),
)
