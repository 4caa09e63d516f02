"""The finite-difference engine: changes of ``φ = Re⟨c, fn(x)⟩`` along single entries or signed blocks.

Each probe moves x by ``±h`` and ``±2h`` along one direction, at one or more *levels*: level
k uses the step ``h₀/4ᵏ``, so a function that varies faster than its argument's size
suggests (sin at 10⁶, a positional encoding) is still differenced at a step that fits it.
:mod:`reference.oracle.verdict` judges what comes out.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle.report import said
from reference.oracle.trees import Flat

LEVEL_RATIO = 4.0  # each level's step is a quarter of the one before: Richardson's error drops 256×
CHUNK_BYTES = 2**27  # probes evaluated together: as many as fit in about 128 MB of float64 inputs and outputs
# A function that iterates until its values say stop (a solver) is evaluated this many probes at a time: vmapped over
# several lanes, a while loop runs until every lane stops, and jaxopt's GradientDescent in float32 vmapped over 8
# ridge problems did not finish in 15 minutes (one at a time: 1 ms each).
ITERATIVE_CHUNK = 1
CHEAP = 4096  # inputs and outputs of a function cheap enough to evaluate a whole chunk of probes for a few
# The outputs a probe of one entry reaches are accurate to a few ulps, not to half of one: XLA's transcendental
# functions (jnp.tanh reaches 3.6 ulps; float64 lgamma compiled quickly, more), whose round-off the steps that fit
# the function best would otherwise claim to see through.
FUNCTION_ULPS = 4.0
# How far, in units of each entry's step scale, the inputs move to learn which outputs move at all: beyond every
# probe's step, so that an output that stays put there stays put in every probe.
LIVE_MOVE = 0.25
# Each entry's step along a block is its scale times a random weight in [1 − SPREAD, 1 + SPREAD]: entries swapped,
# reversed or sorted within a block then change its sum by about SPREAD/√3 of their differences.
SPREAD = 0.5


@dataclasses.dataclass
class Probes:
    """Numerical and analytic changes of φ along probes, per unit of the probe, shaped (levels, probes):
    central differences at h (d1) and 2h (d2), one-sided slopes at h and 2h as offsets from the
    analytic value, and the round-off bound of each."""

    d1: np.ndarray
    d2: np.ndarray
    a1: np.ndarray  # what the analytic VJP predicts for d1 and d2
    a2: np.ndarray
    round1: np.ndarray
    round2: np.ndarray
    fwd: np.ndarray  # one-sided (numerical − analytic) at h: forward and backward, and at 2h
    bwd: np.ndarray
    fwd2: np.ndarray
    bwd2: np.ndarray
    side_round: np.ndarray  # round-off bound of a one-sided slope at h
    side_round2: np.ndarray  # and at 2h
    finite: np.ndarray
    jump: np.ndarray  # φ itself jumps within reach: no derivative to check there

    def level(self, k: int | np.ndarray) -> Probes:
        return Probes(**{f.name: getattr(self, f.name)[k] for f in dataclasses.fields(self)})

    def take(self, j: np.ndarray) -> Probes:
        """The probes ``j`` at every level."""
        return Probes(**{f.name: getattr(self, f.name)[:, j] for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True)
class BlockDevice:
    """What block probes read: on the device the analytic VJP, per-entry weights (weights, entries) and each
    entry's signed step scale; on the host the running sums of ``analytic · signed`` and ``weights · |signed|``."""

    analytic: jax.Array
    weights: jax.Array
    signed: jax.Array
    along: np.ndarray
    weighted: np.ndarray
    nonfinite: np.ndarray  # the running count of entries whose analytic · signed is not finite
    contribution: np.ndarray  # |analytic · signed| per entry: what each entry adds to its block's analytic change


