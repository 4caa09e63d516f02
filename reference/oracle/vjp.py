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

from reference.oracle import cotangents, solvers
from reference.oracle import search as large
from reference.oracle.compare import REPORTED, against_float64, against_reference, mismatch
from reference.oracle.differences import LEVEL_RATIO, Differences, step_scales
from reference.oracle.domains import projected
from reference.oracle.precision import choose, iterative, leaf_precisions, precision_of
from reference.oracle.refusals import as_args, function_name, require_checkable, trace_deterministic
from reference.oracle.report import (
    AT_INPUTS,
    AT_PROBE,
    FnRaised,
    LeafReport,
    Loops,
    Method,
    Mismatch,
    NotDifferentiable,
    RefusedValue,
    VJPMismatch,
    VJPReport,
    raised_by_fn,
)
from reference.oracle.rounding import INPUT_SPREAD, capped, finite_abs, input_spread, natural_scale
from reference.oracle.subjects import LOOSEST_AS_CALLED, SALT, Subject, second_order
from reference.oracle.trees import Flat, Split
from reference.oracle.verdict import Verdict, first_pass, judge
from reference.oracle.versions import Version, canonical

ELEMENTWISE = 1024  # leaves up to this many real entries get a difference per entry; larger ones, blocks
COTANGENTS = 4  # cotangents drawn to learn each entry's natural scale
# Arguments of at most this many entries in all are judged with a second cotangent too: an error that depends on
# how the cotangent rounds (a backward in bfloat16) is within the tolerance for a fair share of single draws, and
# with a handful of entries nothing else stands beside that draw. Above it, the entries' draws are independent.
FEW = 4
PRECISIONS = ("default", "strict")
# The first steps tried, as multiples of the first, for entries whose differences are imprecise there (_imprecise).
COARSER = (LEVEL_RATIO**2, LEVEL_RATIO**4)
STAIRCASE = LEVEL_RATIO**4  # how much coarser steps must move an iterative fn its differences found flat
COARSEST = 0.05  # relative to the entry's step scale: coarser steps than this leave the function's own length scale


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
      reference: an independent function with the same signature, differentiated by JAX.
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
    if domain is not None:
        fn = projected(name, fn, args, domain)
        reference = None if reference is None else projected(name, reference, args, domain)
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
           seed: int, strict: bool, refused64: str | None = None, used: dict[str, bool] | None = None) -> VJPReport:
    rng = np.random.default_rng([seed, SALT])
    split = Split.of(args)
    call = Version.of(subject.fn, split)
    shapes, closed = trace_deterministic(name, call)
    try:
        cts = cotangents.balanced(call, cotangents.drawn(shapes, rng, COTANGENTS), rng)
        out, a_call = call.vjp(cts)
    except Exception as e:  # traced fine (above), so JAX's own limit: a while_loop, a primitive with no rule
        if raised_by_fn(e):  # or fn's own runtime check, raising where it ran (check_vjp says where)
            raise
        raise NotDifferentiable(name, subject.order, e) from e
    problems = _cotangent_types(split, a_call[0])
    call.precision = precision_of(closed, split.diff_leaves(), out)
    chosen = choose(subject.fn, name, split, call, out, cts, a_call, refused64,
                    solvers.stopping_error if iterative(closed) else None)
    if used is not None:
        used["float64"] = chosen.version is not call
    evaluate = chosen.version
    flat = Flat(evaluate.split.diff_leaves())
    paths = split.diff_paths()
    a_user, a_main = flat.real(a_call[0], conjugate=True), flat.real(chosen.vjps[0], conjugate=True)
    natural = natural_scale(flat, [flat.real(a, conjugate=True) for a in chosen.vjps])
    a_scale = finite_abs(a_main)
    vjps = [flat.real(a, conjugate=True) for a in chosen.vjps]
    # How far each entry moves when the inputs move by one unit of round-off: of the call's precision for the call's
    # own VJP (compared with the float64 one below), of the version's for the version's VJP against its differences.
    spread_call = capped(INPUT_SPREAD * input_spread(evaluate, chosen.cotangents, flat, vjps, call.precision.eps, rng),
                         a_scale + natural)
    spread = spread_call if evaluate is call else capped(INPUT_SPREAD * input_spread(
        evaluate, chosen.cotangents, flat, vjps, evaluate.precision.eps, rng), a_scale + natural)
    # Per entry: the rtol of the computation, or of the entry's own leaf where that is narrower (a bfloat16 leaf's
    # VJP is rounded to bfloat16); a user's rtol everywhere.
    per_leaf = leaf_precisions(Flat(split.diff_leaves()), call.precision)
    r_user = _per_entry(flat, [rtol if rtol is not None else p.rtol for p in per_leaf])
    extra = atol or 0.0
    step = eps if eps is not None else evaluate.precision.step
    levels = subject.levels or evaluate.precision.levels
    loosest = (evaluate.precision.loosest if subject.order == 1 or evaluate.precision.key == 64
               else LOOSEST_AS_CALLED)
    numeric, ct, noise_floor = evaluate, chosen.cotangents[0], 0.0
    base: list | None = chosen.out
    if subject.truth is not None:
        phi, noise_floor = subject.truth(evaluate, chosen.cotangents[0])
        numeric, base = Version(evaluate.split, phi, evaluate.x64, evaluate.precision), None
        ct = [np.ones((), np.float64 if evaluate.x64 else np.float32)]
    loops, longer, how = None, None, chosen.how
    if iterative(closed):  # while loops on the input path: run longer, their stopping error measured (solvers.py)
        with numeric.context():
            loops, longer, said_loops = solvers.plan(numeric.fn, evaluate.split.diff_leaves())
        how = f"{how}; {said_loops}"
    diffs = Differences(numeric, flat, ct, evaluate.precision.eps, noise_floor, base=base, iterative=loops is not None,
                        longer=longer)
    floored, relative = step_scales(flat)
    if evaluate is call and eps is None:  # a leaf narrower than the computation is moved by steps that span its ulps
        wider = _per_entry(flat, [max(1.0, p.step / step) for p in per_leaf])
        floored, relative = floored * wider, relative * wider
    # The scale an exact 0 is told from the differences' noise against: its leaf's largest; none (0) for a leaf the
    # rule makes 0 beside others that are not; any (inf) where the rule is 0 everywhere (a second derivative that
    # is 0 everywhere: the differences are all there is to judge it on).
    leaf_scale = _per_entry(flat, [float(np.max(natural[flat.part(i)], initial=0.0)) for i in range(len(paths))])
    if not np.any(leaf_scale):
        leaf_scale = np.full(flat.size, np.inf)

    def judge_entries(index: np.ndarray, diffs: Differences = diffs, a_main: np.ndarray = a_main) -> Verdict:
        """The first level for every entry; every level, of steps relative to the floored |x| and to |x|
        itself, for the entries the first does not settle. The VJP judged is the version's: the float64 rule
        where there is one (the call's own is compared with it in _precision_problems). An entry that passes
        only because its differences are too uncertain to tell (a tolerance above ``loosest`` of its scale,
        :mod:`.tolerance`) is tried
        at coarser steps, and unchecked if they do no better: a tolerance of the order of the entry passes
        anything; an exact 0 stays judged where the differences tell it from their noise (_told_zero: a second
        derivative that is 0 everywhere, differenced down to round-off)."""
        noise = r_user[index] * (natural[index] + a_scale[index]) + spread[index] + extra
        first = diffs.entry_probes(index, a_main, step, floored, [0])
        verdict, slow = judge(first, noise), np.flatnonzero(~first_pass(first, noise))
        if slow.size:
            deep = judge(diffs.entry_probes(index[slow], a_main, step, floored, range(levels)), noise[slow])
            small = np.flatnonzero(relative[index[slow]] < floored[index[slow]])
            if small.size:  # the steps that fit a function whose length scale is |x|: the better estimate wins
                own = judge(diffs.entry_probes(index[slow][small], a_main, step, relative, range(levels)),
                            noise[slow][small])
                deep = _keep_better(deep, small, own)
            verdict = _merge(verdict, slow, deep)
        # Differences too uncertain to resolve a NEEDLE in the entry (round-off of a large output that moves: a 1e9
        # offset in a loss) are tried at coarser steps, where the change rises above the round-off. A coarser
        # estimate refines the finer one only within the finer one's uncertainty: steps too coarse for fn (a
        # feature narrower than them, a 16-bit function's plateaus) agree with each other on the wrong slope.
        imprecise = np.flatnonzero(_imprecise(verdict, natural[index]))
        for factor in COARSER:
            if not imprecise.size or step * factor > COARSEST:
                break
            fine = verdict.take(imprecise)
            coarse = judge(diffs.entry_probes(index[imprecise], a_main, step * factor, floored, range(levels)),
                           noise[imprecise])
            with np.errstate(invalid="ignore"):
                refines = (~coarse.unchecked & (coarse.error < fine.error)
                           & (np.abs(coarse.numerical - fine.numerical) <= fine.error + coarse.error))
            verdict = verdict.replaced(imprecise[refines], coarse.take(refines))
            imprecise = imprecise[_imprecise(verdict.take(imprecise), natural[index][imprecise])]
        loose = np.flatnonzero(_loose(verdict, natural[index], extra, loosest))
        if loose.size:
            coarse = judge(diffs.entry_probes(index[loose], a_main, step * LEVEL_RATIO**2, floored, range(levels)),
                           noise[loose])
            verdict = _keep_better(verdict, loose, coarse)
            again = verdict.take(loose)  # still loose, and not an exact 0 the differences tell from their noise
            still = loose[_loose(again, natural[index][loose], extra, loosest)
                          & ~_told_zero(again, leaf_scale[index][loose], extra, loosest)]
            too_uncertain.append(len(still))
            verdict = verdict.replaced(still, dataclasses.replace(verdict.take(still), unchecked=np.ones(len(still),
                                                                                                       bool)))
        return verdict

    too_uncertain: list[int] = []  # entries judge_entries made unchecked for want of sharp differences
    index, methods, searches = _entries_to_judge(diffs, flat, a_main, natural, spread + extra, relative, step,
                                                 evaluate is call, r_user, levels, loosest,
                                                 lambda entries: ~judge_entries(entries).ok, rng)
    stats = [_LeafStats() for _ in paths]
    unchecked_why: str | None = None
    verdict = None
    if index.size:
        verdict = judge_entries(index)
        if subject.truth is None and flat.size <= FEW:  # a second cotangent (see FEW)
            other = judge_entries(index, Differences(evaluate, flat, chosen.cotangents[1], evaluate.precision.eps,
                                                     iterative=diffs.iterative, longer=longer),
                                  flat.real(chosen.vjps[1], conjugate=True))
            worse = np.flatnonzero(verdict.ok & ~other.ok & ~other.unchecked)
            verdict = verdict.replaced(worse, other.take(worse))
        if diffs.iterative:
            verdict, unchecked_why = _staircase(verdict, diffs, index, a_main, step, floored, name, unchecked_why)
        if subject.order == 2 and not all(np.all(np.isfinite(np.asarray(o))) for o in chosen.out):
            verdict, unchecked_why = _singular(verdict, name, unchecked_why)
        if sum(too_uncertain):
            unchecked_why = _also(unchecked_why, f"{sum(too_uncertain)} entries whose differences are too uncertain to "
                                                 f"tell (a tolerance beyond {loosest:g} of the entry) at every step "
                                                 f"tried")
        leaf = flat.leaf_of(index)
        for i, s in enumerate(stats):
            s.add(verdict.take(leaf == i), natural[index][leaf == i])
        problems += _value_problems(flat, paths, index, verdict, r_user)
    for i, leaf_search in searches.items():
        stats[i].add_blocks(leaf_search)
        problems += [_block_problem(flat, paths, i, b, r_user) for b in leaf_search.failed[:REPORTED]]
        if leaf_search.unresolved:
            unchecked_why = _also(unchecked_why, _unresolved_why(leaf_search, paths[i]))
    if not any(s.judged for s in stats) and any(m is not Method.EMPTY for m in methods):
        raise RefusedValue("check_vjp: nothing could be checked: " + (unchecked_why or (
            f"{name} jumps, or is not finite, a step away from every entry of its arguments, or no step gives "
            f"consistent differences")))
    notes: list[Mismatch] = []
    if evaluate is not call:
        failed = set(index[~verdict.ok].tolist()) if verdict is not None else set()
        stopped = solvers.vjp_stopping_error(call, cts[0]) if loops is Loops.MEASURED else None
        if stopped is not None:  # the call's own VJP is allowed its solves' measured stopping error
            spread_call = spread_call + np.abs(flat.real(stopped))
        found, notes = against_float64(call, flat, paths, a_user, a_main, natural, spread_call, r_user, extra,
                                           cts[0], skip=failed)
        problems += found + (notes if strict else [])
        notes = [] if strict else notes
    forward_err: float | None = None
    ref_stats: list[tuple[float, float] | None] = [None] * len(paths)
    if subject.reference is not None:
        forward_err, ref_stats, found = against_reference(
            subject.reference, evaluate, chosen.out, chosen.cotangents[0], flat, paths, a_main, natural,
            rtol if rtol is not None else evaluate.precision.rtol, extra, judge_entries, subject.order == 1)
        problems += found
    leaves = tuple(stats[i].report(path, flat.shapes[i], jnp.result_type(split.leaves[split.diff[i]]), methods[i],
                                   ref_stats[i], searches[i].level if i in searches else None)
                   for i, path in enumerate(paths))
    report = VJPReport(leaves, forward_err, step, evaluate.precision.name, how, subject.order, split.fixed(),
                       tuple(sorted(notes, key=lambda n: -n.badness)), diffs.one_by_one, unchecked_why, loops)
    if problems:
        raise VJPMismatch(name, problems, report)
    return report


