"""``handgrad train``: an MLP trained by pure's hand-written backprop, through jit, on real data.

One run: load and check the data (:mod:`reference.datasets`), split it stratified into
train / val / test, standardise with the train statistics, and train with
:func:`pure.train.make_epoch` (a ``lax.scan`` of the jitted step), one epoch, or one stretch
of ``checkpoint_every`` steps, per call. After every epoch it evaluates train and val,
prints a row, applies early stopping, and with ``reference=True`` trains the same model
with ``jax.grad`` + optax beside it and reports the largest parameter difference. The test
split is evaluated once, at the end.

With more than one device (or process) every batch is split over all of them
(:func:`pure.train.data_sharding`); the batch size must be a multiple of the device count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pure
import pure.linear
import pure.nn
import pure.optim
import pure.train
import reference.losses
import reference.nn
import reference.optim
import reference.regularizers
import reference.train
from reference import datasets
from reference.checkpoints import Checkpoints
from reference.verify import max_abs_diff

LOSS_NAMES = {"softmax": "softmax_cross_entropy", "hinge": "multiclass_hinge",
              "bce": "binary_cross_entropy", "mse": "mse"}


class TrainError(ValueError):
    """A run that cannot start as configured; the message is one line."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything ``handgrad train`` is told; the defaults reach ≥ 95% test accuracy on digits."""

    dataset: str = "digits"
    task: str | None = None  # for a .npz: classification or regression (default: from y's dtype)
    hidden: tuple[int, ...] = (128, 64)
    activation: str = "relu"
    init: str = "he"
    dropout: float = 0.0
    loss: str | None = None  # softmax or hinge for classification; binary and regression have their own
    l1: float = 0.0
    l2: float = 0.0
    max_norm: float | None = None
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    epochs: int = 30
    batch_size: int = 64
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    kfold: int | None = None
    early_stopping: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    resume: bool = False
    reference: bool = False
    out: str | None = None
    plots: bool = True  # with out: also curves.png, weights.png and grad_norms.png

    def check(self) -> None:
        """Raises TrainError for a value or a combination that cannot run."""
        bounds = [("--dropout", self.dropout, 0 <= self.dropout < 1, "in [0, 1)"),
                  ("--l1", self.l1, self.l1 >= 0, "≥ 0"), ("--l2", self.l2, self.l2 >= 0, "≥ 0"),
                  ("--max-norm", self.max_norm, self.max_norm is None or self.max_norm > 0, "> 0"),
                  ("--lr", self.lr, self.lr > 0, "> 0"), ("--momentum", self.momentum, 0 <= self.momentum < 1,
                                                          "in [0, 1)"),
                  ("--weight-decay", self.weight_decay, self.weight_decay >= 0, "≥ 0"),
                  ("--epochs", self.epochs, self.epochs >= 1, "≥ 1"),
                  ("--batch-size", self.batch_size, self.batch_size >= 1, "≥ 1"),
                  ("--checkpoint-every", self.checkpoint_every, self.checkpoint_every >= 1, "≥ 1"),
                  ("--early-stopping", self.early_stopping, self.early_stopping is None or self.early_stopping >= 1,
                   "≥ 1"), ("--kfold", self.kfold, self.kfold is None or self.kfold >= 2, "≥ 2"),
                  ("--hidden", self.hidden, all(h >= 1 for h in self.hidden), "positive widths")]
        for flag, value, ok, want in bounds:
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise TrainError(f"{flag} must be {want}, got {value}")
        for flag, value, choices in (("--activation", self.activation, pure.nn.ACTIVATIONS),
                                     ("--init", self.init, ("he", "xavier", "normal")),
                                     ("--optimizer", self.optimizer, ("sgd",)),
                                     ("--schedule", self.schedule, ("constant", "cosine")),
                                     ("--loss", self.loss, (None, "softmax", "hinge"))):
            if value not in choices:
                raise TrainError(f"{flag} must be one of {', '.join(c for c in choices if c)}, got {value!r}")
        if not self.kfold and not 0 < self.val_fraction < 1:
            raise TrainError(f"--val-fraction must be in (0, 1): the val split drives the table and early stopping, "
                             f"got {self.val_fraction}")
        if self.resume and not self.checkpoint_dir:
            raise TrainError("--resume needs --checkpoint-dir, the directory to resume from")
        if self.kfold and (self.checkpoint_dir or self.reference):
            raise TrainError("--kfold trains one model per fold; it does not combine with --checkpoint-dir "
                             "or --reference")
        if jax.process_count() > 1 and (self.checkpoint_dir or self.reference):
            raise TrainError("--checkpoint-dir and --reference run in a single process only")

    def signature(self, data: datasets.Dataset) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed: the data and every setting of the trajectory."""
        skip = {"checkpoint_dir", "resume", "out", "plots"}
        mine = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if k not in skip}
        return {**mine, "data": f"{data.name}: {data.X.shape[0]}x{data.X.shape[1]}, {data.task}",
                "devices": jax.device_count()}


# ---------------------------------------------------------------------------- the model
def objective(impl: str, loss: str, activation: str, dropout: float, l1: float, l2: float) -> Callable:
    """``(params, (x, y), key) -> scalar``: data loss plus ``l1·Σ|W|`` and ``l2/2·ΣW²`` (weights only).

    ``impl="pure"`` builds it from pure's ops (hand-written backprop); ``impl="reference"``
    from the same-named plain jax.numpy / optax references, for jax.grad.
    """
    nn, losses, regs = ((pure.nn, pure, pure) if impl == "pure"
                        else (reference.nn, reference.losses, reference.regularizers))
    data_loss = _data_loss(losses, loss)

    def loss_fn(params, batch, key):
        x, y = batch
        out = nn.mlp(params, x, activation=activation, dropout_rate=dropout, key=key, deterministic=False)
        total = data_loss(out, y)
        if l1:
            total = total + regs.l1_penalty(params, l1, mask=pure.nn.weights_only)
        if l2:
            total = total + regs.l2_penalty(params, l2, mask=pure.nn.weights_only)
        return total

    return loss_fn


def _data_loss(losses: Any, loss: str) -> Callable:
    fn = getattr(losses, LOSS_NAMES[loss])
    if loss in ("bce", "mse"):  # one output column against a float target
        return lambda out, y: fn(out[:, 0], y.astype(out.dtype))
    return fn


def _metric(task: str, out: jax.Array, y: jax.Array) -> jax.Array:
    """Accuracy for classification, R² for regression."""
    if task == "classification":
        return jnp.mean((jnp.argmax(out, axis=1) == y).astype(jnp.float32))
    if task == "binary":
        return jnp.mean(((out[:, 0] > 0) == (y == 1)).astype(jnp.float32))
    residual = jnp.sum(jnp.square(out[:, 0] - y))
    return 1.0 - residual / jnp.sum(jnp.square(y - jnp.mean(y)))


def _host(tree: Any) -> Any:
    """NumPy copies; a replicated array spread over several processes is read from a local device."""
    return jax.tree_util.tree_map(
        lambda x: np.asarray(x if x.is_fully_addressable else x.addressable_data(0)), tree)


# ---------------------------------------------------------------------------- one training run
@functools.lru_cache(maxsize=8)
def _programs(config: TrainConfig, task: str, loss: str, per_epoch: int, sizes: tuple[int, ...],
              batch_sharding: Any) -> SimpleNamespace:
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
        return pure.train.make_epoch(objective("pure", *spec), optimizer, config.batch_size, steps=steps,
                                     project=project, batch_sharding=batch_sharding)

    @jax.jit  # one program, not one per eager op: compiling is most of a short run's time
    def fresh():
        init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
        params = pure.nn.init_mlp(init_key, list(sizes), scheme=config.init)
        return {"params": params, "opt_state": optimizer.init(params), "key": jax.random.key_data(dropout_key)}

    data_loss = _data_loss(pure, loss)

    @jax.jit
    def evaluate(params, X, y):
        out = pure.nn.mlp(params, X, activation=config.activation)
        return data_loss(out, y), _metric(task, out, y)

    ref_epoch = ref_optimizer = None
    if config.reference:
        ref_project = (lambda p: reference.regularizers.max_norm(p, config.max_norm)) if config.max_norm else None
        ref_optimizer = reference.optim.sgd(schedules[1], **sgd)
        ref_epoch = reference.train.make_epoch(objective("reference", *spec), ref_optimizer, config.batch_size,
                                               project=ref_project)
    learning_rate = jax.jit(schedules[0]) if callable(schedules[0]) else (lambda step: config.lr)
    return SimpleNamespace(optimizer=optimizer, learning_rate=learning_rate, fresh=fresh, evaluate=evaluate,
                           stretch=stretch, reference=ref_epoch, ref_optimizer=ref_optimizer)


class Run:
    """One model trained on ``train`` indices and watched on ``val``: state, step functions, history."""

    def __init__(self, config: TrainConfig, data: datasets.Dataset, loss: str, train: np.ndarray, val: np.ndarray,
                 test: np.ndarray, *, log: Callable[[str], None] = print, checkpoints: Checkpoints | None = None):
        self.config, self.data, self.loss, self.log, self.checkpoints = config, data, loss, log, checkpoints
        Xtr, Xva, Xte = datasets.standardize(data.X[train], data.X[val], data.X[test])
        ytr, yva, yte = data.y[train], data.y[val], data.y[test]
        if data.task == "regression":  # standardise the target too; R² does not change
            ytr, yva, yte = (((y - ytr.mean()) / ytr.std()).astype(np.float32) for y in (ytr, yva, yte))
        self.host = {"train": (Xtr, ytr), "val": (Xva, yva), "test": (Xte, yte)}
        self.per_epoch = len(ytr) // config.batch_size
        if self.per_epoch == 0:
            raise TrainError(f"--batch-size {config.batch_size} is larger than the training split "
                             f"({len(ytr)} samples)")
        self.sharding = pure.train.data_sharding() if jax.device_count() > 1 else None
        if self.sharding is not None and config.batch_size % jax.device_count():
            raise TrainError(f"--batch-size {config.batch_size} is not divisible by the {jax.device_count()} "
                             f"devices the batch is split over; use a multiple of {jax.device_count()}")
        self.arrays = {k: self.put(v) for k, v in self.host.items()}
        self.sizes = (data.X.shape[1], *config.hidden, data.outputs)
        programs = _programs(config, data.task, loss, self.per_epoch, self.sizes, self.sharding)
        self.optimizer, self.learning_rate, self._fresh, self._evaluate, self._stretch = (
            programs.optimizer, programs.learning_rate, programs.fresh, programs.evaluate, programs.stretch)
        self.reference, self.ref_optimizer = programs.reference, programs.ref_optimizer

    def put(self, tree: Any) -> Any:
        """Replicated over the data-parallel devices (a no-op on one device). Every process holds the
        same values, so each places its copy (from host memory) on its own devices."""
        if self.sharding is None:
            return tree
        return jax.device_put(jax.tree_util.tree_map(np.asarray, tree), pure.train.replicated(self.sharding))

    def epoch_key(self, key_data: Any, epoch: int) -> jax.Array:
        """The dropout key of ``epoch``: ``fold_in(key, epoch)``, placed like the parameters."""
        return jax.random.wrap_key_data(self.put(jax.random.key_data(
            jax.random.fold_in(jax.random.wrap_key_data(key_data), epoch))))

    def evaluate(self, params: Any, split: str) -> tuple[float, float]:
        loss, metric = _host(self._evaluate(params, *self.arrays[split]))
        return float(loss), float(metric)

    # -- state ------------------------------------------------------------------------------
    def initial_state(self) -> dict[str, Any]:
        tree = self._fresh()
        tree["params"], tree["opt_state"] = self.put((tree["params"], tree["opt_state"]))
        if self.config.early_stopping:
            tree["best_params"] = _copy(tree["params"])
        if self.reference:
            tree["ref_params"] = _copy(tree["params"])
            tree["ref_opt_state"] = jax.jit(self.ref_optimizer.init)(tree["ref_params"])
        record = {"step": 0, "epoch": 0, "batch": 0, "data_seed": self.config.seed, "history": [],
                  "partial": _fresh_partial(len(self.sizes) - 1), "best_epoch": 0, "best_metric": None, "stale": 0}
        return {"tree": tree, "record": record}

    def resume_state(self) -> dict[str, Any]:
        like = self.initial_state()["tree"]
        tree, record = self.checkpoints.restore(like)
        tree = {k: (self.put(v) if k != "key" else v) for k, v in tree.items()}
        self.log(f"resumed from step {record['step']} (epoch {record['epoch'] + 1}, batch {record['batch']}) "
                 f"in {self.checkpoints.directory}")
        return {"tree": tree, "record": record}

    def save(self, state: dict[str, Any]) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(state["record"]["step"], state["tree"], state["record"])

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, state: dict[str, Any], bar: Callable[..., Any]) -> dict[str, Any]:
        """Trains from ``state`` to the last epoch (or early stop); returns the final state."""
        cfg, tree, rec = self.config, state["tree"], state["record"]
        stretch = cfg.checkpoint_every if self.checkpoints is not None else self.per_epoch
        X, y = self.arrays["train"]
        while rec["epoch"] < cfg.epochs and not (cfg.early_stopping and rec["stale"] >= cfg.early_stopping):
            epoch = rec["epoch"]
            epoch_key = self.epoch_key(tree["key"], epoch)
            progress = bar(total=self.per_epoch, initial=rec["batch"], desc=f"epoch {epoch + 1}/{cfg.epochs}")
            while rec["batch"] < self.per_epoch:
                steps = min(stretch, self.per_epoch - rec["batch"])
                start = time.perf_counter()
                tree["params"], tree["opt_state"], metrics = self._stretch(steps)(
                    tree["params"], tree["opt_state"], X, y, cfg.seed, epoch, epoch_key, rec["batch"])
                losses, norms = _host((metrics["loss"], [layer["W"] for layer in metrics["grad_norms"]]))
                self._require_finite(losses, rec)
                part = rec["partial"]
                part["loss_sum"] += float(np.sum(losses, dtype=np.float64))
                part["grad_sums"] = [s + float(np.sum(n, dtype=np.float64)) for s, n in zip(part["grad_sums"], norms,
                                                                                           strict=True)]
                part["steps"] += steps
                part["seconds"] += time.perf_counter() - start
                rec["batch"] += steps
                rec["step"] += steps
                progress.update(steps)
                progress.set_postfix(loss=f"{part['loss_sum'] / part['steps']:.4f}",
                                     ex_s=f"{part['steps'] * cfg.batch_size / part['seconds']:.0f}")
                if rec["batch"] < self.per_epoch:
                    self.save(state)
            progress.close()
            self._end_epoch(tree, rec)
            self.save(state)
        if self.checkpoints is not None:
            self.checkpoints.wait()
        return state

    def _require_finite(self, losses: np.ndarray, rec: dict[str, Any]) -> None:
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            i = int(bad[0])
            last = self.checkpoints.latest() if self.checkpoints is not None else None
            where = (f"the last good checkpoint is step {last} in {self.checkpoints.directory}" if last is not None
                     else "no checkpoint was written")
            raise Diverged(f"non-finite loss ({losses[i]}) at step {rec['step'] + i + 1} (epoch {rec['epoch'] + 1}, "
                           f"batch {rec['batch'] + i + 1}); training stopped, {where}")

    def _end_epoch(self, tree: dict[str, Any], rec: dict[str, Any]) -> None:
        cfg, part = self.config, rec["partial"]
        train_loss, train_metric = self.evaluate(tree["params"], "train")
        val_loss, val_metric = self.evaluate(tree["params"], "val")
        row = {"epoch": rec["epoch"] + 1, "step": rec["step"], "objective": part["loss_sum"] / part["steps"],
               "train_loss": train_loss, "train_metric": train_metric, "val_loss": val_loss, "val_metric": val_metric,
               "lr": float(self.learning_rate(rec["step"])),
               "examples_per_s": part["steps"] * cfg.batch_size / part["seconds"],
               "grad_norms": [s / part["steps"] for s in part["grad_sums"]]}
        if self.reference:
            epoch_key = self.epoch_key(tree["key"], rec["epoch"])
            tree["ref_params"], tree["ref_opt_state"], _ = self.reference(
                tree["ref_params"], tree["ref_opt_state"], *self.host["train"], cfg.seed, rec["epoch"], epoch_key)
            row["ref_max_diff"] = max_abs_diff(tree["params"], tree["ref_params"])
        if rec["best_metric"] is None or val_metric > rec["best_metric"]:
            rec["best_metric"], rec["best_epoch"], rec["stale"] = val_metric, rec["epoch"] + 1, 0
            if "best_params" in tree:
                tree["best_params"] = _copy(tree["params"])
        else:
            rec["stale"] += 1
        rec["history"].append(row)
        rec["epoch"] += 1
        rec["batch"] = 0
        rec["partial"] = _fresh_partial(len(part["grad_sums"]))
        self.log(format_row(row, self.data.task, cfg.reference))
        if cfg.early_stopping and rec["stale"] >= cfg.early_stopping:
            self.log(f"early stopping: no better val {metric_name(self.data.task)} for {cfg.early_stopping} epochs; "
                     f"keeping the parameters of epoch {rec['best_epoch']}")

    def final_params(self, state: dict[str, Any]) -> Any:
        return state["tree"]["best_params"] if self.config.early_stopping else state["tree"]["params"]


def _copy(params: Any) -> Any:
    """Fresh buffers with the same values: the step donates (and so invalidates) the ones it is given."""
    return jax.tree_util.tree_map(jnp.copy, params)


def _fresh_partial(layers: int) -> dict[str, Any]:
    return {"loss_sum": 0.0, "steps": 0, "seconds": 0.0, "grad_sums": [0.0] * layers}


def metric_name(task: str) -> str:
    return "R²" if task == "regression" else "acc"


def header(task: str, with_reference: bool) -> str:
    m = metric_name(task)
    return (f"{'epoch':>5} {'train loss':>10} {'val loss':>9} {'val ' + m:>8} {'lr':>9} {'ex/s':>8}"
            + (f" {'ref Δ':>9}" if with_reference else ""))


def format_row(row: dict[str, Any], task: str, with_reference: bool) -> str:
    text = (f"{row['epoch']:5d} {row['train_loss']:10.4f} {row['val_loss']:9.4f} {row['val_metric']:8.4f} "
            f"{row['lr']:9.2e} {row['examples_per_s']:8.0f}")
    return text + (f" {row['ref_max_diff']:9.1e}" if with_reference else "")


# ---------------------------------------------------------------------------- the command
def resolve_loss(config: TrainConfig, data: datasets.Dataset) -> str:
    if data.task == "classification":
        return config.loss or "softmax"
    if config.loss is not None:
        raise TrainError(f"--loss {config.loss} is for multi-class data; {data.name} is a {data.task} task, "
                         f"trained with {'binary_cross_entropy' if data.task == 'binary' else 'mse'}")
    return "bce" if data.task == "binary" else "mse"


def train(config: TrainConfig, *, log: Callable[[str], None] = print, bar: Callable[..., Any] | None = None
          ) -> dict[str, Any]:
    """Runs ``handgrad train`` and returns what ``metrics.json`` holds.

    Raises:
      datasets.DataError, TrainError, CheckpointError: bad input, before any training.
      Diverged: a non-finite loss; the last checkpoint written stays restorable.
    """
    started = time.perf_counter()
    config.check()
    data = datasets.load(config.dataset, config.task)
    loss = resolve_loss(config, data)
    parts = datasets.split(data, 0.0 if config.kfold else config.val_fraction, config.test_fraction, config.seed)
    if bar is None:
        bar = _QuietBar
    log(f"{data.name}: {data.X.shape[0]} samples, {data.X.shape[1]} features, {data.task}"
        + (f" ({data.num_classes} classes)" if data.task != "regression" else "")
        + f"; loss {LOSS_NAMES[loss]}; {jax.device_count()} device(s) in {jax.process_count()} process(es)")
    summary: dict[str, Any] = {"config": dataclasses.asdict(config), "dataset": data.name, "task": data.task,
                               "loss": LOSS_NAMES[loss], "devices": jax.device_count(),
                               "processes": jax.process_count(), "jax": jax.__version__}
    if config.kfold:
        summary["folds"] = _cross_validate(config, data, loss, parts["train"], log, bar)
        scores = [f["val_metric"] for f in summary["folds"]]
        summary["cv_mean"], summary["cv_std"] = float(np.mean(scores)), float(np.std(scores))
        log(f"{config.kfold}-fold cross-validation: val {metric_name(data.task)} "
            f"{summary['cv_mean']:.4f} ± {summary['cv_std']:.4f} (the test split is left untouched)")
    else:
        checkpoints = None
        if config.checkpoint_dir:
            checkpoints = Checkpoints(config.checkpoint_dir, config.signature(data))
            if not config.resume and checkpoints.latest() is not None:
                raise TrainError(f"{checkpoints.directory} already holds checkpoints (latest step "
                                 f"{checkpoints.latest()}); pass --resume to continue, or choose an empty directory")
        run = Run(config, data, loss, parts["train"], parts["val"], parts["test"], log=log, checkpoints=checkpoints)
        log(f"split: {len(parts['train'])} train, {len(parts['val'])} val, {len(parts['test'])} test; "
            f"MLP {'-'.join(map(str, run.sizes))} ({config.activation}), {run.per_epoch} steps per epoch")
        if config.resume and checkpoints.latest() is not None:
            state = run.resume_state()
        else:
            if config.resume:
                log(f"no checkpoint in {checkpoints.directory} yet; starting from scratch")
            state = run.initial_state()
        log(header(data.task, config.reference))
        for row in state["record"]["history"]:
            log(format_row(row, data.task, config.reference))
        state = run.fit(state, bar)
        params = run.final_params(state)
        summary["history"] = state["record"]["history"]
        summary["best_epoch"] = state["record"]["best_epoch"]
        if config.reference:
            summary["ref_max_diff"] = max(r["ref_max_diff"] for r in summary["history"])
            log(f"largest parameter difference from jax.grad + optax over all epochs: {summary['ref_max_diff']:.2e}")
        if len(parts["test"]):
            summary["test_loss"], summary["test_metric"] = run.evaluate(params, "test")
            which = (f"epoch {state['record']['best_epoch']} (best val)" if config.early_stopping
                     else f"epoch {len(summary['history'])}")
            log(f"test {metric_name(data.task)} {summary['test_metric']:.4f} on {len(parts['test'])} samples "
                f"(parameters of {which})")
        if data.task == "regression":
            summary["least_squares"] = _least_squares(run, log)
        summary["params"] = params
    summary["seconds"] = time.perf_counter() - started
    log(f"done in {summary['seconds']:.1f}s")
    if config.out and jax.process_index() == 0:
        write_outputs(summary, config.out, data.task, plots=config.plots)
        log(f"wrote metrics.json{', params.npz and plots' if config.plots else ' and params.npz'} to {config.out}")
    return summary


def _cross_validate(config: TrainConfig, data: datasets.Dataset, loss: str, index: np.ndarray,
                    log: Callable[[str], None], bar: Callable[..., Any]) -> list[dict[str, Any]]:
    folds = []
    for k, (train_idx, val_idx) in enumerate(datasets.kfold(data, index, config.kfold, config.seed)):
        log(f"fold {k + 1}/{config.kfold}: {len(train_idx)} train, {len(val_idx)} val")
        log(header(data.task, False))
        run = Run(config, data, loss, train_idx, val_idx, val_idx[:0], log=log)
        record = run.fit(run.initial_state(), bar)["record"]
        best = record["best_epoch"] if config.early_stopping else len(record["history"])
        folds.append({"fold": k + 1, "val_metric": record["history"][best - 1]["val_metric"], "epoch": best,
                      "history": record["history"]})
    return folds


def _least_squares(run: Run, log: Callable[[str], None]) -> dict[str, float]:
    """The closed-form linear fit on the same standardised split, for comparison with the MLP."""
    Xtr, ytr = run.host["train"]
    w, b = jax.jit(pure.linear.least_squares)(Xtr, ytr)
    r2 = jax.jit(lambda X, y: _metric("regression", (X @ w + b)[:, None], y))
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


def write_outputs(summary: dict[str, Any], out: str, task: str, *, plots: bool = True) -> None:
    """``metrics.json``, ``params.npz`` and (with ``plots``) the three PNGs into ``out``."""
    os.makedirs(out, exist_ok=True)
    params = summary.get("params")
    record = {k: v for k, v in summary.items() if k != "params"}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2)
    if params is None:
        return
    host = _host(params)
    np.savez(os.path.join(out, "params.npz"),
             **{f"{i}/{name}": a for i, layer in enumerate(host) for name, a in layer.items()})
    if not plots:
        return
    from reference import plots as draw

    draw.curves(summary["history"], os.path.join(out, "curves.png"), metric_name(task), summary.get("best_epoch"))
    draw.weights(host[0]["W"], os.path.join(out, "weights.png"), summary["config"])
    draw.grad_norms(summary["history"], os.path.join(out, "grad_norms.png"), summary["config"]["activation"])
