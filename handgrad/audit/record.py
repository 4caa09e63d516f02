"""Recording the hand-written rules a program runs, to check them at its end, at the inputs it ran them with.

A :class:`Recorder` wraps ``jax.custom_vjp.__call__`` and ``jax.custom_jvp.__call__`` while it is started.
Each call is reduced to a key (the rule, its defining file:line, the shapes and dtypes of its arguments, its
static values); the first call of each key is kept as a :class:`Call`, with the arguments concrete where the
call was eager and as shapes and dtypes where it ran under a transformation (``jit``, ``vmap``). Later calls
of the same key only count.

The recorder never changes the recorded run: whatever goes wrong while recording is itself recorded (a
:class:`Call` that cannot be replayed, with the reason) and the call proceeds as it would have.

:func:`check` turns the calls into the audit's rows: a rule with concrete arguments is checked there, one
with abstract ones on the audit's draws of that shape; a rule that cannot be replayed (it closes over a
tracer, or takes a traced static argument) is a ``skipped`` row with the reason, never dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from handgrad.audit.checks import PRIORITY, Row, run_check
from handgrad.audit.config import FunctionConfig
from handgrad.audit.discover import Rule, filled
from handgrad.audit.inputs import DRAWS, Inputs, from_shapes, short_dtype

KEPT = 10**6  # entries of an eager argument kept concrete; a larger one is kept as its shape and drawn
CLOSURE_DEPTH = 2  # closures of closures searched for tracers
JAX_PACKAGES = ("jax", "jaxlib")  # their own rules (jax.nn.relu, jnp.logaddexp) are counted, not checked


@dataclasses.dataclass
class Call:
    """The first call of one (rule, shapes, dtypes, static values), and how many calls shared it."""

    rule: str  # module:qualname(f32[3,4], f32[4]): the rule, and the signature it was called at
    kind: str  # custom_vjp or custom_jvp
    defined: str  # file:line of the rule's function
    site: str  # file:line of the first frame outside JAX that called it
    fn: Callable | None  # the replay: fn(*arrays) calls the rule with its static values in place
    arrays: tuple  # the arrays to differentiate: numpy arrays where concrete, jax.ShapeDtypeStruct where not
    why: str = ""  # why it cannot be replayed; "" when it can
    calls: int = 1
    x64: bool = False  # whether x64 was on at the call: the check runs as the call did


@dataclasses.dataclass
class Recorder:
    """Records calls of custom_vjp and custom_jvp functions between :meth:`start` and :meth:`stop`.

    ``include_jax``: also record JAX's own rules, which are otherwise counted in ``jax_rules`` only.
    """

    include_jax: bool = False
    calls: dict[tuple, Call] = dataclasses.field(default_factory=dict)
    jax_rules: set[str] = dataclasses.field(default_factory=set)
    seconds: float = 0.0  # time spent recording, summed over calls
    _saved: list = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _inside: threading.local = dataclasses.field(default_factory=threading.local)

    def start(self) -> None:
        import jax

        if self._saved:
            raise RuntimeError("the recorder is already started")
        for cls in (jax.custom_vjp, jax.custom_jvp):
            original = cls.__call__
            self._saved.append((cls, original))
            cls.__call__ = self._wrapped(original, cls.__name__)  # type: ignore[method-assign]

    def stop(self) -> None:
        for cls, original in reversed(self._saved):
            cls.__call__ = original  # type: ignore[method-assign]
        self._saved.clear()

    @contextlib.contextmanager
    def recording(self) -> Iterator[Recorder]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def _wrapped(self, original: Callable, kind: str) -> Callable:
        def __call__(rule: Any, *args: Any, **kwargs: Any) -> Any:
            if not getattr(self._inside, "busy", False):  # a rule called inside a rule: the outer one is checked
                start = time.perf_counter()
                self._inside.busy = True
                try:
                    self._record(rule, kind, args, kwargs)
                except Exception as e:  # the recorder never changes the run: its own failure is a Call that says so
                    self._failed(rule, kind, f"could not be recorded: {type(e).__name__}: {e}")
                finally:
                    self.seconds += time.perf_counter() - start
                try:
                    return original(rule, *args, **kwargs)
                finally:
                    self._inside.busy = False
            return original(rule, *args, **kwargs)

        return __call__

    def _record(self, rule: Any, kind: str, args: tuple, kwargs: dict) -> None:
        import jax

        fun = _unwrapped(rule.fun)
        module = getattr(fun, "__module__", None) or "?"
        qualname = getattr(fun, "__qualname__", None) or type(fun).__name__
        if module.partition(".")[0] in JAX_PACKAGES and not self.include_jax:
            self.jax_rules.add(f"{module}:{qualname}")
            return
        bound = inspect.signature(rule.fun).bind(*args, **kwargs)
        bound.apply_defaults()
        positional = list(bound.args)
        static = set(getattr(rule, "nondiff_argnums", ()))
        leaves, treedef = jax.tree_util.tree_flatten([a for i, a in enumerate(positional) if i not in static])
        arrays = [i for i, leaf in enumerate(leaves) if hasattr(leaf, "shape") and hasattr(leaf, "dtype")]
        signature = ", ".join(_spec(leaves[i]) for i in arrays)
        fixed = [leaf for i, leaf in enumerate(leaves) if i not in arrays]
        fixed += [positional[i] for i in sorted(static) if i < len(positional)]
        key = (_defined(fun), qualname, signature, treedef, tuple(_described(v) for v in fixed),
               tuple(_described(v) for part in _parts(rule) for v in _captured(part)))
        with self._lock:
            if key in self.calls:
                self.calls[key].calls += 1
                return
        why = _unreplayable(rule, positional, static, bound.kwargs)
        values = tuple(_kept(leaves[i]) for i in arrays)

        def replay(*xs: Any) -> Any:
            filled = list(leaves)
            for i, x in zip(arrays, xs, strict=True):
                filled[i] = x
            given = iter(jax.tree_util.tree_unflatten(treedef, filled))
            return rule(*[positional[i] if i in static else next(given) for i in range(len(positional))])

        replay.__name__ = qualname
        call = Call(f"{module}:{qualname}({signature})", kind, _defined(fun), _site(), None if why else replay,
                    values, why or ("" if any(_is_float(leaves[i]) for i in arrays) else "no float array argument"),
                    x64=bool(jax.config.read("jax_enable_x64")))
        with self._lock:
            self.calls.setdefault(key, call)

    def _failed(self, rule: Any, kind: str, why: str) -> None:
        fun = _unwrapped(getattr(rule, "fun", rule))
        name = f"{getattr(fun, '__module__', '?')}:{getattr(fun, '__qualname__', repr(fun))}"
        with self._lock:
            self.calls.setdefault((name, why), Call(name, kind, _defined(fun), "?", None, (), why))


def check(calls: Sequence[Call], checks: Sequence[str], seed: int = 0,
          progress: Callable[[str], None] = lambda _: None, timeout: float | None = None,
          overrun: Callable[[list[Row]], None] | None = None, done: frozenset[tuple[str, str]] = frozenset()
          ) -> list[Row]:
    """Each call's checks as the audit's rows; a call that cannot be replayed is one ``skipped`` row.

    A check still running after ``timeout`` seconds cannot be stopped (JAX cannot be interrupted): ``overrun``
    is called, from another thread, with the rows so far and a ``timeout`` row last, and must end the process.
    ``done`` lists (rule, check) pairs an earlier run already reported, which are not checked again."""
    import jax

    rows: list[Row] = []
    seen: dict[str, int] = {}
    for call in calls:
        seen[call.rule] = seen.get(call.rule, 0) + 1  # one rule built twice (closing over other values): two rows
        name = call.rule + (f" #{seen[call.rule]}" if seen[call.rule] > 1 else "")
        if call.fn is None:
            rows.append(Row(name, call.kind, checks[0], "skipped", f"{call.why} (called at {call.site})",
                            f"recorded at {call.site}", 0.0))
            continue
        rule = Rule(name, call.fn, call.kind, call.fn)
        with jax.enable_x64(call.x64):
            given = _inputs(call, seed)
            for check_name in checks:
                if (name, check_name) in done:
                    continue
                progress(f"{name} {check_name}")
                late = Row(name, call.kind, check_name, "timeout", f"still running after {timeout} s",
                           f"called at {call.site}", timeout or 0.0)
                with _watchdog().armed(timeout, lambda late=late: overrun(rows + [late]) if overrun else None):
                    rows.append(run_check(rule, check_name, FunctionConfig(), seed, given=given))
    return rows


class _Watchdog:
    """One daemon thread that calls ``fire`` when an armed deadline passes. It is started before the interpreter
    shuts down (:func:`record_this_process`): Python 3.12 starts no thread in an atexit callback."""

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


_watchdogs: list[_Watchdog] = []  # at most one a process, started on first use


def _watchdog() -> _Watchdog:
    if not _watchdogs:
        _watchdogs.append(_Watchdog())
    return _watchdogs[0]


def _inputs(call: Call, seed: int) -> list[Inputs]:
    """The recorded arguments, once; or the audit's draws of their shapes where any was abstract."""
    import jax.numpy as jnp

    site = f"; called at {call.site}"
    if all(isinstance(a, np.ndarray) for a in call.arrays):
        signature = call.rule[call.rule.rindex("(") + 1:-1]
        return [Inputs(tuple(jnp.asarray(a) for a in call.arrays), "recorded", signature + site)]
    drawn = [from_shapes(call.arrays, draw, seed) for draw in range(DRAWS)]
    return [dataclasses.replace(d, described=d.described + site) for d in drawn]