def _staircase(verdict: Verdict, diffs: Differences, index: np.ndarray, a_main: np.ndarray, step: float,
               floored: np.ndarray, name: str, why: str | None) -> tuple[Verdict, str | None]:
    """In a function that iterates to a tolerance, failing entries whose differences found no change at all, where
    steps STAIRCASE times coarser do move fn: a solver that stops at a tolerance coarser than the steps (a
    bisection) is a staircase, whose differences say nothing there. Unchecked, said why; an entry that no step
    moves stays failed (fn does not depend on it)."""
    still = np.flatnonzero(~verdict.ok & ~verdict.kink & ~verdict.unchecked & (verdict.numerical == 0)
                           & (verdict.analytic != 0))
    if not still.size:
        return verdict, why
    coarse = diffs.entry_probes(index[still], a_main, step * STAIRCASE, floored, [0])
    stairs = still[(coarse.d1[0] != 0) | (coarse.d2[0] != 0)]
    if not stairs.size:
        return verdict, why
    said = (f"{stairs.size} entries where {name}'s outputs move only at steps {STAIRCASE:g} times coarser than the "
            f"differences': it iterates to a tolerance coarser than them (a staircase), so they say nothing there")
    return (dataclasses.replace(verdict, ok=verdict.ok | np.isin(np.arange(verdict.ok.size), stairs),
                                unchecked=verdict.unchecked | np.isin(np.arange(verdict.ok.size), stairs)),
            _also(why, said))


