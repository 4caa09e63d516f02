"""The oracle at JAX's own limits: a verdict for each, never a traceback from inside it.

Order 2 through a VJP JAX cannot differentiate again, a rule that refuses differentiation, a
function that cannot be jitted or vmapped, an iterative solver stopped at a tolerance, a float64
version that fails when run, and infinities under transformations.
"""

import jax
import jax.numpy as jnp
import jax.scipy.special as special
import numpy as np
import pytest

from reference import CheckRefused, FnRaised, Loops, NotDifferentiable, VJPMismatch, check_transforms, check_vjp
from reference.oracle import blocks, differences, lifting, tolerance
from reference.oracle.report import AT_INPUTS, AT_PROBE, RefusedValue

X = jnp.asarray([0.7, 1.2, 1.9], jnp.float32)


def gammainc_a(a):
    return special.gammainc(a, 1.0)


def test_order_2_through_a_primitive_without_a_rule_is_a_refusal():
    with pytest.raises(NotDifferentiable, match="order 2: JAX cannot differentiate the VJP of gammainc_a again "
                                                "\\(NotImplementedError: Differentiation rule for 'igamma_grad_a'") as e:
        check_vjp(gammainc_a, (X,), order=2)
    assert e.value.order == 2 and isinstance(e.value, TypeError) and isinstance(e.value, CheckRefused)
    check_vjp(gammainc_a, (X,))  # order 1 holds


def _expn2(x):
    return special.expn(2, x)


def test_expn_and_owens_t_at_order_2():
    try:  # JAX 0.10 cannot differentiate its own expn twice (a TypeError inside its rule); 0.12 can
        jax.grad(jax.grad(_expn2))(X[0])
    except TypeError:
        with pytest.raises(NotDifferentiable, match="order 2: JAX cannot differentiate the VJP of _expn2 again"):
            check_vjp(_expn2, (X,), order=2)
    else:  # where JAX can, the oracle judges order 2, and JAX's rule passes
        assert check_vjp(_expn2, (X,), order=2).order == 2
    check_vjp(special.owens_t, (X, X), order=2)  # float32 constants of the module meet float64 programs


def test_a_rule_that_refuses_differentiation_is_refused_at_every_order():
    @jax.custom_jvp
    def frozen(x):
        return x

    @frozen.defjvp
    def _(primals, tangents):
        raise RuntimeError("frozen is not differentiable")

    for order in (1, 2):
        with pytest.raises(NotDifferentiable, match="order 1: JAX cannot differentiate frozen \\(RuntimeError"):
            check_vjp(frozen, (X,), order=order)
    with pytest.raises(NotDifferentiable):
        check_transforms(frozen, (X,))


def _cube_root(planted: float):
    """a ↦ the root of x³ = a by bisection, with Python control flow on values (no jit, no vmap), and an
    implicit rule 1/(3x²), times ``planted``."""
    def solve(a):
        lo, hi = 0.0, 4.0
        if float(lo**3 - a) > 0:  # a check on values, as jaxopt's Bisection makes
            raise ValueError("not bracketed")
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float(mid**3 - a) < 0 else (lo, mid)
        return jnp.asarray((lo + hi) / 2, jnp.result_type(a))

    root = jax.custom_vjp(solve)
    root.defvjp(lambda a: (solve(a), solve(a)), lambda x, g: (planted * g / (3 * x * x),))
    return root


def test_a_function_that_cannot_be_jitted_is_probed_one_by_one():
    a = jnp.float32(2.0)
    report = check_vjp(_cube_root(1.0), (a,))
    assert "ConcretizationTypeError" in report.one_by_one and "one at a time" in str(report)
    with pytest.raises(VJPMismatch):
        check_vjp(_cube_root(1.01), (a,))


