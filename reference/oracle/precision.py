"""Which function the numbers come from, and the precision it really computes in.

If ``fn`` run on float64 copies of the inputs computes in float64 and gives the call's outputs
(within what rounding in the call's forward explains), the rule's mathematics is checked
there, sharply, and the call's own VJP is compared entry by entry with that float64 VJP.
Otherwise (random draws in the default dtype, internal casts, dtype-dependent code)
everything is checked on the call as made, at the precision it really computes in.

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
from reference.oracle.differences import jit_or_eager
from reference.oracle.rounding import CALLS, ROUNDING_FACTOR, forward_rounding
from reference.oracle.tolerance import Precision
from reference.oracle.trees import Flat, Split, comparable
from reference.oracle.versions import Version, to64

# The float64 version is the same function if each of its outputs is the call's within this many ulps of the call's
# precision (relative to the entry itself), or within what rounding in the call's forward explains.
SAME_FUNCTION_ULPS = 1000
SAME_FUNCTION_REL = 2.0**-6  # and never more than this, relative (1000 ulps of float16 are 100%)
SAME_FUNCTION_CAP = 0.25  # and never when they are a quarter apart: that is another function


def _bits(aval: Any) -> int | None:
    """Mantissa bits of a float (or of a complex number's parts); None for anything else."""
    dtype = getattr(aval, "dtype", None)
    if dtype is None or not jax.dtypes.issubdtype(dtype, np.inexact):
        return None
    if jax.dtypes.issubdtype(dtype, np.complexfloating):
        return int(np.finfo(dtype).nmant)
    return int(jax.dtypes.finfo(dtype).nmant)


def _jaxprs(params: dict) -> list[tuple[str, Any]]:
    found = []
    for name, value in params.items():
        for v in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(v, "jaxpr", v)
            if hasattr(inner, "eqns") and hasattr(inner, "invars"):
                found.append((name, inner))
    return found


@dataclasses.dataclass
class _Found:
    """What a walk of a trace finds on the paths from the inputs."""

    bits: int  # the fewest mantissa bits of a float there
    loops: int = 0  # while loops there: iterations that stop when a test on the values says so


def _walk(jaxpr: Any, dependent: Sequence[bool], found: _Found) -> list[bool]:
    """Marks the variables that depend on the ``dependent`` invars; returns the outvars' marks."""
    marked = {v for v, d in zip(jaxpr.invars, dependent, strict=True) if d}

    def is_marked(v: Any) -> bool:
        return not hasattr(v, "val") and v in marked  # literals never depend on the inputs

    for eqn in jaxpr.eqns:
        ins = [is_marked(v) for v in eqn.invars]
        if not any(ins):
            continue
        inner = [(n, j) for n, j in _jaxprs(eqn.params) if n not in ("fwd_jaxpr_thunk", "bwd", "jvp_jaxpr_fun")]
        outs = _walk_nested(eqn, inner, ins, found)
        for v, d in zip(eqn.outvars, outs, strict=True):
            if d:
                marked.add(v)
                bits = _bits(v.aval)
                if bits is not None and eqn.primitive.name == "reduce_precision":  # a float32 rounded to fewer bits
                    bits = min(bits, int(eqn.params.get("mantissa_bits", bits)))
                if bits is not None:
                    found.bits = min(found.bits, bits)
    return [is_marked(v) for v in jaxpr.outvars]


# Primitives that run their one jaxpr once on their own operands (rounding.CALLS), and shard_map, which runs it
# on shards of them: an output depends on what that jaxpr's output does.
_CALLS = CALLS | {"shard_map"}


def _leading(same: list[bool]) -> int | None:
    """How many entries lead as True, where all the rest are False; else None."""
    k = same.index(False) if False in same else len(same)
    return None if any(same[k:]) else k


def _same_shapes(outer: Sequence[Any], inner: Sequence[Any]) -> list[bool]:
    return [getattr(a, "aval", None) is not None and getattr(a.aval, "shape", None) == getattr(b.aval, "shape", ())
            for a, b in zip(outer, inner, strict=True)]


def _scan_counts(eqn: Any, body: Any) -> tuple[int, int] | None:
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


def _walk_nested(eqn: Any, inner: list, ins: list[bool], found: _Found) -> list[bool]:
    """The marks of an equation's outputs. Loops and branches have their counts read from their jaxprs' arities
    and types, never from params by name: a primitive or layout it does not know takes the last, conservative
    path."""
    name = eqn.primitive.name
    by_name = dict(inner)
    counts = _scan_counts(eqn, by_name["jaxpr"]) if name == "scan" and len(inner) == 1 and "jaxpr" in by_name else None
    if counts is not None:
        body, (consts, carry) = by_name["jaxpr"], counts
        flags = list(ins)
        for _ in range(carry + 1):  # a carry becomes dependent once any iteration makes it so
            outs = _walk(body, flags, found)
            new = [a or b for a, b in zip(flags[consts:consts + carry], outs[:carry], strict=True)]
            if new == flags[consts:consts + carry]:
                return outs
            flags[consts:consts + carry] = new
        return outs
    if name == "while":
        found.loops += 1  # whatever its layout: a loop that stops when a test on the values says so
    body, cond = by_name.get("body_jaxpr"), by_name.get("cond_jaxpr")
    if name == "while" and len(inner) == 2 and body is not None and cond is not None:
        n = len(body.outvars)
        bn, cn = len(body.invars) - n, len(cond.invars) - n
        if min(bn, cn) >= 0 and cn + bn + n == len(ins) and len(eqn.outvars) == n:
            body_consts, state = ins[cn:cn + bn], list(ins[cn + bn:])
            for _ in range(n + 1):  # a carry becomes dependent once any iteration makes it so
                outs = _walk(body, body_consts + state, found)
                new = [a or b for a, b in zip(state, outs, strict=True)]
                if new == state:
                    break
                state = new
            return state
    branches = [b for n, b in inner if n == "branches"]
    if name == "cond" and branches and len(branches) == len(inner) and all(
            len(b.invars) == len(ins) - 1 and len(b.outvars) == len(eqn.outvars) for b in branches):
        branch_outs = [_walk(branch, ins[1:], found) for branch in branches]  # ins[0] is the index
        return [any(flags) for flags in zip(*branch_outs, strict=True)]
    if name in _CALLS and len(inner) == 1 and len(inner[0][1].invars) == len(ins) and \
            len(inner[0][1].outvars) == len(eqn.outvars):
        return _walk(inner[0][1], ins, found)
    for _, sub in inner:  # anything else: every input may reach every output
        _walk(sub, [True] * len(sub.invars), found)
    return [True] * len(eqn.outvars)


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
            for _, inner in _jaxprs(eqn.params):
                walk(inner)
    walk(closed.jaxpr)
    return found


def primitives(closed: Any) -> set[str]:
    """The names of the primitives a trace applies, in nested jaxprs too (``"random_gamma"``, ``"while"``)."""
    found: set[str] = set()

    def walk(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            found.add(eqn.primitive.name)
            for _, inner in _jaxprs(eqn.params):
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


def _walk_all(closed: Any, inputs: bool = True) -> _Found:
    """What a walk from every input finds; its inputs' own dtypes counted where ``inputs``."""
    found = _Found(min([b for b in (_bits(v.aval) for v in closed.jaxpr.invars) if b is not None], default=52)
                   if inputs else 52)
    _walk(closed.jaxpr, [True] * len(closed.jaxpr.invars), found)
    return found


def precision_of(closed: Any, leaves: Sequence[Any], outs: Sequence[Any]) -> Precision:
    """What fn computes in: the narrowest float its trace computes from the inputs, and its outputs'. The inputs'
    own dtypes count entry by entry (:func:`leaf_precisions`), not here: a bfloat16 activation cast to float32
    beside float32 weights is a float32 computation, differenced as one (a bfloat16 step and tolerance for the
    weights passed their gradients dropped). Untraced, the inputs count too."""
    found = [tolerance.of_dtype(jnp.result_type(x)) for x in outs]
    if closed is not None:
        found.append(tolerance.of_mantissa(_walk_all(closed, inputs=False).bits))
    else:
        found += [tolerance.of_dtype(jnp.result_type(x)) for x in leaves]
    return min(found, key=lambda p: p.key)


def leaf_precisions(flat: Flat, computed: Precision) -> list[Precision]:
    """Per differentiable leaf, the precision its entries are judged at: the computation's, or the leaf's own
    dtype where that is narrower (a VJP of a bfloat16 leaf is rounded to bfloat16; its steps must span ulps)."""
    return [min(computed, tolerance.of_dtype(d), key=lambda p: p.key) for d in flat.dtypes]


# ---------------------------------------------------------------- the choice
@dataclasses.dataclass
class Choice:
    """The version the numbers come from, its outputs, VJPs (one per cotangent) and cotangents, and why."""

    version: Version
    out: list
    vjps: list
    cotangents: list
    how: str


def _same_function(call: Version, out: list, v64: Version, out64: list, cotangent: list,
                   rng: np.random.Generator, stopping: Callable[[Version], list | None] | None
                   ) -> tuple[bool, float]:
    """Whether the float64 version's outputs are the call's, entry by entry: each within SAME_FUNCTION_ULPS of
    the call's precision of itself (never more than SAME_FUNCTION_REL), plus how far the float64 version moves
    there when its inputs move by as much (``lgamma`` near its root, whose float32 version is off by an absolute
    error), or plus what rounding in the call's forward explains (sin(t·f) at t = 10⁴ in float32 is 6e-4 from
    its float64 version, by the rounding of t·f alone). Never relative to the largest output: a function of its
    dtype (``finfo(x.dtype).eps`` beside a small entry) differs 100% there, and is another function. A function
    that iterates to a tolerance (``stopping``) is allowed each version's measured stopping error besides."""
    rel = min(SAME_FUNCTION_ULPS * call.precision.eps, SAME_FUNCTION_REL)
    pairs = [(np.asarray(o).astype(np.complex128), np.asarray(p).astype(np.complex128))
             for o, p in zip(out, out64, strict=True)]
    worst = 0.0
    for o, p in pairs:
        scale = float(np.max(np.abs(p), initial=0.0)) or 1.0
        with np.errstate(invalid="ignore"):  # inf − inf: NaN, which is never close; below tiny: flushed to zero
            off = np.where(_within(o, p, call.precision.tiny), 0.0, np.abs(o - p))
            worst = max(worst, float(np.max(off, initial=0.0)) / scale)
    if worst > SAME_FUNCTION_CAP:
        return False, worst
    allowed = [rel * np.abs(p) + call.precision.tiny for _, p in pairs]
    if _all_within(pairs, allowed):
        return True, worst
    if stopping is not None:  # each version's stopping error, where its loops converge
        for version in (call, v64):
            error = stopping(version)
            if error is not None:
                allowed = [a + e for a, e in zip(allowed, error, strict=True)]
        if _all_within(pairs, allowed):
            return True, worst
    allowed = [a + m for a, m in zip(allowed, _moved_by(v64, rel, rng), strict=True)]
    if _all_within(pairs, allowed):
        return True, worst
    bound = forward_rounding(call.fn, call.split.diff_leaves(), cotangent, call.context)
    if bound is None:
        return False, worst
    allowed = [a + ROUNDING_FACTOR * (np.asarray(b).real + np.asarray(b).imag)
               for a, b in zip(allowed, bound[0], strict=True)]
    return _all_within(pairs, allowed), worst


def _moved_by(version: Version, rel: float, rng: np.random.Generator, draws: int = 2) -> list[np.ndarray]:
    """Per output entry, how far ``version``'s outputs move when every input moves by ``±rel`` of itself, at most
    over ``draws`` random choices of signs."""
    leaves = version.split.diff_leaves()
    with version.context():
        run = jit_or_eager(version.fn)
        base = [np.asarray(o).astype(np.complex128) for o in run(*leaves)]
        worst = [np.zeros(b.shape) for b in base]
        for _ in range(draws):
            moved = [jnp.asarray(np.asarray(x) * (1 + rel * rng.choice([-1.0, 1.0], np.shape(x))), jnp.result_type(x))
                     for x in leaves]
            for w, b, o in zip(worst, base, run(*moved), strict=True):
                with np.errstate(invalid="ignore"):
                    np.maximum(w, np.nan_to_num(np.abs(np.asarray(o).astype(np.complex128) - b)), out=w)
    return worst


def _all_within(pairs: list[tuple[np.ndarray, np.ndarray]], allowed: list[np.ndarray]) -> bool:
    return all(bool(np.all(_within(o, p, a))) for (o, p), a in zip(pairs, allowed, strict=True))


@np.errstate(invalid="ignore")  # inf − inf: NaN, never within
def _within(o: np.ndarray, p: np.ndarray, allowed: np.ndarray | float) -> np.ndarray:
    """Entry by entry, ``|o − p| ≤ allowed``; equal values (the same inf) and two NaNs are within."""
    return (np.abs(o - p) <= allowed) | (o == p) | (np.isnan(o) & np.isnan(p))


def choose(fn: Callable, name: str, split: Split, call: Version, out: list, cts: list[list], a_call: list,
           refused64: str | None = None, stopping: Callable[[Version], list | None] | None = None) -> Choice:
    """fn on float64 copies of the arguments, where it computes in float64 and agrees with the call; else the
    call itself."""
    if call.precision.key >= 64:
        return Choice(call, out, a_call, cts, "as called (float64)")
    if refused64 is not None:
        return Choice(call, out, a_call, cts, f"as called ({call.precision.name}): {refused64}")
    with jax.enable_x64(True):  # a float64 array made outside would be cut back to float32
        split64 = Split.of(jax.tree_util.tree_map(to64, split.rebuild(split.diff_leaves())))
    v64 = Version.of(fn, split64, x64=True)
    try:
        with v64.context():
            closed64 = trace(v64.fn, split64.diff_leaves())
        shapes64 = closed64.out_avals if closed64 is not None else out
        cts64 = [[np.asarray(c).astype(np.complex128 if np.iscomplexobj(c) else s.dtype) for c, s in
                  zip(ct, shapes64, strict=True)] for ct in cts]
        out64, a64 = v64.vjp(cts64)
    except Exception as e:  # fn itself refuses float64 inputs, whatever it raises: check it as called
        why = f"{name} fails on float64 inputs ({type(e).__name__})"
        return Choice(call, out, a_call, cts, f"as called ({call.precision.name}): {why}")
    v64.precision = precision_of(closed64, split64.diff_leaves(), out64)
    same, worst = _same_function(call, out, v64, out64, cts[0], np.random.default_rng(0), stopping)
    if same and v64.precision.key == 64:
        return Choice(v64, out64, a64, cts64, f"the float64 version of {name} (it agrees with the call), and the "
                                              f"call's own {call.precision.name} VJP against it entry by entry")
    if not same:
        why = (f"on float64 copies of its inputs {name} gives other outputs (up to {worst:.2g} relative: random "
               f"draws in the default dtype, or dtype-dependent code)")
    else:
        why = f"{name} computes in {v64.precision.name} even on float64 inputs"
    return Choice(call, out, a_call, cts, f"as called ({call.precision.name}): {why}")