def _is_float(leaf: Any) -> bool:
    return getattr(getattr(leaf, "dtype", None), "kind", None) in ("f", "c")  # a key's dtype has no kind


def _spec(leaf: Any) -> str:
    return f"{short_dtype(str(leaf.dtype))}[{','.join(map(str, leaf.shape))}]"


def _kept(leaf: Any) -> Any:
    """A numpy copy of a concrete leaf (a later donation or mutation cannot change it), else its shape."""
    import jax

    if isinstance(leaf, jax.core.Tracer):
        concrete = getattr(leaf, "to_concrete_value", lambda: None)()  # a JVP tracer of an eager grad has one
        if concrete is None:
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
        leaf = concrete
    if np.size(leaf) > KEPT:
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype)
    return np.array(leaf, copy=True)


def _unreplayable(rule: Any, positional: list, static: set[int], kwargs: dict) -> str:
    """Why the rule cannot be called again after the run: "" when it can."""
    import jax

    if kwargs:
        return f"takes keyword-only arguments ({', '.join(kwargs)}), which a replay cannot pass"
    for i in sorted(static):
        if i < len(positional) and any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(
                positional[i])):
            return f"its static argument {i} (nondiff_argnums) was traced, so its value is not known"
    if any(_closes_over_tracer(f, CLOSURE_DEPTH) for f in _parts(rule)):
        return "it closes over a tracer (a value of the transformation it was built in), so it only exists there"
    return ""


