"""Linear least squares in closed form, and the hand-written regression gradient ."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pure._checks import as_float_array, concrete_scalar


def _check_xy(fn: str, X: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    X, y = as_float_array(fn, "X", X), as_float_array(fn, "y", y)
    if X.ndim != 2:
        raise ValueError(f"{fn}: expected X of shape (n, d), got shape {X.shape}")
    if y.shape[:1] != X.shape[:1] or y.ndim not in (1, 2):
        raise ValueError(f"{fn}: X has shape {X.shape}, so y must have shape ({X.shape[0]},) or "
                         f"({X.shape[0]}, k), got {y.shape}")
    return X, y


def least_squares(X: jax.Array, y: jax.Array, *, ridge: float = 0.0,
                  fit_intercept: bool = True) -> tuple[jax.Array, jax.Array]:
    """The closed-form (ridge) least-squares fit, ``w = (XᵀX + ridge·I)⁻¹ Xᵀy``.

    Solved as the stacked least-squares problem ``[X; √ridge·I] w ≈ [y; 0]`` with
    ``jnp.linalg.lstsq`` (an SVD), never by forming an inverse. The intercept is fitted
    by centring X and y first, which is the textbook column of ones, left unpenalised.

    **Rank-deficient X** (e.g. a duplicated column, or d > n) gives the minimum-norm
    solution, as ``numpy.linalg.lstsq`` does; with ``ridge > 0`` the system has full
    rank and the solution is unique.

    Args:
      X: design matrix ``(n, d)``.
      y: targets ``(n,)`` or ``(n, k)``.
      ridge: the penalty on ``‖w‖²`` (not on the intercept), ≥ 0.
      fit_intercept: fit ``b``; if False, ``b`` is 0.

    Returns:
      ``(w, b)`` with ``w`` of shape ``(d,)`` or ``(d, k)`` and ``b`` of shape ``()`` or ``(k,)``.

    Example:
      >>> X = jnp.array([[0.0], [1.0], [2.0]])
      >>> w, b = least_squares(X, 3 * X[:, 0] + 1)
      >>> round(float(w[0]), 4), round(float(b), 4)
      (3.0, 1.0)
    """
    X, y = _check_xy("least_squares", X, y)
    ridge = concrete_scalar("least_squares", "ridge", ridge, low=0.0)
    x_mean = jnp.mean(X, axis=0) if fit_intercept else jnp.zeros(X.shape[1], X.dtype)
    y_mean = jnp.mean(y, axis=0) if fit_intercept else jnp.zeros(y.shape[1:], y.dtype)
    A, t = X - x_mean, y - y_mean
    if ridge:
        d = X.shape[1]
        A = jnp.concatenate([A, jnp.sqrt(jnp.asarray(ridge, X.dtype)) * jnp.eye(d, dtype=X.dtype)])
        t = jnp.concatenate([t, jnp.zeros((d, *y.shape[1:]), y.dtype)])
    w = jnp.linalg.lstsq(A, t)[0]
    return w, y_mean - x_mean @ w


def linear_regression_loss(w: jax.Array, b: jax.Array, X: jax.Array, y: jax.Array, *,
                           l2: float = 0.0) -> jax.Array:
    """``(1/2n)‖y − Xw − b‖² + (l2/2)‖w‖²``, d2l's training loss with weight decay."""
    r = X @ w + b - y
    return 0.5 * jnp.mean(r * r) + 0.5 * l2 * jnp.sum(w * w)


def linear_regression_grad(w: jax.Array, b: jax.Array, X: jax.Array, y: jax.Array, *,
                           l2: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """The analytic gradient of :func:`linear_regression_loss`, written by hand.

    .. math:: r = Xw + b - y, \\qquad \\nabla_w = X^T r / n + \\lambda w, \\qquad \\nabla_b = \\mathrm{mean}(r)

    (CS231n writes the unscaled form ``2λw − Σᵢ 2(yᵢ − wᵀxᵢ)xᵢ`` for ``λ‖w‖² + Σ(yᵢ − wᵀxᵢ)²``;
    this is the same rule for the ½- and 1/n-scaled loss.)

    Args:
      w: weights ``(d,)``.
      b: intercept, a scalar.
      X: ``(n, d)``.
      y: ``(n,)``.
      l2: λ ≥ 0 of the penalty ``(λ/2)‖w‖²``.

    Returns:
      ``(dw, db)``, shaped like ``w`` and ``b``.

    Example:
      >>> linear_regression_grad(jnp.zeros(1), jnp.zeros(()), jnp.array([[1.0], [2.0]]), jnp.array([1.0, 2.0]))
      (Array([-2.5], dtype=float32), Array(-1.5, dtype=float32))
    """
    X, y = _check_xy("linear_regression_grad", X, y)
    if w.shape != X.shape[1:] or y.ndim != 1:
        raise ValueError(f"linear_regression_grad: X has shape {X.shape}, so w must have shape "
                         f"({X.shape[1]},) and y shape ({X.shape[0]},); got w {w.shape}, y {y.shape}")
    r = X @ w + b - y
    return X.T @ r / X.shape[0] + l2 * w, jnp.mean(r)
