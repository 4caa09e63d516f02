"""One training run: the data placed on the devices, a fresh or resumed state, and its checkpoints.

:class:`BaseRun` is what every model's run shares (placement, checkpoints, the moments to stop at); :class:`Run`
is the MLP's, trained by :mod:`handgrad.train.loop` (the language model's is :mod:`handgrad.train.lm`). With
more than one device (or process) every batch is split over all of them (:func:`pure.train.data_sharding`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

import pure.train
from handgrad.train import data as datasets
from handgrad.train import model
from handgrad.train.checkpoints import Checkpoints, CheckpointWriteError
from handgrad.train.config import TrainConfig, TrainError
from handgrad.train.state import EpochSums, Progress, RefState, TrainState

Moment = Literal["stretch", "evaluate", "checkpoint"]


def host(tree: Any) -> Any:
    """NumPy copies; a replicated array spread over several processes is read from a local device."""
    return jax.tree_util.tree_map(
        lambda x: np.asarray(x if x.is_fully_addressable else x.addressable_data(0)), tree)


def copy(params: Any) -> Any:
    """Fresh buffers with the same values: the step donates (and so invalidates) the ones it is given."""
    return jax.tree_util.tree_map(jnp.copy, params)


def batch_sharding(batch_size: int) -> Any:
    """The data-parallel sharding of a batch over every device (None on one device); a TrainError names a
    --batch-size the devices do not divide."""
    if jax.device_count() == 1:
        return None
    if batch_size % jax.device_count():
        raise TrainError(f"--batch-size {batch_size} is not divisible by the {jax.device_count()} devices the batch "
                         f"is split over; use a multiple of {jax.device_count()}")
    return pure.train.data_sharding()


def open_checkpoints(directory: str | None, signature: dict[str, Any], resume: bool,
                     log: Callable[[str], None]) -> Checkpoints | None:
    """The run's checkpoints in ``directory`` (None: none asked for); a TrainError where it already holds some and
    the run is no --resume."""
    if not directory:
        return None
    checkpoints = Checkpoints(directory, signature, log=log)
    latest = checkpoints.latest()
    if not resume and latest is not None:
        raise TrainError(f"{checkpoints.directory} already holds checkpoints (latest step {latest}); pass --resume to "
                         f"continue, or choose an empty directory")
    return checkpoints


class BaseRun:
    """What every run has: its devices, its checkpoints, and the moments it can be stopped at.

    ``at(moment, step)``, when given, is called at the moments a run can be interrupted: after a
    stretch of steps ran but before anything records it (``"stretch"``), between evaluations
    (``"evaluate"``) and just before a checkpoint is written (``"checkpoint"``). The fault tests
    stop a run there, as ``kill -9`` would. A subclass sets ``sharding`` (None on one device) and
    defines ``initial_state``.
    """

    sharding: Any = None

    def __init__(self, *, log: Callable[[str], None] = print, checkpoints: Checkpoints | None = None,
                 at: Callable[[Moment, int], None] | None = None):
        self.log, self.checkpoints = log, checkpoints
        self.at = at or (lambda moment, step: None)
        self.missed: CheckpointWriteError | None = None  # the checkpoint that could not be written, if one was not

    def initial_state(self) -> tuple[TrainState, Any]:
        raise NotImplementedError

    def resume_state(self) -> tuple[TrainState, Any]:
        raise NotImplementedError

    def put(self, tree: Any) -> Any:
        """Replicated over the data-parallel devices (a no-op on one device). Every process holds the
        same values, so each places its copy (from host memory) on its own devices."""
        if self.sharding is None:
            return tree
        return jax.device_put(jax.tree_util.tree_map(np.asarray, tree), pure.train.replicated(self.sharding))

    def restored(self) -> tuple[TrainState, dict[str, Any]]:
        """The newest checkpoint that reads back whole: its state (placed as a fresh one) and its JSON record.
        Each newer one skipped as damaged is said in the log."""
        like, _ = self.initial_state()
        restored, record, skipped = self.checkpoints.restore(like)
        for reason in skipped:
            self.log(f"skipped a damaged checkpoint: {reason}")
        return TrainState(*(self.put(v) if name != "key" else v for name, v in zip(TrainState._fields, restored,
                                                                                    strict=True))), record

    def start(self, resume: bool) -> tuple[TrainState, Any]:
        """With ``resume``, from the newest checkpoint that reads back whole, where there is one; else fresh."""
        if resume and self.checkpoints is not None and self.checkpoints.has_any():
            return self.resume_state()
        if resume and self.checkpoints is not None:
            self.log(f"no checkpoint in {self.checkpoints.directory} yet; starting from scratch")
        return self.initial_state()

    def save(self, state: TrainState, progress: Any) -> None:
        """Writes a checkpoint of ``state`` and ``progress`` (its ``step`` and ``to_json()``). One that cannot be
        written (disk full) is said in one line, and training goes on without checkpoints: the run ends with its
        parameters in --out and a non-zero exit (CheckpointMissed)."""
        if self.checkpoints is None or self.missed is not None:
            return
        self.at("checkpoint", progress.step)
        try:
            self.checkpoints.save(progress.step, state, progress.to_json())
        except CheckpointWriteError as e:
            self.missed = e
            self.log(f"warning: {e}; training goes on without checkpoints")

    def where_saved(self) -> str:
        """Where the newest complete checkpoint is, in words."""
        last = self.checkpoints.latest() if self.checkpoints is not None else None
        return (f"the last good checkpoint is step {last} in {self.checkpoints.directory}" if last is not None
                else "no checkpoint was written")


class Run(BaseRun):
    """One MLP trained on ``train`` indices and watched on ``val``; ``at`` as in :class:`BaseRun` (its
    ``"evaluate"`` moment falls between the train and val evaluations of an epoch)."""

    def __init__(self, config: TrainConfig, data: datasets.Dataset, loss: str, train: np.ndarray, val: np.ndarray,
                 test: np.ndarray, *, log: Callable[[str], None] = print, checkpoints: Checkpoints | None = None,
                 at: Callable[[Moment, int], None] | None = None):
        super().__init__(log=log, checkpoints=checkpoints, at=at)
        self.config, self.data, self.loss = config, data, loss
        Xtr, Xva, Xte = datasets.standardize(data.X[train], data.X[val], data.X[test])
        ytr, yva, yte = data.y[train], data.y[val], data.y[test]
        if data.task == "regression":  # standardise the target too; R² does not change
            ytr, yva, yte = (((y - ytr.mean()) / ytr.std()).astype(np.float32) for y in (ytr, yva, yte))
        self.host = {"train": (Xtr, ytr), "val": (Xva, yva), "test": (Xte, yte)}
        self.per_epoch = len(ytr) // config.batch_size
        if self.per_epoch == 0:
            raise TrainError(f"--batch-size {config.batch_size} is larger than the training split "
                             f"({len(ytr)} samples)")
        self.sharding = batch_sharding(config.batch_size)
        self.arrays = {k: self.put(v) for k, v in self.host.items()}
        self.sizes = (data.X.shape[1], *config.hidden, data.outputs)
        self.programs = model.programs(config.trajectory(), data.task, loss, self.per_epoch, self.sizes, self.sharding)

    def epoch_key(self, key_data: Any, epoch: int) -> jax.Array:
        """The dropout key of ``epoch``: ``fold_in(key, epoch)``, placed like the parameters."""
        return jax.random.wrap_key_data(self.put(jax.random.key_data(
            jax.random.fold_in(jax.random.wrap_key_data(key_data), epoch))))

    def evaluate(self, params: Any, split: str) -> tuple[float, float]:
        loss, metric = host(self.programs.evaluate(params, *self.arrays[split]))
        return float(loss), float(metric)

    # -- state ------------------------------------------------------------------------------
    def initial_state(self) -> tuple[TrainState, Progress]:
        fresh = self.programs.fresh()
        params, opt_state = self.put((fresh.params, fresh.opt_state))
        ref = None
        if self.programs.reference is not None:
            ref_params = copy(params)
            ref = RefState(ref_params, jax.jit(self.programs.ref_optimizer.init)(ref_params))
        best = copy(params) if self.config.early_stopping else None
        state = TrainState(params, opt_state, fresh.key, best, ref)
        return state, Progress(EpochSums.zero(len(self.sizes) - 1), data_seed=self.config.seed)

    def resume_state(self) -> tuple[TrainState, Progress]:
        state, record = self.restored()
        progress = Progress.from_json(record)
        self.log(f"resumed from step {progress.step} (epoch {progress.epoch + 1}, batch {progress.batch}) "
                 f"in {self.checkpoints.directory}")
        return state, progress

    def final_params(self, state: TrainState) -> Any:
        return state.best_params if state.best_params is not None else state.params
