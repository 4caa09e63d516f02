"""What check_vjp refuses before it checks anything, with an error that names the argument and what it got."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend.core import jaxpr_as_fun

from reference.oracle.jaxprs import constants, trace
from reference.oracle.report import RefusedType, RefusedValue, raised_by_fn
from reference.oracle.trees import Split, describe
from reference.oracle.versions import Version


def function_name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def as_args(name: str, args: Any) -> tuple:
    if isinstance(args, tuple | list):
        return tuple(args)
    what = (f"an array of shape {np.shape(args)}" if hasattr(args, "shape") else f"a {type(args).__name__}")
    raise TypeError(f"check_vjp: args must be a tuple of {name}'s arguments, e.g. (x,) for {name}(x); got {what}. "
                    f"Wrap a single argument in a tuple")


def require_checkable(name: str, split: Split) -> None:
    """A float or complex leaf with at least one entry, and no NaN or inf in any."""
    if not any(np.size(split.leaves[i]) for i in split.diff):
        got = ", ".join(f"{p}: {describe(x)}" for p, x in zip(split.paths, split.leaves, strict=True)) or "nothing"
        what = "a float or complex leaf" if not split.diff else "a float or complex leaf with any entries"
        raise RefusedType(f"check_vjp: no argument of {name} has {what}, so there is no VJP to check (got {got})")
    for i in split.diff:
        values = np.asarray(split.leaves[i])
        bad = np.flatnonzero(~np.isfinite(values.ravel()))
        if bad.size:
            j = int(bad[0])
            raise RefusedValue(f"check_vjp: {split.paths[i]} holds {bad.size} non-finite values, e.g. "
                             f"{values.ravel()[j]} at flat index {j}; finite differences need finite inputs")


# Errors of evaluating at trace time what does not depend on the inputs: a primitive with no evaluation rule
# (Pallas's program_id, NotImplementedError) or a Pallas kernel that then captures constants (ValueError).
EAGER_LIMITS = (NotImplementedError, ValueError)


def trace_deterministic(name: str, version: Version) -> tuple[list, Any]:
    """The output shapes and the trace of ``fn``; refuses no float output and a non-deterministic function
    (two traces that bake in different constants and compute different outputs: randomness drawn in
    Python). The traces evaluate what does not depend on the inputs as they go, so that what fn does once
    (a module imported in its body, building its tables) makes arrays, not tracers that leak out of the
    first trace. An untraceable function is run twice instead."""
    try:
        return _traced_twice(name, version, jax.ensure_compile_time_eval)
    except EAGER_LIMITS:  # what has no evaluation rule (a Pallas kernel's program_id), or a kernel that may not
        pass  # capture what evaluation made concrete: traced as JAX traces it, with nothing evaluated early
    except Exception as e:  # a runtime check of fn's own misfires on values evaluated at trace time (equinox's
        if not raised_by_fn(e):  # error_if): traced as JAX traces it
            raise
    return _traced_twice(name, version, contextlib.nullcontext)


def _traced_twice(name: str, version: Version, evaluation: Callable[[], Any]) -> tuple[list, Any]:
    leaves = version.split.diff_leaves()
    with version.context(), evaluation():
        closed = trace(version.fn, leaves)
        if closed is not None:  # a second, fresh trace (a new function object: no cached trace is reused)
            out, again = list(closed.out_avals), trace(lambda *a: version.fn(*a), leaves)
            if again is None or not _same_constants(closed, again):
                # Different constants, or none to compare: compare what the traces compute.
                first, second = ([np.asarray(o) for o in jax.jit(jaxpr_as_fun(t))(*leaves)] for t in (closed, again))
            else:
                first = second = []
        else:
            out = version.fn(*leaves)
            first, second = [np.asarray(o) for o in out], [np.asarray(o) for o in version.fn(*leaves)]
    if not out:
        raise RefusedType(f"check_vjp: {name} returns no float or complex output, so there is no VJP to check")
    for o, p in zip(first, second, strict=True):
        if o.shape != p.shape or not np.array_equal(o, p, equal_nan=o.dtype.kind in "fc"):
            where = int(np.flatnonzero((o != p).ravel())[0]) if o.shape == p.shape else 0
            raise RefusedValue(f"check_vjp: {name} is not deterministic: two calls with the same arguments differ "
                             f"({o.ravel()[where]:.6g}, then {p.ravel()[where]:.6g}); pass its randomness in as "
                             f"an argument (a jax.random key)")
    return out, closed


def _same_constants(first: Any, second: Any) -> bool:
    a, b = constants(first), constants(second)
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
                                    for x, y in zip(a, b, strict=True))