def test_order_2_of_a_function_that_cannot_be_jitted_is_probed_eagerly():
    """jaxopt's Bisection at order 2 (it checks its bracket on values, in Python): the truth's differences of
    fn itself ran under jax.jit, and raised TracerBoolConversionError."""
    rule = jax.custom_vjp(jnp.cbrt)
    rule.defvjp(lambda a: (jnp.cbrt(a), a), lambda a, g: (g / (3 * jnp.cbrt(a) ** 2),))

    def root(a):
        if a <= 0:  # a check on values, outside the rule
            raise ValueError("not bracketed")
        return rule(a)

    check_vjp(root, (jnp.float32(2.0),), order=2)


def _unbatchable(scale: float):
    """sin, whose vmap JAX fails to lower with a ValueError (as the TPU kernel interpreter of JAX 0.10-0.12 does
    under vmap), and its rule's backward scaled by ``scale``."""
    @jax.custom_batching.custom_vmap
    def sin(x):
        return jnp.sin(x)

    @sin.def_vmap
    def _(axis_size, batched, x):
        raise ValueError("safe_zip() argument 1 has length 4 but argument 0 has length 5")

    rule = jax.custom_vjp(lambda x: sin(x))
    rule.defvjp(lambda x: (sin(x), x), lambda x, g: (scale * g * jnp.cos(x),))
    return rule


@pytest.mark.parametrize("n", [12, 2000])  # entries, and blocks
def test_a_function_whose_batch_jax_fails_on_is_probed_one_by_one(n):
    x = jnp.linspace(-2, 2, n, dtype=jnp.float32)
    with lifting.disabled():  # lifted, it would be differenced in float64: the same path
        report = check_vjp(_unbatchable(1.0), (x,))
        assert "ValueError: safe_zip" in report.one_by_one and report.proven, str(report)
        with pytest.raises(VJPMismatch):
            check_vjp(_unbatchable(1.01), (x,))


def _host_sin(x):
    return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)  # no vmap_method: no vmap


host_sin = jax.custom_vjp(_host_sin)
host_sin.defvjp(lambda x: (_host_sin(x), x), lambda x, g: (g * jnp.cos(x),))


def test_a_function_that_cannot_be_vmapped():
    assert "NotImplementedError" in check_vjp(host_sin, (X,)).one_by_one
    report = check_transforms(host_sin, (X,))
    assert set(report.skipped) == {"vmap"} and set(report.max_abs_diff) == {"jit", "grad-of-jit", "checkpoint",
                                                                             "scan"}
    assert "not compared" in str(report)


def test_a_function_no_transformation_takes_is_refused():
    with pytest.raises(CheckRefused, match="cannot be taken through any transformation"):
        check_transforms(_cube_root(1.0), (jnp.float32(2.0),))


@jax.custom_jvp
def host_sort(x):  # a host function that always answers in float32, as jaxopt's isotonic regression does
    return jax.pure_callback(lambda v: np.sort(v).astype(np.float32), jax.ShapeDtypeStruct(x.shape, x.dtype), x,
                             vmap_method="sequential")


@host_sort.defjvp
def _host_sort_jvp(primals, tangents):
    return host_sort(primals[0]), tangents[0][jnp.argsort(primals[0])]


def test_a_float64_version_that_fails_when_run_is_left_for_the_call():
    x = jnp.asarray([0.7, -1.2, 1.9, 0.3], jnp.float32)
    report = check_vjp(host_sort, (x,))  # fails as soon as it runs in float64
    assert report.precision == "float32" and "host_sort fails (JaxRuntimeError)" in report.how
    assert "cannot be lifted to float64: its pure_callback" in report.how
    second = check_vjp(host_sort, (x,), order=2)  # its order 2 fails only once the probes run
    assert "its float64 version fails when run (RuntimeError: Incorrect output dtype" in second.how


def _cg(tol):
    return lambda A, b: jax.scipy.sparse.linalg.cg((A + A.T) / 2, b, tol=tol)[0]


def _spd():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((6, 6))
    return jnp.asarray(m @ m.T / 6 + np.eye(6), jnp.float32), jnp.asarray(rng.standard_normal(6), jnp.float32)


