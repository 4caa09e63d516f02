"""A function that iterates to a tolerance, run for more steps: its stopping error, measured.

A while loop that stops when its values say so (cg, a fixed point, Newton, Sinkhorn) is differenced
along its stopping error, while an implicit rule gives the derivative of the exact solution. No
leniency is assumed from the loop's presence. Instead :func:`tightened` rewrites fn's trace so that
every while loop, after it stops, runs as many steps again (at least MIN_EXTRA; an extra step that
is not finite is dropped). Then:

* where the longer run's outputs are within CONVERGED of the call's (:func:`converged`), the loop is a
  solver that converges: the differences are taken of the longer run, and each probe's uncertainty
  includes how far the two runs' changes differ there (:class:`reference.oracle.differences.Differences`):
  its stopping error, measured at that probe, as round-off is;
* elsewhere (a loop of a fixed count, whose result more steps change) fn is what it computes: its
  differences carry no stopping error to excuse, and are judged as any function's.

A loop that converged to the last ulp earns nothing: its two runs agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Literal

from reference.oracle.jaxprs import primitives, trace
from reference.oracle.programs import jit_or_eager
from reference.oracle.report import Loops
from reference.oracle.sites import inlined

MIN_EXTRA = 8  # extra steps at least, for a loop that stopped after fewer
MAX_EXTRA = 10_000  # and at most
# The longer run's outputs within this fraction of each output's largest entry: a solver that converges. A loop of a
# fixed count changes its result by its order when run twice as long.
CONVERGED = 0.05


class NotRewritable(Exception):
    """fn's trace holds a while loop where it cannot be rewritten (inside a primitive with an open jaxpr)."""


@dataclasses.dataclass(frozen=True)
class Tightened:
    """fn with every while loop run longer, or why it could not be."""

    fn: Callable | None
    why_not: str | None = None


def tightened(fn: Callable, leaves: Sequence[Any]) -> Tightened:
    """fn (of ``leaves``, returning a list of arrays) with every while loop on any path run MIN_EXTRA steps or as
    many again as it took, whichever is more, after it stops; ``Tightened(None, why)`` where it cannot be."""
    closed = trace(fn, leaves)
    if closed is None:
        return Tightened(None, "it cannot be traced (it reads values)")
    if "while" not in primitives(closed):
        return Tightened(None, "it has no while loop")

    def longer(*xs: Any) -> list:
        return _evaluate(closed.jaxpr, closed.consts, list(xs))

    try:
        jax.make_jaxpr(longer)(*leaves)  # a loop out of reach, or a primitive that cannot be bound again, says so here
    except NotRewritable as e:
        return Tightened(None, str(e))
    return Tightened(longer)


def plan(fn: Callable, leaves: Sequence[Any]) -> tuple[Loops, Callable | None, str]:
    """For fn with while loops on the input path: how they are treated, the longer run to difference (where
    they converge), and a sentence for the report."""
    longer = tightened(fn, leaves)
    if longer.fn is None:
        return Loops.UNREACHABLE, None, (f"its while loops could not be run longer ({longer.why_not}), so no "
                                         f"stopping error is excused")
    if not converged(jit_or_eager(fn)(*leaves), jit_or_eager(longer.fn)(*leaves)):
        return Loops.FIXED, None, (f"its while loops run longer change its outputs by more than {CONVERGED:.0%} (a "
                                   f"loop of a fixed count): judged as computed, no stopping error excused")
    return Loops.MEASURED, longer.fn, ("its while loops converge: differences of a run with twice the steps, each "
                                       "probe's uncertainty including how far the two runs' changes differ")


def stopping_error(version: Any) -> list[np.ndarray] | None:
    """Per output entry, how far ``version`` (a :class:`Version`) moves when its while loops run longer: what its
    own stopping error may reach. None where they cannot be run longer or do not converge."""
    leaves = version.split.diff_leaves()
    with version.context():
        longer = tightened(version.fn, leaves)
        if longer.fn is None:
            return None
        out, more = jit_or_eager(version.fn)(*leaves), jit_or_eager(longer.fn)(*leaves)
    if not converged(out, more):
        return None
    return [np.abs(np.asarray(m).astype(np.complex128) - np.asarray(o).astype(np.complex128))
            for o, m in zip(out, more, strict=True)]


