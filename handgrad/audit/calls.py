"""What the recorder makes of one call of a rule: its key's parts, its arguments kept, and why it cannot be replayed.

Used by :class:`~handgrad.audit.record.Recorder` while a program runs; each is a small function of the rule or of
one argument leaf.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from handgrad.audit.discover import filled
from handgrad.audit.inputs import short_dtype

KEPT = 10**6  # entries of an eager argument kept concrete; a larger one is kept as its shape and drawn
CLOSURE_DEPTH = 2  # closures of closures searched for tracers
_RECORDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "record.py")  # its frames are no call site


@dataclasses.dataclass(frozen=True)
class Bound:
    """A call's arguments as the recorder sees them: the positional ones, the static ones (nondiff_argnums), the
    flattened rest and which of its leaves are arrays; and the key that tells one recorded call from another (the
    rule, where it is defined, the arrays' shapes and dtypes, the other values, what it closes over)."""

    positional: list
    static: set[int]
    kwargs: dict
    leaves: list
    treedef: Any
    arrays: list[int]
    signature: str  # "f32[3,4], f32[4]"
    key: tuple


def bound(rule: Any, args: tuple, kwargs: dict) -> Bound:
    import jax

    fun = unwrapped(rule.fun)
    qualname = getattr(fun, "__qualname__", None) or type(fun).__name__
    b = inspect.signature(rule.fun).bind(*args, **kwargs)
    b.apply_defaults()
    positional = list(b.args)
    static = set(getattr(rule, "nondiff_argnums", ()))
    leaves, treedef = jax.tree_util.tree_flatten([a for i, a in enumerate(positional) if i not in static])
    arrays = [i for i, leaf in enumerate(leaves) if hasattr(leaf, "shape") and hasattr(leaf, "dtype")]
    signature = ", ".join(spec(leaves[i]) for i in arrays)
    fixed = [leaf for i, leaf in enumerate(leaves) if i not in arrays]
    fixed += [positional[i] for i in sorted(static) if i < len(positional)]
    key = (defined(fun), qualname, signature, treedef, tuple(described(v) for v in fixed),
           tuple(described(v) for part in parts(rule) for v in captured(part)))
    return Bound(positional, static, b.kwargs, leaves, treedef, arrays, signature, key)


def is_float(leaf: Any) -> bool:
    return _is(leaf, np.inexact)  # bfloat16 too, whose numpy kind is "V"; a key is not


def _is(leaf: Any, kind: type) -> bool:
    import jax

    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and not jax.dtypes.issubdtype(dtype, jax.dtypes.extended) and \
        jax.dtypes.issubdtype(dtype, kind)


def spec(leaf: Any) -> str:
    return f"{short_dtype(str(leaf.dtype))}[{','.join(map(str, leaf.shape))}]"


def kept(leaf: Any) -> Any:
    """A numpy copy of a concrete leaf (a later donation or mutation cannot change it), else its shape."""
    import jax

    if isinstance(leaf, jax.core.Tracer):
        concrete = getattr(leaf, "to_concrete_value", lambda: None)()  # a JVP tracer of an eager grad has one
        if concrete is None:
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
        leaf = concrete
    if np.size(leaf) > KEPT:
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype)
    return np.array(leaf, copy=True)


def readable(leaf: Any) -> bool:
    """Whether a traced leaf's values can be read back to the host when its program runs: a number array, not a
    key."""
    return _is(leaf, np.number) or _is(leaf, np.bool_)


def unreplayable(rule: Any, positional: list, static: set[int], kwargs: dict) -> str:
    """Why the rule cannot be called again after the run: "" when it can."""
    import jax

    if kwargs:
        return f"takes keyword-only arguments ({', '.join(kwargs)}), which a replay cannot pass"
    for i in sorted(static):
        if i < len(positional) and any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(
                positional[i])):
            return f"its static argument {i} (nondiff_argnums) was traced, so its value is not known"
    if any(closes_over_tracer(f, CLOSURE_DEPTH) for f in parts(rule)):
        return "it closes over a tracer (a value of the transformation it was built in), so it only exists there"
    return ""


def parts(rule: Any) -> list[Callable]:
    """The functions a rule is made of: its primal, and its fwd and bwd or its jvp."""
    return [f for f in (getattr(rule, name, None) for name in ("fun", "fwd", "bwd", "jvp")) if f is not None]


def captured(fn: Any) -> list[Any]:
    """What fn closes over, and a functools.partial's bound arguments."""
    values = list(getattr(fn, "args", ())) + list(getattr(fn, "keywords", {}).values())
    fn = unwrapped(fn)
    return values + [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if filled(c)]


def described(value: Any) -> str:
    """A value as the recording's key sees it: an array by its shape and dtype (two rules built by one function
    with different arrays are one rule), a function by where it is defined, anything else by its repr."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}{list(value.shape)}"
    if callable(value) and hasattr(unwrapped(value), "__code__"):
        return defined(unwrapped(value))
    return repr(value)[:80]


def closes_over_tracer(fn: Any, depth: int) -> bool:
    import jax

    for value in captured(fn):
        if callable(value) and not isinstance(value, type):
            if depth > 0 and closes_over_tracer(value, depth - 1):
                return True
            continue
        try:
            leaves = jax.tree_util.tree_leaves(value)
        except Exception:  # an object jax cannot flatten: it holds no tracer jax could see
            continue
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            return True
    return False


def unwrapped(fn: Any) -> Any:
    while callable(getattr(fn, "func", None)) and hasattr(fn, "args"):  # functools.partial
        fn = fn.func
    return inspect.unwrap(fn) if callable(fn) else fn


def defined(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else "?"


def site() -> str:
    """The innermost frame outside JAX and the recorder: where the user's code called the rule."""
    skip = (os.sep + "jax" + os.sep, os.sep + "jaxlib" + os.sep, __file__, _RECORDER, os.sep + "contextlib.py",
            os.sep + "functools.py")
    frame = inspect.currentframe()
    while frame is not None and any(s in frame.f_code.co_filename for s in skip):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