def test_an_iterative_solver_at_its_tolerance_passes_on_its_measured_stopping_error():
    """cg stops at 1e-5 and the rule is the exact solution's: differenced as it runs, 0.5% off. Run twice as long,
    its stopping error is measured probe by probe, and the rule passes with nothing left unchecked."""
    report = check_vjp(_cg(1e-5), _spd())
    assert report.loops is Loops.MEASURED and report.unchecked == 0 and "while loops converge" in report.how
    tight = check_vjp(_cg(1e-12), _spd())
    assert tight.loops is Loops.MEASURED and tight.unchecked == 0 and tight.max_rel_err < 1e-6


def _spd_of(n, seed):
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    return jnp.asarray(m @ m.T / n + np.eye(n), jnp.float32), jnp.asarray(rng.standard_normal(n), jnp.float32)


def test_a_solvers_entries_with_small_derivatives_are_no_false_alarm():
    """cg at its default tolerance (1e-5): its error is a fraction of the whole solution, so an entry of dA with
    a small derivative carried it at 40% of its own size (analytic -5.1e-4, numerical -3.6e-4); the longer run
    does not."""
    report = check_vjp(_cg(1e-5), _spd_of(10, 2))
    assert report.loops is Loops.MEASURED and report.unchecked <= 1


def test_an_iterative_functions_probes_run_one_at_a_time(monkeypatch):
    """Vmapped over many probes, a solver's while loop runs until every lane stops: jaxopt's GradientDescent in
    float32 over 8 lanes did not finish in 15 minutes, and one lane at a time takes 1 ms."""
    seen = []
    chunked = differences.chunked

    def spy(diffs, program, columns, *rest):
        seen.append((diffs.iterative, diffs.chunk, len(columns[0])))
        return chunked(diffs, program, columns, *rest)

    monkeypatch.setattr(differences, "chunked", spy)
    monkeypatch.setattr(blocks, "chunked", spy)
    check_vjp(_cg(1e-12), _spd())
    assert seen and all(iterative and chunk == differences.ITERATIVE_CHUNK == 1 for iterative, chunk, _ in seen)
    seen.clear()
    check_vjp(jnp.sin, (X,))
    assert seen and not any(iterative for iterative, *_ in seen)


def test_a_wrong_rule_through_an_iterative_solver_still_fails():
    def solve(A, b):
        return _cg(1e-5)(A, b)

    wrong = jax.custom_vjp(solve)
    wrong.defvjp(lambda A, b: (solve(A, b), (A, b)),
                 lambda r, g: tuple(-d for d in jax.vjp(solve, *r)[1](g)))  # the right VJP, negated
    with pytest.raises(VJPMismatch):
        check_vjp(wrong, _spd_of(10, 2))


def _fixed_count(off):
    def doubled(x):  # three steps of 2x/3: a loop of a fixed count, whose result more steps change
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] + x * (2.0 / 3), c[1] + 1),
                                  (jnp.zeros_like(x), 0))[0]

    rule = jax.custom_vjp(doubled)
    rule.defvjp(lambda x: (doubled(x), None), lambda _, g: (2.0 * (1 + off) * g,))
    return rule


@pytest.mark.parametrize("off", [0.01, 0.03, 0.10, -2.0])
def test_a_loop_of_a_fixed_count_earns_no_leniency(off):
    """A while loop on the values is no excuse: the loop runs three steps, more steps change its result, so it
    is judged as computed, and a rule 1% off fails as anywhere (it passed as 'iterates to a tolerance')."""
    with pytest.raises(VJPMismatch) as info:
        check_vjp(_fixed_count(off), (X,))
    assert info.value.report.loops is Loops.FIXED
    assert check_vjp(_fixed_count(0.0), (X,)).loops is Loops.FIXED


