"""Rows of the network (pure/nn.py): the MLP's loss, backprop through every layer at once."""

from __future__ import annotations

from typing import Any

import numpy as np

import pure.nn
import reference
from properties import law
from properties import strategies as hs
from properties.op import Op, bind
from properties.table.examples import labels, normal

F32 = np.float32
_SETTINGS = {"l2": 0.01, "activation": "tanh"}


def _mlp_args(rng: np.random.Generator, dtype: Any) -> tuple:
    sizes = (4, 6, 5, 3)
    params = [{"W": normal(rng, dtype, m, n, scale=0.5), "b": normal(rng, dtype, n, scale=0.1)}
              for m, n in zip(sizes[:-1], sizes[1:], strict=True)]
    return params, normal(rng, dtype, 5, sizes[0]), labels(rng, 5, sizes[-1])


ROWS = (
    Op(name="nn.classification_loss", fn=bind(pure.nn.classification_loss, **_SETTINGS),
       ref=bind(reference.nn.classification_loss, **_SETTINGS), example=_mlp_args, args=hs.mlp_batches(F32),
       laws=(law.MLP_CHAIN_RULE, law.SUM_OVER_SAMPLES)),
)
