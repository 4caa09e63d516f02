"""The precision a function really computes in: the narrowest float on any path from its inputs.

A function called on float64 inputs may still cast to float32 or bfloat16 inside
(``x.astype(jnp.float32)``, a mixed-precision policy). Finite differences must then be taken
with that precision's step and tolerance. This walks the jaxpr of the forward computation,
following only the values that depend on the differentiable inputs (a float32 random draw
that does not depend on them is not a loss of precision), into nested jaxprs: jit, scan,
while, cond, remat and the *primal* of a custom_vjp or custom_jvp (never its backward, whose
precision is what the check is about).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


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


def _walk(jaxpr: Any, dependent: Sequence[bool], narrowest: list[int]) -> list[bool]:
    """Marks the variables that depend on the ``dependent`` invars; returns the outvars' marks."""
    marked = {v for v, d in zip(jaxpr.invars, dependent, strict=True) if d}

    def is_marked(v: Any) -> bool:
        return not hasattr(v, "val") and v in marked  # literals never depend on the inputs

    for eqn in jaxpr.eqns:
        ins = [is_marked(v) for v in eqn.invars]
        if not any(ins):
            continue
        inner = [(n, j) for n, j in _jaxprs(eqn.params) if n not in ("fwd_jaxpr_thunk", "bwd", "jvp_jaxpr_fun")]
        outs = _walk_nested(eqn, inner, ins, narrowest)
        for v, d in zip(eqn.outvars, outs, strict=True):
            if d:
                marked.add(v)
                bits = _bits(v.aval)
                if bits is not None:
                    narrowest[0] = min(narrowest[0], bits)
    return [is_marked(v) for v in jaxpr.outvars]


def _walk_nested(eqn: Any, inner: list, ins: list[bool], narrowest: list[int]) -> list[bool]:
    name = eqn.primitive.name
    by_name = dict(inner)
    if name == "scan" and "jaxpr" in by_name:
        body, consts, carry = by_name["jaxpr"], eqn.params["num_consts"], eqn.params["num_carry"]
        flags = list(ins)
        for _ in range(carry + 1):  # a carry becomes dependent once any iteration makes it so
            outs = _walk(body, flags, narrowest)
            new = [a or b for a, b in zip(flags[consts:consts + carry], outs[:carry], strict=True)]
            if new == flags[consts:consts + carry]:
                return outs
            flags[consts:consts + carry] = new
        return outs
    if name == "while" and "body_jaxpr" in by_name:
        cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
        body_consts, carry = ins[cn:cn + bn], list(ins[cn + bn:])
        for _ in range(len(carry) + 1):
            outs = _walk(by_name["body_jaxpr"], body_consts + carry, narrowest)
            new = [a or b for a, b in zip(carry, outs, strict=True)]
            if new == carry:
                break
            carry = new
        return carry
    if name == "cond" and "branches" in by_name:
        branch_outs: list[list[bool]] = [_walk(branch, ins[1:], narrowest) for n, branch in inner if n == "branches"]
        return [any(flags) for flags in zip(*branch_outs, strict=True)]
    if len(inner) == 1 and len(inner[0][1].invars) == len(ins):  # jit, remat, custom_vjp/jvp primal, ...
        return _walk(inner[0][1], ins, narrowest)
    for _, sub in inner:  # anything else: every input may reach every output
        _walk(sub, [True] * len(sub.invars), narrowest)
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
    def value(v: Any) -> np.ndarray:
        if jax.dtypes.issubdtype(getattr(v, "dtype", np.float32), jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        return np.asarray(v)

    found = [value(c) for c in closed.consts]

    def walk(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            found.extend(value(v.val) for v in eqn.invars if hasattr(v, "val"))
            for _, inner in _jaxprs(eqn.params):
                walk(inner)
    walk(closed.jaxpr)
    return found


def narrowest_float(closed: Any) -> int:
    """The fewest mantissa bits of any float (or complex part) that depends on the inputs of a trace:
    52 for float64, 23 for float32, 10 for float16, 7 for bfloat16."""
    narrowest = [min([b for b in (_bits(v.aval) for v in closed.jaxpr.invars) if b is not None], default=52)]
    _walk(closed.jaxpr, [True] * len(closed.jaxpr.invars), narrowest)
    return narrowest[0]
