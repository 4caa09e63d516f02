"""The checked VJP against other VJPs of the same function: the call's own (precision) and the reference's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle import tolerance
from reference.oracle.report import Mismatch
from reference.oracle.rounding import ROUNDING_FACTOR, capped, finite_abs, forward_rounding
from reference.oracle.trees import Flat, outputs
from reference.oracle.versions import Version

REPORTED = 40  # mismatches collected per kind at most (the message shows the worst ten)
# An entry of the float64 VJP, and its RMS over cotangents, no larger than this many float64 eps of the VJP's largest
# entry, in a leaf of such entries only, is 0 rounded in float64: terms that cancel exactly, summed in float64 (a
# sum of 1000 terms the largest entry's size rounds to some hundreds of eps of it).
ZERO_ROUND_OFF = 2.0**10


def mismatch(kind: str, flat: Flat, paths: list[str], k: int, **fields: Any) -> Mismatch:
    leaf, i, part = flat.locate(k)
    return Mismatch(kind, paths[leaf], i, part=part, **fields)


class Float64Comparison(NamedTuple):
    """The call's own VJP against the same rule in float64, entry by entry (:func:`against_float64`)."""

    failures: list[Mismatch]
    notes: list[Mismatch]  # off by more than rtol, by no more than rounding explains
    unsure: np.ndarray  # flat indices off by more than that, and by no more than their own precision's rtol


def against_float64(call: Version, flat: Flat, paths: list[str], a_user: np.ndarray, a_main: np.ndarray,
                    natural: np.ndarray, spread: np.ndarray, rtol: np.ndarray, own: np.ndarray, spread_own: np.ndarray,
                    extra: float, cotangent: list, skip: set[int]) -> Float64Comparison:
    """Every entry of the call's own VJP against the same rule in float64.

    Where the differences cannot see it (a tail entry below their round-off, an entry no probe singled
    out), this is what catches a rule that silently loses precision. An entry off by no more than
    ROUNDING_FACTOR times what rounding in the call's forward explains is a note, not a failure; the backward's
    own roundings, never more than ALLOWANCE_CAP of its leaf's largest entry (a dropped gradient rounded away by a
    large offset is no rounding; a KL divergence's gradient at q = p, all round-off of the forward, is).
    One off by more, and by no more than its precision's own rtol and spread (``own``, ``spread_own``), is unsure.
    """
    scale = finite_abs(a_main) + natural
    # Below the smallest normal number of the call's precision, or of the entry's leaf, a value may be flushed to 0.
    tiny = flat.per_entry([max(call.precision.tiny, float(jnp.finfo(jnp.result_type(x)).tiny))
                           for x in call.split.diff_leaves()])
    tol = rtol * scale + spread + extra + tiny
    with np.errstate(invalid="ignore"):
        err = np.abs(a_user - a_main)
    same = (a_user == a_main) | (np.isnan(a_user) & np.isnan(a_main))  # the same inf, or NaN in both: no loss
    bad = np.flatnonzero(~(err <= tol) & ~same)
    if not bad.size:
        return Float64Comparison([], [], bad)
    # An entry 0 in float64 for every cotangent, to float64's own round-off (ZERO_ROUND_OFF), is terms that cancel
    # exactly there, and to their round-off in the call's precision, of the VJP's size at most (jax.grad through
    # log_softmax of equal logits: 2e-8, not 0; a bias a batch norm cancels: 2e-7 in float32, where float64 has 1e-17).
    explained = np.zeros(flat.size)
    bound = forward_rounding(call.fn, call.split.diff_leaves(), cotangent, call.context, call.precision.eps,
                             ROUNDING_FACTOR, exact=1)  # each correct rounding once: every one is a site
    if bound is not None:  # the backward's own roundings explain no more than ALLOWANCE_CAP of the leaf's largest
        largest = flat.per_entry([np.max(scale[flat.part(i)], initial=0.0) for i in range(len(flat.shapes))])
        by_backward = np.abs(flat.real(bound.backward, conjugate=True))
        explained = np.abs(flat.real(bound.vjp, conjugate=True)) - by_backward + capped(by_backward, largest)
    largest_natural = np.max(natural, initial=0.0)
    explained += np.where(_zero(flat, a_main, natural, largest_natural), call.precision.eps * largest_natural, 0.0)
    loose = np.maximum(own, rtol) * scale + np.maximum(spread, spread_own) + extra + tiny
    failures: list[Mismatch] = []
    notes: list[Mismatch] = []
    unsure: list[int] = []
    for k in bad[np.argsort(-(err[bad] / tol[bad]))]:
        k = int(k)
        if k in skip:  # already reported against the differences
            continue
        noted = err[k] <= tol[k] + explained[k]
        if not noted and err[k] <= loose[k] + explained[k]:
            unsure.append(k)
            continue
        kept = notes if noted else failures
        if noted or len(kept) < REPORTED:  # every note is listed; failures, the worst
            kept.append(mismatch("precision", flat, paths, k, analytic=float(a_user[k]), numerical=float(a_main[k]),
                                  tolerance=float(tol[k]), badness=float(err[k] / tol[k]) if np.isfinite(err[k])
                                  else np.inf, rtol=float(rtol[k]), precision=call.precision.name,
                                  explained=float(explained[k]) if bound is not None else None))
    return Float64Comparison(failures, notes, np.asarray(unsure, np.int64))


