"""``handgrad train --model transformer``: a byte-level language model of :mod:`pure.transformer` trained on the
standard library's source (:mod:`handgrad.train.text`), with its compiled programs in :mod:`handgrad.train.lm_model`.

:func:`train` is the entry point. Every step's batch is a function of the seed and the step alone, so a run
resumed from a checkpoint takes the same steps as one never stopped; the checkpoints, the moments a run can be
stopped at and the devices are :class:`~handgrad.train.run.BaseRun`'s, as for the MLP. At the end it reports the
validation bits per character beside a bigram baseline's on the same bytes, and prints a sample.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from handgrad.train import lm_model, outputs, text
from handgrad.train.checkpoints import Checkpoints
from handgrad.train.command import CheckpointMissed, OutputError, require_writable
from handgrad.train.config import LMConfig, TrainError
from handgrad.train.loop import Diverged
from handgrad.train.run import BaseRun, Moment, batch_sharding, host, open_checkpoints
from handgrad.train.state import LM_HEADER, LMProgress, TrainState


class LMRun(BaseRun):
    """One language model: its batches and validation windows placed on the devices, its state, its checkpoints.

    With more than one device (or process) every batch is split over all of them by rows, and each process
    builds only the rows of its own devices."""

    def __init__(self, config: LMConfig, corpus: text.Corpus, *, log: Callable[[str], None] = print,
                 checkpoints: Checkpoints | None = None, at: Callable[[Moment, int], None] | None = None):
        super().__init__(log=log, checkpoints=checkpoints, at=at)
        self.config, self.corpus, self.length = config, corpus, config.seq_len + 1
        for split, ids in (("train", corpus.train), ("validation", corpus.val)):
            if ids.size < self.length:
                raise TrainError(f"--seq-len {config.seq_len} needs {self.length} bytes, but the {split} text has "
                                 f"{ids.size}")
        self.sharding = batch_sharding(config.batch_size)
        self.programs = lm_model.programs(config.trajectory())
        count = config.val_batches * config.batch_size
        self.val_ids = text.windows(corpus.val, text.val_starts(count, corpus.val.size, self.length), self.length)
        rows = self.val_ids.reshape(config.val_batches, config.batch_size, self.length)
        self.val = [self.shard(batch.__getitem__) for batch in rows]

    def shard(self, rows: Callable[[slice], np.ndarray]) -> jax.Array:
        """The ``(batch_size, seq_len + 1)`` batch whose rows ``rows(slice)`` gives, split over the devices: each
        device's rows are built where it is (one device: all of them)."""
        shape = (self.config.batch_size, self.length)
        if self.sharding is None:
            return jnp.asarray(rows(slice(None)))
        return jax.make_array_from_callback(shape, self.sharding, lambda index: rows(index[0]))

    def batch(self, step: int) -> jax.Array:
        """The training batch of ``step``: windows at :func:`~handgrad.train.text.batch_starts` of the seed and step."""
        cfg = self.config
        starts = text.batch_starts(cfg.seed, step, cfg.batch_size, self.corpus.train.size, self.length)
        return self.shard(lambda index: text.windows(self.corpus.train, starts[index], self.length))

    def evaluate(self, params: Any) -> float:
        """The mean next-byte cross-entropy (nats) over the validation windows."""
        return float(np.mean([host(self.programs.loss(params, ids)) for ids in self.val], dtype=np.float64))

    def initial_state(self) -> tuple[TrainState, LMProgress]:
        fresh = self.programs.fresh()
        params, opt_state = self.put((fresh.params, fresh.opt_state))
        return TrainState(params, opt_state, fresh.key), LMProgress()

    def resume_state(self) -> tuple[TrainState, LMProgress]:
        state, record = self.restored()
        progress = LMProgress.from_json(record)
        self.log(f"resumed from step {progress.step} in {self.checkpoints.directory}")
        return state, progress

    def sample(self, state: TrainState, length: int, temperature: float) -> str:
        """``length`` bytes generated after the first ``seq_len`` bytes of the validation text, as printable text."""
        prompt = self.put(self.corpus.val[:self.config.seq_len].astype(np.int32))
        key = jax.random.wrap_key_data(self.put(np.asarray(state.key)))
        return lm_model.printable(host(lm_model.sampler(length, temperature)(state.params, prompt, key)))


def fit(run: LMRun, state: TrainState, progress: LMProgress, bar: Callable[..., Any]) -> tuple[TrainState, LMProgress]:
    """Trains from ``state`` and ``progress`` to ``--steps``: stretches of steps that end where a validation or a
    checkpoint is due; returns where it ended."""
    cfg = run.config
    key = jax.random.wrap_key_data(run.put(np.asarray(state.key)))  # the step's; the model has no dropout
    shown = bar(total=cfg.steps, initial=progress.step, desc="steps")
    while progress.step < cfg.steps:
        end = _next_stop(progress.step, cfg, run.checkpoints is not None)
        start, params, opt_state, each = time.perf_counter(), state.params, state.opt_state, []
        for step in range(progress.step, end):
            params, opt_state, metrics = run.programs.step(params, opt_state, run.batch(step), key)
            each.append(host(metrics["loss"]))
            shown.update(1)
        run.at("stretch", end)
        losses = np.asarray(each)
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise Diverged(f"non-finite loss ({losses[bad[0]]}) at step {progress.step + int(bad[0]) + 1}; training "
                           f"stopped, {run.where_saved()}")
        state = state._replace(params=params, opt_state=opt_state)
        progress = progress.advance(losses, time.perf_counter() - start)
        shown.set_postfix(bpc=f"{np.mean(losses) / math.log(2):.3f}")
        if end % cfg.eval_every == 0 or end == cfg.steps:
            val_loss = run.evaluate(state.params)
            run.at("evaluate", end)
            progress = progress.validated(val_loss)
            run.log(progress.history[-1].format())
        if end % cfg.checkpoint_every == 0 or end == cfg.steps:
            run.save(state, progress)
    shown.close()
    if run.checkpoints is not None:
        run.checkpoints.wait()
    return state, progress


