"""Soundness, round 2: classes of wrong rule a red team found passing, each drawn as a class (sizes on both sides
of the oracle's switches, seeds, magnitudes), not as the one example that was found.

* entries rearranged within a block where |x| is constant and the gradients share a sign;
* a dropped cotangent of a small output;
* a large output entry that never moves (a mask fill) or that does (an offset), beside the entries that move;
* a function that depends on its dtype (its float64 version is another function);
* a while loop on the input path (leniency earned by measuring the loop's own stopping error).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st

from reference import Loops, VJPMismatch, check_vjp
from reference.oracle import backward, differences, lifting, search, vjp
from reference.oracle.report import RefusedValue

EXAMPLES = max(5, settings().max_examples // 10)  # 10 under handgrad-ci, 100 under handgrad-thorough
QUICK = dict(phases=[Phase.explicit, Phase.reuse, Phase.generate], deadline=None)
# Leaves judged in blocks: just past the per-entry limit, around CHEAP, and a few blocks of the first cut.
BLOCK_SIZES = [vjp.ELEMENTWISE + 1, 2048, differences.CHEAP - 1, differences.CHEAP + 1, 3 * search.BLOCKS * 256]


# ------------------------------------------------------------------ entries rearranged within a block
def _rearranged(n: int, chunk: int, how: str, seed: int) -> np.ndarray:
    """A permutation of range(n) that rearranges each run of ``chunk`` entries (the tail less than a chunk as is)."""
    idx = np.arange(n)
    rng = np.random.default_rng(seed)
    for lo in range(0, n - chunk + 1, chunk):
        part = idx[lo:lo + chunk]
        if how == "halves swapped":
            idx[lo:lo + chunk] = np.concatenate([part[chunk // 2:], part[:chunk // 2]])
        elif how == "reversed":
            idx[lo:lo + chunk] = part[::-1]
        elif how == "shuffled":
            idx[lo:lo + chunk] = rng.permutation(part)
        else:  # "sorted by a key": descending order where the gradient ascends
            idx[lo:lo + chunk] = np.sort(part)[::-1]
    return idx


def _bias_loss(idx: np.ndarray | None):
    """A scalar loss of a bias whose gradient has one sign and differs entry by entry; the rule reads it through
    ``idx`` (a wrong rule: rearranged)."""
    k = np.linspace(0.5, 2.0, len(idx) if idx is not None else 0)

    def loss(b):
        return jnp.sum(jax.nn.softplus(b * jnp.asarray(k, b.dtype) + 0.3))

    f = jax.custom_vjp(loss)
    taken = None if idx is None else jnp.asarray(idx, jnp.int32)

    def bwd(b, g):
        grad = g * jax.nn.sigmoid(b * jnp.asarray(k, b.dtype) + 0.3) * jnp.asarray(k, b.dtype)
        return (grad if taken is None else grad[taken],)

    f.defvjp(lambda b: (loss(b), b), bwd)
    return f


@settings(max_examples=EXAMPLES, **QUICK)
@given(n=st.sampled_from(BLOCK_SIZES), chunk=st.sampled_from([2, 8, 64, 128, 256]),
       how=st.sampled_from(["halves swapped", "reversed", "shuffled", "sorted"]),
       at=st.sampled_from([0.0, 1.0, -0.5]), seed=st.integers(0, 2**16))
def test_entries_rearranged_within_a_block_fail_where_x_is_constant(n, chunk, how, at, seed):
    idx = _rearranged(n, chunk, how, seed)
    assume(np.any(idx != np.arange(n)))
    with pytest.raises(VJPMismatch):
        check_vjp(_bias_loss(idx), (jnp.full(n, at, jnp.float32),), seed=seed)


@pytest.mark.parametrize("at", [0.0, 1.0])
def test_the_same_loss_with_its_right_rule_passes_where_x_is_constant(at):
    n = differences.CHEAP + 1
    report = check_vjp(_bias_loss(np.arange(n)), (jnp.full(n, at, jnp.float32),))
    assert report.unchecked == 0


def test_one_swapped_pair_in_a_constant_leaf_of_65536_fails():
    idx = np.arange(65536)
    idx[[1000, 60_000]] = idx[[60_000, 1000]]  # gradients a factor 2 apart
    with pytest.raises(VJPMismatch):
        check_vjp(_bias_loss(idx), (jnp.zeros(65536, jnp.float32),))


# ------------------------------------------------------------------ a dropped cotangent of a small output
MAINS = {"tanh": jnp.tanh, "x @ W": lambda x: x @ jnp.asarray(np.eye(x.shape[-1]) * 0.5 + 0.1, x.dtype),
         "softplus rows": lambda x: jnp.sum(jax.nn.softplus(x), axis=-1)}
AUXES = {"sum of squares": lambda x: jnp.sum(x**2), "logsumexp": lambda x: jax.nn.logsumexp(x),
         "per row": lambda x: jnp.mean(jnp.abs(x) ** 1.5, axis=-1)}
AUX_ERRORS = {"dropped": lambda g: 0 * g, "sign": lambda g: -g, "doubled": lambda g: 2 * g}


def _with_aux(main, aux, weight: float, error):
    """``(main(x), weight · aux(x))``: an activation and its auxiliary loss; the rule gets the aux part wrong
    (``error`` applied to it) or right (None)."""
    def fn(x):
        return main(x), weight * aux(x)

    f = jax.custom_vjp(fn)

    def bwd(x, g):
        (gm,) = jax.vjp(main, x)[1](g[0])
        (ga,) = jax.vjp(lambda x: weight * aux(x), x)[1](g[1])
        return (gm + (ga if error is None else error(ga)),)

    f.defvjp(lambda x: (fn(x), x), bwd)
    return f


@settings(max_examples=EXAMPLES, **QUICK)
@given(main=st.sampled_from(sorted(MAINS)), aux=st.sampled_from(sorted(AUXES)), error=st.sampled_from(sorted(AUX_ERRORS)),
       weight=st.sampled_from([1e-2, 1e-5, 1e-8, 1e-12]), x64=st.booleans(),
       n=st.sampled_from([1, 8, 200, vjp.ELEMENTWISE + 1]), seed=st.integers(0, 2**16))
def test_a_small_outputs_lost_or_wrong_part_fails(main, aux, error, weight, x64, n, seed):
    rng = np.random.default_rng(seed)
    shape = (n,) if main == "tanh" else (max(1, n // 8), 8)
    with jax.enable_x64(x64):
        x = jnp.asarray(rng.standard_normal(shape), jnp.float64 if x64 else jnp.float32)
        with pytest.raises(VJPMismatch):
            check_vjp(_with_aux(MAINS[main], AUXES[aux], weight, AUX_ERRORS[error]), (x,), seed=seed)


@pytest.mark.parametrize("weight", [1e-5, 1e-12])
@pytest.mark.parametrize("x64", [False, True])
def test_the_right_rule_with_a_small_output_passes(weight, x64):
    with jax.enable_x64(x64):
        x = jnp.asarray(np.random.default_rng(1).standard_normal((16, 8)), jnp.float64 if x64 else jnp.float32)
        report = check_vjp(_with_aux(MAINS["x @ W"], AUXES["per row"], weight, None), (x,))
    assert report.unchecked == 0


# ------------------------------------------------------------------ a large output entry beside those that move
ERRORS = {"3% off": lambda g: 1.03 * g, "sign": lambda g: -g, "noise 5%": lambda g: g * (
    1 + 0.05 * jax.random.normal(jax.random.key(3), g.shape).astype(g.dtype)),
          "every 7th 10% off": lambda g: g * jnp.where(jnp.arange(g.size).reshape(g.shape) % 7 == 3, 1.1, 1.0
                                                           ).astype(g.dtype)}


def _masked_logits(mask: np.ndarray, fill: float, cap: float, error):
    """Soft-capped logits, ``cap · tanh(x / cap)``, filled with ``fill`` where ``mask`` is False (attention's
    masking); the rule is wrong by ``error`` where the logits move, or right (None)."""
    def fn(x):
        return jnp.where(mask, cap * jnp.tanh(x / cap), jnp.asarray(fill, x.dtype))

    f = jax.custom_vjp(fn)

    def bwd(x, g):
        grad = jnp.where(mask, g * (1 - jnp.tanh(x / cap) ** 2), 0.0).astype(x.dtype)
        return (grad if error is None else error(grad),)

    f.defvjp(lambda x: (fn(x), x), bwd)
    return f


def _offset_loss(big: float, error):
    """A scalar loss with a large constant added: ``big + Σ sin(x)²``."""
    def fn(x):
        return big + jnp.sum(jnp.sin(x) ** 2)

    f = jax.custom_vjp(fn)
    f.defvjp(lambda x: (fn(x), x), lambda x, g: ((g * jnp.sin(2 * x)) if error is None else error(g * jnp.sin(2 * x)),))
    return f


@settings(max_examples=EXAMPLES, **QUICK)
@given(error=st.sampled_from(sorted(ERRORS)), fill=st.sampled_from([-1e9, -1e30, 1e9, -3e38]),
       cap=st.sampled_from([5.0, 30.0]), masked=st.sampled_from([0.25, 0.5, 0.9]), x64=st.booleans(),
       n=st.sampled_from([16, 256, vjp.ELEMENTWISE + 1, 4096]), seed=st.integers(0, 2**16))
def test_a_wrong_rule_beside_a_mask_fill_fails(error, fill, cap, masked, x64, n, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((n // 16, 16)) >= masked
    assume(mask.sum() >= 1)
    with jax.enable_x64(x64):
        x = jnp.asarray(rng.standard_normal((n // 16, 16)) * 2, jnp.float64 if x64 else jnp.float32)
        with pytest.raises(VJPMismatch):
            check_vjp(_masked_logits(mask, fill, cap, ERRORS[error]), (x,), seed=seed)


@settings(max_examples=EXAMPLES, **QUICK)
@given(error=st.sampled_from(sorted(ERRORS)), big=st.sampled_from([1e6, 1e9, 1e10]), x64=st.booleans(),
       n=st.sampled_from([1, 8, 300]), seed=st.integers(0, 2**16))
def test_a_wrong_rule_of_a_loss_with_a_large_offset_fails(error, big, x64, n, seed):
    rng = np.random.default_rng(seed)
    with jax.enable_x64(x64):
        x = jnp.asarray(rng.standard_normal(n), jnp.float64 if x64 else jnp.float32)
        fn = _offset_loss(big, ERRORS[error])
        assume(not np.allclose(np.asarray(jax.grad(fn)(x)), np.asarray(jnp.sin(2 * x)), rtol=1e-3, atol=1e-6))
        with pytest.raises(VJPMismatch):
            check_vjp(fn, (x,), seed=seed)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("n", [256, 4096])
def test_right_rules_beside_large_outputs_pass(x64, n):
    rng = np.random.default_rng(4)
    mask = rng.random((n // 16, 16)) > 0.5
    with jax.enable_x64(x64):
        x = jnp.asarray(rng.standard_normal((n // 16, 16)) * 2, jnp.float64 if x64 else jnp.float32)
        assert check_vjp(_masked_logits(mask, -1e9, 5.0, None), (x,)).unchecked == 0
        assert check_vjp(_offset_loss(1e9, None), (x[:4].ravel(),)).unchecked == 0


# ------------------------------------------------------------------ a function of its own dtype
def _eps_softsign(k: float, rule_eps: str):
    """``x·|x| / √(x² + k·eps)`` with eps of x's dtype (a smooth |x|·sign, as code guards a division); the rule uses
    the eps of x's dtype ("own", right), float64's ("float64", wrong in float32), or none ("none", wrong)."""
    def fn(x):
        return x * jnp.abs(x) / jnp.sqrt(x * x + k * jnp.finfo(x.dtype).eps)

    f = jax.custom_vjp(fn)

    def bwd(x, g):
        e = {"own": k * jnp.finfo(x.dtype).eps, "float64": k * float(np.finfo(np.float64).eps), "none": 0.0}[rule_eps]
        r = jnp.sqrt(x * x + e)
        return (g * (2 * jnp.abs(x) * r - x * jnp.abs(x) * x / r) / r**2,)

    f.defvjp(lambda x: (fn(x), x), bwd)
    return f


def _dtype_branch(wrong: bool):
    """A scale chosen by a branch on the dtype: 1.25 in float32, 1 otherwise; the wrong rule uses 1."""
    def fn(x):
        return jnp.sin(x) * (1.25 if x.dtype == jnp.float32 else 1.0)

    f = jax.custom_vjp(fn)
    f.defvjp(lambda x: (fn(x), x), lambda x, g: (g * jnp.cos(x) * (1.0 if wrong or x.dtype != jnp.float32 else 1.25),))
    return f


def _small_and_large(rng: np.random.Generator, n: int, k: float, largest: float) -> jax.Array:
    """Entries at the scale of √(k·eps) of float32, where eps matters, beside entries of order ``largest``."""
    small = rng.choice([-1.0, 1.0], n) * np.sqrt(k * np.finfo(np.float32).eps) * rng.uniform(0.5, 4.0, n)
    big = rng.standard_normal(n) * largest
    return jnp.asarray(np.where(rng.random(n) < 0.5, small, big), jnp.float32)


@settings(max_examples=EXAMPLES, **QUICK)
@given(k=st.sampled_from([1.0, 4.0, 16.0]), largest=st.sampled_from([0.5, 1.0, 2.0]),
       rule_eps=st.sampled_from(["float64", "none"]), n=st.sampled_from([2, 8, 100]), seed=st.integers(0, 2**16))
def test_a_rule_that_ignores_its_dtypes_eps_fails(k, largest, rule_eps, n, seed):
    x = _small_and_large(np.random.default_rng(seed), n, k, largest)
    right, wrong = (np.asarray(jax.vjp(_eps_softsign(k, e), x)[1](jnp.ones_like(x))[0]) for e in ("own", rule_eps))
    assume(np.max(np.abs(wrong - right) / np.abs(right)) > 1e-2)  # every entry large: eps does not show
    with pytest.raises(VJPMismatch):
        check_vjp(_eps_softsign(k, rule_eps), (x,), seed=seed)


@settings(max_examples=EXAMPLES, **QUICK)
@given(k=st.sampled_from([1.0, 4.0, 16.0]), largest=st.sampled_from([0.5, 1.0, 2.0]), n=st.sampled_from([2, 8, 100]),
       seed=st.integers(0, 2**16))
def test_the_rule_that_uses_its_dtypes_eps_passes(k, largest, n, seed):
    x = _small_and_large(np.random.default_rng(seed), n, k, largest)
    report = check_vjp(_eps_softsign(k, "own"), (x,), seed=seed)
    assert report.unchecked == 0, str(report)  # in float64 where every entry is large (eps does not show)


@pytest.mark.parametrize("lifted", [True, False], ids=["lifted", "as called"])
@pytest.mark.parametrize("wrong", [False, True])
def test_a_branch_on_the_dtype_is_judged_on_the_calls_branch(wrong, lifted):
    """Lifted, the jaxpr traced at the call's dtype keeps its branch (1.25), raised to float64; not lifted, the
    float64 copy is another function and the call is judged as made."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal(16), jnp.float32)
    with contextlib.nullcontext() if lifted else lifting.disabled():
        if wrong:
            with pytest.raises(VJPMismatch):
                check_vjp(_dtype_branch(True), (x,))
        else:
            assert check_vjp(_dtype_branch(False), (x,)).precision == ("float64" if lifted else "float32")


