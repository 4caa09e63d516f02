"""Behaviours pinned one by one, each by a test that fails when it changes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pure
from pure import linear


@pytest.mark.parametrize("l2", [None, 0.3])  # None: the default
def test_linear_regression_grad_is_the_gradient_of_its_loss_at_nonzero_w(l2):
    rng = np.random.default_rng(0)
    X, y = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32), jnp.asarray(rng.standard_normal(6), jnp.float32)
    w, b = jnp.asarray([0.5, -1.5, 2.0], jnp.float32), jnp.float32(0.25)
    kw = {} if l2 is None else {"l2": l2}
    dw, db = linear.linear_regression_grad(w, b, X, y, **kw)
    gw, gb = jax.grad(linear.linear_regression_loss, argnums=(0, 1))(w, b, X, y, **kw)
    np.testing.assert_allclose(dw, gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db, gb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "leaky_relu"])
def test_each_activation_refuses_integers_in_its_own_name(name):
    with pytest.raises(TypeError, match=f"^{name}: expected x to have a floating-point dtype, got int32 instead; "
                                        f"cast it with x.astype\\(jnp.float32\\)$"):
        getattr(pure, name)(jnp.arange(3, dtype=jnp.int32))


def test_max_norm_refuses_an_integer_leaf_and_names_it():
    with pytest.raises(TypeError, match="^max_norm: expected params\\['W'\\] to have a floating-point dtype, got "
                                        "int32 instead; cast it with params\\['W'\\].astype"):
        pure.max_norm({"b": jnp.zeros(2), "W": jnp.ones((2, 2), jnp.int32)}, 1.0)


@pytest.mark.parametrize("gate, plain", [(pure.add, jnp.add), (pure.mul, jnp.multiply),
                                         (pure.maximum, jnp.maximum)])
def test_gate_backward_sums_over_added_leading_axes_and_stretched_size_1_axes(gate, plain):
    """x (2, 1, 3) meets y (4, 1): the output is (2, 4, 3); dx sums over the stretched axis 1, dy over the
    added axis 0 and the stretched axis 2."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 1, 3)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((4, 1)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 4, 3)), jnp.float32)
    out, pull = jax.vjp(gate, x, y)
    dx, dy = pull(g)
    want_out, want_pull = jax.vjp(plain, x, y)
    want_dx, want_dy = want_pull(g)
    assert out.shape == (2, 4, 3) and dx.shape == (2, 1, 3) and dy.shape == (4, 1)
    np.testing.assert_allclose(out, want_out, rtol=1e-6)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dy, want_dy, rtol=1e-5, atol=1e-6)
