"""Pallas kernels under the oracle, in interpret mode on the CPU: no crash from what kernels use (program_id, a
grid of BlockSpecs, a scalar ref, a fixed out_shape). Each is lifted to float64 through JAX's interpreter: right
rules are proofs, and planted wrong ones fail."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference import VJPMismatch, check_vjp
from reference.oracle import kernels

pl = pytest.importorskip("jax.experimental.pallas")
BLOCK = 8


def _scaled_tanh_kernel(s_ref, x_ref, o_ref):
    i = pl.program_id(0)  # read, as tiled kernels do: it has no evaluation rule outside the kernel
    o_ref[...] = jnp.tanh(x_ref[...]) * s_ref[0] + 0.0 * i.astype(x_ref.dtype)


def _call(s, x):
    n, d = x.shape
    return pl.pallas_call(
        _scaled_tanh_kernel, grid=(n // BLOCK,),
        in_specs=[pl.BlockSpec((1,), lambda i: (0,)), pl.BlockSpec((BLOCK, d), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((BLOCK, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct(x.shape, jnp.float32), interpret=True)(s, x)  # float32, fixed


@functools.cache
def _rule(wrong: str | None):
    """s·tanh(x) over a grid of row tiles, s a scalar read from a ref; its backward right, or ``wrong``."""
    @jax.custom_vjp
    def scaled_tanh(s, x):
        return _call(s, x)

    def bwd(res, g):
        s, x = res
        t = jnp.tanh(x)
        ds = jnp.sum(g * t)[None] * (0.0 if wrong == "dropped scalar" else 1.0)
        dx = g * s[0] * (1 - t * t)
        if wrong == "bfloat16 backward":
            dx = (g.astype(jnp.bfloat16) * s[0].astype(jnp.bfloat16) * (1 - t * t).astype(jnp.bfloat16)).astype(x.dtype)
        if wrong == "tile at the wrong block":
            dx = jnp.roll(dx, BLOCK, axis=0)
        return ds, dx

    scaled_tanh.defvjp(lambda s, x: (_call(s, x), (s, x)), bwd)
    return scaled_tanh


ARGS = (np.array([1.5], np.float32), np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))


@pytest.mark.parametrize("x64", [False, True], ids=["x64 off", "x64 on"])
def test_a_tiled_kernel_with_a_scalar_ref_passes_without_a_crash(x64):
    with jax.enable_x64(x64):
        report = check_vjp(_rule(None), ARGS)
    assert report.proven and report.unchecked == 0, str(report)
    assert report.precision == "float64" and "lifted to float64" in report.how


def test_a_kernel_is_interpreted_once_per_equation_and_x64_setting(monkeypatch):
    """kernels.interpreted keeps what it traced for an equation (a check reads one kernel some 25 times), apart for
    x64 on and off (the interpreter's loop counters differ), and never hands one equation's jaxpr to another."""
    traced = []
    monkeypatch.setattr(kernels, "_trace", lambda eqn: traced.append(eqn) or object())
    first, second = (next(e for e in jax.make_jaxpr(f)(*ARGS).jaxpr.eqns if e.primitive.name == "pallas_call")
                     for f in (_call, lambda s, x: _call(s, x)))
    assert first is not second
    a = kernels.interpreted(first)
    assert kernels.interpreted(first) is a and len(traced) == 1
    with jax.enable_x64(True):
        assert kernels.interpreted(first) is not a and len(traced) == 2
    assert kernels.interpreted(second) is not a and len(traced) == 3
    assert kernels.interpreted(first) is a and len(traced) == 3


@pytest.mark.parametrize("wrong", ["dropped scalar", "tile at the wrong block", "bfloat16 backward"])
def test_a_wrong_kernel_rule_fails(wrong):
    with pytest.raises(VJPMismatch) as caught:
        check_vjp(_rule(wrong), ARGS)
    assert {p.path for p in caught.value.problems} == {"args[0]" if wrong == "dropped scalar" else "args[1]"}


def _affine_relu_kernel(x_ref, w_ref, b_ref, o_ref):
    z = jnp.dot(x_ref[...], w_ref[...], preferred_element_type=jnp.float32) + b_ref[...].astype(jnp.float32)
    o_ref[...] = jnp.maximum(z, 0.0)


def _affine_relu(x, w, b):
    """relu(x @ w + b) over a grid of (BLOCK, BLOCK) output tiles, float32 out whatever the inputs."""
    (m, k), n = x.shape, w.shape[1]
    return pl.pallas_call(
        _affine_relu_kernel, grid=(m // BLOCK, n // BLOCK),
        in_specs=[pl.BlockSpec((BLOCK, k), lambda i, j: (i, 0)), pl.BlockSpec((k, BLOCK), lambda i, j: (0, j)),
                  pl.BlockSpec((1, BLOCK), lambda i, j: (0, j))],
        out_specs=pl.BlockSpec((BLOCK, BLOCK), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((m, n), jnp.float32), interpret=True)(x, w, b)


@functools.cache
def _affine_rule(wrong: str | None):
    @jax.custom_vjp
    def affine_relu(x, w, b):
        return _affine_relu(x, w, b)

    def bwd(res, g):
        x, w, b = res
        g = jnp.where(_affine_relu(x, w, b) > 0, g, 0.0)  # relu'(0) = 0
        dw = x.T.astype(jnp.float32) @ g
        db = jnp.sum(g, axis=0, keepdims=True)
        if wrong == "dW transposed":
            dw = dw.T
        if wrong == "dropped bias term":
            db = 0 * db
        return (g @ w.T.astype(jnp.float32)).astype(x.dtype), dw.astype(w.dtype), db.astype(b.dtype)

    affine_relu.defvjp(lambda x, w, b: (_affine_relu(x, w, b), (x, w, b)), bwd)
    return affine_relu


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("wrong", [None, "dW transposed", "dropped bias term"])
def test_a_tiled_affine_relu_kernel_is_a_proof_and_its_wrong_rules_fail(wrong, dtype):
    """The user's tiled matmul + bias + relu of the issue: float32 out at a relu kink was a false alarm as called."""
    rng = np.random.default_rng(2)
    args = tuple(jnp.asarray(rng.standard_normal(shape) / np.sqrt(shape[0]), dtype)
                 for shape in ((2 * BLOCK, 16), (16, 2 * BLOCK), (1, 2 * BLOCK)))
    if wrong is None:
        report = check_vjp(_affine_rule(None), args)
        assert report.proven and "lifted to float64" in report.how, str(report)
    else:
        with pytest.raises(VJPMismatch) as caught:
            check_vjp(_affine_rule(wrong), args)
        assert {p.path for p in caught.value.problems} == {"args[1]" if wrong == "dW transposed" else "args[2]"}


@pytest.mark.standard_promotion  # JAX's own kernels add bfloat16 to float32
@pytest.mark.parametrize("op, dtype", [("rms_norm", jnp.float32), ("layer_norm", jnp.bfloat16)])
def test_jaxs_own_norm_kernels_are_proofs_in_interpret_mode(op, dtype):
    module = pytest.importorskip(f"jax.experimental.pallas.ops.gpu.{op}")
    rng = np.random.default_rng(1)
    x, w, b = (jnp.asarray(rng.standard_normal(shape), dtype) for shape in ((2, 4, 32), (32,), (32,)))
    report = check_vjp(functools.partial(getattr(module, op), interpret=True), (x, w, b))
    assert report.proven and report.unchecked == 0 and "lifted to float64" in report.how, str(report)


def test_jaxs_own_causal_attention_kernel_is_a_proof_in_interpret_mode():
    """Before lifting: 100 of 3,072 entries unchecked in 58 s. Its inner loop's count is fixed by the grid: probed
    in full batches."""
    attention = pytest.importorskip("jax.experimental.pallas.ops.gpu.attention")
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 16, 1, 16)), jnp.float32) for _ in range(3))
    sizes = attention.BlockSizes(block_q=8, block_k=8, block_q_dkv=8, block_kv_dkv=8, block_q_dq=8, block_kv_dq=8)
    mha = functools.partial(attention.mha, segment_ids=None, causal=True, interpret=True, block_sizes=sizes)
    report = check_vjp(mha, (q, k, v))
    assert report.proven and report.unchecked == 0 and "lifted to float64" in report.how, str(report)