def _parts(rule: Any) -> list[Callable]:
    """The functions a rule is made of: its primal, and its fwd and bwd or its jvp."""
    return [f for f in (getattr(rule, name, None) for name in ("fun", "fwd", "bwd", "jvp")) if f is not None]


def _captured(fn: Any) -> list[Any]:
    """What fn closes over, and a functools.partial's bound arguments."""
    values = list(getattr(fn, "args", ())) + list(getattr(fn, "keywords", {}).values())
    fn = _unwrapped(fn)
    return values + [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if filled(c)]


def _described(value: Any) -> str:
    """A value as the recording's key sees it: an array by its shape and dtype (two rules built by one function
    with different arrays are one rule), a function by where it is defined, anything else by its repr."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}{list(value.shape)}"
    if callable(value) and hasattr(_unwrapped(value), "__code__"):
        return _defined(_unwrapped(value))
    return repr(value)[:80]


def _closes_over_tracer(fn: Any, depth: int) -> bool:
    import jax

    for value in _captured(fn):
        if callable(value) and not isinstance(value, type):
            if depth > 0 and _closes_over_tracer(value, depth - 1):
                return True
            continue
        try:
            leaves = jax.tree_util.tree_leaves(value)
        except Exception:  # an object jax cannot flatten: it holds no tracer jax could see
            continue
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            return True
    return False


def _unwrapped(fn: Any) -> Any:
    while callable(getattr(fn, "func", None)) and hasattr(fn, "args"):  # functools.partial
        fn = fn.func
    return inspect.unwrap(fn) if callable(fn) else fn


def _defined(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else "?"


def _site() -> str:
    """The innermost frame outside JAX and this module: where the user's code called the rule."""
    skip = (os.sep + "jax" + os.sep, os.sep + "jaxlib" + os.sep, __file__, os.sep + "contextlib.py",
            os.sep + "functools.py")
    frame = inspect.currentframe()
    while frame is not None and any(s in frame.f_code.co_filename for s in skip):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


# Recording another command (``handgrad audit --record CMD``): its Python processes load a sitecustomize that
# records from the moment they import jax, checks at exit, and writes rows to a file of their own.
DIRECTORY = "HANDGRAD_RECORD_DIR"  # the environment variables the recorded processes read
CHECKS = "HANDGRAD_RECORD_CHECKS"
SEED = "HANDGRAD_RECORD_SEED"
TIMEOUT = "HANDGRAD_RECORD_TIMEOUT"
SITECUSTOMIZE = '''"""handgrad audit --record: records the rules this process runs (from handgrad.audit.record)."""
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
    from handgrad.audit.record import record_this_process

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
        _watchdog()  # its thread, now: none can start once the interpreter is shutting down
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
            json.dump({"rows": [dataclasses.asdict(r) for r in rows], "jax_rules": sorted(recorder.jax_rules),
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
