"""``check_vjp``: a VJP checked against finite differences, a float64 version of itself, and a reference.

For ``φ(x) = Re⟨c, fn(x)⟩`` with a random cotangent ``c``, the VJP ``Jᵀc`` is ``∇φ`` (for a
complex leaf ``z = u + iv``, JAX's VJP is ``∂φ/∂u − i·∂φ/∂v``). The check, in order:

1. **What is checkable** (:mod:`.refusals`): float and complex leaves are checked, integer,
   boolean and key leaves stay fixed; anything else (and a function that is not deterministic)
   is refused with an error that names it.
2. **Which function the numbers come from** (:mod:`.precision`): the float64 version where it
   is the same function, else the call as made, at the precision it computes in.
3. **Finite differences** (:mod:`.differences`, :mod:`.verdict`): per entry, at the step level
   that fits the function there; kinks and jumps recognised. Large leaves are searched along
   signed blocks (:mod:`.search`).
4. **Precision** (:mod:`.compare`, :mod:`.rounding`): the call's own VJP against the float64 one,
   entry by entry; an entry off by no more than rounding in the call's forward explains is a
   precision note.
5. **The reference** (:mod:`.compare`), when given: its outputs and VJP, entry by entry.

Order 2 is the same check applied to the VJP itself (:mod:`.subjects`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle import parts, solvers
from reference.oracle import search as large
from reference.oracle.blocks import block_device
from reference.oracle.compare import REPORTED, Float64Comparison, RefStats, against_float64, against_reference
from reference.oracle.differences import Differences
from reference.oracle.domains import projected
from reference.oracle.entries import EntryJudge, cancelled, singular, staircase, within_leaf_rounding
from reference.oracle.jaxprs import iterative, output_precisions
from reference.oracle.precision import Choice, choose
from reference.oracle.refusals import as_args, function_name, require_checkable
from reference.oracle.report import (
    AT_INPUTS,
    AT_PROBE,
    FnRaised,
    Loops,
    Method,
    Mismatch,
    RefusedValue,
    VJPMismatch,
    VJPReport,
    raised_by_fn,
)
from reference.oracle.setup import Called, Setup, call_of, setup_of
from reference.oracle.subjects import SALT, Subject, order_2_computable, second_order
from reference.oracle.tally import LeafStats, also, block_problem, cotangent_types, unresolved_why, value_problems
from reference.oracle.trees import Split
from reference.oracle.verdict import Verdict
from reference.oracle.versions import canonical

ELEMENTWISE = 1024  # leaves up to this many real entries get a difference per entry; larger ones, blocks
# Arguments of at most this many entries in all are judged with a second cotangent too: an error that depends on
# how the cotangent rounds (a backward in bfloat16) is within the tolerance for a fair share of single draws, and
# with a handful of entries nothing else stands beside that draw. Above it, the entries' draws are independent.
FEW = 4
PRECISIONS = ("default", "strict")


def check_vjp(fn: Callable, args: Sequence[Any], *, reference: Callable | None = None,
              rtol: float | None = None, atol: float | None = None, eps: float | None = None,
              seed: int = 0, order: int = 1, precision: str = "default",
              domain: Sequence[str | None] | None = None) -> VJPReport:
    """Checks the VJP of ``fn`` at ``args`` against finite differences (and ``reference``).

    Works on any JAX function of pytree arguments, including your own ``jax.custom_vjp``:
    numpy arrays, Python scalars and lists, complex numbers, keys and integer labels, with
    x64 on or off. A random cotangent ``c`` (seeded) is pulled back through ``jax.vjp``;
    every float or complex entry of the result is compared with central differences of
    ``Re⟨c, fn(args)⟩`` (module docstring: how, and in which precision), and with
    ``jax.vjp(reference)`` when given. An entry passes if it is within its own tolerance:
    the differences' error estimate plus ``rtol × (|value| + the entry's natural scale)``;
    at a kink any value between the one-sided slopes is accepted.

    Args:
      fn: a function of ``*args`` returning a pytree of arrays.
      args: a tuple (or list) of arguments: arrays, Python numbers, pytrees of them.
      reference: an independent function with the same signature, differentiated by JAX. Entries the
        differences cannot check count as checked where its VJP confirms them (``report.confirmed``).
      rtol: relative tolerance; by default from the precision the call computes in
        (float64 1e-7, float32 1e-4, float16 4e-3, bfloat16 3e-2).
      atol: an absolute tolerance added to every entry's (default 0).
      eps: the first finite-difference step relative to each entry; by default from that
        precision (float64 1e-4, float32 1e-2, 16-bit 5e-2). Finer steps are tried where it
        does not fit the function.
      seed: seeds the cotangents and the probes.
      order: 1 checks the VJP; 2 checks the VJP of the VJP (the backward differentiated
        again, as in grad-of-grad and Hessian-vector products).
      precision: ``"default"`` lists entries of a float32 VJP that are off from its float64
        version by no more than rounding in the forward explains as notes in the report;
        ``"strict"`` makes them fail.
      domain: per argument, None or the structured domain it lives in: ``"symmetric"`` or ``"spd"``
        (checked along symmetric directions: sym(g) is compared), ``"simplex"`` (along directions of
        the last axis that sum to 0: g − mean(g)). A rule that sees only sym(Q) is then not failed
        for its antisymmetric part (:mod:`reference.oracle.domains`).

    Returns:
      A :class:`VJPReport`: per-leaf errors, kinks, precision notes, and where the numbers came from.

    Raises:
      VJPMismatch: an AssertionError whose ``problems`` are the entries that are off, worst first,
        each with its argument path (``args[0]['W']``), flat index, analytic and numerical values
        and the tolerance used; ``report`` is the report.
      TypeError: ``args`` is not a sequence; no float or complex argument or output.
      ValueError: an input holds NaN or inf; ``fn`` is not deterministic; nothing could be checked.

    Example:
      >>> import pure
      >>> report = check_vjp(pure.relu, (jnp.array([-1.0, 0.0, 2.0]),))
      >>> report.kinks  # relu at 0: 0 lies between the one-sided slopes 0 and c
      1
    """
    name = function_name(fn)
    args = as_args(name, args)  # type: ignore[assignment]
    if order not in (1, 2):
        raise ValueError(f"check_vjp: order must be 1 or 2, got {order!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"check_vjp: precision must be 'default' or 'strict', got {precision!r}")
    args = tuple(jax.tree_util.tree_map(canonical, args))
    require_checkable(name, Split.of(args))
    if reference is fn:  # fn is no reference of itself: it would confirm whatever the differences cannot check
        reference = None
    if domain is not None:
        fn = projected(name, fn, args, domain)
        reference = None if reference is None else projected(name, reference, args, domain)
    if order == 2:
        order_2_computable(fn, name, args)
    try:
        subject = Subject(fn, reference) if order == 1 else second_order(fn, name, args, reference, seed)
    except Exception as e:  # order 2 runs fn's VJP here: fn's own runtime check may raise at the inputs
        if not raised_by_fn(e):
            raise
        raise FnRaised(name, _where_raised(fn, args), e) from e
    used: dict[str, bool] = {}
    check = functools.partial(_check, subject, name, args, rtol=rtol, atol=atol, eps=eps, seed=seed,
                              strict=precision == "strict", used=used)
    try:
        return check()
    except Exception as e:  # fn's own error when run (raised_by_fn); any other, the oracle's included, surfaces
        if not raised_by_fn(e):
            raise
        error = e
    if used.get("float64") and isinstance(error, jax.errors.JaxRuntimeError):  # its float64 version failed when
        first = (str(error).strip().splitlines() or [""])[-1][:160]  # run (a host callback answering in float32)
        try:
            return check(refused64=f"its float64 version fails when run ({first})")
        except Exception as e:
            if not raised_by_fn(e):
                raise
            error = e
    raise FnRaised(name, _where_raised(fn, args), error) from error


def _where_raised(fn: Callable, args: tuple) -> str:
    """Whether fn raises at the given inputs, or only at some probe point near them."""
    try:
        jax.block_until_ready(fn(*args))
    except Exception as e:
        if raised_by_fn(e):
            return AT_INPUTS
        raise
    return AT_PROBE


def _check(subject: Subject, name: str, args: tuple, *, rtol: float | None, atol: float | None, eps: float | None,
           seed: int, strict: bool, refused64: str | None = None, used: dict[str, bool] | None = None,
           whole: bool = True) -> VJPReport:
    """The stages in order: fn as called; the version the numbers come from (:func:`.choose`); its differences and
    scales; the entries and blocks judged against them; the call's VJP against the float64 one; the reference.
    Outputs that compute in different precisions are checked one precision at a time (:mod:`.parts`)."""
    rng = np.random.default_rng([seed, SALT])
    split = Split.of(args)
    called = call_of(subject, name, split, rng)
    if whole and subject.truth is None:
        precisions = output_precisions(called.closed, split.diff_leaves(), called.out)
        if len(parts.groups(precisions)) > 1:
            return parts.checked_in_parts(subject, name, precisions, functools.partial(
                _check, name=name, args=args, rtol=rtol, atol=atol, eps=eps, seed=seed, strict=strict,
                refused64=refused64, used=used, whole=False))
    chosen = choose(subject.fn, name, split, called.version, called.out, called.cotangents, called.vjps, refused64,
                    solvers.stopping_error if iterative(called.closed) else None, subject.truth is None)
    if used is not None:
        used["float64"] = chosen.version is not called.version
    setup = setup_of(subject, split, called, chosen, rtol=rtol, atol=atol, eps=eps, rng=rng)
    judge_ = EntryJudge(setup.diffs, setup.a_main, setup.scales, setup.step, setup.levels, setup.loosest)
    index, methods, searches = _entries_to_judge(setup, setup.evaluate is called.version,
                                                 lambda entries: ~judge_(entries).ok, rng)
    stats, problems, verdict, unchecked_why = _verdicts(subject, name, setup, chosen, judge_, index, searches)
    problems = cotangent_types(split, called.vjps[0]) + problems
    if not any(s.judged for s in stats) and any(m is not Method.EMPTY for m in methods):
        raise RefusedValue("check_vjp: nothing could be checked: " + (unchecked_why or (
            f"{name} jumps, or is not finite, a step away from every entry of its arguments, or no step gives "
            f"consistent differences")))
    notes: list[Mismatch] = []
    if setup.evaluate is not called.version:  # the call's own VJP against the float64 one
        compared = _against_float64(called, setup, index, verdict, strict)
        problems += compared.failures + (compared.notes if strict else [])
        notes = [] if strict else compared.notes
        if compared.unsure.size:
            leaf = setup.flat.leaf_of(compared.unsure)
            for i, s in enumerate(stats):
                s.unsure(compared.unsure[leaf == i] - setup.flat.part(i).start)
            unchecked_why = also(unchecked_why, (
                f"{compared.unsure.size} entries of the call's own VJP further from the float64 one than float32's "
                f"rtol plus their rounding to the leaf and what rounding explains, within their own dtype's rtol: "
                f"rounding the bound does not see, or an error"))
    forward_err: float | None = None
    ref_stats: list[RefStats | None] = [None] * len(setup.paths)
    if subject.reference is not None:
        forward_err, ref_stats, found = against_reference(
            subject.reference, setup.evaluate, chosen.out, chosen.cotangents[0], setup.flat, setup.paths, setup.a_main,
            setup.scales.natural, rtol if rtol is not None else setup.evaluate.precision.rtol, setup.scales.extra,
            judge_, subject.order == 1)
        problems += found
    leaves = tuple(stats[i].report(path, setup.flat.shapes[i], jnp.result_type(split.leaves[split.diff[i]]),
                                   methods[i], ref_stats[i], searches[i].level if i in searches else None)
                   for i, path in enumerate(setup.paths))
    report = VJPReport(leaves, forward_err, setup.step, setup.evaluate.precision.name, setup.how, subject.order,
                       split.fixed(), tuple(sorted(notes, key=lambda n: -n.badness)), setup.diffs.one_by_one,
                       unchecked_why, setup.loops, _coarse(setup, called))
    if problems:
        raise VJPMismatch(name, problems, report)
    return report


def _coarse(setup: Setup, called: Called) -> str | None:
    """Why the differences are too coarse for a proof: fn checked as called in 16 bits (None where they are not)."""
    as_called = setup.evaluate is called.version and setup.evaluate.precision.sixteen_bit
    return setup.how if as_called else None


def _verdicts(subject: Subject, name: str, setup: Setup, chosen: Choice, judge_: EntryJudge, index: np.ndarray,
              searches: dict[int, large.LeafSearch]
              ) -> tuple[list[LeafStats], list[Mismatch], Verdict | None, str | None]:
    """Stage 4: each leaf's figures and mismatches, from the search's blocks and the entries judged one by one
    (:func:`_judged`); and why entries were left unchecked."""
    stats = [LeafStats.of(setup.flat.part(i).stop - setup.flat.part(i).start) for i in range(len(setup.paths))]
    for i, leaf_search in searches.items():  # blocks first: entries judged one by one are drawn over their block
        stats[i].add_blocks(leaf_search, setup.flat.part(i).start)
    problems: list[Mismatch] = []
    verdict, unchecked_why = None, None
    if index.size:
        verdict, unchecked_why = _judged(subject, name, setup, chosen, dataclasses.replace(judge_, too_uncertain=0),
                                         index)
        leaf = setup.flat.leaf_of(index)
        for i, s in enumerate(stats):
            s.add(verdict.take(leaf == i), setup.scales.natural[index][leaf == i],
                  index[leaf == i] - setup.flat.part(i).start)
        problems += value_problems(setup.flat, setup.paths, index, verdict, setup.scales.rtol)
    for i, leaf_search in searches.items():
        problems += [block_problem(setup.flat, setup.paths, i, b, setup.scales.rtol)
                     for b in leaf_search.failed[:REPORTED]]
        if leaf_search.unresolved:
            unchecked_why = also(unchecked_why, unresolved_why(leaf_search, setup.paths[i]))
    return stats, problems, verdict, unchecked_why


def _judged(subject: Subject, name: str, setup: Setup, chosen: Choice, judge_: EntryJudge, index: np.ndarray
            ) -> tuple[Verdict, str | None]:
    """Stage 4: the entries ``index`` judged (:mod:`.entries`), with a second cotangent where there are FEW; then
    the failures the differences cannot speak to (a solver's staircase, a singular point) unchecked, said why."""
    verdict = judge_(index)
    too_uncertain = judge_.too_uncertain
    if subject.truth is None and setup.flat.size <= FEW:  # a second cotangent (see FEW)
        diffs = Differences(setup.evaluate, setup.flat, chosen.cotangents[1], setup.evaluate.precision.eps,
                            iterative=setup.diffs.iterative, longer=setup.longer)
        second = judge_.with_cotangent(diffs, setup.flat.real(chosen.vjps[1], conjugate=True))
        other = second(index)
        too_uncertain += second.too_uncertain
        worse = np.flatnonzero(verdict.ok & ~other.ok & ~other.unchecked)
        verdict = verdict.replaced(worse, other.take(worse))
    why = None
    if subject.truth is None:
        verdict, why = cancelled(judge_, verdict, index)
    if setup.leaf_rtol is not None:
        verdict, said = within_leaf_rounding(judge_, verdict, index, setup.leaf_rtol)
        why = also(why, said)
    if setup.diffs.iterative:
        verdict, said = staircase(judge_, verdict, index, name)
        why = also(why, said)
    if subject.order == 2 and not all(np.all(np.isfinite(np.asarray(o))) for o in chosen.out):
        verdict, said = singular(verdict, name)
        why = also(why, said)
    if too_uncertain:
        why = also(why, f"{too_uncertain} entries whose differences are too uncertain to tell (a tolerance beyond "
                        f"{setup.loosest:g} of the entry) at every step tried")
    return verdict, why


def _against_float64(called: Called, setup: Setup, index: np.ndarray, verdict: Verdict | None, strict: bool
                     ) -> Float64Comparison:
    """Stage 5: the call's own VJP against the float64 rule's, entry by entry (:func:`.against_float64`), allowed
    its solves' measured stopping error; entries the differences failed already are not compared again. Strict,
    none is unsure: beyond the rtol and what rounding explains, a failure."""
    failed = set(index[~verdict.ok].tolist()) if verdict is not None else set()
    spread, spread_own = setup.spread_call, setup.spread_own
    measured = setup.loops is Loops.MEASURED
    stopped = solvers.vjp_stopping_error(called.version, called.cotangents[0]) if measured else None
    if stopped is not None:
        moved = np.abs(setup.flat.real(stopped))
        spread, spread_own = spread + moved, spread_own + moved
    s = setup.scales
    own, spread_own = (setup.rtol_call, spread) if strict else (setup.rtol_own, spread_own)
    return against_float64(called.version, setup.flat, setup.paths, setup.a_user, setup.a_main, s.natural, spread,
                           setup.rtol_call, own, spread_own, s.extra, called.cotangents[0], skip=failed)


def _entries_to_judge(setup: Setup, sharp_of_rtol: bool, failing: Callable[[np.ndarray], np.ndarray],
                      rng: np.random.Generator) -> tuple[np.ndarray, list[Method], dict[int, large.LeafSearch]]:
    """Small leaves: every entry. Large ones: searched block by block (:mod:`.search`); the entries it narrows
    down to are judged one by one, and its verdicts on the blocks are returned per leaf."""
    flat, s, diffs = setup.flat, setup.scales, setup.diffs
    elementwise = min(ELEMENTWISE, 2**26 // max(1, flat.size + diffs.outputs))
    picked, methods, searches = [], [], {}
    device = None
    for i in range(len(flat.shapes)):
        lo, hi = flat.part(i).start, flat.part(i).stop
        if hi == lo:
            methods.append(Method.EMPTY)
        elif hi - lo <= elementwise:
            methods.append(Method.ENTRIES)
            picked.append(np.arange(lo, hi))
        else:
            if device is None:
                magnitude = s.magnitude + s.natural
                device = block_device(diffs, setup.a_main, [magnitude, s.rtol * magnitude + s.spread + s.extra,
                                                           np.ones(flat.size)], s.relative, rng)
            sharpness = (large.SHARPNESS_OF_RTOL * float(np.min(s.rtol[lo:hi])) if sharp_of_rtol
                         else large.SHARPNESS_FLOAT64)
            searches[i] = large.search(diffs, lo, hi, device, setup.step, sharpness, setup.levels, setup.loosest,
                                       failing)
            methods.append(Method.FAILING_BLOCKS if searches[i].failed else Method.BLOCKS)
            picked.append(searches[i].entries)
    return (np.concatenate(picked) if picked else np.zeros(0, np.int64)), methods, searches
