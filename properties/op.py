"""A row of the op table: one op and everything the checkers need to know about it."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from hypothesis import strategies as st

if TYPE_CHECKING:
    from properties.law import Law


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
