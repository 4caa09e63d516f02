"""The jit-compiled training step, and minibatch SGD over an epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from pure.optim import GradientTransformation, apply_updates

LossFn = Callable[[Any, Any, jax.Array], jax.Array]  # (params, batch, key) -> scalar loss
Step = Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, dict[str, jax.Array]]]
Project = Callable[[Any], Any]  # params -> params, applied after each update (e.g. max-norm)


def global_norm(tree: Any) -> jax.Array:
    """``sqrt(Σ ‖leaf‖²)`` over a pytree."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def all_finite(tree: Any) -> jax.Array:
    """True iff every entry of every leaf is finite (no inf, no NaN): a scalar bool."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _step(loss_fn: LossFn, optimizer: GradientTransformation, project: Project | None, loss_scale: float | None,
          params: Any, opt_state: Any, batch: Any, key: jax.Array) -> tuple[Any, Any, dict[str, Any]]:
    if loss_scale is None:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
    else:  # static loss scaling: the backward runs on loss·S, the gradients are divided by S in float32
        scaled, grads = jax.value_and_grad(lambda p: loss_fn(p, batch, key) * loss_scale)(params)
        loss, grads = scaled / loss_scale, jax.tree_util.tree_map(lambda g: g / loss_scale, grads)
    updates, new_state = optimizer.update(grads, opt_state, params)
    metrics = {"loss": loss, "grad_norm": global_norm(grads),
               "grad_norms": jax.tree_util.tree_map(lambda g: jnp.sqrt(jnp.sum(g * g)), grads)}
    new_params = apply_updates(params, updates)
    new_params = new_params if project is None else project(new_params)
    if loss_scale is None:
        return new_params, new_state, metrics
    finite = all_finite(grads)  # an overflow in the scaled backward: skip the step, keep everything as it was
    metrics["skipped"] = ~finite
    keep = partial(jax.tree_util.tree_map, lambda new, old: jnp.where(finite, new, old))
    return keep(new_params, params), keep(new_state, opt_state), metrics


def _check_loss_scale(fn: str, loss_scale: Any) -> None:
    if loss_scale is not None and not (isinstance(loss_scale, int | float) and 0 < loss_scale < float("inf")):
        raise ValueError(f"{fn}: loss_scale must be a positive finite number or None, got {loss_scale!r}")


def make_train_step(loss_fn: LossFn, optimizer: GradientTransformation, *, project: Project | None = None,
                    loss_scale: float | None = None) -> Step:
    """A pure, jit-compiled ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

    ``jax.value_and_grad(loss_fn)`` supplies the gradient; when ``loss_fn`` is built from
    pure ops that gradient is their hand-written backprop. The step has no Python side
    effects and runs unchanged on CPU, GPU and TPU.

    It donates ``params`` and ``opt_state``: their buffers become the results', and the arrays
    passed in are deleted (CPU included), so rebind the names to what it returns,
    ``params, opt_state, metrics = step(params, opt_state, batch, key)``, and pass
    ``jax.tree_util.tree_map(jnp.copy, params)`` to keep the originals. Using a donated
    array raises an error saying that it has been deleted.

    Args:
      loss_fn: ``(params, batch, key) -> scalar``; ``key`` feeds dropout.
      optimizer: any optax-style transform, e.g. :func:`pure.optim.sgd` or an optax chain.
      project: applied to the parameters after each update, e.g.
        ``lambda p: pure.max_norm(p, 3.0)``; None for no projection.
      loss_scale: static loss scaling for float16 compute (e.g. ``2.0**12``): the backward
        runs on ``loss · loss_scale``, so small float16 cotangents do not flush to zero, and
        the gradients are divided by it again. If any gradient is then inf or NaN (the
        scaled backward overflowed) the step is skipped: params and optimizer state come
        back unchanged and ``metrics["skipped"]`` is True. None (the default) for no scaling.

    Returns:
      The jitted step. ``metrics`` holds ``loss``, ``grad_norm`` (global) and ``grad_norms``
      (one norm per parameter leaf), and ``skipped`` with ``loss_scale``.
    """
    _check_loss_scale("make_train_step", loss_scale)

    def step(params, opt_state, batch, key):
        return _step(loss_fn, optimizer, project, loss_scale, params, opt_state, batch, key)

    return jax.jit(step, donate_argnums=(0, 1))


def epoch_order(seed: int, epoch: int, n: int) -> jax.Array:
    """The sample order of one epoch: a pure function of ``(seed, epoch)``."""
    return jax.random.permutation(jax.random.fold_in(jax.random.key(seed), epoch), n)


def data_sharding(devices: Sequence[jax.Device] | None = None) -> NamedSharding:
    """Data parallelism's batch sharding: a 1-D mesh with axis ``"data"`` over ``devices``
    (default: every device of every process), batch axis split across it.

    Pass it to :func:`make_epoch` as ``batch_sharding``. Parameters and the data set stay
    replicated (:func:`replicated`); inside ``jit`` GSPMD then computes each device's share
    of the batch and all-reduces the gradients, through the hand-written VJPs unchanged.
    """
    devices = list(jax.devices() if devices is None else devices)
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(sharding: NamedSharding) -> NamedSharding:
    """The same mesh, every array whole on every device (parameters, optimizer state, data)."""
    return NamedSharding(sharding.mesh, PartitionSpec())


def make_epoch(loss_fn: LossFn, optimizer: GradientTransformation, batch_size: int, *, steps: int | None = None,
               project: Project | None = None, batch_sharding: NamedSharding | None = None,
               loss_scale: float | None = None) -> Callable[..., Any]:
    """Minibatch SGD over one epoch, or a stretch of it, as a single ``jax.lax.scan`` inside ``jit``.

    ``epoch(params, opt_state, X, y, seed, epoch, key, start=0) -> (params, opt_state, metrics)``
    shuffles with :func:`epoch_order` (a pure function of ``(seed, epoch)``), cuts
    ``n // batch_size`` full batches (the remainder waits for the next epoch's order),
    and scans the train step over batches ``start, …, start + steps − 1`` with step key
    ``fold_in(key, batch index)``. So running an epoch in stretches (to checkpoint in
    the middle of one) takes exactly the steps of running it whole. ``metrics`` are
    stacked per step. ``params`` and ``opt_state`` are donated, as in :func:`make_train_step`:
    rebind them to what it returns.

    Scan removes the per-step dispatch and host-to-device copies (docs/performance.md
    has the measurement).

    Args:
      loss_fn: ``(params, (x_batch, y_batch), key) -> scalar``.
      optimizer: an optax-style transform.
      batch_size: a positive int no larger than the data set.
      steps: batches per call; None for the whole epoch (from ``start``, which must then be 0).
      project, loss_scale: as in :func:`make_train_step`.
      batch_sharding: e.g. :func:`data_sharding`, to split every batch across devices
        (data parallelism). ``batch_size`` must be a multiple of its device count: a
        ragged batch is refused, never padded.
    """
    fn = "make_epoch"
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"{fn}: batch_size must be a positive int, got {batch_size!r}")
    if steps is not None and (not isinstance(steps, int) or steps <= 0):
        raise ValueError(f"{fn}: steps must be a positive int or None, got {steps!r}")
    _check_loss_scale(fn, loss_scale)
    if batch_sharding is not None and batch_size % batch_sharding.num_devices:
        raise ValueError(f"{fn}: batch_size {batch_size} is not divisible by the {batch_sharding.num_devices} devices "
                         f"of batch_sharding; use a multiple of {batch_sharding.num_devices}")

    @partial(jax.jit, donate_argnums=(0, 1))
    def run(params, opt_state, X, y, seed, epoch, key, start):
        per_epoch = X.shape[0] // batch_size
        count = per_epoch if steps is None else steps
        order = epoch_order(seed, epoch, X.shape[0])[: per_epoch * batch_size].reshape(per_epoch, batch_size)
        indices = start + jnp.arange(count)

        def body(carry, i):
            batch = (X[order[i]], y[order[i]])
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            p, s, m = _step(loss_fn, optimizer, project, loss_scale, *carry, batch, jax.random.fold_in(key, i))
            return (p, s), m

        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), indices)
        return params, opt_state, metrics

    def epoch_fn(params, opt_state, X, y, seed, epoch, key, start=0):
        n = X.shape[0]
        if n < batch_size:
            raise ValueError(f"{fn}: batch_size {batch_size} is larger than the data set ({n} samples)")
        per_epoch = n // batch_size
        if not isinstance(start, int) or not 0 <= start <= per_epoch - (steps or per_epoch):
            raise ValueError(f"{fn}: start must be an int in [0, {per_epoch - (steps or per_epoch)}] for "
                             f"{steps or per_epoch} steps of an epoch of {per_epoch} batches, got {start!r}")
        return run(params, opt_state, X, y, seed, epoch, key, start)

    return epoch_fn
