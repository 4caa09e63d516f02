"""Judging probes: does the analytic VJP agree with the finite differences along them?

Two passes. The *first* looks at one level of steps only and accepts a probe whose Richardson
estimate agrees within its own error estimate: almost every probe of a correct rule. The
*second* takes every level (steps h₀, h₀/4, h₀/16, ...) for the rest, and judges the
Richardson estimate of the level whose estimate is the most consistent with the next finer
one: the step that fits the function there. A kink shows as one-sided slopes whose gap does
not shrink with the step, at two levels in a row; there any value between them is accepted.
Where no level gives a consistent difference (φ jumps, or is not finite a step away), the
probe is *unchecked*: counted, never passed silently.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reference.oracle.differences import Probes

# Round-off bounds count each output's rounding once; two of them cover a rounding in the sum as well.
ROUNDOFF_MARGIN = 2.0
# What is left of the h² error after Richardson, as a fraction of the h-vs-2h gap (exactly 0 for a cubic,
# 1/20 leaves room for the h⁴ term up to a fifth of the h² one).
RICHARDSON_LEFT = 0.05
# A central difference alone carries its h² error, a third of the h-vs-2h gap: half of it, with room.
CENTRAL_LEFT = 0.5
# A smooth function's one-sided gap doubles with the step; a kink's stays. More than a tenth away from
# doubling, beyond four round-off bounds, is a kink; and at two levels in a row its one-sided slopes move by
# at most a tenth of their gap (at steps too coarse for the function they are garbage, and move at random).
KINK_GAP = 0.1
KINK_ROUNDOFF = 4.0
# No consistent difference: the best level's own error estimate is more than half the entry's scale.
UNCHECKABLE = 0.5
# Two levels' estimates are compared only where the finer level is in the asymptotic range of the coarser: its
# h-vs-2h gap at most this fraction of the coarser one's (h² predicts 1/16), beyond round-off. Two steps too
# coarse for the function (sin at 10⁶ at steps of 100) each give garbage, and may agree on it by chance.
ASYMPTOTIC = 0.25
# And every finer level's estimate must agree with the pair's, to this many times the pair's spread and its own
# round-off: a plateau that the finer steps leave is a coincidence of the coarse ones.
FINER_AGREE = 4.0
# A failure is settled when it exceeds the differences' own uncertainty this many times over: a finer step
# could not turn it into a pass.
CONFIDENT = 4.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Per probe: whether it holds, how far it is off, and the numbers to show."""

    ok: np.ndarray
    badness: np.ndarray  # |analytic − numerical| / tolerance; inf for NaN
    kink: np.ndarray  # sits on a kink (the central difference may agree as well: |x| at 0 with subgradient 0)
    analytic: np.ndarray
    numerical: np.ndarray
    tol: np.ndarray
    error: np.ndarray  # the differences' own error estimate (tol without the allowances)
    unchecked: np.ndarray
    low: np.ndarray  # at a kink: the one-sided slopes, as offsets from the analytic value
    high: np.ndarray
    level: np.ndarray  # the step level that decided
    roundoff: np.ndarray  # the part of ``error`` that is the round-off bound (the rest: how the levels disagree)

    def take(self, j: np.ndarray) -> Verdict:
        return Verdict(**{f.name: getattr(self, f.name)[j] for f in dataclasses.fields(self)})

    def replaced(self, rows: np.ndarray, other: Verdict) -> Verdict:
        """This verdict with the probes ``rows`` replaced by ``other``'s."""
        fields = {f.name: np.array(getattr(self, f.name), copy=True) for f in dataclasses.fields(self)}
        for key, value in fields.items():
            value[rows] = getattr(other, key)
        return Verdict(**fields)

    @property
    def zero(self) -> np.ndarray:
        """An analytic value of exactly 0 that the differences find 0 within their tolerance: judged on that
        tolerance alone (an entry's scale, and so a relative tolerance, means nothing there: sign, floor)."""
        with np.errstate(invalid="ignore"):
            return (self.analytic == 0) & (np.abs(self.numerical) <= self.tol)

    @property
    def confident(self) -> np.ndarray:
        """Settled by these levels: it holds with differences sharper than the allowance (a finer step could not
        show it off), or it fails by more than CONFIDENT times the differences' own uncertainty."""
        with np.errstate(invalid="ignore"):
            sharp_pass = self.ok & ~self.unchecked & ~self.kink & (self.error <= self.tol - self.error)
            clear_fail = (self.badness > 1) & (CONFIDENT * self.error <= np.abs(self.numerical - self.analytic))
        return sharp_pass | clear_fail