def test_order_2_at_a_singular_point_is_unchecked_and_said():
    """sici at 0: Ci has a log singularity, so the VJP is infinite there and its derivative NaN; the order-2
    differences never evaluate fn at 0 and are finite around it. Not an error: unchecked, with the reason. The
    other two entries' order-2 differences move the singular entry too, and cannot tell them to within a quarter
    of their size: unchecked, so nothing is checked, and the refusal says why."""
    with pytest.raises(RefusedValue, match="a singular point"):
        check_vjp(special.sici, (jnp.asarray([0.0, -1.0, 1.5], jnp.float32),), order=2)


def test_agreement_with_infinities():
    agree = tolerance.agree([np.inf, 1.0, np.nan, 2.0], [np.inf, 1.0, np.nan, np.nan], 1e-6)
    assert agree.tolist() == [True, True, True, False]
    # an inf elsewhere in the leaf does not widen the tolerance of a finite entry
    assert not tolerance.agree([1.0, np.inf], [2.0, np.inf], 1e-3)[0]


# ------------------------------------------------------------------ fn's own runtime checks (equinox.error_if)
def _guarded(bad, message="outside its domain"):
    """sin(x), with equinox.error_if raising where ``bad(x)``: a library's runtime check of its own domain."""
    import equinox as eqx

    def guarded(x):
        return jnp.sin(eqx.error_if(x, bad(x), message))
    return guarded


def test_fn_raising_at_the_given_inputs_is_a_refusal_that_says_so():
    fn = _guarded(lambda x: jnp.any(x > 1.5), "too big")
    for check in (check_vjp, check_transforms):
        with pytest.raises(FnRaised, match=r"guarded raised at the given inputs \(.*EquinoxRuntimeError: too big\)") as e:
            check(fn, (X,))
        assert e.value.where == AT_INPUTS and isinstance(e.value, ValueError)


def test_fn_raising_only_at_a_probe_point_is_a_refusal_that_says_so():
    fn = _guarded(lambda x: jnp.any(x < X[0]), "below")  # X's smallest is X[0]: only a probe goes below
    with pytest.raises(FnRaised, match="raised at a probe point .*EquinoxRuntimeError: below.*smaller eps") as e:
        check_vjp(fn, (X,))
    assert e.value.where == AT_PROBE
    check_vjp(_guarded(lambda x: jnp.any(x < 0.3)), (X,))  # a domain the probes stay inside: checked


def test_a_batch_element_fn_refuses_is_left_out_and_said():
    fn = _guarded(lambda x: jnp.sum(x) < 3.4, "sum too small")  # X sums to 3.8: X × 0.9 passes, X × 0.8 not
    report = check_transforms(fn, (X,))
    assert list(report.dropped) == [2] and "EquinoxRuntimeError: sum too small" in report.dropped[2]
    assert report.batch == 2
    with pytest.raises(FnRaised, match="at batch element 1"):
        check_transforms(fn, (X,), batch=[(X,), (X * 0.8,)])


def test_a_bare_runtime_error_surfaces():  # the oracle's own bugs are bare RuntimeErrors: never a refusal
    def fn(x):
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug") as e:
        check_vjp(fn, (X,))
    assert not isinstance(e.value, CheckRefused)


# ------------------------------------------------------------------ structured domains: the directions checked
def _bilinear(transposed_by=1.0, scale=1.0):
    """v·Q·w, whose gradient in Q is outer(v, w); its rule returns ``scale`` × outer(w, v) where asked to
    transpose: the same along symmetric directions, wrong along others."""
    v, w = jnp.asarray([1.0, -2.0, 0.5]), jnp.asarray([0.3, 0.7, -1.1])

    @jax.custom_vjp
    def f(q):
        return v @ q @ w

    def bwd(_, g):
        right = jnp.outer(v, w)
        return (scale * g * (right.T if transposed_by else right),)

    f.defvjp(lambda q: (f(q), None), bwd)
    return f


def _symmetric():
    m = np.random.default_rng(3).standard_normal((3, 3))
    return jnp.asarray(m + m.T, jnp.float32)