def _singular(verdict: Verdict, name: str, why: str | None) -> tuple[Verdict, str | None]:
    """At order 2, where fn's own VJP is not finite at the point (expi at 0), a non-finite second derivative
    is no error: the differences of order 2 never evaluate fn there, so they can be finite around a
    singularity. Such entries are unchecked, said why."""
    singular = ~verdict.ok & ~np.isfinite(verdict.analytic)
    if not np.any(singular):
        return verdict, why
    said = (f"{int(np.sum(singular))} entries of the VJP of the VJP are not finite where the VJP of {name} itself "
            f"is not finite (a singular point)")
    return (dataclasses.replace(verdict, ok=verdict.ok | singular, unchecked=verdict.unchecked | singular),
            f"{why}; {said}" if why else said)


def _merge(verdict: Verdict, rows: np.ndarray, other: Verdict) -> Verdict:
    """``verdict`` with the probes ``rows`` replaced by ``other``; every other probe passes (it passed the
    first level)."""
    passed = dataclasses.replace(verdict, ok=np.ones_like(verdict.ok), unchecked=np.zeros_like(verdict.unchecked))
    return passed.replaced(rows, other)


def _keep_better(verdict: Verdict, rows: np.ndarray, new: Verdict) -> Verdict:
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


def _per_entry(flat: Flat, values: Sequence[float]) -> np.ndarray:
    """One value per leaf, laid out per entry of the flat vector."""
    return np.concatenate([np.full(flat.part(i).stop - flat.part(i).start, v) for i, v in enumerate(values)]
                          or [np.zeros(0)])