def _next_stop(step: int, config: LMConfig, checkpoints: bool) -> int:
    """The first step after ``step`` at which a validation, a checkpoint or the end is due."""
    every = (config.eval_every, config.checkpoint_every) if checkpoints else (config.eval_every,)
    return min(config.steps, *((step // n + 1) * n for n in every))


def signature(config: LMConfig, corpus: text.Corpus) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: the model, its training, the text, the devices."""
    return {"model": "transformer", **config.signature(), "data": corpus.signature(), "devices": jax.device_count()}


def train(config: LMConfig, *, log: Callable[[str], None] = print, bar: Callable[..., Any] | None = None,
          at: Callable[[Moment, int], None] | None = None) -> dict[str, Any]:
    """Runs ``handgrad train --model transformer`` and returns what ``metrics.json`` holds (and ``params``).

    Raises as :func:`handgrad.train.command.train` does: TrainError, DataError or CheckpointError before any
    training; Diverged; OutputError; CheckpointMissed.
    """
    started = time.perf_counter()
    config.check()
    if jax.process_count() > 1 and config.checkpoint_dir:
        raise TrainError("--checkpoint-dir runs in a single process only")
    for flag, directory in (("--out", config.out), ("--checkpoint-dir", config.checkpoint_dir)):
        if directory and jax.process_index() == 0:
            require_writable(flag, directory)
    corpus = text.stdlib()
    checkpoints = open_checkpoints(config.checkpoint_dir, signature(config, corpus), config.resume, log)
    run = LMRun(config, corpus, log=log, checkpoints=checkpoints, at=at)
    log(f"{corpus.signature()}; {len(run.val_ids)} validation windows of {run.length} bytes")
    state, progress = run.start(config.resume)
    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(state.params))
    log(f"transformer: {config.layers} block{'s' * (config.layers != 1)}, d_model {config.d_model}, "
        f"{config.heads} heads, context {config.seq_len} bytes, {count} parameters; AdamW, lr {config.lr:g}, "
        f"batch {config.batch_size}, {config.steps} steps; {jax.device_count()} device(s) in "
        f"{jax.process_count()} process(es)")
    log(LM_HEADER)
    for row in progress.history:
        log(row.format())
    state, progress = fit(run, state, progress, bar or functools.partial(tqdm, disable=True))
    summary = _summary(config, run, progress, count)
    if config.sample:
        summary["sample"] = run.sample(state, config.sample, config.temperature)
        log(f"sample ({config.sample} bytes at temperature {config.temperature:g}, seed {config.seed}) after the "
            f"first {config.seq_len} bytes of {corpus.val_files[0]}:\n{summary['sample']}")
    summary["seconds"] = time.perf_counter() - started
    log(f"done in {summary['seconds']:.1f}s")
    summary["params"] = state.params
    _write(summary, config, run, log)
    if run.missed is not None:
        where = f"its parameters are in {config.out}" if config.out else "pass --out to keep its parameters"
        raise CheckpointMissed(f"{run.missed}; training finished without checkpoints from then on, and {where}")
    return summary


def _summary(config: LMConfig, run: LMRun, progress: LMProgress, count: int) -> dict[str, Any]:
    """The run's record: the config, the text, the history, and the final numbers beside the bigram baseline's."""
    final = progress.history[-1]
    bigram = text.bigram_bits(text.bigram_log_probs(run.corpus.train), run.val_ids)
    run.log(f"validation {final.val_bits:.4f} bits/char after {final.step} steps (final training loss "
            f"{final.train_loss:.4f} nats); the bigram baseline (add-one counts of the train split) has "
            f"{bigram:.4f} bits/char on the same {run.val_ids.shape[0] * config.seq_len} bytes")
    return {"model": "transformer", "config": dataclasses.asdict(config),
            "data": run.corpus.describe(), "devices": jax.device_count(), "processes": jax.process_count(),
            "jax": jax.__version__, "parameters": count, "history": list(progress.history),
            "final_train_loss": final.train_loss, "val_loss": final.val_loss, "val_bits_per_char": final.val_bits,
            "bigram_val_bits_per_char": bigram, "beats_bigram": final.val_bits < bigram,
            "train_seconds": progress.seconds}


def _write(summary: dict[str, Any], config: LMConfig, run: LMRun, log: Callable[[str], None]) -> None:
    """``metrics.json``, ``params.npz`` and ``bits.png`` into ``--out`` (process 0 only)."""
    if not config.out or jax.process_index() != 0:
        return
    try:
        outputs.write_files(summary, config.out)
        if config.plots:
            from handgrad.train import plots

            plots.bits_per_char(summary["history"], f"{config.out}/bits.png", summary["bigram_val_bits_per_char"])
    except OSError as e:
        last = run.where_saved() if run.checkpoints is not None else None
        raise OutputError(f"could not write to --out {config.out} after training ({e.strerror or e}); "
                          + outputs.rescue(summary, last)) from None
    log(f"wrote metrics.json, params.npz{' and bits.png' if config.plots else ''} to {config.out}")
