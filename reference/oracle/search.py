"""Large leaves: blocks of entries judged together, split where they fail, down to the entries.

A leaf of a million entries cannot be differenced entry by entry. Instead φ is moved along a
block of entries at once, each entry by its own step along the sign of its analytic VJP, and
the change compared with the analytic VJP's prediction for the same move. An error that many
entries share (a factor, a sign, a transpose, noise) adds up over the block.

The whole leaf is judged first, as one block: a rule wrong all over fails there. Otherwise it
is cut into :data:`BLOCKS` blocks, and each block is judged once and meets one :class:`Fate`:

* ``PASSED``: its change agrees with the analytic one to the search's sharpness, with differences
  that resolve a :data:`NEEDLE` in one typical entry (else it is suspect: a pass would prove nothing);
* ``FAILED``: it is off by more than the rule's own tolerance summed over its entries (and
  more than the differences' uncertainty): the rule is wrong there, narrowed down or not;
* ``SUSPECT``: off by more than the sharpness, within the tolerance: a needle may hide there (or
  it straddles a kink, where only its entries can say which side is right);
* ``UNCHECKED``: no step gives consistent differences (a jump, a NaN in reach).

Blocks that do not pass are split and their halves queued, the worst first, down to
:data:`SUSPECT` entries, which are handed over to be judged one by one. A failure is decided
only with every step level in view; a block that would be split whatever more levels said (the
only block of its parent that does not pass, within the allowance; a half of a failed block) is
split on one. A failed block needs no narrowing to fail the leaf: it is reported as it is (the
largest that failed, not its failing halves again), and narrowing only names examples. So once
blocks fail, only the :data:`EXAMPLES` worst are followed, each also handing over its
:data:`SAMPLE` entries of largest contribution (where an error all over the block shows most);
each followed block of the first cut hands over one, so that an error spread over many blocks
(noise, a rule at rounded inputs) is named even where halving every suspect block down to its
entries would outrun the budget. The search stops when the queue is empty or the budget is
spent; the leaf's verdict is a fold over the blocks that were not split (:class:`LeafSearch`): a
failed block is a failure whether or not it was narrowed down, and a suspect or unchecked block
left is counted as unchecked entries, never passed.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from reference.oracle.blocks import BlockDevice, block_probes
from reference.oracle.differences import Differences, Probes
from reference.oracle.verdict import CONFIDENT, Verdict, first_pass, judge

BLOCKS = 16  # the first cut of a large leaf
PATHS = 8  # suspect blocks followed per round, the worst first: how many needles can be told apart
EXAMPLES = 2  # failed blocks whose entries are sampled: the leaf fails already, entries only name examples
SAMPLE = 2  # entries handed over from each of them, those that move its analytic change most
BUDGET = 1024  # block probes (each 4 evaluations of fn per level) one leaf may spend
SUSPECT = 4  # a block of this many entries or fewer is handed over entry by entry
# The error in one typical entry a passed block must rule out: a 1% needle. A block passes only where its
# differences resolve that: their tolerance within NEEDLE of its analytic change over its entries. Float64
# differences resolve it in blocks of millions of entries; float32 ones (a function that cannot run in float64),
# whose round-off is that of every output of fn, in blocks of a few dozen.
NEEDLE = 1e-2
# How sharply a block's float64 rule must match its float64 differences, relative to Σ(|a| + scale)|Δ|:
# a block of 62,500 entries then resolves a change of one entry by 1e-9·62,500 ≈ 6e-5 of a typical entry.
SHARPNESS_FLOAT64 = 1e-9
# With no float64 version the differences are float32: a hundredth of the rule's rtol, the most they resolve.
SHARPNESS_OF_RTOL = 1e-2
# Weights the search sums over a block's |Δ|: the entries' analytic scale (what sharpness is relative to), the
# rule's allowance per entry (what a failure must exceed), and 1 (the size of the move, for the report).
SCALE, ALLOWANCE, SIZE = range(3)


class Fate(enum.Enum):
    """What one judgement of a block found."""

    PASSED = "passed"
    FAILED = "failed"
    SUSPECT = "suspect"
    UNCHECKED = "unchecked"


@dataclasses.dataclass(frozen=True)
class Block:
    """A judged block ``[lo, hi)`` of the flat vector: its fate and the numbers behind it, per unit of the probe."""

    lo: int
    hi: int
    fate: Fate
    analytic: float  # the change of φ the analytic VJP predicts
    numerical: float  # the change the differences measure
    tolerance: float  # the rule's allowance over the block plus the differences' uncertainty
    scale: float  # Σ (|a| + natural)|Δ|: the block's analytic scale
    size: float  # Σ |Δ|
    level: int  # the step level that decided
    badness: float  # |analytic − numerical| over the sharp tolerance (what orders the queue)
    verified: bool  # passed, or judged at every level (its parent's levels, if that was verified)
    parent_is_whole: bool = False  # one of the first cut, whose entries a spread-out error shows in directly
    coarse: bool = False  # its differences cannot rule out a NEEDLE in one entry: a pass would prove nothing

    @property
    def entries(self) -> int:
        return self.hi - self.lo


@dataclasses.dataclass(frozen=True)
class LeafSearch:
    """The fold over a leaf's search: ``blocks`` are the judged blocks that were not split (those handed over
    entry by entry excluded; failed ones whose entries were sampled included), ``entries`` the entries handed
    over, ``probes`` what it spent."""

    blocks: tuple[Block, ...]
    entries: np.ndarray
    probes: int
    exhausted: bool  # the budget ran out with blocks still queued

    @property
    def failed(self) -> tuple[Block, ...]:
        """Blocks off by more than the rule's tolerance, not narrowed down to entries."""
        return tuple(b for b in self.blocks if b.fate is Fate.FAILED)

    @property
    def unresolved(self) -> tuple[Block, ...]:
        """Suspect or unchecked blocks the search did not narrow down: their entries are unchecked."""
        return tuple(b for b in self.blocks if b.fate in (Fate.SUSPECT, Fate.UNCHECKED))

    @property
    def level(self) -> int:
        """The step level that decided most of the blocks."""
        levels = [b.level for b in self.blocks]
        return int(np.median(levels)) if levels else 0


