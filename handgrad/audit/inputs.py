"""Inputs for a rule: from its jaxtyping annotations, from the audit config's specs, or guessed.

``Float[Array, "b n"]`` becomes a float array whose named dimensions are shared across the
arguments (``b`` is the same size wherever it appears) and small and distinct (3, 4, 2, 5, …, so
a transposed result cannot pass by accident); ``*batch`` is one axis of 2; ``Int[Array, "n"]``
holds labels in [0, 2), below any named size. ``float`` parameters get a value in (0.25, 0.75),
``int`` ones 2, keys a ``jax.random`` key. Parameters with defaults keep them.

Three draws per rule: two random, and one (draw 2) with kinks and ties: each float array gets
an exact 0 and two equal entries, and an argument of the same shape as the first shares an entry
with it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DRAWS = 3
KINKS_AND_TIES = 2  # the draw that puts 0s and equal values in
SIZES = (3, 4, 2, 5, 6, 7, 8, 9)  # named dimensions, in the order they first appear
VARIADIC = (2,)  # a *batch or ... dimension
LABELS = 2  # integer arrays hold labels below this: below every size in SIZES
GUESS = "f32[3]"  # each argument of a rule with no annotations, when nothing else says what it takes
DOMAINS = ("real", "positive", "negative", "spd", "symmetric", "simplex", "(a, b)")
STRUCTURED = ("spd", "symmetric", "simplex")  # domains whose directions check_vjp is told (reference.oracle.domains)


class NoInputs(Exception):
    """The inputs cannot be built: ``why`` says what is missing, in one line."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


@dataclasses.dataclass(frozen=True)
class Inputs:
    args: tuple
    source: str  # "annotations", "config", "guessed", "drawn", "recorded" or "constraints"
    described: str  # "f32[3,4], i32[3]<2, key"
    expect: str = ""  # why a mismatch at these inputs is by design, where the inputs themselves show it


def annotations_of(fn: Any) -> dict[str, Any]:
    """The resolved annotations of fn's parameters ({} where they cannot be resolved)."""
    target = getattr(fn, "fun", None) if not inspect.isfunction(fn) and hasattr(fn, "fun") else fn
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:
        return {}
    hints.pop("return", None)
    return hints


def is_array_type(annotation: Any) -> bool:
    return _array_member(annotation) is not None


def _array_member(annotation: Any) -> Any:
    """The jaxtyping array type in ``annotation`` (itself, or a member of a union)."""
    if hasattr(annotation, "dim_str") and hasattr(annotation, "dtypes"):
        return annotation
    for member in typing.get_args(annotation):
        if hasattr(member, "dim_str") and hasattr(member, "dtypes"):
            return member
    return None


def required_parameters(fn: Callable) -> list[inspect.Parameter]:
    """The parameters a call must fill (keyword-only ones without a default cannot be, by position)."""
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            params.append(p)
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise NoInputs(f"needs the keyword-only argument {p.name!r}; give specs in the audit config")
    return params


def from_annotations(fn: Callable, draw: int, seed: int, dtype: str | None = None) -> Inputs:
    """Inputs from fn's jaxtyping annotations; NoInputs names the parameter that has none usable. Float
    arrays are ``dtype``, by default float64 with x64 on and float32 with it off."""
    import jax

    dtype = dtype or ("float64" if jax.config.read("jax_enable_x64") else "float32")
    hints = annotations_of(fn)
    rng = np.random.default_rng([seed, draw])
    sizes: dict[str, Any] = {}
    args, described = [], []
    for p in required_parameters(fn):
        annotation = hints.get(p.name)
        array = _array_member(annotation)
        if array is not None:
            kind, dt = _dtype(array, dtype)
            if kind == "key":
                args.append(jax.random.key(int(rng.integers(2**31))))
                described.append("key")
                continue
            shape = _shape(array, sizes, p.name)
            args.append(_draw(kind, dt, shape, rng))
            labels = f"<{LABELS}" if kind == "int" else ""
            described.append(f"{short_dtype(dt)}[{','.join(map(str, shape))}]{labels}")
        elif _is_key(annotation):
            args.append(jax.random.key(int(rng.integers(2**31))))
            described.append("key")
        elif _scalar(annotation) is float:
            args.append(float(rng.uniform(0.25, 0.75)))
            described.append(f"{args[-1]:.3g}")
        elif _scalar(annotation) is int:
            args.append(2)
            described.append("2")
        else:
            what = "no annotation" if annotation is None else f"annotation {_name(annotation)}"
            raise NoInputs(f"argument {p.name!r} is not an array ({what}); give specs in the audit config")
    if not any(_is_float_array(a, complex_too=True) for a in args):
        raise NoInputs("no float array argument")
    return Inputs(tuple(_kinks_and_ties(args) if draw == KINKS_AND_TIES else args), "annotations", ", ".join(described))


