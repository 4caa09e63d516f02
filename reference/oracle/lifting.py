"""The lifted function: fn's own computation, traced as called, with every float raised to float64.

A function that casts inside (``x.astype(jnp.bfloat16)``, a float32 compute policy, a Pallas kernel's fixed
``out_shape``) computes in that dtype even on float64 inputs, and its differences carry that dtype's error.
Lifting evaluates the *same* jaxpr with each floating value in float64 (complex in complex128): a cast to a
float becomes a cast to float64, float constants and literals are widened, ``reduce_precision`` is dropped, and
a product's preferred element type is float64. The jaxpr is traced once, at the call's dtypes, so code that
reads its dtype keeps the call's constants (``finfo(float32).eps``), and a random draw keeps the call's bits
(they become a float by a bit cast, done at the call's width and then widened).

The VJP is lifted the same way: the jaxpr of ``jax.vjp(fn)`` applied to a cotangent, traced at the call's
dtypes (the rule's backward is traced into it), evaluated lifted. The lifted function is a ``custom_vjp`` of
the two, so the rule is judged on its float64 self. Jit, remat and custom rules' primals are evaluated in
line; scans, while loops and conds are rebuilt with ``jax.lax``; a linear solve is its solve jaxpr; a debug
callback is left out; a ``pallas_call`` is replaced by JAX's own interpreter of its kernel (a scan over the grid
of plain operations), then lifted. What cannot be lifted (a host callback that answers, a primitive with a jaxpr
of a kind not listed) is said by :class:`NotLifted`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from reference.oracle import kernels
from reference.oracle.jaxprs import params_jaxprs, scan_counts
from reference.oracle.sites import algorithm_bits, closed_jaxpr, inlined
from reference.oracle.versions import Float64

# Params that name the dtype an operation makes: a float there is made float64.
_DTYPE_PARAMS = ("new_dtype", "dtype", "preferred_element_type")
# Errors binding a primitive at float64 can raise: one whose rule insists on its traced dtypes.
_BIND_ERRORS = (TypeError, ValueError, NotImplementedError)


_ENABLED = contextvars.ContextVar("handgrad_lifting", default=True)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block nothing is lifted: code that computes narrower than its inputs is checked as called, at
    the precision it computes in (the path of code that cannot be lifted, a host callback's)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


class Unliftable(Exception):
    """An equation lifting cannot raise to float64: ``primitive`` and why."""

    def __init__(self, primitive: str, why: str) -> None:
        super().__init__(f"{primitive}: {why}")
        self.primitive, self.why = primitive, why


@dataclasses.dataclass(frozen=True)
class Lifted:
    """``fn`` of float64 leaves, computing in float64 throughout, with its rule's VJP lifted the same way."""

    fn: Callable


@dataclasses.dataclass(frozen=True)
class NotLifted:
    """Why fn has no lifted version: the untraceable call or the equation that stopped it."""

    why: str


