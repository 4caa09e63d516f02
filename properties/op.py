"""A row of the op table (:class:`Op`): one op and everything the checkers need to know about it; and the laws' types
(:class:`Law`, :class:`OptimizerLaw`), whose instances live in :mod:`properties.law`."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from hypothesis import strategies as st


def _row_site() -> str:
    """``file:line`` of the ``Op(...)`` being constructed: the first caller outside this file and the
    dataclass's generated ``__init__``."""
    frame = sys._getframe(1)
    while frame.f_back is not None and (frame.f_code.co_filename in (__file__, "<string>")
                                        or frame.f_code.co_name == "__init__"):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


@dataclasses.dataclass(frozen=True, eq=False)
class Op:
    """One op under test. Every field is a keyword in the table (``properties.table``)."""

    name: str  # "module.op", as in pure/ and reference/
    fn: Callable  # the op, its settings bound (see :func:`bind`)
    ref: Callable  # the same function in plain jax.numpy / jax.nn / optax, differentiated by JAX
    example: Callable[[np.random.Generator, Any], tuple] | None  # (rng, dtype) -> arguments, special points included
    args: st.SearchStrategy  # argument tuples from the whole domain, kinks included
    smooth: st.SearchStrategy | None = None  # argument tuples a margin from every kink (None: args is smooth)
    laws: tuple[Law, ...] = ()  # the laws beyond the universal ones that fit it (properties.law)
    second_order: str | None = None  # None: its backward is differentiable (verify checks order 2); else why not
    defined_at: str = dataclasses.field(default_factory=_row_site, compare=False)  # the row, as file:line

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def smooth_args(self) -> st.SearchStrategy:
        return self.args if self.smooth is None else self.smooth

    @property
    def unbound(self) -> Callable:
        """The op without the settings :func:`bind` fixed (for a law that varies them)."""
        return self.fn.func if isinstance(self.fn, functools.partial) else self.fn

    @property
    def settings(self) -> dict[str, Any]:
        """The settings :func:`bind` fixed."""
        return dict(self.fn.keywords) if isinstance(self.fn, functools.partial) else {}


def bind(op: Callable, **settings: Any) -> Callable:
    """``op`` with keyword settings fixed, named after it (the name shows in reports)."""
    bound = functools.partial(op, **settings)
    bound.__name__ = bound.__qualname__ = f"{op.__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"
    return bound

# A law compares two float32 evaluations to a few ulps (tolerance.FLOAT32.agree); a GPU runs float32 matmuls as TF32
# by default (10 mantissa bits), further apart than that on both sides. Laws hold the rule's mathematics, so their
# products run at full float32, inside the law only.
FULL_FLOAT32 = "float32"


@dataclasses.dataclass(frozen=True, eq=False)
class Law:
    """One law of backprop for an op row."""

    name: str  # the law function's name in properties.laws
    draw: Callable[[Op, st.DataObject], tuple]  # the inputs for this row
    check: Callable[[Op, tuple], None]  # the law applied to op.fn and those inputs; raises PropertyViolation
    meant_for: tuple[str, ...] = ("",)  # the rows it fits, by name prefix ("" is every row)

    def fits(self, op: Op) -> bool:
        return op.name.startswith(self.meant_for)

    def __call__(self, op: Op, data: st.DataObject) -> None:
        with jax.default_matmul_precision(FULL_FLOAT32):
            self.check(op, self.draw(op, data))


@dataclasses.dataclass(frozen=True, eq=False)
class OptimizerLaw:
    """A law that holds an optimizer (and penalty) to an equivalence; it needs no op row."""

    name: str
    subject: str  # what it holds to the law, in words
    draw: Callable[[st.DataObject], tuple]
    check: Callable[[tuple], None]

    def __call__(self, data: st.DataObject) -> None:
        with jax.default_matmul_precision(FULL_FLOAT32):
            self.check(self.draw(data))