def test_a_rule_right_along_symmetric_directions_passes_with_that_domain_only():
    with pytest.raises(VJPMismatch):
        check_vjp(_bilinear(), (_symmetric(),))
    check_vjp(_bilinear(), (_symmetric(),), domain=["symmetric"])
    with pytest.raises(VJPMismatch):  # wrong along symmetric directions too: still fails
        check_vjp(_bilinear(scale=1.5), (_symmetric(),), domain=["spd"])


def test_a_rule_right_along_the_simplex_passes_with_that_domain_only():
    @jax.custom_vjp
    def entropy(p):
        return jnp.sum(p * jnp.log(p))

    entropy.defvjp(lambda p: (entropy(p), p), lambda p, g: (g * (jnp.log(p) + 3.0),))  # +3, not +1: a constant
    p = jnp.asarray([0.2, 0.3, 0.5], jnp.float32)
    with pytest.raises(VJPMismatch):
        check_vjp(entropy, (p,))
    check_vjp(entropy, (p,), domain=["simplex"])


@pytest.mark.parametrize("domain, args, match", [
    (["symmetric", None], (_symmetric(),), "domain gives 2 entries for 1 arguments"),
    (["hermitian"], (_symmetric(),), "domain\\[0\\] of f is 'hermitian'; use one of symmetric, spd, simplex"),
    (["spd"], (jnp.ones((2, 3)),), "needs square matrices in the last two axes; args\\[0\\] has shape \\(2, 3\\)"),
    (["symmetric"], (jnp.arange(4.0).reshape(2, 2),), "args\\[0\\] is not symmetric"),
])
def test_a_domain_that_does_not_fit_is_an_error_that_names_it(domain, args, match):
    with pytest.raises(ValueError, match=match):
        check_vjp(_bilinear(), args, domain=domain)


def test_fn_raising_at_order_2_is_the_same_refusal():
    with pytest.raises(FnRaised, match="at the given inputs"):
        check_vjp(_guarded(lambda x: jnp.any(x > 1.5), "too big"), (X,), order=2)


def test_a_solver_whose_output_no_step_moves_is_unchecked_not_failed():
    """A bisection stopped at a tolerance coarser than the differences' steps: a staircase, whose differences are 0."""
    def bisect(a):
        def halve(c):
            lo, hi = c
            mid = (lo + hi) / 2
            return jnp.where(mid**3 < a, mid, lo), jnp.where(mid**3 < a, hi, mid)
        lo, hi = jax.lax.while_loop(lambda c: c[1] - c[0] > 0.05, halve, (jnp.zeros_like(a), jnp.full_like(a, 3.0)))
        return (lo + hi) / 2

    root = jax.custom_vjp(bisect)
    root.defvjp(lambda a: (bisect(a), bisect(a)), lambda x, g: (g / (3 * x * x),))
    with pytest.raises(CheckRefused, match="nothing could be checked: .*iterates to a tolerance"):
        check_vjp(root, (jnp.float32(2.0),))


@pytest.mark.parametrize("fn", [lambda x: (x * x * x).astype(jnp.float16),
                                lambda x: jnp.sin(x.astype(jnp.bfloat16)).astype(jnp.float32),
                                lambda x: (jnp.sin(x), (x * x).astype(jnp.float16))],
                         ids=["float16 out", "bfloat16 inside", "float16 beside float32"])
def test_order_2_of_a_function_computing_in_16_bits_is_refused_with_the_reason(fn):
    """Order 2 is not lifted: its inner differences of fn itself were float16's, sized for float64 (a false FAIL,
    analytic 8.34 against numerical 0). bfloat16 inputs computed in float32 are checked (test_transformer_ops)."""
    x = jnp.linspace(0.3, 1.7, 7, dtype=jnp.float32)
    with pytest.raises(RefusedValue, match="order 2 .* computes in b?float16 even on float64 inputs"):
        check_vjp(fn, (x,), order=2)
    assert check_vjp(fn, (x,)).proven  # order 1 is lifted

