"""Rows of the penalties and the max-norm projection (pure/regularizers.py).

The weight-decay equivalences hold pure.optim.sgd and l2_penalty together and need no row:
they are :data:`properties.law.OPTIMIZER_LAWS`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from hypothesis import strategies as st

import pure
import reference
from properties import strategies as hs
from properties.op import Op, bind
from properties.table.examples import array, normal

F32 = np.float32
_BIAS_FREE = {"W": True, "b": False}
_PARAMS = hs.mlp_params(F32, (3, 4)).map(lambda p: p[0])  # one layer {"W": (3, 4), "b": (4,)}
_STRENGTH = hs.positive_floats(0.01, 1.0).map(lambda s: jax.device_put(np.asarray(s, F32)))


def _params(rng: np.random.Generator, dtype: Any) -> dict:
    return {"W": normal(rng, dtype, 3, 2), "b": normal(rng, dtype, 2)}


def _max_norm_args(rng: np.random.Generator, dtype: Any) -> tuple:
    W = rng.standard_normal((3, 4))
    W[:, 0] *= 3.0  # well over the bound
    W[:, 1] = 0.0  # an all-zero column: no NaN
    W[:, 2] *= 0.1  # well under it
    return ({"W": array(W, dtype), "b": normal(rng, dtype, 4)},)


def _max_norm_is_smooth(params: dict) -> bool:
    return all(abs(float(n) - 1.5) > 1e-2 for n in np.linalg.norm(np.asarray(params["W"]), axis=0))


ROWS = (
    Op(name="regularizers.l2_penalty", fn=bind(pure.l2_penalty, mask=_BIAS_FREE),
       ref=bind(reference.regularizers.l2_penalty, mask=_BIAS_FREE),
       example=lambda r, d: (_params(r, d), array(0.3, d)), args=st.tuples(_PARAMS, _STRENGTH)),
    Op(name="regularizers.l1_penalty", fn=pure.l1_penalty, ref=reference.regularizers.l1_penalty,
       example=lambda r, d: (_params(r, d) | {"z": array(np.zeros(2), d)}, array(0.3, d)),
       args=st.tuples(hs.with_exact_zeros(F32).map(lambda w: [w]), _STRENGTH),
       smooth=st.tuples(hs.away_from_kinks(F32).map(lambda w: [w]), _STRENGTH)),
    Op(name="regularizers.max_norm", fn=bind(pure.max_norm, max_value=1.5),
       ref=bind(reference.regularizers.max_norm, max_value=1.5), example=_max_norm_args,
       args=_PARAMS.map(lambda p: (p,)), smooth=_PARAMS.filter(_max_norm_is_smooth).map(lambda p: (p,))),
)
