"""Example inputs of the table's rows: numpy draws cast once and transferred (nothing to compile)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def array(x: Any, dtype: Any) -> jax.Array:
    return jax.device_put(np.asarray(x).astype(dtype))  # cast in numpy and transfer: nothing to compile


def normal(rng: np.random.Generator, dtype: Any, *shape: int, scale: float = 1.0) -> jax.Array:
    return array(scale * rng.standard_normal(shape), dtype)


def labels(rng: np.random.Generator, n: int, c: int) -> jax.Array:
    return array(rng.integers(0, c, n), np.int32)


def raw_key(rng: np.random.Generator) -> jax.Array:
    """A raw uint32 PRNGKey (stackable by numpy); typed keys are tested in tests/."""
    return jax.device_put(rng.integers(0, 2**32, 2, dtype=np.uint32))


def with_zeros(rng: np.random.Generator, dtype: Any) -> tuple:
    """One (4, 3) array with two entries exactly 0: on the kink of relu, leaky_relu and |x|."""
    x = rng.standard_normal((4, 3))
    x[0, 0] = x[2, 1] = 0.0
    return (array(x, dtype),)
