"""Optax-compatible SGD with (coupled or decoupled) weight decay, AdamW, and cosine decay.

The transforms match optax's protocol structurally, a NamedTuple of ``init(params)``
and ``update(updates, state, params)``, so they work inside ``optax.chain`` and with
``optax.apply_updates``, while this package never imports optax.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pure._checks import check_same_structure, concrete_scalar, resolve_mask

Schedule = Callable[[jax.Array], jax.Array]


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(updates, state, params) -> (updates, state)``."""

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


class SGDState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # int32 step counter (optax's name for it, beside tuple.count)
    momentum: Any  # the trace m, a pytree like params (None without momentum)


def sgd(learning_rate: float | Schedule, *, momentum: float = 0.0, weight_decay: float | Schedule = 0.0,
        mask: Any = None, decoupled_weight_decay: bool = False) -> GradientTransformation:
    """Minibatch SGD with heavy-ball momentum and L2 weight decay.

    .. math::
       g &\\leftarrow g + \\lambda w \\quad\\text{(on the leaves where mask is True)} \\\\
       m &\\leftarrow g + \\mu m \\\\
       u &= -\\eta_t\\, m

    This is exactly ``optax.chain(optax.add_decayed_weights(λ, mask), optax.sgd(η, μ))``,
    bit for bit. With ``decoupled_weight_decay=True`` the decay is added after the
    momentum (SGDW): ``m ← g + μm``, ``u = −η_t(m + λw)``.

    Which updates equal gradient descent on ``L + (λ/2)‖w‖²`` (``pure.l2_penalty``)?

    ====================================  =======================================
    configuration                         same as an L2 penalty λ/2‖w‖²?
    ====================================  =======================================
    momentum 0, coupled or decoupled      yes: ``w ← (1 − ηλ)w − η∇L`` (d2l)
    momentum μ > 0, coupled (default)     yes: λw enters m like any gradient
    momentum μ > 0, decoupled (SGDW)      no: the decay skips the momentum trace
    Adam + L2 penalty vs :func:`adamw`    no: Adam rescales the λw term
    ====================================  =======================================

    CS231n's ``reg·ΣW²`` corresponds to ``weight_decay = 2·reg``.

    Args:
      learning_rate: η ≥ 0, a float or a schedule ``step -> η_t`` (the step counter
        lives in the state and starts at 0).
      momentum: μ in [0, 1).
      weight_decay: λ ≥ 0, a float or a schedule ``step -> λ_t`` (as optax's ``add_decayed_weights``).
      mask: which leaves are decayed: None (all), a pytree of bools like params, or a
        callable ``params -> pytree of bools``, as in optax. Biases are usually excluded.
      decoupled_weight_decay: apply the decay after the momentum (SGDW).

    Returns:
      A :class:`GradientTransformation`.

    Raises:
      ValueError: at construction for a negative learning rate or weight decay, or a
        momentum outside [0, 1). TypeError: in ``update`` if ``updates`` and ``params``
        differ in tree structure.

    Example:
      >>> opt = sgd(0.1, weight_decay=0.5)
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> updates, state = opt.update({"w": jnp.array([1.0, 1.0])}, opt.init(params), params)
      >>> updates["w"]  # −0.1·(g + 0.5·w)
      Array([-0.15, -0.2 ], dtype=float32)
    """
    momentum = concrete_scalar("sgd", "momentum", momentum, low=0.0, high=1.0, high_open=True)
    if not callable(weight_decay):
        weight_decay = concrete_scalar("sgd", "weight_decay", weight_decay, low=0.0)
    learning_rate = _learning_rate("sgd", learning_rate)

    def init(params: Any) -> SGDState:
        trace = jax.tree_util.tree_map(jnp.zeros_like, params) if momentum else None
        return SGDState(jnp.zeros([], jnp.int32), trace)

    def update(updates: Any, state: SGDState, params: Any = None) -> tuple[Any, SGDState]:
        if weight_decay and params is None:
            raise ValueError("sgd: weight_decay > 0 needs params; call update(updates, state, params)")
        if params is not None:
            check_same_structure("sgd", "updates", updates, "params", params)
        lam = weight_decay(state.count) if callable(weight_decay) else weight_decay
        decay = _decay_fn("sgd", params, lam, mask) if callable(weight_decay) or weight_decay else None
        g = updates if decay is None or decoupled_weight_decay else decay(updates)
        trace = None
        if momentum:
            g = trace = jax.tree_util.tree_map(lambda gi, mi: gi + momentum * mi, g, state.momentum)
        if decay is not None and decoupled_weight_decay:
            g = decay(g)
        return _descend(g, learning_rate, state.count), SGDState(_next(state.count), trace)

    return GradientTransformation(init, update)


