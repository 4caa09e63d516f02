"""Which function the numbers come from, and the precision it really computes in.

If ``fn`` run on float64 copies of the inputs computes in float64 and gives the call's outputs
(within what rounding in the call's forward explains), the rule's mathematics is checked
there, sharply, and the call's own VJP is compared entry by entry with that float64 VJP.
Otherwise (random draws in the default dtype, internal casts, dtype-dependent code)
everything is checked on the call as made, at the precision it really computes in.

The precision a function computes in is read from its jaxpr (:mod:`.jaxprs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle import tolerance
from reference.oracle.jaxprs import precision_of, trace
from reference.oracle.lifting import NotLifted, lift
from reference.oracle.programs import jit_or_eager
from reference.oracle.rounding import ROUNDING_FACTOR, forward_rounding
from reference.oracle.tolerance import Precision
from reference.oracle.trees import Flat, Split
from reference.oracle.versions import Version, to64

# The float64 version is the same function if each of its outputs is the call's within this many ulps of the call's
# precision (relative to the entry itself), or within what rounding in the call's forward explains.
SAME_FUNCTION_ULPS = 1000
SAME_FUNCTION_REL = 2.0**-6  # and never more than this, relative (1000 ulps of float16 are 100%)
SAME_FUNCTION_CAP = 0.25  # and never when they are a quarter apart: that is another function


def leaf_precisions(flat: Flat, computed: Precision) -> list[Precision]:
    """Per differentiable leaf, the precision its entries are judged at: the computation's, or the leaf's own
    dtype where that is narrower (a VJP of a bfloat16 leaf is rounded to bfloat16; its steps must span ulps)."""
    return [min(computed, tolerance.of_dtype(d), key=lambda p: p.key) for d in flat.dtypes]


# ---------------------------------------------------------------- the choice
@dataclasses.dataclass
class Choice:
    """The version the numbers come from, its outputs, VJPs (one per cotangent) and cotangents, and why."""

    version: Version
    out: list
    vjps: list
    cotangents: list
    how: str


def _same_function(call: Version, out: list, v64: Version, out64: list, cotangent: list,
                   rng: np.random.Generator, stopping: Callable[[Version], list | None] | None
                   ) -> tuple[bool, float]:
    """Whether the float64 version's outputs are the call's, entry by entry: each within SAME_FUNCTION_ULPS of
    the call's precision of itself (never more than SAME_FUNCTION_REL), plus how far the float64 version moves
    there when its inputs move by as much (``lgamma`` near its root, whose float32 version is off by an absolute
    error), or plus what rounding in the call's forward explains (sin(t·f) at t = 10⁴ in float32 is 6e-4 from
    its float64 version, by the rounding of t·f alone). Never relative to the largest output: a function of its
    dtype (``finfo(x.dtype).eps`` beside a small entry) differs 100% there, and is another function. A function
    that iterates to a tolerance (``stopping``) is allowed each version's measured stopping error besides."""
    rel = min(SAME_FUNCTION_ULPS * call.precision.eps, SAME_FUNCTION_REL)
    pairs = [(np.asarray(o).astype(np.complex128), np.asarray(p).astype(np.complex128))
             for o, p in zip(out, out64, strict=True)]
    worst = 0.0
    for o, p in pairs:
        scale = float(np.max(np.abs(p), initial=0.0)) or 1.0
        with np.errstate(invalid="ignore"):  # inf − inf: NaN, which is never close; below tiny: flushed to zero
            off = np.where(_within(o, p, call.precision.tiny), 0.0, np.abs(o - p))
            worst = max(worst, float(np.max(off, initial=0.0)) / scale)
    if worst > SAME_FUNCTION_CAP:
        return False, worst
    allowed = [rel * np.abs(p) + call.precision.tiny for _, p in pairs]
    if _all_within(pairs, allowed):
        return True, worst
    if stopping is not None:  # each version's stopping error, where its loops converge
        for version in (call, v64):
            error = stopping(version)
            if error is not None:
                allowed = [a + e for a, e in zip(allowed, error, strict=True)]
        if _all_within(pairs, allowed):
            return True, worst
    allowed = [a + m for a, m in zip(allowed, _moved_by(v64, rel, rng), strict=True)]
    if _all_within(pairs, allowed):
        return True, worst
    bound = forward_rounding(call.fn, call.split.diff_leaves(), cotangent, call.context)
    if bound is None:
        return False, worst
    allowed = [a + ROUNDING_FACTOR * (np.asarray(b).real + np.asarray(b).imag)
               for a, b in zip(allowed, bound.outputs, strict=True)]
    return _all_within(pairs, allowed), worst