def _interval(p: Probes) -> tuple[np.ndarray, np.ndarray]:
    sides = np.stack([p.fwd, p.bwd, p.fwd2, p.bwd2])
    return np.min(sides, axis=0), np.max(sides, axis=0)


def _one_level(p: Probes, noise: np.ndarray) -> dict[str, np.ndarray]:
    """Every quantity of the verdict at each level (arrays shaped like the probes). A non-finite analytic value
    is taken as 0 in the estimates, so that the differences' own value and error stay finite, and never
    agrees with them (``finite``)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN and inf are judged, not warned of
        finite = np.isfinite(p.a1) & np.isfinite(p.a2)
        a1, a2 = np.where(finite, p.a1, 0.0), np.where(finite, p.a2, 0.0)
        richardson = (4 * (p.d1 - a1) - (p.d2 - a2)) / 3
        trunc = np.abs((p.d1 - a1) - (p.d2 - a2))
        round_r = ROUNDOFF_MARGIN * (4 * p.round1 + p.round2) / 3
        tol_r = round_r + RICHARDSON_LEFT * trunc + noise
        m1 = p.d1 - a1
        tol_1 = ROUNDOFF_MARGIN * p.round1 + CENTRAL_LEFT * trunc + noise
        smooth = ((np.abs(richardson) <= tol_r) | (np.abs(m1) <= tol_1)) & finite
        gap, gap2 = p.fwd - p.bwd, p.fwd2 - p.bwd2
        kink = np.abs(gap2 - 2 * gap) > (KINK_ROUNDOFF * (p.side_round2 + 2 * p.side_round) + KINK_GAP * np.abs(gap)
                                         + noise)
        low, high = _interval(p)
        return dict(richardson=richardson, numerical=richardson + a1, finite=finite, round_r=round_r, tol_r=tol_r,
                    trunc=trunc, round1=p.round1, round2=p.round2,
                    smooth=smooth, kink=kink,
                    low=low, high=high, inside=(low <= tol_1) & (high >= -tol_1), usable=p.finite & ~p.jump)


def _finer_agree(numerical: np.ndarray, spread: np.ndarray, round_r: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per pair of levels (k, k+1): whether every finer usable level's estimate is within FINER_AGREE times the
    pair's spread and its own round-off of level k+1's. Steps too coarse for fn can agree with each other by
    chance (sin at 10⁶: steps of 100, 25 and 6.26 all lie near multiples of 2π); finer steps then disagree."""
    with np.errstate(invalid="ignore"):
        pairs = spread.shape[0]
        agree = np.ones(spread.shape, bool)
        for k in range(pairs):
            for j in range(k + 2, numerical.shape[0]):
                off = np.abs(numerical[j] - numerical[k + 1])
                agree[k] &= ~usable[j] | (off <= FINER_AGREE * (spread[k] + round_r[j]))
        return agree


