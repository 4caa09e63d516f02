"""The laws of backprop as objects: each draws its inputs for an op row and holds that row's op to the law.

A :class:`Law` is named in the rows it fits (``Op(..., laws=(GATE_ROUTING_ADD,))``) or, when
universal, fits every row (:data:`UNIVERSAL`). Its ``draw(op, data)`` picks inputs for the row
(from the row's own strategies where the law is about the op's domain) and its ``check(op,
inputs)`` calls the law function of :mod:`properties.laws` on the row's op, ``op.fn``, never on a
fixed one, so a row pointed at another op tests that op. ``meant_for`` says which rows a law is
for, by name prefix; the tests hold the table to it. Laws about optimizers need no op: they are
:class:`OptimizerLaw` objects in :data:`OPTIMIZER_LAWS`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import pure
import pure.nn
import pure.optim
import reference.gates
import reference.regularizers
from properties import laws
from properties import strategies as hs
from properties.op import Law, Op, OptimizerLaw

F32 = jnp.float32


# ---------------------------------------------------------------------------- helpers of the draws
def _cotangent(data: st.DataObject, fn: Callable, args: tuple) -> Any:
    leaves = jax.tree_util.tree_leaves(args)
    out = _output_shapes(fn, *(jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves),
                         treedef=jax.tree_util.tree_structure(args))
    return jax.tree_util.tree_map(lambda o: data.draw(hs.float_arrays(o.dtype, o.shape)), out)


@functools.cache
def _output_shapes(fn: Callable, *leaves: jax.ShapeDtypeStruct, treedef: Any) -> Any:
    # eval_shape traces fn; a shape bucket needs it once, not once an example.
    return jax.eval_shape(fn, *jax.tree_util.tree_unflatten(treedef, leaves))


def _tangents(data: st.DataObject, args: tuple) -> tuple:
    floats = [a for a in args if all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree_util.tree_leaves(a))]
    return tuple(jax.tree_util.tree_map(lambda x: data.draw(hs.float_arrays(x.dtype, x.shape)), a) for a in floats)


# ---------------------------------------------------------------------------- universal laws
def _args_and_cotangent(op: Op, data: st.DataObject) -> tuple:
    args = data.draw(op.args)
    return args, _cotangent(data, op.fn, args)


def _linearity_inputs(op: Op, data: st.DataObject) -> tuple:
    args, c1 = _args_and_cotangent(op, data)
    return (args, c1, _cotangent(data, op.fn, args), data.draw(st.sampled_from([2.0, -0.5])),
            data.draw(st.sampled_from([1.0, -3.0])))


def _adjoint_inputs(op: Op, data: st.DataObject) -> tuple:
    args = data.draw(op.smooth_args)
    return args, _tangents(data, args), _cotangent(data, op.fn, args)


VJP_LINEARITY = Law("vjp_linearity", _linearity_inputs, lambda op, inputs: laws.vjp_linearity(op.fn, *inputs))
ADJOINT_IDENTITY = Law("adjoint_identity", _adjoint_inputs,
                       lambda op, inputs: laws.adjoint_identity(op.fn, op.ref, *inputs))
TRANSFORMATIONS_AGREE = Law("transformations_agree", _args_and_cotangent,
                            lambda op, inputs: laws.transformations_agree(op.fn, *inputs))
UNIVERSAL: tuple[Law, ...] = (VJP_LINEARITY, ADJOINT_IDENTITY, TRANSFORMATIONS_AGREE)


# ---------------------------------------------------------------------------- gates
def gate_routing(routing: str, *, ties: str = "x", pairs: st.SearchStrategy | None = None) -> Law:
    """The gate law for a row whose op routes like ``routing`` ("add", "mul", "max" with ``ties``), on ``pairs``
    (default: pairs of every broadcast pattern of one bucket, extra leading axes and stretched 1s included)."""
    pairs = hs.broadcast_pairs(F32) if pairs is None else pairs

    def draw(op: Op, data: st.DataObject) -> tuple:
        x, y = data.draw(pairs)
        return x, y, data.draw(hs.float_arrays(F32, np.broadcast_shapes(x.shape, y.shape)))

    return Law("gate_routing", draw, lambda op, inputs: laws.gate_routing(op.fn, *inputs, routing=routing, ties=ties),
               meant_for=("gates.",))


# ---------------------------------------------------------------------------- elementwise activations
CHAIN_RULE = Law(
    "chain_rule", lambda op, data: (data.draw(hs.affine_inputs(F32)), data.draw(hs.float_arrays(F32, (6, 3)))),
    lambda op, inputs: laws.chain_rule(op.fn, pure.affine, *inputs), meant_for=("activations.",))
BACKWARD_RECURSION = Law(
    "backward_recursion", lambda op, data: data.draw(hs.mlp_batches(F32)),
    lambda op, inputs: laws.backward_recursion(op.fn, *inputs, slope=laws.elementwise_slope(op.ref)),
    meant_for=("activations.",))


# ---------------------------------------------------------------------------- layers
def _matrix_inputs(op: Op, data: st.DataObject) -> tuple:
    return tuple(data.draw(hs.float_arrays(F32, shape)) for shape in ((3, 3), (3,), (4, 3), (3,)))


MATRIX_CALCULUS = Law(  # the row's op is the affine map; the products and the norm are the plain references
    "matrix_calculus", _matrix_inputs,
    lambda op, inputs: laws.matrix_calculus(*inputs, affine=op.fn, mul=reference.gates.mul,
                                            l2_penalty=reference.regularizers.l2_penalty),
    meant_for=("layers.affine",))


def _dropout_law(law: Callable) -> Law:
    def draw(op: Op, data: st.DataObject) -> tuple:
        return (*data.draw(op.args), data.draw(st.sampled_from([0.1, 0.5, 0.8])))  # the rate varies

    return Law(law.__name__, draw, lambda op, inputs: law(op.unbound, *inputs), meant_for=("layers.dropout",))


DROPOUT_MASK_CONSISTENCY = _dropout_law(laws.dropout_mask_consistency)
DROPOUT_IS_UNBIASED = _dropout_law(laws.dropout_is_unbiased)
DROPOUT_DETERMINISTIC_IDENTITY = _dropout_law(laws.dropout_deterministic_identity)


# ---------------------------------------------------------------------------- losses
def _shift_inputs(op: Op, data: st.DataObject) -> tuple:
    return (*data.draw(op.args), data.draw(hs.float_arrays(F32, (hs.BATCH[0],))))


SOFTMAX_SHIFT_INVARIANCE = Law("softmax_shift_invariance", _shift_inputs,
                               lambda op, inputs: laws.softmax_shift_invariance(op.fn, *inputs),
                               meant_for=("losses.softmax_cross_entropy",))
GRADIENT_ROWS_SUM_TO_ZERO = Law("gradient_rows_sum_to_zero", lambda op, data: data.draw(op.args),
                                lambda op, inputs: laws.gradient_rows_sum_to_zero(op.fn, *inputs),
                                meant_for=("losses.softmax_cross_entropy", "losses.multiclass_hinge"))


# ---------------------------------------------------------------------------- the transformer's ops
VJP_SUMS_TO_ZERO = Law("vjp_sums_to_zero", _args_and_cotangent,
                       lambda op, inputs: laws.vjp_sums_to_zero(op.fn, *inputs, axis=op.settings.get("axis", -1)),
                       meant_for=("softmax.", "norms.layer_norm"))
EMBEDDING_GRADIENT_IS_A_SCATTER_SUM = Law(
    "embedding_gradient_is_a_scatter_sum", _args_and_cotangent,
    lambda op, inputs: laws.embedding_gradient_is_a_scatter_sum(op.fn, *inputs[0], inputs[1]),
    meant_for=("embedding.",))


# ---------------------------------------------------------------------------- the network
@functools.cache
def _one_sample(loss: Callable) -> Callable:
    """``loss`` of one sample (stable per loss, so the law's compiled sides are reused)."""
    return lambda params, x, y: loss(params, x[None], y[None])


MLP_CHAIN_RULE = Law("mlp_chain_rule", lambda op, data: data.draw(op.args),
                     lambda op, inputs: laws.mlp_chain_rule(op.fn, op.ref, *inputs), meant_for=("nn.",))
SUM_OVER_SAMPLES = Law("sum_over_samples", lambda op, data: data.draw(op.args),
                       lambda op, inputs: laws.sum_over_samples(_one_sample(op.fn), *inputs, op.fn),
                       meant_for=("nn.",))


# ---------------------------------------------------------------------------- optimizers (no op)
def _quartic(params, target):
    # A smooth, non-quadratic loss whose gradient depends on the params.
    return sum(jnp.sum((w - t) ** 2 * (1 + 0.5 * w * w)) for w, t in
               zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(target), strict=True))