def _moved_by(version: Version, rel: float, rng: np.random.Generator, draws: int = 2) -> list[np.ndarray]:
    """Per output entry, how far ``version``'s outputs move when every input moves by ``±rel`` of itself, at most
    over ``draws`` random choices of signs."""
    leaves = version.split.diff_leaves()
    with version.context():
        run = jit_or_eager(version.fn)
        base = [np.asarray(o).astype(np.complex128) for o in run(*leaves)]
        worst = [np.zeros(b.shape) for b in base]
        for _ in range(draws):
            moved = [jnp.asarray(np.asarray(x) * (1 + rel * rng.choice([-1.0, 1.0], np.shape(x))), jnp.result_type(x))
                     for x in leaves]
            for w, b, o in zip(worst, base, run(*moved), strict=True):
                with np.errstate(invalid="ignore"):
                    np.maximum(w, np.nan_to_num(np.abs(np.asarray(o).astype(np.complex128) - b)), out=w)
    return worst


def _all_within(pairs: list[tuple[np.ndarray, np.ndarray]], allowed: list[np.ndarray]) -> bool:
    return all(bool(np.all(_within(o, p, a))) for (o, p), a in zip(pairs, allowed, strict=True))


@np.errstate(invalid="ignore")  # inf − inf: NaN, never within
def _within(o: np.ndarray, p: np.ndarray, allowed: np.ndarray | float) -> np.ndarray:
    """Entry by entry, ``|o − p| ≤ allowed``; equal values (the same inf) and two NaNs are within."""
    return (np.abs(o - p) <= allowed) | (o == p) | (np.isnan(o) & np.isnan(p))


def choose(fn: Callable, name: str, split: Split, call: Version, out: list, cts: list[list], a_call: list,
           refused64: str | None = None, stopping: Callable[[Version], list | None] | None = None,
           liftable: bool = True) -> Choice:
    """fn on float64 copies of the arguments, where it computes in float64 and agrees with the call; else its
    lifted version (:mod:`.lifting`: its own jaxpr with every float raised to float64), where that agrees with
    the call; else the call itself."""
    if call.precision.key >= 64:
        return Choice(call, out, a_call, cts, "as called (float64)")
    if refused64 is not None:
        return Choice(call, out, a_call, cts, f"as called ({call.precision.name}): {refused64}")
    with jax.enable_x64(True):  # a float64 array made outside would be cut back to float32
        split64 = Split.of(jax.tree_util.tree_map(to64, split.rebuild(split.diff_leaves())))
    found = _float64_choice(Version.of(fn, split64, x64=True), name, call, out, cts, stopping,
                            f"the float64 version of {name} (it agrees with the call)",
                            f"on float64 copies of its inputs {name}")
    if isinstance(found, Choice):
        return found
    why = found
    if liftable:
        lifted = lift(call.fn, call.split.diff_leaves(), call.context)
        if isinstance(lifted, NotLifted):
            why += f"; it cannot be lifted to float64: {lifted.why}"
        else:
            found = _float64_choice(Version(split64, lifted.fn, x64=True), name, call, out, cts, stopping,
                                    f"{name} lifted to float64 (its own jaxpr with every float raised to float64)",
                                    "lifted to float64")
            if isinstance(found, Choice):
                return found
            why += f"; {found}"
    return Choice(call, out, a_call, cts, f"as called ({call.precision.name}): {why}")


def _float64_choice(v64: Version, name: str, call: Version, out: list, cts: list[list],
                    stopping: Callable[[Version], list | None] | None, what: str, which: str) -> Choice | str:
    """``v64`` as the version the numbers come from, where it runs, computes in float64 and gives the call's
    outputs; else why not."""
    split64 = v64.split
    try:
        with v64.context():
            closed64 = trace(v64.fn, split64.diff_leaves())
            traced = None if closed64 is None else precision_of(  # read from its trace, before anything compiles
                closed64, split64.diff_leaves(), [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed64.out_avals])
        if traced is not None and traced.key < 64:
            return f"{which}, {name} computes in {traced.name}"
        shapes64 = closed64.out_avals if closed64 is not None else out
        cts64 = [[np.asarray(c).astype(np.complex128 if np.iscomplexobj(c) else s.dtype) for c, s in
                  zip(ct, shapes64, strict=True)] for ct in cts]
        out64, a64 = v64.vjp(cts64)
    except Exception as e:  # fn itself refuses float64 inputs, whatever it raises: check it as called
        return f"{which}, {name} fails ({type(e).__name__})"
    v64.precision = traced if traced is not None else precision_of(None, split64.diff_leaves(), out64)
    same, worst = _same_function(call, out, v64, out64, cts[0], np.random.default_rng(0), stopping)
    if same and v64.precision.key == 64:
        return Choice(v64, out64, a64, cts64, f"{what}, and the call's own {call.precision.name} VJP against it "
                                              f"entry by entry")
    if not same:
        return f"{which}, {name} gives other outputs (up to {worst:.2g} relative)"
    return f"{which}, {name} computes in {v64.precision.name}"