def _also(why: str | None, more: str) -> str:
    return f"{why}; {more}" if why else more


def _unresolved_why(found: large.LeafSearch, path: str) -> str:
    entries = sum(b.entries for b in found.unresolved)
    stop = "its budget ran out" if found.exhausted else "it followed only the worst"
    coarse = sum(b.entries for b in found.unresolved if b.coarse)
    why = (f"{coarse} of them in blocks whose differences are too coarse to rule out a {large.NEEDLE:.0%} error in "
           f"one entry (float32 differences carry the round-off of every output); ") if coarse else ""
    return (f"{path}: {entries} entries in {len(found.unresolved)} blocks that disagreed with the differences by more "
            f"than the search's sharpness but within the rule's tolerance (or gave no consistent differences) were "
            f"not narrowed down ({why}{stop})")


def _block_problem(flat: Flat, paths: list[str], leaf: int, b: large.Block, rtol: np.ndarray) -> Mismatch:
    start = flat.part(leaf).start
    off = abs(b.analytic - b.numerical)
    return Mismatch("block", paths[leaf], b.lo - start, b.analytic, b.numerical, b.tolerance,
                    off / b.tolerance if b.tolerance > 0 and np.isfinite(off) else np.inf, rtol=float(rtol[b.lo]),
                    stop=b.hi - start)


