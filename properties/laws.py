"""The laws of backprop as functions: each takes the op under test and concrete inputs.

Drive them with Hypothesis (see :mod:`properties.strategies`) against any JAX function,
including your own ``jax.custom_vjp``::

    @given(strategies.float_arrays(), strategies.float_arrays(), strategies.float_arrays())
    def test_my_op(x, c1, c2):
        laws.vjp_linearity(my_op, (x,), c1, c2, 2.0, -3.0)

Both sides of each law are computed by one ``jax.jit`` function cached per op, so pass a
stable function (not a new lambda per example): then every example of a shape bucket
reuses one compilation. A broken law raises :class:`PropertyViolation`, naming the
property, the op and the two sides; Hypothesis adds the shrunk input ("Falsifying example").
The laws of training (weight decay, a loss's invariants, dropout) live in
:mod:`properties.training_laws`, those of the transformer's ops in :mod:`properties.transformer_laws`; both are
exported here too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pure
import pure.optim
from properties.training_laws import (
    cs231n_reg_is_twice_weight_decay,
    decay_non_equivalence,
    dropout_deterministic_identity,
    dropout_is_unbiased,
    dropout_mask_consistency,
    gradient_rows_sum_to_zero,
    softmax_shift_invariance,
    weight_decay_equivalence,
)
from properties.transformer_laws import embedding_gradient_is_a_scatter_sum, vjp_sums_to_zero
from properties.violation import FLOOR, PropertyViolation, agreement, assert_close, op_name
from reference.oracle.transforms import TransformMismatch, check_transforms

__all__ = [  # the laws, and what they raise: the training laws live in properties.training_laws
    "PropertyViolation", "assert_close", "op_name",
    "chain_rule", "mlp_chain_rule", "backward_recursion", "elementwise_slope", "gate_routing",
    "weight_decay_equivalence", "decay_non_equivalence", "cs231n_reg_is_twice_weight_decay",
    "vjp_linearity", "adjoint_identity", "sum_over_samples", "matrix_calculus",
    "softmax_shift_invariance", "gradient_rows_sum_to_zero",
    "dropout_mask_consistency", "dropout_is_unbiased", "dropout_deterministic_identity",
    "transformations_agree", "vjp_sums_to_zero", "embedding_gradient_is_a_scatter_sum",
]

# The adjoint identity compares two sums of products over every entry: ten times the agreement of one entry.
ADJOINT_FACTOR = 10.0


def _combine(a: Any, b: Any, wa: Any = 1.0, wb: Any = 1.0) -> Any:
    return jax.tree_util.tree_map(lambda x, y: wa * x + wb * y, a, b)


def _vdot(a: Any, b: Any) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def _is_float_tree(a: Any) -> bool:
    return all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree_util.tree_leaves(a))


def _over_floats(fn: Callable, args: Sequence[Any]) -> tuple[Callable, tuple]:
    """``fn`` as a function of the float arguments alone (labels and keys stay fixed), and those arguments."""
    idx = [i for i, a in enumerate(args) if _is_float_tree(a)]

    def of_floats(*floats):
        full = list(args)
        for i, f in zip(idx, floats, strict=True):
            full[i] = f
        return fn(*full)

    return of_floats, tuple(args[i] for i in idx)


def _pullback(fn: Callable, args: Sequence[Any]) -> tuple[Any, Callable]:
    """``jax.vjp`` w.r.t. the float arguments only."""
    of_floats, floats = _over_floats(fn, args)
    return jax.vjp(of_floats, *floats)


# ---------------------------------------------------------------- 1. chain rule
@functools.cache
def _chain_sides(f: Callable, g: Callable) -> Callable:
    def sides(g_args, c):
        y, pull_g = jax.vjp(g, *g_args)
        _, pull_f = jax.vjp(f, y)
        _, pull_fg = jax.vjp(lambda *a: f(g(*a)), *g_args)
        return pull_fg(c), pull_g(*pull_f(c))
    return jax.jit(sides)


def chain_rule(f: Callable, g: Callable, g_args: Sequence[Any], cotangent: Any) -> None:
    """The VJP of ``f∘g`` equals ``vjp_g(vjp_f(c))``: backprop composes."""
    lhs, rhs = _chain_sides(f, g)(tuple(g_args), cotangent)
    assert_close("chain_rule", f, "vjp(f∘g)(c)", lhs, "vjp_g(vjp_f(c))", rhs)


@functools.cache
def _grads_of(loss: Callable, reference_loss: Callable) -> Callable:
    return jax.jit(lambda params, *data: (jax.grad(loss)(params, *data), jax.grad(reference_loss)(params, *data)))


def mlp_chain_rule(loss: Callable, reference_loss: Callable, params: Any, *data: Any) -> None:
    """The whole-MLP gradient from per-layer hand-written backprop equals ``jax.grad`` of the reference."""
    hand, ref = _grads_of(loss, reference_loss)(params, *data)
    assert_close("mlp_chain_rule", loss, "grad(hand-written)", hand, "jax.grad(reference)", ref)


@functools.cache
def _recursion_sides(act: Callable, slope: Callable, affine: Callable, loss: Callable) -> Callable:
    def sides(params, x, labels):
        def from_layer(l, z):  # the loss as a function of the pre-activation z_l
            h = z
            for layer in params[l + 1:]:
                h = affine(act(h), layer["W"], layer["b"])
            return loss(h, labels)

        zs, h = [], x
        for layer in params:
            zs.append(affine(h, layer["W"], layer["b"]))
            h = act(zs[-1])
        deltas = [jax.grad(from_layer, argnums=1)(l, z) for l, z in enumerate(zs)]
        slopes = [slope(z) for z in zs]  # σ'(z), entry by entry, from the reference
        return deltas[:-1], [s * (d @ layer["W"].T) for s, d, layer in zip(slopes[:-1], deltas[1:], params[1:],
                                                                             strict=True)]
    return jax.jit(sides)


@functools.cache
def elementwise_slope(reference: Callable) -> Callable:
    """``z -> σ'(z)`` entry by entry, by ``jax.grad`` of an elementwise reference ``σ``."""
    return jax.grad(lambda z: jnp.sum(reference(z)))