# ------------------------------------------------------------------ a while loop on the input path
def _halving(steps: int):
    """``y ← y + (x − y)/2`` for a fixed number of steps: ``x·(1 − 2⁻ˢᵗᵉᵖˢ)``, with the rule of the exact limit."""
    def fn(x):
        return jax.lax.while_loop(lambda c: c[1] < steps, lambda c: (c[0] + (x - c[0]) / 2, c[1] + 1),
                                  (jnp.zeros_like(x), 0))[0]

    f = jax.custom_vjp(fn)
    f.defvjp(lambda x: (fn(x), None), lambda _, g: (g,))
    return f


@pytest.mark.parametrize("steps, loops", [(5, Loops.MEASURED), (4, Loops.FIXED)])
def test_a_loop_converges_where_running_it_longer_moves_it_within_5_percent(steps, loops):
    """solvers.CONVERGED from both sides: five halvings are 3.2% from their limit (a solver, its stopping error
    measured: the limit's rule passes), four are 6.7% (a loop of a fixed count: the limit's rule fails)."""
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, 6), jnp.float32)
    if loops is Loops.MEASURED:
        assert check_vjp(_halving(steps), (x,)).loops is loops
    else:
        with pytest.raises(VJPMismatch) as info:
            check_vjp(_halving(steps), (x,))
        assert info.value.report.loops is loops


