"""The same VJP under every transformation: eager, jit, vmap, grad-of-jit, jax.checkpoint and scan.

A custom_vjp can be right at a point and still go wrong under a transformation: a
``custom_batching.custom_vmap`` rule that mixes batch elements, a rule that closes over a
tracer, a backward that reads a global. :func:`check_transforms` computes the VJP of ``fn``
every way and compares each with the eager one, over a batch of *distinct* elements, so that
one element bleeding into another shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle import tolerance
from reference.oracle.report import (
    AT_INPUTS,
    FnRaised,
    NotDifferentiable,
    RefusedType,
    RefusedValue,
    raised_by_fn,
    said,
)
from reference.oracle.rounding import ROUNDING_FACTOR, forward_rounding
from reference.oracle.transformed import PARTS, each_part, programs
from reference.oracle.trees import Split, comparable, kind, outputs, random_like

TRANSFORMS = ("jit", "vmap", "grad-of-jit", "checkpoint", "scan")
_SCALES = (1.0, 0.9, 0.8)  # the default batch: args, then its float leaves scaled (a cone-preserving change)


@dataclasses.dataclass(frozen=True)
class TransformReport:
    """The largest difference from the eager VJP under each transformation."""

    batch: int
    max_abs_diff: dict[str, float]
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # a transformation JAX cannot apply: why
    # Entries beyond the agreement tolerance that rounding explains (fused or reordered float operations move
    # a result that cancels catastrophically by up to its rounding bound): counted per transformation, not failed.
    rounding: dict[str, int] = dataclasses.field(default_factory=dict)
    # Elements of the default batch (args scaled by 0.9, 0.8) left out because fn raised there: index -> its error.
    dropped: dict[int, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return "\n".join([f"{name:<12} {diff:9.2e}" + (f"  ({self.rounding[name]} entries within rounding)"
                                                        if self.rounding.get(name) else "")
                          for name, diff in self.max_abs_diff.items()]
                         + [f"{name:<12} not compared: {why}" for name, why in self.skipped.items()]
                         + [f"batch element {b} left out: fn raised there ({why})" for b, why in self.dropped.items()])


@dataclasses.dataclass(frozen=True)
class TransformProblem:
    """The VJP under one transformation, at one batch element and argument, differs from the eager one."""

    transform: str  # one of TRANSFORMS
    element: int  # the batch element (0 for jit, grad-of-jit and checkpoint)
    path: str  # the argument leaf
    index: int  # the first flat index that differs
    got: complex
    eager: complex
    tolerance: float
    count: int  # how many entries of the leaf differ

    def __str__(self) -> str:
        return (f"under {self.transform}, batch element {self.element}, {self.path} flat index {self.index}: "
                f"{_number(self.got)} vs eager {_number(self.eager)} (tolerance {self.tolerance:.2e}; {self.count} "
                f"entries differ)")


def _number(z: complex) -> str:
    return f"{z.real:.6g}" if z.imag == 0 else f"{z:.6g}"


class TransformMismatch(AssertionError):
    """:func:`check_transforms` found transformations under which the VJP differs: ``problems``, one a leaf."""

    __module__ = "reference"  # shown as reference.TransformMismatch, the name users import

    def __init__(self, name: str, problems: list[TransformProblem], report: TransformReport):
        self.name, self.problems, self.report = name, problems, report
        under = ", ".join(dict.fromkeys(p.transform for p in problems))
        super().__init__(f"check_transforms: the VJP of {name} differs from eager under {under}:\n  "
                         + "\n  ".join(str(p) for p in problems))

    @property
    def transforms(self) -> list[str]:
        return list(dict.fromkeys(p.transform for p in self.problems))


def _scaled(args: tuple, scale: float) -> tuple:
    """``args`` with every float leaf scaled, in numpy (nothing to compile)."""
    def one(x: Any) -> Any:
        if kind(x) is None:
            return x
        if isinstance(x, float | complex):
            return x * scale
        return jax.device_put((np.asarray(x) * scale).astype(np.asarray(x).dtype))
    return jax.tree_util.tree_map(one, args)


def _largest_finite(x: Any) -> float:
    x = np.abs(np.asarray(x))
    return float(np.max(x[np.isfinite(x)], initial=0.0))


def _equal(a: Any, b: Any) -> bool:
    return bool(np.array_equal(comparable(a), comparable(b)))


def check_transforms(fn: Callable, args: Sequence[Any], cotangent: Any = None, *,
                     batch: Sequence[Sequence[Any]] | None = None, rtol: float | None = None,
                     seed: int = 0) -> TransformReport:
    """Checks that the VJP of ``fn`` is the same eager and under every transformation.

    The VJP is taken with respect to the float and complex leaves of ``args`` (integer labels,
    keys and the like stay fixed) and compared, entry by entry, with the eager ``jax.vjp``:

    * ``jit``: ``jax.jit`` of the VJP;
    * ``grad-of-jit``: the VJP of ``jax.jit(fn)``;
    * ``checkpoint``: the VJP of ``jax.checkpoint(fn)`` (rematerialisation);
    * ``vmap``: ``jax.vmap`` of the VJP over a batch of distinct elements, each with its own
      cotangent, against each element's VJP under jit (the first element's is the jit row);
    * ``scan``: the VJP computed inside ``jax.lax.scan`` over the batch, the same way.

    Args:
      fn: any JAX function, e.g. your own ``jax.custom_vjp``.
      args: a sequence of arguments (pytrees).
      cotangent: the cotangent of ``fn``'s float outputs, as a list of arrays in output order;
        None draws one (seeded).
      batch: distinct argument tuples to vmap and scan over, all shaped like ``args``; the
        default is ``args`` and two copies whose float leaves are scaled by 0.9 and 0.8.
      rtol: relative tolerance of ``|transformed − eager| ≤ rtol·(|eager| + M)``, M the largest entry of the
        leaf or, if larger, of the whole VJP; by default the
        agreement of the leaf's precision (float32 2e-5, float64 1e-9, ...: :mod:`reference.oracle.tolerance`).
      seed: seeds the drawn cotangents.

    A transformation JAX cannot apply to ``fn`` (``jit`` of Python control flow on values, ``vmap``
    of a ``pure_callback`` without a ``vmap_method``) is not compared, and the report's ``skipped``
    says why; one that no transformation can take is refused.

    Returns:
      A :class:`TransformReport`.

    Raises:
      TransformMismatch: an AssertionError whose ``problems`` name the transformation, the batch
        element, the argument path and flat index, and both values.
    """
    name = getattr(fn, "__name__", repr(fn))
    b = _Batch.of(fn, tuple(args), batch, cotangent, seed)
    eager, dropped = _eager(b, name, given=batch is not None)
    b = b.without(dropped)
    results, skipped = _transformed(b, name)
    # Each batch element's VJP under jit, one element at a time: what vmap and scan must give element by element
    # (the first element's is the jit row, against eager), without an eager run for every element.
    each = [jax.tree_util.tree_map(np.asarray, e) for e in results.pop("each")]
    results["jit"] = each[0]
    diffs, problems, explained = _compared(b, results, eager, each, skipped, rtol)
    report = TransformReport(len(b.elements), diffs, skipped, explained, dropped)
    if problems:
        raise TransformMismatch(name, problems, report)
    return report


@dataclasses.dataclass(frozen=True)
class _Batch:
    """The batch elements, each split into its float leaves and the rest, with a cotangent each; and the compiled
    VJP programs (:func:`.transformed.programs`), which take the leaves fixed across the batch once and the rest
    per element."""

    out_fn: Callable
    split: Split
    elements: list[tuple]
    parts: list[Split]
    cts: list[list]
    shared: tuple[int, ...]  # fixed leaves the same in every element, arrays: passed once
    varying: tuple[int, ...]  # fixed leaves that differ between elements
    vjp: Callable
    transformed: Callable

    @classmethod
    def of(cls, fn: Callable, args: tuple, batch: Sequence[Sequence[Any]] | None, cotangent: Any,
           seed: int) -> _Batch:
        elements = [tuple(e) for e in batch] if batch is not None else [_scaled(args, s) for s in _SCALES]
        if batch is not None and not elements:
            raise ValueError("check_transforms: batch must hold at least one tuple of arguments")
        split = Split.of(elements[0])
        if not split.diff:
            raise RefusedType("check_transforms: no argument of fn has a float or complex leaf, so there is no VJP "
                              "to check")
        parts = [Split.of(e) for e in elements]
        if any(p.treedef != split.treedef for p in parts):
            raise ValueError("check_transforms: every element of batch must have the structure of the first")
        out_fn = outputs(fn)
        try:
            shapes = jax.eval_shape(lambda *d: out_fn(*split.rebuild(d)), *split.diff_leaves())
        except jax.errors.JAXTypeError:  # fn branches on values: its outputs, run
            shapes = out_fn(*elements[0])
        if not shapes:
            raise RefusedType(f"check_transforms: {getattr(fn, '__name__', fn)} has no float or complex output to "
                              f"pull back")
        rng = np.random.default_rng(seed)
        cts = [list(cotangent) if cotangent is not None and b == 0 else random_like(shapes, rng)
               for b in range(len(elements))]
        fixed = [i for i in range(len(split.leaves)) if i not in split.diff]
        same = {i: all(_equal(p.leaves[i], split.leaves[i]) for p in parts) for i in fixed}
        static = tuple((i, split.leaves[i]) for i in fixed if same[i] and not hasattr(split.leaves[i], "dtype"))
        shared = tuple(i for i in fixed if same[i] and hasattr(split.leaves[i], "dtype"))
        varying = tuple(i for i in fixed if not same[i])
        key = (fn, split.treedef, split.diff, shared, varying, static)
        try:
            vjp, transformed = programs(*key)
        except TypeError:  # an unhashable function or static leaf: build the programs for this call alone
            vjp, transformed = programs.__wrapped__(*key)
        return cls(out_fn, split, elements, parts, cts, shared, varying, vjp, transformed)

    @property
    def fixed_values(self) -> list:
        return [self.split.leaves[i] for i in self.shared]

    def inputs(self, b: int) -> tuple:
        leaves = self.parts[b].leaves
        return ([leaves[i] for i in self.split.diff], [leaves[i] for i in self.varying], self.cts[b])

    def run(self, b: int) -> Any:
        return jax.block_until_ready(self.vjp(self.fixed_values, *self.inputs(b)))

    def without(self, dropped: dict[int, str]) -> _Batch:
        kept = [b for b in range(len(self.elements)) if b not in dropped]
        return dataclasses.replace(self, elements=[self.elements[b] for b in kept],
                                   parts=[self.parts[b] for b in kept], cts=[self.cts[b] for b in kept])


def _eager(b: _Batch, name: str, given: bool) -> tuple[Any, dict[int, str]]:
    """The first element's eager VJP; and the elements fn's own check refuses (one the default batch made up,
    args × 0.8), with why: dropped. In a ``batch`` the user gave, such an element is fn's error."""
    try:
        eager = b.run(0)
    except Exception as error:  # fn traced (eval_shape above): JAX's limit, or a rule that refuses differentiation
        if raised_by_fn(error):  # or fn's own runtime check, raising at these inputs
            raise FnRaised(name, AT_INPUTS, error) from error
        raise NotDifferentiable(name, 1, error) from error
    dropped: dict[int, str] = {}
    for k in range(1, len(b.elements)):
        try:
            b.run(k)
        except Exception as error:
            if not raised_by_fn(error):
                raise
            if given:
                raise FnRaised(name, f"at batch element {k}", error) from error
            dropped[k] = said(error)
    return eager, dropped


