"""Judging entries one by one against their finite differences: the stage of :func:`check_vjp` after the search.

An :class:`EntryJudge` holds what every entry's verdict needs (the differences, the VJP judged, each entry's
scales and allowances) and judges any set of entries in four steps, each a method:

1. :meth:`~EntryJudge.levels`: the first step level for every entry; every level, of steps relative to the
   floored ``|x|`` and to ``|x|`` itself, for the entries the first does not settle.
2. :meth:`~EntryJudge.coarser`: entries whose differences are too uncertain to see a NEEDLE (round-off of a
   large output that moves) are tried at coarser steps (``COARSER``).
3. :meth:`~EntryJudge.unresolved`: entries that pass only on a tolerance above ``loosest`` of their scale are
   tried coarser once more, and unchecked if that does no better.

After the judge, :func:`staircase` and :func:`singular` turn failures the differences cannot speak to into
unchecked entries, each said why.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reference.oracle import search as large
from reference.oracle.differences import LEVEL_RATIO, Differences
from reference.oracle.rounding import forward_rounding
from reference.oracle.tolerance import LEAF_ROUNDINGS
from reference.oracle.verdict import Verdict, first_pass, judge

# The first steps tried, as multiples of the first, for entries whose differences are imprecise there (_imprecise).
COARSER = (LEVEL_RATIO**2, LEVEL_RATIO**4)
# An output whose forward's rounding explains more than this many ulps of itself, twice the FUNCTION_ULPS the
# differences allow it, was computed by cancellation or by an ill-conditioned step (exp(50x) at x = 1: 50); a
# well-conditioned one explains a few (exp(5x) at x = 1: 5.5).
CANCELLED = 8.0
STAIRCASE = LEVEL_RATIO**4  # how much coarser steps must move an iterative fn its differences found flat
COARSEST = 0.05  # relative to the entry's step scale: coarser steps than this leave the function's own length scale


@dataclasses.dataclass(frozen=True)
class Scales:
    """Per entry of the flat vector: what its tolerance is made of, and the steps that move it."""

    natural: np.ndarray  # the entry's natural scale (over several cotangents)
    magnitude: np.ndarray  # |the VJP judged|
    spread: np.ndarray  # how far the entry moves when the inputs move by their round-off
    rtol: np.ndarray  # the relative tolerance: the computation's, the entry's own leaf's, or the user's
    extra: float  # the user's atol
    floored: np.ndarray  # the step scale: |x| floored by its leaf's typical magnitude
    relative: np.ndarray  # |x| itself
    leaf_scale: np.ndarray  # the scale an exact 0 is told from the differences' noise against (_told_zero)

    def noise(self, index: np.ndarray) -> np.ndarray:
        return self.rtol[index] * (self.natural[index] + self.magnitude[index]) + self.spread[index] + self.extra


@dataclasses.dataclass
class EntryJudge:
    """Judges entries of the VJP ``analytic`` against ``diffs`` (see the module docstring); counts the entries it
    leaves unchecked for want of sharp differences in ``too_uncertain``."""

    diffs: Differences
    analytic: np.ndarray
    scales: Scales
    step: float
    levels: int
    loosest: float
    too_uncertain: int = 0

    def __call__(self, index: np.ndarray) -> Verdict:
        noise = self.scales.noise(index)
        verdict = self.levels_of(index, noise)
        verdict = self.coarser(index, noise, verdict)
        return self.unresolved(index, noise, verdict)

    def with_cotangent(self, diffs: Differences, analytic: np.ndarray) -> EntryJudge:
        """The same judge for another cotangent's differences and VJP."""
        return dataclasses.replace(self, diffs=diffs, analytic=analytic, too_uncertain=0)

    def probes(self, index: np.ndarray, step: float, scale: np.ndarray, levels: range | list[int],
               noise: np.ndarray) -> Verdict:
        return judge(self.diffs.entry_probes(index, self.analytic, step, scale, levels), noise)

    def levels_of(self, index: np.ndarray, noise: np.ndarray) -> Verdict:
        """The first level for every entry; every level for those it does not settle, the better of steps
        relative to the floored |x| and to |x| itself where that is smaller (a function whose length scale is |x|)."""
        s = self.scales
        first = self.diffs.entry_probes(index, self.analytic, self.step, s.floored, [0])
        verdict, slow = judge(first, noise), np.flatnonzero(~first_pass(first, noise))
        if not slow.size:
            return verdict
        deep = self.probes(index[slow], self.step, s.floored, range(self.levels), noise[slow])
        small = np.flatnonzero(s.relative[index[slow]] < s.floored[index[slow]])
        if small.size:
            own = self.probes(index[slow][small], self.step, s.relative, range(self.levels), noise[slow][small])
            deep = keep_better(deep, small, own)
        return merge(verdict, slow, deep)

    def coarser(self, index: np.ndarray, noise: np.ndarray, verdict: Verdict) -> Verdict:
        """Differences too uncertain to resolve a NEEDLE in the entry are tried at coarser steps, where the change
        rises above the round-off. A coarser estimate refines the finer one only within the finer one's
        uncertainty: steps too coarse for fn (a feature narrower than them, a 16-bit function's plateaus) agree
        with each other on the wrong slope."""
        natural = self.scales.natural[index]
        imprecise = np.flatnonzero(_imprecise(verdict, natural))
        for factor in COARSER:
            if not imprecise.size or self.step * factor > COARSEST:
                break
            fine = verdict.take(imprecise)
            coarse = self.probes(index[imprecise], self.step * factor, self.scales.floored, range(self.levels),
                                 noise[imprecise])
            with np.errstate(invalid="ignore"):
                refines = (~coarse.unchecked & (coarse.error < fine.error)
                           & (np.abs(coarse.numerical - fine.numerical) <= fine.error + coarse.error))
            verdict = verdict.replaced(imprecise[refines], coarse.take(refines))
            imprecise = imprecise[_imprecise(verdict.take(imprecise), natural[imprecise])]
        return verdict

    def unresolved(self, index: np.ndarray, noise: np.ndarray, verdict: Verdict) -> Verdict:
        """An entry that passes only because its differences are too uncertain to tell (a tolerance above
        ``loosest`` of its scale, :mod:`.tolerance`) is tried at coarser steps, and unchecked if they do no better:
        a tolerance of the order of the entry passes anything. An exact 0 stays judged where the differences tell
        it from their noise (_told_zero: a second derivative that is 0 everywhere, differenced down to round-off)."""
        s, natural = self.scales, self.scales.natural[index]
        loose = np.flatnonzero(_loose(verdict, natural, s.extra, self.loosest))
        if not loose.size:
            return verdict
        coarse = self.probes(index[loose], self.step * LEVEL_RATIO**2, s.floored, range(self.levels), noise[loose])
        verdict = keep_better(verdict, loose, coarse)
        again = verdict.take(loose)
        still = loose[_loose(again, natural[loose], s.extra, self.loosest)
                      & ~_told_zero(again, s.leaf_scale[index][loose], s.extra, self.loosest)]
        self.too_uncertain += len(still)
        return verdict.replaced(still, dataclasses.replace(verdict.take(still), unchecked=np.ones(len(still), bool)))