def _cotangent_types(split: Split, vjp: list) -> list[Mismatch]:
    found = []
    for k, i in enumerate(split.diff):
        got, want = vjp[k], split.leaves[i]
        if np.shape(got) != np.shape(want) or jnp.result_type(got) != jnp.result_type(want):
            found.append(Mismatch("cotangent", split.paths[i], None, np.nan, np.nan, np.inf, np.inf, detail=(
                f"the cotangent has shape {np.shape(got)} and dtype {jnp.result_type(got)}, but the primal has "
                f"shape {np.shape(want)} and dtype {jnp.result_type(want)}")))
    return found


def _entries_to_judge(diffs: Differences, flat: Flat, a_main: np.ndarray, natural: np.ndarray,
                      allowed: np.ndarray, scale: np.ndarray, step: float, as_called: bool, r_user: np.ndarray,
                      levels: int, loosest: float, failing: Callable[[np.ndarray], np.ndarray],
                      rng: np.random.Generator) -> tuple[np.ndarray, list[Method], dict[int, large.LeafSearch]]:
    """Small leaves: every entry. Large ones: searched block by block (:mod:`.search`); the entries it narrows
    down to are judged one by one, and its verdicts on the blocks are returned per leaf."""
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
                magnitude = finite_abs(a_main) + natural
                device = diffs.block_device(a_main, [magnitude, r_user * magnitude + allowed, np.ones(flat.size)],
                                            scale, rng)
            sharpness = large.SHARPNESS_OF_RTOL * float(np.min(r_user[lo:hi])) if as_called else large.SHARPNESS_FLOAT64
            searches[i] = large.search(diffs, lo, hi, device, step, sharpness, levels, loosest, failing)
            methods.append(Method.FAILING_BLOCKS if searches[i].failed else Method.BLOCKS)
            picked.append(searches[i].entries)
    return (np.concatenate(picked) if picked else np.zeros(0, np.int64)), methods, searches


