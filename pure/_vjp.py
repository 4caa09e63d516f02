"""The one way pure registers a hand-written backward: ``custom_vjp`` + ``defvjp`` + ``jit``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


def hand_written(fwd: Callable[..., tuple[Any, Any]], bwd: Callable[..., tuple], *, static: int = 0) -> Callable:
    """The op whose forward is ``fwd(*args)[0]`` and whose VJP is ``bwd``.

    ``fwd(*args) -> (out, residuals)`` and ``bwd(*settings, residuals, g) -> cotangents`` are the
    pair ``jax.custom_vjp`` expects. The first ``static`` arguments are hashable settings (an axis,
    a rate, a dtype): nondifferentiable, and static under ``jit``. The result is jitted, so an
    eager call compiles once per shape. (Not ``inline=True``: inlined, a Python-scalar argument
    would reach the backward as a bare literal instead of an array.)
    """
    def primal(*args: Any) -> Any:
        return fwd(*args)[0]

    primal.__name__ = primal.__qualname__ = fwd.__name__.removesuffix("_fwd")
    primal.__doc__ = fwd.__doc__
    op = jax.custom_vjp(primal, nondiff_argnums=tuple(range(static)))
    op.defvjp(fwd, bwd)
    return jax.jit(op, static_argnums=tuple(range(static)))