def staircase(judge_: EntryJudge, verdict: Verdict, index: np.ndarray, name: str) -> tuple[Verdict, str | None]:
    """In a function that iterates to a tolerance, failing entries whose differences found no change at all, where
    steps STAIRCASE times coarser do move fn: a solver that stops at a tolerance coarser than the steps (a
    bisection) is a staircase, whose differences say nothing there. Unchecked, said why; an entry that no step
    moves stays failed (fn does not depend on it)."""
    still = np.flatnonzero(~verdict.ok & ~verdict.kink & ~verdict.unchecked & (verdict.numerical == 0)
                           & (verdict.analytic != 0))
    if not still.size:
        return verdict, None
    coarse = judge_.diffs.entry_probes(index[still], judge_.analytic, judge_.step * STAIRCASE, judge_.scales.floored,
                                       [0])
    stairs = still[(coarse.d1[0] != 0) | (coarse.d2[0] != 0)]
    if not stairs.size:
        return verdict, None
    said = (f"{stairs.size} entries where {name}'s outputs move only at steps {STAIRCASE:g} times coarser than the "
            f"differences': it iterates to a tolerance coarser than them (a staircase), so they say nothing there")
    return _unchecked_at(verdict, stairs), said


def cancelled(judge_: EntryJudge, verdict: Verdict, index: np.ndarray) -> tuple[Verdict, str | None]:
    """Failing entries judged again where fn has outputs computed by cancellation (a KL divergence at q = p, exactly 0
    from terms of order 1: rounding in the forward explains more than CANCELLED ulps of it, :func:`.rounding.
    forward_rounding`). Their round-off is that, FUNCTION_ULPS times, not a few ulps of the output as the
    differences' bound has it, and a fine step's differences are that round-off over the step. An entry that fails
    no more with it is unchecked, said why: never passed on it (a wider bound only makes the differences say less)."""
    failing = np.flatnonzero(~verdict.ok & ~verdict.unchecked)
    diffs = judge_.diffs
    v = diffs.version
    bound = forward_rounding(v.fn, v.split.diff_leaves(), diffs.ct, v.context) if failing.size else None
    if bound is None:
        return verdict, None
    excess = []  # per output entry computed by cancellation, the round-off its terms give it
    for b, o in zip(bound.outputs, diffs.base, strict=True):
        b, o = np.abs(np.asarray(b)).astype(np.float64), np.abs(np.asarray(o)).astype(np.float64)
        excess.append(np.where(np.isfinite(b) & (b > CANCELLED * diffs.eps_out * o), b, 0.0))
    if not any(np.any(e) for e in excess):
        return verdict, None
    wider = Differences(v, diffs.flat, diffs.ct, diffs.eps_out, base=diffs.base, iterative=diffs.iterative,
                        longer=diffs.longer, excess=excess)
    again = dataclasses.replace(judge_, diffs=wider, too_uncertain=0)(index[failing])
    unsure = failing[again.ok | again.unchecked]
    if not unsure.size:
        return verdict, None
    return _unchecked_at(verdict, unsure), (
        f"{unsure.size} entries whose differences cannot tell once fn's outputs computed by cancellation have the "
        f"round-off their terms give them")


