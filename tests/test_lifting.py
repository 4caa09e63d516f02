"""Lifting (reference/oracle/lifting.py): code that computes in a narrower float than its inputs (bfloat16 models
with float32 inside, float32 casts under x64, kernels with a fixed ``out_shape``) is judged on its own jaxpr
raised to float64, and its as-called VJP against that one. Right rules are proofs; wrong ones of every shape fail."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from jax.ad_checkpoint import checkpoint_name

from reference import VJPMismatch, check_vjp
from reference.oracle import lifting
from reference.oracle.versions import Float64

EXAMPLES = max(4, settings().max_examples // 20)  # 5 under handgrad-ci
QUICK = dict(phases=[Phase.explicit, Phase.reuse, Phase.generate], deadline=None)
LIFTED = "lifted to float64"


def _rule(fn, bwd):
    f = jax.custom_vjp(fn)
    f.defvjp(lambda *a: (fn(*a), a), bwd)
    return f


# ------------------------------------------------------------------ the lifted function itself
def _loops(x):
    """Float32 inside, through a scan, a while loop, a cond, a scatter, a sort and a random draw."""
    y = x.astype(jnp.float32)
    c, ys = jax.lax.scan(lambda c, v: (c * 0.5 + v, c * v), y[0], y)
    w = jax.lax.while_loop(lambda s: s[1] < 3, lambda s: (s[0] * 2.0, s[1] + 1), (jax.lax.stop_gradient(c), 0))[0]
    z = jax.lax.cond(y[0] > 0, lambda a: a * 2.0, lambda a: a - 1.0, ys).at[jnp.array([0, 2])].add(y[:2])
    return [jnp.sort(z) + w, jnp.sum(y * y), x * jax.random.normal(jax.random.key(0), x.shape, jnp.float32)]


def test_a_lifted_function_is_the_call_computed_in_float64():
    x = np.random.default_rng(0).standard_normal(8)
    with jax.enable_x64(True):
        lifted = lifting.lift(_loops, [jnp.asarray(x, jnp.float32)], Float64)
        assert isinstance(lifted, lifting.Lifted)
        out, pull = jax.vjp(lifted.fn, jnp.asarray(x))
        grad = pull([jnp.ones(8), jnp.ones(()), jnp.zeros(8)])[0]
        as_called = _loops(jnp.asarray(x, jnp.float32))
        y = jnp.asarray(x)
        c, ys = jax.lax.scan(lambda c, v: (c * 0.5 + v, c * v), y[0], y)  # the same code, in float64 from the start
        w = c * 8.0
        z = jax.lax.cond(y[0] > 0, lambda a: a * 2.0, lambda a: a - 1.0, ys).at[jnp.array([0, 2])].add(y[:2])
        expected, total = jnp.sort(z) + w, jnp.sum(y * y)
    assert [o.dtype for o in out] == [np.float64] * 3 and grad.dtype == np.float64
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[1], total)
    assert 0 < np.max(np.abs(np.asarray(out[0]) - np.asarray(as_called[0], np.float64))) < 1e-4  # float32's rounding
    # The call's random bits, made normal in float64: the same draws to float32's rounding, not new ones.
    np.testing.assert_allclose(out[2], np.asarray(as_called[2], np.float64), rtol=1e-6)
    with jax.enable_x64(True):
        exact = jax.grad(lambda v: jnp.sum(_loops(v)[0]) + _loops(v)[1])(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(grad, exact, rtol=1e-5)  # the call's gradient, to float32's rounding


@jax.custom_jvp
def _host_tanh(x):
    """tanh computed on the host in float32: no jaxpr to raise to float64."""
    y = jax.pure_callback(lambda v: np.tanh(v.astype(np.float32)), jax.ShapeDtypeStruct(x.shape, jnp.float32), x)
    return y.astype(x.dtype)


_host_tanh.defjvp(lambda p, t: (_host_tanh(p[0]), (1 - jnp.tanh(p[0]) ** 2) * t[0]))


def test_what_cannot_be_lifted_says_why():
    found = lifting.lift(lambda x: [_host_tanh(x)], [jnp.ones(3, jnp.float32)], Float64)
    assert isinstance(found, lifting.NotLifted) and "pure_callback" in found.why
    found = lifting.lift(lambda x: [x * float(x[0])], [jnp.ones(3)], Float64)  # reads a value
    assert isinstance(found, lifting.NotLifted) and "cannot be traced" in found.why


# ------------------------------------------------------------------ bfloat16 models: float32 inside
def _rms_norm(dropped: bool):
    """RMSNorm of bfloat16 x and g computing in float32; the rule drops the mean-of-squares term or not."""
    def fn(x, g):
        xf = x.astype(jnp.float32)
        r = jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + 1e-6)
        return (xf * r * g.astype(jnp.float32)).astype(x.dtype)

    def bwd(res, ct):
        x, g = res
        xf, gf, c = x.astype(jnp.float32), g.astype(jnp.float32), ct.astype(jnp.float32)
        r = jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + 1e-6)
        dxh = c * gf
        dx = r * (dxh - (0.0 if dropped else xf * r * jnp.mean(dxh * xf * r, -1, keepdims=True)))
        return dx.astype(x.dtype), jnp.sum(c * xf * r, axis=tuple(range(x.ndim - 1))).astype(g.dtype)
    return _rule(fn, bwd)


MATMUL_ERRORS = {
    "right": lambda dx, dw: (dx, dw),
    "dW transposed": lambda dx, dw: (dx, dw.T),
    "dW sign flipped": lambda dx, dw: (dx, -dw),
    "dx 5% off": lambda dx, dw: (1.05 * dx, dw),
    "dW's first row dropped": lambda dx, dw: (dx, dw.at[0].set(0.0)),
    "dx noisy": lambda dx, dw: (dx * (1 + 0.05 * jnp.cos(jnp.arange(dx.size).reshape(dx.shape))), dw),
    "dW strided": lambda dx, dw: (dx, dw.at[::3].multiply(1.1)),
}


def _matmul(error):
    """``x @ w`` of bfloat16 x and w, accumulated in float32; the rule's dx and dW altered by ``error``."""
    def fn(x, w):
        return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16)

    def bwd(res, ct):
        x, w = res
        dx = jnp.dot(ct, w.T, preferred_element_type=jnp.float32)
        dw = jnp.dot(x.T, ct, preferred_element_type=jnp.float32)
        dx, dw = error(dx, dw)
        return dx.astype(x.dtype), dw.astype(w.dtype)
    return _rule(fn, bwd)