def _newton_cbrt(signs: np.ndarray | None, count: bool):
    """Newton's cube root, 30 steps (a count) or to a tolerance of 1e-6; the rule flips the sign where ``signs``."""
    def fn(a):
        step = lambda y: y - (y**3 - a) / (3 * y * y)  # noqa: E731
        if count:
            return jax.lax.while_loop(lambda c: c[1] < 30, lambda c: (step(c[0]), c[1] + 1), (a * 0 + 1.5, 0))[0]
        return jax.lax.while_loop(lambda y: jnp.max(jnp.abs(y**3 - a)) > 1e-6, step, a * 0 + 1.5)

    f = jax.custom_vjp(fn)
    f.defvjp(lambda a: (fn(a), fn(a)), lambda y, g: ((g if signs is None else g * signs) / (3 * y * y),))
    return f


@settings(max_examples=EXAMPLES, **QUICK)
@given(n=st.sampled_from([1, 3, 8, 40]), flipped=st.integers(1, 40), count=st.booleans(), x64=st.booleans(),
       seed=st.integers(0, 2**16))
def test_a_wrong_rule_through_a_converged_while_loop_fails(n, flipped, count, x64, seed):
    """A loop that converged to the last ulp earns nothing: any entry whose sign the rule flips fails."""
    rng = np.random.default_rng(seed)
    signs = np.ones(n)
    signs[rng.permutation(n)[:min(flipped, n)]] = -1
    with jax.enable_x64(x64):
        a = jnp.asarray(rng.uniform(0.5, 3.0, n), jnp.float64 if x64 else jnp.float32)
        with pytest.raises(VJPMismatch) as info:
            check_vjp(_newton_cbrt(jnp.asarray(signs, a.dtype), count), (a,), seed=seed)
    assert info.value.report.unchecked == 0
    assert sum(p.kind == "value" for p in info.value.problems) == min(flipped, n)


