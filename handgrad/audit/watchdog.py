"""A deadline on a check: one daemon thread per process raises :class:`CheckTimedOut` in the check when it passes,
and calls a fallback where the check is stuck in one call that Python cannot interrupt."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator


class CheckTimedOut(BaseException):
    """Raised inside a check that ran past its time limit (:meth:`Watchdog.interrupting`). A BaseException: the
    ``except Exception`` of the code under check does not swallow it."""


def _raise_in(thread: int, exception: type[BaseException] | None) -> bool:
    """Schedules ``exception`` in ``thread``, raised at its next Python bytecode (None clears one scheduled and not
    yet raised): CPython's ``PyThreadState_SetAsyncExc``. Whether one thread had it scheduled."""
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(exception)
                                                      if exception is not None else None) == 1


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
    def interrupting(self, seconds: float | None, fallback: Callable[[], None], grace: float) -> Iterator[Deadline]:
        """The block under a time limit: past ``seconds``, the deadline has passed (``Deadline.passed``) and
        :class:`CheckTimedOut` is raised in the block at its next Python bytecode (a compilation or a kernel that
        is running ends first; a host callback it lands in may turn it into its own error, so read ``passed``).
        Where the block is still running ``grace`` seconds later (stuck in one call), ``fallback`` is called from
        the watchdog's thread: it must end the process. At most one CheckTimedOut is raised, none after the block."""
        deadline = Deadline()
        if seconds is None:
            yield deadline
            return
        thread = threading.get_ident()

        def fire() -> None:  # on the watchdog's thread, holding its lock: next, the fallback
            deadline.passed = True
            deadline.scheduled = _raise_in(thread, CheckTimedOut)
            self._deadline, self._fire = time.monotonic() + grace, fallback

        def disarm() -> None:
            with self._cond:
                self._deadline = None
                if deadline.scheduled:
                    _raise_in(thread, None)  # scheduled, but the block ended first
                self._cond.notify()

        with self._cond:
            self._deadline, self._fire = time.monotonic() + seconds, fire
            self._cond.notify()
        try:
            try:
                yield deadline
            finally:
                disarm()
        except CheckTimedOut:  # raised inside the block, or in disarm before it took the lock: disarm once more
            disarm()
            raise


@dataclasses.dataclass
class Deadline:
    """Whether the time limit of :meth:`Watchdog.interrupting` passed, and a CheckTimedOut was scheduled."""

    passed: bool = False
    scheduled: bool = False


_watchdogs: list[Watchdog] = []  # at most one a process, started on first use


def watchdog() -> Watchdog:
    if not _watchdogs:
        _watchdogs.append(Watchdog())
    return _watchdogs[0]
