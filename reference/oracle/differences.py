"""The finite-difference engine: changes of ``φ = Re⟨c, fn(x)⟩`` along single entries or signed blocks.

Each probe moves x by ``±h`` and ``±2h`` along one direction, at one or more *levels*: level
k uses the step ``h₀/4ᵏ``, so a function that varies faster than its argument's size
suggests (sin at 10⁶, a positional encoding) is still differenced at a step that fits it.
:mod:`reference.oracle.verdict` judges what comes out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle.programs import LIVE_MOVE, alive, compile_probes, jit_or_eager
from reference.oracle.report import raised_by_fn, said
from reference.oracle.trees import Flat

LEVEL_RATIO = 4.0  # each level's step is a quarter of the one before: Richardson's error drops 256×
CHUNK_BYTES = 2**27  # probes evaluated together: as many as fit in about 128 MB of float64 inputs and outputs
# A function that iterates until its values say stop (a solver) is evaluated this many probes at a time: vmapped over
# several lanes, a while loop runs until every lane stops, and jaxopt's GradientDescent in float32 vmapped over 8
# ridge problems did not finish in 15 minutes (one at a time: 1 ms each).
ITERATIVE_CHUNK = 1
CHEAP = 4096  # inputs and outputs of a function cheap enough to evaluate a whole chunk of probes for a few


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


@np.errstate(invalid="ignore", divide="ignore", over="ignore")  # NaN and inf are judged, not warned of
def jumps(s: np.ndarray, n: np.ndarray) -> np.ndarray:
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
                 base: list | None = None, iterative: bool = False, longer: Callable | None = None,
                 excess: list | None = None):
        self.version, self.flat, self.eps_out = version, flat, eps_out
        self.floored = step_scales(flat)[0]  # each entry's step scale, for _live and floors (a pass over the leaf)
        self.iterative = iterative  # f loops until its values say stop: each probe's cost unknown, batches kept small
        # f with its while loops run longer (solvers.py): differenced instead of f, each probe's round-off bound
        # widened by how far the two runs' changes differ there (the stopping error's own change).
        self.longer = longer
        with version.context():
            self.work = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
            self.x = jnp.asarray(flat.x, self.work)
            self.ct = [jnp.asarray(c) for c in cotangent]
            at = version.at_flat(flat)
            self.base = base if base is not None else at(self.x)
            self.outputs = sum(int(np.size(b)) for b in self.base)
            self.alive = alive(at, flat, self.base, cotangent, self.floored, self.work)
            self.reference = [self.base]
            if longer is not None:
                self.reference.append(jit_or_eager(lambda x: longer(*flat.leaves_of(x)))(self.x))
            if excess is not None:  # per output entry, round-off beyond a few ulps of itself (entries.cancelled)
                self.reference.append([jnp.asarray(e, self.work) for e in excess])
            self.programs = compile_probes(version.fn, flat, self.base, self.work, eps_out, noise_floor, self.alive,
                                           longer, excess is not None)
        self.one_by_one: str | None = None  # why probes are evaluated one at a time, if they are: eagerly,
        self.compiled_one: bool = False  # or each under jit where only the batch failed
        self._floors: dict[int, float] = {}  # per flat entry, once: the largest output coupled to it (floors)

    def floors(self, index: np.ndarray) -> np.ndarray:
        """Per entry, the size of the largest output coupled to it: one that moves when the entry moves by LIVE_MOVE
        of its step scale, either way. A probe of the entry may move it below one ulp (a softmax's large outputs
        when a tail logit moves), so its rounding bounds the probe's change; an output the entry does not reach (a
        large entry of an elementwise function, a mask fill) is no part of it."""
        new = np.array(sorted({int(i) for i in index} - self._floors.keys()), np.int64)
        if new.size:
            d = LIVE_MOVE * self.floored[new]
            moves = [np.concatenate([new, new]), np.concatenate([d, -d]), np.zeros(2 * new.size)]
            found = chunked(self, self.programs.entries, moves, [jnp.int32, self.work, self.work], ())[2]
            self._floors.update(zip(new.tolist(), np.maximum(found[:new.size], found[new.size:]).tolist(),
                                    strict=True))
        return np.array([self._floors[int(i)] for i in index], np.float64)

    @property
    def chunk(self) -> int:
        """Probes per compiled call: as many as fit in CHUNK_BYTES (one compilation per check)."""
        most = ITERATIVE_CHUNK if self.iterative else 256
        return int(max(min(4, most), min(most, CHUNK_BYTES // max(1, 8 * (self.flat.size + self.outputs)))))

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
        s, n, _ = chunked(self, self.programs.entries, [at_index, at.ravel(), floor],
                          [jnp.int32, self.work, self.work], ())
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
                      jump=jumps(s, n))


def chunked(diffs: Differences, program: tuple, columns: Sequence[np.ndarray], dtypes: Sequence[Any],
             extra: Sequence[Any]) -> list[np.ndarray]:
    """``program`` over the probes given by ``columns`` (one row each), a chunk of them per compiled call; one at a
    time where fn cannot be compiled or vmapped (``diffs.one_by_one`` says why): eagerly, or compiled where only
    the batch fails."""
    compiled, single = program
    chunk, total, outs = diffs.chunk, len(columns[0]), []
    with diffs.version.context():
        for start in range(0, total, chunk):
            part = [c[start:start + chunk] for c in columns]
            if diffs.one_by_one is None:
                # One shape for every call where fn is cheap (one compilation for every pass of a check); where
                # it is not, a power of two (a few shapes), not a full chunk of evaluations for a few suspects.
                cheap = diffs.flat.size + diffs.outputs <= CHEAP and not diffs.iterative
                size = chunk if cheap else min(chunk, 1 << (len(part[0]) - 1).bit_length())
                pad = size - len(part[0])
                try:
                    padded = [jnp.asarray(np.pad(c, (0, pad)), d) for c, d in zip(part, dtypes, strict=True)]
                    res = compiled(diffs.x, diffs.reference, diffs.ct, *padded, *extra)
                    outs.append([np.asarray(r, np.float64)[:len(part[0])] for r in res])
                    continue
                except (jax.errors.JAXTypeError, NotImplementedError) as e:  # no jit or no vmap of fn
                    diffs.one_by_one = said(e, 120)
                except Exception as e:  # JAX failing to batch fn (its TPU kernel interpreter under vmap)...
                    if raised_by_fn(e) or not _runs_alone(diffs, jax.jit(single), part, dtypes, extra):
                        raise  # ...not fn's own error, nor one that a single probe raises too
                    diffs.one_by_one, diffs.compiled_one = said(e, 120), True
            one = jax.jit(single) if diffs.compiled_one else single
            rows = [one(diffs.x, diffs.reference, diffs.ct, *(jnp.asarray(c[k], d) for c, d in
                                                         zip(part, dtypes, strict=True)), *extra)
                    for k in range(len(part[0]))]
            outs.append([np.array([float(r[m]) for r in rows]) for m in range(len(rows[0]))])
    return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def _runs_alone(diffs: Differences, single: Callable, part: Sequence[np.ndarray], dtypes: Sequence[Any],
                extra: Sequence[Any]) -> bool:
    """Whether the first probe of ``part`` runs on its own (so that its batch failing is the batching's fault)."""
    try:
        single(diffs.x, diffs.reference, diffs.ct, *(jnp.asarray(c[0], d) for c, d in zip(part, dtypes, strict=True)),
               *extra)
    except Exception:  # whatever it raises, the batch's error is the one to report
        return False
    return True


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
