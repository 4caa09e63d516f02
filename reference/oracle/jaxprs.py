"""Reading a function's jaxpr: the precision it computes in, its constants, its primitives, its while loops.

The precision is the narrowest float on any path from the inputs. A function called on float64
inputs may still cast to float32 or bfloat16 inside (``x.astype(jnp.float32)``, a mixed-precision
policy). Finite differences must then be taken with that precision's step and tolerance. This
walks the jaxpr of the forward computation, following only the values that depend on the
differentiable inputs (a float32 random draw that does not depend on them is not a loss of
precision), into nested jaxprs: jit, scan, while, cond, remat and the *primal* of a custom_vjp
or custom_jvp (never its backward, whose precision is what the check is about).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle import tolerance
from reference.oracle.sites import CALLS, algorithm_bits, inlined, params_jaxprs
from reference.oracle.tolerance import Precision
from reference.oracle.trees import comparable


def _bits(aval: Any) -> int | None:
    """Mantissa bits of a float (or of a complex number's parts); None for anything else."""
    dtype = getattr(aval, "dtype", None)
    if dtype is None or not jax.dtypes.issubdtype(dtype, np.inexact):
        return None
    if jax.dtypes.issubdtype(dtype, np.complexfloating):
        return int(np.finfo(dtype).nmant)
    return int(jax.dtypes.finfo(dtype).nmant)


@dataclasses.dataclass
class _Found:
    """What a walk of a trace finds on the paths from the inputs."""

    bits: int  # the fewest mantissa bits of a float there
    loops: int = 0  # while loops there (more iterations may move the result: a solver, or a fixed count)
    stops: int = 0  # those that stop when a test on the values says so (each probe's cost unknown)


Marks = list[int | None]  # per variable, the fewest mantissa bits on a path from the inputs to it; None: no path


def _walk(jaxpr: Any, dependent: Marks, found: _Found) -> Marks:
    """Marks the variables that depend on the ``dependent`` invars with the narrowest float on the way (an integer
    computed from a float16 keeps its 10 bits); returns the outvars' marks."""
    marked = {v: b for v, b in zip(jaxpr.invars, dependent, strict=True) if b is not None}

    def mark(v: Any) -> int | None:
        return None if hasattr(v, "val") else marked.get(v)  # literals never depend on the inputs

    for eqn in jaxpr.eqns:
        ins = [mark(v) for v in eqn.invars]
        if all(b is None for b in ins):
            continue
        inner = [(n, j) for n, j in params_jaxprs(eqn.params) if n not in ("fwd_jaxpr_thunk", "bwd", "jvp_jaxpr_fun")]
        outs = _walk_nested(eqn, inner, ins, found)
        for v, b in zip(eqn.outvars, outs, strict=True):
            if b is not None:
                bits = _bits(v.aval)
                if bits is not None and eqn.primitive.name == "reduce_precision":  # a float32 rounded to fewer bits
                    bits = min(bits, int(eqn.params.get("mantissa_bits", bits)))
                operands = algorithm_bits(eqn)  # a dot whose algorithm rounds its operands
                if bits is not None and operands is not None:
                    bits = min(bits, operands)
                marked[v] = b if bits is None else min(b, bits)
                found.bits = min(found.bits, marked[v])
    return [mark(v) for v in jaxpr.outvars]


def _narrowest(marks: Sequence[int | None]) -> int | None:
    return min((b for b in marks if b is not None), default=None)


def _joined(a: Marks, b: Marks) -> Marks:
    """Per variable, the narrower of two marks (a loop's carry after one more iteration)."""
    return [_narrowest([x, y]) for x, y in zip(a, b, strict=True)]


# Primitives that run their one jaxpr once on their own operands (sites.CALLS), and shard_map, which runs it
# on shards of them: an output depends on what that jaxpr's output does.
_CALLS = CALLS | {"shard_map"}


def _leading(same: list[bool]) -> int | None:
    """How many entries lead as True, where all the rest are False; else None."""
    k = same.index(False) if False in same else len(same)
    return None if any(same[k:]) else k


def _same_shapes(outer: Sequence[Any], inner: Sequence[Any]) -> list[bool]:
    return [getattr(a, "aval", None) is not None and getattr(a.aval, "shape", None) == getattr(b.aval, "shape", ())
            for a, b in zip(outer, inner, strict=True)]


def scan_counts(eqn: Any, body: Any) -> tuple[int, int] | None:
    """A scan's (consts, carry), read from its types rather than its params (JAX 0.11 dropped num_consts and
    num_carry): xs and ys have the leading axis that their slices in the body lack; consts and carry do not.
    None where the types do not read that way."""
    if len(body.invars) != len(eqn.invars) or len(body.outvars) != len(eqn.outvars):
        return None
    fixed = _leading(_same_shapes(eqn.invars, body.invars))
    carry = _leading(_same_shapes(eqn.outvars, body.outvars))
    if fixed is None or carry is None or carry > fixed:
        return None
    consts = fixed - carry
    if not all(_same_shapes(body.invars[consts:fixed], body.outvars[:carry])):
        return None
    return consts, carry


def _walk_nested(eqn: Any, inner: list, ins: Marks, found: _Found) -> Marks:
    """The marks of an equation's outputs. Loops and branches have their counts read from their jaxprs' arities
    and types, never from params by name: a primitive or layout it does not know takes the last, conservative
    path, as does a primitive without a jaxpr (each output marked with the narrowest of its inputs)."""
    name = eqn.primitive.name
    kernel = inlined(eqn) if name == "pallas_call" else None  # a kernel, as JAX's interpreter runs it
    if kernel is not None:
        return _walk(kernel.jaxpr, ins, found)
    by_name = dict(inner)
    counts = scan_counts(eqn, by_name["jaxpr"]) if name == "scan" and len(inner) == 1 and "jaxpr" in by_name else None
    if counts is not None:
        body, (consts, carry) = by_name["jaxpr"], counts
        flags = list(ins)
        while True:  # a carry is marked once any iteration marks it; the marks only narrow, so this ends
            outs = _walk(body, flags, found)
            new = _joined(flags[consts:consts + carry], outs[:carry])
            if new == flags[consts:consts + carry]:
                return outs
            flags[consts:consts + carry] = new
    body, cond = by_name.get("body_jaxpr"), by_name.get("cond_jaxpr")
    if name == "while" and len(inner) == 2 and body is not None and cond is not None:
        n = len(body.outvars)
        bn, cn = len(body.invars) - n, len(cond.invars) - n
        if min(bn, cn) >= 0 and cn + bn + n == len(ins) and len(eqn.outvars) == n:
            body_consts, state = ins[cn:cn + bn], list(ins[cn + bn:])
            while True:  # as for a scan's carry
                new = _joined(state, _walk(body, body_consts + state, found))
                if new == state:
                    break
                state = new
            found.loops += 1
            if _walk(cond, ins[:cn] + state, _Found(found.bits))[0] is not None:  # it stops when a test on the
                found.stops += 1  # values says so
            return state
    if name == "while":  # a layout not read: counted as a loop that stops on the values
        found.loops += 1
        found.stops += 1
    branches = [b for n, b in inner if n == "branches"]
    if name == "cond" and branches and len(branches) == len(inner) and all(
            len(b.invars) == len(ins) - 1 and len(b.outvars) == len(eqn.outvars) for b in branches):
        branch_outs = [_walk(branch, ins[1:], found) for branch in branches]  # ins[0] is the index
        return [_narrowest(marks) for marks in zip(*branch_outs, strict=True)]
    if name in _CALLS and len(inner) == 1 and len(inner[0][1].invars) == len(ins) and \
            len(inner[0][1].outvars) == len(eqn.outvars):
        return _walk(inner[0][1], ins, found)
    narrowest = min(b for b in ins if b is not None)  # called where one is
    for _, sub in inner:  # anything else: every input may reach every output
        within = _Found(narrowest)  # the narrowest float inside, on paths from these inputs alone
        _walk(sub, [narrowest] * len(sub.invars), within)
        found.loops, found.stops = found.loops + within.loops, found.stops + within.stops
        narrowest = within.bits
    found.bits = min(found.bits, narrowest)
    return [narrowest] * len(eqn.outvars)


def trace(fn: Callable, leaves: Sequence[Any]) -> Any:
    """``jax.make_jaxpr(fn)(*leaves)``, or None for a function that cannot be traced (it reads values)."""
    try:
        return jax.make_jaxpr(fn)(*leaves)
    except Exception:  # an untraceable function: the caller falls back to running it
        return None


def constants(closed: Any) -> list:
    """Every constant a trace baked in: its consts and the literals of its equations, nested jaxprs too.
    Two traces of a deterministic function have the same; Python-side randomness shows here."""
    found = [comparable(c) for c in closed.consts]

    def walk(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            found.extend(comparable(v.val) for v in eqn.invars if hasattr(v, "val"))
            for _, inner in params_jaxprs(eqn.params):
                walk(inner)
    walk(closed.jaxpr)
    return found


def primitives(closed: Any) -> set[str]:
    """The names of the primitives a trace applies, in nested jaxprs too (``"random_gamma"``, ``"while"``)."""
    found: set[str] = set()

    def walk(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            found.add(eqn.primitive.name)
            for _, inner in params_jaxprs(eqn.params):
                walk(inner)
    walk(closed.jaxpr)
    return found


def narrowest_float(closed: Any) -> int:
    """The fewest mantissa bits of any float (or complex part) that depends on the inputs of a trace:
    52 for float64, 23 for float32, 10 for float16, 7 for bfloat16."""
    return _walk_all(closed).bits


def iterative(closed: Any) -> bool:
    """Whether a while loop runs on values that depend on the inputs (an iterative solver, a series summed
    to convergence): then fn stops at its own tolerance, and its differences carry that error."""
    return closed is not None and _walk_all(closed).loops > 0


def stops_on_values(closed: Any) -> bool:
    """Whether a while loop on the input path stops when a test on the values says so (a solver to a tolerance),
    not after a count: vmapped, it runs until every lane stops."""
    return closed is not None and _walk_all(closed).stops > 0


def _walk_all(closed: Any, inputs: bool = True) -> _Found:
    """What a walk from every input finds; its inputs' own dtypes counted where ``inputs``."""
    return _walked(closed, inputs)[0]


def reached(closed: Any) -> list[bool]:
    """Per output of a trace, whether any of its inputs reaches it (one made of constants alone is not)."""
    return [m is not None for m in _walked(closed, inputs=False)[1]]


def _walked(closed: Any, inputs: bool) -> tuple[_Found, Marks]:
    """What a walk from every input finds, and the outputs' marks."""
    bits = [(_bits(v.aval) or 52) if inputs else 52 for v in closed.jaxpr.invars]
    found = _Found(min(bits, default=52))
    return found, _walk(closed.jaxpr, list(bits), found)


def precision_of(closed: Any, leaves: Sequence[Any], outs: Sequence[Any]) -> Precision:
    """What fn computes in: the narrowest float its trace computes from the inputs, and its outputs'. The inputs'
    own dtypes count entry by entry (:func:`leaf_precisions`), not here: a bfloat16 activation cast to float32
    beside float32 weights is a float32 computation, differenced as one (a bfloat16 step and tolerance for the
    weights passed their gradients dropped). Untraced, the inputs count too."""
    return min(output_precisions(closed, leaves, outs), key=lambda p: p.key)


def output_precisions(closed: Any, leaves: Sequence[Any], outs: Sequence[Any]) -> list[Precision]:
    """Per output, what :func:`precision_of` says of it alone: its dtype, and the narrowest float on its paths from
    the inputs (a float16 auxiliary output leaves a float32 one float32). Untraced, all alike, the inputs counted."""
    if closed is None:
        narrowest = min([tolerance.of_dtype(jnp.result_type(x)) for x in [*outs, *leaves]], key=lambda p: p.key)
        return [narrowest] * len(outs)
    marks = _walked(closed, inputs=False)[1]
    return [min(tolerance.of_dtype(jnp.result_type(x)), tolerance.of_mantissa(b if b is not None else 52),
                key=lambda p: p.key) for x, b in zip(outs, marks, strict=True)]