def test_the_right_rule_through_a_converged_while_loop_passes():
    a = jnp.asarray(np.random.default_rng(2).uniform(0.5, 3.0, 8), jnp.float32)
    for count in (True, False):
        report = check_vjp(_newton_cbrt(None, count), (a,))
        assert report.loops is Loops.MEASURED and report.unchecked == 0


def _cg(tol: float, off: float = 0.0):
    def solve(A, b):
        return jax.scipy.sparse.linalg.cg((A + A.T) / 2, b, tol=tol)[0]

    f = jax.custom_vjp(solve)

    def bwd(r, g):
        dA, db = jax.vjp(solve, *r)[1](g)
        return dA, (1 + off) * db

    f.defvjp(lambda A, b: (solve(A, b), (A, b)), bwd)
    return f


@pytest.mark.parametrize("tol", [1e-3, 1e-5])
@pytest.mark.parametrize("off", [0.0, 0.03])
def test_cg_at_its_tolerance_passes_right_and_fails_3_percent_off(tol, off):
    rng = np.random.default_rng(3)
    m = rng.standard_normal((6, 6))
    A, b = jnp.asarray(m @ m.T / 6 + np.eye(6), jnp.float32), jnp.asarray(rng.standard_normal(6), jnp.float32)
    if off:
        with pytest.raises(VJPMismatch):
            check_vjp(_cg(tol, off), (A, b))
    else:
        assert check_vjp(_cg(tol), (A, b)).loops is Loops.MEASURED


