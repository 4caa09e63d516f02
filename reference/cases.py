"""One table of op cases: each pure op beside its reference and inputs from its domain.

``handgrad verify`` and the parametrised tests both read this table, so a new op is
checked everywhere once it has a row. Inputs deliberately include the special points
(exact zeros for relu/leaky_relu/l1, a tie for maximum, a hinge margin hit exactly,
an all-zero column for max_norm) so the kink conventions are exercised, not dodged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import pure
import pure.nn
from reference import activations, gates, layers, losses, nn, regularizers


@dataclasses.dataclass(frozen=True)
class Case:
    """``fn(*make(rng, dtype))`` against ``ref(*same args)``."""

    name: str
    fn: Callable
    ref: Callable
    make: Callable[[np.random.Generator, Any], tuple]


def _array(x: Any, dtype: Any) -> jax.Array:
    return jax.device_put(np.asarray(x).astype(dtype))  # cast in numpy and transfer: nothing to compile


def _normal(rng: np.random.Generator, dtype: Any, *shape: int, scale: float = 1.0) -> jax.Array:
    return _array(scale * rng.standard_normal(shape), dtype)


def _with_zeros(rng: np.random.Generator, dtype: Any) -> tuple:
    x = np.asarray(rng.standard_normal((4, 3)))
    x[0, 0] = x[2, 1] = 0.0  # exactly on the kink
    return (_array(x, dtype),)


def _tied(rng: np.random.Generator, dtype: Any) -> tuple:
    x, y = np.asarray(rng.standard_normal((4, 3))), np.asarray(rng.standard_normal(3))
    x[1, 2] = y[2]  # an exact tie, broadcast against a row
    return _array(x, dtype), _array(y, dtype)


def _raw_key(rng: np.random.Generator) -> jax.Array:
    """A raw uint32 PRNGKey (stackable by numpy); typed keys are tested in tests/."""
    return jax.device_put(rng.integers(0, 2**32, 2, dtype=np.uint32))


def _labels(rng: np.random.Generator, n: int, c: int) -> jax.Array:
    return _array(rng.integers(0, c, n), np.int32)


def _hinge_args(rng: np.random.Generator, dtype: Any) -> tuple:
    s = np.round(2 * rng.standard_normal((4, 5))) / 2  # halves: exact in every float dtype
    y = rng.integers(0, 5, 4)
    s[0, (y[0] + 1) % 5] = s[0, y[0]] - 1.0  # s_j − s_y + 1 = 0: the margin hit exactly
    return _array(s, dtype), _array(y, np.int32)


def _params(rng: np.random.Generator, dtype: Any) -> dict:
    return {"W": _normal(rng, dtype, 3, 2), "b": _normal(rng, dtype, 2)}


def _max_norm_args(rng: np.random.Generator, dtype: Any) -> tuple:
    W = np.asarray(rng.standard_normal((3, 4)))
    W[:, 0] *= 3.0  # well over the bound
    W[:, 1] = 0.0  # an all-zero column: no NaN
    W[:, 2] *= 0.1  # well under it
    return ({"W": _array(W, dtype), "b": _normal(rng, dtype, 4)},)


def _mlp_args(rng: np.random.Generator, dtype: Any) -> tuple:
    sizes = (4, 6, 5, 3)
    params = [{"W": _normal(rng, dtype, m, n, scale=0.5), "b": _normal(rng, dtype, n, scale=0.1)}
              for m, n in zip(sizes[:-1], sizes[1:], strict=True)]
    return params, _normal(rng, dtype, 5, sizes[0]), _labels(rng, 5, sizes[-1])


_BIAS_FREE = {"W": True, "b": False}
_MLP = dict(l2=0.01, activation="tanh")

CASES: tuple[Case, ...] = (
    Case("gates.add", pure.add, gates.add,
         lambda r, d: (_normal(r, d, 4, 3), _normal(r, d, 3))),
    Case("gates.mul", pure.mul, gates.mul,
         lambda r, d: (_normal(r, d, 4, 3), _normal(r, d, 4, 1))),
    Case("gates.maximum", pure.maximum, gates.maximum, _tied),
    Case("activations.sigmoid", pure.sigmoid, activations.sigmoid,
         lambda r, d: (_normal(r, d, 4, 3, scale=3.0),)),
    Case("activations.tanh", pure.tanh, activations.tanh,
         lambda r, d: (_normal(r, d, 4, 3, scale=2.0),)),
    Case("activations.relu", pure.relu, activations.relu, _with_zeros),
    Case("activations.leaky_relu", lambda x: pure.leaky_relu(x, 0.1),
         lambda x: activations.leaky_relu(x, 0.1), _with_zeros),
    Case("layers.affine", pure.affine, layers.affine,
         lambda r, d: (_normal(r, d, 4, 5), _normal(r, d, 5, 3), _normal(r, d, 3))),
    Case("layers.dropout", lambda x, k: pure.dropout(x, k, 0.5), lambda x, k: layers.dropout(x, k, 0.5),
         lambda r, d: (_normal(r, d, 4, 3), _raw_key(r))),
    Case("losses.mse", pure.mse, losses.mse,
         lambda r, d: (_normal(r, d, 4, 3), _normal(r, d, 4, 3))),
    Case("losses.softmax_cross_entropy", pure.softmax_cross_entropy, losses.softmax_cross_entropy,
         lambda r, d: (_normal(r, d, 4, 5, scale=2.0), _labels(r, 4, 5))),
    Case("losses.multiclass_hinge", pure.multiclass_hinge, losses.multiclass_hinge, _hinge_args),
    Case("losses.binary_cross_entropy", pure.binary_cross_entropy, losses.binary_cross_entropy,
         lambda r, d: (_normal(r, d, 4, 3, scale=2.0), _array(r.uniform(size=(4, 3)), d))),
    Case("regularizers.l2_penalty", lambda p, s: pure.l2_penalty(p, s, mask=_BIAS_FREE),
         lambda p, s: regularizers.l2_penalty(p, s, mask=_BIAS_FREE),
         lambda r, d: (_params(r, d), _array(0.3, d))),
    Case("regularizers.l1_penalty", pure.l1_penalty, regularizers.l1_penalty,
         lambda r, d: (_params(r, d) | {"z": _array(np.zeros(2), d)}, _array(0.3, d))),
    Case("regularizers.max_norm", lambda p: pure.max_norm(p, 1.5), lambda p: regularizers.max_norm(p, 1.5),
         _max_norm_args),
    Case("nn.classification_loss", lambda p, x, y: pure.nn.classification_loss(p, x, y, **_MLP),
         lambda p, x, y: nn.classification_loss(p, x, y, **_MLP), _mlp_args),
)
