"""The compiled probes of :class:`~reference.oracle.differences.Differences`: fn moved along one entry or one block.

Each program returns the change of ``φ = Re⟨c, f(x + Δ)⟩`` and a bound on its round-off (:func:`compile_probes`);
each is vmapped over a chunk of probes and jitted once per check, with x, c and f(x) its arguments, never constants
baked into it. :func:`alive` finds the outputs that move at all, whose size bounds a probe's round-off.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle.trees import Flat

# The outputs a probe of one entry reaches are accurate to a few ulps, not to half of one: XLA's transcendental
# functions (jnp.tanh reaches 3.6 ulps; float64 lgamma compiled quickly, more), whose round-off the steps that fit
# the function best would otherwise claim to see through.
FUNCTION_ULPS = 4.0
# How far, in units of each entry's step scale, the inputs move to learn which outputs move at all: beyond every
# probe's step, so that an output that stays put there stays put in every probe.
LIVE_MOVE = 0.25


@dataclasses.dataclass(frozen=True)
class Programs:
    """Each a pair ``(vmapped and jitted, one probe)``: ``entries(x, reference, ct, i, d, floor)``, returning the
    change, its round-off bound and the largest output the move reached (one program for a probe and for the
    floors of :meth:`~Differences.floors`: one compilation fewer per check), and
    ``blocks(x, reference, ct, lo, hi, t, analytic, weights, signed)``. ``exact``: every leaf is the working
    dtype, so a block moves exactly as asked and its analytic change follows from prefix sums on the host."""

    entries: tuple
    blocks: tuple
    exact: bool


def compile_probes(f: Callable, flat: Flat, base: list, work: Any, eps_out: float, noise_floor: float, alive_: float,
                   longer: Callable | None, excess: bool = False) -> Programs:
    """The probes of ``f`` (of the leaves, returning the list of outputs) about the flat vector, and of ``longer``
    (f with its while loops run longer, solvers.py) beside it, whose change is judged instead, its round-off bound
    widened by how far the two runs' changes differ (the stopping error's own change). ``excess``: the last of the
    references is, per output entry, round-off beyond a few ulps of the output (one computed by cancellation)."""
    # Outputs holding inf or NaN (a −inf mask fill, a NaN pad) are compared entry by entry: one that stays so is no
    # change; the rest are subtracted as they are (known when tracing: no cost where all are finite).
    filled = [not bool(np.all(np.isfinite(np.asarray(b)))) for b in base]

    def reduce(out: list, base: list, ct: list, floor: jax.Array, beyond: list | None) -> tuple[jax.Array, jax.Array]:
        """The change of φ and its round-off bound: Σ c·(o − b), and over the outputs that moved Σ |c|·(|o| + |b|),
        plus FUNCTION_ULPS times the largest output that may have moved below one ulp: ``floor``
        (:meth:`~Differences.floors` for an entry; for a block, any output alive), or any output alive where the
        probe moved none (a logsumexp's tail logit may move any below one ulp); and ``beyond``'s round-off of each
        output that moved, FUNCTION_ULPS times, at both ends."""
        s = n = zero = jnp.zeros((), work)
        for k, (c, o, b, nonfinite) in enumerate(zip(ct, out, base, filled, strict=True)):
            d = jnp.where(_unchanged(o, b), 0, o - b) if nonfinite else o - b
            size = (jnp.abs(o).astype(work) + jnp.abs(b).astype(work)) * jnp.abs(c).astype(work)
            if beyond is not None:  # in units of eps_out, as the rest of the bound
                size = size + (2 * FUNCTION_ULPS / eps_out) * beyond[k] * jnp.abs(c).astype(work)
            # One reduction of two operands, so that f is evaluated once per entry (separate sums each recompute
            # it: 2.2x the time of a probe of a 10^7-entry leaf).
            with jax.numpy_dtype_promotion("standard"):  # the oracle's own arithmetic, whatever fn runs under
                both = jnp.promote_types(c.dtype, d.dtype)
            terms = (jnp.real(c.astype(both) * d.astype(both)).astype(work), jnp.where(d != 0, size, 0))
            ds, dn = jax.lax.reduce(tuple(v.ravel() for v in terms), (zero, zero),
                                    lambda p, q: (p[0] + q[0], p[1] + q[1]), (0,))
            s, n = s + ds, n + dn
        hidden = jnp.where(n > 0, floor, alive_)
        return s, (n + FUNCTION_ULPS * hidden) * eps_out + 2 * noise_floor

    def changes(leaves: list, out: list, reference: list, ct: list, floor: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The change of φ and its bound for f's outputs ``out`` at ``leaves`` (or longer's, beside them)."""
        beyond = reference[-1] if excess else None
        s, n = reduce(out, reference[0], ct, floor, beyond)
        if longer is None:
            return s, n
        s_longer, n_longer = reduce(longer(*leaves), reference[1], ct, floor, beyond)
        return s_longer, n_longer + jnp.abs(s_longer - s)

    def coupled(out: list, reference: list, ct: list) -> jax.Array:
        """The largest output that moved, sized at x (2|c||b|: where the probes are, never where a far move lands,
        past a jump)."""
        return functools.reduce(jnp.maximum, [
            jnp.max(jnp.where(_unchanged(o, b) | ~jnp.isfinite(b), 0,
                              2 * jnp.abs(b).astype(work) * jnp.abs(c).astype(work)),
                    initial=0) for c, o, b in zip(ct, out, reference[0], strict=True)],
            jnp.zeros((), work))

    def entry(x, reference, ct, i, d, floor):
        j = jax.lax.iota(jnp.int32, x.shape[0])  # a select, not a scatter: it fuses into f's loop
        leaves = flat.leaves_of(jnp.where(j == i, x + d, x))
        out = f(*leaves)
        return *changes(leaves, out, reference, ct, floor), coupled(out, reference, ct)

    # Leaves that are the working dtype move exactly as asked (to a part in 1e12 of the step), so the analytic
    # change of a block is its prefix sums times t; any other leaf is read back after rounding.
    exact = all(d == work and not c for d, c in zip(flat.dtypes, flat.complex, strict=True))

    def block(x, reference, ct, lo_, hi_, t_, a, weights, signed):
        j = jax.lax.iota(jnp.int32, x.shape[0])
        moved = jnp.where((j >= lo_) & (j < hi_), x + t_ * signed, x)  # the rest exactly x (-0.0 too)
        leaves = flat.leaves_of(moved)
        s, n = changes(leaves, f(*leaves), reference, ct, jnp.asarray(alive_, work))  # floor: any output alive
        if exact:
            return s, n
        actual = jnp.concatenate([_real_parts(v, c).astype(work) for v, c in
                                  zip(leaves, flat.complex, strict=True)]) - x
        moves = actual != 0  # an entry that stays adds 0, whatever its VJP (an inf or NaN one too)
        return (s, n, jnp.sum(jnp.where(moves, a * actual, 0)),
                *jnp.sum(jnp.where(moves[None, :], weights * jnp.abs(actual)[None, :], 0), axis=-1))  # rank explicit

    over_probes = (None, None, None, 0, 0, 0, None, None, None)
    return Programs((jax.jit(jax.vmap(entry, in_axes=over_probes[:6])), entry),
                    (jax.jit(jax.vmap(block, in_axes=over_probes)), block), exact)


def alive(run: Callable, flat: Flat, base: list, cotangent: Sequence[Any], floored: np.ndarray,
          work: Any) -> float:
    """The largest output that moves at all (a mask fill does not), sized where the probes are (2|c||b|). An output
    moves if it changes when the inputs move by LIVE_MOVE of their step scales along pseudo-random signs, either
    way; one that stays put there (a mask fill of −1e9, a constant) is no output a probe moves, and its size is no
    floor for any probe's round-off. ``run``: f's outputs at a flat vector (:meth:`.Version.at_flat`)."""
    signs = 1.0 - 2.0 * ((np.arange(flat.size, dtype=np.uint64) * 2246822519) // 4096 % 2)
    try:
        moved = [run(jnp.asarray(flat.x + m * LIVE_MOVE * signs * floored, work)) for m in (1, -1)]
        live = [~_unchanged(a, b, np) | ~_unchanged(c, b, np)  # in numpy: no program compiled per shape
                for b, a, c in zip(*(map(np.asarray, outs) for outs in (base, *moved)), strict=True)]
    except Exception:  # whatever fn raises that far out (a check of its domain): every output counts as moving
        live = [np.ones(np.shape(b), bool) for b in base]
    return max([float(np.max(np.where(np.asarray(v) & np.isfinite(np.asarray(b)),
                                      2 * np.abs(np.asarray(b) * np.asarray(c)), 0), initial=0.0))
                for b, c, v in zip(base, cotangent, live, strict=True)], default=0.0)


def _unchanged(o: Any, b: Any, xp: Any = jnp) -> Any:
    """Per entry, whether an output is what it was: equal (the same inf too), or NaN both times; ``xp``: jnp (in a
    program) or np (on the host)."""
    return (o == b) | (xp.isnan(o) & xp.isnan(b))


def jit_or_eager(fn: Callable) -> Callable:
    """``jax.jit(fn)``, or fn itself for a function that branches on values."""
    def run(*args: Any) -> Any:
        try:
            return jax.jit(fn)(*args)
        except jax.errors.JAXTypeError:
            return fn(*args)
    return run


def _real_parts(v: jax.Array, is_complex: bool) -> jax.Array:
    v = v.ravel()
    return jnp.concatenate([jnp.real(v), jnp.imag(v)]) if is_complex else v