def backward_recursion(act: Callable, params: list, x: jax.Array, labels: jax.Array, *,
                       slope: Callable | None = None, affine: Callable = pure.affine,
                       loss: Callable = pure.softmax_cross_entropy) -> None:
    """``∂C/∂z_l = σ'(z_l) ⊙ (∂C/∂z_{l+1} · W_{l+1}ᵀ)`` for the pre-activations ``z`` (Hung-yi Lee's backward pass).

    ``act`` is the activation under test, ``slope`` its derivative entry by entry (default: that of
    ``act`` itself, by jax.grad; pass ``elementwise_slope(reference)`` to use an independent one).
    ``affine`` and ``loss`` build the network (pure's by default).
    """
    slope = slope if slope is not None else elementwise_slope(act)
    lhs, rhs = _recursion_sides(act, slope, affine, loss)(params, x, labels)
    assert_close("backward_recursion", act, "dC/dz[l]", lhs, "sigma'(z[l]) * (dC/dz[l+1] @ W[l+1].T)", rhs)


# -------------------------------------------------------------- 2. gate routing
def _summed_to(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``g`` summed over the axes broadcasting added or stretched (numpy, not pure)."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    return g.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True).reshape(shape)


@functools.cache
def _vjp_jit(fn: Callable) -> Callable:
    return jax.jit(lambda args, c: _pullback(fn, args)[1](c))


ROUTING: dict[Any, str] = {pure.add: "add", pure.mul: "mul", pure.maximum: "max"}  # pure's gates, by default


def _local(routing: str | Callable, ties: str, xb: np.ndarray, yb: np.ndarray) -> tuple[Any, Any]:
    """The local derivatives (d/dx, d/dy) of a gate, broadcast: the rule the law holds the gate to."""
    if callable(routing):
        dx, dy = routing(xb, yb)
        return np.asarray(dx, np.float64), np.asarray(dy, np.float64)
    if routing == "add":
        return 1.0, 1.0
    if routing == "mul":
        return yb, xb
    if routing == "max":
        tie = xb == yb
        x_share = {"x": 1.0, "y": 0.0, "split": 0.5}[ties]
        return np.where(tie, x_share, xb > yb).astype(float), np.where(tie, 1 - x_share, xb < yb).astype(float)
    raise ValueError(f"gate_routing: routing must be 'add', 'mul', 'max' or a function (x, y) -> (dx, dy), "
                     f"got {routing!r}")


def gate_routing(gate: Callable, x: jax.Array, y: jax.Array, g: jax.Array, *, routing: str | Callable | None = None,
                 ties: str = "x") -> None:
    """The routing of backprop's gates (CS231n): add distributes, mul switches, max routes to the winner.

    ``routing`` is the rule the gate is held to: ``"add"``, ``"mul"``, ``"max"`` (with ``ties``: the
    whole gradient to ``"x"``, to ``"y"``, or ``"split"`` ½/½), or a function ``(x, y) -> (dx, dy)``
    of local derivatives. None looks the gate up among pure's (:data:`ROUTING`). Cotangents are
    summed over broadcast axes; with ``"max"`` and ties to one side, the two add up to ``g`` exactly.
    """
    if routing is None:
        if gate not in ROUTING:
            raise TypeError(f"gate_routing: {op_name(gate)} is not one of pure's gates; say which rule it follows "
                            f"with routing='add', 'mul', 'max' or a function (x, y) -> (dx, dy)")
        routing = ROUTING[gate]
    if ties not in ("x", "y", "split"):
        raise ValueError(f"gate_routing: ties must be 'x', 'y' or 'split', got {ties!r}")
    dx, dy = _vjp_jit(gate)((x, y), g)
    xb, yb = (np.broadcast_to(np.asarray(v, np.float64), g.shape) for v in (x, y))
    g64 = np.asarray(g, np.float64)
    local = _local(routing, ties, xb, yb)
    for name, got, d, primal in (("dx", dx, local[0], x), ("dy", dy, local[1], y)):
        assert_close("gate_routing", gate, name, got, f"g * d/{name[1]} summed over broadcast axes",
                     _summed_to(g64 * d, np.shape(primal)))
    if routing == "max" and ties != "split" and np.shape(x) == np.shape(y) == g.shape:  # each entry goes one way
        if not np.array_equal(np.asarray(dx) + np.asarray(dy), np.asarray(g)):
            raise PropertyViolation("gate_routing", gate, "dx + dy", np.asarray(dx) + np.asarray(dy), "g", g)


# ------------------------------------------------- 4, 5. linearity and adjoint
@functools.cache
def _linearity_sides(fn: Callable) -> Callable:
    def sides(args, c1, c2, a, b):
        pull = _pullback(fn, args)[1]
        return pull(_combine(c1, c2, a, b)), _combine(pull(c1), pull(c2), a, b)
    return jax.jit(sides)


def vjp_linearity(fn: Callable, args: Sequence[Any], c1: Any, c2: Any, a: float, b: float) -> None:
    """``vjp(a·c₁ + b·c₂) = a·vjp(c₁) + b·vjp(c₂)``: a VJP is linear in its cotangent."""
    lhs, rhs = _linearity_sides(fn)(tuple(args), c1, c2, a, b)
    assert_close("vjp_linearity", fn, "vjp(a*c1 + b*c2)", lhs, "a*vjp(c1) + b*vjp(c2)", rhs)


@functools.cache
def _adjoint_sides(fn: Callable, reference: Callable) -> Callable:
    def sides(args, tangents, c):
        _, jv = jax.jvp(*_over_floats(reference, args), tuple(tangents))
        vjp = _pullback(fn, args)[1](c)
        absolute = functools.partial(jax.tree_util.tree_map, jnp.abs)
        scale = jnp.maximum(_vdot(absolute(jv), absolute(c)), _vdot(absolute(tuple(tangents)), absolute(vjp)))
        return _vdot(jv, c), _vdot(tuple(tangents), vjp), scale
    return jax.jit(sides)


def adjoint_identity(fn: Callable, reference: Callable, args: Sequence[Any], tangents: Sequence[Any],
                     cotangent: Any) -> None:
    """``⟨J v, c⟩ = ⟨v, Jᵀ c⟩``, with ``J v`` from ``jax.jvp`` of the reference (forward mode).

    ``tangents`` has one pytree per float argument of ``args``.
    """
    lhs, rhs, scale = (float(v) for v in _adjoint_sides(fn, reference)(tuple(args), tuple(tangents), cotangent))
    if abs(lhs - rhs) > ADJOINT_FACTOR * agreement(args) * (scale + FLOOR):
        raise PropertyViolation("adjoint_identity", fn, "<J v, c>", lhs, "<v, J^T c>", rhs)


# ---------------------------------------------------------- 6. sum over samples
@functools.cache
def _sample_sides(per_example_loss: Callable, batch_loss: Callable) -> Callable:
    def sides(params, xs, ys):
        per = jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0, 0))(params, xs, ys)
        mean = jax.grad(batch_loss)(params, xs, ys)
        total = jax.grad(lambda p: xs.shape[0] * batch_loss(p, xs, ys))(params)
        return (mean, jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), per),
                total, jax.tree_util.tree_map(lambda g: jnp.sum(g, axis=0), per))
    return jax.jit(sides)