class AdamWState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # int32 step counter, as in SGDState
    mu: Any  # the first moment m, a pytree like params
    nu: Any  # the second moment v


def adamw(learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, weight_decay: float | Schedule = 1e-4, mask: Any = None) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), equal to ``optax.adamw`` bit for bit.

    .. math::
       m &\\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\qquad v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2 \\\\
       u &= -\\eta_t \\Big(\\frac{m / (1 - \\beta_1^t)}{\\sqrt{v / (1 - \\beta_2^t) + \\bar\\epsilon} + \\epsilon}
            + \\lambda w\\Big) \\quad\\text{(λw on the leaves where mask is True)}

    with ``t`` the step, counted from 1. The decay ``λw`` is added after Adam's rescaling, so it is
    not divided by ``√v̂``: AdamW is not Adam on ``L + (λ/2)‖w‖²`` (see :func:`sgd`'s table).

    Args:
      learning_rate: η ≥ 0, a float or a schedule ``step -> η_t`` (the step counter starts at 0).
      b1, b2: the moments' decay rates, each in [0, 1).
      eps: ε ≥ 0, added to the denominator outside the square root.
      eps_root: ε̄ ≥ 0, added inside it.
      weight_decay: λ ≥ 0, a float or a schedule ``step -> λ_t``.
      mask: which leaves are decayed: None (all), a pytree of bools like params, or a callable
        ``params -> pytree of bools``, as in optax.

    Returns:
      A :class:`GradientTransformation` whose state is an :class:`AdamWState`.

    Raises:
      ValueError: at construction for a hyper-parameter out of range; in ``update`` for a decay
        without params. TypeError: in ``update`` if ``updates`` and ``params`` differ in tree structure.

    Example:
      >>> opt = adamw(0.1, weight_decay=0.5)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = opt.update({"w": jnp.array([3.0, 3.0])}, opt.init(params), params)
      >>> [round(u, 4) for u in updates["w"].tolist()]  # the first step: −0.1·(sign(g) + 0.5·w), up to ε
      [-0.15, 0.0]
    """
    b1, b2 = (concrete_scalar("adamw", n, b, low=0.0, high=1.0, high_open=True) for n, b in (("b1", b1), ("b2", b2)))
    eps, eps_root = (concrete_scalar("adamw", n, e, low=0.0) for n, e in (("eps", eps), ("eps_root", eps_root)))
    if not callable(weight_decay):
        weight_decay = concrete_scalar("adamw", "weight_decay", weight_decay, low=0.0)
    learning_rate = _learning_rate("adamw", learning_rate)

    def init(params: Any) -> AdamWState:
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
        return AdamWState(jnp.zeros([], jnp.int32), zeros(), zeros())

    def update(updates: Any, state: AdamWState, params: Any = None) -> tuple[Any, AdamWState]:
        if weight_decay and params is None:
            raise ValueError("adamw: weight_decay > 0 needs params; call update(updates, state, params)")
        if params is not None:
            check_same_structure("adamw", "updates", updates, "params", params)
        tree_map = jax.tree_util.tree_map
        mu = tree_map(lambda g, m: (1 - b1) * g + b1 * m, updates, state.mu)
        nu = tree_map(lambda g, v: (1 - b2) * (g * g) + b2 * v, updates, state.nu)
        count = _next(state.count)
        t = count.astype(jnp.result_type(float))  # optax's b ** count: the count in the default float dtype
        m_fix, v_fix = 1 - b1 ** t, 1 - b2 ** t
        g = tree_map(lambda m, v: (m / m_fix.astype(m.dtype)) / (jnp.sqrt(v / v_fix.astype(v.dtype) + eps_root) + eps),
                     mu, nu)
        if callable(weight_decay) or weight_decay:
            lam = weight_decay(state.count) if callable(weight_decay) else weight_decay
            g = _decay_fn("adamw", params, lam, mask)(g)
        return _descend(g, learning_rate, state.count), AdamWState(count, mu, nu)

    return GradientTransformation(init, update)


def _learning_rate(fn: str, learning_rate: float | Schedule) -> float | Schedule:
    """A schedule as it is, or a constant η ≥ 0 as a Python float."""
    return learning_rate if callable(learning_rate) else concrete_scalar(fn, "learning_rate", learning_rate, low=0.0)


def _descend(g: Any, learning_rate: float | Schedule, count: jax.Array) -> Any:
    """``−η_t·g``, as optax's ``scale_by_learning_rate`` computes it (a schedule's η_t cast to each leaf's dtype)."""
    if not callable(learning_rate):
        return jax.tree_util.tree_map(lambda gi: -learning_rate * gi, g)
    rate = -learning_rate(count)
    return jax.tree_util.tree_map(lambda gi: jnp.array(rate, dtype=gi.dtype) * gi, g)


def _next(count: jax.Array) -> jax.Array:
    """``count + 1``, staying at the int32 maximum instead of wrapping (optax's safe_increment)."""
    return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)


