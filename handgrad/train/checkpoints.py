"""Training checkpoints for ``handgrad train``, written with orbax (the ``train`` extra).

A checkpoint is a pytree of arrays (the run's ``TrainState``) and a JSON record (its
``Progress`` and the run's signature). orbax writes each into a temporary directory and
renames it when complete, so a process killed mid-write leaves the previous checkpoint whole.
The newest ``keep`` are kept; one whose files are damaged later (truncated by a disk fault
or a partial copy) is skipped on restore, moved aside and named, and the next older one used.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run; the message is one line."""


class Checkpoints:
    """The checkpoints of one run in ``directory``, the newest ``keep`` of them kept."""

    def __init__(self, directory: str, signature: dict[str, Any], *, keep: int = 2):
        import orbax.checkpoint as ocp
        from absl import logging

        logging.set_verbosity(logging.ERROR)  # orbax's INFO/WARNING chatter would interleave with the table

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        self.signature = signature
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest(self) -> int | None:
        """The newest checkpoint's step, or None (after waiting for a save in flight)."""
        self.wait()
        return self._manager.latest_step()

    def has_any(self) -> bool:
        return self.latest() is not None

    def save(self, step: int, tree: Any, record: dict[str, Any]) -> None:
        """Starts writing ``tree`` (arrays only) and ``record`` (JSON) as the checkpoint of ``step``.

        The arrays are copied to host memory and the record to a snapshot first, so the caller
        may donate or change its own at once; the files are written in the background
        (:meth:`wait` joins), one save at a time.
        """
        host = jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)
        snapshot = json.loads(json.dumps({**record, "signature": self.signature}))  # the caller goes on changing it
        args = self._ocp.args
        self._manager.save(step, args=args.Composite(state=args.StandardSave(host), record=args.JsonSave(snapshot)))

    def wait(self) -> None:
        """Blocks until every save started has been written and renamed into place."""
        self._manager.wait_until_finished()

    def restore(self, like: Any) -> tuple[Any, dict[str, Any], list[str]]:
        """The newest checkpoint that reads back whole, as ``(tree, record, skipped)``.

        ``tree`` is shaped like ``like``; ``skipped`` names each newer checkpoint that did not read
        back, and why. Those are moved aside (``damaged-STEP``), so that training on does not
        write over them.

        Raises:
          CheckpointError: naming the difference, when the checkpoint was written by a run with
            another signature (data set, model shape, optimiser, ...); or when none reads back.
        """
        self.wait()
        args = self._ocp.args
        abstract = jax.tree_util.tree_map(self._ocp.utils.to_shape_dtype_struct, like)
        damaged: dict[int, str] = {}
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                record = self._manager.restore(step, args=args.Composite(record=args.JsonRestore()))["record"]
                self._require_same_run(step, record)
                tree = self._manager.restore(step, args=args.Composite(state=args.StandardRestore(abstract)))["state"]
            except CheckpointError:
                raise
            except Exception as e:  # a damaged file fails in many ways: JSON, zarr, a missing file
                damaged[step] = _first_line(e)
                continue
            for bad in damaged:
                os.replace(os.path.join(self.directory, str(bad)), os.path.join(self.directory, f"damaged-{bad}"))
            if damaged:
                self._manager.reload()
            return tree, record, [f"step {bad} (moved to damaged-{bad}): {why}" for bad, why in damaged.items()]
        if not damaged:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        raise CheckpointError(f"no checkpoint in {self.directory} reads back whole: "
                              + "; ".join(f"step {bad}: {why}" for bad, why in damaged.items()))

    def _require_same_run(self, step: int, record: dict[str, Any]) -> None:
        theirs = record.get("signature", {})
        diffs = [f"{k} is {theirs.get(k)!r} there but {v!r} here" for k, v in self.signature.items()
                 if theirs.get(k) != v]
        if diffs:
            raise CheckpointError(f"the checkpoint in {self.directory} (step {step}) is from a different run: "
                                  + "; ".join(diffs))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