def sum_over_samples(per_example_loss: Callable, params: Any, xs: jax.Array, ys: jax.Array,
                     batch_loss: Callable) -> None:
    """∇ of the summed loss = Σ per-example gradients (vmap(grad)); the mean gives the mean.

    ``batch_loss(params, xs, ys)`` is the mean over the batch; ``per_example_loss`` takes one sample.
    """
    mean, per_mean, total, per_sum = _sample_sides(per_example_loss, batch_loss)(params, xs, ys)
    assert_close("sum_over_samples", batch_loss, "grad(mean loss)", mean, "mean of per-example grads", per_mean)
    assert_close("sum_over_samples", batch_loss, "grad(summed loss)", total, "sum of per-example grads", per_sum)


# --------------------------------------------------------- 7. matrix calculus
@functools.cache
def _matrix_sides(affine: Callable, mul: Callable, l2_penalty: Callable) -> Callable:
    def sides(A, x, X, c):
        zero = jnp.zeros(A.shape[0], A.dtype)
        Ax = lambda v: affine(v, A.T, zero)  # noqa: E731  (x·Aᵀ = (Ax)ᵀ)
        quad = lambda v: jnp.sum(mul(v, affine(v, A.T, zero)))  # noqa: E731
        return {
            "grad c.(Ax) = A^T c": (jax.vjp(Ax, x)[1](c)[0], A.T @ c),
            "grad x^T A x = (A + A^T) x": (jax.grad(quad)(x), (A + A.T) @ x),
            "grad ||x||^2 = 2x": (jax.grad(lambda v: jnp.sum(mul(v, v)))(x), 2 * x),
            "grad ||X||_F^2 = 2X": (jax.grad(lambda m: l2_penalty(m, 2.0))(X), 2 * X),
        }
    return jax.jit(sides)


