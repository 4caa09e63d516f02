"""Needles in large leaves: signed-block probes, halved down to the entries that fail.

A leaf of a million entries cannot be differenced entry by entry. Instead φ is moved along
a block of entries at once, each entry by its own step with a pseudo-random sign, and the
change compared with the analytic VJP's prediction for the same move. A block that
disagrees is halved, and the failing halves followed, down to a few entries; those are then
judged one by one. One wrong entry among a million is reached in about 130 probes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from reference.oracle.differences import Differences
from reference.oracle.verdict import Verdict, first_pass, judge

BLOCKS = 16  # the first cut of a large leaf, before halving the failing blocks
PATHS = 8  # failing blocks followed per level, the worst first
BUDGET = 640  # block probes spent on one leaf at most (each probe is 4 evaluations of fn per level)
SUSPECT = 4  # a block of this many entries or fewer is handed over entry by entry
# How sharply a block's float64 rule must match its float64 differences, relative to Σ(|a| + scale)|Δ|:
# a block of 62,500 entries then resolves a change of one entry by 1e-9·62,500 ≈ 6e-5 of a typical entry.
SHARPNESS_FLOAT64 = 1e-9
# With no float64 version the differences are float32: a hundredth of the rule's rtol, the most they resolve.
SHARPNESS_OF_RTOL = 1e-2


def search(diffs: Differences, lo: int, hi: int, device: tuple, step: float, sharpness: float,
           levels: int) -> np.ndarray:
    """Entries of ``[lo, hi)`` whose block probes fail, in order.

    Each block is first judged at one level of steps: the leaf's level, once known. The leaf's
    level is the first one if that settles the first blocks, else the level that fits the whole
    leaf as one block. A block that fails there is judged at the next finer level too, and at
    every level where that does not settle it, before it is halved: a function that needs a finer
    step than |x| suggests (sin at 10⁶) is not mistaken for a wrong one.
    """
    edges = np.unique(np.linspace(lo, hi, min(BLOCKS, hi - lo) + 1).astype(np.int64))
    blocks = list(zip(edges[:-1], edges[1:], strict=True))
    suspects: list[int] = []
    spent, start, known = 0, 0, False  # known: blocks of this leaf hold at level `start`
    while blocks and spent < BUDGET:
        b_lo, b_hi = (np.array(side, np.int64) for side in zip(*blocks, strict=True))
        ok, first = _first(diffs, b_lo, b_hi, step, start, device, sharpness)
        spent += len(blocks)
        if not known and np.mean(ok) < 0.5:  # the first level does not fit this leaf: find one that fits all of it
            whole = _judge(diffs, np.array([lo]), np.array([hi]), step, range(levels), device, sharpness)
            spent += levels
            if whole.ok[0] and not whole.unchecked[0]:
                start = min(int(whole.level[0]), levels - 2)
                ok, first = _first(diffs, b_lo, b_hi, step, start, device, sharpness)
                spent += len(blocks)
        known |= bool(np.any(ok))
        badness = np.where(ok, 0.0, first.badness)
        # Once the leaf's level is known, a clear failure there settles a block; else it is judged at that level
        # and the next finer one, and where that does not settle it, at every level. (Before the level is known,
        # two coarse levels can agree on garbage: sin at 10⁶ differenced at steps of 100.)
        rest = np.flatnonzero(~ok & ~(first.confident if known else False))
        for tried in ([start, start + 1], range(levels)) if known else (range(levels),):
            if not rest.size:
                break
            verdict = _judge(diffs, b_lo[rest], b_hi[rest], step, tried, device, sharpness)
            spent += len(rest) * len(tried)
            settled = verdict.confident | (len(tried) == levels)
            held = verdict.ok & ~verdict.unchecked  # a block with a jump or a NaN in reach: narrow it down
            ok[rest[settled]] = held[settled]
            badness[rest[settled]] = np.where(held, 0.0, verdict.badness)[settled]
            rest = rest[~settled]
        failing = [blocks[j] for j in np.argsort(-badness) if not ok[j]][:PATHS]
        blocks = []
        for b0, b1 in failing:
            if b1 - b0 <= SUSPECT:
                suspects.extend(range(int(b0), int(b1)))
            else:
                mid = (b0 + b1) // 2
                blocks += [(b0, mid), (mid, b1)]
    return np.array(sorted(set(suspects)), np.int64)


def _first(diffs: Differences, lo: np.ndarray, hi: np.ndarray, step: float, level: int, device: tuple,
           sharpness: float) -> tuple[np.ndarray, Verdict]:
    """The blocks that pass at one level, and that level's verdict on each."""
    probes, scale = diffs.block_probes(lo, hi, step, [level], device)
    return first_pass(probes, sharpness * scale[0]), judge(probes, sharpness * scale[0])


def _judge(diffs: Differences, lo: np.ndarray, hi: np.ndarray, step: float, levels: Sequence[int], device: tuple,
           sharpness: float) -> Verdict:
    probes, scale = diffs.block_probes(lo, hi, step, levels, device)
    verdict = judge(probes, sharpness * scale[0])
    return dataclasses.replace(verdict, level=np.asarray(levels)[verdict.level])
