"""Stages 1 and 3 of :func:`check_vjp`: fn as called, and the setup every entry is judged in.

:func:`call_of` traces fn (refused if it is not deterministic) and pulls balanced random cotangents back through
it. After the choice of the version the numbers come from (:func:`.precision.choose`), :func:`setup_of` lays out
per entry what its tolerance is made of (:class:`.entries.Scales`), the steps, and the version's differences.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from reference.oracle import cotangents, solvers, tolerance
from reference.oracle.differences import Differences, step_scales
from reference.oracle.entries import Scales
from reference.oracle.jaxprs import iterative, precision_of, stops_on_values
from reference.oracle.precision import Choice, leaf_precisions
from reference.oracle.refusals import trace_deterministic
from reference.oracle.report import Loops, NotDifferentiable, raised_by_fn
from reference.oracle.rounding import INPUT_SPREAD, capped, finite_abs, input_spread, natural_scale
from reference.oracle.subjects import LOOSEST_AS_CALLED, Subject
from reference.oracle.tolerance import FLOAT32
from reference.oracle.trees import Flat, Split
from reference.oracle.versions import Version

COTANGENTS = 4  # cotangents drawn to learn each entry's natural scale


@dataclasses.dataclass(frozen=True)
class Called:
    """Stage 1: fn as called, at a balanced random cotangent (:mod:`.cotangents`), and its jaxpr."""

    version: Version
    closed: Any  # the jaxpr
    cotangents: list  # COTANGENTS of them
    out: list
    vjps: list  # one per cotangent


@dataclasses.dataclass(frozen=True)
class Setup:
    """Stage 3: the version the numbers come from, its differences, and what every entry is judged with."""

    evaluate: Version
    flat: Flat
    paths: list[str]  # each differentiable leaf's, as the report names it
    a_user: np.ndarray  # the call's own VJP, flat and real
    a_main: np.ndarray  # the version's VJP: what the differences judge
    scales: Scales
    spread_call: np.ndarray  # how far the call's VJP moves when its inputs move by its round-off (stage 5)
    rtol_call: np.ndarray  # per entry, the call's own VJP against the float64 one (stage 5)
    # Per entry, its precision's rtol and spread: off by more than rtol_call and spread_call and no more than these,
    # unchecked.
    rtol_own: np.ndarray
    spread_own: np.ndarray
    diffs: Differences
    step: float
    levels: int
    loosest: float
    how: str
    loops: Loops | None
    longer: Any  # the fn whose loops run longer (solvers.py), or None
    # As called, per entry, the rtol of the entry's own leaf where the scales' is narrower (a leaf narrower than the
    # computation); else None. An entry failing at the scales' rtol but not at this one is unchecked.
    leaf_rtol: np.ndarray | None = None


def call_of(subject: Subject, name: str, split: Split, rng: np.random.Generator) -> Called:
    """Stage 1: fn traced (refused if not deterministic), and its VJP at balanced cotangents."""
    call = Version.of(subject.fn, split)
    shapes, closed = trace_deterministic(name, call)
    try:
        cts = cotangents.balanced(call, cotangents.drawn(shapes, rng, COTANGENTS), rng)
        out, a_call = call.vjp(cts)
    except Exception as e:  # traced fine (above), so JAX's own limit: a while_loop, a primitive with no rule
        if raised_by_fn(e):  # or fn's own runtime check, raising where it ran (check_vjp says where)
            raise
        raise NotDifferentiable(name, subject.order, e) from e
    call.precision = precision_of(closed, split.diff_leaves(), out)
    return Called(call, closed, cts, out, a_call)


def setup_of(subject: Subject, split: Split, called: Called, chosen: Choice, *, rtol: float | None,
           atol: float | None, eps: float | None, rng: np.random.Generator) -> Setup:
    """Stage 3: each entry's scales and allowances, the steps, and the differences of the chosen version."""
    call, evaluate = called.version, chosen.version
    flat = Flat(evaluate.split.diff_leaves())
    vjps = [flat.real(a, conjugate=True) for a in chosen.vjps]
    a_main = vjps[0]
    natural = natural_scale(flat, vjps)
    a_scale = finite_abs(a_main)
    # How far each entry moves when the inputs move by one unit of round-off: of the call's precision for the call's
    # own VJP (compared with the float64 one), of the version's for the version's VJP against its differences.
    spread_call = capped(INPUT_SPREAD * input_spread(evaluate, chosen.cotangents, flat, vjps, call.precision.eps, rng),
                         a_scale + natural)
    spread = spread_call if evaluate is call else capped(INPUT_SPREAD * input_spread(
        evaluate, chosen.cotangents, flat, vjps, evaluate.precision.eps, rng), a_scale + natural)
    # Per entry: the rtol of the computation, or of the entry's own leaf where that is narrower (a bfloat16 leaf's
    # VJP is rounded to bfloat16); a user's rtol everywhere.
    per_leaf = leaf_precisions(Flat(split.diff_leaves()), call.precision)
    r_call = flat.per_entry([rtol if rtol is not None else p.rtol for p in per_leaf])
    # The rule's float64 self is judged at float32's rtol or finer: its VJP is not rounded to a 16-bit leaf or output
    # (that rounding is the call's own VJP's, judged against it at r_call).
    # As called, a leaf narrower than the computation is judged at the computation's rtol plus the rounding of its
    # VJP to the leaf (tolerance.rounded_to_leaf), not at its own dtype's: the differences are the computation's,
    # and a rule 3% off passed at bfloat16's rtol. What fails there but not at r_call is unchecked (_judged).
    narrowed = flat.per_entry([tolerance.rounded_to_leaf(call.precision, p) if p.key < call.precision.key
                                 else p.rtol for p in per_leaf])
    r_user = (r_call if rtol is not None else narrowed if evaluate is call
              else np.minimum(r_call, FLOAT32.rtol))
    # Stage 5, the call's own VJP against the float64 one: a 16-bit entry at float32's rtol plus one rounding to the
    # leaf, the rest being what rounding explains (at bfloat16's own 3e-2, a backward through float8 passed). Beyond
    # that and within its own dtype's rtol, unchecked: the bound does not see every rounding (a bfloat16 scan carry).
    computed = FLOAT32 if call.precision.sixteen_bit else call.precision
    r_stage5 = flat.per_entry([tolerance.rounded_to_leaf(computed, p, 1) if p.sixteen_bit else p.rtol
                                 for p in per_leaf]) if rtol is None else r_call
    # and its inputs moved by float32's round-off (a bfloat16 computation's roundings are in the bound; moved by
    # bfloat16's, an entry's allowance reached a tenth of it and a backward through float8 passed)
    spread_stage5 = spread_call
    if computed is not call.precision and evaluate is not call and rtol is None:
        spread_stage5 = capped(INPUT_SPREAD * input_spread(evaluate, chosen.cotangents, flat, vjps, computed.eps, rng),
                               a_scale + natural)
    step = eps if eps is not None else evaluate.precision.step
    loosest = (evaluate.precision.loosest if subject.order == 1 or evaluate.precision.key == 64
               else LOOSEST_AS_CALLED)
    numeric, ct, noise_floor = evaluate, chosen.cotangents[0], 0.0
    base: list | None = chosen.out
    if subject.truth is not None:
        phi, noise_floor = subject.truth(evaluate, chosen.cotangents[0])
        numeric, base = Version(evaluate.split, phi, evaluate.x64, evaluate.precision), None
        ct = [np.ones((), np.float64 if evaluate.x64 else np.float32)]
    loops, longer, how = None, None, chosen.how
    if iterative(called.closed):  # while loops on the input path: run longer, their stopping error measured
        with numeric.context():
            loops, longer, said_loops = solvers.plan(numeric.fn, evaluate.split.diff_leaves())
        how = f"{how}; {said_loops}"
    diffs = Differences(numeric, flat, ct, evaluate.precision.eps, noise_floor, base=base,
                        iterative=loops is not None and stops_on_values(called.closed), longer=longer)
    floored, relative = step_scales(flat)
    if evaluate is call and eps is None:  # a leaf narrower than the computation is moved by steps that span its ulps
        wider = flat.per_entry([max(1.0, p.step / step) for p in per_leaf])
        floored, relative = floored * wider, relative * wider
    # The scale an exact 0 is told from the differences' noise against: its leaf's largest; none (0) for a leaf the
    # rule makes 0 beside others that are not, and for a first derivative that is 0 everywhere (then only
    # differences that find no change at all tell it: a rule dropping every gradient of a function whose change
    # hides in its round-off passed as a proof); any (inf) for a second derivative that is 0 everywhere (a linear
    # fn's, differenced down to round-off: the differences are all there is to judge it on).
    leaf_scale = flat.per_entry([float(np.max(natural[flat.part(i)], initial=0.0)) for i in range(len(per_leaf))])
    if not np.any(leaf_scale) and subject.order == 2:
        leaf_scale = np.full(flat.size, np.inf)
    scales = Scales(natural, a_scale, spread, r_user, atol or 0.0, floored, relative, leaf_scale)
    a_user = flat.real(called.vjps[0], conjugate=True)
    return Setup(evaluate, flat, split.diff_paths(), a_user, a_main, scales, spread_stage5, r_stage5, r_call,
                 spread_call, diffs, step,
                 subject.levels or evaluate.precision.levels, loosest, how, loops, longer,
                 r_call if evaluate is call and np.any(r_user < r_call) else None)