_LAYER = hs.mlp_params(F32, (3, 4))  # one layer's parameters, and the target the loss pulls them to


def _descent(params: st.SearchStrategy, *extra: st.SearchStrategy) -> Callable[[st.DataObject], tuple]:
    """(params, target, η, λ, *extra): ηλ < 1."""
    def draw(data: st.DataObject) -> tuple:
        return (data.draw(params), data.draw(_LAYER), data.draw(hs.positive_floats(0.01, 0.2)),
                data.draw(hs.positive_floats(0.05, 1.0)), *(data.draw(s) for s in extra))
    return draw


_SGD = "pure.optim.sgd with pure.l2_penalty"
WEIGHT_DECAY_EQUIVALENCE = OptimizerLaw(
    "weight_decay_equivalence", _SGD,
    _descent(_LAYER, st.sampled_from([None, pure.nn.weights_only])),
    lambda inputs: laws.weight_decay_equivalence(_quartic, *inputs[:4], mask=inputs[4]))
DECAY_NON_EQUIVALENCE = OptimizerLaw(  # decay must have something to act on: parameters away from 0
    "decay_non_equivalence", _SGD, _descent(hs.mlp_params(F32, (3, 4), min_magnitude=0.25)),
    lambda inputs: laws.decay_non_equivalence(_quartic, *inputs))
CS231N_REG_IS_TWICE_WEIGHT_DECAY = OptimizerLaw(
    "cs231n_reg_is_twice_weight_decay", "pure.optim.sgd", _descent(_LAYER),
    lambda inputs: laws.cs231n_reg_is_twice_weight_decay(_quartic, *inputs[:3], inputs[3] / 2))
OPTIMIZER_LAWS: tuple[OptimizerLaw, ...] = (WEIGHT_DECAY_EQUIVALENCE, DECAY_NON_EQUIVALENCE,
                                            CS231N_REG_IS_TWICE_WEIGHT_DECAY)