@pytest.mark.standard_promotion  # JAX's own kernel compares a bool with a Python int
def test_jaxs_own_grouped_matmul_kernel_is_a_proof_in_interpret_mode():
    """megablox's gmm (a TPU kernel, its custom_vjp two more gmm calls), groups of 20 and 12 rows over tiles of 8:
    a group boundary inside a tile."""
    ops = pytest.importorskip("jax.experimental.pallas.ops.tpu.megablox.ops")
    rng = np.random.default_rng(2)
    lhs = jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)
    rhs = jnp.asarray(rng.standard_normal((2, 16, 16)) / 4, jnp.float32)
    sizes = jnp.array([20, 12], jnp.int32)
    gmm = functools.partial(ops.gmm, preferred_element_type=jnp.float32, tiling=(8, 16, 16), interpret=True)
    np.testing.assert_allclose(gmm(lhs, rhs, sizes), jnp.concatenate([lhs[:20] @ rhs[0], lhs[20:] @ rhs[1]]),
                               rtol=1e-5, atol=1e-5)
    report = check_vjp(gmm, (lhs, rhs, sizes))
    assert report.proven and report.unchecked == 0 and "lifted to float64" in report.how, str(report)
    assert report.fixed == ("args[2] (int32[2])",)  # the group sizes, integers, held


def test_jaxs_own_tpu_flash_attention_is_a_proof_in_tpu_interpret_mode():
    """The TPU flash_attention has no ``interpret`` argument: JAX's TPU interpret mode runs it on the CPU."""
    pltpu = pytest.importorskip("jax.experimental.pallas.tpu")
    fa = pytest.importorskip("jax.experimental.pallas.ops.tpu.flash_attention")
    if not hasattr(pltpu, "force_tpu_interpret_mode"):
        pytest.skip("this JAX has no TPU interpret mode")
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 1, 128, 16)) * 0.3, jnp.float32) for _ in range(3))
    sizes = fa.BlockSizes.get_default(1, 1, 128, 128, 16)  # blocks of 128: the least its kernels take
    attention = functools.partial(fa.flash_attention, causal=True, block_sizes=sizes)
    with pltpu.force_tpu_interpret_mode():
        report = check_vjp(attention, (q, k, v))
    assert report.proven and report.unchecked == 0 and "lifted to float64" in report.how, str(report)