def within_leaf_rounding(judge_: EntryJudge, verdict: Verdict, index: np.ndarray, leaf_rtol: np.ndarray
                         ) -> tuple[Verdict, str | None]:
    """As called, entries of a leaf narrower than the computation that fail at the computation's rtol plus their
    rounding to the leaf (the scales' rtol) but pass at the leaf's own dtype's (``leaf_rtol``), or within what the
    backward's roundings to the leaf explain (:func:`.backward.to_leaves`: parts of a cotangent that cancel once
    rounded): a rule a few percent off there is not told from a VJP rounded to the leaf. Unchecked, said why:
    neither a pass nor a failure."""
    failing = np.flatnonzero(~verdict.ok & ~verdict.unchecked & (judge_.scales.rtol[index] < leaf_rtol[index]))
    if not failing.size:
        return verdict, None
    loose = dataclasses.replace(judge_, scales=dataclasses.replace(judge_.scales, rtol=leaf_rtol), too_uncertain=0)
    again = loose(index[failing])
    passes = again.ok & ~again.unchecked
    if not np.all(passes):
        v = judge_.diffs.version
        bound = forward_rounding(v.fn, v.split.diff_leaves(), judge_.diffs.ct, v.context, v.precision.eps,
                                 LEAF_ROUNDINGS)  # each rounding half an ulp (not ROUNDING_FACTOR's ulps of a function)
        if bound is not None:
            explained = np.abs(judge_.diffs.flat.real(bound.vjp, conjugate=True))[index[failing]]
            with np.errstate(invalid="ignore"):
                passes |= np.abs(again.analytic - again.numerical) <= again.tol + explained
    within = failing[passes]
    if not within.size:
        return verdict, None
    return _unchecked_at(verdict, within), (
        f"{within.size} entries of leaves narrower than the computation that are off by more than its rtol plus "
        f"their rounding to the leaf, and by no more than the leaf's own dtype's rtol: the differences cannot tell a "
        f"rule a few percent off there from a VJP rounded to the leaf many times")