def from_specs(specs: list[str], draw: int, seed: int, source: str = "config") -> Inputs:
    """Inputs from ``handgrad check`` specs (``f32[4,5]``, ``i32[4]<10``, ``key``, ``1.5``, ``@data.npz``)."""
    from handgrad.check import parse_args

    args = parse_args(specs, np.random.default_rng([seed, draw]))
    return Inputs(tuple(_kinks_and_ties(args) if draw == KINKS_AND_TIES else args), source, ", ".join(specs))


def from_shapes(shapes: Sequence[Any], draw: int, seed: int) -> Inputs:
    """Inputs shaped like ``shapes`` (arrays or ``jax.ShapeDtypeStruct``: what a recording under ``jit`` saw):
    float and complex arrays standard normal, integers labels below ``LABELS``, keys fresh."""
    import jax

    rng = np.random.default_rng([seed, draw])
    args = []
    for s in shapes:
        kind = getattr(s.dtype, "kind", None)
        if kind is None:  # a key array: its dtype has no kind
            args.append(jax.random.split(jax.random.key(int(rng.integers(2**31))), s.shape) if s.shape
                        else jax.random.key(int(rng.integers(2**31))))
            continue
        args.append(_draw({"f": "float", "c": "complex", "b": "bool"}.get(kind, "int"), str(s.dtype), s.shape, rng))
    described = ", ".join("key" if getattr(s.dtype, "kind", None) is None else
                          f"{short_dtype(str(s.dtype))}[{','.join(map(str, s.shape))}]" for s in shapes)
    return Inputs(tuple(_kinks_and_ties(args) if draw == KINKS_AND_TIES else args), "drawn", described)


def guessed(fn: Callable, draw: int, seed: int) -> Inputs:
    """Every argument ``f32[3]``: the guess for an elementwise rule with no annotations."""
    try:
        n = len(required_parameters(fn))
    except (TypeError, ValueError):
        raise NoInputs("no signature to read; give specs in the audit config") from None
    if n == 0:
        raise NoInputs("takes no arguments")
    return from_specs([GUESS] * n, draw, seed, source="guessed")


def in_domain(args: tuple, domain: str | list[str] | None) -> tuple:
    """``args`` with each float array moved into its domain: ``"positive"`` (|x| + 1/2), ``"negative"``
    (−|x| − 1/2), ``"(a, b)"``
    (an affine map of the draw into the middle 90% of the interval), ``"spd"`` (M Mᵀ/n + I over the
    last two axes), ``"symmetric"`` ((M + Mᵀ)/2), ``"simplex"`` (a softmax over the last axis), ``"real"``
    (as drawn)."""
    import jax
    import jax.numpy as jnp

    if domain is None:
        return args
    domains = domain if isinstance(domain, list) else [domain] * len(args)
    if len(domains) != len(args):
        raise NoInputs(f"domain lists {len(domains)} entries for {len(args)} arguments")
    moved = []
    for a, d in zip(args, domains, strict=True):
        if not _is_float_array(a) or d == "real":
            moved.append(a)
        elif d == "positive":
            moved.append(jnp.abs(a) + 0.5)
        elif d == "negative":
            moved.append(-jnp.abs(a) - 0.5)
        elif d in ("spd", "symmetric"):
            if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
                raise NoInputs(f"domain {d!r} needs square matrices, got shape {a.shape}")
            n = a.shape[-1]
            moved.append(a @ jnp.swapaxes(a, -1, -2) / n + jnp.eye(n, dtype=a.dtype) if d == "spd"
                         else (a + jnp.swapaxes(a, -1, -2)) / 2)
        elif d == "simplex":
            moved.append(jax.nn.softmax(a, axis=-1))
        elif match := re.fullmatch(r"\(\s*([-+.\deE]+)\s*,\s*([-+.\deE]+)\s*\)", d):
            lo, hi = float(match[1]), float(match[2])
            unit = jnp.clip(0.5 + 0.15 * a, 0.0, 1.0)  # a standard normal draw, mostly in [0.05, 0.95]
            moved.append((lo + (0.05 + 0.9 * unit) * (hi - lo)).astype(a.dtype))
        else:
            raise NoInputs(f"unknown domain {d!r}; use one of {', '.join(DOMAINS)}")
    return tuple(moved)


