"""Closed-form least squares, the analytic regression gradient, grid and random search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference.linear as ref_linear
import reference.search as ref_search
from pure.linear import least_squares, linear_regression_grad, linear_regression_loss
from pure.search import grid_search, random_search


def _problem(n=50, d=4, k=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal((d,) if k is None else (d, k))
    return X, X @ w + 0.7 + 0.1 * rng.standard_normal(w.shape[1:] and (n, *w.shape[1:]) or n)


@pytest.mark.parametrize("ridge", [0.0, 2.5])
@pytest.mark.parametrize("k", [None, 3], ids=["y (n,)", "y (n, 3)"])
def test_least_squares_matches_numpy_lstsq(x64, ridge, k):
    X, y = _problem(k=k)
    w, b = least_squares(jnp.asarray(X), jnp.asarray(y), ridge=ridge)
    w_ref, b_ref = ref_linear.least_squares(X, y, ridge=ridge)
    np.testing.assert_allclose(w, w_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, b_ref, rtol=1e-10, atol=1e-12)


def test_rank_deficient_x_gives_the_minimum_norm_solution(x64):
    X, y = _problem()
    X = np.hstack([X, X[:, :1]])  # a duplicated column: XᵀX is singular
    w, b = least_squares(jnp.asarray(X), jnp.asarray(y), fit_intercept=False)
    w_ref, _ = ref_linear.least_squares(X, y, fit_intercept=False)
    np.testing.assert_allclose(w, w_ref, rtol=1e-10, atol=1e-12)
    assert float(b) == 0.0 and abs(float(w[0]) - float(w[-1])) < 1e-10  # min norm splits the weight evenly


@pytest.mark.parametrize("ridge", [0.0, 5.0])
def test_gradient_descent_converges_to_the_closed_form(x64, ridge):
    X, y = (jnp.asarray(a) for a in _problem())
    w, b = jnp.zeros(4), jnp.zeros(())
    for _ in range(500):  # (1/2n)‖r‖² + (l2/2)‖w‖² has the same minimiser as ‖r‖² + ridge‖w‖² for l2 = ridge/n
        dw, db = linear_regression_grad(w, b, X, y, l2=ridge / X.shape[0])
        w, b = w - 0.5 * dw, b - 0.5 * db
    w_cf, b_cf = least_squares(X, y, ridge=ridge)
    np.testing.assert_allclose(w, w_cf, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b, b_cf, rtol=1e-8, atol=1e-10)


def test_linear_regression_grad_equals_jax_grad(x64):
    X, y = (jnp.asarray(a) for a in _problem())
    w, b = jnp.asarray(np.random.default_rng(3).standard_normal(4)), jnp.asarray(0.3)
    got = linear_regression_grad(w, b, X, y, l2=0.2)
    want = ref_linear.linear_regression_grad(w, b, X, y, l2=0.2)
    for a, c in zip(got, want, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-12)
    np.testing.assert_allclose(linear_regression_loss(w, b, X, y, l2=0.2),
                               ref_linear.linear_regression_loss(w, b, X, y, l2=0.2), rtol=1e-12)


def test_least_squares_errors():
    with pytest.raises(ValueError, match=r"least_squares: X has shape \(5, 2\), so y must have shape \(5,\)"):
        least_squares(jnp.ones((5, 2)), jnp.ones(4))
    with pytest.raises(ValueError, match="least_squares: ridge must be in"):
        least_squares(jnp.ones((5, 2)), jnp.ones(5), ridge=-1.0)


def _quadratic(p):
    return (p["a"] - 0.5) ** 2 + 2 * (p["b"] + 1.0) ** 2 + 0.5 * p["a"] * p["b"]


def test_grid_search_finds_the_best_grid_point_like_an_exhaustive_loop():
    grids = {"a": jnp.linspace(-2, 2, 17), "b": jnp.linspace(-2, 2, 17)}
    best, score = grid_search(_quadratic, grids)
    ref_best, ref_score = ref_search.grid_search(_quadratic, grids)
    assert {k: float(v) for k, v in best.items()} == {k: float(v) for k, v in ref_best.items()}
    assert float(score) == pytest.approx(ref_score)
    # The continuous minimum is a = 0.8, b = −1.1 (∇ = 0); the best grid point is its neighbour.
    assert abs(float(best["a"]) - 0.8) <= 0.125 and abs(float(best["b"]) + 1.1) <= 0.125


def test_random_search_gets_close_to_the_minimum():
    sampler = lambda k: dict(zip("ab", jax.random.uniform(k, (2,), minval=-3.0, maxval=3.0), strict=True))  # noqa: E731
    best, score = random_search(_quadratic, jax.random.key(0), sampler, 4096)
    assert abs(float(best["a"]) - 0.8) < 0.15 and abs(float(best["b"]) + 1.1) < 0.15
    assert float(score) == pytest.approx(float(_quadratic({"a": 0.8, "b": -1.1})), abs=0.02)


def test_search_skips_nan_scores():
    best, score = grid_search(lambda p: jnp.where(p["a"] < 0, jnp.nan, p["a"]), {"a": jnp.array([-1.0, 2.0, 1.0])})
    assert float(best["a"]) == 1.0 and float(score) == 1.0