@np.errstate(invalid="ignore", divide="ignore", over="ignore")  # NaN and inf are judged, not warned of
def _jumps(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """A change of φ that stays the same size when the step doubles (rows +h, −h, +2h, −2h): a jump."""
    sides = [(np.abs(s[k + 2] - s[k]) < 0.25 * np.abs(s[k])) & (np.abs(s[k]) > 8 * (n[k] + n[k + 2]))
             for k in (0, 1)]
    return sides[0] | sides[1]


class Differences:
    """Finite differences of ``φ = Re⟨c, f(x)⟩`` about x.

    Each evaluation returns, for a displacement Δ of x: ``s = Re⟨c, f(x + Δ) − f(x)⟩`` (outputs
    subtracted first, so an output that does not move contributes exactly 0) and a bound on
    its round-off, ``eps · Σ |c|·(|f(x + Δ)| + |f(x)|)`` over the outputs that moved, plus one
    output's worth for a change too small to move any. x, c and f(x) are arguments of the
    compiled probes, never constants baked into them.

    ``version`` says how to evaluate f: its ``fn`` (of the leaves, returning the list of outputs)
    and its ``context()`` (float64 on, or nothing).
    """

    def __init__(self, version: Any, flat: Flat, cotangent: Sequence[Any], eps_out: float, noise_floor: float = 0.0,
                 base: list | None = None, iterative: bool = False, longer: Callable | None = None):
        self.version, self.flat, self.eps_out = version, flat, eps_out
        self.floored = step_scales(flat)[0]  # each entry's step scale, for _live and floors (a pass over the leaf)
        self.iterative = iterative  # f loops until its values say stop: each probe's cost unknown, batches kept small
        # f with its while loops run longer (solvers.py): differenced instead of f, each probe's round-off bound
        # widened by how far the two runs' changes differ there (the stopping error's own change).
        self.longer = longer
        self.outputs = 0
        with version.context():
            work = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
            self.work = work
            self.x = jnp.asarray(flat.x, work)
            self.ct = [jnp.asarray(c) for c in cotangent]
            f = version.fn

            self.base = base if base is not None else jit_or_eager(lambda x: f(*flat.leaves_of(x)))(self.x)
            self.outputs = sum(int(np.size(b)) for b in self.base)
            # Outputs holding inf or NaN (a −inf mask fill, a NaN pad) are compared entry by entry: one that stays
            # so is no change; the rest are subtracted as they are (known when tracing: no cost where all finite).
            filled = [not bool(np.all(np.isfinite(np.asarray(b)))) for b in self.base]

            def reduce(out: list, base: list, ct: list, floor: jax.Array) -> tuple[jax.Array, jax.Array]:
                """The change of φ and its round-off bound: Σ c·(o − b), and over the outputs that moved
                Σ |c|·(|o| + |b|), plus FUNCTION_ULPS times the largest output that may have moved below one ulp:
                ``floor`` (:meth:`floors` for an entry; for a block, any output alive), or any output alive where
                the probe moved none (a logsumexp's tail logit may move any below one ulp)."""
                s = n = zero = jnp.zeros((), work)
                for c, o, b, nonfinite in zip(ct, out, base, filled, strict=True):
                    d = jnp.where(_unchanged(o, b), 0, o - b) if nonfinite else o - b
                    size = (jnp.abs(o).astype(work) + jnp.abs(b).astype(work)) * jnp.abs(c).astype(work)
                    # One reduction of two operands, so that f is evaluated once per entry (separate sums each
                    # recompute it: 2.2x the time of a probe of a 10^7-entry leaf).
                    terms = (jnp.real(c * d).astype(work), jnp.where(d != 0, size, 0))
                    ds, dn = jax.lax.reduce(tuple(v.ravel() for v in terms), (zero, zero),
                                            lambda p, q: (p[0] + q[0], p[1] + q[1]), (0,))
                    s, n = s + ds, n + dn
                hidden = jnp.where(n > 0, floor, self.alive)
                return s, (n + FUNCTION_ULPS * hidden) * eps_out + 2 * noise_floor

            live = self._live(f, flat, work)
            # The largest output that moves at all (a mask fill does not), sized where the probes are.
            self.alive = max([float(np.max(np.where(np.asarray(v) & np.isfinite(np.asarray(b)),
                                                     2 * np.abs(np.asarray(b) * np.asarray(c)), 0), initial=0.0))
                              for b, c, v in zip(self.base, cotangent, live, strict=True)], default=0.0)
            self.reference = [self.base]
            if longer is not None:
                self.reference.append(jit_or_eager(lambda x: longer(*flat.leaves_of(x)))(self.x))

            def changes(leaves: list, reference: list, ct: list, floor: jax.Array) -> tuple[jax.Array, jax.Array]:
                s, n = reduce(f(*leaves), reference[0], ct, floor)
                if longer is None:
                    return s, n
                s_longer, n_longer = reduce(longer(*leaves), reference[1], ct, floor)
                return s_longer, n_longer + jnp.abs(s_longer - s)

            def entry(x, reference, ct, i, d, floor):
                j = jax.lax.iota(jnp.int32, x.shape[0])  # a select, not a scatter: it fuses into f's loop
                return changes(flat.leaves_of(jnp.where(j == i, x + d, x)), reference, ct, floor)

            def coupled(x, reference, ct, i, d):
                """The largest output that moves when entry i moves by d, sized at x (2|c||b|: where the probes
                are, never where that far move lands, past a jump)."""
                j = jax.lax.iota(jnp.int32, x.shape[0])
                out = f(*flat.leaves_of(jnp.where(j == i, x + d, x)))
                return (functools.reduce(jnp.maximum, [
                    jnp.max(jnp.where(_unchanged(o, b) | ~jnp.isfinite(b), 0,
                                      2 * jnp.abs(b).astype(work) * jnp.abs(c).astype(work)),
                            initial=0) for c, o, b in zip(ct, out, reference[0], strict=True)],
                    jnp.zeros((), work)),)

            # Leaves that are the working dtype move exactly as asked (to a part in 1e12 of the step), so the
            # analytic change of a block is its prefix sums times t; any other leaf is read back after rounding.
            self.exact = all(d == work and not c for d, c in zip(flat.dtypes, flat.complex, strict=True))

            def block(x, reference, ct, lo_, hi_, t_, a, weights, signed):
                j = jax.lax.iota(jnp.int32, x.shape[0])
                moved = jnp.where((j >= lo_) & (j < hi_), x + t_ * signed, x)  # the rest exactly x (-0.0 too)
                leaves = flat.leaves_of(moved)
                s, n = changes(leaves, reference, ct, jnp.asarray(self.alive, work))  # a block's floor: any alive
                if self.exact:
                    return s, n
                actual = jnp.concatenate([_real_parts(v, c).astype(work) for v, c in
                                          zip(leaves, flat.complex, strict=True)]) - x
                moves = actual != 0  # an entry that stays adds 0, whatever its VJP (an inf or NaN one too)
                return (s, n, jnp.sum(jnp.where(moves, a * actual, 0)),
                        *jnp.sum(jnp.where(moves, weights * jnp.abs(actual), 0), axis=-1))

            over_probes = (None, None, None, 0, 0, 0, None, None, None)
            self._entries = (jax.jit(jax.vmap(entry, in_axes=over_probes[:6])), entry, 2)
            self._coupled = (jax.jit(jax.vmap(coupled, in_axes=over_probes[:5])), coupled, 1)
            self._blocks = (jax.jit(jax.vmap(block, in_axes=over_probes)), block, 3)
        self.one_by_one: str | None = None  # why probes are evaluated one at a time, eagerly, if they are
        self._floors: dict[int, float] = {}  # per flat entry, once: the largest output coupled to it (floors)

    def _live(self, f: Callable, flat: Flat, work: Any) -> list[jax.Array]:
        """Per output entry, whether it moves at all when the inputs do: moved by LIVE_MOVE of their step scales
        along pseudo-random signs, both ways. An entry that stays put there (a mask fill of −1e9, a constant) is
        no output a probe moves, and its size is no floor for any probe's round-off."""
        floored = self.floored
        signs = 1.0 - 2.0 * ((np.arange(flat.size, dtype=np.uint64) * 2246822519) // 4096 % 2)
        run = jit_or_eager(lambda x: f(*flat.leaves_of(x)))
        try:
            moved = [run(jnp.asarray(flat.x + m * LIVE_MOVE * signs * floored, work)) for m in (1, -1)]
        except Exception:  # whatever fn raises that far out (a check of its domain): every output counts as moving
            return [jnp.ones(np.shape(b), bool) for b in self.base]
        return [~_unchanged(a, b) | ~_unchanged(c, b) for b, a, c in zip(self.base, *moved, strict=True)]

    def floors(self, index: np.ndarray) -> np.ndarray:
        """Per entry, the size of the largest output coupled to it: one that moves when the entry moves by LIVE_MOVE
        of its step scale, either way. A probe of the entry may move it below one ulp (a softmax's large outputs
        when a tail logit moves), so its rounding bounds the probe's change; an output the entry does not reach (a
        large entry of an elementwise function, a mask fill) is no part of it."""
        new = np.array(sorted({int(i) for i in index} - self._floors.keys()), np.int64)
        if new.size:
            d = LIVE_MOVE * self.floored[new]
            found = self._chunked(self._coupled, [np.concatenate([new, new]), np.concatenate([d, -d])],
                                  [jnp.int32, self.work], ())[0]
            self._floors.update(zip(new.tolist(), np.maximum(found[:new.size], found[new.size:]).tolist(),
                                    strict=True))
        return np.array([self._floors[int(i)] for i in index], np.float64)

    @property
    def chunk(self) -> int:
        """Probes per compiled call: as many as fit in CHUNK_BYTES (one compilation per check)."""
        most = ITERATIVE_CHUNK if self.iterative else 256
        return int(max(min(4, most), min(most, CHUNK_BYTES // max(1, 8 * (self.flat.size + self.outputs)))))

    def block_device(self, analytic: np.ndarray, weights: Sequence[np.ndarray], scale: np.ndarray,
                     rng: np.random.Generator) -> BlockDevice:
        """What every block probe reads, once. Each entry moves by its step scale along the sign of its analytic
        VJP (a pseudo-random sign where that is 0), so that an error shared by many entries (a factor, a sign,
        a transpose) adds up over a block instead of cancelling; and by a random weight of its own in
        [1 − SPREAD, 1 + SPREAD], so that no rearrangement of the entries within a block leaves its change as it
        was (with |x| constant, a bias at its zero init, and gradients of one sign, a block's plain sum cannot see
        two entries swapped). ``weights`` (per entry, e.g. the analytic scale and the rule's allowance) are
        summed against each block's |displacement|. On the device: the analytic VJP, the weights and the signed
        scale; on the host, their running sums, from which a block's analytic change and weighted sums follow
        for exact leaves."""
        pseudo = 1.0 - 2.0 * ((np.arange(self.flat.size, dtype=np.uint64) * 2654435761) // 65536 % 2)
        spread = 1.0 + SPREAD * (2.0 * rng.random(self.flat.size) - 1.0)
        signed = np.where(analytic > 0, 1.0, np.where(analytic < 0, -1.0, pseudo)) * scale * spread
        stacked = np.stack([np.asarray(w, np.float64) for w in weights])
        term, weighted = analytic * signed, stacked * np.abs(signed)
        finite = np.isfinite(term)
        # Running sums of the finite terms, and a running count of the others: a block holding an inf or NaN VJP
        # has a NaN change, and the blocks after it keep theirs.
        sums = (np.concatenate([[0.0], np.cumsum(np.where(finite, term, 0.0))]),
                np.concatenate([np.zeros((len(weights), 1)), np.cumsum(np.where(np.isfinite(weighted), weighted, 0.0),
                                                                       axis=1)], axis=1),
                np.concatenate([[0], np.cumsum(~finite)]))
        with self.version.context():
            analytic_, stacked_, signed_ = (jnp.asarray(v, self.work) for v in (analytic, stacked, signed))
        return BlockDevice(analytic_, stacked_, signed_, *sums, np.abs(term))

    def _chunked(self, program: tuple, columns: Sequence[np.ndarray], dtypes: Sequence[Any],
                 extra: Sequence[Any]) -> list[np.ndarray]:
        compiled, single, _ = program
        chunk, total, outs = self.chunk, len(columns[0]), []
        with self.version.context():
            for start in range(0, total, chunk):
                part = [c[start:start + chunk] for c in columns]
                if self.one_by_one is None:
                    # One shape for every call where fn is cheap (one compilation for every pass of a check); where
                    # it is not, a power of two (a few shapes), not a full chunk of evaluations for a few suspects.
                    cheap = self.flat.size + self.outputs <= CHEAP and not self.iterative
                    size = chunk if cheap else min(chunk, 1 << (len(part[0]) - 1).bit_length())
                    pad = size - len(part[0])
                    try:
                        padded = [jnp.asarray(np.pad(c, (0, pad)), d) for c, d in zip(part, dtypes, strict=True)]
                        res = compiled(self.x, self.reference, self.ct, *padded, *extra)
                        outs.append([np.asarray(r, np.float64)[:len(part[0])] for r in res])
                        continue
                    except (jax.errors.JAXTypeError, NotImplementedError) as e:  # no jit or no vmap of fn
                        self.one_by_one = said(e, 120)
                rows = [single(self.x, self.reference, self.ct, *(jnp.asarray(c[k], d) for c, d in
                                                             zip(part, dtypes, strict=True)), *extra)
                        for k in range(len(part[0]))]
                outs.append([np.array([float(r[m]) for r in rows]) for m in range(len(rows[0]))])
        return [np.concatenate(parts) for parts in zip(*outs, strict=True)]

    @np.errstate(invalid="ignore", divide="ignore", over="ignore")  # NaN and inf are judged, not warned of
    def entry_probes(self, index: np.ndarray, a: np.ndarray, step: float, scale: np.ndarray,
                     levels: Sequence[int]) -> Probes:
        """Probes along single entries of the flat vector, with displacements rounded to each leaf's dtype."""
        flat, n_levels = self.flat, len(levels)
        x = flat.x[index]
        h = np.stack([step * scale[index] / LEVEL_RATIO**k for k in levels])  # (levels, probes)
        deltas = [flat.round_to_leaf((x + m * h).ravel(), np.tile(index, n_levels)).reshape(h.shape) - x
                  for m in (1, -1, 2, -2)]
        at = np.stack(deltas, axis=-1)  # (levels, probes, 4)
        at_index = np.broadcast_to(index[None, :, None], at.shape).ravel()
        floor = np.broadcast_to(self.floors(index)[None, :, None], at.shape).ravel()
        s, n = self._chunked(self._entries, [at_index, at.ravel(), floor], [jnp.int32, self.work, self.work], ())
        s, n = (v.reshape(n_levels, len(index), 4).transpose(2, 0, 1) for v in (s, n))
        dp, dm, d2p, d2m = (np.where(d != 0, d, np.nan) for d in deltas)  # a step lost to rounding: unchecked
        w1, w2 = dp - dm, d2p - d2m
        ak = np.broadcast_to(a[index], h.shape)
        return Probes(d1=(s[0] - s[1]) / w1, d2=(s[2] - s[3]) / w2, a1=ak, a2=ak,
                      round1=(n[0] + n[1]) / np.abs(w1), round2=(n[2] + n[3]) / np.abs(w2),
                      fwd=s[0] / dp - ak, bwd=s[1] / dm - ak, fwd2=s[2] / d2p - ak, bwd2=s[3] / d2m - ak,
                      side_round=n[0] / np.abs(dp) + n[1] / np.abs(dm),
                      side_round2=n[2] / np.abs(d2p) + n[3] / np.abs(d2m),
                      finite=np.all(np.isfinite(s), axis=0) & np.isfinite(w1) & np.isfinite(w2),
                      jump=_jumps(s, n))

    @np.errstate(invalid="ignore", divide="ignore", over="ignore")  # NaN and inf are judged, not warned of
    def block_probes(self, lo: np.ndarray, hi: np.ndarray, step: float, levels: Sequence[int],
                     device: BlockDevice) -> tuple[Probes, np.ndarray]:
        """Probes along the blocks ``[lo, hi)``; also returns, per block and per unit of the probe, the sums
        Σ wᵢ|Δᵢ| of ``device``'s weights (shaped (weights, blocks)), at the first level.

        ``device`` is what :meth:`block_device` put on the device.
        """
        rows, n_levels, n_weights = len(lo), len(levels), device.weights.shape[0]
        t = np.array([[step / LEVEL_RATIO**k * m for m in (1, -1, 2, -2)] for k in levels])  # (levels, 4)
        lo_, hi_ = (np.tile(np.repeat(v, 4), n_levels) for v in (lo, hi))
        tt = np.repeat(t[:, None, :], rows, axis=1).ravel()
        arrays = (device.analytic, device.weights, device.signed)
        found = self._chunked(self._blocks, [lo_, hi_, tt], [jnp.int32, jnp.int32, self.work], arrays)
        if self.exact:
            found += [np.where(device.nonfinite[hi_] > device.nonfinite[lo_], np.nan,
                               tt * (device.along[hi_] - device.along[lo_])),
                      *(np.abs(tt) * (w[hi_] - w[lo_]) for w in device.weighted)]
        s, n, e, *weighted = (v.reshape(n_levels, rows, 4).transpose(2, 0, 1) for v in found)
        eta = t[:, 0][:, None]
        w1, w2 = 2 * eta, 4 * eta
        probes = Probes(d1=(s[0] - s[1]) / w1, d2=(s[2] - s[3]) / w2, a1=(e[0] - e[1]) / w1, a2=(e[2] - e[3]) / w2,
                        round1=(n[0] + n[1]) / w1, round2=(n[2] + n[3]) / w2,
                        fwd=(s[0] - e[0]) / eta, bwd=(s[1] - e[1]) / -eta, fwd2=(s[2] - e[2]) / (2 * eta),
                        bwd2=(s[3] - e[3]) / (-2 * eta), side_round=(n[0] + n[1]) / eta,
                        side_round2=(n[2] + n[3]) / (2 * eta), finite=np.all(np.isfinite(s), axis=0),
                        jump=_jumps(s, n))
        return probes, np.stack([(w[0][0] + w[1][0]) / w1[0] for w in weighted]).reshape(n_weights, rows)


def _unchanged(o: jax.Array, b: jax.Array) -> jax.Array:
    """Per entry, whether an output is what it was: equal (the same inf too), or NaN both times."""
    return (o == b) | (jnp.isnan(o) & jnp.isnan(b))


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


def step_scales(flat: Flat) -> tuple[np.ndarray, np.ndarray]:
    """Per entry, the sizes its first finite-difference step may be relative to: |x| floored at 1% of its
    leaf's RMS (so a small entry of a function whose length scale is the leaf's still gets a step that
    rises above round-off), and |x| itself (for a function whose length scale is |x|, log over 60
    decades); an exact zero gets the floor in both, or 1 in an all-zero leaf."""
    relative, floored = np.abs(flat.x), np.abs(flat.x)
    for i in range(len(flat.shapes)):
        part = relative[flat.part(i)]
        rms = float(np.sqrt(np.mean(part ** 2))) if part.size else 0.0
        floor = 1e-2 * rms if rms > 0 else 1.0
        floored[flat.part(i)] = np.maximum(part, floor)
        relative[flat.part(i)] = np.where(part > 0, part, floor)
    return floored, relative
