"""Recording another command (``handgrad audit --record CMD``): its Python processes load a sitecustomize that
records from the moment they import jax (a :class:`~handgrad.audit.record.Recorder`), checks at exit, and writes
rows to a file of their own; :func:`collected` reads them back, one row per rule and check.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

from handgrad.audit.checks import PRIORITY, Row
from handgrad.audit.record import Recorder, check
from handgrad.audit.watchdog import watchdog

DIRECTORY = "HANDGRAD_RECORD_DIR"  # the environment variables the recorded processes read
CHECKS = "HANDGRAD_RECORD_CHECKS"
SEED = "HANDGRAD_RECORD_SEED"
TIMEOUT = "HANDGRAD_RECORD_TIMEOUT"
SITECUSTOMIZE = '''"""handgrad audit --record: records the rules this process runs (from handgrad.audit.recorded)."""
import os
import sys

if os.environ.get("HANDGRAD_RECORD_DIR"):
    import importlib.machinery
    import importlib.util

    _here = os.path.dirname(os.path.abspath(__file__))
    _spec = importlib.machinery.PathFinder.find_spec(  # the sitecustomize this one shadows, if any, runs first
        "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
    if _spec is not None and _spec.loader is not None:
        _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
    from handgrad.audit.recorded import record_this_process

    record_this_process()
'''


@dataclasses.dataclass(frozen=True)
class Recording:
    """What the processes of a recorded command wrote."""

    rows: list[Row]
    jax_rules: list[str]  # JAX's own rules that were called: counted, not checked
    processes: int
    seconds: float  # time spent recording, over all processes
    overran: bool = False  # a check ran past its time limit and ended its process: the rest is not yet checked


def prepare(directory: str, checks: Sequence[str], seed: int, timeout: float = 60.0) -> dict[str, str]:
    """Writes the sitecustomize into ``directory``; returns the environment a recorded command runs with."""
    with open(os.path.join(directory, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # handgrad's own root
    path = [directory, here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), DIRECTORY: directory, CHECKS: ",".join(checks),
            SEED: str(seed), TIMEOUT: str(timeout)}


def record_this_process() -> None:
    """Starts recording once this process imports jax; at exit, checks and writes ``<pid>.json``."""
    import atexit
    import importlib.abc
    import importlib.util
    import sys

    def begin() -> None:
        recorder = Recorder()
        recorder.start()
        watchdog()  # its thread, now: none can start once the interpreter is shutting down
        atexit.register(_finish, recorder)

    class AfterJax(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name != "jax":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.loader is not None:
                load = spec.loader.exec_module

                def exec_module(module: Any) -> None:
                    load(module)
                    begin()

                spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    if "jax" in sys.modules:
        begin()
    else:
        sys.meta_path.insert(0, AfterJax())


def _finish(recorder: Recorder) -> None:
    """At exit: the recorded rules checked, their rows written; a check past its time limit writes the rows so far
    and ends the process (the command is run again for the rest, :func:`collected` says whether)."""
    import json

    recorder.stop()
    checks = tuple(os.environ[CHECKS].split(","))
    path = os.path.join(os.environ[DIRECTORY], f"{os.getpid()}-{time.time_ns()}.json")  # pids recur across runs
    done = _done(os.environ[DIRECTORY])

    def write(rows: list[Row], overran: bool) -> None:  # whole or not at all: another process may be reading
        with open(path + ".part", "w") as f:
            json.dump({"rows": [r.as_json() for r in rows], "jax_rules": sorted(recorder.jax_rules),
                       "seconds": recorder.seconds, "overran": overran}, f)
        os.replace(path + ".part", path)

    def overrun(rows: list[Row]) -> None:
        write(rows, True)
        os._exit(0)  # the check cannot be stopped, and this process was exiting: end it here

    timeout = float(os.environ.get(TIMEOUT, "60"))
    write(check(list(recorder.calls.values()), checks, int(os.environ.get(SEED, "0")), timeout=timeout,
                overrun=overrun, done=done), False)


def _done(directory: str) -> frozenset[tuple[str, str]]:
    """The (rule, check) pairs that earlier runs of the command already wrote rows for."""
    import json

    pairs = set()
    for name in os.listdir(directory):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                pairs.update((r["rule"], r["check"]) for r in json.load(f)["rows"])
    return frozenset(pairs)


RUNS = 20  # runs of a recorded command at most, each after a check that ran past its time limit


def settled(path: str) -> None:
    """Marks a process's rows as taken in, so that a process that overran is not counted again."""
    import json

    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if data["overran"]:
            with open(path, "w") as f:
                json.dump({**data, "overran": False}, f)


def collected(directory: str) -> Recording:
    """The rows every recorded process wrote into ``directory``."""
    import json

    rows: list[Row] = []
    jax_rules: set[str] = set()
    files = sorted(f for f in os.listdir(directory) if f.endswith(".json"))
    seconds, overran = 0.0, False
    for name in files:
        with open(os.path.join(directory, name)) as f:
            data = json.load(f)
        rows += [Row(**r) for r in data["rows"]]
        jax_rules.update(data["jax_rules"])
        seconds += data["seconds"]
        overran |= data["overran"]
    return Recording(merged(rows), sorted(jax_rules), len(files), seconds, overran)


def merged(rows: Sequence[Row]) -> list[Row]:
    """One row per (rule, check), the worst, in first-seen order: processes (pytest-xdist's workers) that ran
    the same rule each checked it."""
    kept: dict[tuple[str, str], Row] = {}
    for r in rows:
        old = kept.get((r.rule, r.check))
        if old is None or PRIORITY.index(r.status) < PRIORITY.index(old.status):
            kept[(r.rule, r.check)] = r
    return list(kept.values())