def test_cg_at_order_2_is_no_false_alarm():
    rng = np.random.default_rng(4)
    m = rng.standard_normal((5, 5))
    A, b = jnp.asarray(m @ m.T / 5 + np.eye(5), jnp.float32), jnp.asarray(rng.standard_normal(5), jnp.float32)
    check_vjp(_cg(1e-5), (A, b), order=2)


# ------------------------------------------------------------------ thresholds of the same-function test
def _float16_branch(delta: float):
    """``sin(x)·(1 + delta)`` in float16, ``sin(x)`` otherwise: a dtype branch of a given size."""
    def fn(x):
        return jnp.sin(x) * (1 + delta if x.dtype == jnp.float16 else 1.0)

    f = jax.custom_vjp(fn)
    f.defvjp(lambda x: (fn(x), x), lambda x, g: (g * jnp.cos(x) * (1 + delta if x.dtype == jnp.float16 else 1.0),))
    return f


@pytest.mark.parametrize("delta, precision", [(0.05, "float16"), (0.002, "float64")])
def test_the_float64_version_is_the_same_function_within_a_64th_of_each_entry(delta, precision, as_called):
    """precision.SAME_FUNCTION_REL from both sides: 1000 ulps of float16 are 100%, so a float16 function 5% from its
    float64 version is another function (checked as called), and one 0.2% from it is the same."""
    x = jnp.asarray(np.random.default_rng(5).uniform(0.1, 1.0, 16), jnp.float16)
    assert check_vjp(_float16_branch(delta), (x,)).precision == precision


# ------------------------------------------------------------------ found by the second red team (2026-12-06)
def _two_scales(weight: float, drop_b: bool, cast: bool):
    """``sin(a) + weight·cos(b)``: b's gradient is ``weight`` times a's; the rule drops it or not."""
    def loss(a, b):
        if cast:
            a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        return jnp.sin(a) + weight * jnp.cos(b)

    f = jax.custom_vjp(loss)

    def bwd(r, g):
        ga, gb = jax.vjp(loss, *r)[1](g)
        return ga, 0 * gb if drop_b else gb

    f.defvjp(lambda a, b: (loss(a, b), (a, b)), bwd)
    return f


@settings(max_examples=EXAMPLES, **QUICK)
@given(weight=st.sampled_from([1e-3, 1e-5, 1e-7, 1e-12]), cast=st.booleans(), n=st.sampled_from([1, 4, 64]),
       seed=st.integers(0, 2**16))
