"""The laws of training: weight decay against an L2 penalty, the invariants of a loss, and dropout's mask.

Part of :mod:`properties.laws`, which exports them; the same conventions hold (both sides of a law come from one
``jax.jit`` function cached per op; a broken law raises :class:`~properties.violation.PropertyViolation`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pure
import pure.optim
from properties.violation import PropertyViolation, agreement, assert_close, differ

# A row of the loss gradient sums n entries to zero: four times the agreement of one, relative to Σ|entries|.
ROW_SUM_FACTOR = 4.0
# Shifting the logits moves every intermediate of the softmax by the shift's rounding: ten times the agreement.
SHIFT_FACTOR = 10.0


# ------------------------------------------------------- 3. weight-decay equivalence
def _descend(opt: Any, loss: Callable, params: Any, data: Any, steps: int) -> Any:
    state = opt.init(params)
    for _ in range(steps):
        updates, state = opt.update(jax.grad(loss)(params, data), state, params)
        params = optax.apply_updates(params, updates)
    return params


def _constant(value: Any) -> Callable[[Any], Any]:
    """``value`` as a schedule: η and λ arrive traced, so one compilation serves every drawn value."""
    return lambda _: value


@functools.cache
def _equivalence_sides(loss: Callable, steps: int, mask: Any, sgd: Callable, l2_penalty: Callable) -> Callable:
    def sides(params, data, eta, lam):
        keep = jax.tree_util.tree_map(lambda _: True, params) if mask is None else mask(params)
        by_formula = params
        for _ in range(steps):  # d2l: w ← (1 − ηλ)w − η∂ℓ/∂w
            grads = jax.grad(loss)(by_formula, data)
            by_formula = jax.tree_util.tree_map(lambda w, g, k: (1 - eta * lam if k else 1.0) * w - eta * g,
                                                by_formula, grads, keep)
        lr, wd = _constant(eta), _constant(lam)
        penalised = lambda p, d: loss(p, d) + l2_penalty(p, lam, mask=mask)  # noqa: E731
        return by_formula, {
            "sgd on L + l2_penalty": _descend(sgd(lr), penalised, params, data, steps),
            "sgd(weight_decay=lam)": _descend(sgd(lr, weight_decay=wd, mask=mask), loss, params, data, steps),
            "optax chain": _descend(optax.chain(optax.add_decayed_weights(wd, mask), optax.sgd(lr)), loss, params,
                                    data, steps),
        }
    return jax.jit(sides)


def weight_decay_equivalence(loss: Callable, params: Any, data: Any, eta: float, lam: float, steps: int = 3,
                             mask: Any = None, *, sgd: Callable = pure.optim.sgd,
                             l2_penalty: Callable = pure.l2_penalty) -> None:
    """Plain SGD: on ``L + (λ/2)‖w‖²`` = ``(1 − ηλ)w − η∇L`` = ``sgd(weight_decay=λ)`` = the optax chain.

    ``loss(params, data)`` is any smooth loss; ``mask`` (None or a callable) keeps biases out. ``sgd``
    (an optax-style factory with pure.optim.sgd's arguments) and ``l2_penalty`` are under test.
    """
    by_formula, runs = _equivalence_sides(loss, steps, mask, sgd, l2_penalty)(params, data, eta, lam)
    for name, run in runs.items():
        assert_close("weight_decay_equivalence", sgd, name, run, "(1 - eta*lam) w - eta grad L", by_formula)


@functools.cache
def _non_equivalence_sides(loss: Callable, steps: int, sgd: Callable, l2_penalty: Callable) -> Callable:
    def sides(params, data, eta, lam):
        lr, wd = _constant(eta), _constant(lam)
        penalised = lambda p, d: loss(p, d) + l2_penalty(p, lam)  # noqa: E731
        coupled = _descend(sgd(lr, momentum=0.9, weight_decay=wd), loss, params, data, steps)
        decoupled = _descend(sgd(lr, momentum=0.9, weight_decay=wd, decoupled_weight_decay=True), loss, params,
                             data, steps)
        adam_l2 = _descend(optax.adam(lr), penalised, params, data, steps)
        adamw = _descend(optax.adamw(lr, weight_decay=lam), loss, params, data, steps)
        return (coupled, decoupled), (adam_l2, adamw)
    return jax.jit(sides)


def decay_non_equivalence(loss: Callable, params: Any, data: Any, eta: float, lam: float, steps: int = 3, *,
                          sgd: Callable = pure.optim.sgd, l2_penalty: Callable = pure.l2_penalty) -> None:
    """Where the equivalence breaks: momentum with coupled vs decoupled decay, and Adam + L2 vs AdamW.

    The gap must exceed 1% of the size of one decay step, ``η·λ·max|w|``.
    """
    momentum, adam = _non_equivalence_sides(loss, steps, sgd, l2_penalty)(params, data, eta, lam)
    at_least = 1e-2 * eta * lam * max(float(jnp.max(jnp.abs(w))) for w in jax.tree_util.tree_leaves(params))
    differ("decay_non_equivalence", sgd, "momentum, coupled decay", momentum[0],
            "momentum, decoupled decay (SGDW)", momentum[1], at_least)
    differ("decay_non_equivalence", optax.adamw, "Adam on L + l2_penalty", adam[0], "AdamW", adam[1], at_least)


@functools.cache
def _cs231n_sides(loss: Callable, steps: int, sgd: Callable) -> Callable:
    def sides(params, data, eta, reg):
        cs231n = lambda p, d: loss(p, d) + reg * sum(jnp.sum(w * w) for w in jax.tree_util.tree_leaves(p))  # noqa: E731
        return (_descend(sgd(_constant(eta)), cs231n, params, data, steps),
                _descend(sgd(_constant(eta), weight_decay=_constant(2 * reg)), loss, params, data, steps))
    return jax.jit(sides)


def cs231n_reg_is_twice_weight_decay(loss: Callable, params: Any, data: Any, eta: float, reg: float,
                                     steps: int = 3, *, sgd: Callable = pure.optim.sgd) -> None:
    """CS231n's ``reg·ΣW²`` (gradient 2·reg·W) is ``sgd(weight_decay=2·reg)``."""
    by_reg, by_decay = _cs231n_sides(loss, steps, sgd)(params, data, eta, reg)
    assert_close("cs231n_reg_is_twice_weight_decay", sgd, "sgd on L + reg*sum(W^2)", by_reg,
                 "sgd(weight_decay=2*reg)", by_decay)


# ----------------------------------------------------------- 8. loss invariants
@functools.cache
def _loss_and_grad(loss: Callable) -> Callable:
    return jax.jit(jax.value_and_grad(loss))


def softmax_shift_invariance(loss: Callable, logits: jax.Array, labels: jax.Array, shift: jax.Array) -> None:
    """Adding a constant to a row of logits changes neither the softmax cross-entropy nor its gradient."""
    moved, plain = _loss_and_grad(loss)(logits + shift[:, None], labels), _loss_and_grad(loss)(logits, labels)
    assert_close("softmax_shift_invariance", loss, "(loss, grad)(logits + c)", moved, "(loss, grad)(logits)", plain,
                 rtol=SHIFT_FACTOR * agreement(logits))


def gradient_rows_sum_to_zero(loss: Callable, scores: jax.Array, labels: jax.Array) -> None:
    """Each row of the softmax or hinge gradient w.r.t. the scores sums to 0 (up to round-off)."""
    g = np.asarray(_loss_and_grad(loss)(scores, labels)[1], np.float64)
    sums = g.sum(axis=1)
    if not np.all(np.abs(sums) <= ROW_SUM_FACTOR * agreement(scores) * (np.abs(g).sum(axis=1) + 1e-30)):
        raise PropertyViolation("gradient_rows_sum_to_zero", loss, "row sums of dL/ds", sums, "0", np.zeros_like(sums))


# ------------------------------------------------------------------ 9. dropout
@functools.cache
def _dropout_sides(dropout: Callable, rate: float, deterministic: bool) -> Callable:
    def sides(x, key):
        y, pull = jax.vjp(lambda v: dropout(v, key, rate, deterministic=deterministic), x)
        return y, pull(jnp.ones_like(y))[0], dropout(jnp.ones_like(x), key, rate, deterministic=deterministic)
    return jax.jit(sides)


def dropout_mask_consistency(dropout: Callable, x: jax.Array, key: jax.Array, rate: float) -> None:
    """One key, one mask: the backward zeroes exactly the units the forward dropped, and scales the rest."""
    y, dx, ones = _dropout_sides(dropout, rate, False)(x, key)
    kept = np.asarray(ones) != 0
    assert_close("dropout_mask_consistency", dropout, "dx", dx, "mask / (1 - rate)", kept / (1 - rate))
    assert_close("dropout_mask_consistency", dropout, "y", y, "x * mask / (1 - rate)",
                 np.asarray(x) * kept / (1 - rate))


@functools.cache
def _many_draws(dropout: Callable, rate: float, draws: int) -> Callable:
    return jax.jit(lambda x, key: jnp.mean(jax.vmap(lambda k: dropout(x, k, rate))(jax.random.split(key, draws)),
                                           axis=0))


def dropout_is_unbiased(dropout: Callable, x: jax.Array, key: jax.Array, rate: float, draws: int = 400) -> None:
    """``E[dropout(x)] = x``: the mean of many draws lies within 5 binomial standard errors of x.

    Each draw is ``x·B/(1 − p)`` with ``B ~ Bernoulli(1 − p)``, of standard deviation ``|x|·√(p/(1 − p))``.
    """
    mean = np.asarray(_many_draws(dropout, rate, draws)(x, key), np.float64)
    x64 = np.asarray(x, np.float64)
    se = np.abs(x64) * np.sqrt(rate / ((1 - rate) * draws))
    if not np.all(np.abs(mean - x64) <= 5 * se + 1e-6 * np.abs(x64) + 1e-12):
        raise PropertyViolation("dropout_is_unbiased", dropout, f"mean of {draws} draws", mean, "x", x,
                                "beyond 5 standard errors")


def dropout_deterministic_identity(dropout: Callable, x: jax.Array, key: jax.Array, rate: float) -> None:
    """``deterministic=True`` is the identity, value and gradient."""
    y, dx, _ = _dropout_sides(dropout, rate, True)(x, key)
    assert_close("dropout_deterministic_identity", dropout, "y", y, "x", x, rtol=0.0)
    assert_close("dropout_deterministic_identity", dropout, "dx", dx, "1", np.ones(x.shape), rtol=0.0)