@pytest.mark.parametrize("error", sorted(MATMUL_ERRORS))
@settings(max_examples=EXAMPLES // 2, **QUICK)
@given(rows=st.sampled_from([3, 16, 100]),
       inner=st.sampled_from([8, 24]), seed=st.integers(0, 2**16))
def test_a_bfloat16_matmul_is_a_proof_when_right_and_fails_when_wrong(error, rows, inner, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((rows, inner)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((inner, inner)) / np.sqrt(inner), jnp.bfloat16)
    if error != "right":
        with pytest.raises(VJPMismatch):
            check_vjp(_matmul(MATMUL_ERRORS[error]), (x, w), seed=seed)
        return
    report = check_vjp(_matmul(MATMUL_ERRORS[error]), (x, w), seed=seed)
    assert report.proven and report.precision == "float64" and LIFTED in report.how, str(report)


def _named(layer):
    """``jax.checkpoint`` saving only what ``checkpoint_name`` names (a transformer's usual remat policy)."""
    named = lambda x, w: checkpoint_name(layer(x, w), "out")  # noqa: E731
    return jax.checkpoint(named, policy=jax.checkpoint_policies.save_only_these_names("out"))


REMATS = {"jax.checkpoint": jax.checkpoint, "a policy saving a name": _named}


@pytest.mark.parametrize("remat", sorted(REMATS))
@pytest.mark.parametrize("error", ["right", "dW transposed", "dx 5% off"])
def test_a_rematerialised_bfloat16_model_is_lifted(remat, error):
    """``jax.checkpoint`` (flax's ``nn.remat``, equinox's ``filter_checkpoint``) holds its jaxpr open, with no
    constants, up to JAX 0.10: it is lifted in line, as jit is, and not checked as called in bfloat16 (433 of
    512 entries unchecked before)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((16, 24)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((24, 24)) / np.sqrt(24), jnp.bfloat16)
    layer = REMATS[remat](_matmul(MATMUL_ERRORS[error]))

    def model(x, w):
        return layer(layer(x, w), w)
    if error != "right":
        with pytest.raises(VJPMismatch):
            check_vjp(model, (x, w))
        return
    report = check_vjp(model, (x, w))
    assert report.proven and report.unchecked == 0 and LIFTED in report.how, str(report)


_A = jnp.asarray(2 * np.eye(24) + 0.1 * np.random.default_rng(4).standard_normal((24, 24)), jnp.float32)
READ_THROUGH = {  # after a bfloat16 layer: what lifting evaluates in line
    "jax.debug.callback": lambda y: (jax.debug.callback(lambda m: None, jnp.mean(y.astype(jnp.float32))), y)[1],
    "jnp.linalg.solve": lambda y: jnp.linalg.solve(_A, y.astype(jnp.float32).T).T.astype(jnp.bfloat16),
}


@pytest.mark.parametrize("then", sorted(READ_THROUGH))
@pytest.mark.parametrize("error", ["right", "dx 5% off"])
def test_a_logging_callback_and_a_linear_solve_are_lifted(then, error):
    """A debug callback (logging: no value of fn's) is left out of the lifted function, and a
    ``custom_linear_solve`` (``jnp.linalg.solve``, ``inv``, lineax) is its solve jaxpr, as JAX evaluates it: both
    were "cannot be lifted", and a rule 3% off there an unproven pass."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((16, 24)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((24, 24)) / np.sqrt(24), jnp.bfloat16)
    layer = _matmul(MATMUL_ERRORS[error])

    def model(x, w):
        return READ_THROUGH[then](layer(x, w))
    if error != "right":
        with pytest.raises(VJPMismatch):
            check_vjp(model, (x, w))
        return
    report = check_vjp(model, (x, w))
    assert LIFTED in report.how and report.precision == "float64", str(report)


@pytest.mark.parametrize("preset", ["F32_F32_F32", "BF16_BF16_F32_X3", "BF16_BF16_F32"])
@pytest.mark.parametrize("error", ["right", "dW 3% off"])
def test_a_dot_whose_algorithm_rounds_its_operands_is_lifted_without_it(preset, error):
    """``precision=DotAlgorithmPreset.F32_F32_F32`` rounds a dot's operands to float32 even on float64 inputs: the
    float64 version computed in float32, its differences were 0, and the right rule failed everywhere. Now it is
    refused, and the lifted dot keeps every bit (as a ``reduce_precision`` is dropped)."""
    algorithm = getattr(jax.lax.DotAlgorithmPreset, preset)

    def fn(x, w):
        return jnp.tanh(jnp.dot(x, w, precision=algorithm))

    def bwd(res, g):
        x, w = res
        d = g * (1 - fn(x, w) ** 2)
        return jnp.dot(d, w.T), jnp.dot(x.T, d) * (1.03 if error != "right" else 1.0)

    rng = np.random.default_rng(6)
    args = (jnp.asarray(rng.standard_normal((16, 32)), jnp.float32),
            jnp.asarray(rng.standard_normal((32, 32)) / 6, jnp.float32))
    if error != "right":
        with pytest.raises(VJPMismatch):
            check_vjp(_rule(fn, bwd), args)
        return
    report = check_vjp(_rule(fn, bwd), args)
    assert report.proven and report.unchecked == 0 and LIFTED in report.how, str(report)


@pytest.mark.standard_promotion  # JAX's own bfloat16 VJP of it does not trace under strict promotion
def test_jaxs_own_bfloat16_dot_product_attention_is_a_proof():
    """jax.nn.dot_product_attention asks for ``BF16_BF16_F32`` on its score dot: was a failure everywhere."""
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 16, 4, 8)), jnp.bfloat16) for _ in range(3))
    report = check_vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True), (q, k, v))
    assert report.proven and LIFTED in report.how, str(report)