@dataclasses.dataclass
class _LeafStats:
    max_abs: float = 0.0
    max_rel: float = 0.0
    tolerance_rel: float = 0.0
    kinks: int = 0
    unchecked: int = 0
    judged: int = 0

    def add(self, v: Verdict, natural: np.ndarray) -> None:
        judged = ~v.unchecked & ~v.kink
        err = np.abs(v.analytic - v.numerical)[judged]
        floor = 1e-6 * float(np.max(natural, initial=0.0)) + 1e-300  # an entry that is 0 for every cotangent
        scale = np.maximum(np.abs(v.numerical[judged]) + natural[judged], floor)
        relative = ~v.zero[judged]  # exact zeros: absolute errors only
        self._judged(err, (err / scale)[relative], (v.tol[judged] / scale)[relative])
        self.kinks += int(np.sum(v.kink & v.ok))
        self.judged += int(np.sum(v.kink & v.ok))
        self.unchecked += int(np.sum(v.unchecked))

    @np.errstate(over="ignore", invalid="ignore")  # a NaN or inf analytic change shows as such
    def add_blocks(self, found: large.LeafSearch) -> None:
        """The search's blocks that were not split: a block's errors are per unit moved (abs) and over its scale."""
        judged = [b for b in found.blocks if b.fate in (large.Fate.PASSED, large.Fate.FAILED)]
        err = np.array([abs(b.analytic - b.numerical) for b in judged])
        scale = np.array([max(b.scale, 1e-300) for b in judged])
        relative = np.array([not (b.analytic == 0 and abs(b.numerical) <= b.tolerance) for b in judged], bool)
        self._judged(err / np.array([max(b.size, 1e-300) for b in judged]), (err / scale)[relative],
                     (np.array([b.tolerance for b in judged]) / scale)[relative])
        self.unchecked += sum(b.entries for b in found.unresolved)

    def _judged(self, err: np.ndarray, rel: np.ndarray, tolerance_rel: np.ndarray) -> None:
        """``err``: every judged entry's; ``rel`` and ``tolerance_rel``: those with a scale to be relative to."""
        self.max_abs = max(self.max_abs, float(np.max(err, initial=0.0)))
        self.max_rel = max(self.max_rel, float(np.max(rel, initial=0.0)))
        self.tolerance_rel = max(self.tolerance_rel, float(np.max(tolerance_rel, initial=0.0)))
        self.judged += len(err)

    def report(self, path: str, shape: tuple[int, ...], dtype: Any, method: Method,
               reference: tuple[float, float] | None, level: int | None) -> LeafReport:
        ref_abs, ref_rel = reference if reference is not None else (None, None)
        if not self.judged and method is not Method.EMPTY:
            method = Method.NOT_JUDGED
        return LeafReport(path, tuple(shape), str(dtype), method, self.max_abs, self.max_rel, self.kinks,
                          self.unchecked, ref_abs, ref_rel, level, self.tolerance_rel, self.judged)


def _value_problems(flat: Flat, paths: list[str], index: np.ndarray, v: Verdict, rtol: np.ndarray
                    ) -> list[Mismatch]:
    found = []
    for j in np.flatnonzero(~v.ok)[np.argsort(-v.badness[~v.ok])][:REPORTED]:
        interval = (v.analytic[j] + v.low[j], v.analytic[j] + v.high[j]) if v.kink[j] else None
        found.append(mismatch("kink" if v.kink[j] else "value", flat, paths, int(index[j]),
                               analytic=float(v.analytic[j]), numerical=float(v.numerical[j]),
                               tolerance=float(v.tol[j]), badness=float(v.badness[j]), rtol=float(rtol[index[j]]),
                               interval=interval))
    return found
