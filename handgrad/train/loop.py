"""The loop that trains a :class:`~handgrad.train.run.Run`: stretches of steps, then the end of each epoch.

It trains with :func:`pure.train.make_epoch` (a ``lax.scan`` of the jitted step), one epoch, or one stretch of
``checkpoint_every`` steps, per call. After every epoch it evaluates train and val, logs an
:class:`~handgrad.train.state.EpochRow`, applies early stopping, and with ``reference=True`` trains the same model
with ``jax.grad`` + optax beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from handgrad.train.run import Run, copy, host
from handgrad.train.state import EpochRow, Progress, RefState, TrainState, metric_name
from reference import max_abs_diff


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def fit(run: Run, state: TrainState, progress: Progress, bar: Callable[..., Any]) -> tuple[TrainState, Progress]:
    """Trains from ``state`` and ``progress`` to the last epoch (or early stop); returns where it ended."""
    cfg = run.config
    stretch = cfg.checkpoint_every if run.checkpoints is not None else run.per_epoch
    X, y = run.arrays["train"]
    while progress.epoch < cfg.epochs and not (cfg.early_stopping and progress.stale >= cfg.early_stopping):
        epoch_key = run.epoch_key(state.key, progress.epoch)
        shown = bar(total=run.per_epoch, initial=progress.batch, desc=f"epoch {progress.epoch + 1}/{cfg.epochs}")
        while progress.batch < run.per_epoch:
            steps = min(stretch, run.per_epoch - progress.batch)
            start = time.perf_counter()
            params, opt_state, metrics = run.programs.stretch(steps)(
                state.params, state.opt_state, X, y, cfg.seed, progress.epoch, epoch_key, progress.batch)
            run.at("stretch", progress.step + steps)
            losses, norms = host((metrics["loss"], [layer["W"] for layer in metrics["grad_norms"]]))
            _require_finite(run, losses, progress)
            state = state._replace(params=params, opt_state=opt_state)
            progress = progress.advance(progress.sums.add(losses, norms, time.perf_counter() - start))
            shown.update(steps)
            shown.set_postfix(loss=f"{progress.sums.loss_sum / progress.sums.steps:.4f}",
                              ex_s=f"{progress.sums.examples_per_s(cfg.batch_size):.0f}")
            if progress.batch < run.per_epoch:
                run.save(state, progress)
        shown.close()
        state, progress = _end_epoch(run, state, progress)
        run.save(state, progress)
    if run.checkpoints is not None:
        run.checkpoints.wait()
    return state, progress

def _require_finite(run: Run, losses: np.ndarray, progress: Progress) -> None:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        i = int(bad[0])
        raise Diverged(f"non-finite loss ({losses[i]}) at step {progress.step + i + 1} "
                       f"(epoch {progress.epoch + 1}, batch {progress.batch + i + 1}); training stopped, "
                       f"{run.where_saved()}")


def _end_epoch(run: Run, state: TrainState, progress: Progress) -> tuple[TrainState, Progress]:
    cfg, sums = run.config, progress.sums
    train_loss, train_metric = run.evaluate(state.params, "train")
    run.at("evaluate", progress.step)
    val_loss, val_metric = run.evaluate(state.params, "val")
    ref_max_diff = None
    if state.ref is not None:
        epoch_key = run.epoch_key(state.key, progress.epoch)
        ref_params, ref_opt_state, _ = run.programs.reference(
            state.ref.params, state.ref.opt_state, *run.host["train"], cfg.seed, progress.epoch, epoch_key)
        state = state._replace(ref=RefState(ref_params, ref_opt_state))
        ref_max_diff = max_abs_diff(state.params, ref_params)
    row = EpochRow(progress.epoch + 1, progress.step, sums.loss_sum / sums.steps, train_loss, train_metric,
                   val_loss, val_metric, float(run.programs.learning_rate(progress.step)),
                   sums.examples_per_s(cfg.batch_size), tuple(s / sums.steps for s in sums.grad_sums),
                   ref_max_diff)
    progress = progress.finish_epoch(row)
    if progress.improved and state.best_params is not None:
        state = state._replace(best_params=copy(state.params))
    run.log(row.format(cfg.reference))
    if cfg.early_stopping and progress.stale >= cfg.early_stopping:
        run.log(f"early stopping: no better val {metric_name(run.data.task)} for {cfg.early_stopping} epochs; "
                 f"keeping the parameters of epoch {progress.best_epoch}")
    return state, progress