def vjp_stopping_error(version: Any, cotangent: list) -> list[np.ndarray] | None:
    """Per VJP leaf, how ``version``'s VJP for ``cotangent`` moves when the while loops of its forward and
    backward run longer (an implicit rule's linear solve stops at a tolerance too). None where they cannot be run
    longer or do not converge."""
    leaves = version.split.diff_leaves()

    def pulled(*xs: Any) -> list:
        return list(jax.vjp(version.fn, *xs)[1](list(cotangent)))

    with version.context():
        longer = tightened(pulled, leaves)
        if longer.fn is None:
            return None
        now, more = jit_or_eager(pulled)(*leaves), jit_or_eager(longer.fn)(*leaves)
    if not converged(now, more):
        return None
    return [np.asarray(m) - np.asarray(o) for o, m in zip(now, more, strict=True)]


def converged(out: Sequence[Any], longer: Sequence[Any]) -> bool:
    """Whether the longer run's outputs are within CONVERGED of the call's, relative to each output's largest
    entry: a solver that converges, not a loop of a fixed count."""
    for o, p in zip(out, longer, strict=True):
        o, p = np.asarray(o).astype(np.complex128), np.asarray(p).astype(np.complex128)
        scale = float(np.max(np.abs(o), initial=0.0))
        with np.errstate(invalid="ignore"):
            if not np.all((np.abs(p - o) <= CONVERGED * scale) | (p == o)):
                return False
    return True


# ---------------------------------------------------------------- the rewrite
def _evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list:
    env: dict = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]  # noqa: E731
    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        inner = inlined(eqn)
        if eqn.primitive.name == "while":
            outs = _longer_while(eqn, values)
        elif inner is not None:
            outs = _evaluate(inner.jaxpr, inner.consts, values)
        else:
            params = _rewrite_params(eqn) if _holds_while(eqn.params) else eqn.params
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(params))
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _longer_while(eqn: Any, values: list) -> list:
    """The loop as it runs (counting its steps), then MIN_EXTRA steps or as many again, never a non-finite one."""
    cond, body = eqn.params["cond_jaxpr"], eqn.params["body_jaxpr"]
    if getattr(cond.jaxpr.outvars[0].aval, "shape", ()) != ():  # a batched predicate (JAX 0.12, under vmap)
        raise NotRewritable("a while loop whose predicate is batched (one per lane of a vmap)")
    n = len(body.jaxpr.outvars)
    bn, cn = len(body.jaxpr.invars) - n, len(cond.jaxpr.invars) - n
    cond_consts, body_consts, init = values[:cn], values[cn:cn + bn], values[cn + bn:]

    def test(state: tuple) -> jax.Array:
        return _evaluate(cond.jaxpr, cond.consts, [*cond_consts, *state[0]])[0]

    def step(carry: list) -> list:
        return _evaluate(body.jaxpr, body.consts, [*body_consts, *carry])

    carry, steps = jax.lax.while_loop(test, lambda s: (step(s[0]), s[1] + 1), (list(init), jnp.int32(0)))
    limit = jnp.clip(steps, MIN_EXTRA, MAX_EXTRA)

    def extra(s: tuple) -> tuple:
        new = step(s[0])
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(v)) for v in new if jnp.issubdtype(v.dtype, jnp.inexact)]
                                     or [True]))
        return [jnp.where(finite, v, old) for v, old in zip(new, s[0], strict=True)], s[1] + 1

    carry, _ = jax.lax.while_loop(lambda s: s[1] < limit, extra, (carry, jnp.int32(0)))
    return list(carry)


def _holds_while(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_while(v) for v in value.values())
    if isinstance(value, tuple | list):
        return any(_holds_while(v) for v in value)
    if isinstance(value, ClosedJaxpr):
        return "while" in primitives(value)
    jaxpr = getattr(value, "eqns", None)
    return jaxpr is not None and any(e.primitive.name == "while" or _holds_while(e.params) for e in value.eqns)


def _rewrite_params(eqn: Any) -> dict:
    """An equation's params with each closed jaxpr that holds a while loop rewritten to the same signature."""
    return {k: _rewrite_value(v, eqn.primitive.name) for k, v in eqn.params.items()}


def _rewrite_value(value: Any, primitive: str) -> Any:
    if not _holds_while(value):
        return value
    if isinstance(value, ClosedJaxpr):
        avals = [_struct(v.aval) for v in value.jaxpr.invars]
        return jax.make_jaxpr(lambda *xs: _evaluate(value.jaxpr, value.consts, list(xs)))(*avals)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple of jaxprs (custom_linear_solve)
        return type(value)(*(_rewrite_value(v, primitive) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(_rewrite_value(v, primitive) for v in value)
    raise NotRewritable(f"a while loop inside {primitive}, whose jaxpr is not a closed one")


def _struct(aval: Any) -> jax.ShapeDtypeStruct:
    """An array's abstract value as a ShapeDtypeStruct, its weak type kept where JAX records one."""
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=bool(getattr(aval, "weak_type", False)))
