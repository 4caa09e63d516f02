"""Rows of the activations (pure/activations.py): elementwise, so each is chained after an affine layer.

gelu's row is the tanh form (jax's default); the exact form is checked in tests/test_transformer_ops.py.
"""

from __future__ import annotations

import numpy as np

import pure
import reference
from properties import law
from properties import strategies as hs
from properties.op import Op, bind
from properties.table.examples import normal, with_zeros

F32 = np.float32
_ANY = hs.float_arrays(F32).map(lambda x: (x,))
_AWAY_FROM_0 = hs.away_from_kinks(F32, margin=0.1).map(lambda x: (x,))
_ON_0 = hs.with_exact_zeros(F32).map(lambda x: (x,))
_LAWS = (law.CHAIN_RULE, law.BACKWARD_RECURSION)

ROWS = (
    Op(name="activations.sigmoid", fn=pure.sigmoid, ref=reference.activations.sigmoid,
       example=lambda r, d: (normal(r, d, 4, 3, scale=3.0),), args=_ANY, laws=_LAWS),
    Op(name="activations.tanh", fn=pure.tanh, ref=reference.activations.tanh,
       example=lambda r, d: (normal(r, d, 4, 3, scale=2.0),), args=_ANY, laws=_LAWS),
    Op(name="activations.relu", fn=pure.relu, ref=reference.activations.relu,
       example=with_zeros, args=_ON_0, smooth=_AWAY_FROM_0, laws=_LAWS),
    Op(name="activations.leaky_relu", fn=bind(pure.leaky_relu, negative_slope=0.1),
       ref=bind(reference.activations.leaky_relu, negative_slope=0.1),
       example=with_zeros, args=_ON_0, smooth=_AWAY_FROM_0, laws=_LAWS),
    Op(name="activations.gelu", fn=pure.gelu, ref=reference.activations.gelu,
       example=lambda r, d: (normal(r, d, 4, 3, scale=2.0),), args=_ANY, laws=_LAWS),
)