@pytest.mark.parametrize("shape", [(4, 64), (2, 8, 128)])
def test_a_bfloat16_rms_norm_is_a_proof_and_its_dropped_term_fails(shape):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    g = jnp.asarray(1 + 0.1 * rng.standard_normal(shape[-1]), jnp.bfloat16)
    report = check_vjp(_rms_norm(False), (x, g))
    assert report.proven and report.unchecked == 0 and LIFTED in report.how, str(report)
    with pytest.raises(VJPMismatch) as caught:
        check_vjp(_rms_norm(True), (x, g))
    assert {p.path for p in caught.value.problems} == {"args[0]"}


def test_a_bfloat16_backward_inside_a_float32_op_fails():
    """The call casts to float32 inside (x64 on, float64 inputs); its rule rounds through bfloat16: right at
    float64 once lifted, and the call's own VJP is then further from the lifted one than float32 explains."""
    def fn(x):
        return jnp.tanh(x.astype(jnp.float32)).astype(x.dtype)

    def bwd(res, g, through):
        t = jnp.tanh(res[0].astype(through))
        return ((g.astype(through) * (1 - t * t)).astype(res[0].dtype),)

    x = np.random.default_rng(2).standard_normal(256)
    with jax.enable_x64(True):
        report = check_vjp(_rule(fn, functools.partial(bwd, through=jnp.float32)), (x,))
        assert report.proven and LIFTED in report.how, str(report)
        with pytest.raises(VJPMismatch):
            check_vjp(_rule(fn, functools.partial(bwd, through=jnp.bfloat16)), (x,))