def _zero(flat: Flat, a_main: np.ndarray, natural: np.ndarray, largest: float) -> np.ndarray:
    """Per entry, whether the float64 VJP is 0 for every cotangent: exactly, or to float64's own round-off
    (ZERO_ROUND_OFF) throughout its leaf (a bias a batch norm cancels; a softmax's tail entry of 1e-15, in a leaf
    of larger ones, is a value)."""
    near = (np.abs(a_main) <= ZERO_ROUND_OFF * float(np.finfo(np.float64).eps) * largest) & (
        natural <= ZERO_ROUND_OFF * float(np.finfo(np.float64).eps) * largest)
    whole = flat.per_entry([bool(np.all(near[flat.part(i)])) for i in range(len(flat.shapes))]).astype(bool)
    return ((a_main == 0) & (natural == 0)) | (near & whole)


def against_reference(reference: Callable, evaluate: Version, out: list, cotangent: list, flat: Flat,
                      paths: list[str], analytic: np.ndarray, natural: np.ndarray, r: float, extra: float,
                      judge_entries: Callable,
                      forward: bool) -> tuple[float | None, list[RefStats | None], list[Mismatch]]:
    """The forward and VJP of ``reference`` against ``out`` and ``analytic``, the outputs and VJP of the version
    checked, at the precision the check ran in; a VJP mismatch on a kink that
    the finite differences confirm is excused. (At order 2 the forward is the VJP, compared at order 1
    already, kinks and all: ``forward=False``.)"""
    ref_fn = outputs(evaluate.split.over_diff(reference))
    ref_version = Version(evaluate.split, ref_fn, evaluate.x64)
    with ref_version.context():
        dtypes = [s.dtype for s in jax.eval_shape(ref_fn, *evaluate.split.diff_leaves())]
    # A reference that rounds an output (a float16 one beside the lifted fn's float64) takes its cotangent in that
    # dtype, and confirms no finer than its precision.
    r = max([r, *(tolerance.of_dtype(d).rtol for d in dtypes)])
    ref_out, (ref_ct,) = ref_version.vjp([[np.asarray(c).astype(d) for c, d in zip(cotangent, dtypes, strict=True)]])
    found, worst = [], 0.0
    for k, (o, q) in enumerate(zip(out, ref_out, strict=True) if forward else ()):
        o, q = np.asarray(o).astype(np.complex128).ravel(), np.asarray(q).astype(np.complex128).ravel()
        err = np.abs(o - q)
        tol = r * (np.abs(q) + float(np.max(np.abs(q), initial=0.0))) + extra + 1e-30
        worst = max(worst, float(np.max(err, initial=0.0)))
        for i in np.flatnonzero(~(err <= tol))[:REPORTED]:
            found.append(Mismatch("forward", f"output {k}", int(i), float(np.real(o[i])), float(np.real(q[i])),
                                  float(tol[i]), float(err[i] / tol[i]) if np.isfinite(err[i]) else np.inf))
    ref = flat.real(ref_ct, conjugate=True)
    tol = r * (np.abs(ref) + natural) + extra + 1e-30
    err = np.abs(analytic - ref)
    bad = np.flatnonzero(~(err <= tol))[:REPORTED]
    excused = np.zeros(err.shape, bool)
    if bad.size:  # a kink? ask the differences
        v = judge_entries(bad)
        lo, hi = v.analytic + v.low - v.tol, v.analytic + v.high + v.tol
        excused[bad] = v.unchecked | (v.kink & (analytic[bad] >= lo) & (analytic[bad] <= hi) & (ref[bad] >= lo)
                                      & (ref[bad] <= hi))
    for k in bad[~excused[bad]]:
        found.append(mismatch("reference", flat, paths, int(k), analytic=float(analytic[k]), numerical=float(ref[k]),
                               tolerance=float(tol[k]), badness=float(err[k] / tol[k]) if np.isfinite(err[k])
                               else np.inf, rtol=r))
    kept = np.where(excused, 0.0, err)
    rel = kept / np.maximum(np.abs(ref) + natural, 1e-300)
    agree = err <= tol  # per entry: the reference's VJP confirms the analytic one
    stats: list[RefStats | None] = [
        RefStats(float(np.max(kept[flat.part(i)], initial=0.0)), float(np.max(rel[flat.part(i)], initial=0.0)),
                 agree[flat.part(i)]) for i in range(len(flat.shapes))]
    return (worst if forward else None), stats, found


class RefStats(NamedTuple):
    """One leaf against the reference: its largest absolute and relative errors, and which entries it confirms."""

    max_abs: float
    max_rel: float
    agree: np.ndarray
