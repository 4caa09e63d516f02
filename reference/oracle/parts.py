"""fn's outputs in parts: those that compute in different precisions, checked one precision at a time; and those
a rule declares to have no derivative (:func:`tangent_reached`, which the audit classifies).

The tolerance of a check is that of the precision fn computes in. Where a float16 auxiliary output sits beside a
float32 one, the whole VJP would be judged at float16's: a float32 rule computed in bfloat16, or 0.3% off, would
pass. So fn's float outputs are grouped by the precision of their own paths from the inputs
(:func:`.jaxprs.output_precisions`), and the VJP is checked once per group, with the others' cotangents 0: by
linearity the VJP is the sum of those parts, each proven at its own precision. The reports are merged into one:
an entry is checked where every part checked it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from reference.oracle.jaxprs import reached
from reference.oracle.report import LeafReport, VJPMismatch, VJPReport
from reference.oracle.subjects import Subject
from reference.oracle.tolerance import PRECISIONS, Precision
from reference.oracle.trees import Split, outputs


def groups(precisions: Sequence[Precision]) -> list[list[int]]:
    """The float outputs' indices, grouped by precision, the widest first; one group where all agree."""
    keys = sorted({p.key for p in precisions}, reverse=True)
    return [[i for i, p in enumerate(precisions) if p.key == k] for k in keys]


def restricted(fn: Callable, keep: Sequence[int]) -> Callable:
    """``fn`` returning only its float outputs ``keep`` (their index among its float and complex output leaves)."""
    every = outputs(fn)

    def part(*args):
        out = every(*args)
        return [out[i] for i in keep]
    part.__name__ = part.__qualname__ = getattr(fn, "__name__", "fn")
    return part


def tangent_reached(fn: Callable, args: Sequence[Any]) -> list[bool]:
    """Per float and complex output of fn, whether any input tangent reaches it in fn's JVP: one that none reaches
    is declared by a custom_jvp rule to have no derivative (a symbolic zero tangent, for a solver's state beside its
    root), or cut off with ``stop_gradient``. [] where fn cannot be linearized."""
    split = Split.of(tuple(args))
    f, leaves = outputs(split.over_diff(fn)), split.diff_leaves()
    try:
        linear = jax.linearize(f, *leaves)[1]
        closed = jax.make_jaxpr(linear)(*leaves)
    except Exception:  # no JVP (a custom_vjp, a callback): nothing is declared
        return []
    return reached(closed)


def checked_in_parts(subject: Subject, name: str, precisions: list, check: Callable[[Subject], VJPReport]) -> VJPReport:
    """One check per precision of fn's outputs, the others' cotangents 0; one report of them, and every part's
    mismatches."""
    reports, problems, said = [], [], []
    for keep in groups(precisions):
        said.append(f"outputs {keep} ({precisions[keep[0]].name})")
        try:
            reference = None if subject.reference is None else restricted(subject.reference, keep)
            reports.append(check(Subject(restricted(subject.fn, keep), reference)))
        except VJPMismatch as e:
            reports.append(e.report)
            problems += e.problems
    report = merged(reports, said)
    if problems:
        raise VJPMismatch(name, problems, report)
    return report


def merged(reports: Sequence[VJPReport], said: Sequence[str]) -> VJPReport:
    """One report of the parts' reports: per leaf the largest errors and the union of the unchecked entries; ``said``
    names each part (``outputs [1] (float16)``) for the report's ``how``."""
    first = reports[0]
    leaves = tuple(_merged_leaf([r.leaves[i] for r in reports]) for i in range(len(first.leaves)))
    errors = [r.forward_max_abs_err for r in reports if r.forward_max_abs_err is not None]
    whys = [r.unchecked_why for r in reports if r.unchecked_why]
    keys = {p.name: p.key for p in PRECISIONS.values()}
    narrowest = min(reports, key=lambda r: keys.get(r.precision, 0))
    return dataclasses.replace(
        first, leaves=leaves, forward_max_abs_err=max(errors) if errors else None, precision=narrowest.precision,
        how="; ".join(f"{part}: {r.how}" for part, r in zip(said, reports, strict=True)),
        notes=tuple(sorted((n for r in reports for n in r.notes), key=lambda n: -n.badness)),
        one_by_one=next((r.one_by_one for r in reports if r.one_by_one), None),
        unchecked_why="; ".join(whys) if whys else None,
        loops=next((r.loops for r in reports if r.loops is not None), None),
        coarse=next((r.coarse for r in reports if r.coarse is not None), None))


def _merged_leaf(parts: Sequence[LeafReport]) -> LeafReport:
    badness = [p.badness for p in parts if p.badness is not None]
    union = np.stack(badness).max(axis=0) if len(badness) == len(parts) else None  # NaN where any is NaN
    unchecked = max(p.unchecked for p in parts)
    if union is not None:
        unchecked = max(unchecked, int(np.sum(np.isnan(union))))
    refs = [p for p in parts if p.ref_max_abs_err is not None]
    return dataclasses.replace(
        parts[0], max_abs_err=max(p.max_abs_err for p in parts), max_rel_err=max(p.max_rel_err for p in parts),
        kinks=max(p.kinks for p in parts), unchecked=unchecked,
        ref_max_abs_err=max(p.ref_max_abs_err or 0.0 for p in refs) if refs else None,
        ref_max_rel_err=max(p.ref_max_rel_err or 0.0 for p in refs) if refs else None,
        tolerance_rel=max(p.tolerance_rel for p in parts), judged=min(p.judged for p in parts), badness=union,
        confirmed=min(min(p.confirmed for p in parts), unchecked))
