"""``handgrad train``: the command's entry point (its files are :mod:`handgrad.train.outputs`'s).

:func:`train` loads and checks the data (:mod:`handgrad.train.data`), splits it stratified into
train / val / test, runs one :class:`~handgrad.train.run.Run` (or one per fold of ``--kfold``)
and evaluates the test split once, at the end.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import pure.linear
from handgrad.train import data as datasets
from handgrad.train import loop, model, outputs
from handgrad.train.config import TrainConfig, TrainError
from handgrad.train.run import Moment, Run, open_checkpoints
from handgrad.train.state import header, metric_name


class CheckpointMissed(RuntimeError):
    """Training finished, but a checkpoint could not be written on the way (the message says which, and why)."""


class OutputError(RuntimeError):
    """``--out`` could not be written after training; the message says where the results are instead."""


def resolve_loss(config: TrainConfig, data: datasets.Dataset) -> str:
    if data.task == "classification":
        return config.loss or "softmax"
    if config.loss is not None:
        raise TrainError(f"--loss {config.loss} is for multi-class data; {data.name} is a {data.task} task, "
                         f"trained with {'binary_cross_entropy' if data.task == 'binary' else 'mse'}")
    return "bce" if data.task == "binary" else "mse"


def signature(config: TrainConfig, data: datasets.Dataset) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: every setting of the trajectory, the data, the devices."""
    return {**config.signature(), "data": f"{data.name}: {data.X.shape[0]}x{data.X.shape[1]}, {data.task}",
            "devices": jax.device_count()}


