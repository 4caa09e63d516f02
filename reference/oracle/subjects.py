"""What is checked: fn's VJP (order 1), or the VJP of its VJP (order 2), and the scalar whose gradient it must be."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle.jaxprs import precision_of, trace
from reference.oracle.programs import jit_or_eager
from reference.oracle.refusals import function_name
from reference.oracle.report import NotDifferentiable, RefusedType, RefusedValue
from reference.oracle.trees import Split, outputs, random_like
from reference.oracle.versions import Float64, Version, to64

SALT = 0x68616E64  # 'hand': data drawn from default_rng(seed) is not the cotangent


@dataclasses.dataclass(frozen=True)
class Subject:
    """The function whose VJP is checked, its reference, and the scalar whose gradient the VJP must be.

    ``truth(version, u)`` returns φ as a function of the leaves (a one-element list) and the round-off of
    one evaluation of it; None means ``φ = Re⟨u, fn⟩`` itself (order 1).
    """

    fn: Callable
    reference: Callable | None
    order: int = 1
    truth: Callable[[Version, list], tuple[Callable, float]] | None = None
    levels: int | None = None  # step levels the differences may try; None: as many as the precision has


def pullback_of(fn: Callable, cotangent: list) -> Callable:
    """``args -> the VJP of fn at args`` for a fixed ``cotangent``: the backward as a function of the
    arguments, to be differentiated again (the cotangent is cast to each output's dtype, so a float64
    copy of the arguments meets a float64 cotangent)."""
    def pullback(*args: Any) -> list:
        split = Split.of(tuple(args))
        out, pull = jax.vjp(outputs(split.over_diff(fn)), *split.diff_leaves())
        return list(pull([jnp.asarray(c, o.dtype) for c, o in zip(cotangent, out, strict=True)]))

    pullback.__name__ = f"vjp({function_name(fn)})"
    return pullback


def _differentiable_once(pullback: Callable, name: str, args: tuple) -> None:
    """Refuses order 2 of a function JAX cannot differentiate even once (a rule that raises when it is)."""
    try:
        try:
            jax.eval_shape(pullback, *args)
        except jax.errors.JAXTypeError:  # branches on values: run it
            pullback(*args)
    except Exception as e:
        raise NotDifferentiable(name, 1, e) from e


# The inner step of order 2 sits well inside the outer one, so that a kink the outer probes straddle shows
# to them as a jump (unchecked), not as a steep slope; in float32 there is no room for that.
INNER_STEP = {64: 1e-3, 32: 0.1, 16: 0.1, 8: 0.1}
# Order 2 differenced in float32 or below (no float64 version) resolves its entries to tens of percent at best:
# a pass there may carry a tolerance up to the entry itself (a sign or a factor of 2 still fails). In float64
# the precision's own bound holds.
LOOSEST_AS_CALLED = 1.0


def order_2_computable(fn: Callable, name: str, args: tuple) -> None:
    """Order 2 differentiates fn itself (it is not lifted): refused where fn computes in 16 bits even on float64
    copies of its inputs, whose differences inside the VJP's would resolve nothing (a false FAIL, or none)."""
    split = Split.of(args)
    split64 = Split.of(jax.tree_util.tree_map(to64, split.rebuild(split.diff_leaves())))
    with Float64():
        closed = trace(outputs(split64.over_diff(fn)), split64.diff_leaves())
    if closed is None:
        return
    own = precision_of(closed, split64.diff_leaves(), closed.out_avals)
    if own.sixteen_bit:
        raise RefusedValue(f"check_vjp: order 2 of {name} is not checked: it computes in {own.name} even on float64 "
                           f"inputs, and order 2 is not lifted to float64 (16-bit differences of its VJP resolve "
                           f"nothing)")


def second_order(fn: Callable, name: str, args: tuple, reference: Callable | None, seed: int) -> Subject:
    """Order 2 as order 1 of ``ψ(args) = vjp(fn, args)(c)`` (a fixed random ``c``), with a cotangent ``u``,
    against the gradient of the true ``Re⟨u, ψ⟩ = D_u Re⟨c, fn(args)⟩``, the directional derivative of
    fn along u taken by finite differences of fn itself: a backward that is right in value but wrong to
    differentiate (a ``stop_gradient``, a ``round``) is caught, because the truth never runs it. This is
    grad-of-grad and the Hessian-vector product; the derivative with respect to ``c`` (a JVP) is
    order 1's adjoint, checked there."""
    split = Split.of(args)
    out = outputs(split.over_diff(fn))(*split.diff_leaves())
    if not out:
        raise RefusedType(f"check_vjp: {name} returns no float or complex output, so there is no VJP to check")
    cotangent = random_like(out, np.random.default_rng([seed, SALT, 2]))
    _differentiable_once(pullback_of(fn, cotangent), name, args)

    def truth(version: Version, u: list) -> tuple[Callable, float]:
        inner = version.split
        x = np.concatenate([np.abs(np.asarray(v)).ravel() for v in inner.diff_leaves()])
        size = np.concatenate([np.abs(np.asarray(v)).ravel() for v in u])
        p = version.precision
        step = INNER_STEP[p.key] * p.step * (float(np.sqrt(np.mean(x * x))) or 1.0) / (
            float(np.sqrt(np.mean(size * size))) or 1.0)
        g = outputs(inner.over_diff(fn))
        with version.context():
            f0 = jit_or_eager(g)(*inner.diff_leaves())  # traced: eager ops on float32 module constants can
            # meet programs cached for float64 (owens_t with x64 switched on here); eager where fn reads values
            noise = 1.5 * p.eps * sum(float(np.sum(np.abs(np.asarray(ci)) * np.abs(np.asarray(o))))
                                      for ci, o in zip(cotangent, f0, strict=True)) / step

        def phi(*xs: Any) -> list:
            def along(t: float) -> jax.Array:
                moved = [xi + t * jnp.asarray(ui, jnp.result_type(xi)) for xi, ui in zip(xs, u, strict=True)]
                terms = [jnp.sum(jnp.real(jnp.asarray(ci, o.dtype) * o)) for ci, o in
                         zip(cotangent, g(*moved), strict=True)]
                return jnp.sum(jnp.stack(terms))

            d1 = (along(step) - along(-step)) / (2 * step)
            d2 = (along(2 * step) - along(-2 * step)) / (4 * step)
            return [(4 * d1 - d2) / 3]

        return phi, noise

    # One level of outer steps: a finer one would come close to the inner step, and see the inner differences
    # straddling a kink as a steep slope instead of a jump.
    return Subject(pullback_of(fn, cotangent), None if reference is None else pullback_of(reference, cotangent),
                   order=2, truth=truth, levels=1)
