"""Running the checks in a worker process, each under a time limit.

A JAX computation cannot be interrupted from Python, so the checks run in a worker process
(spawned: a fresh interpreter, no inherited JAX state). The parent waits for each row at most
``timeout`` seconds; a worker that overruns is killed, its row is "timeout", and a new worker
takes the next check. A worker that dies (out of memory, a crash in XLA) gives an oracle error.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Iterator
from typing import Any

from handgrad.audit.checks import CHECKS, TIMEOUT, Row
from handgrad.audit.config import AuditConfig
from handgrad.audit.discover import Discovery
from handgrad.compilation import ask_quick_compilation

START_TIMEOUT = 120.0  # seconds a fresh worker may take to import JAX and the target


@dataclasses.dataclass(frozen=True)
class Options:
    target: str
    config: AuditConfig
    seed: int = 0
    x64: bool = False
    timeout: float = 60.0
    checks: tuple[str, ...] = CHECKS


def serve(conn: Any, options: Options) -> None:
    """The worker: discovers the target as the parent did, then answers (rule, check) requests."""
    if options.x64:
        import jax

        jax.config.update("jax_enable_x64", True)  # this process's own state: it exists to run the audit
    from handgrad.audit.checks import run_check, where
    from handgrad.audit.discover import discover
    from reference.oracle.report import said

    found = discover(options.target, options.config.include, options.config.exclude)
    rules = {r.name: r for r in found.rules}
    conn.send("ready")
    while (request := conn.recv()) is not None:
        name, check = request
        try:
            row = run_check(rules[name], check, options.config.for_rule(name), options.seed)
        except Exception as e:  # a bug of the audit's own: a row that says where, and the worker goes on
            rule = rules[name]
            row = Row(name, rule.kind, check, "oracle error", f"{said(e)} at {where(e)}", "", 0.0)
        conn.send(row)


class _Worker:
    def __init__(self, options: Options):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, options), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(START_TIMEOUT) or self.conn.recv() != "ready":
            self.stop()
            raise RuntimeError(f"the audit worker did not start within {START_TIMEOUT:.0f} s")

    def ask(self, name: str, check: str, timeout: float) -> Row | str:
        """The row, or why there is none: "timeout" or "died"."""
        self.conn.send((name, check))
        try:
            if self.conn.poll(timeout):
                return self.conn.recv()
        except (EOFError, OSError):
            return "died"
        return "timeout" if self.process.is_alive() else "died"

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


def run(discovery: Discovery, options: Options, progress: Callable[[str], None] = lambda _: None) -> Iterator[Row]:
    """Yields one row per (rule, check), in the discovery's order."""
    ask_quick_compilation()
    worker: _Worker | None = None
    try:
        for rule in discovery.rules:
            for check in options.checks:
                progress(f"{rule.name} {check}")
                if worker is None:
                    worker = _Worker(options)
                start = time.perf_counter()
                answer = worker.ask(rule.name, check, options.timeout)
                if isinstance(answer, Row):
                    yield answer
                    continue
                code = worker.process.exitcode
                worker.stop()
                worker = None
                seconds = time.perf_counter() - start
                if answer == "timeout":
                    yield Row(rule.name, rule.kind, check, TIMEOUT, f"still running after {options.timeout:.0f} s "
                              f"(--timeout)", "", seconds)
                else:
                    yield Row(rule.name, rule.kind, check, "oracle error", f"the worker process died (exit code "
                              f"{code}): out of memory, or a crash in XLA", "", seconds)
    finally:
        if worker is not None:
            worker.conn.send(None)
            worker.process.join(5)
            worker.stop()