def search(diffs: Differences, lo: int, hi: int, device: BlockDevice, step: float, sharpness: float,
           levels: int, loosest: float, failing: Callable[[np.ndarray], np.ndarray]) -> LeafSearch:
    """Judges ``[lo, hi)`` block by block (module docstring) and folds the verdicts. A block passes only where the
    differences' uncertainty is at most ``loosest`` of its scale (else it is followed like a suspect one).
    ``failing(entries)`` judges sampled entries one by one: once one fails, the leaf fails, and the search stops
    (what it has not narrowed down stands as judged)."""
    (whole,), spent = _judge_blocks(diffs, [(lo, hi, None)], step, 0, levels, device, sharpness, loosest)
    if whole.fate is Fate.FAILED:  # wrong all over: the leaf fails, and a few entries name examples
        return LeafSearch((whole,), np.sort(_sample(whole, device, SAMPLE)), spent, exhausted=False)
    edges = np.unique(np.linspace(lo, hi, min(BLOCKS, hi - lo) + 1).astype(np.int64))
    queue: list[tuple[int, int, Block | None]] = [(a, b, whole) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    kept: list[Block] = []
    entries: list[int] = []
    start = whole.level
    while queue:
        if spent + len(queue) * levels > BUDGET:  # spent: each parent stands as judged
            return _stopped(kept, queue, entries, spent, exhausted=True)
        judged, cost = _judge_blocks(diffs, queue, step, start, levels, device, sharpness, loosest)
        spent += cost
        start = max(0, min(int(np.median([b.level for b in judged])), levels - 2))
        judged = [dataclasses.replace(b, parent_is_whole=p is whole) for b, (*_, p) in zip(judged, queue, strict=True)]
        follow = _to_follow(judged)
        failed_parent = [p is not None and p.fate is Fate.FAILED for *_, p in queue]
        queue, sampled = [], list[int]()
        for b, nested in zip(judged, failed_parent, strict=True):
            if b.fate is Fate.FAILED and not nested:  # reported once, at the largest block that failed
                kept.append(b)
            if id(b) in follow and (b.fate is Fate.FAILED or b.parent_is_whole):
                sampled.extend(_sample(b, device, SAMPLE if b.fate is Fate.FAILED else 1))
            if b.fate is Fate.PASSED or id(b) not in follow:
                if b.fate is not Fate.FAILED:
                    kept.append(b)
            elif b.entries <= SUSPECT:
                entries.extend(range(b.lo, b.hi))
            else:
                mid = (b.lo + b.hi) // 2
                queue += [(b.lo, mid, b), (mid, b.hi, b)]
        entries.extend(sampled)
        if sampled and queue and np.any(failing(np.array(sampled, np.int64))):  # examples named: enough
            return _stopped(kept, queue, entries, spent, exhausted=False)
    return LeafSearch(tuple(kept), np.array(sorted(set(entries)), np.int64), spent, exhausted=False)


def _stopped(kept: list[Block], queue: list[tuple[int, int, Block | None]], entries: list[int], spent: int,
             exhausted: bool) -> LeafSearch:
    """The search stopped with blocks queued: each queued block's parent stands as judged (a failed one is kept)."""
    parents = {id(p): p for *_, p in queue if p is not None and p.fate is not Fate.FAILED}
    return LeafSearch(tuple(kept + list(parents.values())), np.array(sorted(set(entries)), np.int64), spent,
                      exhausted)


def _sample(block: Block, device: BlockDevice, count: int) -> np.ndarray:
    """The ``count`` entries of a block that move its analytic change most: where a shared error shows most (a NaN
    or inf first: it makes the block's change non-finite)."""
    part = device.contribution[block.lo:block.hi]
    return block.lo + np.argsort(-np.where(np.isfinite(part), part, np.inf), kind="stable")[:count]


def _to_follow(judged: Sequence[Block]) -> set[int]:
    """The blocks to split next: once some block fails, a few of those (to name entries); else the worst suspect
    and unchecked ones (where needles hide)."""
    worst = sorted((b for b in judged if b.fate is not Fate.PASSED), key=lambda b: -b.badness)
    failed = [b for b in worst if b.fate is Fate.FAILED]
    return {id(b) for b in (failed[:EXAMPLES] if failed else worst[:PATHS])}


class _Probed:
    """A round's block probes, per step level, each block probed at each level at most once."""

    def __init__(self, diffs: Differences, lo: np.ndarray, hi: np.ndarray, step: float, device: BlockDevice,
                 start: int):
        self.diffs, self.lo, self.hi, self.step, self.device = diffs, lo, hi, step, device
        probes, self.weighted = block_probes(diffs, lo, hi, step, [start], device)
        self.levels = {start: probes}  # (1, blocks) each; a block's column is real where self.real says so
        self.real = {start: np.ones(len(lo), bool)}
        self.spent = len(lo)

    def at(self, rows: np.ndarray, levels: Sequence[int]) -> Probes:
        """The blocks ``rows`` at ``levels``, (levels, rows): probed where they were not yet."""
        missing = [k for k in levels if not self.real.get(k, np.zeros(len(self.lo), bool))[rows].all()]
        if missing:
            found, _ = block_probes(self.diffs, self.lo[rows], self.hi[rows], self.step, missing, self.device)
            self.spent += len(rows) * len(missing)
            for i, k in enumerate(missing):
                if k not in self.levels:
                    self.levels[k] = Probes(**{f.name: np.zeros((1, len(self.lo)), getattr(found, f.name).dtype)
                                               for f in dataclasses.fields(Probes)})
                    self.real[k] = np.zeros(len(self.lo), bool)
                for f in dataclasses.fields(Probes):
                    getattr(self.levels[k], f.name)[:, rows] = getattr(found, f.name)[i]
                self.real[k][rows] = True
        return Probes(**{f.name: np.concatenate([getattr(self.levels[k], f.name)[:, rows] for k in levels])
                         for f in dataclasses.fields(Probes)})


def _judge_blocks(diffs: Differences, queue: Sequence[tuple[int, int, Block | None]], step: float, start: int,
                  levels: int, device: BlockDevice, sharpness: float, loosest: float) -> tuple[list[Block], int]:
    """Every queued block judged once, each level probed at most once (:class:`_Probed`).

    * Quickly at the leaf's level, where that settles it (almost every block of a correct rule).
    * A block that does not pass there is *held* on that level's verdict where more levels could not change what
      happens to it: below a failed block (the leaf fails already; its blocks only lead to examples), and the one
      block of its parent that does not pass, within the allowance at that level (a needle's path: it is split
      either way). Held blocks are suspect, or failed below a failed block; never passed, never a new failure.
    * The rest at that level and the next finer one, where they pass, or stay suspect within the allowance.
    * Those left at every level (the pair of levels most consistent with each other, and with every finer level,
      decides: two coarse steps can agree by chance, sin at 10⁶; see :func:`_verify_levels`), the worst first:
      once one of those fails, the rest are left suspect, unverified.
    """
    lo = np.array([q[0] for q in queue], np.int64)
    hi = np.array([q[1] for q in queue], np.int64)
    probed = _Probed(diffs, lo, hi, step, device, start)
    probes, weighted = probed.at(np.arange(len(queue)), [start]), probed.weighted
    sharp = sharpness * weighted[SCALE]
    quick = first_pass(probes, sharp)
    verdict = dataclasses.replace(judge(probes, sharp), level=np.full(len(queue), start))
    verified = quick.copy()

    def deeper(rows: np.ndarray, tried: Sequence[int]) -> Verdict:
        nonlocal verdict
        again = judge(probed.at(rows, tried), sharp[rows])
        again = dataclasses.replace(again, level=np.asarray(tried)[again.level])
        verdict = verdict.replaced(rows, again)
        return again

    beyond = _beyond(verdict, weighted[ALLOWANCE])  # at the leaf's level alone
    # Below a failed block (the leaf fails already: its blocks only lead to examples), and the one block of its parent
    # that does not pass at the leaf's level and is within the allowance there (where a needle hides): each is
    # followed on that level's verdict. A second level could only pass it; every level, only fail it again.
    under_failed = np.array([p is not None and p.fate is Fate.FAILED for *_, p in queue], bool)
    held = ~quick & (under_failed | _lone(queue, quick) & ~beyond)
    rest = np.flatnonzero(~quick & ~held)
    if rest.size and start + 1 < levels:
        again = deeper(rest, [start, start + 1])
        passed = again.confident & again.ok
        verified[rest[passed]] = True
        # A block the two levels judge sharply and within the allowance is suspect without proof at every level:
        # it cannot fail, and only its entries can tell (a needle).
        within = again.confident & ~again.ok & ~_beyond(again, weighted[ALLOWANCE][rest])
        rest = rest[~passed & ~within]
    rest = rest[np.argsort(-verdict.badness[rest], kind="stable")]
    verify = [_verify_levels(q[2], levels) for q in queue]
    for batch in (rest[:EXAMPLES], rest[EXAMPLES:]):
        for tried in sorted({verify[j] for j in batch}):
            deeper(np.array([j for j in batch if verify[j] == tried], np.int64), tried)
        verified[batch] = True
        if batch.size and np.any(_beyond(verdict.take(batch), weighted[ALLOWANCE][batch])):
            break
    verdict = dataclasses.replace(verdict, ok=(verdict.ok | quick) & ~held,
                                  unchecked=verdict.unchecked & ~quick & ~held)
    with np.errstate(invalid="ignore"):
        # An exact zero that no probe moved is judged on its tolerance alone; one the differences find within their
        # noise is vague where that noise is beyond its scale (a leaf whose gradient the rule drops has none).
        still = verdict.zero & (verdict.numerical == 0)
        vague = verdict.kink | ~(verdict.error <= loosest * weighted[SCALE]) & ~still  # its entries can tell
        coarse = (verdict.tol > NEEDLE * np.abs(verdict.analytic) / (hi - lo)) & ~still  # a typical entry's 1%
    vague |= coarse
    fates = [Fate.FAILED if held[j] and beyond[j] else _fate(verdict, j, weighted[ALLOWANCE][j], bool(vague[j]),
                                                              bool(verified[j])) for j in range(len(queue))]
    blocks = [Block(int(lo[j]), int(hi[j]), fates[j],
                    float(verdict.analytic[j]),
                    float(verdict.numerical[j]), float(weighted[ALLOWANCE][j] + verdict.error[j]),
                    float(weighted[SCALE][j]), float(weighted[SIZE][j]), int(verdict.level[j]),
                    float(verdict.badness[j]), bool(verified[j]), coarse=bool(coarse[j])) for j in range(len(queue))]
    return blocks, probed.spent


def _lone(queue: Sequence[tuple[int, int, Block | None]], quick: np.ndarray) -> np.ndarray:
    """Per queued block: whether it is the only block of its (judged) parent that the quick pass did not pass."""
    parents = [id(p) if p is not None else None for *_, p in queue]
    failing = Counter(p for p, q in zip(parents, quick, strict=True) if p is not None and not q)
    return np.array([p is not None and not q and failing[p] == 1 for p, q in zip(parents, quick, strict=True)], bool)


def _verify_levels(parent: Block | None, levels: int) -> tuple[int, ...]:
    """The levels a block that did not pass is judged at: every level; or, below a parent that did not pass either
    and was judged at every level, the parent's deciding pair, the next finer level and the finest (which a
    coincidence of the pair would leave)."""
    if parent is None or parent.fate is Fate.PASSED or not parent.verified:
        return tuple(range(levels))
    return tuple(sorted({k for k in (parent.level - 1, parent.level, parent.level + 1, levels - 1) if 0 <= k < levels}))


def _beyond(v: Verdict, allowance: np.ndarray) -> np.ndarray:
    """Off by more than the rule's allowance and the differences' uncertainty, and by CONFIDENT times the latter:
    no finer step and no rounding the rule is allowed could explain it. A NaN or inf analytic change against
    finite differences is beyond anything."""
    with np.errstate(invalid="ignore"):
        off = np.where(np.isfinite(v.analytic), np.abs(v.analytic - v.numerical), np.inf)
        return ~v.ok & ~v.unchecked & ~(off <= allowance + v.error) & (off >= CONFIDENT * v.error)


def _fate(v: Verdict, j: int, allowance: float, vague: bool, verified: bool) -> Fate:
    """A block that passes only as a kink (it straddles kinks, and only its entries can say which side is right)
    or with too uncertain differences is suspect, never passed; one that failed at two levels, unverified at
    every level, is suspect, never failed on that evidence alone."""
    if v.unchecked[j]:
        return Fate.UNCHECKED
    if v.ok[j]:
        return Fate.SUSPECT if vague else Fate.PASSED
    if not verified:
        return Fate.SUSPECT
    return Fate.FAILED if _beyond(v.take(np.array([j])), np.array([allowance]))[0] else Fate.SUSPECT