def matrix_calculus(A: jax.Array, x: jax.Array, X: jax.Array, c: jax.Array, *, affine: Callable = pure.affine,
                    mul: Callable = pure.mul, l2_penalty: Callable = pure.l2_penalty) -> None:
    """The matrix-calculus identities (d2l) through the ops under test: ∇(cᵀAx) = Aᵀc, ∇(xᵀAx) = (A + Aᵀ)x,
    ∇‖x‖² = 2x, ∇‖X‖_F² = 2X (``l2_penalty`` in the d2l convention: strength 2 gives ‖X‖_F²)."""
    for identity, (lhs, rhs) in _matrix_sides(affine, mul, l2_penalty)(A, x, X, c).items():
        left, right = identity.split(" = ")
        assert_close("matrix_calculus", affine, left, lhs, right, rhs)


# --------------------------------------------------- 10. transformations agree
def transformations_agree(fn: Callable, args: Sequence[Any], cotangent: Any = None,
                          batch: Sequence[Sequence[Any]] | None = None) -> None:
    """Eager, jit, vmap (over distinct batch elements), grad-of-jit, jax.checkpoint and scan all give the
    same VJP: :func:`reference.check_transforms` as a law."""
    try:
        check_transforms(fn, args, None if cotangent is None else jax.tree_util.tree_leaves(cotangent), batch=batch)
    except TransformMismatch as e:
        first = e.problems[0]
        raise PropertyViolation("transformations_agree", fn, f"vjp under {first.transform}", [first.got.real],
                                "eager vjp", [first.eager.real], "; ".join(str(p) for p in e.problems)) from None
