"""The cotangents a check pulls back: standard normal draws, each output's part scaled to its own size.

A VJP for a cotangent ``c`` sums one part per output, ``Σₖ Jₖᵀcₖ``. Drawn at one scale, an output whose
part is small (an auxiliary loss of weight 1e-5 beside an activation) adds less to the sum than the
tolerance of the large part, and a rule that drops its cotangent passes. So the cotangent of each output
whose part is below SMALL of the largest is scaled by ``max_j ‖J_jᵀc_j‖ / ‖Jₖᵀcₖ‖``: that part is then as
large as the largest, and a lost part is an error of order one. Differences along a few random
directions measure the parts (the first draw's), never the rule under check; every draw gets the same
scales.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle import tolerance
from reference.oracle.differences import step_scales
from reference.oracle.trees import Flat, random_like
from reference.oracle.versions import Version

# A scale never takes a cotangent entry past this fraction of its dtype's largest value (float16: 65504): the
# probes' sums must stay finite.
HEADROOM = 1e-6
DIRECTIONS = 3  # random directions the parts are measured along
RESOLVED = 8.0  # a part is measured where its differences exceed their round-off this many times
SETTLED = 0.25  # and where its slope moves by at most this fraction when the step is quartered
SMALL = 1e-2  # parts below this fraction of the largest are scaled up to it; larger ones are left as drawn


def drawn(shapes: Sequence[Any], rng: np.random.Generator, count: int) -> list[list[np.ndarray]]:
    """``count`` standard normal cotangents for outputs of ``shapes``."""
    return [random_like(shapes, rng) for _ in range(count)]


def part_sizes(call: Version, cotangent: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Per output, the size of its part of the VJP, ``‖Jₖᵀcₖ‖``, measured by central differences of
    ``Re⟨cₖ, fₖ⟩`` along DIRECTIONS random directions (never by the rule under check: a rule that drops a part
    would measure it as 0). Each direction moves every entry by a normal draw times its step scale, so
    ``E⟨Jₖᵀcₖ, v⟩² = ‖Jₖᵀcₖ‖²`` in those units. NaN where the differences cannot tell: below RESOLVED times
    their round-off (an output that does not move, or moves below an ulp), or unsettled (a slope that changes by
    more than SETTLED when the step is quartered: a jump or a kink within reach)."""
    flat = Flat(call.split.diff_leaves())
    floored, _ = step_scales(flat)
    h = tolerance.narrowest(call.split.diff_leaves()).step
    with call.context():
        f = call.at_flat(flat)
        work = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
        slopes, noise = [], []
        for _ in range(DIRECTIONS):
            v = rng.standard_normal(flat.size) * floored
            (coarse, coarse_noise), (fine, fine_noise) = (_slopes(f, flat.x, v, step, cotangent, work)
                                                          for step in (h, h / 4))
            settled = np.abs(coarse - fine) <= SETTLED * np.abs(fine) + 2 * (coarse_noise + fine_noise)
            slopes.append(np.where(settled, fine, np.nan))
            noise.append(fine_noise)
    size = np.sqrt(np.mean(np.square(slopes), axis=0))
    return np.where(size > RESOLVED * np.max(noise, axis=0), size, np.nan)


def _slopes(f: Callable, x: np.ndarray, v: np.ndarray, h: float, cotangent: list[np.ndarray],
            work: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per output, the central difference of ``Re⟨cₖ, fₖ⟩`` along ``v`` at step ``h``, and its round-off bound."""
    up, down = f(jnp.asarray(x + h * v, work)), f(jnp.asarray(x - h * v, work))
    row, bound = [], []
    for c, a, b in zip(cotangent, up, down, strict=True):
        eps = float(np.finfo(np.asarray(a).dtype).eps)
        a, b, c = (np.asarray(t).astype(np.complex128) for t in (a, b, c))
        row.append(float(np.real(np.sum(c * (a - b)))) / (2 * h))
        bound.append(eps * float(np.sum(np.abs(c) * (np.abs(a) + np.abs(b)))) / (2 * h))
    return np.array(row), np.array(bound)


def scales(sizes: np.ndarray, cotangent: list[np.ndarray]) -> np.ndarray:
    """Per output, the factor its cotangent is multiplied by: for a part below SMALL of the largest, the largest
    over its own; 1 for any other, and for a part not measured (NaN); and never so large that the cotangent
    leaves its dtype's range (HEADROOM)."""
    usable = np.isfinite(sizes) & (sizes > 0)
    if np.sum(usable) < 2:
        return np.ones(len(sizes))
    largest = np.max(sizes[usable])
    small = usable & (sizes < SMALL * largest)
    factor = np.where(small, largest / np.where(small, sizes, 1.0), 1.0)
    for k, c in enumerate(cotangent):
        top = float(np.max(np.abs(c), initial=0.0))
        if top > 0:
            factor[k] = min(factor[k], HEADROOM * float(np.finfo(np.asarray(c).dtype).max) / top)
    return factor


def balanced(call: Version, cotangents: list[list[np.ndarray]], rng: np.random.Generator) -> list[list[np.ndarray]]:
    """The cotangents with each output's part of the VJP as large as the largest part (module docstring)."""
    if len(cotangents[0]) < 2:
        return cotangents
    factor = scales(part_sizes(call, cotangents[0], rng), cotangents[0])
    if np.all(factor == 1):
        return cotangents
    return [[(np.asarray(c) * f).astype(np.asarray(c).dtype) for c, f in zip(ct, factor, strict=True)]
            for ct in cotangents]
