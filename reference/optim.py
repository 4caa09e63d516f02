"""References for pure.optim: the optax transforms a user of jax and optax writes today."""

from typing import Any

import optax


def sgd(learning_rate: Any, *, momentum: float = 0.0, weight_decay: float = 0.0, mask: Any = None,
        decoupled_weight_decay: bool = False) -> optax.GradientTransformation:
    if decoupled_weight_decay:  # SGDW: decay added after the momentum trace
        return optax.chain(optax.trace(decay=momentum), optax.add_decayed_weights(weight_decay, mask),
                           optax.scale_by_learning_rate(learning_rate))
    return optax.chain(optax.add_decayed_weights(weight_decay, mask), optax.sgd(learning_rate, momentum))


def adamw(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
          weight_decay: Any = 1e-4, mask: Any = None) -> optax.GradientTransformation:
    return optax.adamw(learning_rate, b1, b2, eps, eps_root, weight_decay=weight_decay, mask=mask)


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> optax.Schedule:
    return optax.cosine_decay_schedule(init_value, decay_steps, alpha)


apply_updates = optax.apply_updates