@pytest.mark.parametrize("n", [2000, 100_000])
def test_a_float32_casting_function_is_a_proof_at_many_entries(n):
    """Correct, written for x64 off and called with it on: each entry checked, none left to float32's noise."""
    x = np.random.default_rng(3).standard_normal(n)
    with jax.enable_x64(True):
        report = check_vjp(_rule(lambda v: jnp.sin(v.astype(jnp.float32)).astype(v.dtype),
                                 lambda r, g: (g * jnp.cos(r[0].astype(jnp.float32)).astype(r[0].dtype),)), (x,))
    assert report.proven and report.unchecked <= n // 100 and LIFTED in report.how, str(report)


def test_a_function_that_cannot_be_lifted_is_checked_as_called_and_says_why():
    f = _rule(_host_tanh, lambda r, g: (g * (1 - jnp.tanh(r[0]) ** 2),))
    with jax.enable_x64(True):
        report = check_vjp(f, (np.linspace(-1, 1, 8),))
    assert report.precision == "float32" and "cannot be lifted to float64" in report.how and \
        "pure_callback" in report.how, report.how


@pytest.mark.parametrize("off, caught", [(3e-4, True), (3e-5, False)])
def test_a_16_bit_rules_float64_self_is_judged_at_float32s_rtol(off, caught):
    """setup.py caps the rtol of a float64 version at float32's 1e-4, whatever its leaves' dtype (bfloat16's is
    3e-2: a 5% noisy dx passed there). A bfloat16 matmul's rule 3e-4 off everywhere fails; 3e-5 off passes. The
    call's own bfloat16 VJP is still judged at bfloat16's rtol against the float64 one."""
    scaled = _matmul(lambda dx, dw: ((1 + off) * dx, (1 + off) * dw))
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((16, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((8, 8)) / np.sqrt(8), jnp.bfloat16)
    if caught:
        with pytest.raises(VJPMismatch):
            check_vjp(scaled, (x, w))
    else:
        assert check_vjp(scaled, (x, w)).proven