def _transformed(b: _Batch, name: str) -> tuple[dict, dict[str, str]]:
    """Every transformation's VJP, in one program; where that fails, each on its own, and those JAX cannot apply
    skipped with why. None applies: refused."""
    each_input = [b.inputs(k) for k in range(len(b.elements))]
    stacked = jax.tree_util.tree_map(_stack, *each_input)
    try:  # run to the end here: an error fn raises when run (equinox's error_if) is reported as the program ends
        return jax.block_until_ready(b.transformed(PARTS, b.fixed_values, each_input, stacked)), {}
    except Exception:
        results, skipped = each_part(b.transformed, b.fixed_values, each_input, stacked,
                                      lambda *e: b.vjp(b.fixed_values, *e))
    if len(skipped) == len(TRANSFORMS):
        raise RefusedValue(f"check_transforms: {name} cannot be taken through any transformation "
                           f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())})") from None
    return results, skipped


def _stack(*xs: Any) -> Any:
    """The batch elements' leaves stacked: in numpy, but for keys, which numpy cannot hold."""
    if jax.dtypes.issubdtype(getattr(xs[0], "dtype", np.float32), jax.dtypes.prng_key):
        return jnp.stack(xs)
    return jax.device_put(np.stack([np.asarray(x) for x in xs]))


