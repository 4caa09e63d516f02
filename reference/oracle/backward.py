"""What a backward does with its cotangents, read from its jaxpr: where it rounds them to a leaf narrower than the
call (:func:`to_leaves`: JAX's own transposes do), and where it combines them with an offset it takes off again
(:func:`offset`), so that a rounding of the sum is sized on the part the cotangents move (:func:`.sites.evaluate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from reference.oracle.sites import (
    ARITHMETIC,
    BY_INDEX,
    CALLS,
    CONTROL,
    ELEMENTWISE,
    EXACT,
    floating,
    inlined,
    narrowing,
    params_jaxprs,
)

# Operations that scale a value that depends on a backward's cotangents by one that does not (:func:`offset`).
SCALES = frozenset({"mul", "dot_general", "conv_general_dilated"})


def to_leaves(jaxpr: Any, eps: float) -> frozenset[int]:
    """The equations of a backward that round its VJP to a leaf narrower than the call (``eps``): a convert to a
    narrower float, or a sum in a float narrower than the call, whose result reaches the VJP through nothing but
    moves (EXACT) and such sums, in line through calls (CALLS: a jitted model). JAX's own VJP of a
    bfloat16 leaf cast to float32 twice (a residual) rounds each part to bfloat16 and adds them in bfloat16, which
    cancelling parts make a few percent of their sum. A backward that computes in the narrower float (a product,
    a function) is its author's, not excused."""
    return frozenset(_to_leaves(jaxpr, eps)[0])


def _to_leaves(jaxpr: Any, eps: float) -> tuple[set[int], bool]:
    """:func:`to_leaves`' sites, and whether every equation passes the VJP on through moves and sums only."""
    out = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    consumers: dict[Any, list] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, Literal):
                consumers.setdefault(v, []).append(eqn)
    leaving: set[int] = set()  # equations whose every output reaches the VJP only through moves and sums

    def leaves_only(v: Any) -> bool:
        return (v in out or v in consumers) and all(id(e) in leaving for e in consumers.get(v, []))

    found: set[int] = set()
    for eqn in reversed(jaxpr.eqns):
        if not eqn.outvars or not eqn.invars or not all(leaves_only(v) for v in eqn.outvars):
            continue
        name, aval = eqn.primitive.name, eqn.outvars[0].aval
        narrower = floating(aval) and float(jnp.finfo(aval.dtype).eps) > eps
        inner = inlined(eqn) if name in CALLS else None  # (a kernel's interpreter is another program each time)
        if inner is not None:
            inside, through = _to_leaves(inner.jaxpr, eps)
            found |= inside
            if not through:
                continue
        elif name == "convert_element_type":  # a convert passes the VJP on only where it rounds it to the leaf's
            if not (narrower and narrowing(eqn)):
                continue  # (a bfloat16 round trip of a float32 leaf's VJP is its author's)
            found.add(id(eqn))
        elif name == "add_any" or name in BY_INDEX:
            if narrower:
                found.add(id(eqn))
        elif name not in EXACT:
            continue
        leaving.add(id(eqn))
    return found, len(leaving) == len(jaxpr.eqns)


def offset(jaxpr: Any, n_saved: int) -> bool:
    """Whether a backward (residuals, then cotangents) combines, in line through calls, a value that depends on its
    cotangents with a nonzero one that does not (a constant, a residual) other than by scaling it (a product, a
    quotient): ``(dw + 100) − 100``, or the same through a stack and a sum, a cumulative sum; or passes one to a
    function (``log(exp(dw))``) or a body it does not see (a loop's, a kernel's). Its VJP is linear in the
    cotangents, so the offset is taken off again somewhere, and what rounding explains is that of each value's
    part that depends on them (:func:`evaluate`'s ``offsets``), not of the offset. (JAX's own transposes only
    scale cotangents, and select, pad or scatter them into zeros: no offset.)"""
    return _offset(jaxpr, [_ON if k >= n_saved else _OFF for k in range(len(jaxpr.invars))])[0]


_ON, _OFF, _ZERO = "depends on the cotangents", "does not", "is zero"


def _offset(jaxpr: Any, state: Sequence[str]) -> tuple[bool, list[str]]:
    """:func:`offset`, given each of ``jaxpr``'s inputs' state (_ON, _OFF or _ZERO); and each of its outputs'."""
    env = dict(zip(jaxpr.invars, state, strict=True))

    def of(v: Any) -> str:
        if isinstance(v, Literal):
            return _ZERO if np.all(np.asarray(v.val) == 0) else _OFF
        return env.get(v, _OFF)  # (a constant)

    found = False
    for eqn in jaxpr.eqns:
        ins = [of(v) for v in eqn.invars]
        inner = inlined(eqn)
        if inner is not None:
            inside, outs = _offset(inner.jaxpr, ins)
            found |= inside
        else:
            on = [s == _ON for s in ins]
            off = [s == _OFF and floating(v.aval) for s, v in zip(ins, eqn.invars, strict=True)]
            name = eqn.primitive.name
            scaled = name in SCALES or (name == "div" and not on[1])
            found |= any(on) and any(off) and not scaled
            # a function of them, or a body unseen (a loop's, a kernel's): it may add one, nonzero at zero
            found |= any(on) and (name in CONTROL or bool(params_jaxprs(eqn.params)) or name in ELEMENTWISE and
                                  name not in ARITHMETIC and name != "reduce_precision")
            floats = [s for s, v in zip(ins, eqn.invars, strict=True) if floating(v.aval)]
            zero = name in EXACT and floats and all(s == _ZERO for s in floats)
            outs = [_ON if any(on) else _ZERO if zero else _OFF] * len(eqn.outvars)
        env.update(zip(eqn.outvars, outs, strict=True))
    return found, [of(v) for v in jaxpr.outvars]
