"""The model of a ``handgrad train`` run: its objective and the compiled programs that train and evaluate it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import pure
import pure.nn
import pure.optim
import pure.train
import reference.losses
import reference.nn
import reference.optim
import reference.regularizers
import reference.train
from handgrad.train.config import TrainConfig
from handgrad.train.state import TrainState

LOSS_NAMES = {"softmax": "softmax_cross_entropy", "hinge": "multiclass_hinge",
              "bce": "binary_cross_entropy", "mse": "mse"}


class Implementation(NamedTuple):
    """The modules an objective is built from: pure's ops, or their plain references."""

    nn: Any
    losses: Any
    regularizers: Any


PURE = Implementation(pure.nn, pure, pure)  # hand-written backprop
REFERENCE = Implementation(reference.nn, reference.losses, reference.regularizers)  # for jax.grad


def objective(impl: Implementation, loss: str, activation: str, dropout: float, l1: float, l2: float) -> Callable:
    """``(params, (x, y), key) -> scalar``: data loss plus ``l1·Σ|W|`` and ``l2/2·ΣW²`` (weights only)."""
    data_loss = _data_loss(impl.losses, loss)

    def loss_fn(params, batch, key):
        x, y = batch
        out = impl.nn.mlp(params, x, activation=activation, dropout_rate=dropout, key=key, deterministic=False)
        total = data_loss(out, y)
        if l1:
            total = total + impl.regularizers.l1_penalty(params, l1, mask=pure.nn.weights_only)
        if l2:
            total = total + impl.regularizers.l2_penalty(params, l2, mask=pure.nn.weights_only)
        return total

    return loss_fn


def _data_loss(losses: Any, loss: str) -> Callable:
    fn = getattr(losses, LOSS_NAMES[loss])
    if loss in ("bce", "mse"):  # one output column against a float target
        return lambda out, y: fn(out[:, 0], y.astype(out.dtype))
    return fn


def metric(task: str, out: jax.Array, y: jax.Array) -> jax.Array:
    """Accuracy for classification, R² for regression."""
    if task == "classification":
        return jnp.mean((jnp.argmax(out, axis=1) == y).astype(jnp.float32))
    if task == "binary":
        return jnp.mean(((out[:, 0] > 0) == (y == 1)).astype(jnp.float32))
    residual = jnp.sum(jnp.square(out[:, 0] - y))
    return 1.0 - residual / jnp.sum(jnp.square(y - jnp.mean(y)))


class Programs(NamedTuple):
    """The jitted functions of a run."""

    optimizer: pure.optim.GradientTransformation
    learning_rate: Callable[[int], Any]
    fresh: Callable[[], TrainState]
    evaluate: Callable[..., tuple[jax.Array, jax.Array]]
    stretch: Callable[[int], Callable]  # steps -> make_epoch over that many batches
    reference: Callable | None  # reference.train.make_epoch, with --reference
    ref_optimizer: Any


@functools.lru_cache(maxsize=8)
def programs(config: TrainConfig, task: str, loss: str, per_epoch: int, sizes: tuple[int, ...],
             batch_sharding: Any) -> Programs:
    """The jitted functions of a run, built once per setting, so that the folds of ``--kfold``
    (whose splits usually share a shape) compile once and not once per fold."""
    total_steps = config.epochs * per_epoch
    schedules = {"constant": (config.lr, config.lr),
                 "cosine": (pure.optim.cosine_decay(config.lr, total_steps),
                            reference.optim.cosine_decay(config.lr, total_steps))}[config.schedule]
    sgd = {"momentum": config.momentum, "weight_decay": config.weight_decay, "mask": pure.nn.weights_only}
    optimizer = pure.optim.sgd(schedules[0], **sgd)
    spec = (loss, config.activation, config.dropout, config.l1, config.l2)
    project = (lambda p: pure.max_norm(p, config.max_norm)) if config.max_norm else None

    @functools.cache
    def stretch(steps: int) -> Callable:  # make_epoch for stretches of ``steps`` batches
        return pure.train.make_epoch(objective(PURE, *spec), optimizer, config.batch_size, steps=steps,
                                     project=project, batch_sharding=batch_sharding)

    @jax.jit  # one program, not one per eager op: compiling is most of a short run's time
    def fresh():
        init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
        params = pure.nn.init_mlp(init_key, list(sizes), scheme=config.init)
        return TrainState(params, optimizer.init(params), jax.random.key_data(dropout_key))

    data_loss = _data_loss(pure, loss)

    @jax.jit
    def evaluate(params, X, y):
        out = pure.nn.mlp(params, X, activation=config.activation)
        return data_loss(out, y), metric(task, out, y)

    ref_epoch = ref_optimizer = None
    if config.reference:
        ref_project = (lambda p: reference.regularizers.max_norm(p, config.max_norm)) if config.max_norm else None
        ref_optimizer = reference.optim.sgd(schedules[1], **sgd)
        ref_epoch = reference.train.make_epoch(objective(REFERENCE, *spec), ref_optimizer, config.batch_size,
                                               project=ref_project)
    learning_rate = jax.jit(schedules[0]) if callable(schedules[0]) else (lambda step: config.lr)
    return Programs(optimizer, learning_rate, fresh, evaluate, stretch, ref_epoch, ref_optimizer)
