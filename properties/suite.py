"""Every law applied to every row of the table (properties.table) it fits, and the optimizer laws, as Hypothesis tests.

An op law fits every row if it is universal (:data:`properties.law.UNIVERSAL`), else the rows
that name it; each row runs its own law object (a gate row's routing rule is its own).
``property_test(name)`` returns a zero-argument callable that runs one property under the
active Hypothesis profile, the profile's examples shared among the rows it fits, and returns
how many examples each row got; the pytest suite and ``handgrad verify --properties`` both call
it. One test per property (not per op) keeps handgrad-ci's 100 examples a property within the
time budget: Hypothesis spends ~10 ms drawing an example, jit ~0 once compiled.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from properties import laws
from properties.law import OPTIMIZER_LAWS, UNIVERSAL, Law, OptimizerLaw
from properties.op import Op
from properties.table import OPS

_MIN_PER_OP = 10


def law_of(op: Op, name: str) -> Law | None:
    """The law object named ``name`` that ``op`` runs: a universal one, or the one its row names."""
    return next((law for law in (*UNIVERSAL, *op.laws) if law.name == name), None)


def ops_for(prop: str, ops: Sequence[Op] = OPS) -> tuple[Op, ...]:
    """The rows of ``ops`` property ``prop`` fits."""
    return tuple(op for op in ops if law_of(op, prop) is not None)


OPTIMIZER: dict[str, OptimizerLaw] = {law.name: law for law in OPTIMIZER_LAWS}
PROPERTIES: dict[str, tuple[str, ...]] = {  # every property -> what it runs on (rows, or the optimizer's subject)
    **{law.name: tuple(op.name for op in ops_for(law.name))
       for law in (*UNIVERSAL, *(law for op in OPS for law in op.laws))},
    **{law.name: (law.subject,) for law in OPTIMIZER_LAWS},
}


def _run(name: str, examples: int, body: Callable[[st.DataObject], None]) -> int:
    """``body`` under the active profile with ``examples`` examples (on top of it); returns how many ran."""
    count = [0]

    @settings(max_examples=examples)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        count[0] += 1
        body(data)

    run.__name__ = run.__qualname__ = name
    run()
    return count[0]


def property_test(prop: str, ops: Op | Sequence[Op] | None = None) -> Callable[[], dict[str, int]]:
    """A callable running property ``prop`` under the active Hypothesis profile.

    ``ops`` is one row (e.g. your own op), several, or None for every row of the table the
    property fits. The profile's ``max_examples`` (N) is shared among them: each op gets its
    own Hypothesis run of ``max(⌈N/ops⌉, 10)`` examples, so every op is exercised and shrinks
    on its own. An optimizer law runs N examples on its own. The callable returns the number of
    examples each op (or the optimizer law's subject) ran.
    """
    if prop in OPTIMIZER:
        law = OPTIMIZER[prop]
        return lambda: {law.subject: _run(prop, settings().max_examples, law)}
    chosen = list(ops_for(prop) if ops is None else [ops] if isinstance(ops, Op) else ops)
    missing = [op.name for op in chosen if law_of(op, prop) is None]
    if missing or not chosen:
        raise ValueError(f"property {prop!r} fits none of {missing or 'the rows given'}")
    per_op = max(math.ceil(settings().max_examples / len(chosen)), _MIN_PER_OP)

    def call() -> dict[str, int]:
        return {op.name: _run(f"{prop}[{op.name}]", per_op, lambda data, op=op: law_of(op, prop)(op, data))
                for op in chosen}

    return call


@dataclasses.dataclass(frozen=True)
class Result:
    prop: str
    ops: int
    examples: int
    seconds: float
    status: str


def run_all(progress: Callable[[str], None] = lambda _: None, ops: Sequence[Op] = OPS,
            optimizers: bool = True) -> list[Result]:
    """Runs every property on every op of ``ops`` it fits, then (with ``optimizers``) the optimizer laws;
    one :class:`Result` per property run."""
    results = []
    for prop in PROPERTIES:
        fitting = ops_for(prop, ops) if prop not in OPTIMIZER else ()
        if not fitting and not (prop in OPTIMIZER and optimizers):
            continue
        progress(prop)
        start = time.perf_counter()
        try:
            counts = property_test(prop, fitting or None)()
            examples, status = sum(counts.values()), "ok"
        except laws.PropertyViolation as e:
            examples, status = 0, "FAIL: " + e.headline
        results.append(Result(prop, len(fitting) or 1, examples, time.perf_counter() - start, status))
    return results