def _dtype(array: Any, dtype: str) -> tuple[str, str]:
    dtypes = tuple(array.dtypes)
    if any("key" in d for d in dtypes):
        return "key", "key"
    for kind, preferred in (("float", dtype), ("float", "float32"), ("complex", "complex64"), ("int", "int32"),
                            ("bool", "bool")):
        if preferred in dtypes:
            return kind, preferred
    first = dtypes[0] if dtypes else "float32"
    kind = "float" if "float" in first else "int" if "int" in first else "bool" if first == "bool" else "other"
    if kind == "other":
        raise NoInputs(f"cannot draw an array of dtype {first}")
    return kind, first


def _shape(array: Any, sizes: dict[str, Any], name: str) -> tuple[int, ...]:
    shape: list[int] = []
    for dim in array.dims:
        cls = type(dim).__name__
        if cls == "_FixedDim":
            shape.append(int(dim.size))
        elif cls == "_NamedDim":
            shape.append(sizes.setdefault(dim.name, SIZES[len([s for s in sizes.values() if isinstance(s, int)])
                                                            % len(SIZES)]))
        elif cls == "_NamedVariadicDim":
            shape.extend(sizes.setdefault("*" + dim.name, VARIADIC))
        elif cls == "_AnonVariadicDim":
            shape.extend(VARIADIC)
        elif cls == "_AnonDim":
            shape.append(SIZES[0])
        elif cls == "_SymbolicDim":
            try:
                shape.append(int(eval(dim.elem, {}, {k: v for k, v in sizes.items() if isinstance(v, int)})))
            except Exception:
                raise NoInputs(f"argument {name!r}: cannot size the dimension {dim.elem!r}") from None
        else:
            raise NoInputs(f"argument {name!r}: cannot size the dimension {dim!r}")
    return tuple(shape)


def _draw(kind: str, dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
    import jax
    import jax.numpy as jnp

    if kind == "int":
        values = rng.integers(0, LABELS, shape)
    elif kind == "bool":
        values = rng.random(shape) < 0.5
    elif kind == "complex":
        values = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    else:
        values = rng.standard_normal(shape)
    return jax.device_put(np.asarray(values).astype(jnp.dtype(dtype)))


def _kinks_and_ties(args: list) -> list:
    """Each float array with an exact 0 at flat index 0 and entries 1 and 2 equal; an array shaped like the
    first float array shares its last entry with it."""
    import jax.numpy as jnp

    out, first = [], None
    for a in args:
        if _is_float_array(a) and a.size:
            flat = a.ravel().at[0].set(0)
            if a.size >= 3:
                flat = flat.at[1].set(flat[2])
            if first is None:
                first = flat
            elif first.shape == flat.shape and a.size >= 4:
                flat = flat.at[-1].set(first[-1])
            a = jnp.reshape(flat, a.shape)
        out.append(a)
    return out


def _is_float_array(a: Any, complex_too: bool = False) -> bool:
    kind = getattr(getattr(a, "dtype", None), "kind", None)  # a key's dtype has no kind
    return kind == "f" or (complex_too and kind == "c")


def _is_key(annotation: Any) -> bool:
    return "PRNGKey" in _name(annotation) or "KeyArray" in _name(annotation)


def _scalar(annotation: Any) -> type | None:
    members = typing.get_args(annotation) or (annotation,)
    if float in members:
        return float
    if int in members and bool not in members:
        return int
    return None


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def short_dtype(dtype: str) -> str:
    return {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16", "int32": "i32",
            "complex64": "c64", "bool": "bool"}.get(dtype, dtype)
