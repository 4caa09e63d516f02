"""A deadline on a check that cannot be interrupted: one daemon thread per process calls back when it passes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class Watchdog:
    """One daemon thread that calls ``fire`` when an armed deadline passes. It is started before the interpreter
    shuts down (:func:`handgrad.audit.recorded.record_this_process`): Python 3.12 starts no thread in an atexit
    callback."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._fire: Callable[[], None] = lambda: None
        threading.Thread(target=self._run, daemon=True, name="handgrad-record-watchdog").start()

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                elif time.monotonic() >= self._deadline:
                    self._deadline = None
                    self._fire()
                else:
                    self._cond.wait(self._deadline - time.monotonic())

    @contextlib.contextmanager
    def armed(self, seconds: float | None, fire: Callable[[], None]) -> Iterator[None]:
        """``fire`` is called if the block is still running after ``seconds`` (None: never)."""
        if seconds is None:
            yield
            return
        with self._cond:
            self._deadline, self._fire = time.monotonic() + seconds, fire
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None
                self._cond.notify()


_watchdogs: list[Watchdog] = []  # at most one a process, started on first use


def watchdog() -> Watchdog:
    if not _watchdogs:
        _watchdogs.append(Watchdog())
    return _watchdogs[0]