def wide(dtype: Any) -> Any:
    """float64 for a real float, complex128 for a complex one, the dtype itself otherwise."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return np.dtype(np.complex128)
    if jnp.issubdtype(dtype, jnp.floating):
        return np.dtype(np.float64)
    return dtype


def _widened(x: Any, dtype: Any) -> Any:
    """A value of the traced ``dtype``, in its wide dtype; integers and booleans keep theirs (under x64, a
    Python int would otherwise become an int64 beside the trace's int32)."""
    return jnp.asarray(x, wide(dtype))


def lift(fn: Callable, leaves: Sequence[Any], context: Callable[[], Any]) -> Lifted | NotLifted:
    """fn (of its differentiable leaves, returning a list) lifted to float64, from traces made at ``leaves``'
    dtypes inside ``context`` (the call's x64 setting); or why it cannot be."""
    if not _ENABLED.get():
        return NotLifted("lifting is disabled (reference.oracle.lifting.disabled())")
    leaves = list(leaves)
    with context():
        try:
            forward = jax.make_jaxpr(fn)(*leaves)
            cotangents = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in forward.out_avals]
            backward = jax.make_jaxpr(lambda xs, ct: list(jax.vjp(fn, *xs)[1](ct)))(leaves, cotangents)
        except (jax.errors.JAXTypeError, *_BIND_ERRORS) as e:  # it reads values, or JAX cannot differentiate it
            return NotLifted(f"it cannot be traced at the call's dtypes ({type(e).__name__})")

    @jax.custom_vjp
    def lifted(*xs: Any) -> list:
        return evaluate(forward, xs)

    def lifted_fwd(*xs: Any) -> tuple[list, tuple]:
        return evaluate(forward, xs), xs

    def lifted_bwd(xs: tuple, ct: list) -> tuple:
        return tuple(evaluate(backward, [*xs, *ct]))

    lifted.defvjp(lifted_fwd, lifted_bwd)
    probe = [jax.ShapeDtypeStruct(np.shape(x), wide(jnp.result_type(x))) for x in leaves]
    with Float64():
        try:
            jax.eval_shape(lambda xs, ct: jax.vjp(lifted, *xs)[1](ct), probe,
                           [jax.ShapeDtypeStruct(a.shape, wide(a.dtype)) for a in forward.out_avals])
        except Unliftable as e:
            return NotLifted(f"its {e.primitive} cannot be raised to float64 ({e.why})")
        except Exception as e:  # whatever a rule raises at float64 (it checks its dtypes): today's path, and why
            return NotLifted(f"raised to float64 it does not trace ({type(e).__name__}: {str(e)[:120]})")
    return Lifted(lifted)


def evaluate(closed: Any, args: Sequence[Any]) -> list:
    """A closed jaxpr evaluated with every float raised to float64 (call inside x64)."""
    consts = [_widened(c, jnp.result_type(c)) for c in closed.consts]
    return _evaluate(closed.jaxpr, consts, list(args))


