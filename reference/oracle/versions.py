"""Ways of evaluating fn: the call as made, or its float64 copy, as a function of the differentiable leaves."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle.programs import jit_or_eager
from reference.oracle.tolerance import FLOAT64, Precision
from reference.oracle.trees import Flat, Split, kind, outputs


class Float64:
    """x64 on, and standard promotion: the float64 copies meet the function's own float32 constants."""

    def __enter__(self) -> None:
        self._x64, self._promotion = jax.enable_x64(True), jax.numpy_dtype_promotion("standard")
        self._x64.__enter__()
        self._promotion.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._promotion.__exit__(*exc)
        self._x64.__exit__(*exc)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: Any) -> None:
        return None


@dataclasses.dataclass
class Version:
    """``fn`` at one set of argument dtypes: the call as made, or its float64 copy."""

    split: Split
    fn: Callable  # of the differentiable leaves, returning the list of float/complex outputs
    x64: bool  # evaluate inside Float64()
    precision: Precision = FLOAT64  # what it computes in
    compiled: Callable | None = None
    _at: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, fn: Callable, split: Split, x64: bool = False) -> Version:
        return cls(split, outputs(split.over_diff(fn)), x64)

    def context(self) -> Any:
        return Float64() if self.x64 else _Nothing()

    def at_flat(self, flat: Flat) -> Callable:
        """fn's outputs as a function of the flat vector of its leaves (:class:`Flat`), jitted (eager where fn
        branches on values): one callable per layout, so the stages that evaluate fn share one compilation."""
        layout = (tuple(flat.shapes), tuple(flat.dtypes))
        if layout not in self._at:
            def outputs_at(x: jax.Array) -> list:
                return self.fn(*flat.leaves_of(x))
            self._at[layout] = jit_or_eager(outputs_at)
        return self._at[layout]

    def vjp(self, cotangents: Sequence[list], leaves: Sequence[Any] | None = None) -> tuple[list, list[list]]:
        """The outputs, and the VJP for each cotangent: one linearisation, compiled once per version (an
        eager one for a function that reads concrete values)."""
        leaves = list(self.split.diff_leaves() if leaves is None else leaves)
        cotangents = [list(c) for c in cotangents]
        with self.context():
            if self.compiled is None:
                self.compiled = jax.jit(vjps(self.fn))
            try:
                return self.compiled(leaves, cotangents)
            except jax.errors.JAXTypeError:  # concretization errors: fn branches on values
                return vjps(self.fn)(leaves, cotangents)


def vjps(fn: Callable) -> Callable:
    """``(leaves, cotangents) -> (outputs, [VJP for each cotangent])``, one linearisation."""
    def run(leaves: list, cotangents: list) -> tuple[list, list]:
        out, pull = jax.vjp(fn, *leaves)
        return out, [list(pull(c)) for c in cotangents]
    return run


def to64(x: Any) -> Any:
    k = kind(x)
    if k is None:
        return x
    return jax.device_put(np.asarray(x, np.complex128 if k == "complex" else np.float64))  # a transfer, no compile


def canonical(x: Any) -> Any:
    """What JAX makes of a leaf when it is passed in: numpy float64 becomes float32 with x64 off."""
    if kind(x) is None:
        return x
    return x if isinstance(x, jax.Array) else jnp.asarray(x)
