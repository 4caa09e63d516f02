"""The op table: one row per pure op, read by ``handgrad verify``, the property suite and the tests.

A row holds the op (with its settings bound), its independent reference, concrete example
inputs that sit ON the special points (exact zeros for relu/leaky_relu/l1, a tie for maximum,
a hinge margin hit exactly, an all-zero column for max_norm), Hypothesis strategies for the
op's whole domain and for inputs a margin away from every kink, and the laws of backprop
that fit it beyond the ones every op obeys. Adding an op is adding a row (see the README).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from hypothesis import strategies as st

import pure
import reference
from properties import strategies as hs

F32 = np.float32


@dataclasses.dataclass(frozen=True, eq=False)
class Op:
    """One pure op and everything the checkers need to know about it."""

    name: str  # "module.op", as in pure/ and reference/
    fn: Callable  # the pure op, its settings bound
    ref: Callable  # the same function in plain jax.numpy / jax.nn / optax, differentiated by JAX
    example: Callable[[np.random.Generator, Any], tuple]  # (rng, dtype) -> arguments, special points included
    args: st.SearchStrategy  # argument tuples from the whole domain, kinks included
    smooth: st.SearchStrategy | None = None  # argument tuples a margin from every kink (None: args is smooth)
    laws: tuple[str, ...] = ()  # the op-specific laws of properties.suite that fit it
    second_order: str | None = None  # None: its backward is differentiable (verify checks order 2); else why not

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def smooth_args(self) -> st.SearchStrategy:
        return self.args if self.smooth is None else self.smooth


def bind(op: Callable, **settings: Any) -> Callable:
    """``op`` with keyword settings fixed, named after it (the name shows in reports)."""
    bound = functools.partial(op, **settings)
    bound.__name__ = bound.__qualname__ = f"{op.__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"
    return bound


# ---------------------------------------------------------------- example inputs (numpy, then one transfer)
def _array(x: Any, dtype: Any) -> jax.Array:
    return jax.device_put(np.asarray(x).astype(dtype))  # cast in numpy and transfer: nothing to compile


def _normal(rng: np.random.Generator, dtype: Any, *shape: int, scale: float = 1.0) -> jax.Array:
    return _array(scale * rng.standard_normal(shape), dtype)


def _with_zeros(rng: np.random.Generator, dtype: Any) -> tuple:
    x = rng.standard_normal((4, 3))
    x[0, 0] = x[2, 1] = 0.0  # exactly on the kink
    return (_array(x, dtype),)


def _tied(rng: np.random.Generator, dtype: Any) -> tuple:
    x, y = rng.standard_normal((4, 3)), rng.standard_normal(3)
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
    W = rng.standard_normal((3, 4))
    W[:, 0] *= 3.0  # well over the bound
    W[:, 1] = 0.0  # an all-zero column: no NaN
    W[:, 2] *= 0.1  # well under it
    return ({"W": _array(W, dtype), "b": _normal(rng, dtype, 4)},)


def _mlp_args(rng: np.random.Generator, dtype: Any) -> tuple:
    sizes = (4, 6, 5, 3)
    params = [{"W": _normal(rng, dtype, m, n, scale=0.5), "b": _normal(rng, dtype, n, scale=0.1)}
              for m, n in zip(sizes[:-1], sizes[1:], strict=True)]
    return params, _normal(rng, dtype, 5, sizes[0]), _labels(rng, 5, sizes[-1])


# ---------------------------------------------------------------- strategies (fixed shape buckets)
def _unary(margin: float = 0.0) -> st.SearchStrategy:
    return (hs.away_from_kinks(F32, margin=margin) if margin else hs.float_arrays(F32)).map(lambda x: (x,))


def _hinge_is_smooth(batch: tuple) -> bool:
    scores, labels = (np.asarray(a) for a in batch)
    slack = scores - scores[np.arange(len(labels)), labels][:, None] + 1.0
    slack[np.arange(len(labels)), labels] = 1.0
    return bool(np.all(np.abs(slack) > 1e-2))


def _max_norm_is_smooth(params: list) -> bool:
    return all(abs(float(n) - 1.5) > 1e-2 for layer in params for n in np.linalg.norm(np.asarray(layer["W"]), axis=0))


_ZEROS = hs.with_exact_zeros(F32).map(lambda x: (x,))
_BIAS_PAIR = st.tuples(hs.float_arrays(F32, hs.SHAPES[0]), hs.float_arrays(F32, hs.SHAPES[0][1:]))
_SEPARATED = st.tuples(hs.float_arrays(F32, hs.SHAPES[0]), hs.away_from_kinks(F32, hs.SHAPES[0])).map(
    lambda xd: (xd[0], xd[0] + xd[1]))  # |x − y| ≥ 0.1 everywhere: no ties
_AFFINE = st.tuples(hs.float_arrays(F32, (6, 4)), hs.float_arrays(F32, (4, 3)), hs.float_arrays(F32, (3,)))
_PAIR_6x2 = st.tuples(hs.float_arrays(F32, (6, 2)), hs.float_arrays(F32, (6, 2)))
_PROBABILITIES = st.tuples(hs.float_arrays(F32, (6, 2)), hs.float_arrays(F32, (6, 2), max_magnitude=1.0).map(abs))
_STRENGTH = hs.positive_floats(0.01, 1.0).map(lambda s: jax.device_put(np.asarray(s, F32)))
_PARAMS = hs.mlp_params(F32, (3, 4))
_MLP = st.tuples(hs.mlp_params(F32), hs.float_arrays(F32, (hs.BATCH[0], hs.MLP_SIZES[0])), hs.labels(num_classes=3))

_BIAS_FREE = {"W": True, "b": False}
_MLP_SETTINGS = {"l2": 0.01, "activation": "tanh"}

OPS: tuple[Op, ...] = (
    Op("gates.add", pure.add, reference.gates.add, lambda r, d: (_normal(r, d, 4, 3), _normal(r, d, 3)),
       _BIAS_PAIR, laws=("gate_routing",)),
    Op("gates.mul", pure.mul, reference.gates.mul, lambda r, d: (_normal(r, d, 4, 3), _normal(r, d, 4, 1)),
       _BIAS_PAIR, laws=("gate_routing",)),
    Op("gates.maximum", pure.maximum, reference.gates.maximum, _tied, hs.tied_pairs(F32), _SEPARATED,
       laws=("gate_routing",)),
    Op("activations.sigmoid", pure.sigmoid, reference.activations.sigmoid,
       lambda r, d: (_normal(r, d, 4, 3, scale=3.0),), _unary(), laws=("chain_rule", "backward_recursion")),
    Op("activations.tanh", pure.tanh, reference.activations.tanh,
       lambda r, d: (_normal(r, d, 4, 3, scale=2.0),), _unary(), laws=("chain_rule", "backward_recursion")),
    Op("activations.relu", pure.relu, reference.activations.relu, _with_zeros, _ZEROS, _unary(0.1),
       laws=("chain_rule", "backward_recursion")),
    Op("activations.leaky_relu", bind(pure.leaky_relu, negative_slope=0.1),
       bind(reference.activations.leaky_relu, negative_slope=0.1), _with_zeros, _ZEROS, _unary(0.1),
       laws=("chain_rule", "backward_recursion")),
    Op("layers.affine", pure.affine, reference.layers.affine,
       lambda r, d: (_normal(r, d, 4, 5), _normal(r, d, 5, 3), _normal(r, d, 3)), _AFFINE,
       laws=("matrix_calculus",)),
    Op("layers.dropout", bind(pure.dropout, rate=0.5), bind(reference.layers.dropout, rate=0.5),
       lambda r, d: (_normal(r, d, 4, 3), _raw_key(r)), st.tuples(hs.float_arrays(F32), hs.prng_keys()),
       laws=("dropout_mask_consistency", "dropout_is_unbiased", "dropout_deterministic_identity")),
    Op("losses.mse", pure.mse, reference.losses.mse, lambda r, d: (_normal(r, d, 4, 3), _normal(r, d, 4, 3)),
       _PAIR_6x2),
    Op("losses.softmax_cross_entropy", pure.softmax_cross_entropy, reference.losses.softmax_cross_entropy,
       lambda r, d: (_normal(r, d, 4, 5, scale=2.0), _labels(r, 4, 5)), hs.classification_batches(F32),
       laws=("softmax_shift_invariance", "gradient_rows_sum_to_zero")),
    Op("losses.multiclass_hinge", pure.multiclass_hinge, reference.losses.multiclass_hinge, _hinge_args,
       hs.hinge_margin_hits(F32), hs.classification_batches(F32).filter(_hinge_is_smooth),
       laws=("gradient_rows_sum_to_zero",)),
    Op("losses.binary_cross_entropy", pure.binary_cross_entropy, reference.losses.binary_cross_entropy,
       lambda r, d: (_normal(r, d, 4, 3, scale=2.0), _array(r.uniform(size=(4, 3)), d)), _PROBABILITIES),
    Op("regularizers.l2_penalty", bind(pure.l2_penalty, mask=_BIAS_FREE),
       bind(reference.regularizers.l2_penalty, mask=_BIAS_FREE),
       lambda r, d: (_params(r, d), _array(0.3, d)), st.tuples(_PARAMS.map(lambda p: p[0]), _STRENGTH),
       laws=("weight_decay_equivalence", "decay_non_equivalence", "cs231n_reg_is_twice_weight_decay")),
    Op("regularizers.l1_penalty", pure.l1_penalty, reference.regularizers.l1_penalty,
       lambda r, d: (_params(r, d) | {"z": _array(np.zeros(2), d)}, _array(0.3, d)),
       st.tuples(hs.with_exact_zeros(F32).map(lambda w: [w]), _STRENGTH),
       st.tuples(hs.away_from_kinks(F32).map(lambda w: [w]), _STRENGTH)),
    Op("regularizers.max_norm", bind(pure.max_norm, max_value=1.5),
       bind(reference.regularizers.max_norm, max_value=1.5), _max_norm_args,
       _PARAMS.map(lambda p: (p,)), _PARAMS.filter(_max_norm_is_smooth).map(lambda p: (p,))),
    Op("nn.classification_loss", bind(pure.nn.classification_loss, **_MLP_SETTINGS),
       bind(reference.nn.classification_loss, **_MLP_SETTINGS), _mlp_args, _MLP,
       laws=("mlp_chain_rule", "sum_over_samples")),
)

BY_NAME: dict[str, Op] = {op.name: op for op in OPS}
