"""``handgrad train``: an MLP trained by pure's hand-written backprop, through jit, on real data.

One run: load and check the data (:mod:`handgrad.train.data`), split it stratified into
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
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

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
from handgrad.train import data as datasets
from handgrad.train.checkpoints import Checkpoints, CheckpointWriteError
from handgrad.train.config import TrainConfig, TrainError
from reference import max_abs_diff

LOSS_NAMES = {"softmax": "softmax_cross_entropy", "hinge": "multiclass_hinge",
              "bce": "binary_cross_entropy", "mse": "mse"}


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


class CheckpointMissed(RuntimeError):
    """Training finished, but a checkpoint could not be written on the way (the message says which, and why)."""


class OutputError(RuntimeError):
    """``--out`` could not be written after training; the message says where the results are instead."""


# ---------------------------------------------------------------------------- the state of a run
class RefState(NamedTuple):
    """The model trained beside it with jax.grad + optax (``--reference``)."""

    params: Any
    opt_state: Any


class TrainState(NamedTuple):
    """Every array of a run: what a checkpoint holds, besides its :class:`Progress`."""

    params: Any
    opt_state: Any
    key: jax.Array  # the dropout key's raw data
    best_params: Any = None  # the best val parameters so far, with --early-stopping
    ref: RefState | None = None  # with --reference


@dataclasses.dataclass
class EpochSums:
    """Running sums over the steps of the epoch in progress (checkpointed mid-epoch)."""

    grad_sums: list[float]  # per layer, Σ over steps of ‖∂L/∂W‖
    loss_sum: float = 0.0
    steps: int = 0
    seconds: float = 0.0


@dataclasses.dataclass
class Progress:
    """Where a run stands, as plain numbers: a checkpoint stores it as JSON."""

    sums: EpochSums
    step: int = 0
    epoch: int = 0  # epochs finished
    batch: int = 0  # batches finished in the epoch in progress
    data_seed: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one row per finished epoch
    best_epoch: int = 0
    best_metric: float | None = None
    stale: int = 0  # epochs since the best val metric

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Progress:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in record.items() if k in fields}, "sums": EpochSums(**record["sums"])})


class Programs(NamedTuple):
    """The jitted functions of a run."""

    optimizer: pure.optim.GradientTransformation
    learning_rate: Callable[[int], Any]
    fresh: Callable[[], TrainState]
    evaluate: Callable[..., tuple[jax.Array, jax.Array]]
    stretch: Callable[[int], Callable]  # steps -> make_epoch over that many batches
    reference: Callable | None  # reference.train.make_epoch, with --reference
    ref_optimizer: Any


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
        return pure.train.make_epoch(objective("pure", *spec), optimizer, config.batch_size, steps=steps,
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
        return data_loss(out, y), _metric(task, out, y)

    ref_epoch = ref_optimizer = None
    if config.reference:
        ref_project = (lambda p: reference.regularizers.max_norm(p, config.max_norm)) if config.max_norm else None
        ref_optimizer = reference.optim.sgd(schedules[1], **sgd)
        ref_epoch = reference.train.make_epoch(objective("reference", *spec), ref_optimizer, config.batch_size,
                                               project=ref_project)
    learning_rate = jax.jit(schedules[0]) if callable(schedules[0]) else (lambda step: config.lr)
    return Programs(optimizer, learning_rate, fresh, evaluate, stretch, ref_epoch, ref_optimizer)


class Run:
    """One model trained on ``train`` indices and watched on ``val``: state, step functions, history."""

    def __init__(self, config: TrainConfig, data: datasets.Dataset, loss: str, train: np.ndarray, val: np.ndarray,
                 test: np.ndarray, *, log: Callable[[str], None] = print, checkpoints: Checkpoints | None = None):
        self.config, self.data, self.loss, self.log, self.checkpoints = config, data, loss, log, checkpoints
        self.missed: CheckpointWriteError | None = None  # the checkpoint that could not be written, if one was not
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
        self.programs = _programs(config, data.task, loss, self.per_epoch, self.sizes, self.sharding)

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
        loss, metric = _host(self.programs.evaluate(params, *self.arrays[split]))
        return float(loss), float(metric)

    # -- state ------------------------------------------------------------------------------
    def initial_state(self) -> tuple[TrainState, Progress]:
        fresh = self.programs.fresh()
        params, opt_state = self.put((fresh.params, fresh.opt_state))
        ref = None
        if self.programs.reference is not None:
            ref_params = _copy(params)
            ref = RefState(ref_params, jax.jit(self.programs.ref_optimizer.init)(ref_params))
        best = _copy(params) if self.config.early_stopping else None
        state = TrainState(params, opt_state, fresh.key, best, ref)
        return state, Progress(EpochSums([0.0] * (len(self.sizes) - 1)), data_seed=self.config.seed)

    def resume_state(self) -> tuple[TrainState, Progress]:
        like, _ = self.initial_state()
        restored, record, skipped = self.checkpoints.restore(like)
        for reason in skipped:
            self.log(f"skipped a damaged checkpoint: {reason}")
        state = TrainState(*(self.put(v) if name != "key" else v for name, v in zip(TrainState._fields, restored,
                                                                                      strict=True)))
        progress = Progress.from_json(record)
        self.log(f"resumed from step {progress.step} (epoch {progress.epoch + 1}, batch {progress.batch}) "
                 f"in {self.checkpoints.directory}")
        return state, progress

    def save(self, state: TrainState, progress: Progress) -> None:
        """Writes a checkpoint. One that cannot be written (disk full) is said in one line, and training goes on
        without checkpoints: the run ends with its parameters in --out and a non-zero exit (CheckpointMissed)."""
        if self.checkpoints is None or self.missed is not None:
            return
        try:
            self.checkpoints.save(progress.step, state, progress.to_json())
        except CheckpointWriteError as e:
            self.missed = e
            self.log(f"warning: {e}; training goes on without checkpoints")

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, state: TrainState, progress: Progress, bar: Callable[..., Any]) -> TrainState:
        """Trains from ``state`` to the last epoch (or early stop), updating ``progress``; returns the final state."""
        cfg = self.config
        stretch = cfg.checkpoint_every if self.checkpoints is not None else self.per_epoch
        X, y = self.arrays["train"]
        while progress.epoch < cfg.epochs and not (cfg.early_stopping and progress.stale >= cfg.early_stopping):
            epoch = progress.epoch
            epoch_key = self.epoch_key(state.key, epoch)
            shown = bar(total=self.per_epoch, initial=progress.batch, desc=f"epoch {epoch + 1}/{cfg.epochs}")
            while progress.batch < self.per_epoch:
                steps = min(stretch, self.per_epoch - progress.batch)
                start = time.perf_counter()
                params, opt_state, metrics = self.programs.stretch(steps)(
                    state.params, state.opt_state, X, y, cfg.seed, epoch, epoch_key, progress.batch)
                state = state._replace(params=params, opt_state=opt_state)
                losses, norms = _host((metrics["loss"], [layer["W"] for layer in metrics["grad_norms"]]))
                self._require_finite(losses, progress)
                sums = progress.sums
                sums.loss_sum += float(np.sum(losses, dtype=np.float64))
                sums.grad_sums = [s + float(np.sum(n, dtype=np.float64)) for s, n in zip(sums.grad_sums, norms,
                                                                                       strict=True)]
                sums.steps += steps
                sums.seconds += time.perf_counter() - start
                progress.batch += steps
                progress.step += steps
                shown.update(steps)
                shown.set_postfix(loss=f"{sums.loss_sum / sums.steps:.4f}",
                                  ex_s=f"{sums.steps * cfg.batch_size / sums.seconds:.0f}")
                if progress.batch < self.per_epoch:
                    self.save(state, progress)
            shown.close()
            state = self._end_epoch(state, progress)
            self.save(state, progress)
        if self.checkpoints is not None:
            self.checkpoints.wait()
        return state

    def _require_finite(self, losses: np.ndarray, progress: Progress) -> None:
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            i = int(bad[0])
            raise Diverged(f"non-finite loss ({losses[i]}) at step {progress.step + i + 1} "
                           f"(epoch {progress.epoch + 1}, batch {progress.batch + i + 1}); training stopped, "
                           f"{self.where_saved()}")

    def where_saved(self) -> str:
        """Where the newest complete checkpoint is, in words."""
        last = self.checkpoints.latest() if self.checkpoints is not None else None
        return (f"the last good checkpoint is step {last} in {self.checkpoints.directory}" if last is not None
                else "no checkpoint was written")

    def _end_epoch(self, state: TrainState, progress: Progress) -> TrainState:
        cfg, sums = self.config, progress.sums
        train_loss, train_metric = self.evaluate(state.params, "train")
        val_loss, val_metric = self.evaluate(state.params, "val")
        row = {"epoch": progress.epoch + 1, "step": progress.step, "objective": sums.loss_sum / sums.steps,
               "train_loss": train_loss, "train_metric": train_metric, "val_loss": val_loss, "val_metric": val_metric,
               "lr": float(self.programs.learning_rate(progress.step)),
               "examples_per_s": sums.steps * cfg.batch_size / sums.seconds,
               "grad_norms": [s / sums.steps for s in sums.grad_sums]}
        if state.ref is not None:
            epoch_key = self.epoch_key(state.key, progress.epoch)
            ref_params, ref_opt_state, _ = self.programs.reference(
                state.ref.params, state.ref.opt_state, *self.host["train"], cfg.seed, progress.epoch, epoch_key)
            state = state._replace(ref=RefState(ref_params, ref_opt_state))
            row["ref_max_diff"] = max_abs_diff(state.params, ref_params)
        if progress.best_metric is None or val_metric > progress.best_metric:
            progress.best_metric, progress.best_epoch, progress.stale = val_metric, progress.epoch + 1, 0
            if state.best_params is not None:
                state = state._replace(best_params=_copy(state.params))
        else:
            progress.stale += 1
        progress.history.append(row)
        progress.epoch += 1
        progress.batch = 0
        progress.sums = EpochSums([0.0] * len(sums.grad_sums))
        self.log(format_row(row, self.data.task, cfg.reference))
        if cfg.early_stopping and progress.stale >= cfg.early_stopping:
            self.log(f"early stopping: no better val {metric_name(self.data.task)} for {cfg.early_stopping} epochs; "
                     f"keeping the parameters of epoch {progress.best_epoch}")
        return state

    def final_params(self, state: TrainState) -> Any:
        return state.best_params if state.best_params is not None else state.params


def _copy(params: Any) -> Any:
    """Fresh buffers with the same values: the step donates (and so invalidates) the ones it is given."""
    return jax.tree_util.tree_map(jnp.copy, params)


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


def train(config: TrainConfig, *, log: Callable[[str], None] = print, bar: Callable[..., Any] | None = None
          ) -> dict[str, Any]:
    """Runs ``handgrad train`` and returns what ``metrics.json`` holds.

    Raises:
      datasets.DataError, TrainError, CheckpointError: bad input, before any training (an
        unwritable ``--out`` or ``--checkpoint-dir`` too).
      Diverged: a non-finite loss; the last checkpoint written stays restorable.
      OutputError: ``--out`` failed after training; the message says where the parameters are.
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
    if bar is None:
        bar = _QuietBar
    log(f"{data.name}: {data.X.shape[0]} samples, {data.X.shape[1]} features, {data.task}"
        + (f" ({data.num_classes} classes)" if data.task != "regression" else "")
        + f"; loss {LOSS_NAMES[loss]}; {jax.device_count()} device(s) in {jax.process_count()} process(es)")
    summary: dict[str, Any] = {"config": dataclasses.asdict(config), "dataset": data.name, "task": data.task,
                               "loss": LOSS_NAMES[loss], "devices": jax.device_count(),
                               "processes": jax.process_count(), "jax": jax.__version__}
    run = None
    if config.kfold:
        summary["folds"] = _cross_validate(config, data, loss, parts["train"], log, bar)
        scores = [f["val_metric"] for f in summary["folds"]]
        summary["cv_mean"], summary["cv_std"] = float(np.mean(scores)), float(np.std(scores))
        log(f"{config.kfold}-fold cross-validation: val {metric_name(data.task)} "
            f"{summary['cv_mean']:.4f} ± {summary['cv_std']:.4f} (the test split is left untouched)")
    else:
        checkpoints = None
        if config.checkpoint_dir:
            checkpoints = Checkpoints(config.checkpoint_dir, signature(config, data), log=log)
            if not config.resume and checkpoints.latest() is not None:
                raise TrainError(f"{checkpoints.directory} already holds checkpoints (latest step "
                                 f"{checkpoints.latest()}); pass --resume to continue, or choose an empty directory")
        run = Run(config, data, loss, parts["train"], parts["val"], parts["test"], log=log, checkpoints=checkpoints)
        log(f"split: {len(parts['train'])} train, {len(parts['val'])} val, {len(parts['test'])} test; "
            f"MLP {'-'.join(map(str, run.sizes))} ({config.activation}), {run.per_epoch} steps per epoch")
        if config.resume and checkpoints.has_any():
            state, progress = run.resume_state()
        else:
            if config.resume:
                log(f"no checkpoint in {checkpoints.directory} yet; starting from scratch")
            state, progress = run.initial_state()
        log(header(data.task, config.reference))
        for row in progress.history:
            log(format_row(row, data.task, config.reference))
        state = run.fit(state, progress, bar)
        params = run.final_params(state)
        summary["history"] = progress.history
        summary["best_epoch"] = progress.best_epoch
        if config.reference:
            summary["ref_max_diff"] = max(r["ref_max_diff"] for r in summary["history"])
            log(f"largest parameter difference from jax.grad + optax over all epochs: {summary['ref_max_diff']:.2e}")
        if len(parts["test"]):
            summary["test_loss"], summary["test_metric"] = run.evaluate(params, "test")
            which = (f"epoch {progress.best_epoch} (best val)" if config.early_stopping
                     else f"epoch {len(summary['history'])}")
            log(f"test {metric_name(data.task)} {summary['test_metric']:.4f} on {len(parts['test'])} samples "
                f"(parameters of {which})")
        if data.task == "regression":
            summary["least_squares"] = _least_squares(run, log)
        summary["params"] = params
    summary["seconds"] = time.perf_counter() - started
    log(f"done in {summary['seconds']:.1f}s")
    if config.out and jax.process_index() == 0:
        try:
            write_outputs(summary, config.out, data.task, plots=config.plots)
        except OSError as e:
            raise OutputError(f"could not write to --out {config.out} after training ({e.strerror or e}); "
                              + _rescue(summary, run)) from None
        log(f"wrote metrics.json{', params.npz and plots' if config.plots else ' and params.npz'} to {config.out}")
    missed = run.missed if run is not None else None
    if missed is not None:
        where = f"its parameters are in {config.out}" if config.out else "pass --out to keep its parameters"
        raise CheckpointMissed(f"{missed}; training finished without checkpoints from then on, and {where}")
    return summary


