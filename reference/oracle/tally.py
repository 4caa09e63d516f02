"""From verdicts to a report: each leaf's figures (:class:`LeafStats`) and the mismatches to show.

The last stage of :func:`check_vjp`: the entries' verdicts (:mod:`.entries`) and the search's blocks
(:mod:`.search`) are folded per leaf into a :class:`LeafReport`, including each entry's error over its tolerance
(what :meth:`VJPMismatch.plot` draws), and the failing ones into :class:`Mismatch` records, worst first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from reference.oracle import search as large
from reference.oracle.compare import REPORTED, RefStats, mismatch
from reference.oracle.report import LeafReport, Method, Mismatch
from reference.oracle.trees import Flat, Split
from reference.oracle.verdict import Verdict


@dataclasses.dataclass
class LeafStats:
    """One leaf's figures, folded from its entries' verdicts and its search's blocks. ``badness`` is each
    entry's error over its tolerance (a block's, for the entries of a block judged whole; NaN: unchecked or never
    judged), as a float32 vector over the leaf's flat entries (real parts first)."""

    badness: np.ndarray
    max_abs: float = 0.0
    max_rel: float = 0.0
    tolerance_rel: float = 0.0
    kinks: int = 0
    unchecked: int = 0
    judged: int = 0

    @classmethod
    def of(cls, entries: int) -> LeafStats:
        return cls(np.full(entries, np.nan, np.float32))

    def add(self, v: Verdict, natural: np.ndarray, at: np.ndarray) -> None:
        """The verdicts ``v`` of the leaf's entries ``at`` (indices within the leaf)."""
        judged = ~v.unchecked & ~v.kink
        err = np.abs(v.analytic - v.numerical)[judged]
        floor = 1e-6 * float(np.max(natural, initial=0.0)) + 1e-300  # an entry that is 0 for every cotangent
        scale = np.maximum(np.abs(v.numerical[judged]) + natural[judged], floor)
        relative = ~v.zero[judged]  # exact zeros: absolute errors only
        self._judged(err, (err / scale)[relative], (v.tol[judged] / scale)[relative])
        self.kinks += int(np.sum(v.kink & v.ok))
        self.judged += int(np.sum(v.kink & v.ok))
        self.unchecked += int(np.sum(v.unchecked))
        with np.errstate(over="ignore"):
            self.badness[at] = np.where(v.unchecked, np.nan, np.where(v.ok, np.minimum(v.badness, 1.0), v.badness))

    @np.errstate(over="ignore", invalid="ignore")  # a NaN or inf analytic change shows as such
    def add_blocks(self, found: large.LeafSearch, start: int) -> None:
        """The search's blocks that were not split: a block's errors are per unit moved (abs) and over its scale.
        Its entries' badness is the block's, unless they are judged one by one (added after)."""
        judged = [b for b in found.blocks if b.fate in (large.Fate.PASSED, large.Fate.FAILED)]
        err = np.array([abs(b.analytic - b.numerical) for b in judged])
        scale = np.array([max(b.scale, 1e-300) for b in judged])
        relative = np.array([not (b.analytic == 0 and abs(b.numerical) <= b.tolerance) for b in judged], bool)
        self._judged(err / np.array([max(b.size, 1e-300) for b in judged]), (err / scale)[relative],
                     (np.array([b.tolerance for b in judged]) / scale)[relative])
        self.unchecked += sum(b.entries for b in found.unresolved)
        for b, e in zip(judged, err, strict=True):
            ratio = e / b.tolerance if b.tolerance > 0 else np.inf
            self.badness[b.lo - start:b.hi - start] = ratio if np.isfinite(e) else np.inf

    def unsure(self, at: np.ndarray) -> None:
        """Entries ``at`` (within the leaf) that the call's own VJP leaves unsure (stage 5): unchecked, whatever the
        differences said of the rule."""
        fresh = at[~np.isnan(self.badness[at])]
        self.badness[fresh] = np.nan
        self.unchecked += len(fresh)

    def _judged(self, err: np.ndarray, rel: np.ndarray, tolerance_rel: np.ndarray) -> None:
        """``err``: every judged entry's; ``rel`` and ``tolerance_rel``: those with a scale to be relative to."""
        self.max_abs = max(self.max_abs, float(np.max(err, initial=0.0)))
        self.max_rel = max(self.max_rel, float(np.max(rel, initial=0.0)))
        self.tolerance_rel = max(self.tolerance_rel, float(np.max(tolerance_rel, initial=0.0)))
        self.judged += len(err)

    def report(self, path: str, shape: tuple[int, ...], dtype: Any, method: Method, reference: RefStats | None,
               level: int | None) -> LeafReport:
        ref_abs, ref_rel = (reference.max_abs, reference.max_rel) if reference is not None else (None, None)
        if not self.judged and method is not Method.EMPTY:
            method = Method.NOT_JUDGED
        # Entries the differences could not check that the reference's VJP confirms (an exact 0 of a second
        # derivative beside the inner differences' round-off): checked, by the reference.
        confirmed = int(np.sum(np.isnan(self.badness) & reference.agree)) if reference is not None else 0
        return LeafReport(path, tuple(shape), str(dtype), method, self.max_abs, self.max_rel, self.kinks,
                          self.unchecked, ref_abs, ref_rel, level, self.tolerance_rel, self.judged, self.badness,
                          min(confirmed, self.unchecked))