def require_writable(flag: str, directory: str) -> None:
    """Creates ``directory`` if need be and proves a file can be written there, else TrainError (before training)."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise TrainError(f"{flag} {directory}: cannot write there ({e.strerror or e})") from None


def train(config: TrainConfig, *, log: Callable[[str], None] = print, bar: Callable[..., Any] | None = None,
          at: Callable[[Moment, int], None] | None = None) -> dict[str, Any]:
    """Runs ``handgrad train`` and returns what ``metrics.json`` holds (``history`` as EpochRows, and ``params``).

    Raises:
      datasets.DataError, TrainError, CheckpointError: bad input, before any training (an
        unwritable ``--out`` or ``--checkpoint-dir`` too).
      Diverged: a non-finite loss; the last checkpoint written stays restorable.
      OutputError: ``--out`` failed after training; the message says where the parameters are.
      CheckpointMissed: a checkpoint could not be written; the parameters are in ``--out``.
    """
    started = time.perf_counter()
    config.check()
    if jax.process_count() > 1 and (config.checkpoint_dir or config.reference):
        raise TrainError("--checkpoint-dir and --reference run in a single process only")
    for flag, directory in (("--out", config.out), ("--checkpoint-dir", config.checkpoint_dir)):
        if directory and jax.process_index() == 0:
            require_writable(flag, directory)
    data = datasets.load(config.dataset, config.task)
    loss = resolve_loss(config, data)
    parts = datasets.split(data, 0.0 if config.kfold else config.val_fraction, config.test_fraction, config.seed)
    bar = bar or _QuietBar
    log(f"{data.name}: {data.X.shape[0]} samples, {data.X.shape[1]} features, {data.task}"
        + (f" ({data.num_classes} classes)" if data.task != "regression" else "")
        + f"; loss {model.LOSS_NAMES[loss]}; {jax.device_count()} device(s) in {jax.process_count()} process(es)")
    summary: dict[str, Any] = {"config": dataclasses.asdict(config), "dataset": data.name, "task": data.task,
                               "loss": model.LOSS_NAMES[loss], "devices": jax.device_count(),
                               "processes": jax.process_count(), "jax": jax.__version__}
    run = None
    if config.kfold:
        summary["folds"] = _cross_validate(config, data, loss, parts["train"], log, bar)
        scores = [f["val_metric"] for f in summary["folds"]]
        summary["cv_mean"], summary["cv_std"] = float(np.mean(scores)), float(np.std(scores))
        log(f"{config.kfold}-fold cross-validation: val {metric_name(data.task)} "
            f"{summary['cv_mean']:.4f} ± {summary['cv_std']:.4f} (the test split is left untouched)")
    else:
        run = _one_run(config, data, loss, parts, summary, log, bar, at)
    summary["seconds"] = time.perf_counter() - started
    log(f"done in {summary['seconds']:.1f}s")
    if config.out and jax.process_index() == 0:
        try:
            outputs.write(summary, config.out, data.task, plots=config.plots)
        except OSError as e:
            last = run.where_saved() if run is not None and run.checkpoints is not None else None
            raise OutputError(f"could not write to --out {config.out} after training ({e.strerror or e}); "
                              + outputs.rescue(summary, last)) from None
        log(f"wrote metrics.json{', params.npz and plots' if config.plots else ' and params.npz'} to {config.out}")
    if run is not None and run.missed is not None:
        where = f"its parameters are in {config.out}" if config.out else "pass --out to keep its parameters"
        raise CheckpointMissed(f"{run.missed}; training finished without checkpoints from then on, and {where}")
    return summary


def _one_run(config: TrainConfig, data: datasets.Dataset, loss: str, parts: dict[str, np.ndarray],
             summary: dict[str, Any], log: Callable[[str], None], bar: Callable[..., Any],
             at: Callable[[Moment, int], None] | None) -> Run:
    """Trains on the train split (resuming from --checkpoint-dir with --resume), tests once; fills ``summary``."""
    checkpoints = open_checkpoints(config.checkpoint_dir, signature(config, data), config.resume, log)
    run = Run(config, data, loss, parts["train"], parts["val"], parts["test"], log=log, checkpoints=checkpoints, at=at)
    log(f"split: {len(parts['train'])} train, {len(parts['val'])} val, {len(parts['test'])} test; "
        f"MLP {'-'.join(map(str, run.sizes))} ({config.activation}), {run.per_epoch} steps per epoch")
    state, progress = run.start(config.resume)
    log(header(data.task, config.reference))
    for row in progress.history:
        log(row.format(config.reference))
    state, progress = loop.fit(run, state, progress, bar)
    params = run.final_params(state)
    summary.update(history=list(progress.history), best_epoch=progress.best_epoch)
    if config.reference:
        summary["ref_max_diff"] = max(r.ref_max_diff for r in progress.history)
        log(f"largest parameter difference from jax.grad + optax over all epochs: {summary['ref_max_diff']:.2e}")
    if len(parts["test"]):
        summary["test_loss"], summary["test_metric"] = run.evaluate(params, "test")
        which = f"epoch {progress.best_epoch} (best val)" if config.early_stopping else f"epoch {progress.epoch}"
        log(f"test {metric_name(data.task)} {summary['test_metric']:.4f} on {len(parts['test'])} samples "
            f"(parameters of {which})")
    if data.task == "regression":
        summary["least_squares"] = _least_squares(run, log)
    summary["params"] = params
    return run


def _cross_validate(config: TrainConfig, data: datasets.Dataset, loss: str, index: np.ndarray,
                    log: Callable[[str], None], bar: Callable[..., Any]) -> list[dict[str, Any]]:
    folds = []
    for k, (train_idx, val_idx) in enumerate(datasets.kfold(data, index, config.kfold, config.seed)):
        log(f"fold {k + 1}/{config.kfold}: {len(train_idx)} train, {len(val_idx)} val")
        log(header(data.task, False))
        run = Run(config, data, loss, train_idx, val_idx, val_idx[:0], log=log)
        _, progress = loop.fit(run, *run.initial_state(), bar)
        best = progress.best_epoch if config.early_stopping else progress.epoch
        folds.append({"fold": k + 1, "val_metric": progress.history[best - 1].val_metric, "epoch": best,
                      "history": list(progress.history)})
    return folds


def _least_squares(run: Run, log: Callable[[str], None]) -> dict[str, float]:
    """The closed-form linear fit on the same standardised split, for comparison with the MLP."""
    Xtr, ytr = run.host["train"]
    w, b = jax.jit(pure.linear.least_squares)(Xtr, ytr)
    r2 = jax.jit(lambda X, y: model.metric("regression", (X @ w + b)[:, None], y))
    result = {f"{split}_r2": float(r2(*run.host[split])) for split in ("val", "test") if len(run.host[split][1])}
    log("closed-form least squares (pure.linear.least_squares): "
        + ", ".join(f"{k.replace('_r2', '')} R² {v:.4f}" for k, v in result.items()))
    return result


class _QuietBar:
    """A progress bar that shows nothing (the default outside the command line)."""

    def __init__(self, **_: Any):
        pass

    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        pass