def _decay_fn(fn: str, params: Any, weight_decay: Any, mask: Any) -> Callable[[Any], Any]:
    """``g ↦ g + λw`` on the masked leaves of ``params``."""
    keep = iter(resolve_mask(fn, params, mask))
    selected = jax.tree_util.tree_map(lambda _: next(keep), params)
    return lambda g: jax.tree_util.tree_map(lambda gi, w, k: gi + weight_decay * w if k else gi, g, params, selected)


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates``, each leaf kept in its parameter's dtype (as ``optax.apply_updates``)."""
    check_same_structure("apply_updates", "updates", updates, "params", params)
    return jax.tree_util.tree_map(lambda p, u: jnp.asarray(p + u).astype(p.dtype), params, updates)


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Cosine learning-rate decay (Loshchilov & Hutter, SGDR), equal to ``optax.cosine_decay_schedule``.

    .. math:: \\eta_t = \\eta_0\\Big((1 - a)\\,\\tfrac12\\big(1 + \\cos\\tfrac{\\pi \\min(t, T)}{T}\\big) + a\\Big)

    With ``alpha = a = 0`` this is the textbook ``½η₀(1 + cos(tπ/T))``. It falls from
    ``η₀`` at ``t = 0`` to the floor ``a·η₀`` at ``t = T`` and stays there after T.

    Args:
      init_value: η₀.
      decay_steps: T, a positive integer.
      alpha: the floor as a fraction of η₀, in [0, 1].

    Returns:
      A schedule ``step -> η_t``.

    Example:
      >>> schedule = cosine_decay(1.0, 4)
      >>> [round(float(schedule(t)), 4) for t in (0, 2, 4, 9)]
      [1.0, 0.5, 0.0, 0.0]
    """
    if not isinstance(decay_steps, int) or decay_steps <= 0:
        raise ValueError(f"cosine_decay: decay_steps must be a positive integer, got {decay_steps!r}")
    alpha = concrete_scalar("cosine_decay", "alpha", alpha, low=0.0, high=1.0)
    total = float(decay_steps)

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.minimum(jnp.asarray(count).astype(float), total)  # explicit: strict promotion allows it
        cosine = 0.5 * (1 + jnp.cos(math.pi * t / total))
        return init_value * ((1 - alpha) * cosine + alpha)

    return schedule
