"""Losses, each a mean over the batch, with the factors of the notes kept exactly.

Losses are computed in at least float32: each public function casts a narrower input
(bfloat16, float16) up before the hand-written core, and the cast's own transpose brings
the cotangent back to the input's dtype. That is the only place a dtype is carried.

Labels: JAX would wrap a label of -1 to the last class and turn a label >= C into
NaN. On an eager call (concrete labels) an out-of-range label raises ValueError
saying how many are bad; under ``jit`` the labels are abstract, so such a row gives
a NaN loss (and NaN gradient), never a finite wrong number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Int

from pure._checks import as_float_array, at_least_float32, check_classification, require_same_shape
from pure._vjp import hand_written


def _upcast(x: jax.Array) -> jax.Array:
    """``x`` in at least float32; differentiating the cast returns the cotangent in ``x``'s dtype."""
    return x.astype(at_least_float32(x.dtype))


def _label_rows(labels: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """One-hot rows of ``labels`` and a per-row validity flag (False for out-of-range labels)."""
    onehot = labels[:, None] == jnp.arange(num_classes, dtype=labels.dtype)
    return onehot, (labels >= 0) & (labels < num_classes)


# --------------------------------------------------------------------------- mse
def mse(pred: Float[ArrayLike, "*shape"], target: Float[ArrayLike, "*shape"]) -> Float[Array, ""]:
    """Half mean squared error, ``½·mean((pred − target)²)`` (d2l's ℓ = ½(y − ŷ)²).

    .. math:: L = \\frac{1}{2n}\\lVert \\hat y - y \\rVert^2, \\qquad dL/d\\hat y = (\\hat y - y)/n

    where ``n`` is the number of elements. Note the ½: the gradient has no factor 2.

    Args:
      pred: predictions, any shape.
      target: targets of exactly the same shape (no broadcasting: (N, 1) against (N,)
        would silently build an (N, N) difference).

    Returns:
      A scalar.

    Example:
      >>> mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))
      Array(1.25, dtype=float32)
    """
    pred, target = as_float_array("mse", "pred", pred), as_float_array("mse", "target", target)
    require_same_shape("mse", "pred", pred, "target", target)
    return _mse(_upcast(pred), _upcast(target))


def _mse_fwd(pred, target):
    diff = pred - target
    return 0.5 * jnp.mean(diff * diff), diff


def _mse_bwd(diff, g):
    d = g * diff / diff.size
    return d, -d


_mse = hand_written(_mse_fwd, _mse_bwd)


# --------------------------------------------------------- softmax cross-entropy
def softmax_cross_entropy(logits: Float[ArrayLike, "n c"], labels: Int[ArrayLike, " n"]) -> Float[Array, ""]:
    """Mean softmax cross-entropy with integer labels (CS231n).

    .. math:: L = \\frac1N \\sum_i -\\log \\frac{e^{s_{i,y_i}}}{\\sum_k e^{s_{ik}}}, \\qquad
              \\frac{\\partial L}{\\partial s} = \\frac{\\mathrm{softmax}(s) - \\mathrm{onehot}(y)}{N}

    The row max is subtracted first, so logits of ±1e4 in float32 give a finite loss
    and gradient. The loss gathers the label's logit (one per row, not a masked sum over
    all C), and the backward reuses the forward's exponentials and row sums instead of
    recomputing ``exp`` (docs/performance.md has the measurements behind both).

    Args:
      logits: scores of shape ``(N, C)``.
      labels: integer class indices of shape ``(N,)`` in ``[0, C)``.

    Returns:
      A scalar in at least float32. An out-of-range label raises ValueError when the
      labels are concrete, and gives NaN under ``jit`` (see the module docstring).

    Example:
      >>> softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))  # log 4
      Array(1.3862944, dtype=float32)
    """
    logits, labels = check_classification("softmax_cross_entropy", logits, labels)
    return _softmax_cross_entropy(_upcast(logits), labels)


def _softmax_cross_entropy_fwd(s, labels):
    shifted = s - jnp.max(s, axis=1, keepdims=True)
    e = jnp.exp(shifted)
    total = jnp.sum(e, axis=1)
    valid = (labels >= 0) & (labels < s.shape[1])
    picked = jnp.take_along_axis(shifted, jnp.clip(labels, 0, s.shape[1] - 1)[:, None], axis=1)[:, 0]
    loss = jnp.mean(jnp.where(valid, jnp.log(total) - picked, jnp.nan))  # -log softmax at the label
    return loss, (e, total, labels)


def _softmax_cross_entropy_bwd(res, g):
    e, total, labels = res  # the forward's exponentials: softmax = e / total, no exp recomputed
    onehot, valid = _label_rows(labels, e.shape[1])
    scale = jnp.where(valid, g / e.shape[0], jnp.nan)  # a bad label's row is NaN, never a wrapped class
    d = (e * (1 / total)[:, None] - onehot.astype(e.dtype)) * scale[:, None]
    return d, None


_softmax_cross_entropy = hand_written(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)


# -------------------------------------------------------------- multiclass hinge
def multiclass_hinge(scores: Float[ArrayLike, "n c"], labels: Int[ArrayLike, " n"],
                     margin: float = 1.0) -> Float[Array, ""]:
    """Mean multiclass SVM loss in the CS231n sum form.

    .. math:: L = \\frac1N \\sum_i \\sum_{j \\ne y_i} \\max(0,\\ s_{ij} - s_{i y_i} + \\Delta)

    Each violating class j gets ``+1/N``; the true class gets ``−(number of violators)/N``,
    so every row of the gradient sums to 0. **Kink:** a margin hit exactly
    (``s_j − s_y + Δ = 0``) counts as not violated (gradient 0), like relu'(0) = 0.
    ``optax.multiclass_hinge_loss`` is the Crammer–Singer max form, a different function.

    Args:
      scores: scores of shape ``(N, C)``.
      labels: integer class indices of shape ``(N,)`` in ``[0, C)``.
      margin: the margin Δ, a Python float (static under ``jit``).

    Returns:
      A scalar in at least float32; out-of-range labels behave as in softmax_cross_entropy.

    Example:
      >>> multiclass_hinge(jnp.array([[3.0, 5.0, -2.0]]), jnp.array([0]))  # (5 − 3 + 1) + 0
      Array(3., dtype=float32)
    """
    scores, labels = check_classification("multiclass_hinge", scores, labels)
    if not isinstance(margin, (int, float)):
        raise TypeError(f"multiclass_hinge: margin must be a Python float, got {type(margin).__name__}")
    return _multiclass_hinge(float(margin), _upcast(scores), labels)


def _multiclass_hinge_fwd(margin, s, labels):
    onehot, valid = _label_rows(labels, s.shape[1])
    true_score = jnp.sum(jnp.where(onehot, s, 0), axis=1, keepdims=True)
    slack = s - true_score + margin
    violated = (slack > 0) & ~onehot
    per_row = jnp.sum(jnp.where(violated, slack, 0), axis=1)
    return jnp.mean(jnp.where(valid, per_row, jnp.nan)), (violated, labels)


def _multiclass_hinge_bwd(margin, res, g):
    violated, labels = res
    onehot, valid = _label_rows(labels, violated.shape[1])
    count = jnp.sum(violated, axis=1, keepdims=True, dtype=g.dtype)
    d = (violated.astype(g.dtype) - onehot.astype(g.dtype) * count) * (g / violated.shape[0])
    return jnp.where(valid[:, None], d, jnp.nan), None


_multiclass_hinge = hand_written(_multiclass_hinge_fwd, _multiclass_hinge_bwd, static=1)


# ---------------------------------------------------------- binary cross-entropy
def binary_cross_entropy(logits: Float[ArrayLike, "*shape"], targets: Float[ArrayLike, "*shape"]) -> Float[Array, ""]:
    """Mean binary cross-entropy of a sigmoid output, taken from the logits.

    .. math:: L = \\mathrm{mean}\\big(-t\\log\\sigma(z) - (1-t)\\log(1-\\sigma(z))\\big)
              = \\mathrm{mean}\\big(\\max(z, 0) - z t + \\log(1 + e^{-|z|})\\big)

    .. math:: \\partial L/\\partial z = (\\sigma(z) - t)/n, \\qquad \\partial L/\\partial t = -z/n

    The right-hand form is finite for |z| = 1e4 in float32, where ``log(σ(z))`` is not.

    Args:
      logits: pre-sigmoid scores ``z``, any shape.
      targets: float probabilities in [0, 1], the same shape as ``logits``.

    Returns:
      A scalar in at least float32.

    Example:
      >>> binary_cross_entropy(jnp.zeros(3), jnp.array([0.0, 1.0, 1.0]))  # log 2
      Array(0.6931472, dtype=float32)
    """
    fn = "binary_cross_entropy"
    logits, targets = as_float_array(fn, "logits", logits), as_float_array(fn, "targets", targets)
    require_same_shape(fn, "logits", logits, "targets", targets)
    return _binary_cross_entropy(_upcast(logits), _upcast(targets))


def _binary_cross_entropy_fwd(z, t):
    loss = jnp.mean(jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z))))
    return loss, (z, t)


def _binary_cross_entropy_bwd(res, g):
    z, t = res
    scale = g / z.size
    return (jax.nn.sigmoid(z) - t) * scale, -z * scale


_binary_cross_entropy = hand_written(_binary_cross_entropy_fwd, _binary_cross_entropy_bwd)
