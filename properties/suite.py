"""Every law applied to every pure op it fits, as Hypothesis tests runnable anywhere.

``property_test(name)`` returns a zero-argument callable that runs one property under the
active Hypothesis profile, each example drawing one of the ops the law fits, and returns
how many examples each op got; the pytest suite and ``handgrad verify --properties`` both
call it. One test per property (not per op) keeps the ci profile's 100 examples a property
within the time budget: Hypothesis spends ~10 ms drawing an example, jit ~0 once compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import pure
import pure.nn
import reference
import reference.nn
from properties import laws
from properties import strategies as hs

F32 = jnp.float32
_MIN_PER_OP = 10


@dataclasses.dataclass(frozen=True)
class Op:
    """A pure op, its reference, inputs from its whole domain, and inputs away from its kinks."""

    name: str
    fn: Callable
    ref: Callable
    args: st.SearchStrategy  # tuples of arguments, kinks included
    smooth: st.SearchStrategy  # tuples of arguments at least a margin from every kink


def _leaky(x):
    return pure.leaky_relu(x, 0.1)


def _ref_leaky(x):
    return reference.activations.leaky_relu(x, 0.1)


def _dropout(x, key):
    return pure.dropout(x, key, 0.5)


def _ref_dropout(x, key):
    return reference.layers.dropout(x, key, 0.5)


def _l2(params, strength):
    return pure.l2_penalty(params, strength, mask=pure.nn.weights_only)


def _ref_l2(params, strength):
    return reference.regularizers.l2_penalty(params, strength, mask=pure.nn.weights_only)


def _max_norm(params):
    return pure.max_norm(params, 1.5)


def _ref_max_norm(params):
    return reference.regularizers.max_norm(params, 1.5)


def _mlp_loss(params, x, labels):
    return pure.nn.classification_loss(params, x, labels, l2=0.01, activation="tanh")


def _ref_mlp_loss(params, x, labels):
    return reference.nn.classification_loss(params, x, labels, l2=0.01, activation="tanh")


def _unary(smooth_margin: float = 0.0) -> st.SearchStrategy:
    return (hs.away_from_kinks(F32, margin=smooth_margin) if smooth_margin else hs.float_arrays(F32)).map(
        lambda x: (x,))


def _separated_pairs() -> st.SearchStrategy:
    # |x − y| ≥ 0.1 everywhere: no ties, so the max gate is smooth.
    return st.tuples(hs.float_arrays(F32, hs.SHAPES[0]), hs.away_from_kinks(F32, hs.SHAPES[0])).map(
        lambda xd: (xd[0], xd[0] + xd[1]))


_STRENGTH = hs.positive_floats(0.01, 1.0).map(lambda s: jnp.asarray(s, F32))
_BATCH = hs.classification_batches(F32)
_PARAMS = hs.mlp_params(F32, (3, 4))
_NONZERO_PARAMS = hs.mlp_params(F32, (3, 4), min_magnitude=0.25)  # decay must have something to act on
_MLP = st.tuples(hs.mlp_params(F32), hs.float_arrays(F32, (hs.BATCH[0], hs.MLP_SIZES[0])), hs.labels(num_classes=3))

# add and mul take one broadcast bucket (a bias row) here; gate_routing draws every broadcast pattern.
_BIAS_PAIR = st.tuples(hs.float_arrays(F32, hs.SHAPES[0]), hs.float_arrays(F32, hs.SHAPES[0][1:]))

OPS: tuple[Op, ...] = (
    Op("add", pure.add, reference.gates.add, _BIAS_PAIR, _BIAS_PAIR),
    Op("mul", pure.mul, reference.gates.mul, _BIAS_PAIR, _BIAS_PAIR),
    Op("maximum", pure.maximum, reference.gates.maximum, hs.tied_pairs(F32), _separated_pairs()),
    Op("sigmoid", pure.sigmoid, reference.activations.sigmoid, _unary(), _unary()),
    Op("tanh", pure.tanh, reference.activations.tanh, _unary(), _unary()),
    Op("relu", pure.relu, reference.activations.relu, hs.with_exact_zeros(F32).map(lambda x: (x,)), _unary(0.1)),
    Op("leaky_relu", _leaky, _ref_leaky, hs.with_exact_zeros(F32).map(lambda x: (x,)), _unary(0.1)),
    Op("affine", pure.affine, reference.layers.affine,
       st.tuples(hs.float_arrays(F32, (6, 4)), hs.float_arrays(F32, (4, 3)), hs.float_arrays(F32, (3,))),
       st.tuples(hs.float_arrays(F32, (6, 4)), hs.float_arrays(F32, (4, 3)), hs.float_arrays(F32, (3,)))),
    Op("dropout", _dropout, _ref_dropout, st.tuples(hs.float_arrays(F32), hs.prng_keys()),
       st.tuples(hs.float_arrays(F32), hs.prng_keys())),
    Op("mse", pure.mse, reference.losses.mse, st.tuples(hs.float_arrays(F32, (6, 2)), hs.float_arrays(F32, (6, 2))),
       st.tuples(hs.float_arrays(F32, (6, 2)), hs.float_arrays(F32, (6, 2)))),
    Op("softmax_cross_entropy", pure.softmax_cross_entropy, reference.losses.softmax_cross_entropy, _BATCH, _BATCH),
    Op("multiclass_hinge", pure.multiclass_hinge, reference.losses.multiclass_hinge, hs.hinge_margin_hits(F32),
       _BATCH.filter(lambda b: _hinge_is_smooth(*b))),
    Op("binary_cross_entropy", pure.binary_cross_entropy, reference.losses.binary_cross_entropy,
       st.tuples(hs.float_arrays(F32, (6, 2)), hs.float_arrays(F32, (6, 2), max_magnitude=1.0).map(jnp.abs)),
       st.tuples(hs.float_arrays(F32, (6, 2)), hs.float_arrays(F32, (6, 2), max_magnitude=1.0).map(jnp.abs))),
    Op("l2_penalty", _l2, _ref_l2, st.tuples(_PARAMS, _STRENGTH), st.tuples(_PARAMS, _STRENGTH)),
    Op("l1_penalty", pure.l1_penalty, reference.regularizers.l1_penalty,
       st.tuples(hs.with_exact_zeros(F32).map(lambda w: [w]), _STRENGTH),
       st.tuples(hs.away_from_kinks(F32).map(lambda w: [w]), _STRENGTH)),
    Op("max_norm", _max_norm, _ref_max_norm, _PARAMS.map(lambda p: (p,)),
       _PARAMS.filter(lambda p: _max_norm_is_smooth(p)).map(lambda p: (p,))),
    Op("mlp_loss", _mlp_loss, _ref_mlp_loss, _MLP, _MLP),
)


def _hinge_is_smooth(scores, labels) -> bool:
    s = np.asarray(scores)
    slack = s - s[np.arange(len(labels)), np.asarray(labels)][:, None] + 1.0
    slack[np.arange(len(labels)), np.asarray(labels)] = 1.0
    return bool(np.all(np.abs(slack) > 1e-2))


def _max_norm_is_smooth(params) -> bool:
    return all(abs(float(n) - 1.5) > 1e-2 for layer in params for n in np.linalg.norm(np.asarray(layer["W"]), axis=0))


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
    args = data.draw(op.smooth)
    laws.adjoint_identity(op.fn, op.ref, args, _tangents(data, args), _cotangent(data, op.fn, args))


def _transformations(op: Op, data: st.DataObject) -> None:
    args = data.draw(op.args)
    laws.transformations_agree(op.fn, args, _cotangent(data, op.fn, args))


def _gate_routing(op: Op, data: st.DataObject) -> None:
    x, y = data.draw(op.args if op.name == "maximum" else hs.broadcast_pairs(F32))
    laws.gate_routing(op.fn, x, y, data.draw(hs.float_arrays(F32, np.broadcast_shapes(x.shape, y.shape))))


def _chain(op: Op, data: st.DataObject) -> None:
    layer_args = data.draw(_BY_NAME["affine"].args)  # (x, W, b)
    laws.chain_rule(op.fn, pure.affine, layer_args, data.draw(hs.float_arrays(F32, (6, 3))))


def _mlp_chain(op: Op, data: st.DataObject) -> None:
    laws.mlp_chain_rule(op.fn, op.ref, *data.draw(op.args))


def _recursion(op: Op, data: st.DataObject) -> None:
    params, x, labels = data.draw(_MLP)
    laws.backward_recursion(params, x, labels, activation=op.name)


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
    logits, labels = data.draw(_BATCH)
    laws.softmax_shift_invariance(op.fn, logits, labels, data.draw(hs.float_arrays(F32, (hs.BATCH[0],))))


def _rows(op: Op, data: st.DataObject) -> None:
    laws.gradient_rows_sum_to_zero(op.fn, *data.draw(op.args))


def _dropout_law(law: Callable) -> Callable[[Op, st.DataObject], None]:
    def body(op: Op, data: st.DataObject) -> None:
        x, key = data.draw(op.args)
        law(pure.dropout, x, key, data.draw(st.sampled_from([0.1, 0.5, 0.8])))
    return body


_BY_NAME = {op.name: op for op in OPS}
_EVERY = tuple(op.name for op in OPS)
_ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu")

# property name -> (the ops it fits, the body drawing one example)
PROPERTIES: dict[str, tuple[tuple[str, ...], Callable[[Op, st.DataObject], None]]] = {
    "chain_rule": (_ACTIVATIONS, _chain),
    "mlp_chain_rule": (("mlp_loss",), _mlp_chain),
    "backward_recursion": (("sigmoid", "tanh", "relu"), _recursion),
    "gate_routing": (("add", "mul", "maximum"), _gate_routing),
    "weight_decay_equivalence": (("l2_penalty",), _decay(laws.weight_decay_equivalence)),
    "decay_non_equivalence": (("l2_penalty",), _decay(laws.decay_non_equivalence)),
    "cs231n_reg_is_twice_weight_decay": (("l2_penalty",), _decay(laws.cs231n_reg_is_twice_weight_decay)),
    "vjp_linearity": (_EVERY, _linearity),
    "adjoint_identity": (_EVERY, _adjoint),
    "sum_over_samples": (("mlp_loss",), _sum_over_samples),
    "matrix_calculus": (("affine",), _matrix),
    "softmax_shift_invariance": (("softmax_cross_entropy",), _shift),
    "gradient_rows_sum_to_zero": (("softmax_cross_entropy", "multiclass_hinge"), _rows),
    "dropout_mask_consistency": (("dropout",), _dropout_law(laws.dropout_mask_consistency)),
    "dropout_is_unbiased": (("dropout",), _dropout_law(laws.dropout_is_unbiased)),
    "dropout_deterministic_identity": (("dropout",), _dropout_law(laws.dropout_deterministic_identity)),
    "transformations_agree": (_EVERY, _transformations),
}



def property_test(prop: str, op: Op | None = None) -> Callable[[], dict[str, int]]:
    """A callable running property ``prop`` under the active Hypothesis profile.

    The profile's ``max_examples`` (N) is shared among the ops the property fits (or just
    ``op``, e.g. your own): each op gets its own Hypothesis run of ``max(⌈N/ops⌉, 10)``
    examples, so every op is exercised and shrinks on its own. The callable returns the
    number of examples each op ran.
    """
    names, body = PROPERTIES[prop]
    ops = [op] if op is not None else [_BY_NAME[n] for n in names]
    per_op = max(math.ceil(settings().max_examples / len(ops)), _MIN_PER_OP)
    counts = dict.fromkeys((o.name for o in ops), 0)

    def one(chosen: Op) -> None:
        @settings(max_examples=per_op)  # on top of the active profile: ci, dev or thorough
        @given(st.data())
        def run(data: st.DataObject) -> None:
            counts[chosen.name] += 1
            body(chosen, data)

        run.__name__ = run.__qualname__ = f"{prop}[{chosen.name}]"
        run()

    def call() -> dict[str, int]:
        for chosen in ops:
            one(chosen)
        return dict(counts)

    return call


@dataclasses.dataclass(frozen=True)
class Result:
    prop: str
    ops: int
    examples: int
    seconds: float
    status: str


def run_all(progress: Callable[[str], None] = lambda _: None) -> list[Result]:
    """Runs every property on every op it fits; one :class:`Result` per property."""
    results = []
    for prop, (ops, _) in PROPERTIES.items():
        progress(prop)
        start = time.perf_counter()
        try:
            counts = property_test(prop)()
            examples, status = sum(counts.values()), "ok"
        except AssertionError as e:
            examples, status = 0, "FAIL: " + str(e).splitlines()[0]
        results.append(Result(prop, len(ops), examples, time.perf_counter() - start, status))
    return results
