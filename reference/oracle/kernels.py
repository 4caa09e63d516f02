"""Pallas kernels as plain jaxprs: a ``pallas_call`` as JAX's own interpreter runs it (a loop over its grid of
operations on slices of its operands), traced at the kernel's dtypes. Lifting raises that to float64, and the
rounding bound reads its operations. The interpreter is JAX's internal API, read where present with a safe
fallback: where this JAX has none that takes the call's params, :class:`Uninterpretable` says so.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from typing import Any

import jax

# What tracing JAX's interpreter on a kernel can raise: params it does not take, or a kernel it cannot run.
_TRACE_ERRORS = (TypeError, ValueError, NotImplementedError)
# The equations interpreted last, each with its jaxpr: a check reads one kernel some 25 times (lifting, the
# rounding bound, each program that evaluates the lifted fn), and tracing the interpreter is 30 ms or more.
_KEPT = 16
_interpreted: collections.OrderedDict[tuple[int, bool], tuple[Any, Any]] = collections.OrderedDict()


class Uninterpretable(Exception):
    """A ``pallas_call`` that JAX's interpreter cannot turn into a plain jaxpr here: ``why``."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def interpreted(eqn: Any) -> Any:
    """The closed jaxpr of a ``pallas_call`` equation as JAX's interpreter runs it, its invars and outvars the
    equation's; :class:`Uninterpretable` where there is none. Traced once per equation and x64 setting."""
    key = (id(eqn), bool(jax.config.read("jax_enable_x64")))
    kept = _interpreted.pop(key, None)
    # The equation itself is kept beside its jaxpr, so that its id is not another's.
    closed = kept[1] if kept is not None and kept[0] is eqn else _trace(eqn)
    _interpreted[key] = (eqn, closed)
    while len(_interpreted) > _KEPT:
        _interpreted.popitem(last=False)
    return closed


def _trace(eqn: Any) -> Any:
    try:
        from jax._src.pallas import hlo_interpreter  # noqa: PLC0415 (internal: read where present)
        interpret = hlo_interpreter.pallas_call_hlo_interpret
    except (ImportError, AttributeError) as e:
        raise Uninterpretable("this JAX has no kernel interpreter to read it through") from e
    params = {k: v for k, v in eqn.params.items() if k != "interpret"}
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
    try:
        with jax.enable_x64(True) if _has_64_bits(eqn) else contextlib.nullcontext():  # as the kernel was traced
            closed = jax.make_jaxpr(functools.partial(interpret, **params))(*avals)
    except _TRACE_ERRORS as e:
        raise Uninterpretable(f"JAX's interpreter does not trace it ({type(e).__name__})") from e
    if len(closed.jaxpr.invars) != len(eqn.invars) or len(closed.jaxpr.outvars) != len(eqn.outvars):
        raise Uninterpretable("JAX's interpreter gives it another signature")
    return closed


def _has_64_bits(eqn: Any) -> bool:
    """Whether a value of the equation or of its kernel is 64 bits wide: the kernel was traced with x64 on, and its
    interpreter must be too."""
    def wide(v: Any) -> bool:
        dtype = getattr(getattr(v, "aval", None), "dtype", None)
        return getattr(dtype, "itemsize", 0) == 8 and getattr(dtype, "kind", "") in ("f", "i", "u", "c")

    def walk(jaxpr: Any) -> bool:
        if any(wide(v) for v in (*jaxpr.invars, *jaxpr.constvars)):
            return True
        for e in jaxpr.eqns:
            if any(wide(v) for v in e.outvars):
                return True
            for value in e.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns") and walk(inner):
                    return True
        return False
    kernel = eqn.params.get("jaxpr")
    return any(wide(v) for v in (*eqn.invars, *eqn.outvars)) or (kernel is not None and walk(getattr(kernel, "jaxpr",
                                                                                                      kernel)))
