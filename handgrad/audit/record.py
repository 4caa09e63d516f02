"""Recording the hand-written rules a program runs, to check them at its end, at the inputs it ran them with.

A :class:`Recorder` wraps ``jax.custom_vjp.__call__`` and ``jax.custom_jvp.__call__`` while it is started.
Each call is reduced to a key (the rule, its defining file:line, the shapes and dtypes of its arguments, its
static values); the first call of each key is kept as a :class:`Call`, with the arguments concrete where the
call was eager; where it was traced (``jit``, ``grad``, ``vmap``), its arrays are read when its program first
runs (:func:`_read_when_run`), else kept as shapes and dtypes. Later calls of the same key only count.

The recorder changes no value the recorded run computes (the one thing it adds to a traced program is that
read): whatever goes wrong while recording is itself recorded (a :class:`Call` that cannot be replayed, with the
reason) and the call proceeds as it would have.

:func:`check` turns the calls into the audit's rows: a rule with concrete arguments is checked there, one
with abstract ones on the audit's draws of that shape; a rule that cannot be replayed (it closes over a
tracer, or takes a traced static argument) is a ``skipped`` row with the reason, never dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from handgrad.audit import calls
from handgrad.audit.checks import TIMEOUT, Row, run_check
from handgrad.audit.config import FunctionConfig
from handgrad.audit.discover import Rule
from handgrad.audit.inputs import DRAWS, Inputs, from_shapes
from handgrad.audit.watchdog import CheckTimedOut, watchdog

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
    ran: bool = False  # whether its traced arrays were read as its program ran (:func:`_read_when_run`)


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
        """The call's key (:func:`~handgrad.audit.calls.bound`); the first call of a key is kept, later ones
        counted."""
        fun = calls.unwrapped(rule.fun)
        module = getattr(fun, "__module__", None) or "?"
        qualname = getattr(fun, "__qualname__", None) or type(fun).__name__
        if module.partition(".")[0] in JAX_PACKAGES and not self.include_jax:
            self.jax_rules.add(f"{module}:{qualname}")
            return
        b = calls.bound(rule, args, kwargs)
        with self._lock:
            known = self.calls.get(b.key)
            if known is not None:
                known.calls += 1
        if known is not None:  # counted; its arrays read here if no earlier call's program has run yet
            if known.fn is not None and not known.ran:
                _read_when_run(known, [b.leaves[i] for i in b.arrays])
            return
        call = _first_call(rule, kind, b, f"{module}:{qualname}", qualname)
        with self._lock:
            self.calls.setdefault(b.key, call)

    def _failed(self, rule: Any, kind: str, why: str) -> None:
        fun = calls.unwrapped(getattr(rule, "fun", rule))
        name = f"{getattr(fun, '__module__', '?')}:{getattr(fun, '__qualname__', repr(fun))}"
        with self._lock:
            self.calls.setdefault((name, why), Call(name, kind, calls.defined(fun), "?", None, (), why))


def _first_call(rule: Any, kind: str, b: calls.Bound, name: str, qualname: str) -> Call:
    """The kept call: its arguments (concrete where they were, :func:`~handgrad.audit.calls.kept`) and a replay
    that calls the rule with its static values in place, or why there can be none."""
    import jax

    why = calls.unreplayable(rule, b.positional, b.static, b.kwargs)
    values = tuple(calls.kept(b.leaves[i]) for i in b.arrays)

    def replay(*xs: Any) -> Any:
        filled = list(b.leaves)
        for i, x in zip(b.arrays, xs, strict=True):
            filled[i] = x
        given = iter(jax.tree_util.tree_unflatten(b.treedef, filled))
        return rule(*[b.positional[i] if i in b.static else next(given) for i in range(len(b.positional))])

    replay.__name__ = qualname
    no_float = not any(calls.is_float(b.leaves[i]) for i in b.arrays)
    call = Call(f"{name}({b.signature})", kind, calls.defined(calls.unwrapped(rule.fun)), calls.site(),
                None if why else replay, values, why or ("no float array argument" if no_float else ""),
                x64=bool(jax.config.read("jax_enable_x64")))
    if not why:
        _read_when_run(call, [b.leaves[i] for i in b.arrays])
    return call


def _read_when_run(call: Call, leaves: list) -> None:
    """A call traced under jit, vmap or grad (a solver's inner rule, a training step's) has no values when recorded:
    they are read when its program first runs (:func:`_tap`), so that it is checked where it ran (a converged
    solve), not at draws of its shapes. Left to the draws where a leaf cannot be read so (a key), where they would
    exceed what an eager call keeps (:data:`~handgrad.audit.calls.KEPT` entries), or where the program never
    runs."""
    import jax

    late = [k for k, v in enumerate(call.arrays) if isinstance(v, jax.ShapeDtypeStruct)]
    if not late or not all(calls.readable(leaves[k]) for k in late) or \
            sum(int(np.prod(leaves[k].shape)) for k in late) > calls.KEPT:
        return

    def ran(*values: Any) -> None:
        if call.ran:  # the first run's values; later runs (each training step) only pass by
            return
        arrays = list(call.arrays)
        for k, v in zip(late, values, strict=True):
            arrays[k] = np.array(v, copy=True)
        call.arrays, call.ran = tuple(arrays), True

    _tap(ran)(*[jax.lax.stop_gradient(leaves[k]) for k in late])  # its output unused: only the callback stays


def _tap(read: Callable[..., None]) -> Callable:
    """The identity, calling ``read`` on its arguments each time its program runs. Under vmap, on the batch's first
    element only: a vmapped :func:`jax.debug.callback` is unrolled once per element."""
    import jax
    from jax.custom_batching import custom_vmap

    @custom_vmap
    def tap(*xs: Any) -> tuple:
        jax.debug.callback(read, *xs)
        return xs

    @tap.def_vmap
    def _(axis_size: int, batched: Sequence[bool], *xs: Any) -> tuple:
        tap(*[x[0] if b else x for x, b in zip(xs, batched, strict=True)])  # itself again: vmap of vmap
        return xs, tuple(batched)

    return tap


GRACE = 10.0  # seconds a timed-out check has to reach Python again before its process is ended


def check(calls: Sequence[Call], checks: Sequence[str], seed: int = 0,
          progress: Callable[[str], None] = lambda _: None, timeout: float | None = None,
          overrun: Callable[[list[Row]], None] | None = None, done: frozenset[tuple[str, str]] = frozenset()
          ) -> list[Row]:
    """Each call's checks as the audit's rows; a call that cannot be replayed is one ``skipped`` row.

    A check still running after ``timeout`` seconds is interrupted (at its next Python bytecode) and is a
    ``timeout`` row; the next check runs. One stuck in a single call for ``max(GRACE, timeout)`` seconds more
    cannot be: ``overrun`` is called, from another thread, with the rows so far and a ``timeout`` row last, and
    must end the process.
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
                late = Row(name, call.kind, check_name, TIMEOUT, f"still running after {timeout} s",
                           f"called at {call.site}", timeout or 0.0)
                rows.append(_timed(lambda: run_check(rule, check_name, FunctionConfig(), seed, given=given), late,
                                   timeout, lambda late=late: overrun(rows + [late]) if overrun else None))
    return rows


def _timed(run: Callable[[], Row], late: Row, timeout: float | None, overrun: Callable[[], None]) -> Row:
    """``run``'s row; ``late`` where it ran past ``timeout``: interrupted, or its interruption turned into an error
    of the code under check (a host callback's). ``overrun`` where it could not be interrupted."""
    try:
        with watchdog().interrupting(timeout, overrun, grace=GRACE if timeout is None else max(GRACE, timeout)
                                     ) as deadline:
            row = run()
    except CheckTimedOut:
        return late
    return late if deadline.passed else row


def _inputs(call: Call, seed: int) -> list[Inputs]:
    """The recorded arguments, once; or the audit's draws of their shapes where any was abstract."""
    import jax.numpy as jnp

    site = f"; called at {call.site}"
    if all(isinstance(a, np.ndarray) for a in call.arrays):
        signature = call.rule[call.rule.rindex("(") + 1:-1]
        when = " (read as its compiled program ran)" if call.ran else ""
        return [Inputs(tuple(jnp.asarray(a) for a in call.arrays), "recorded", signature + when + site)]
    drawn = [from_shapes(call.arrays, draw, seed) for draw in range(DRAWS)]
    return [dataclasses.replace(d, described=d.described + site) for d in drawn]
