"""The project's own tests (test_record.py runs them as test_layers.py): they check values, not gradients."""

import jax
import jax.numpy as jnp
import numpy as np

from recordpkg.layers import gated, model


def test_gated_matches_its_formula():
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32)
    z = x @ w
    np.testing.assert_allclose(gated(x, w), np.tanh(z) / (1 + np.exp(-z)), rtol=1e-5)


def test_gated_trains():
    x, w = jnp.ones((4, 3)), jnp.full((3, 2), 0.1)
    def loss(w):
        return jnp.sum(gated(x, w) ** 2)
    assert jnp.all(jnp.isfinite(jax.grad(loss)(w)))


def test_model_runs_under_jit():
    assert jnp.isfinite(model(jnp.ones((5, 3)), jnp.full((3, 4), 0.5)))