def _compared(b: _Batch, results: dict, eager: Any, each: list, skipped: dict[str, str], rtol: float | None
              ) -> tuple[dict[str, float], list[TransformProblem], dict[str, int]]:
    """Each transformation's VJP against the eager one (vmap and scan: element by element against each's under
    jit): the largest difference, the first entry off per leaf, and how many entries rounding explains."""
    diffs, problems = {}, []
    explained: dict[str, int] = {}
    rounding = functools.cache(functools.partial(_rounding, b))
    for name in (t for t in TRANSFORMS if t not in skipped):
        got = jax.tree_util.tree_map(np.asarray, results[name])
        batched = name in ("vmap", "scan")
        per_element = [jax.tree_util.tree_map(lambda x, k=k: x[k], got) for k in range(len(b.elements))] \
            if batched else [got]
        baselines = each if batched else [eager]
        worst = 0.0
        for k, value in enumerate(per_element):
            # An entry is judged against its leaf's largest, and at least the largest of the whole VJP: a leaf
            # that is all tiny (a bias behind saturated tanh, ~1e-16) carries only round-off of the rest.
            largest = max(_largest_finite(e) for e in baselines[k])
            for leaf, (g, e) in enumerate(zip(value, baselines[k], strict=True)):
                g, e = np.asarray(g), np.asarray(e)
                r = rtol if rtol is not None else tolerance.of_dtype(e.dtype).agree
                with np.errstate(invalid="ignore"):  # the same inf in both: agrees (tolerance.agree), no difference
                    gap = np.abs(g.astype(np.complex128) - e)
                worst = max(worst, float(np.max(np.where(g == e, 0.0, gap), initial=0.0)))
                off = ~tolerance.agree(g, e, r, floor=largest).ravel()
                if off.any() and (bound := rounding(k)) is not None:  # both sides rounded: twice the bound
                    within = (gap.ravel() <= 2 * ROUNDING_FACTOR * np.abs(bound[leaf]).ravel()) & off
                    explained[name] = explained.get(name, 0) + int(within.sum())
                    off &= ~within
                bad = np.flatnonzero(off)
                if bad.size:
                    i = int(bad[0])
                    scale = float(np.abs(e.ravel()[i]) + max(_largest_finite(e), largest))
                    problems.append(TransformProblem(name, k, b.split.paths[b.split.diff[leaf]], i,
                                                     complex(g.ravel()[i]), complex(e.ravel()[i]), r * scale,
                                                     int(bad.size)))
        diffs[name] = worst
    return diffs, problems, explained


def _rounding(b: _Batch, k: int) -> Any:
    """Element k's bound on how far rounding moves its VJP, per leaf (None: fn cannot be traced for it)."""
    rebuilt = b.parts[k]
    found = forward_rounding(lambda *d: b.out_fn(*rebuilt.rebuild(d)), rebuilt.diff_leaves(), b.cts[k],
                             contextlib.nullcontext, max(tolerance.of_dtype(jnp.result_type(x)).eps
                                                         for x in rebuilt.diff_leaves()))
    return None if found is None else found.vjp
