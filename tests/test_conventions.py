"""Exact conventions: ties, kinks, loss factors and broadcasting, asserted exactly, not "close to jax"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pure

N, C = 4, 3


def grads(fn, *args):
    return jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("op", [pure.add, pure.mul, pure.maximum])
@pytest.mark.parametrize("bias_shape", [(C,), (1, C), ()], ids=["(C,)", "(1,C)", "scalar"])
def test_gates_sum_the_cotangent_over_broadcast_axes(op, bias_shape):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((N, C)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(1).standard_normal(bias_shape), jnp.float32)
    g = jnp.asarray(np.random.default_rng(2).standard_normal((N, C)), jnp.float32)
    out, pullback = jax.vjp(op, x, b)
    dx, db = pullback(g)
    assert out.shape == (N, C) and dx.shape == x.shape and db.shape == b.shape
    local_x, local_b = {  # the local derivatives of each gate, broadcast to (N, C)
        pure.add: (1.0, 1.0),
        pure.mul: (jnp.broadcast_to(b, (N, C)), x),
        pure.maximum: ((x >= b).astype(x.dtype), (x < b).astype(x.dtype)),
    }[op]
    np.testing.assert_allclose(dx, g * local_x, rtol=1e-6)
    summed = jnp.sum(g * local_b, axis=0 if bias_shape else None)  # a scalar was broadcast along every axis
    np.testing.assert_allclose(db, summed.reshape(bias_shape), rtol=1e-5, atol=1e-6)


def test_add_passes_the_gradient_unchanged():
    dx, dy = grads(pure.add, jnp.array([1.0, -2.0]), jnp.array([5.0, 7.0]))
    assert dx.tolist() == [1.0, 1.0] and dy.tolist() == [1.0, 1.0]


def test_mul_switches_the_inputs():
    dx, dy = grads(pure.mul, jnp.array([3.0]), jnp.array([-4.0]))
    assert dx.tolist() == [-4.0] and dy.tolist() == [3.0]


def test_maximum_tie_goes_to_x_and_cotangents_add_up_to_g():
    x, y = jnp.array([2.0, 1.0, 3.0]), jnp.array([2.0, 5.0, 0.0])
    g = jnp.array([0.5, -1.5, 2.0])
    dx, dy = jax.vjp(pure.maximum, x, y)[1](g)
    assert dx.tolist() == [0.5, 0.0, 2.0]
    assert dy.tolist() == [0.0, -1.5, 0.0]
    assert (dx + dy).tolist() == g.tolist()


def test_relu_derivative_at_zero_is_zero():
    assert grads(pure.relu, jnp.array([-1.0, 0.0, 2.0]))[0].tolist() == [0.0, 0.0, 1.0]


def test_leaky_relu_takes_the_slope_at_zero():
    assert grads(lambda x: pure.leaky_relu(x, 0.25), jnp.array([-1.0, 0.0, 2.0]))[0].tolist() == [0.25, 0.25, 1.0]


def test_sigmoid_derivative_is_y_times_one_minus_y():
    x = jnp.array([-3.0, 0.0, 2.0])
    y = pure.sigmoid(x)
    np.testing.assert_array_equal(grads(pure.sigmoid, x)[0], y * (1 - y))
    assert grads(pure.sigmoid, jnp.array(0.0))[0] == 0.25


def test_mse_has_the_half():
    pred, target = jnp.array([3.0, 1.0]), jnp.array([1.0, 1.0])
    assert pure.mse(pred, target) == 0.5 * (4.0 + 0.0) / 2
    assert grads(pure.mse, pred, target)[0].tolist() == [1.0, 0.0]  # (pred − target)/n, no factor 2


def test_softmax_cross_entropy_gradient_is_softmax_minus_onehot_over_n():
    logits, labels = jnp.array([[0.0, 0.0], [0.0, jnp.log(3.0)]]), jnp.array([0, 1])
    np.testing.assert_allclose(pure.softmax_cross_entropy(logits, labels), (np.log(2) + np.log(4 / 3)) / 2, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(pure.softmax_cross_entropy)(logits, labels),
                               [[-0.25, 0.25], [0.125, -0.125]], rtol=1e-6)


@pytest.mark.parametrize("big", [1e4, -1e4])
def test_losses_are_finite_for_huge_logits_in_float32(big):
    logits = jnp.array([[big, -big, 0.0]], jnp.float32)
    loss, g = jax.value_and_grad(pure.softmax_cross_entropy)(logits, jnp.array([1]))
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    z = jnp.array([big, -big], jnp.float32)  # targets [0, 1]: both right (big < 0) or both wrong
    loss, g = jax.value_and_grad(pure.binary_cross_entropy)(z, jnp.array([0.0, 1.0]))
    assert loss == max(big, 0.0) and np.all(np.isfinite(g))  # confidently wrong: the loss is |z| per entry


def test_hinge_is_the_cs231n_sum_form_and_a_margin_hit_has_no_gradient():
    scores = jnp.array([[3.2, 5.1, -1.7], [1.0, 2.0, 0.0]])  # row 2: s_0 − s_1 + 1 = 0 exactly
    labels = jnp.array([0, 1])
    np.testing.assert_allclose(pure.multiclass_hinge(scores, labels), (2.9 + 0.0) / 2, rtol=1e-6)
    g = jax.grad(pure.multiclass_hinge)(scores, labels)
    assert g.tolist() == [[-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]


def test_l2_conventions():
    W = jnp.array([[1.0, -2.0], [3.0, 0.5]])
    params = {"W": W, "b": jnp.array([10.0, 10.0])}
    mask = {"W": True, "b": False}
    lam, reg = 0.1, 0.05
    assert pure.l2_penalty(params, lam, mask=mask) == pytest.approx(lam / 2 * float(jnp.sum(W * W)))
    g = jax.grad(pure.l2_penalty)(params, lam, mask=mask)
    np.testing.assert_allclose(g["W"], lam * W, rtol=1e-6)  # d2l: ∇ λ/2‖w‖² = λw
    assert g["b"].tolist() == [0.0, 0.0]  # biases are not regularised
    # CS231n: reg·ΣW² (gradient 2·reg·W) is l2_penalty with strength 2·reg.
    assert pure.l2_penalty(params, 2 * reg, mask=mask) == pytest.approx(reg * float(jnp.sum(W * W)))
    np.testing.assert_allclose(jax.grad(pure.l2_penalty)(params, 2 * reg, mask=mask)["W"], 2 * reg * W, rtol=1e-6)


def test_l1_subgradient_at_zero_is_zero():
    w = jnp.array([-2.0, 0.0, 3.0])
    assert pure.l1_penalty([w], 0.5) == 2.5
    assert jax.grad(pure.l1_penalty)([w], 0.5)[0].tolist() == [-0.5, 0.0, 0.5]


def test_max_norm_projects_columns_and_leaves_zero_columns_alone():
    W = jnp.array([[3.0, 0.0, 0.3], [4.0, 0.0, 0.4]])
    out = pure.max_norm({"W": W, "b": jnp.array([9.0, 9.0, 9.0])}, 1.0)
    np.testing.assert_allclose(out["W"], [[0.6, 0.0, 0.3], [0.8, 0.0, 0.4]], rtol=1e-6)
    assert out["b"].tolist() == [9.0, 9.0, 9.0]
    g = jax.grad(lambda w: jnp.sum(pure.max_norm([w], 1.0)[0]))(W)
    assert np.all(np.isfinite(g))
    assert g[:, 1].tolist() == [1.0, 1.0] and g[:, 2].tolist() == [1.0, 1.0]  # inactive: identity
    at_bound = jnp.array([[0.6], [0.8]])  # exactly ‖w‖ = c: the identity branch
    assert jax.grad(lambda w: jnp.sum(pure.max_norm([w], 1.0)[0]))(at_bound).ravel().tolist() == [1.0, 1.0]


def test_dropout_edges():
    x = jnp.arange(1.0, 7.0)
    key = jax.random.key(0)
    assert pure.dropout(x, key, 0.0) is x and pure.dropout(x, None, 0.7, deterministic=True) is x
    y, g = jax.value_and_grad(lambda v: jnp.sum(pure.dropout(v, key, 1.0)))(x)
    assert y == 0.0 and g.tolist() == [0.0] * 6


@pytest.mark.parametrize("key", [jax.random.key(3), jax.random.PRNGKey(3)], ids=["typed", "raw"])
def test_dropout_backward_uses_the_forward_mask(key):
    x = jnp.arange(1.0, 101.0)
    y, pullback = jax.vjp(lambda v: pure.dropout(v, key, 0.3), x)
    (dx,) = pullback(jnp.ones_like(x))
    kept = y != 0
    assert 0 < int(kept.sum()) < 100
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-6)
    np.testing.assert_allclose(dx, jnp.where(kept, 1 / 0.7, 0.0), rtol=1e-6)


def test_dropout_mask_does_not_depend_on_x64(x64):
    key = jax.random.key(11)
    mask64 = pure.dropout(jnp.ones(50, jnp.float64), key, 0.5) != 0
    with jax.enable_x64(False):
        mask32 = pure.dropout(jnp.ones(50, jnp.float32), key, 0.5) != 0
    assert mask64.tolist() == mask32.tolist()


@pytest.mark.parametrize("fn", [pure.sigmoid, pure.tanh, lambda x: pure.affine(x, x.T, x[0])],
                         ids=["sigmoid", "tanh", "affine"])
def test_grad_of_grad_matches_jax(fn, x64):
    import reference
    ref = {pure.sigmoid: reference.activations.sigmoid, pure.tanh: reference.activations.tanh}.get(
        fn, lambda x: reference.layers.affine(x, x.T, x[0]))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3)))
    hess = jax.hessian(lambda v: jnp.sum(fn(v) ** 2))(x)
    want = jax.hessian(lambda v: jnp.sum(ref(v) ** 2))(x)
    np.testing.assert_allclose(hess, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transform", [jax.jvp, jax.jacfwd], ids=["jvp", "jacfwd"])
def test_forward_mode_gives_jaxs_custom_vjp_error(transform):
    x = jnp.ones(3)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff \\(jvp\\) to a custom_vjp function"):
        transform(pure.relu, (x,), (x,)) if transform is jax.jvp else transform(pure.relu)(x)
