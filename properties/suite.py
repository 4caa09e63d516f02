"""Every law applied to every op of the table (properties.table) it fits, as Hypothesis tests.

A law fits every op if it is universal (:data:`UNIVERSAL`), else the rows that name it.
``property_test(name)`` returns a zero-argument callable that runs one property under the
active Hypothesis profile, the profile's examples shared among the ops it fits, and returns
how many examples each op got; the pytest suite and ``handgrad verify --properties`` both
call it. One test per property (not per op) keeps handgrad-ci's 100 examples a property
within the time budget: Hypothesis spends ~10 ms drawing an example, jit ~0 once compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import pure
import pure.nn
from properties import laws
from properties import strategies as hs
from properties.table import BY_NAME, OPS, Op

F32 = jnp.float32
_MIN_PER_OP = 10
UNIVERSAL = ("vjp_linearity", "adjoint_identity", "transformations_agree")  # laws every op obeys

# Inputs of the laws themselves (not of one op): an affine layer to chain after, MLPs, parameter trees.
_PARAMS = hs.mlp_params(F32, (3, 4))
_NONZERO_PARAMS = hs.mlp_params(F32, (3, 4), min_magnitude=0.25)  # decay must have something to act on
_MLP = st.tuples(hs.mlp_params(F32), hs.float_arrays(F32, (hs.BATCH[0], hs.MLP_SIZES[0])), hs.labels(num_classes=3))


def _cotangent(data: st.DataObject, fn: Callable, args: tuple) -> Any:
    out = _output_shapes(fn, *(jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in jax.tree_util.tree_leaves(args)),
                         treedef=jax.tree_util.tree_structure(args))
    return jax.tree_util.tree_map(lambda o: data.draw(hs.float_arrays(o.dtype, o.shape)), out)


@functools.cache
def _output_shapes(fn: Callable, *leaves: jax.ShapeDtypeStruct, treedef: Any) -> Any:
    # eval_shape traces fn; a shape bucket needs it once, not once an example.
    return jax.eval_shape(fn, *jax.tree_util.tree_unflatten(treedef, leaves))


def _tangents(data: st.DataObject, args: tuple) -> tuple:
    floats = [a for a in args if all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree_util.tree_leaves(a))]
    return tuple(jax.tree_util.tree_map(lambda x: data.draw(hs.float_arrays(x.dtype, x.shape)), a) for a in floats)


# ---------------------------------------------------------------------------- the bodies
def _linearity(op: Op, data: st.DataObject) -> None:
    args = data.draw(op.args)
    c1, c2 = _cotangent(data, op.fn, args), _cotangent(data, op.fn, args)
    a, b = data.draw(st.sampled_from([2.0, -0.5])), data.draw(st.sampled_from([1.0, -3.0]))
    laws.vjp_linearity(op.fn, args, c1, c2, a, b)


def _adjoint(op: Op, data: st.DataObject) -> None:
    args = data.draw(op.smooth_args)
    laws.adjoint_identity(op.fn, op.ref, args, _tangents(data, args), _cotangent(data, op.fn, args))


def _transformations(op: Op, data: st.DataObject) -> None:
    args = data.draw(op.args)
    laws.transformations_agree(op.fn, args, _cotangent(data, op.fn, args))


def _gate_routing(op: Op, data: st.DataObject) -> None:
    x, y = data.draw(op.args if op.short == "maximum" else hs.broadcast_pairs(F32))
    laws.gate_routing(op.fn, x, y, data.draw(hs.float_arrays(F32, np.broadcast_shapes(x.shape, y.shape))))


def _chain(op: Op, data: st.DataObject) -> None:
    layer_args = data.draw(BY_NAME["layers.affine"].args)  # (x, W, b)
    laws.chain_rule(op.fn, pure.affine, layer_args, data.draw(hs.float_arrays(F32, (6, 3))))


def _mlp_chain(op: Op, data: st.DataObject) -> None:
    laws.mlp_chain_rule(op.fn, op.ref, *data.draw(op.args))


def _recursion(op: Op, data: st.DataObject) -> None:
    params, x, labels = data.draw(_MLP)
    laws.backward_recursion(op.fn, params, x, labels, slope=laws.elementwise_slope(op.ref))


def _quartic(params, target):
    # A smooth, non-quadratic loss whose gradient depends on the params.
    return sum(jnp.sum((w - t) ** 2 * (1 + 0.5 * w * w)) for w, t in
               zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(target), strict=True))


def _decay(law: Callable) -> Callable[[Op, st.DataObject], None]:
    def body(op: Op, data: st.DataObject) -> None:
        params = data.draw(_PARAMS if law is not laws.decay_non_equivalence else _NONZERO_PARAMS)
        target = data.draw(_PARAMS)
        eta, lam = data.draw(hs.positive_floats(0.01, 0.2)), data.draw(hs.positive_floats(0.05, 1.0))  # ηλ < 1
        if law is laws.weight_decay_equivalence:
            law(_quartic, params, target, eta, lam, mask=data.draw(st.sampled_from([None, pure.nn.weights_only])))
        elif law is laws.cs231n_reg_is_twice_weight_decay:
            law(_quartic, params, target, eta, lam / 2)
        else:
            law(_quartic, params, target, eta, lam)
    return body


def _sum_over_samples(op: Op, data: st.DataObject) -> None:
    params, x, labels = data.draw(_MLP)
    laws.sum_over_samples(_per_example, params, x, labels, _mlp_mean)


def _per_example(params, x, y):
    return pure.nn.classification_loss(params, x[None], y[None], activation="tanh")


def _mlp_mean(params, x, y):
    return pure.nn.classification_loss(params, x, y, activation="tanh")


def _matrix(op: Op, data: st.DataObject) -> None:
    laws.matrix_calculus(data.draw(hs.float_arrays(F32, (3, 3))), data.draw(hs.float_arrays(F32, (3,))),
                         data.draw(hs.float_arrays(F32, (4, 3))), data.draw(hs.float_arrays(F32, (3,))))


def _shift(op: Op, data: st.DataObject) -> None:
    logits, labels = data.draw(op.args)
    laws.softmax_shift_invariance(op.fn, logits, labels, data.draw(hs.float_arrays(F32, (hs.BATCH[0],))))


def _rows(op: Op, data: st.DataObject) -> None:
    laws.gradient_rows_sum_to_zero(op.fn, *data.draw(op.args))


def _dropout_law(law: Callable) -> Callable[[Op, st.DataObject], None]:
    def body(op: Op, data: st.DataObject) -> None:
        x, key = data.draw(op.args)
        law(pure.dropout, x, key, data.draw(st.sampled_from([0.1, 0.5, 0.8])))  # the unbound op: rate varies
    return body


# property name -> the body drawing one example; which ops it fits comes from the table's rows
BODIES: dict[str, Callable[[Op, st.DataObject], None]] = {
    "chain_rule": _chain,
    "mlp_chain_rule": _mlp_chain,
    "backward_recursion": _recursion,
    "gate_routing": _gate_routing,
    "weight_decay_equivalence": _decay(laws.weight_decay_equivalence),
    "decay_non_equivalence": _decay(laws.decay_non_equivalence),
    "cs231n_reg_is_twice_weight_decay": _decay(laws.cs231n_reg_is_twice_weight_decay),
    "vjp_linearity": _linearity,
    "adjoint_identity": _adjoint,
    "sum_over_samples": _sum_over_samples,
    "matrix_calculus": _matrix,
    "softmax_shift_invariance": _shift,
    "gradient_rows_sum_to_zero": _rows,
    "dropout_mask_consistency": _dropout_law(laws.dropout_mask_consistency),
    "dropout_is_unbiased": _dropout_law(laws.dropout_is_unbiased),
    "dropout_deterministic_identity": _dropout_law(laws.dropout_deterministic_identity),
    "transformations_agree": _transformations,
}


def ops_for(prop: str, ops: Sequence[Op] = OPS) -> tuple[Op, ...]:
    """The rows of the table a property fits: every op for the universal laws, else the rows naming it."""
    return tuple(op for op in ops if prop in UNIVERSAL or prop in op.laws)


PROPERTIES: dict[str, tuple[str, ...]] = {prop: tuple(op.name for op in ops_for(prop)) for prop in BODIES}


def property_test(prop: str, ops: Op | Sequence[Op] | None = None) -> Callable[[], dict[str, int]]:
    """A callable running property ``prop`` under the active Hypothesis profile.

    ``ops`` is one row (e.g. your own op), several, or None for every row of the table the
    property fits. The profile's ``max_examples`` (N) is shared among them: each op gets its
    own Hypothesis run of ``max(⌈N/ops⌉, 10)`` examples, so every op is exercised and shrinks
    on its own. The callable returns the number of examples each op ran.
    """
    body = BODIES[prop]
    chosen = list(ops_for(prop) if ops is None else [ops] if isinstance(ops, Op) else ops)
    per_op = max(math.ceil(settings().max_examples / len(chosen)), _MIN_PER_OP)
    counts = dict.fromkeys((o.name for o in chosen), 0)

    def one(op: Op) -> None:
        @settings(max_examples=per_op)  # on top of the active profile
        @given(st.data())
        def run(data: st.DataObject) -> None:
            counts[op.name] += 1
            body(op, data)

        run.__name__ = run.__qualname__ = f"{prop}[{op.name}]"
        run()

    def call() -> dict[str, int]:
        for op in chosen:
            one(op)
        return dict(counts)

    return call


@dataclasses.dataclass(frozen=True)
class Result:
    prop: str
    ops: int
    examples: int
    seconds: float
    status: str


def run_all(progress: Callable[[str], None] = lambda _: None, ops: Sequence[Op] = OPS) -> list[Result]:
    """Runs every property on every op of ``ops`` it fits; one :class:`Result` per property that fits one."""
    results = []
    for prop in BODIES:
        fitting = ops_for(prop, ops)
        if not fitting:
            continue
        progress(prop)
        start = time.perf_counter()
        try:
            counts = property_test(prop, fitting)()
            examples, status = sum(counts.values()), "ok"
        except laws.PropertyViolation as e:
            examples, status = 0, "FAIL: " + e.headline
        results.append(Result(prop, len(fitting), examples, time.perf_counter() - start, status))
    return results
