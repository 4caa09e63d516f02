"""The oracle: a VJP checked against finite differences, a float64 version of itself, and a reference.

For ``φ(x) = Re⟨c, fn(x)⟩`` with a random cotangent ``c``, the VJP ``Jᵀc`` is ``∇φ`` (for a
complex leaf ``z = u + iv``, JAX's VJP is ``∂φ/∂u − i·∂φ/∂v``). The checks, in order:

1. **What is checkable.** Float and complex leaves of the arguments are checked (Python
   floats and lists of them too); integer, boolean and key leaves stay fixed. No such leaf,
   no float output, ``args`` that is not a sequence, a NaN or inf input, or a function that
   returns different values for the same arguments is refused with an error that names it.
2. **Which function the numbers come from.** If ``fn`` run on float64 copies of the inputs
   computes in float64 and gives the same forward values as the call (within the call's
   precision), the rule's mathematics is checked there, sharply, and the call's own VJP is
   compared entry by entry with that float64 VJP. Otherwise (random draws in the default
   dtype, internal casts, dtype-dependent code) everything is checked on the call as made,
   at the precision it really computes in. The report says which, and why.
3. **Finite differences** with steps relative to each entry, at h and 2h: the Richardson
   combination of the two cancels the step's h² error, one-sided differences find kinks
   (where any value between them is accepted), and every entry is judged against its own
   error estimate (round-off of the outputs it moves, and the truncation left), never
   against the largest entry of its leaf.
4. **Large leaves** are probed along signed blocks of entries and bisected down to the
   failing ones, so one wrong entry in a million is found and named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference._precision import constants, narrowest_float, trace
from reference._trees import Split, kind, outputs, random_like

# The relative tolerance of a VJP computed in each precision, against the same rule in float64
# (or, as called, against finite differences): a correct float32 rule passes, a bfloat16 one does not.
RTOL = {64: 1e-7, 32: 1e-4, 16: 4e-3, 8: 3e-2}  # by the mantissa-and-sign bits below: 64, 32, f16 (11+), bf16
_STEP = {64: 1e-4, 32: 1e-2, 16: 5e-2, 8: 5e-2}  # finite-difference step, relative to each entry
_ELEMENTWISE = 1024  # leaves up to this many real entries get a difference per entry; larger ones, blocks
_BLOCKS = 16  # the first cut of a large leaf, before halving the failing blocks
_SEARCH_RTOL = 1e-9  # how sharply a block's float64 rule must match its float64 differences
_SHOWN = 10
_SALT = 0x68616E64  # 'hand': data drawn from default_rng(seed) is not the cotangent
_COTANGENTS = 4  # cotangents drawn to learn each entry's natural scale


def _precision_key(dtype: Any) -> int:
    """64, 32, 16 (float16) or 8 (bfloat16 and narrower): the row of RTOL and _STEP."""
    info = jax.dtypes.finfo(jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype)
    return 64 if info.bits >= 64 else 32 if info.bits >= 32 else 16 if info.nmant >= 10 else 8




@dataclasses.dataclass(frozen=True)
class LeafReport:
    """What was checked of one differentiable argument leaf, and how far it was off."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    method: str  # "elementwise" or "blocks"
    max_abs_err: float  # beyond the accepted interval, against finite differences
    max_rel_err: float  # the same, over each entry's own scale
    kinks: int  # entries where the one-sided differences disagree
    unchecked: int = 0  # entries where fn was not finite at x ± h
    ref_max_abs_err: float | None = None
    ref_max_rel_err: float | None = None


@dataclasses.dataclass(frozen=True)
class VJPReport:
    """What :func:`check_vjp` measured; ``str(report)`` is a table."""

    leaves: tuple[LeafReport, ...]
    forward_max_abs_err: float | None
    eps: float  # the relative finite-difference step
    precision: str = "float64"  # the precision the numbers were taken in
    how: str = ""  # which function they came from, and why
    order: int = 1
    fixed: tuple[str, ...] = ()  # leaves held fixed: integers, booleans, keys

    @property
    def max_abs_err(self) -> float:
        return max([leaf.max_abs_err for leaf in self.leaves], default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max([leaf.max_rel_err for leaf in self.leaves], default=0.0)

    @property
    def kinks(self) -> int:
        return sum(leaf.kinks for leaf in self.leaves)

    @property
    def unchecked(self) -> int:
        return sum(leaf.unchecked for leaf in self.leaves)

    def __str__(self) -> str:
        rows = [f"order {self.order}; differences in {self.precision}: {self.how}",
                f"{'argument':<24} {'shape':<14} {'dtype':<9} {'method':<11} {'abs err':>9} {'rel err':>9} "
                f"{'ref abs':>9} kinks"]
        for r in self.leaves:
            ref = "-" if r.ref_max_abs_err is None else f"{r.ref_max_abs_err:9.2e}"
            rows.append(f"{r.path:<24} {str(r.shape):<14} {r.dtype:<9} {r.method:<11} {r.max_abs_err:9.2e} "
                        f"{r.max_rel_err:9.2e} {ref:>9} {r.kinks}")
        if self.kinks:
            rows.append(f"{self.kinks} entries sit on a kink; any value between the one-sided differences was accepted")
        if self.unchecked:
            rows.append(f"{self.unchecked} entries could not be checked: fn jumps there, or is not finite a step away")
        if self.fixed:
            rows.append("held fixed (no cotangent): " + ", ".join(self.fixed))
        return "\n".join(rows)


@dataclasses.dataclass(frozen=True)
class _Problem:
    badness: float  # how many tolerances off; inf for NaN
    text: str


# ---------------------------------------------------------------- a way of evaluating fn
@dataclasses.dataclass
class _Version:
    """``fn`` at one set of argument dtypes: the call as made, or its float64 copy."""

    split: Split
    fn: Callable  # of the differentiable leaves, returning the list of float/complex outputs
    x64: bool  # evaluate inside jax.enable_x64(True)
    bits: int  # the precision it computes in

    def context(self) -> Any:
        return _float64() if self.x64 else _nothing()

    compiled: Callable | None = None

    def vjp(self, cotangents: Sequence[list], leaves: Sequence[Any] | None = None) -> tuple[list, list[list]]:
        """The outputs, and the VJP for each cotangent: one linearisation, compiled once per version (an
        eager one for a function that reads concrete values)."""
        leaves = list(self.split.diff_leaves() if leaves is None else leaves)
        cotangents = [list(c) for c in cotangents]
        with self.context():
            if self.compiled is None:
                self.compiled = jax.jit(_vjps(self.fn))
            try:
                return self.compiled(leaves, cotangents)
            except jax.errors.JAXTypeError:  # concretization errors: fn branches on values
                return _vjps(self.fn)(leaves, cotangents)


class _float64:
    """x64 on, and standard promotion: the float64 copies meet the function's own float32 constants."""

    def __enter__(self) -> None:
        self._x64, self._promotion = jax.enable_x64(True), jax.numpy_dtype_promotion("standard")
        self._x64.__enter__()
        self._promotion.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._promotion.__exit__(*exc)
        self._x64.__exit__(*exc)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: Any) -> None:
        return None


