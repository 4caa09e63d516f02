"""Mixed precision: float32 params, bfloat16 / float16 compute, float32 loss; float16 loss scaling.

Documented tolerances (bfloat16 keeps 8 significant bits, so ~4e-3 relative per rounding):
the bfloat16-compute loss is within 1e-3 (relative) of the float32 loss, and each gradient
leaf within 5e-2 of float32's in norm, ‖g_bf16 − g_f32‖ / ‖g_f32‖. Measured on this MLP:
loss ≤ 1.6e-4, gradients ≤ 2.5e-2 (relu), 6.9e-3 (sigmoid), 7.7e-3 (tanh).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pure.nn as nn
import pure.optim as optim
import reference.nn
from pure.train import make_epoch, make_train_step
from reference import check_vjp

LOSS_RTOL, GRAD_RTOL = 1e-3, 5e-2
SIZES = [32, 64, 64, 10]


def _data(n=64):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.standard_normal((n, SIZES[0])), jnp.float32), jnp.asarray(rng.integers(0, 10, n), jnp.int32)


def _norm_rel(a, b):
    return max(float(jnp.linalg.norm((x - y).ravel()) / jnp.linalg.norm(y.ravel()))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_bfloat16_compute_stays_within_the_documented_tolerance_of_float32(activation):
    X, y = _data()
    params = nn.init_mlp(jax.random.key(0), SIZES, scheme="xavier")

    def loss(p, compute_dtype):
        return nn.classification_loss(p, X, y, activation=activation, l2=1e-3, compute_dtype=compute_dtype)

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)  # one program each, not one per op
    l32, g32 = value_and_grad(params, None)
    l16, g16 = value_and_grad(params, jnp.bfloat16)
    assert l16.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(g16))
    assert nn.mlp(params, X, compute_dtype=jnp.bfloat16).dtype == jnp.bfloat16
    assert abs(float(l16 - l32)) <= LOSS_RTOL * float(l32)
    assert 0 < _norm_rel(g16, g32) <= GRAD_RTOL
    if activation == "relu":  # and the same policy differentiated by jax.grad over plain jax.numpy lands as close
        ref = jax.jit(jax.grad(lambda p: reference.nn.classification_loss(p, X, y, activation=activation, l2=1e-3,
                                                                         compute_dtype=jnp.bfloat16)))(params)
        assert _norm_rel(g16, ref) <= GRAD_RTOL


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_check_vjp_passes_the_low_precision_mlp_against_float64_at_its_tolerance(dtype):
    # Params and inputs in the low dtype: every matmul, activation and backward runs in it; check_vjp
    # compares with float64 central differences at that dtype's tolerance (bf16 3e-2, f16 4e-3).
    X, y = _data(16)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), nn.init_mlp(jax.random.key(1), SIZES, scheme="xavier"))
    report = check_vjp(lambda p, x: nn.classification_loss(p, x, y, activation="tanh"), (params, X.astype(dtype)),
                       reference=lambda p, x: reference.nn.classification_loss(p, x, y, activation="tanh"))
    assert {leaf.dtype for leaf in report.leaves} == {jnp.dtype(dtype).name}  # it raises on a mismatch


def _tiny_loss(p, batch, key, compute_dtype=jnp.float16):
    # a loss whose float16 cotangents (~1e-9) fall below float16's smallest subnormal (6e-8)
    return 1e-7 * nn.classification_loss(p, *batch, compute_dtype=compute_dtype)


@pytest.mark.cpu_numerics("float16 products below 6e-8 flush to zero; a GPU may keep them in float32 inside a fusion")
def test_float16_loss_scaling_recovers_gradients_that_underflow_without_it():
    X, y = _data()
    params = nn.init_mlp(jax.random.key(0), SIZES)
    opt = optim.sgd(0.1)
    f32 = jax.jit(jax.grad(lambda p: _tiny_loss(p, (X, y), None, None)))(params)
    want = float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(f32))))
    unscaled = make_train_step(_tiny_loss, opt)(nn.init_mlp(jax.random.key(0), SIZES), opt.init(params), (X, y),
                                                jax.random.key(0))[2]
    assert float(unscaled["grad_norm"]) == 0.0  # flushed to zero in float16
    scaled = make_train_step(_tiny_loss, opt, loss_scale=2.0**16)(nn.init_mlp(jax.random.key(0), SIZES),
                                                                   opt.init(params), (X, y), jax.random.key(0))[2]
    assert not bool(scaled["skipped"])
    assert float(scaled["grad_norm"]) == pytest.approx(want, rel=1e-2)


@pytest.mark.cpu_numerics("float16 overflows at 65504; a GPU may keep the scaled cotangents in float32 inside a fusion")
def test_float16_overflow_skips_the_step_and_keeps_params_and_state():
    X, y = _data()
    loss = lambda p, batch, key: nn.classification_loss(p, *batch, compute_dtype=jnp.float16)  # noqa: E731
    opt = optim.sgd(0.1, momentum=0.9)
    params = nn.init_mlp(jax.random.key(0), SIZES)
    before = jax.tree_util.tree_map(np.asarray, (params, opt.init(params)))
    copy = jax.tree_util.tree_map(jnp.copy, params)  # the step donates it; params go on to the epoch below
    p, s, metrics = make_train_step(loss, opt, loss_scale=2.0**20)(copy, opt.init(params), (X, y), jax.random.key(0))
    assert bool(metrics["skipped"]) and not np.isfinite(float(metrics["grad_norm"]))
    for a, b in zip(jax.tree_util.tree_leaves((p, s)), jax.tree_util.tree_leaves(before), strict=True):
        np.testing.assert_array_equal(a, b)  # the step counter too: a skipped step does not count
    # a scanned epoch skips the same way, step by step, and then goes on
    epoch = make_epoch(loss, opt, 32, loss_scale=2.0**4)
    _, state, metrics = epoch(params, opt.init(params), X, y, 0, 0, jax.random.key(0))
    assert metrics["skipped"].tolist() == [False, False] and int(state.count) == 2


def test_loss_scale_is_checked():
    with pytest.raises(ValueError, match="make_train_step: loss_scale must be a positive finite number or None, "
                                         "got 0"):
        make_train_step(_tiny_loss, optim.sgd(0.1), loss_scale=0)
