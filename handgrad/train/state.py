"""The state of a ``handgrad train`` run: its arrays (:class:`TrainState`) and where it stands (:class:`Progress`).

Both are immutable: a step of the run returns a new value instead of changing the old one, so
the run's loop (:meth:`handgrad.train.run.Run.fit`) is the one owner of where a run stands, and
a checkpoint taken at any moment is a consistent snapshot. :class:`Progress` and its
:class:`EpochRow` history are plain numbers, stored as JSON beside a checkpoint's arrays; the
language model's are :class:`LMProgress` and :class:`LMRow` (its arrays are a :class:`TrainState` too).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import numpy as np


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


@dataclasses.dataclass(frozen=True)
class EpochSums:
    """Running sums over the steps of the epoch in progress (checkpointed mid-epoch)."""

    grad_sums: tuple[float, ...]  # per layer, Σ over steps of ‖∂L/∂W‖
    loss_sum: float = 0.0
    steps: int = 0
    seconds: float = 0.0

    @classmethod
    def zero(cls, layers: int) -> EpochSums:
        return cls((0.0,) * layers)

    def add(self, losses: np.ndarray, norms: list[np.ndarray], seconds: float) -> EpochSums:
        """These sums and a stretch of ``len(losses)`` steps: their losses, per-layer gradient norms and time."""
        return EpochSums(tuple(s + float(np.sum(n, dtype=np.float64)) for s, n in zip(self.grad_sums, norms,
                                                                                        strict=True)),
                         self.loss_sum + float(np.sum(losses, dtype=np.float64)), self.steps + len(losses),
                         self.seconds + seconds)

    def examples_per_s(self, batch_size: int) -> float:
        return self.steps * batch_size / self.seconds if self.seconds else 0.0


@dataclasses.dataclass(frozen=True)
class EpochRow:
    """One finished epoch: a row of the log, of ``metrics.json``'s ``history`` and of the plots."""

    epoch: int
    step: int
    objective: float  # mean training objective over the epoch's steps (penalties included)
    train_loss: float
    train_metric: float  # accuracy, or R² for regression
    val_loss: float
    val_metric: float
    lr: float
    examples_per_s: float
    grad_norms: tuple[float, ...]  # per layer, mean over the epoch's steps of ‖∂L/∂W‖
    ref_max_diff: float | None = None  # with --reference: largest |pure − jax.grad + optax| parameter difference

    def format(self, with_reference: bool) -> str:
        text = (f"{self.epoch:5d} {self.train_loss:10.4f} {self.val_loss:9.4f} {self.val_metric:8.4f} "
                f"{self.lr:9.2e} {self.examples_per_s:8.0f}")
        return text + (f" {self.ref_max_diff:9.1e}" if with_reference else "")

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        return record if self.ref_max_diff is not None else {k: v for k, v in record.items() if k != "ref_max_diff"}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> EpochRow:
        return cls(**{**record, "grad_norms": tuple(record["grad_norms"])})


def metric_name(task: str) -> str:
    return "R²" if task == "regression" else "acc"


def header(task: str, with_reference: bool) -> str:
    """The column titles above :meth:`EpochRow.format`'s rows."""
    m = metric_name(task)
    return (f"{'epoch':>5} {'train loss':>10} {'val loss':>9} {'val ' + m:>8} {'lr':>9} {'ex/s':>8}"
            + (f" {'ref Δ':>9}" if with_reference else ""))


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands, as plain numbers: a checkpoint stores it as JSON."""

    sums: EpochSums
    step: int = 0
    epoch: int = 0  # epochs finished
    batch: int = 0  # batches finished in the epoch in progress
    data_seed: int = 0
    history: tuple[EpochRow, ...] = ()  # one row per finished epoch
    best_epoch: int = 0
    best_metric: float | None = None
    stale: int = 0  # epochs since the best val metric

    def advance(self, sums: EpochSums) -> Progress:
        """After a stretch of steps whose sums (with the epoch's earlier ones) are ``sums``."""
        steps = sums.steps - self.sums.steps
        return dataclasses.replace(self, sums=sums, step=self.step + steps, batch=self.batch + steps)

    def finish_epoch(self, row: EpochRow) -> Progress:
        """The epoch in progress ended with ``row``: the best val metric and the early-stopping count updated."""
        better = self.best_metric is None or row.val_metric > self.best_metric
        best = (row.epoch, row.val_metric, 0) if better else (self.best_epoch, self.best_metric, self.stale + 1)
        return dataclasses.replace(self, sums=EpochSums.zero(len(self.sums.grad_sums)), epoch=self.epoch + 1,
                                   batch=0, history=(*self.history, row), best_epoch=best[0], best_metric=best[1],
                                   stale=best[2])

    @property
    def improved(self) -> bool:
        """The epoch just finished had the best val metric so far."""
        return self.stale == 0 and self.best_epoch == self.epoch

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "history": [row.to_json() for row in self.history]}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Progress:
        fields = {f.name for f in dataclasses.fields(cls)}
        sums = record["sums"]
        return cls(**{**{k: v for k, v in record.items() if k in fields},
                      "sums": EpochSums(**{**sums, "grad_sums": tuple(sums["grad_sums"])}),
                      "history": tuple(EpochRow.from_json(row) for row in record.get("history", ()))})


@dataclasses.dataclass(frozen=True)
class LMRow:
    """One validation of the language model: a row of the log, of ``metrics.json``'s ``history`` and of the plot."""

    step: int
    train_loss: float  # mean next-byte cross-entropy (nats) over the steps since the previous row
    val_loss: float  # the same on the validation windows
    seconds: float  # training time so far (evaluations and checkpoints excluded)

    @property
    def val_bits(self) -> float:
        """Validation bits per character: nats ÷ ln 2."""
        return self.val_loss / math.log(2)

    def format(self) -> str:
        return (f"{self.step:6d} {self.train_loss / math.log(2):10.4f} {self.val_bits:8.4f} "
                f"{self.seconds:8.1f}")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "val_bits_per_char": self.val_bits}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> LMRow:
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})


LM_HEADER = f"{'step':>6} {'train bpc':>10} {'val bpc':>8} {'seconds':>8}"


@dataclasses.dataclass(frozen=True)
class LMProgress:
    """Where a language-model run stands, as plain numbers: a checkpoint stores it as JSON."""

    step: int = 0
    loss_sum: float = 0.0  # Σ training losses since the last row
    steps: int = 0  # the steps they are of
    seconds: float = 0.0  # training time so far
    history: tuple[LMRow, ...] = ()

    def advance(self, losses: np.ndarray, seconds: float) -> LMProgress:
        """After a stretch of ``len(losses)`` steps that took ``seconds``."""
        return dataclasses.replace(self, step=self.step + len(losses), steps=self.steps + len(losses),
                                   loss_sum=self.loss_sum + float(np.sum(losses, dtype=np.float64)),
                                   seconds=self.seconds + seconds)

    def validated(self, val_loss: float) -> LMProgress:
        """A row for the steps since the last one, and its validation loss."""
        row = LMRow(self.step, self.loss_sum / self.steps, val_loss, self.seconds)
        return dataclasses.replace(self, loss_sum=0.0, steps=0, history=(*self.history, row))

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "history": [row.to_json() for row in self.history]}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> LMProgress:
        fields = {f.name for f in dataclasses.fields(cls)} - {"history"}
        return cls(**{k: record[k] for k in fields}, history=tuple(LMRow.from_json(r) for r in record["history"]))