def _outputs_of(fn: Callable, split: Split) -> Callable:
    """``fn`` of the differentiable leaves of ``split``, returning its float and complex outputs."""
    return outputs(split.over_diff(fn))


def _to64(x: Any) -> Any:
    k = kind(x)
    if k is None:
        return x
    return jax.device_put(np.asarray(x, np.complex128 if k == "complex" else np.float64))  # a transfer, no compile


def _canonical(x: Any) -> Any:
    """What JAX makes of a leaf when it is passed in: numpy float64 becomes float32 with x64 off."""
    if kind(x) is None:
        return x
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


def _leaf_bits(leaves: Sequence[Any]) -> int:
    return min([_precision_key(jnp.result_type(x)) for x in leaves], default=64)


# ---------------------------------------------------------------- the flat real vector
class _Flat:
    """Every differentiable leaf laid end to end as real numbers (a complex entry as re, im)."""

    def __init__(self, leaves: Sequence[Any]):
        self.shapes = [np.shape(x) for x in leaves]
        self.dtypes = [jnp.result_type(x) for x in leaves]
        self.complex = [jnp.issubdtype(d, jnp.complexfloating) for d in self.dtypes]
        sizes = [int(np.prod(s, dtype=np.int64)) * (2 if c else 1) for s, c in zip(self.shapes, self.complex,
                                                                                   strict=True)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.x = self.real(leaves)
        component = [jnp.finfo(d).dtype if c else d for d, c in zip(self.dtypes, self.complex, strict=True)]
        self.component = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)] or [np.zeros(0, int)])
        self.component_dtypes = component

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def real(self, leaves: Sequence[Any], *, conjugate: bool = False) -> np.ndarray:
        """The leaves as one float64 vector; ``conjugate`` stores a complex leaf as (re, −im), as a gradient."""
        parts: list[np.ndarray] = []
        for x, c in zip(leaves, self.complex, strict=True):
            v = np.asarray(x).astype(np.complex128 if c else np.float64).ravel()
            parts += [v.real, -v.imag if conjugate else v.imag] if c else [v]
        return np.concatenate(parts) if parts else np.zeros(0)

    def leaves_of(self, flat: jax.Array) -> list:
        """Inside jit: the flat vector back to leaves of their own dtypes (a complex one from re, im)."""
        out = []
        for i, (shape, dtype, c) in enumerate(zip(self.shapes, self.dtypes, self.complex, strict=True)):
            part = flat[self.offsets[i]:self.offsets[i + 1]]
            if c:
                half = part.shape[0] // 2
                out.append((part[:half] + 1j * part[half:]).astype(dtype).reshape(shape))
            else:
                out.append(part.astype(dtype).reshape(shape))
        return out

    def leaf_of(self, index: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, index, side="right") - 1

    def round_to_leaf(self, values: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``values`` at flat ``index`` rounded to their leaf's (component) dtype, back in float64."""
        out = np.empty_like(values)
        leaf = self.leaf_of(index)
        for i in np.unique(leaf):
            sel = leaf == i
            out[sel] = np.asarray(values[sel]).astype(self.component_dtypes[i]).astype(np.float64)
        return out


# ---------------------------------------------------------------- finite differences
class _Differences:
    """Finite differences of ``φ = Re⟨c, fn(x)⟩`` about x, along single entries or signed blocks.

    Each probe returns, for a displacement Δ of x: ``s = Re⟨c, f(x + Δ) − f(x)⟩`` (outputs
    subtracted first, so an output that does not move contributes exactly 0) and a bound on
    its round-off, ``eps · Σ |c|·(|f(x + Δ)| + |f(x)|)`` over the outputs that moved, plus one
    output's worth for a change too small to move any. x, c and f(x) are arguments of the
    compiled probes, never constants baked into them.
    """

    def __init__(self, version: _Version, flat: _Flat, cotangent: list, eps_out: float, noise_floor: float = 0.0,
                 base: list | None = None):
        self.version, self.flat, self.eps_out = version, flat, eps_out
        with version.context():
            work = jnp.float64 if version.x64 or jax.config.read("jax_enable_x64") else jnp.float32
            self.work = work
            self.x = jnp.asarray(flat.x, work)
            self.ct = [jnp.asarray(c) for c in cotangent]
            f = version.fn

            def reduce(out: list, base: list, ct: list) -> tuple[jax.Array, jax.Array]:
                s = n = hidden = jnp.zeros((), work)
                for c, o, b in zip(ct, out, base, strict=True):
                    d = (o - b)
                    s = s + jnp.sum(jnp.real(c * d).astype(work))
                    size = (jnp.abs(o).astype(work) + jnp.abs(b).astype(work)) * jnp.abs(c).astype(work)
                    n = n + jnp.sum(jnp.where(d != 0, size, 0))
                    hidden = jnp.maximum(hidden, jnp.max(size, initial=0))  # a change below one ulp shows as none
                return s, (n + hidden) * eps_out + 2 * noise_floor

            self.base = base if base is not None else jax.jit(lambda x: f(*flat.leaves_of(x)))(self.x)

            @jax.jit
            def entries(x, base, ct, index, delta):
                return jax.vmap(lambda i, d: reduce(f(*flat.leaves_of(x.at[i].add(d))), base, ct))(index, delta)

            @jax.jit
            def blocks(x, base, ct, lo, hi, t, a, a_scale, d_scale):
                j = jnp.arange(x.shape[0])
                sign = 1.0 - 2.0 * ((j * 2654435761) // 65536 % 2).astype(work)

                def one(lo_, hi_, t_):
                    moved = x + jnp.where((j >= lo_) & (j < hi_), t_ * sign * d_scale, 0)
                    leaves = flat.leaves_of(moved)
                    actual = jnp.concatenate([_real_parts(v, c).astype(work) for v, c in
                                              zip(leaves, flat.complex, strict=True)]) - x
                    s, n = reduce(f(*leaves), base, ct)
                    return s, n, jnp.sum(a * actual), jnp.sum(a_scale * jnp.abs(actual))
                return jax.vmap(one)(lo, hi, t)

            self._entries, self._blocks = entries, blocks

    def device(self, *vectors: np.ndarray) -> tuple:
        """Flat vectors on the device, in the differences' working dtype."""
        with self.version.context():
            return tuple(jnp.asarray(v, self.work) for v in vectors)

    def at_entries(self, index: np.ndarray, delta: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        s, n = [], []
        with self.version.context():
            for start in range(0, len(index), chunk):  # fixed-size chunks: one compilation per check
                i, d = index[start:start + chunk], delta[start:start + chunk]
                pad = chunk - len(i) if len(index) > chunk else 0
                si, ni = self._entries(self.x, self.base, self.ct, jnp.asarray(np.pad(i, (0, pad))),
                                       jnp.asarray(np.pad(d, (0, pad)), self.work))
                s.append(np.asarray(si, np.float64)[:len(i)])
                n.append(np.asarray(ni, np.float64)[:len(i)])
        return np.concatenate(s), np.concatenate(n)

    def along_blocks(self, lo: np.ndarray, hi: np.ndarray, t: np.ndarray, a: jax.Array, a_scale: jax.Array,
                     d_scale: jax.Array, chunk: int) -> tuple[np.ndarray, ...]:
        outs = []
        with self.version.context():
            for start in range(0, len(lo), chunk):
                sl = slice(start, start + chunk)
                pad = chunk - len(lo[sl]) if len(lo) > chunk else 0
                args = (np.pad(lo[sl], (0, pad)), np.pad(hi[sl], (0, pad)), np.pad(t[sl], (0, pad)))
                res = self._blocks(self.x, self.base, self.ct, *(jnp.asarray(v) for v in args[:2]),
                                   jnp.asarray(args[2], self.work), a, a_scale, d_scale)
                outs.append([np.asarray(r, np.float64)[:len(lo[sl])] for r in res])
        return tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))


def _real_parts(v: jax.Array, is_complex: bool) -> jax.Array:
    v = v.ravel()
    return jnp.concatenate([jnp.real(v), jnp.imag(v)]) if is_complex else v


# ---------------------------------------------------------------- judging probes
@dataclasses.dataclass
class _Probes:
    """Numerical and analytic changes of φ along probes (single entries, or signed blocks), per unit
    of the probe: central differences at h (1) and 2h (2), one-sided slopes at h and 2h, and the
    round-off bounds of each."""

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
    jump: np.ndarray  # φ itself jumps within reach: no derivative to check

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """The range of the one-sided slopes (at h and 2h), as offsets from the analytic value."""
        sides = np.stack([self.fwd, self.bwd, self.fwd2, self.bwd2])
        return np.min(sides, axis=0), np.max(sides, axis=0)

    def verdict(self, noise_a: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(ok, badness, kink, numerical, tol, unchecked)`` per probe.

        The Richardson combination ``(4·d1 − d2)/3`` cancels the h² error of central differences;
        if a feature between h and 2h spoils d2, d1 is judged by its own error estimate instead.
        A kink shows as one-sided slopes whose gap stays as the step doubles (a curve's doubles):
        there any value between them is accepted. Where φ jumps (its change does not shrink with
        the step), or is not finite a step away, there is no derivative: the probe is unchecked.
        """
        richardson = (4 * (self.d1 - self.a1) - (self.d2 - self.a2)) / 3
        trunc = np.abs((self.d1 - self.a1) - (self.d2 - self.a2))
        tol_r = 2 * (4 * self.round1 + self.round2) / 3 + 0.05 * trunc + noise_a
        m1 = self.d1 - self.a1
        tol_1 = 2 * self.round1 + 0.5 * trunc + noise_a
        smooth = (np.abs(richardson) <= tol_r) | (np.abs(m1) <= tol_1)
        # A smooth φ's one-sided gap doubles with the step; anything else means a kink (or a jump) in reach.
        gap, gap2 = self.fwd - self.bwd, self.fwd2 - self.bwd2
        kink = np.abs(gap2 - 2 * gap) > 4 * (self.side_round2 + 2 * self.side_round) + 0.1 * np.abs(gap) + noise_a
        low, high = self.interval()
        inside = (low <= tol_1) & (high >= -tol_1)
        unchecked = ~self.finite | (self.jump & ~smooth)
        ok = unchecked | smooth | (kink & inside)
        with np.errstate(divide="ignore", invalid="ignore"):
            badness = np.minimum(np.abs(richardson) / tol_r, np.abs(m1) / tol_1)
        badness = np.where(np.isfinite(badness), badness, np.inf)
        return ok, badness, kink, self.a1 + richardson, tol_r, unchecked


def _jumps(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """A change of φ that stays the same size when the step doubles (rows +h, −h, +2h, −2h): a jump."""
    with np.errstate(invalid="ignore"):
        sides = [(np.abs(s[k + 2] - s[k]) < 0.25 * np.abs(s[k])) & (np.abs(s[k]) > 8 * (n[k] + n[k + 2]))
                 for k in (0, 1)]
    return sides[0] | sides[1]


def _entry_probes(diffs: _Differences, flat: _Flat, index: np.ndarray, a: np.ndarray, eta: float,
                  scale: np.ndarray, chunk: int) -> _Probes:
    """Probes along single entries of the flat vector, with displacements rounded to each leaf's dtype."""
    x = flat.x[index]
    h = eta * scale[index]
    deltas = [flat.round_to_leaf(x + k * h, index) - x for k in (1, -1, 2, -2)]
    s, n = diffs.at_entries(np.repeat(index, 4), np.stack(deltas, axis=1).ravel(), chunk)
    s, n = s.reshape(-1, 4).T, n.reshape(-1, 4).T
    dp, dm, d2p, d2m = (np.where(d != 0, d, np.nan) for d in deltas)  # a step lost to rounding: unchecked
    w1, w2 = dp - dm, d2p - d2m
    ak = a[index]
    return _Probes(d1=(s[0] - s[1]) / w1, d2=(s[2] - s[3]) / w2, a1=ak, a2=ak,
                   round1=(n[0] + n[1]) / np.abs(w1), round2=(n[2] + n[3]) / np.abs(w2),
                   fwd=s[0] / dp - ak, bwd=s[1] / dm - ak, fwd2=s[2] / d2p - ak, bwd2=s[3] / d2m - ak,
                   side_round=n[0] / np.abs(dp) + n[1] / np.abs(dm),
                   side_round2=n[2] / np.abs(d2p) + n[3] / np.abs(d2m),
                   finite=np.all(np.isfinite(s), axis=0) & np.isfinite(w1) & np.isfinite(w2), jump=_jumps(s, n))


def _block_probes(diffs: _Differences, lo: np.ndarray, hi: np.ndarray, eta: float,
                  device: tuple[jax.Array, jax.Array, jax.Array], chunk: int) -> tuple[_Probes, np.ndarray]:
    """Probes along signed blocks ``[lo, hi)``; also returns the analytic noise scale Σ(|a| + S)|Δ| per unit."""
    t = np.array([eta, -eta, 2 * eta, -2 * eta])
    rows = len(lo)
    a, a_scale, d_scale = device
    s, n, e, e_abs = diffs.along_blocks(np.repeat(lo, 4), np.repeat(hi, 4), np.tile(t, rows), a, a_scale, d_scale,
                                        chunk)
    s, n, e, e_abs = (v.reshape(-1, 4).T for v in (s, n, e, e_abs))
    w1, w2 = 2 * eta, 4 * eta
    probes = _Probes(d1=(s[0] - s[1]) / w1, d2=(s[2] - s[3]) / w2, a1=(e[0] - e[1]) / w1, a2=(e[2] - e[3]) / w2,
                     round1=(n[0] + n[1]) / w1, round2=(n[2] + n[3]) / w2,
                     fwd=(s[0] - e[0]) / eta, bwd=(s[1] - e[1]) / -eta, fwd2=(s[2] - e[2]) / (2 * eta),
                     bwd2=(s[3] - e[3]) / (-2 * eta), side_round=(n[0] + n[1]) / eta,
                     side_round2=(n[2] + n[3]) / (2 * eta), finite=np.all(np.isfinite(s), axis=0),
                     jump=_jumps(s, n))
    return probes, (e_abs[0] + e_abs[1]) / w1


# ---------------------------------------------------------------- refusals
def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _as_args(name: str, args: Any) -> tuple:
    if isinstance(args, tuple | list):
        return tuple(args)
    what = (f"an array of shape {np.shape(args)}" if hasattr(args, "shape") else f"a {type(args).__name__}")
    raise TypeError(f"check_vjp: args must be a tuple of {name}'s arguments, e.g. (x,) for {name}(x); got {what}. "
                    f"Wrap a single argument in a tuple")


def _describe(x: Any) -> str:
    dtype = getattr(x, "dtype", None)
    return f"{dtype}{list(np.shape(x))}" if dtype is not None else type(x).__name__


def _require_checkable(name: str, split: Split) -> None:
    if not split.diff:
        got = ", ".join(f"{p}: {_describe(x)}" for p, x in zip(split.paths, split.leaves, strict=True)) or "nothing"
        raise TypeError(f"check_vjp: no argument of {name} has a float or complex leaf, so there is no VJP to "
                        f"check (got {got})")
    for i in split.diff:
        values = np.asarray(split.leaves[i])
        bad = np.flatnonzero(~np.isfinite(values.ravel()))
        if bad.size:
            j = int(bad[0])
            raise ValueError(f"check_vjp: {split.paths[i]} holds {bad.size} non-finite values, e.g. "
                             f"{values.ravel()[j]} at flat index {j}; finite differences need finite inputs")


def _trace_or_refuse(name: str, version: _Version) -> tuple[list, Any]:
    """The output shapes and the trace of ``fn``; refuses no float output and a non-deterministic function
    (two traces bake in different constants: randomness drawn in Python). An untraceable function is run
    twice instead."""
    leaves = version.split.diff_leaves()
    with version.context():
        closed = trace(version.fn, leaves)
        if closed is not None:  # a second, fresh trace (a new function object: no cached trace is reused)
            out, again = list(closed.out_avals), constants(trace(lambda *a: version.fn(*a), leaves))
            first = constants(closed)
        else:
            out = version.fn(*leaves)
            first, again = [np.asarray(o) for o in out], [np.asarray(o) for o in version.fn(*leaves)]
    if not out:
        raise TypeError(f"check_vjp: {name} returns no float or complex output, so there is no VJP to check")
    for o, p in zip(first, again, strict=True):
        if o.shape != p.shape or not np.array_equal(o, p, equal_nan=o.dtype.kind in "fc"):
            where = int(np.flatnonzero((o != p).ravel())[0]) if o.shape == p.shape else 0
            raise ValueError(f"check_vjp: {name} is not deterministic: two calls with the same arguments differ "
                             f"({o.ravel()[where]:.6g}, then {p.ravel()[where]:.6g}); pass its randomness in as "
                             f"an argument (a jax.random key)")
    return out, closed


# ---------------------------------------------------------------- cotangents
def _cotangents(shapes: list, rng: np.random.Generator, count: int) -> list[list]:
    return [random_like(shapes, rng) for _ in range(count)]


_SPREAD = 8  # how many times its sensitivity to ulp-sized input noise an entry's round-off may reach


def _sensitivity(version: _Version, cotangents: list[list], flat: _Flat, analytic: list[np.ndarray], eps: float,
                 rng: np.random.Generator, samples: int = 2) -> np.ndarray:
    """Per entry, how far the VJP moves when every input moves by one unit of round-off ``eps``.

    A VJP computed at that precision cannot be more accurate than this: an entry that is a sum
    of terms cancelling to almost nothing (a weight gradient over a batch) moves with its terms,
    while a tiny entry that is tiny term by term (a softmax tail) stays tiny and is judged so.
    """
    worst = np.zeros(flat.size)
    leaves = version.split.diff_leaves()
    for _ in range(samples):
        with version.context():
            moved = [jnp.asarray(np.asarray(x) * (1 + eps * rng.choice([-1.0, 1.0], np.shape(x))).astype(
                np.asarray(x).real.dtype), jnp.result_type(x)) for x in leaves]
        again = version.vjp(cotangents, moved)[1]  # the same compiled program, at moved inputs
        for a, base in zip(again, analytic, strict=True):
            worst = np.maximum(worst, np.abs(flat.real(a, conjugate=True) - base))
    return np.where(np.isfinite(worst), worst, 0.0)


def _natural_scale(flat: _Flat, analytic: list[list]) -> np.ndarray:
    """Per entry, the RMS of its VJP over random cotangents: the size its round-off is relative to
    (a VJP entry that cancels to ~0 for one cotangent is not ~0 for the others)."""
    rows = np.stack([flat.real(a, conjugate=True) for a in analytic])
    return np.sqrt(np.mean(rows * rows, axis=0))


# ---------------------------------------------------------------- the check
def check_vjp(fn: Callable, args: Sequence[Any], *, reference: Callable | None = None,
              rtol: float | None = None, atol: float | None = None, eps: float | None = None,
              seed: int = 0, order: int = 1) -> VJPReport:
    """Checks the VJP of ``fn`` at ``args`` against finite differences (and ``reference``).

    Works on any JAX function of pytree arguments, including your own ``jax.custom_vjp``:
    numpy arrays, Python scalars and lists, complex numbers, keys and integer labels, with
    x64 on or off. A random cotangent ``c`` (seeded) is pulled back through ``jax.vjp``;
    every float or complex entry of the result is compared with central differences of
    ``Re⟨c, fn(args)⟩`` (module docstring: how, and in which precision), and with
    ``jax.vjp(reference)`` when given. An entry passes if it is within its own tolerance:
    the differences' error estimate plus ``rtol × (|value| + the entry's natural scale)``;
    at a kink any value between the one-sided slopes is accepted.

    Args:
      fn: a function of ``*args`` returning a pytree of arrays.
      args: a tuple (or list) of arguments: arrays, Python numbers, pytrees of them.
      reference: an independent function with the same signature, differentiated by JAX.
      rtol: relative tolerance; by default from the precision the call computes in
        (float64 1e-7, float32 1e-4, float16 4e-3, bfloat16 3e-2).
      atol: an absolute tolerance added to every entry's (default 0).
      eps: the finite-difference step relative to each entry; by default from that precision
        (float64 1e-4, float32 1e-2, 16-bit 5e-2).
      seed: seeds the cotangents and the probes.
      order: 1 checks the VJP; 2 checks the VJP of the VJP (the backward differentiated
        again, as in grad-of-grad and Hessian-vector products), with respect to both the
        arguments and the cotangent.

    Returns:
      A :class:`VJPReport`: per-leaf errors, kinks, and the precision the numbers came from.

    Raises:
      AssertionError: worst entries first, each with its argument path (``args[0]['W']``),
        flat index, analytic and numerical values and the tolerance used.
      TypeError: ``args`` is not a sequence; no float or complex argument or output.
      ValueError: an input holds NaN or inf; ``fn`` is not deterministic.

    Example:
      >>> import pure
      >>> report = check_vjp(pure.relu, (jnp.array([-1.0, 0.0, 2.0]),))
      >>> report.kinks  # relu at 0: 0 lies between the one-sided slopes 0 and c
      1
    """
    name = _name(fn)
    args = _as_args(name, args)
    if order not in (1, 2):
        raise ValueError(f"check_vjp: order must be 1 or 2, got {order!r}")
    split = Split.of(args)
    _require_checkable(name, split)
    if order == 2:
        return _second_order(fn, name, args, split, reference, rtol, atol, eps, seed)
    return _check(fn, name, args, reference=reference, rtol=rtol, atol=atol, eps=eps, seed=seed)


_EPS_OF = {64: 2.3e-16, 32: 1.2e-7, 16: 9.8e-4, 8: 7.9e-3}  # unit round-off, by precision key
_NAME_OF = {64: "float64", 32: "float32", 16: "float16", 8: "bfloat16"}


def _bits_of(closed: Any, leaves: Sequence[Any], outputs: Sequence[Any]) -> int:
    """The precision key of what fn computes in: its trace's narrowest dependent float, and its in- and outputs'."""
    keys = [_precision_key(jnp.result_type(x)) for x in (*leaves, *outputs)]
    if closed is not None:
        mantissa = narrowest_float(closed)
        keys.append(64 if mantissa >= 52 else 32 if mantissa >= 23 else 16 if mantissa >= 10 else 8)
    return min(keys)


def _same_function(out: list, out64: list, bits: int) -> tuple[bool, float]:
    """Whether the float64 version's outputs are the call's, up to the call's precision."""
    worst = 0.0
    for o, p in zip(out, out64, strict=True):
        o, p = np.asarray(o).astype(np.complex128), np.asarray(p).astype(np.complex128)
        scale = float(np.max(np.abs(p), initial=0.0)) or 1.0
        worst = max(worst, float(np.max(np.abs(o - p), initial=0.0)) / scale)
    return worst <= min(0.25, 1000 * _EPS_OF[bits]), worst


def _entry_text(flat: _Flat, paths: list[str], k: int) -> str:
    leaf = int(flat.leaf_of(np.array([k]))[0])
    i = k - int(flat.offsets[leaf])
    if flat.complex[leaf]:
        n = int(np.prod(flat.shapes[leaf], dtype=np.int64))
        return f"{paths[leaf]} flat index {i % n} ({'real' if i < n else 'imaginary'} part)"
    return f"{paths[leaf]} flat index {i}"


def _check(fn: Callable, name: str, args: tuple, *, reference: Callable | None, rtol: float | None,
           atol: float | None, eps: float | None, seed: int, order: int = 1,
           truth: Callable[[_Version, list], tuple[Callable, float]] | None = None) -> VJPReport:
    """The check itself. ``truth``, if given, builds from the evaluation version and the cotangent the
    scalar function whose gradient the VJP must equal, and its round-off per evaluation (order 2);
    by default that function is ``Re⟨c, fn⟩`` itself."""
    rng = np.random.default_rng([seed, _SALT])
    split = Split.of(jax.tree_util.tree_map(_canonical, args))
    call = _Version(split, _outputs_of(fn, split), x64=False, bits=0)
    shapes, closed = _trace_or_refuse(name, call)
    cts = _cotangents(shapes, rng, _COTANGENTS)
    out, a_call = call.vjp(cts)
    problems: list[_Problem] = []
    for k, i in enumerate(split.diff):
        got, want = a_call[0][k], split.leaves[i]
        if np.shape(got) != np.shape(want) or jnp.result_type(got) != jnp.result_type(want):
            problems.append(_Problem(np.inf, f"{split.paths[i]}: the cotangent has shape {np.shape(got)} and dtype "
                                             f"{jnp.result_type(got)}, but the primal has shape {np.shape(want)} "
                                             f"and dtype {jnp.result_type(want)}"))
    call.bits = _bits_of(closed, split.diff_leaves(), out)

    evaluate, out_eval, a_eval, cts_eval, how = _choose_version(fn, name, split, call, out, cts, a_call)
    flat = _Flat(evaluate.split.diff_leaves())
    paths = [split.paths[i] for i in split.diff]
    a_user = flat.real(a_call[0], conjugate=True)
    a_main = flat.real(a_eval[0], conjugate=True)
    natural = _natural_scale(flat, a_eval)
    spread = _SPREAD * _sensitivity(evaluate, cts_eval, flat, [flat.real(a, conjugate=True) for a in a_eval],
                                    _EPS_OF[call.bits], rng)
    r_user = rtol if rtol is not None else RTOL[call.bits]
    extra = atol or 0.0
    eta = eps if eps is not None else _STEP[evaluate.bits]
    scale = _step_scale(flat)
    if truth is None:
        diffs = _Differences(evaluate, flat, cts_eval[0], _EPS_OF[evaluate.bits], base=out_eval)
    else:
        phi, noise = truth(evaluate, cts_eval[0])
        numeric = _Version(evaluate.split, phi, evaluate.x64, evaluate.bits)
        diffs = _Differences(numeric, flat, [np.ones((), np.float64 if evaluate.x64 else np.float32)],
                             _EPS_OF[evaluate.bits], noise)
    chunk = _chunk(flat.size, sum(np.size(o) for o in out))

    def judge_entries(index: np.ndarray) -> tuple[Any, ...]:
        """``(probes, ok, badness, kink, numerical, tol, unchecked)`` for the flat entries ``index``."""
        probes = _entry_probes(diffs, flat, index, a_user, eta, scale, chunk)
        noise = r_user * (natural[index] + np.abs(np.nan_to_num(probes.d1))) + spread[index] + extra
        return probes, *probes.verdict(noise)

    # Small leaves: every entry. Large ones: the entries that signed-block probes single out, and, with a
    # float64 version, every entry of the call's own VJP against the same rule in float64.
    elementwise = min(_ELEMENTWISE, 2**26 // max(1, flat.size + sum(np.size(o) for o in out)))
    picked: list[np.ndarray] = []
    methods: list[str] = []
    for i in range(len(paths)):
        lo, hi = int(flat.offsets[i]), int(flat.offsets[i + 1])
        methods.append("elementwise" if hi - lo <= elementwise else "blocks")
        if methods[-1] == "elementwise":
            picked.append(np.arange(lo, hi))
            continue
        a_dev, a_scale_dev, scale_dev = diffs.device(a_main, np.abs(a_main) + natural, scale)
        picked.append(_search(diffs, lo, hi, (a_dev, a_scale_dev, scale_dev), eta,
                              _SEARCH_RTOL if evaluate is not call else 1e-2 * r_user, chunk))
    index = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    leaf_stats = [_LeafStats() for _ in paths]
    if index.size:
        probes, ok, badness, kink, numerical, tol, unchecked = judge_entries(index)
        leaf = flat.leaf_of(index)
        for i, stats in enumerate(leaf_stats):
            mine = leaf == i
            stats.add(ok[mine], kink[mine], unchecked[mine], numerical[mine], a_user[index][mine],
                      natural[index][mine])
        low, high = probes.interval()
        for j in np.flatnonzero(~ok)[np.argsort(-badness[~ok])][: 4 * _SHOWN]:
            k = int(index[j])
            where = (f"in [{a_user[k] + low[j]:.6g}, {a_user[k] + high[j]:.6g}] (kink)" if kink[j]
                     else f"{numerical[j]:.6g}")
            problems.append(_Problem(float(badness[j]), f"{_entry_text(flat, paths, k)}: analytic {a_user[k]:.6g}, "
                                                        f"numerical {where}, tolerance {tol[j]:.2e} (rtol {r_user:g})"))
        if np.all(unchecked):
            raise ValueError(f"check_vjp: nothing could be checked: {name} jumps, or is not finite, a step away "
                             f"from every entry of its arguments")
    if evaluate is not call:  # every entry of the call's own VJP against the same rule in float64, where the
        # differences cannot see it (a tail entry below their round-off, an entry no probe singled out)
        tol = r_user * (np.abs(a_main) + natural) + spread + extra + 1e-300
        err = np.abs(a_user - a_main)
        seen = set(index[~ok].tolist()) if index.size else set()
        for k in [int(k) for k in np.flatnonzero(~(err <= tol)) if k not in seen][: 4 * _SHOWN]:
            problems.append(_Problem(float(err[k] / tol[k]) if np.isfinite(err[k]) else np.inf,
                                     f"{_entry_text(flat, paths, k)}: analytic {a_user[k]:.6g} "
                                     f"({_NAME_OF[call.bits]}), the same rule in float64 {a_main[k]:.6g}, "
                                     f"tolerance {tol[k]:.2e} (rtol {r_user:g})"))

    ref_stats: list = [None] * len(paths)
    forward_err = None
    if reference is not None:
        forward_err, ref_stats = _against_reference(reference, evaluate, cts_eval[0], flat, paths, a_main, natural,
                                                    rtol if rtol is not None else RTOL[evaluate.bits], extra,
                                                    judge_entries, problems, forward=order == 1)
    if problems:
        problems.sort(key=lambda p: -p.badness)
        more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        what = "VJP" if order == 1 else "VJP of the VJP"
        raise AssertionError(f"check_vjp: {len(problems)} mismatches in the {what} of {name} (worst first; "
                             f"differences in {_NAME_OF[evaluate.bits]}):\n  "
                             + "\n  ".join(p.text for p in problems[:_SHOWN]) + more)
    leaves = tuple(LeafReport(path, tuple(flat.shapes[i]), str(jnp.result_type(split.leaves[split.diff[i]])),
                              methods[i], *leaf_stats[i].summary(), *(ref_stats[i] or (None, None)))
                   for i, path in enumerate(paths))
    fixed = tuple(f"{split.paths[i]} ({_describe(split.leaves[i])})" for i in range(len(split.leaves))
                  if i not in split.diff)
    return VJPReport(leaves, forward_err, eta, _NAME_OF[evaluate.bits], how, order, fixed)


def _choose_version(fn: Callable, name: str, split: Split, call: _Version, out: list, cts: list[list],
                    a_call: list) -> tuple[_Version, list, list, list, str]:
    """The function the numbers come from: fn on float64 copies of the arguments, where it computes in float64
    and agrees with the call; else the call itself. Returns it, its outputs, VJPs and cotangents, and why."""
    if call.bits >= 64:
        return call, out, a_call, cts, "as called (float64)"
    with jax.enable_x64(True):  # a float64 array made outside would be cut back to float32
        split64 = Split.of(jax.tree_util.tree_map(_to64, split.rebuild(split.diff_leaves())))
    v64 = _Version(split64, _outputs_of(fn, split64), x64=True, bits=64)
    try:
        with v64.context():
            closed64 = trace(v64.fn, split64.diff_leaves())
        shapes64 = closed64.out_avals if closed64 is not None else out
        cts64 = [[np.asarray(c).astype(np.complex128 if np.iscomplexobj(c) else s.dtype) for c, s in
                  zip(ct, shapes64, strict=True)] for ct in cts]
        out64, a64 = v64.vjp(cts64)
        v64.bits = _bits_of(closed64, split64.diff_leaves(), out64)
        same, worst = _same_function(out, out64, call.bits)
    except Exception as e:  # the function refuses float64: check it as called
        why = f"{name} fails on float64 inputs ({type(e).__name__})"
        return call, out, a_call, cts, f"as called ({_NAME_OF[call.bits]}): {why}"
    if same and v64.bits == 64:
        return v64, out64, a64, cts64, (f"the float64 version of {name} (it agrees with the call), and the call's own "
                                 f"{_NAME_OF[call.bits]} VJP against it entry by entry")
    if not same:
        why = (f"on float64 copies of its inputs {name} gives other outputs (up to {worst:.2g} relative: random "
               f"draws in the default dtype, or dtype-dependent code)")
    else:
        why = f"{name} computes in {_NAME_OF[v64.bits]} even on float64 inputs"
    return call, out, a_call, cts, f"as called ({_NAME_OF[call.bits]}): {why}"


def _step_scale(flat: _Flat) -> np.ndarray:
    """Per entry, the size its finite-difference step is relative to: |x|, floored at 1% of its leaf's RMS
    (so an exact zero moves too), or 1 for an all-zero leaf."""
    scale = np.abs(flat.x)
    for i in range(len(flat.shapes)):
        part = slice(flat.offsets[i], flat.offsets[i + 1])
        rms = float(np.sqrt(np.mean(scale[part] ** 2))) if scale[part].size else 0.0
        scale[part] = np.maximum(scale[part], 1e-2 * rms if rms > 0 else 1.0)
    return scale


def _chunk(size: int, outputs: int) -> int:
    """Probes evaluated together: as many as fit in about 128 MB of float64 inputs and outputs."""
    return int(max(4, min(256, 2**24 // max(1, 4 * (size + outputs)))))


@dataclasses.dataclass
class _LeafStats:
    max_abs: float = 0.0
    max_rel: float = 0.0
    kinks: int = 0
    unchecked: int = 0

    def add(self, ok: np.ndarray, kink: np.ndarray, unchecked: np.ndarray, numerical: np.ndarray,
            analytic: np.ndarray, natural: np.ndarray) -> None:
        judged = ~unchecked & ~kink
        err = np.abs(analytic - numerical)[judged]
        self.max_abs = max(self.max_abs, float(np.max(err, initial=0.0)))
        floor = 1e-6 * float(np.max(natural, initial=0.0)) + 1e-300  # an entry that is 0 for every cotangent
        rel = err / np.maximum(np.abs(numerical[judged]) + natural[judged], floor)
        self.max_rel = max(self.max_rel, float(np.max(rel, initial=0.0)))
        self.kinks += int(np.sum(kink & ok & ~unchecked))
        self.unchecked += int(np.sum(unchecked))

    def summary(self) -> tuple:
        return self.max_abs, self.max_rel, self.kinks, self.unchecked


def _search(diffs: _Differences, lo: int, hi: int, device: tuple, eta: float, search_rtol: float, chunk: int,
            *, paths: int = 8, budget: int = 640) -> np.ndarray:
    """Entries of ``[lo, hi)`` whose block probes fail: _BLOCKS blocks, each failing one halved down to a few entries.

    At most ``paths`` blocks are followed per level (the worst), and at most ``budget`` probes
    spent; a single wrong entry among a million is reached in about 130 probes.
    """
    edges = np.unique(np.linspace(lo, hi, min(_BLOCKS, hi - lo) + 1).astype(np.int64))
    blocks = list(zip(edges[:-1], edges[1:], strict=True))
    suspects: list[int] = []
    spent = 0
    while blocks and spent < budget:
        b_lo, b_hi = (np.array(side, np.int64) for side in zip(*blocks, strict=True))
        probes, analytic_scale = _block_probes(diffs, b_lo, b_hi, eta, device, chunk)
        spent += 4 * len(blocks)
        ok, badness, *_, unchecked = probes.verdict(search_rtol * analytic_scale)
        ok &= ~unchecked  # a block with a jump or a non-finite value in reach: narrow it down
        failing = [blocks[j] for j in np.argsort(-badness) if not ok[j]][:paths]
        blocks = []
        for b0, b1 in failing:
            if b1 - b0 <= 4:
                suspects.extend(range(int(b0), int(b1)))
            else:
                mid = (b0 + b1) // 2
                blocks += [(b0, mid), (mid, b1)]
    return np.array(sorted(set(suspects)), np.int64)


def _against_reference(reference: Callable, evaluate: _Version, cotangent: list, flat: _Flat, paths: list[str],
                       analytic: np.ndarray, natural: np.ndarray, r: float, extra: float, judge_entries: Callable,
                       problems: list, forward: bool = True) -> tuple[float | None, list]:
    """The forward and VJP of ``reference``, at the precision the check ran in; mismatches on a kink
    that the finite differences confirm are excused. (At order 2 the forward is the VJP, compared at
    order 1 already, kinks and all: ``forward=False``.)"""
    ref_fn = _outputs_of(reference, evaluate.split)
    with evaluate.context():
        ref_out, (ref_ct,) = jax.jit(_vjps(ref_fn))(list(evaluate.split.diff_leaves()), [list(cotangent)])
        out = evaluate.fn(*evaluate.split.diff_leaves())
    worst = 0.0
    for k, (o, q) in enumerate(zip(out, ref_out, strict=True) if forward else ()):
        o, q = np.asarray(o).astype(np.complex128), np.asarray(q).astype(np.complex128)
        err = np.abs(o - q)
        tol = r * (np.abs(q) + float(np.max(np.abs(q), initial=0.0))) + extra + 1e-30
        worst = max(worst, float(np.max(err, initial=0.0)))
        for i in np.flatnonzero(~(err <= tol).ravel())[:_SHOWN]:
            problems.append(_Problem(float(err.ravel()[i] / tol.ravel()[i]) if np.isfinite(err.ravel()[i]) else np.inf,
                                     f"forward output {k} flat index {i}: fn {o.ravel()[i]:.6g}, reference "
                                     f"{q.ravel()[i]:.6g}, tolerance {tol.ravel()[i]:.2e}"))
    ref = flat.real(ref_ct, conjugate=True)
    tol = r * (np.abs(ref) + natural) + extra + 1e-30
    err = np.abs(analytic - ref)
    bad = np.flatnonzero(~(err <= tol))[: 4 * _SHOWN]
    excused = np.zeros(err.shape, bool)
    if bad.size:  # a kink? ask the differences
        probes, ok, _, kink, _, tol_fd, unchecked = judge_entries(bad)
        low, high = probes.interval()
        lo, hi = low + probes.a1 - tol_fd, high + probes.a1 + tol_fd
        excused[bad] = unchecked | (kink & (analytic[bad] >= lo) & (analytic[bad] <= hi) & (ref[bad] >= lo)
                                    & (ref[bad] <= hi))
    for k in bad[~excused[bad]]:
        problems.append(_Problem(float(err[k] / tol[k]) if np.isfinite(err[k]) else np.inf,
                                 f"{_entry_text(flat, paths, int(k))}: analytic {analytic[k]:.6g}, reference "
                                 f"{ref[k]:.6g}, tolerance {tol[k]:.2e} (rtol {r:g})"))
    kept = np.where(excused, 0.0, err)
    rel = kept / np.maximum(np.abs(ref) + natural, 1e-300)
    stats = [(float(np.max(kept[a:b], initial=0.0)), float(np.max(rel[a:b], initial=0.0)))
             for a, b in zip(flat.offsets[:-1], flat.offsets[1:], strict=True)]
    return (worst if forward else None), stats


def _vjps(fn: Callable) -> Callable:
    """``(leaves, cotangents) -> (outputs, [VJP for each cotangent])``, one linearisation."""
    def run(leaves: list, cotangents: list) -> tuple[list, list]:
        out, pull = jax.vjp(fn, *leaves)
        return out, [list(pull(c)) for c in cotangents]
    return run


def _pullback_of(fn: Callable, cotangent: list) -> Callable:
    """``args -> the VJP of fn at args`` for a fixed ``cotangent``: the backward as a function of the
    arguments, to be differentiated again (the cotangent is cast to each output's dtype, so a float64
    copy of the arguments meets a float64 cotangent)."""
    def pullback(*args: Any) -> list:
        split = Split.of(tuple(args))
        out, pull = jax.vjp(_outputs_of(fn, split), *split.diff_leaves())
        return list(pull([jnp.asarray(c, o.dtype) for c, o in zip(cotangent, out, strict=True)]))

    pullback.__name__ = f"vjp({_name(fn)})"
    return pullback


def _second_order(fn: Callable, name: str, args: tuple, split: Split, reference: Callable | None,
                  rtol: float | None, atol: float | None, eps: float | None, seed: int) -> VJPReport:
    """The VJP of ``ψ(args) = vjp(fn, args)(c)`` (a fixed random ``c``) with a cotangent ``u``, against the
    gradient of the true ``Re⟨u, ψ⟩ = D_u Re⟨c, fn(args)⟩``, the directional derivative of fn along u
    taken by finite differences of fn itself: a backward that is right in value but wrong to
    differentiate (a ``stop_gradient``, a ``round``) is caught, because the truth never runs it.
    This is grad-of-grad and the Hessian-vector product; the derivative with respect to ``c``
    (a JVP) is order 1's adjoint, checked there."""
    canonical = jax.tree_util.tree_map(_canonical, args)
    inner = Split.of(canonical)
    out = _outputs_of(fn, inner)(*inner.diff_leaves())
    if not out:
        raise TypeError(f"check_vjp: {name} returns no float or complex output, so there is no VJP to check")
    cotangent = _cotangents(out, np.random.default_rng([seed, _SALT, 2]), 1)[0]

    def truth(version: _Version, u: list) -> tuple[Callable, float]:
        inner = version.split
        c = cotangent
        x = np.concatenate([np.abs(np.asarray(v)).ravel() for v in inner.diff_leaves()])
        size = np.concatenate([np.abs(np.asarray(v)).ravel() for v in u])
        # The inner step must sit well inside the outer one, so that a kink the outer probes straddle
        # shows to them as a jump (unchecked), not as a steep slope; in float32 there is no room for that.
        fraction = 1e-3 if version.bits == 64 else 0.1
        step = fraction * _STEP[version.bits] * (float(np.sqrt(np.mean(x * x))) or 1.0) / (
            float(np.sqrt(np.mean(size * size))) or 1.0)
        with version.context():
            f0 = _outputs_of(fn, inner)(*inner.diff_leaves())
            noise = 1.5 * _EPS_OF[version.bits] * sum(float(np.sum(np.abs(np.asarray(ci)) * np.abs(np.asarray(o))))
                                                      for ci, o in zip(c, f0, strict=True)) / step

        g = _outputs_of(fn, inner)

        def phi(*xs: Any) -> list:
            def along(t: float) -> jax.Array:
                moved = [xi + t * jnp.asarray(ui, jnp.result_type(xi)) for xi, ui in zip(xs, u, strict=True)]
                terms = [jnp.sum(jnp.real(jnp.asarray(ci, o.dtype) * o)) for ci, o in zip(c, g(*moved), strict=True)]
                return jnp.sum(jnp.stack(terms))

            d1 = (along(step) - along(-step)) / (2 * step)
            d2 = (along(2 * step) - along(-2 * step)) / (4 * step)
            return [(4 * d1 - d2) / 3]

        return phi, noise

    return _check(_pullback_of(fn, cotangent), name, canonical,
                  reference=None if reference is None else _pullback_of(reference, cotangent), rtol=rtol, atol=atol,
                  eps=eps, seed=seed, order=2, truth=truth)


# ---------------------------------------------------------------- helpers for users
def numerical_vjp(fn: Callable, args: Sequence[Any], cotangent: Any, *, eps: float | None = None) -> tuple:
    """Float64 central-difference VJP of ``fn`` at ``args`` for the given ``cotangent``.

    Every float or complex entry of every argument is moved by a step relative to itself, at
    h and 2h (Richardson-combined); ``fn`` runs on float64 copies of the arguments. Integer and
    key leaves get a float0 zero, as in ``jax.vjp``; complex leaves follow JAX's convention.

    Returns:
      A tuple shaped like ``args`` whose float leaves are float64 (complex128) arrays.

    Example:
      >>> numerical_vjp(lambda x: x ** 2, (jnp.array([3.0]),), jnp.array([1.0]))[0]
      array([6.])
    """
    args = _as_args(_name(fn), args)
    with jax.enable_x64(True):
        split = Split.of(jax.tree_util.tree_map(_to64, jax.tree_util.tree_map(_canonical, args)))
    version = _Version(split, _outputs_of(fn, split), x64=True, bits=64)
    with version.context():
        out = jax.tree_util.tree_leaves(fn(*split.rebuild(split.diff_leaves())))
    ct = [np.asarray(c).astype(np.asarray(o).dtype) for c, o in zip(jax.tree_util.tree_leaves(cotangent), out,
                                                                     strict=True) if kind(o) is not None]
    with version.context():
        ct = [np.asarray(c, np.complex128 if np.iscomplexobj(c) else np.float64) for c in ct]
    flat = _Flat(split.diff_leaves())
    diffs = _Differences(version, flat, ct, _EPS_OF[64])
    scale = np.maximum(np.abs(flat.x), 1.0)
    probes = _entry_probes(diffs, flat, np.arange(flat.size), np.zeros(flat.size), eps or _STEP[64], scale,
                           _chunk(flat.size, sum(np.size(o) for o in out)))
    g = probes.verdict(np.zeros(flat.size))[3]
    grads = []
    for i, (shape, c) in enumerate(zip(flat.shapes, flat.complex, strict=True)):
        part = g[flat.offsets[i]:flat.offsets[i + 1]]
        grads.append((part[: part.size // 2] - 1j * part[part.size // 2:] if c else part).reshape(shape))
    full = [np.zeros(np.shape(x), jax.dtypes.float0) for x in split.leaves]
    for i, grad in zip(split.diff, grads, strict=True):
        full[i] = grad
    return jax.tree_util.tree_unflatten(split.treedef, full)


def numerical_grad(fn: Callable, args: Sequence[Any], *, eps: float | None = None) -> tuple:
    """Float64 central-difference gradient of a scalar ``fn`` w.r.t. every argument.

    Example:
      >>> numerical_grad(lambda x, y: x * y, (jnp.array(2.0), jnp.array(5.0)))
      (array(5.), array(2.))
    """
    return numerical_vjp(fn, args, np.ones(()), eps=eps)


def max_abs_diff(a: Any, b: Any) -> float:
    """The largest ``|a − b|`` over the float leaves of two pytrees of the same structure.

    Example:
      >>> max_abs_diff({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 2.5])})
      0.5
    """
    def floats(tree: Any) -> list[np.ndarray]:
        return [np.asarray(x).astype(np.complex128) for x in jax.tree_util.tree_leaves(tree) if kind(x) is not None]

    pairs = zip(floats(a), floats(b), strict=True)
    return max([float(np.max(np.abs(x - y), initial=0.0)) for x, y in pairs], default=0.0)
