"""What :func:`reference.check_vjp` found, as records: per-leaf reports, mismatches, precision notes.

A caller reads the fields (``VJPMismatch.problems[0].path``, ``.index``, ``.kind``); the
messages are for people and are never parsed.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

import numpy as np

SHOWN = 10  # mismatches (or notes) written out in a message; the rest are counted
# A pass is a proof: a report is one only while at most this fraction of its entries is unchecked. Beyond it the
# report is no failure, and no pass either (``VJPReport.proven``): handgrad's commands give it a status of its own.
PROVEN = 0.01

KINDS = ("value", "kink", "block", "precision", "reference", "forward", "cotangent")


class Method(enum.StrEnum):
    """How a leaf was judged (a ``str``, so ``leaf.method == "blocks"`` reads as before)."""

    ENTRIES = "elementwise"  # every entry differenced on its own
    BLOCKS = "blocks"  # every block passed at a settled step level; failing entries, if any, named one by one
    FAILING_BLOCKS = "failing blocks"  # blocks off beyond the rule's tolerance, not all narrowed down to entries
    NOT_JUDGED = "not judged"  # nothing judged it: the report says why (``VJPReport.unchecked_why``)
    EMPTY = "empty"  # 0 entries


def said(error: BaseException, limit: int = 160) -> str:
    """An exception in one line for a report: its type and the first line of its message, or the line that names
    the type again where the message wraps the error in a preamble (equinox's "Above is the stack ...")."""
    name = type(error).__name__
    text = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    own = [line.partition(f"{name}: ")[2] for line in text if f"{name}: " in line]
    if not own and text and text[0].endswith("Traceback (most recent call last):"):  # a callback's error, wrapped
        own = [line for line in text[1:] if re.match(r"[\w.]+(Error|Exception): ", line)][:1]
    return f"{name}: {(own or text)[0][:limit]}" if text else name


class CheckRefused(Exception):
    """The check declined: ``reason`` says why in one line. Each refusal is also the TypeError or
    ValueError its cause is (no float argument: TypeError; a NaN input: ValueError), so existing
    ``except TypeError`` code keeps working."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RefusedType(CheckRefused, TypeError):
    """The arguments or outputs are not something a VJP can be checked on."""


class RefusedValue(CheckRefused, ValueError):
    """The values cannot be checked: non-finite inputs, randomness drawn in Python, nothing checkable."""


class FnRaised(RefusedValue):
    """fn itself raised while it ran, at the given inputs or at a probe point near them: a runtime check of its
    own (``equinox.error_if``, ``checkify``, a host callback) saying that it is outside its domain there.
    ``where`` is ``"at the given inputs"`` or ``"at a probe point"``; ``cause`` is fn's error."""

    def __init__(self, name: str, where: str, cause: BaseException):
        hint = "" if where == AT_INPUTS else ": its domain ends within the differences' steps; move the inputs " \
            "further inside it, or give a smaller eps"
        super().__init__(f"{name} raised {where} ({said(cause, 200)}){hint}")
        self.where, self.cause = where, cause


AT_INPUTS, AT_PROBE = "at the given inputs", "at a probe point"


def raised_by_fn(e: BaseException) -> bool:
    """Whether ``e`` is a runtime error of fn's own making: JAX's (a failed check or callback, reported when the
    program runs) or a library's RuntimeError subclass (equinox's). A bare RuntimeError, and Python's own kinds
    (RecursionError, NotImplementedError), are not: one of the oracle's own surfaces."""
    import jax

    python = RecursionError | NotImplementedError
    return isinstance(e, jax.errors.JaxRuntimeError) or (
        isinstance(e, RuntimeError) and type(e) is not RuntimeError and not isinstance(e, python)) or (
        "error calling callback" in str(e))  # a host callback's error, which JAX re-raises as one of several types


class NotDifferentiable(CheckRefused, TypeError):
    """JAX itself cannot differentiate fn (``order`` 1), or its VJP again (``order`` 2): ``cause`` is JAX's error."""

    def __init__(self, name: str, order: int, cause: BaseException):
        what = f"the VJP of {name} again" if order == 2 else name
        then = "; order 1 is checked on its own (order=1)" if order == 2 else ""
        super().__init__(f"check_vjp: order {order}: JAX cannot differentiate {what} ({said(cause, 200)}){then}")
        self.order, self.cause = order, cause


class Loops(enum.Enum):
    """How a check treated fn's while loops on the input path (:attr:`VJPReport.loops`)."""

    MEASURED = "measured"  # they converge: differences of the longer run, its stopping error measured per probe
    FIXED = "fixed"  # more steps change the result (a loop of a fixed count): judged as computed, nothing excused
    UNREACHABLE = "unreachable"  # they could not be run longer: judged as computed, nothing excused


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One entry that is off.

    ``kind`` is ``"value"`` (the VJP against finite differences), ``"kink"`` (at a kink, outside
    the one-sided slopes), ``"precision"`` (the call's VJP against the same rule in float64, by
    more than its precision explains), ``"reference"`` (against ``jax.vjp`` of the reference),
    ``"forward"`` (fn's output against the reference's) or ``"cotangent"`` (a cotangent whose
    shape or dtype is not its primal's).
    """

    kind: str
    path: str  # "args[0]['W']", or "output 1" for a forward mismatch
    index: int | None  # flat index in the leaf (None: the whole leaf); a block's first entry
    analytic: float  # what the VJP (or fn) gave
    numerical: float  # what it should be: differences, the float64 rule, the reference
    tolerance: float
    badness: float  # how many tolerances off (inf for NaN): the order they are shown in
    rtol: float | None = None
    part: str | None = None  # "real" or "imaginary" for a complex leaf
    interval: tuple[float, float] | None = None  # at a kink: the one-sided slopes
    precision: str | None = None  # "precision": the call's precision; the rounding bound is in `explained`
    explained: float | None = None  # "precision": how far rounding in the call's forward can move the entry
    detail: str = ""  # "cotangent": what differs
    stop: int | None = None  # "block": one past its last entry (flat indices in the leaf, real parts first)

    @property
    def where(self) -> str:
        if self.index is None:
            return self.path
        if self.stop is not None:
            return f"{self.path} flat indices {self.index}:{self.stop}"
        return f"{self.path} flat index {self.index}" + (f" ({self.part} part)" if self.part else "")

    def __str__(self) -> str:
        rtol = f" (rtol {self.rtol:g})" if self.rtol is not None else ""
        if self.kind == "cotangent":
            return f"{self.where}: {self.detail}"
        if self.kind == "forward":
            return (f"forward {self.where}: fn {self.analytic:.6g}, reference {self.numerical:.6g}, tolerance "
                    f"{self.tolerance:.2e}")
        if self.kind == "block" and self.stop is not None:
            return (f"{self.where} (a block, {self.stop - (self.index or 0)} entries moved together): analytic change "
                    f"{self.analytic:.6g}, numerical {self.numerical:.6g}, tolerance {self.tolerance:.2e}{rtol}")
        if self.kind == "reference":
            return (f"{self.where}: analytic {self.analytic:.6g}, reference {self.numerical:.6g}, tolerance "
                    f"{self.tolerance:.2e}{rtol}")
        if self.kind == "precision":
            bound = "" if self.explained is None else f"; rounding in its forward explains {self.explained:.2e}"
            return (f"{self.where}: analytic {self.analytic:.6g} ({self.precision}), the same rule in float64 "
                    f"{self.numerical:.6g}, tolerance {self.tolerance:.2e}{rtol}{bound}")
        numerical = (f"in [{self.interval[0]:.6g}, {self.interval[1]:.6g}] (kink)" if self.interval is not None
                     else f"{self.numerical:.6g}")
        return (f"{self.where}: analytic {self.analytic:.6g}, numerical {numerical}, tolerance "
                f"{self.tolerance:.2e}{rtol}")


@dataclasses.dataclass(frozen=True)
class LeafReport:
    """What was checked of one differentiable argument leaf, and how far it was off."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    method: Method
    max_abs_err: float  # beyond the accepted interval, against finite differences (a block's: per unit moved)
    max_rel_err: float  # the same, over each entry's (block's) own scale
    kinks: int  # entries where the one-sided differences disagree, and the VJP lies between them
    unchecked: int = 0  # entries with no derivative to check, or no step that gives consistent differences
    ref_max_abs_err: float | None = None
    ref_max_rel_err: float | None = None
    level: int | None = None  # blocks: the step level that decided most of them
    tolerance_rel: float = 0.0  # the largest tolerance of a judged entry (block), over its own scale
    judged: int = 0  # entries and blocks judged against the differences
    # Each entry's error over its tolerance (≤ 1 passes; NaN: unchecked), float32, over the leaf's flat entries
    # (real parts first): what plot() draws.
    badness: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    confirmed: int = 0  # of the unchecked entries, those the reference's VJP confirms: they count as checked

    @property
    def entries(self) -> int:
        """The leaf's real entries: a complex entry counts twice, its real and imaginary parts."""
        return int(np.prod(self.shape, dtype=np.int64)) * (2 if self.dtype.startswith("complex") else 1)

    @property
    def how(self) -> str:
        """The method as the report shows it: ``blocks@2`` for blocks at step level 2."""
        return f"{self.method}@{self.level}" if self.level is not None else str(self.method)


@dataclasses.dataclass(frozen=True)
class VJPReport:
    """What :func:`reference.check_vjp` measured; ``str(report)`` is a table."""

    leaves: tuple[LeafReport, ...]
    forward_max_abs_err: float | None
    eps: float  # the first relative finite-difference step
    precision: str = "float64"  # the precision the differences were taken in
    how: str = ""  # which function they came from, and why
    order: int = 1
    fixed: tuple[str, ...] = ()  # leaves held fixed: integers, booleans, keys
    notes: tuple[Mismatch, ...] = ()  # precision notes: entries off by what float rounding in the forward explains
    one_by_one: str | None = None  # why the probes were evaluated one at a time (no jit or vmap of fn)
    unchecked_why: str | None = None  # what the unchecked entries have in common, when it is known
    loops: Loops | None = None  # how while loops on the input path were treated (solvers.py); None: there are none
    # Why the differences are too coarse to prove anything (None: they are not): in 16 bits, as called, because fn
    # could not be checked in float64. They resolve tens of percent at best, so its pass is no proof.
    coarse: str | None = None

    @property
    def max_abs_err(self) -> float:
        return max([leaf.max_abs_err for leaf in self.leaves], default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max([leaf.max_rel_err for leaf in self.leaves], default=0.0)

    @property
    def kinks(self) -> int:
        return sum(leaf.kinks for leaf in self.leaves)

    @property
    def unchecked(self) -> int:
        return sum(leaf.unchecked for leaf in self.leaves)

    @property
    def entries(self) -> int:
        return sum(leaf.entries for leaf in self.leaves)

    @property
    def confirmed(self) -> int:
        return sum(leaf.confirmed for leaf in self.leaves)

    @property
    def proven(self) -> bool:
        """Whether the report is a proof: differences sharper than 16 bits (``coarse``), and at most ``PROVEN`` (1%) of
        its entries unchecked, by the differences and (where one was given) by the reference."""
        return self.coarse is None and self.unchecked - self.confirmed <= PROVEN * self.entries

    @property
    def unproven_why(self) -> str:
        """One line on why the report is no proof ("" when it is one)."""
        if self.proven:
            return ""
        if self.coarse is not None:
            return (f"differences in {self.precision} cannot tell a rule from one a few percent off, and fn could not "
                    f"be checked in float64 ({self.coarse})")
        left = self.unchecked - self.confirmed
        return (f"{left} of {self.entries} entries unchecked ({left / self.entries:.0%}; a pass leaves at most "
                f"{PROVEN:.0%}): " + (self.unchecked_why or "no step gives consistent differences"))

    def __str__(self) -> str:
        rows = [f"order {self.order}; differences in {self.precision}: {self.how}",
                f"{'argument':<24} {'shape':<14} {'dtype':<9} {'method':<16} {'abs err':>9} {'rel err':>9} "
                f"{'ref abs':>9} kinks"]
        for r in self.leaves:
            ref = "-" if r.ref_max_abs_err is None else f"{r.ref_max_abs_err:9.2e}"
            errors = (f"{r.max_abs_err:9.2e} {r.max_rel_err:9.2e}" if r.judged else f"{'-':>9} {'-':>9}")
            rows.append(f"{r.path:<24} {str(r.shape):<14} {r.dtype:<9} {r.how:<16} {errors} {ref:>9} {r.kinks}")
        if self.kinks:
            rows.append(f"{self.kinks} entries sit on a kink; any value between the one-sided differences was accepted")
        if self.coarse is not None:
            rows.append(f"NOT A PROOF: differences in {self.precision} cannot tell a rule from one a few percent off")
        elif not self.proven:
            rows.append(f"NOT A PROOF: more than {PROVEN:.0%} of the entries could not be checked")
        if self.confirmed:
            rows.append(f"{self.confirmed} entries the differences could not check agree with the reference's VJP")
        if self.unchecked:
            rows.append(f"{self.unchecked} entries could not be checked: " + (
                self.unchecked_why or "fn jumps there, is not finite a step away, or no step gives consistent "
                                      "differences"))
        if self.one_by_one:
            rows.append(f"probes evaluated one at a time: fn cannot be compiled or vmapped ({self.one_by_one})")
        empty = [r.path for r in self.leaves if r.method is Method.EMPTY]
        if empty:
            rows.append("0 entries, nothing checked: " + ", ".join(empty))
        rows += _notes_rows(self.notes)
        if self.fixed:
            rows.append("held fixed (no cotangent): " + ", ".join(self.fixed))
        return "\n".join(rows)

    def plot(self, path: str | os.PathLike[str], problems: Sequence[Mismatch] = (), *,
             title: str = "check_vjp: each leaf's error over its tolerance") -> Figure:
        """Every leaf, ``problems`` marked (none: all within), drawn to the PNG ``path`` (:mod:`.plot`; needs
        matplotlib); returns the figure."""
        from reference.oracle import plot

        return plot.draw(path, self.leaves, problems, title)


def _notes_rows(notes: Sequence[Mismatch]) -> list[str]:
    """The report's rows on its precision notes (none without notes)."""
    if not notes:
        return []
    more = [f"  ... and {len(notes) - SHOWN} more"] if len(notes) > SHOWN else []
    return [f"{len(notes)} precision notes: the {notes[0].precision} VJP is further from the same rule in float64 "
            f"than rtol, by no more than rounding in its forward explains (precision='strict' makes these fail):",
            *(f"  {note}" for note in notes[:SHOWN]), *more]


class VJPMismatch(AssertionError):
    """:func:`reference.check_vjp` found entries that are off: ``problems`` (worst first) and the ``report``."""

    __module__ = "reference"  # shown as reference.VJPMismatch, the name users import

    def __init__(self, name: str, problems: list[Mismatch], report: VJPReport):
        self.name, self.report = name, report
        self.problems = sorted(problems, key=lambda p: -p.badness)
        what = "VJP" if report.order == 1 else "VJP of the VJP"
        more = f"\n  ... and {len(self.problems) - SHOWN} more" if len(self.problems) > SHOWN else ""
        super().__init__(f"check_vjp: {len(self.problems)} mismatches in the {what} of {name} (worst first; "
                         f"differences in {report.precision}):\n  "
                         + "\n  ".join(str(p) for p in self.problems[:SHOWN]) + more)

    @property
    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def plot(self, path: str | os.PathLike[str]) -> Figure:
        """Each failing leaf, drawn to the PNG ``path``: where it is off, and by how many tolerances
        (:mod:`.plot`; needs matplotlib). Returns the figure."""
        from reference.oracle import plot

        what = "VJP" if self.report.order == 1 else "VJP of the VJP"
        return plot.draw(path, plot.failing(self.report.leaves, self.problems), self.problems,
                         f"check_vjp: where the {what} of {self.name} is off")
