"""Training checkpoints for ``handgrad train``, written with orbax (the ``train`` extra).

A checkpoint is a pytree of arrays (the run's ``TrainState``) and a JSON record (its
``Progress`` and the run's signature). orbax writes each into a temporary directory and
renames it when complete, so a process killed mid-write leaves the previous checkpoint whole
(and the next run in the directory removes the unfinished one).
The newest ``keep`` are kept; one whose files are damaged later (truncated by a disk fault
or a partial copy) is skipped on restore, moved aside and named, and the next older one used.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from reference.oracle.report import said


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run; the message is one line."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permission lost, any OSError on the way): the step, the
    directory, the operating system's error and the last good checkpoint, in one line."""

    def __init__(self, directory: str, step: int, cause: BaseException, last_good: int | None):
        self.directory, self.step, self.cause, self.last_good = directory, step, cause, last_good
        os_error = _os_error(cause)
        why = f"[Errno {os_error.errno}] {os_error.strerror}" if os_error is not None and os_error.errno \
            else said(cause, 300)
        last = f"the last good checkpoint is step {last_good}" if last_good is not None else "no checkpoint was written"
        super().__init__(f"could not write the checkpoint of step {step} to {directory} ({why}); {last}")


class Checkpoints:
    """The checkpoints of one run in ``directory``, the newest ``keep`` of them kept."""

    def __init__(self, directory: str, signature: dict[str, Any], *, keep: int = 2,
                 log: Callable[[str], None] | None = None):
        import orbax.checkpoint as ocp

        _route_orbax_logging(log)
        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        self.signature = signature
        # Written in the foreground: an MLP's state takes milliseconds, and a failed write then raises here, once,
        # instead of in orbax's background threads (a disk-full run printed 18 tracebacks that way).
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        for name in _remove_partial(self.directory):  # one run writes here at a time: a torn write is a stopped run's
            (log or (lambda _: None))(f"removed {name}, a checkpoint write that a stopped run left unfinished")
        self._last_good: int | None = self._manager.latest_step()
        self._closed = False

    def latest(self) -> int | None:
        """The newest checkpoint's step, or None (after waiting for a save in flight)."""
        if self._closed:  # a write failed: the manager is closed, and the last good step is known
            return self._last_good
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
        with _closed_loop_callbacks_dropped():  # from the start: a write in flight may end before orbax raises
            try:
                self._manager.save(step, args=args.Composite(state=args.StandardSave(host),
                                                              record=args.JsonSave(snapshot)))
                self._manager.wait_until_finished()
            except Exception as e:  # disk full, permission lost: whatever orbax wraps the OSError in
                _settle(self._manager)
                self._closed = True
                _remove_partial(self.directory)
                raise CheckpointWriteError(self.directory, step, e, self._last_good) from None
        self._last_good = step

    def wait(self) -> None:
        """Blocks until every save started has been written and renamed into place."""
        if not self._closed:
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
                _require_same_run(self.directory, self.signature, step, record)
                tree = self._manager.restore(step, args=args.Composite(state=args.StandardRestore(abstract)))["state"]
            except CheckpointError:
                raise
            except Exception as e:  # a damaged file fails in many ways: JSON, zarr, a missing file
                damaged[step] = said(e, 300)
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

def _require_same_run(directory: str, signature: dict[str, Any], step: int, record: dict[str, Any]) -> None:
    theirs = record.get("signature", {})
    diffs = [f"{k} is {theirs.get(k)!r} there but {v!r} here" for k, v in signature.items()
             if theirs.get(k) != v]
    if diffs:
        raise CheckpointError(f"the checkpoint in {directory} (step {step}) is from a different run: "
                              + "; ".join(diffs))


def _settle(manager: Any) -> None:
    """After a failed write: lets orbax's writers and tensorstore's writes still in flight finish failing
    (:func:`_closed_loop_callbacks_dropped`), and closes the manager; the writers' errors are logged."""
    for finish in (manager.wait_until_finished, *(t.join for t in _writer_threads()), manager.close):
        try:
            finish()
        except Exception:  # the same failure again, already reported
            pass
    _tensorstore_settled()
    gc.collect()  # asyncio reports a task of the closed loop when it is collected: here, to the log


def _remove_partial(directory: str) -> list[str]:
    """Removes the temporary directories of writes that did not finish (orbax renames them when done)."""
    names = [name for name in (os.listdir(directory) if os.path.isdir(directory) else [])
             if ".orbax-checkpoint-tmp" in name]
    for name in names:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    return names


def _writer_threads() -> list[threading.Thread]:
    """orbax's background writer threads still running."""
    return [t for t in threading.enumerate() if "SignalingThread" in type(t).__name__ and t.is_alive()]


SETTLE = 120.0  # seconds at most waited for the writes in flight after a failed one: a guard against one that hangs


def _tensorstore_settled() -> bool:
    """Waits until every tensorstore future alive is ready and has run its callbacks (False if SETTLE passed first):
    tensorstore runs a future's callbacks in the order they were added, so the one added here runs last."""
    import tensorstore as ts

    futures = [f for f in gc.get_objects() if isinstance(f, ts.Future)]
    ran = threading.Semaphore(0)
    for future in futures:
        future.add_done_callback(lambda _: ran.release())
        future.force()
    deadline = time.monotonic() + SETTLE
    return all(ran.acquire(timeout=max(0.0, deadline - time.monotonic())) for _ in futures)


def _into_closed_loop(error: BaseException | None) -> bool:
    """Whether ``error`` is asyncio's refusal of a callback into an event loop already closed."""
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and any(
        frame.f_code.co_name == "call_soon_threadsafe" for frame, _ in traceback.walk_tb(error.__traceback__))


@contextlib.contextmanager
def _closed_loop_callbacks_dropped() -> Iterator[None]:
    """``sys.unraisablehook``, for the block, drops :func:`_into_closed_loop` errors and hands on every other.

    orbax gathers a save's writes in an event loop of its own and closes it when the first write fails; each write
    still in flight then ends in a tensorstore thread, whose callback into the closed loop raises "Event loop is
    closed", which Python's hook prints as a bare traceback, whenever the write ends: seconds later under load."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _into_closed_loop(unraisable.exc_value):
            previous(unraisable)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        if sys.unraisablehook is hook:  # one set meanwhile by someone else stays
            sys.unraisablehook = previous


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind an exception (orbax wraps it, sometimes twice)."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


class _OneLine(logging.Handler):
    """orbax's and absl's log records, each as one line through handgrad's own log."""

    def __init__(self, log: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        first = (record.getMessage().strip().splitlines() or [""])[0]
        self.log(f"orbax: {first[:200]}")


def _route_orbax_logging(log: Callable[[str], None] | None) -> None:
    """absl's logger (which orbax writes to) and asyncio's (which reports orbax's failed writer tasks) stop
    reaching stderr by themselves; their warnings and errors go through ``log``, one line each, or nowhere when
    there is none."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        logger.propagate = False
        for handler in [h for h in logger.handlers if isinstance(h, _OneLine | logging.NullHandler)]:
            logger.removeHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.addHandler(_OneLine(log) if log is not None else logging.NullHandler())
