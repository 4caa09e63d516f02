"""Training checkpoints for ``handgrad train``, written with orbax (the ``train`` extra).

A checkpoint is a pytree of arrays (params, optimizer state, PRNG key data, ...) and a JSON
record (step, epoch, data-order seed, the run's signature, the history so far). orbax
writes each into a temporary directory and renames it when complete, so a process killed
mid-write leaves the previous checkpoint whole.
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
        """The newest complete checkpoint's step, or None (after waiting for a save in flight)."""
        self.wait()
        return self._manager.latest_step()

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

    def restore(self, like: Any) -> tuple[Any, dict[str, Any]]:
        """The newest checkpoint as ``(tree, record)``, ``tree`` shaped like ``like``.

        Raises CheckpointError, naming the difference, when the checkpoint was written by a
        run with another signature (data set, model shape, optimiser, ...).
        """
        self.wait()
        step, args = self.latest(), self._ocp.args
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        record = self._manager.restore(step, args=args.Composite(record=args.JsonRestore()))["record"]
        theirs = record.get("signature", {})
        diffs = [f"{k} is {theirs.get(k)!r} there but {v!r} here"
                 for k, v in self.signature.items() if theirs.get(k) != v]
        if diffs:
            raise CheckpointError(f"the checkpoint in {self.directory} (step {step}) is from a different run: "
                                  + "; ".join(diffs))
        abstract = jax.tree_util.tree_map(self._ocp.utils.to_shape_dtype_struct, like)
        try:
            tree = self._manager.restore(step, args=args.Composite(state=args.StandardRestore(abstract)))["state"]
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"cannot restore the checkpoint in {self.directory} (step {step}): "
                                  f"{str(e).splitlines()[0]}") from None
        return tree, record
