"""Hypothesis strategies for backprop properties, built on ``hypothesis.extra.numpy``.

Shapes come from a few fixed buckets: jit compiles once per shape, so a strategy that
drew free shapes would recompile on (almost) every example (~150 ms) instead of reusing
a cached executable (~1 ms).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

SHAPES: tuple[tuple[int, ...], ...] = ((4, 3), (2, 5))  # the buckets for elementwise ops
BATCH: tuple[int, int] = (6, 4)  # (N, C) for losses and layers
MLP_SIZES: tuple[int, ...] = (5, 7, 6, 3)  # the bucket for MLP parameter pytrees
MAX_MAGNITUDE = 4.0


def _numpy_dtype(dtype: Any) -> np.dtype:
    # hypothesis knows float16/32/64; bfloat16 is drawn as float32 and rounded.
    d = np.dtype(dtype)
    return np.dtype(np.float32) if d == jnp.bfloat16 else d


def float_arrays(dtype: Any = jnp.float32, shape: Any = None, *, max_magnitude: float = MAX_MAGNITUDE,
                 min_magnitude: float = 0.0) -> st.SearchStrategy[jax.Array]:
    """Finite float arrays (no NaN, inf or subnormal) with ``min_magnitude ≤ |x| ≤ max_magnitude``.

    ``shape`` is a tuple, a strategy of tuples, or None for one of :data:`SHAPES`.
    ``min_magnitude > 0`` keeps every entry away from 0 by that margin.
    """
    np_dtype = _numpy_dtype(dtype)
    exact = lambda v: float(np_dtype.type(v))  # noqa: E731  (hypothesis wants bounds exact at this width)
    kw = dict(width=np_dtype.itemsize * 8, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    if min_magnitude == 0.0:
        elements = st.floats(-exact(max_magnitude), exact(max_magnitude), **kw)
    else:
        magnitudes = st.floats(exact(min_magnitude), exact(max_magnitude), **kw)
        elements = st.tuples(st.sampled_from([-1.0, 1.0]), magnitudes).map(lambda sm: sm[0] * sm[1])
    shapes = st.sampled_from(SHAPES) if shape is None else shape
    # Cast in numpy and transfer: jnp.asarray(a, dtype) would compile a convert per bucket.
    return hnp.arrays(np_dtype, shapes, elements=elements).map(lambda a: jax.device_put(a.astype(dtype)))


def away_from_kinks(dtype: Any = jnp.float32, shape: Any = None, *, margin: float = 0.1) -> st.SearchStrategy:
    """Arrays whose entries all sit at least ``margin`` from 0 (relu, |x|, leaky_relu kinks)."""
    return float_arrays(dtype, shape, min_magnitude=margin)


def with_exact_zeros(dtype: Any = jnp.float32, shape: Any = None) -> st.SearchStrategy[jax.Array]:
    """Arrays with at least one entry exactly 0: ON the kink, for the convention checks."""
    def place(data):
        x, mask = data
        mask = mask.copy()
        mask.flat[0] = True
        return jnp.where(jnp.asarray(mask), jnp.zeros((), dtype), x)

    shapes = st.sampled_from(SHAPES) if shape is None else st.just(shape)
    return shapes.flatmap(lambda s: st.tuples(float_arrays(dtype, s), hnp.arrays(np.bool_, s))).map(place)


def broadcast_pairs(dtype: Any = jnp.float32, base_shape: tuple[int, ...] = SHAPES[0]) -> st.SearchStrategy:
    """``(x, y)`` whose shapes broadcast together, from ``mutually_broadcastable_shapes``.

    Every shape is drawn against the fixed ``base_shape``, so only a bounded set of
    shape pairs (and of compilations) can occur.
    """
    shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, base_shape=base_shape, min_dims=0,
                                               max_dims=len(base_shape), max_side=max(base_shape))
    shapes = shapes.filter(lambda s: np.broadcast_shapes(*s.input_shapes) == base_shape)
    return shapes.flatmap(lambda s: st.tuples(*(float_arrays(dtype, shp) for shp in s.input_shapes)))


def tied_pairs(dtype: Any = jnp.float32, shape: Any = None) -> st.SearchStrategy:
    """``(x, y)`` of one shape with at least one exact tie ``x == y``: ON the max gate's kink."""
    def tie(data):
        x, y, mask = data
        mask = mask.copy()
        mask.flat[0] = True
        return x, jnp.where(jnp.asarray(mask), x, y)

    shapes = st.sampled_from(SHAPES) if shape is None else st.just(shape)
    return shapes.flatmap(lambda s: st.tuples(float_arrays(dtype, s), float_arrays(dtype, s),
                                              hnp.arrays(np.bool_, s))).map(tie)