def value_problems(flat: Flat, paths: list[str], index: np.ndarray, v: Verdict, rtol: np.ndarray) -> list[Mismatch]:
    """The failing entries, worst first, at most REPORTED."""
    found = []
    for j in np.flatnonzero(~v.ok)[np.argsort(-v.badness[~v.ok])][:REPORTED]:
        interval = (v.analytic[j] + v.low[j], v.analytic[j] + v.high[j]) if v.kink[j] else None
        found.append(mismatch("kink" if v.kink[j] else "value", flat, paths, int(index[j]),
                               analytic=float(v.analytic[j]), numerical=float(v.numerical[j]),
                               tolerance=float(v.tol[j]), badness=float(v.badness[j]), rtol=float(rtol[index[j]]),
                               interval=interval))
    return found


def block_problem(flat: Flat, paths: list[str], leaf: int, b: large.Block, rtol: np.ndarray) -> Mismatch:
    start = flat.part(leaf).start
    off = abs(b.analytic - b.numerical)
    return Mismatch("block", paths[leaf], b.lo - start, b.analytic, b.numerical, b.tolerance,
                    off / b.tolerance if b.tolerance > 0 and np.isfinite(off) else np.inf, rtol=float(rtol[b.lo]),
                    stop=b.hi - start)


def cotangent_types(split: Split, vjp: list) -> list[Mismatch]:
    """A cotangent whose shape or dtype is not its primal's."""
    found = []
    for k, i in enumerate(split.diff):
        got, want = vjp[k], split.leaves[i]
        if np.shape(got) != np.shape(want) or jnp.result_type(got) != jnp.result_type(want):
            found.append(Mismatch("cotangent", split.paths[i], None, np.nan, np.nan, np.inf, np.inf, detail=(
                f"the cotangent has shape {np.shape(got)} and dtype {jnp.result_type(got)}, but the primal has "
                f"shape {np.shape(want)} and dtype {jnp.result_type(want)}")))
    return found


def unresolved_why(found: large.LeafSearch, path: str) -> str:
    entries = sum(b.entries for b in found.unresolved)
    stop = "its budget ran out" if found.exhausted else "it followed only the worst"
    coarse = sum(b.entries for b in found.unresolved if b.coarse)
    why = (f"{coarse} of them in blocks whose differences are too coarse to rule out a {large.NEEDLE:.0%} error in "
           f"one entry (float32 differences carry the round-off of every output); ") if coarse else ""
    return (f"{path}: {entries} entries in {len(found.unresolved)} blocks that disagreed with the differences by more "
            f"than the search's sharpness but within the rule's tolerance (or gave no consistent differences) were "
            f"not narrowed down ({why}{stop})")


def also(why: str | None, more: str | None) -> str | None:
    """Two reasons, either of which may be None, as one."""
    if not more:
        return why
    return f"{why}; {more}" if why else more