def singular(verdict: Verdict, name: str) -> tuple[Verdict, str | None]:
    """At order 2, where fn's own VJP is not finite at the point (expi at 0), a non-finite second derivative
    is no error: the differences of order 2 never evaluate fn there, so they can be finite around a
    singularity. Such entries are unchecked, said why."""
    found = ~verdict.ok & ~np.isfinite(verdict.analytic)
    if not np.any(found):
        return verdict, None
    return _unchecked(verdict, found), (f"{int(np.sum(found))} entries of the VJP of the VJP are not finite where "
                                        f"the VJP of {name} itself is not finite (a singular point)")


def _unchecked(verdict: Verdict, rows: np.ndarray) -> Verdict:
    return dataclasses.replace(verdict, ok=verdict.ok | rows, unchecked=verdict.unchecked | rows)


def _unchecked_at(verdict: Verdict, positions: np.ndarray) -> Verdict:
    """``verdict`` with the probes at ``positions`` unchecked."""
    return _unchecked(verdict, np.isin(np.arange(verdict.ok.size), positions))


def merge(verdict: Verdict, rows: np.ndarray, other: Verdict) -> Verdict:
    """``verdict`` with the probes ``rows`` replaced by ``other``; every other probe passes (it passed the
    first level)."""
    passed = dataclasses.replace(verdict, ok=np.ones_like(verdict.ok), unchecked=np.zeros_like(verdict.unchecked))
    return passed.replaced(rows, other)


def keep_better(verdict: Verdict, rows: np.ndarray, new: Verdict) -> Verdict:
    """``verdict`` with its probes ``rows`` replaced by ``new``'s where those are the better estimate: fewer
    unchecked, then the smaller error."""
    old = verdict.take(rows)
    better = (new.unchecked < old.unchecked) | ((new.unchecked == old.unchecked) & (new.error < old.error))
    return verdict.replaced(rows[better], new.take(better))


def _imprecise(v: Verdict, natural: np.ndarray) -> np.ndarray:
    """Passing entries (not kinks) whose differences' own uncertainty exceeds a NEEDLE of their scale, mostly by
    their round-off bound: they could not see an error of that size, and a coarser step would (where the levels
    disagree instead, fn is rougher than its rounding, and coarser steps only look smoother)."""
    with np.errstate(invalid="ignore"):
        return (v.ok & ~v.unchecked & ~v.kink & ~v.zero & (2 * v.roundoff >= v.error)
                & ~(v.error <= large.NEEDLE * (np.abs(v.numerical) + natural)))


def _told_zero(v: Verdict, leaf_scale: np.ndarray, extra: float, loosest: float) -> np.ndarray:
    """An exact 0 the differences tell from their noise: they found no change at all (fn does not reach the entry
    at these steps: relu's dead side), or their tolerance is within ``loosest`` of the largest scale in its leaf.
    A rule that drops a leaf's gradient (all zeros, so no scale of its own) where the differences cannot resolve
    it is unchecked, as the right rule would be, never passed on a tolerance larger than what it hides."""
    with np.errstate(invalid="ignore"):
        return v.zero & ((v.numerical == 0) | (v.tol - extra <= loosest * leaf_scale))


def _loose(v: Verdict, natural: np.ndarray, extra: float, loosest: float) -> np.ndarray:
    """Passing entries (not kinks) whose tolerance, the user's atol aside, exceeds ``loosest`` of their scale.
    Allowances are capped below it (ALLOWANCE_CAP plus rtol), so only the differences' own uncertainty reaches it:
    jnp.i0 at order 2 at 0 passed a 100% error with a tolerance of 100%."""
    with np.errstate(invalid="ignore"):
        return v.ok & ~v.unchecked & ~v.kink & ~(v.tol - extra <= loosest * (np.abs(v.numerical) + natural))