def test_a_dropped_gradient_is_never_a_clean_pass_where_the_differences_cannot_see_it(weight, cast, n, seed):
    """An exact 0 passed on differences whose noise exceeded the gradient it hid, while the right rule was
    unchecked: the dropped rule now fails, or leaves b's entries unchecked as the right rule does."""
    rng = np.random.default_rng(seed)
    a, b = (jnp.asarray(rng.standard_normal(n), jnp.float32) for _ in range(2))
    right = _two_scales(weight, False, cast)
    base = np.asarray(right(a, b))
    # The entries of b whose 1% move shows in fn's outputs at all; below every ulp fn is, as computed, b's constant.
    seen = sum(bool(np.any(np.asarray(right(a, b.at[i].multiply(1.01))) != base)) for i in range(n))
    assume(seen > 0)
    try:
        report = check_vjp(_two_scales(weight, True, cast), (a, b), seed=seed)
    except VJPMismatch:
        return
    assert report.leaves[1].unchecked >= seen, str(report)


def _dropping_everything(fn, n, dtype):
    """fn with a rule that drops every gradient: 0 everywhere, so no leaf gives a scale to judge its 0 against."""
    f = jax.custom_vjp(fn)
    f.defvjp(lambda x: (fn(x), None), lambda _, g: (jnp.zeros((n,), dtype),))
    return f


# fn whose change at the steps tried hides in the round-off of a large float64 output. (Where no step moves fn at
# all, 1e14 + x, its differences are exactly 0 and a dropped gradient still passes: a plateau, not judged here.)
FLAT_LOOKING = {
    "1e12 + x": lambda x: 1e12 + x,
    "1e10 (1 + 1e-12 x)": lambda x: 1e10 * (1 + 1e-12 * x),
    "1e14 (1 + 1e-12 x)": lambda x: 1e14 * (1 + 1e-12 * x),
}


@settings(max_examples=EXAMPLES, **QUICK)
@given(form=st.sampled_from(sorted(FLAT_LOOKING)), n=st.sampled_from([4, 64, vjp.ELEMENTWISE + 1]),
       seed=st.integers(0, 2**16))
def test_a_rule_dropping_every_gradient_is_no_proof_on_differences_that_cannot_see_them(form, n, seed):
    """An exact 0 everywhere was judged on the differences alone, at any tolerance: beside a float64 output of 1e12
    the dropped gradient (1 per entry) passed as a proof. It fails now, or is left unchecked."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(seed).standard_normal(n))
        try:
            report = check_vjp(_dropping_everything(FLAT_LOOKING[form], n, jnp.float64), (x,), seed=seed)
        except (VJPMismatch, RefusedValue):
            return
    assert not report.proven, str(report)


def test_a_bfloat16_rule_dropping_every_gradient_is_no_proof_as_called(as_called):
    """bfloat16's exp as called, its every gradient dropped: its differences' noise is the size of the gradient."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal(64), jnp.float32)
    fn = _dropping_everything(lambda x: jnp.exp(x.astype(jnp.bfloat16)).astype(jnp.float32), 64, jnp.float32)
    with pytest.raises((VJPMismatch, RefusedValue)):
        check_vjp(fn, (x,))


@pytest.mark.parametrize("fill", [-np.inf, np.inf, np.nan])
@pytest.mark.parametrize("off", [1.0, 1.03])
def test_outputs_filled_with_inf_or_nan_are_checked_where_they_move(fill, off):
    mask = np.array([1, 1, 0, 1, 0, 0, 1, 1], bool)

    def fn(x):
        return jnp.where(mask, 3 * jnp.tanh(x / 3), jnp.asarray(fill, x.dtype))

    f = jax.custom_vjp(fn)
    f.defvjp(lambda x: (fn(x), x), lambda x, g: (jnp.where(mask, off * g * (1 - jnp.tanh(x / 3) ** 2), 0.0),))
    x = jnp.asarray(np.random.default_rng(6).standard_normal(8), jnp.float32)
    if off == 1.0:
        assert check_vjp(f, (x,)).unchecked == 0
    else:
        with pytest.raises(VJPMismatch):
            check_vjp(f, (x,))


MIXED_ERRORS = {"W dropped": (0.0, 1.0), "b dropped": (1.0, 0.0), "both 1.5x": (1.5, 1.5), "W 1% off": (1.01, 1.0),
                "b 3% off": (1.0, 1.03)}


def _mixed_layer(kW: float, kb: float, kx: float = 1.0):
    """``tanh(x.astype(float32) @ W + b)``: activations in 16 bits, float32 weights and computation."""
    def layer(x, W, b):
        return jnp.tanh(x.astype(jnp.float32) @ W + b)

    f = jax.custom_vjp(layer)

    def bwd(r, g):
        gx, gW, gb = jax.vjp(layer, *r)[1](g)
        return (kx * gx.astype(jnp.float32)).astype(gx.dtype), kW * gW, kb * gb

    f.defvjp(lambda x, W, b: (layer(x, W, b), (x, W, b)), bwd)
    return f