def _rescue(summary: dict[str, Any], run: Run | None) -> str:
    """Writes the results to a fresh temporary directory instead; says where they, and the last checkpoint, are."""
    where = [run.where_saved()] if run is not None and run.checkpoints is not None else []
    try:
        fallback = tempfile.mkdtemp(prefix="handgrad-train-")
        write_outputs(summary, fallback, summary["task"], plots=False)
        where.insert(0, f"metrics.json and params.npz are in {fallback} instead")
    except OSError as e:
        where.insert(0, f"writing them to a temporary directory failed too ({e.strerror or e})")
    return "; ".join(where)


def _cross_validate(config: TrainConfig, data: datasets.Dataset, loss: str, index: np.ndarray,
                    log: Callable[[str], None], bar: Callable[..., Any]) -> list[dict[str, Any]]:
    folds = []
    for k, (train_idx, val_idx) in enumerate(datasets.kfold(data, index, config.kfold, config.seed)):
        log(f"fold {k + 1}/{config.kfold}: {len(train_idx)} train, {len(val_idx)} val")
        log(header(data.task, False))
        run = Run(config, data, loss, train_idx, val_idx, val_idx[:0], log=log)
        state, progress = run.initial_state()
        run.fit(state, progress, bar)
        best = progress.best_epoch if config.early_stopping else len(progress.history)
        folds.append({"fold": k + 1, "val_metric": progress.history[best - 1]["val_metric"], "epoch": best,
                      "history": progress.history})
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
    from handgrad.train import plots as draw

    draw.curves(summary["history"], os.path.join(out, "curves.png"), metric_name(task), summary.get("best_epoch"))
    draw.weights(host[0]["W"], os.path.join(out, "weights.png"), summary["config"])
    draw.grad_norms(summary["history"], os.path.join(out, "grad_norms.png"), summary["config"]["activation"])
