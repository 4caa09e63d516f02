"""References for pure.linear: numpy's lstsq with the bias as a column of ones, and jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np


def least_squares(X, y, *, ridge: float = 0.0, fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    A = np.hstack([X, np.ones((X.shape[0], 1))]) if fit_intercept else X
    if ridge:  # penalise w only: the ones column gets a zero row
        penalty = np.sqrt(ridge) * np.eye(A.shape[1])[: X.shape[1]]
        A, y = np.vstack([A, penalty]), np.concatenate([y, np.zeros((X.shape[1], *y.shape[1:]))])
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    return (coef[:-1], coef[-1]) if fit_intercept else (coef, np.zeros(y.shape[1:]))


def linear_regression_loss(w, b, X, y, *, l2: float = 0.0) -> jax.Array:
    return jnp.sum((y - X @ w - b) ** 2) / (2 * X.shape[0]) + l2 / 2 * jnp.vdot(w, w)


def linear_regression_grad(w, b, X, y, *, l2: float = 0.0) -> tuple[jax.Array, jax.Array]:
    return jax.grad(linear_regression_loss, argnums=(0, 1))(w, b, X, y, l2=l2)