def _mixed_args(rng: np.random.Generator, dtype, rows: int) -> tuple:
    return (jnp.asarray(rng.standard_normal((rows, 8)), dtype), jnp.asarray(rng.standard_normal((8, 3)) / 3, jnp.float32),
            jnp.asarray(0.1 * rng.standard_normal(3), jnp.float32))


@settings(max_examples=EXAMPLES, **QUICK)
@given(error=st.sampled_from(sorted(MIXED_ERRORS)), dtype=st.sampled_from([jnp.bfloat16, jnp.float16]),
       rows=st.sampled_from([1, 4, 32]), seed=st.integers(0, 2**16), lifted=st.booleans())
def test_float32_weights_beside_16_bit_activations_are_judged_at_float32(error, dtype, rows, seed, lifted):
    """Differenced at the activations' 16 bits, a rule that dropped the weights' gradients passed. Lifted to
    float64, or checked as called (float32 differences)."""
    with contextlib.nullcontext() if lifted else lifting.disabled(), pytest.raises(VJPMismatch):
        check_vjp(_mixed_layer(*MIXED_ERRORS[error]), _mixed_args(np.random.default_rng(seed), dtype, rows), seed=seed)


@pytest.mark.parametrize("lifted", [True, False], ids=["lifted", "as called"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_the_right_mixed_precision_rule_passes_with_every_entry_checked(dtype, lifted):
    with contextlib.nullcontext() if lifted else lifting.disabled():
        report = check_vjp(_mixed_layer(1.0, 1.0), _mixed_args(np.random.default_rng(7), dtype, 4))
    assert report.unchecked == 0 and report.precision == ("float64" if lifted else "float32"), str(report)


@settings(max_examples=EXAMPLES, **QUICK)
@given(kx=st.sampled_from([1.02, 1.03, 1.04, 0.97]), rows=st.sampled_from([4, 32]), seed=st.integers(0, 2**16))
def test_a_bfloat16_leaf_of_a_float32_computation_a_few_percent_off_is_no_proof_as_called(kx, rows, seed):
    """Judged at bfloat16's own rtol (3e-2, for a computation in bfloat16), the activations' gradient 3% off passed
    as a proof. Their VJP is float32 work rounded to bfloat16: judged at float32's rtol plus that rounding, and
    unchecked where only bfloat16's own rtol would pass it."""
    args = _mixed_args(np.random.default_rng(seed), jnp.bfloat16, rows)
    with lifting.disabled():
        try:
            report = check_vjp(_mixed_layer(1.0, 1.0, kx), args, seed=seed)
        except VJPMismatch:
            return
    assert not report.proven and "narrower than the computation" in report.unchecked_why, str(report)


@pytest.mark.parametrize("kx, proven", [(1.0, True), (1.003, False)])
def test_a_float16_leafs_rtol_as_called_is_float32s_plus_its_rounding(kx, proven):
    """The threshold from both sides: float16 under float32 is judged at 1.1e-3 (tolerance.rounded_to_leaf), where
    float16's own rtol is 4e-3; a rule 0.3% off is between the two, and unchecked."""
    with lifting.disabled():
        report = check_vjp(_mixed_layer(1.0, 1.0, kx), _mixed_args(np.random.default_rng(5), jnp.float16, 32))
    assert report.proven is proven and report.precision == "float32", str(report)
    assert proven or "narrower than the computation" in report.unchecked_why


def _residual(x, W):
    """A 16-bit activation cast to float32 twice (a residual beside a layer): JAX's VJP rounds each part of x's
    cotangent to x's dtype and adds them there, where W ≈ I makes them cancel."""
    return x.astype(jnp.float32) - 0.98 * jnp.tanh(x.astype(jnp.float32) @ W)


def _residual_args(rng: np.random.Generator, dtype) -> tuple:
    return (jnp.asarray(rng.standard_normal((4, 8)), dtype),
            jnp.asarray(np.eye(8) + rng.standard_normal((8, 8)) / 10, jnp.float32))


@settings(max_examples=EXAMPLES, **QUICK)
@given(dtype=st.sampled_from([jnp.bfloat16, jnp.float16]), seed=st.integers(0, 2**16))
def test_jaxs_own_vjp_of_a_16_bit_leaf_cast_twice_is_no_false_alarm(dtype, seed):
    """Against its float64 version, x's VJP was off by up to 40% of itself (float16 seed 1, bfloat16 seed 4), by
    rounding to x's dtype that its forward does not have: the backward's roundings to the leaf are allowed."""
    report = check_vjp(_residual, _residual_args(np.random.default_rng(seed), dtype), seed=seed)
    assert report.precision == "float64", str(report)


@pytest.mark.parametrize("dtype, seed", [(jnp.float16, 1), (jnp.bfloat16, 4)])
def test_the_roundings_to_a_leaf_are_the_backwards_narrowing_converts_and_sums(dtype, seed):
    """The draws that failed before; and what is allowed: the residual's converts to x's dtype and their sum, not
    a float32 leaf's VJP rounded to bfloat16 and back (a backward in bfloat16, its author's)."""
    args = _residual_args(np.random.default_rng(seed), dtype)
    check_vjp(_residual, args, seed=seed)
    back = jax.make_jaxpr(lambda c: jax.vjp(_residual, *args)[1](c))(jnp.ones((4, 8), jnp.float32))
    found = [e.primitive.name for e in back.jaxpr.eqns if id(e) in backward.to_leaves(back.jaxpr, 2.0**-23)]
    assert sorted(found) == ["add_any", "convert_element_type", "convert_element_type"], back
    trip = jax.make_jaxpr(lambda g: g.astype(jnp.bfloat16).astype(jnp.float32) * 2)(jnp.ones(3, jnp.float32))
    assert not backward.to_leaves(trip.jaxpr, 2.0**-23)


@pytest.mark.parametrize("k", [1.02, 1.1])
def test_a_float16_input_to_a_float32_computation_is_judged_at_float32(k):
    f = jax.custom_vjp(lambda x: jnp.sin(x.astype(jnp.float32)))
    f.defvjp(lambda x: (jnp.sin(x.astype(jnp.float32)), x),
             lambda x, g: ((k * g * jnp.cos(x.astype(jnp.float32))).astype(x.dtype),))
    x = jnp.asarray(np.random.default_rng(8).standard_normal(40), jnp.float16)
    with pytest.raises(VJPMismatch):
        check_vjp(f, (x,))


@pytest.mark.parametrize("k", [2.0, 2.2])
def test_outputs_that_underflow_to_subnormals_are_no_false_alarm(k):
    """x·x at x ≈ 1e-20 in float32 is 1e-40, flushed to 0: the float64 version is still the same function (within
    float32's smallest normal number), so the rule is judged there; a rule 10% off still fails."""
    f = jax.custom_vjp(lambda x: x * x)
    f.defvjp(lambda x: (x * x, x), lambda x, g: (k * g * x,))
    x = jnp.asarray(np.random.default_rng(9).uniform(0.5, 2.0, 8) * 1e-20, jnp.float32)
    if k == 2.0:
        assert check_vjp(f, (x,)).precision == "float64"
    else:
        with pytest.raises(VJPMismatch):
            check_vjp(f, (x,))


def _kl(a, b):
    """KL(softmax(a) ‖ softmax(b)): exactly 0 at b = a, from terms of order 1 that cancel."""
    return jnp.sum(jax.nn.softmax(a, -1) * (jax.nn.log_softmax(a, -1) - jax.nn.log_softmax(b, -1)))


def _kl_args(seed: int, noise: float) -> tuple:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((4, 8)).astype(np.float32)
    return jnp.asarray(a), jnp.asarray(a + noise * rng.standard_normal((4, 8)).astype(np.float32))


@settings(max_examples=EXAMPLES, **QUICK)
@given(seed=st.integers(0, 2**16))
def test_jax_grad_at_a_critical_point_of_an_output_computed_by_cancellation_is_no_false_alarm(seed):
    """At b = a, jax.grad of the KL divergence is 0 up to round-off; its differences at the finest step are the
    terms' round-off over the step (1e-8), which a bound of a few ulps of the output (0) called exact."""
    try:
        check_vjp(_kl, _kl_args(seed, 0.0), seed=seed)
    except RefusedValue:  # every entry too uncertain to tell: said, never a failure
        pass


@pytest.mark.parametrize("seed", [1, 2])
def test_the_kl_draws_that_failed_are_unchecked_and_a_wrong_rule_away_from_them_fails(seed):
    try:
        report = check_vjp(_kl, _kl_args(seed, 0.0), seed=seed)
        assert not report.proven, str(report)
        why = report.unchecked_why
    except RefusedValue as e:  # nothing could be checked: said why
        why = str(e)
    assert "cancellation" in why
    wrong = jax.custom_vjp(_kl)
    wrong.defvjp(lambda a, b: (_kl(a, b), (a, b)), lambda r, g: tuple(1.01 * t for t in jax.vjp(_kl, *r)[1](g)))
    with pytest.raises(VJPMismatch):
        check_vjp(wrong, _kl_args(seed, 0.1), seed=seed)