def _evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list:
    env: dict = {}

    def read(v: Any) -> Any:
        return _widened(v.val, getattr(v.aval, "dtype", None)) if isinstance(v, Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        with eqn.ctx.manager:
            outs = _equation(eqn, values)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _equation(eqn: Any, values: list) -> list:
    """One equation, lifted: its outputs as a list."""
    name = eqn.primitive.name
    if name == "pallas_call":  # as JAX's interpreter runs it, then lifted
        try:
            return evaluate(kernels.interpreted(eqn), values)
        except kernels.Uninterpretable as e:
            raise Unliftable(name, e.why) from e
    inner = inlined(eqn)
    if inner is not None:
        return evaluate(inner, values)
    if name in _LOOPS:
        return _LOOPS[name](eqn, values)
    if name == "reduce_precision":  # a float rounded to fewer bits: the lifted computation keeps them all
        return values
    if name == "bitcast_convert_type":  # bits are the call's: cast at its widths, then widened
        narrow = [jnp.asarray(x, v.aval.dtype) for x, v in zip(values, eqn.invars, strict=True)]
        out = eqn.primitive.bind(*narrow, **eqn.params)
        return [_widened(out, eqn.outvars[0].aval.dtype)]
    if name == "debug_callback" and not eqn.outvars:  # jax.debug.callback: logging, no value of fn's
        return []
    if "callback" in name:
        raise Unliftable(name, "a host callback answers in the dtypes it was traced with")
    if params_jaxprs(eqn.params) and name not in _REDUCERS:
        raise Unliftable(name, "a primitive holding a jaxpr that lifting does not know how to rebuild")
    params = {k: (wide(v) if k in _DTYPE_PARAMS and v is not None else v) for k, v in eqn.params.items()}
    if algorithm_bits(eqn) is not None:  # an algorithm names the call's formats: the lifted dot keeps every bit
        params["precision"] = None
    if name in _REDUCERS:
        params = _reducer_params(eqn, values, params)
    try:
        outs = eqn.primitive.bind(*values, **params)
    except _BIND_ERRORS as e:
        raise Unliftable(name, f"it does not bind at float64 ({type(e).__name__})") from e
    return list(outs) if eqn.primitive.multiple_results else [outs]


# ---------------------------------------------------------------- loops and branches, rebuilt with jax.lax
def _scan(eqn: Any, values: list) -> list:
    body = eqn.params["jaxpr"]
    counts = scan_counts(eqn, body.jaxpr)
    if counts is None:
        raise Unliftable("scan", "its layout does not read as consts, carry and xs")
    consts, carry = counts
    fixed, init, xs = values[:consts], values[consts:consts + carry], values[consts + carry:]

    def step(c: list, x: list) -> tuple[list, list]:
        outs = evaluate(body, [*fixed, *c, *x])
        return outs[:carry], outs[carry:]

    final, ys = jax.lax.scan(step, init, xs, length=eqn.params["length"], reverse=eqn.params["reverse"],
                             unroll=eqn.params.get("unroll", 1))
    return [*final, *ys]


def _while(eqn: Any, values: list) -> list:
    cond, body = eqn.params["cond_jaxpr"], eqn.params["body_jaxpr"]
    n = len(body.jaxpr.outvars)
    cn, bn = len(cond.jaxpr.invars) - n, len(body.jaxpr.invars) - n
    if min(cn, bn) < 0 or cn + bn + n != len(values):
        raise Unliftable("while", "its layout does not read as consts and a carry")
    cconsts, bconsts, init = values[:cn], values[cn:cn + bn], values[cn + bn:]
    return jax.lax.while_loop(lambda s: evaluate(cond, [*cconsts, *s])[0],
                              lambda s: evaluate(body, [*bconsts, *s]), init)


def _cond(eqn: Any, values: list) -> list:
    branches = [functools.partial(lambda b, *ops: evaluate(b, ops), b) for b in eqn.params["branches"]]
    return list(jax.lax.switch(values[0], branches, *values[1:]))


def _linear_solve(eqn: Any, values: list) -> list:
    """``custom_linear_solve`` (``jnp.linalg.solve``, lineax): its value is its ``solve`` jaxpr at its own constants
    and the right-hand side, as JAX evaluates it (the other jaxprs only differentiate it, and fn's VJP is traced)."""
    lengths, jaxprs = eqn.params.get("const_lengths"), eqn.params.get("jaxprs")
    fields = list(getattr(lengths, "_fields", ()))
    solve = closed_jaxpr(getattr(jaxprs, "solve", None))
    if "solve" not in fields or solve is None:
        raise Unliftable("custom_linear_solve", "its params do not read as constants per jaxpr and a solve")
    start = sum(getattr(lengths, f) for f in fields[:fields.index("solve")])
    return evaluate(solve, [*values[start:start + lengths.solve], *values[sum(lengths):]])


_LOOPS: dict[str, Callable[[Any, list], list]] = {"scan": _scan, "while": _while, "cond": _cond,
                                                  "custom_linear_solve": _linear_solve}

# Primitives whose jaxpr is a scalar combiner built from their dtype (a scatter's update, a reduction's body):
# rebuilt at float64 by JAX itself when bound through the public function.
_REDUCERS = frozenset({"scatter-add", "scatter_add", "scatter-mul", "scatter_mul", "scatter-min", "scatter_min",
                       "scatter-max", "scatter_max", "scatter", "scatter_sub", "scatter-sub"})


def _reducer_params(eqn: Any, values: list, params: dict) -> dict:
    """A scatter's ``update_jaxpr`` is only used to lower the generic scatter; it is rebuilt at the operand's
    dtype where it is there."""
    if params.get("update_jaxpr") is None:
        return params
    combine = {"scatter-add": jax.lax.add, "scatter_add": jax.lax.add, "scatter-mul": jax.lax.mul,
               "scatter_mul": jax.lax.mul, "scatter-min": jax.lax.min, "scatter_min": jax.lax.min,
               "scatter-max": jax.lax.max, "scatter_max": jax.lax.max, "scatter-sub": jax.lax.sub,
               "scatter_sub": jax.lax.sub}.get(eqn.primitive.name, lambda x, y: y)
    scalar = jax.ShapeDtypeStruct((), jnp.result_type(values[0]))
    closed = jax.make_jaxpr(combine)(scalar, scalar)
    return {**params, "update_jaxpr": closed.jaxpr, "update_consts": tuple(closed.consts)}