def labels(n: int = BATCH[0], num_classes: int = BATCH[1]) -> st.SearchStrategy[jax.Array]:
    """Integer labels of shape ``(n,)`` in ``[0, num_classes)``."""
    return hnp.arrays(np.int32, (n,), elements=st.integers(0, num_classes - 1)).map(jnp.asarray)


def classification_batches(dtype: Any = jnp.float32) -> st.SearchStrategy:
    """``(logits (N, C), labels (N,))`` from the fixed :data:`BATCH` bucket."""
    return st.tuples(float_arrays(dtype, BATCH), labels())


def hinge_margin_hits(dtype: Any = jnp.float32) -> st.SearchStrategy:
    """``(scores, labels)`` where some ``s_j − s_y + 1 == 0`` exactly: ON the hinge's kink.

    Scores are multiples of 1/2, so the margin arithmetic is exact in every float dtype.
    """
    n, c = BATCH

    def hit(data):
        halves, y, row, offset = data
        s = halves.astype(np.float64) / 2
        j = (int(y[row]) + 1 + offset) % c
        s[row, j] = s[row, int(y[row])] - 1.0
        return jnp.asarray(s, dtype), jnp.asarray(y)

    return st.tuples(hnp.arrays(np.int32, BATCH, elements=st.integers(-6, 6)),
                     hnp.arrays(np.int32, (n,), elements=st.integers(0, c - 1)),
                     st.integers(0, n - 1), st.integers(0, c - 2)).map(hit)


def prng_keys() -> st.SearchStrategy[jax.Array]:
    """Typed PRNG keys."""
    return st.integers(0, 2**32 - 1).map(jax.random.key)


def mlp_params(dtype: Any = jnp.float32, sizes: tuple[int, ...] = MLP_SIZES, *,
               min_magnitude: float = 0.0) -> st.SearchStrategy[list]:
    """MLP parameter pytrees ``[{"W": (d_in, d_out), "b": (d_out,)}, ...]`` for the fixed ``sizes``.

    ``min_magnitude > 0`` keeps every parameter that far from 0 (e.g. so weight decay has work to do).
    """
    layers = [st.fixed_dictionaries({"W": float_arrays(dtype, (m, n), max_magnitude=1.0, min_magnitude=min_magnitude),
                                     "b": float_arrays(dtype, (n,), max_magnitude=0.5, min_magnitude=min_magnitude)})
              for m, n in zip(sizes[:-1], sizes[1:], strict=True)]
    return st.tuples(*layers).map(list)


def positive_floats(low: float, high: float) -> st.SearchStrategy[float]:
    """Python floats in ``[low, high]``, e.g. learning rates and decay strengths."""
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


def affine_inputs(dtype: Any = jnp.float32) -> st.SearchStrategy:
    """``(x (6, 4), W (4, 3), b (3,))``: one fixed bucket of an affine layer's inputs."""
    return st.tuples(float_arrays(dtype, (6, 4)), float_arrays(dtype, (4, 3)), float_arrays(dtype, (3,)))


def mlp_batches(dtype: Any = jnp.float32) -> st.SearchStrategy:
    """``(params, x, labels)`` for the fixed :data:`MLP_SIZES` (3 classes) and a batch of :data:`BATCH`'s rows."""
    return st.tuples(mlp_params(dtype), float_arrays(dtype, (BATCH[0], MLP_SIZES[0])), labels(num_classes=3))