def first_pass(p: Probes, noise: np.ndarray) -> np.ndarray:
    """Probes (judged at their first level only) whose Richardson estimate agrees within its own error
    estimate, where that estimate is sharper than the allowance: the quick yes for almost every probe of a
    correct rule. The rest (a step too large for the function there: its h² term is what the estimate
    rests on) go to :func:`judge`, which compares levels instead."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN and inf are judged, not warned of
        level = p.level(0)
        v = _one_level(level, noise)
        trunc = np.abs((level.d1 - level.a1) - (level.d2 - level.a2))
        sharp = RICHARDSON_LEFT * trunc <= noise
        return (np.abs(v["richardson"]) <= v["tol_r"]) & sharp & p.finite[0] & v["finite"]


def judge(p: Probes, noise: np.ndarray) -> Verdict:
    """The verdict over every level of ``p`` (shaped (levels, probes)): the estimate of the level that is most
    consistent with the next coarser one decides; a kink seen at two levels in a row is accepted."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN and inf are judged, not warned of
        v = _one_level(p, noise)
        n_levels, count = p.d1.shape
        numerical = v["numerical"]
        columns = np.arange(count)
        if n_levels == 1:  # nothing to compare against: level 0 judged on its own error estimate
            best = np.zeros(count, int)
            error = v["tol_r"][0] - noise
            roundoff = v["round_r"][0]
        else:  # the uncertainty of level k+1's estimate: how far it is from level k's, and both round-offs
            spread = np.abs(numerical[:-1] - numerical[1:]) + v["round_r"][:-1] + v["round_r"][1:]
            asymptotic = v["trunc"][1:] <= ASYMPTOTIC * v["trunc"][:-1] + 4 * ROUNDOFF_MARGIN * (
                v["round1"][1:] + v["round2"][1:])
            spread = np.where(v["usable"][:-1] & v["usable"][1:] & asymptotic, spread, np.inf)
            spread = np.where(_finer_agree(numerical, spread, v["round_r"], v["usable"]), spread, np.inf)
            best = np.argmin(spread, axis=0) + 1
            error = spread[best - 1, columns]
            roundoff = v["round_r"][best - 1, columns] + v["round_r"][best, columns]
        value, analytic = numerical[best, columns], p.a1[best, columns]
        tol = error + noise
        smooth_ok = np.isfinite(error) & (np.abs(analytic - value) <= tol)
        if n_levels == 1:  # the central difference alone may settle it too
            smooth_ok |= v["smooth"][0]
        # A kink: seen at two levels in a row (the gap does not shrink), the analytic value inside the finer interval.
        seen = v["kink"] & v["usable"]
        if n_levels == 1:
            pair, finer = seen, 0
        else:  # a kink's one-sided slopes stay put as the step shrinks; slopes at steps too coarse for fn jump about
            moved = np.abs(p.fwd[1:] - p.fwd[:-1]) + np.abs(p.bwd[1:] - p.bwd[:-1])
            steady = moved <= KINK_GAP * np.abs(p.fwd[1:] - p.bwd[1:]) + KINK_ROUNDOFF * (
                p.side_round[1:] + p.side_round[:-1]) + np.where(np.isfinite(noise), noise, 0.0)
            pair, finer = seen[:-1] & seen[1:] & steady, 1
        kink = np.any(pair, axis=0)
        kink_ok = kink & np.any(pair & v["inside"][finer:], axis=0)
        level = np.where(kink & ~smooth_ok, np.argmax(pair, axis=0) + finer, best)
        scale = np.abs(value) + np.abs(analytic)
        if n_levels == 1:  # a jump in reach, or not finite a step away
            unchecked = ~smooth_ok & ~kink_ok & ~v["usable"][0]
        else:  # no level gives a consistent difference
            unchecked = ~smooth_ok & ~kink & ~(error <= UNCHECKABLE * scale + noise)
        # A NaN or inf VJP is wrong wherever the differences are finite and consistent (sqrt at 0 they are not).
        unchecked &= np.isfinite(analytic) | ~np.isfinite(error)
        badness = np.abs(analytic - value) / tol
        badness = np.where(np.isfinite(badness), badness, np.inf)
        at = (level, columns)
        return Verdict(ok=smooth_ok | kink_ok | unchecked, badness=badness, kink=kink, analytic=analytic,
                       numerical=value, tol=tol, error=error, unchecked=unchecked, low=v["low"][at], high=v["high"][at],
                       level=level, roundoff=roundoff)
