"""The oracle: a VJP checked against float64 central differences and a reference.

For ``φ(x) = ⟨c, fn(x)⟩`` with a random cotangent ``c``, the VJP ``Jᵀc`` is ``∇φ``.
Each entry is compared with ``(φ(x + h·eᵢ) − φ(x − h·eᵢ)) / 2h``, evaluated in
float64 whatever the input dtype. Where the one-sided differences disagree (a kink:
relu(0), |0|, a max tie), any value between them is accepted, and the report counts it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Relative tolerance by dtype: a correct float32 rule passes, one computed in bfloat16 does not.
_RTOL = {"float64": 1e-6, "float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}
_CHUNK = 256  # entries per vmapped finite-difference batch; also the bisection leaf size
_MAX_ELEMENTWISE = 2048  # leaves larger than this are probed with random projections first
_PROJECTIONS = 4
_SHOWN = 10  # worst entries listed in a failure message
_SALT = 0x68616E64  # 'hand'
_REL_FLOOR = 1e-3  # relative errors of entries below this fraction of the leaf's largest are taken against it


@dataclasses.dataclass(frozen=True)
class LeafReport:
    """Errors of one differentiable argument leaf."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    method: str  # "elementwise" or "projection"
    max_abs_err: float
    max_rel_err: float
    kinks: int  # entries where the one-sided differences disagree
    ref_max_abs_err: float | None = None
    ref_max_rel_err: float | None = None


@dataclasses.dataclass(frozen=True)
class VJPReport:
    """What :func:`check_vjp` measured; ``str(report)`` is a table."""

    leaves: tuple[LeafReport, ...]
    forward_max_abs_err: float | None
    eps: float

    @property
    def max_abs_err(self) -> float:
        return max([leaf.max_abs_err for leaf in self.leaves], default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max([leaf.max_rel_err for leaf in self.leaves], default=0.0)

    @property
    def kinks(self) -> int:
        return sum(leaf.kinks for leaf in self.leaves)

    def __str__(self) -> str:
        rows = [f"{'argument':<24} {'shape':<14} {'dtype':<9} {'method':<11} {'abs err':>9} {'rel err':>9} "
                f"{'ref abs':>9} kinks"]
        for r in self.leaves:
            ref = "-" if r.ref_max_abs_err is None else f"{r.ref_max_abs_err:9.2e}"
            rows.append(f"{r.path:<24} {str(r.shape):<14} {r.dtype:<9} {r.method:<11} {r.max_abs_err:9.2e} "
                        f"{r.max_rel_err:9.2e} {ref:>9} {r.kinks}")
        if self.kinks:
            rows.append(f"{self.kinks} entries sit on a kink; any value between the one-sided differences was accepted")
        return "\n".join(rows)


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _to64(x: Any) -> Any:
    return jax.device_put(np.asarray(x, np.float64)) if _is_float(x) else x  # a transfer, no compiled convert


class _Probe:
    """φ(x) = ⟨c, fn(args)⟩ in float64, as a function of all float leaves laid end to end.

    One vector ``x`` holds every float leaf, so a check compiles one batched evaluation for
    single entries and one for dense directions, however many leaves there are.
    Must be built and used inside ``jax.enable_x64(True)``.
    """

    def __init__(self, fn: Callable, args: tuple, cotangent: Any, eps: float):
        leaves, self.treedef = jax.tree_util.tree_flatten(jax.tree_util.tree_map(_to64, args))
        self.leaves, self.eps = leaves, eps
        self.offset, pos = {}, 0
        for k, leaf in enumerate(leaves):
            if _is_float(leaf):
                self.offset[k], pos = pos, pos + leaf.size
        self.x = np.concatenate([np.asarray(leaves[k]).ravel() for k in self.offset] or [np.zeros(0)])
        ct_leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(_to64, cotangent))

        def phi(x):
            full = list(leaves)
            for k, o in self.offset.items():
                full[k] = x[o:o + leaves[k].size].reshape(leaves[k].shape)
            out = jax.tree_util.tree_leaves(fn(*jax.tree_util.tree_unflatten(self.treedef, full)))
            terms = [jnp.vdot(c, o.astype(jnp.float64)) for c, o in zip(ct_leaves, out, strict=True) if _is_float(o)]
            return sum(terms, jnp.zeros((), jnp.float64))

        def phi_at(x, i, h):  # φ with entry i moved by h
            return phi(x.at[i].add(h))

        def phi_along(x, d):  # φ moved along direction d
            return phi(x + d)

        self.phi0: float | None = None  # read off the first batched call (a zero step), saving a compile
        self._indexed = jax.jit(jax.vmap(phi_at, in_axes=(None, 0, 0)))
        self._dense = jax.jit(jax.vmap(phi_along, in_axes=(None, 0)))

    def entries(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Central, forward and backward differences of φ along the unit vectors ``idx`` of x."""
        h = self.eps * np.maximum(1.0, np.abs(self.x[idx]))
        vals = []
        for s in range(0, len(idx), _CHUNK):  # fixed-size chunks: one compilation per check
            i, hh = idx[s:s + _CHUNK], h[s:s + _CHUNK]
            n = len(i)
            pad = _CHUNK - n if len(idx) > _CHUNK else 0
            i, hh = np.pad(i, (0, pad)), np.pad(hh, (0, pad))
            values = np.asarray(self._indexed(self.x, np.concatenate([i, i, [0]]), np.concatenate([hh, -hh, [0.0]])))
            self.phi0 = float(values[-1])
            vals.append(values[:-1].reshape(2, -1)[:, :n])
        plus, minus = np.concatenate(vals, axis=1)
        return (plus - minus) / (2 * h), (plus - self.phi0) / h, (self.phi0 - minus) / h

    def directions(self, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Central, forward and backward directional derivatives of φ along rows of ``dirs``."""
        h = self.eps * max(1.0, float(np.max(np.abs(self.x), initial=0.0)))
        values = np.asarray(self._dense(self.x, np.concatenate([h * dirs, -h * dirs, np.zeros((1, self.x.size))])))
        self.phi0 = float(values[-1])
        plus, minus = values[: len(dirs)], values[len(dirs):-1]
        return (plus - minus) / (2 * h), (plus - self.phi0) / h, (self.phi0 - minus) / h

    def embed(self, k: int, d: np.ndarray) -> np.ndarray:
        """Rows of leaf-k directions placed in the full vector x."""
        full = np.zeros((d.shape[0], self.x.size))
        full[:, self.offset[k]:self.offset[k] + d.shape[1]] = d
        return full


@dataclasses.dataclass
class _Verdict:
    """Per-entry comparison of an analytic leaf with finite differences."""

    err: np.ndarray  # distance of the analytic value from the accepted interval
    tol: np.ndarray
    kink: np.ndarray
    central: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _judge(a: np.ndarray, central: np.ndarray, fwd: np.ndarray, bwd: np.ndarray,
           rtol: float, atol: float) -> _Verdict:
    tol = atol + rtol * np.abs(central)
    kink = np.abs(fwd - bwd) > 2 * tol
    lo = np.where(kink, np.minimum(fwd, bwd), central)
    hi = np.where(kink, np.maximum(fwd, bwd), central)
    err = np.maximum(0.0, np.maximum(lo - a, a - hi))
    return _Verdict(err, tol, kink, central, lo, hi)


def _unit_rows(d: np.ndarray) -> np.ndarray:
    # Unit directions: the directional derivative's error budget is then the RMS of the
    # entries' tolerances, and the curvature term of the one-sided differences stays O(h).
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _bisect(probe: _Probe, k: int, a: np.ndarray, rtol: float, atol: float,
            rng: np.random.Generator, max_blocks: int = 8) -> np.ndarray:
    """Narrows a failing projection down to at most ``max_blocks`` blocks of ≤ _CHUNK entries."""
    stack, found = [np.arange(a.size)], []
    while stack and len(found) < max_blocks:
        block = stack.pop()
        if block.size <= _CHUNK:
            found.append(block)
            continue
        for half in np.array_split(block, 2):
            d = np.zeros((1, a.size))
            d[0, half] = _unit_rows(rng.standard_normal((1, half.size)))
            c, f, b = probe.directions(probe.embed(k, d))
            tol = np.sqrt(np.sum((d[0] * (atol + rtol * np.abs(a))) ** 2)) + atol
            if abs(f[0] - b[0]) > 2 * tol or abs(d[0] @ a - c[0]) > tol:
                stack.append(half)
    return np.concatenate(found) if found else np.arange(0)


def _path(keypath: Sequence[Any]) -> str:
    return "args" + jax.tree_util.keystr(tuple(keypath))


def _tolerance(dtype: Any, rtol: float | None) -> float:
    return rtol if rtol is not None else _RTOL.get(jnp.dtype(dtype).name, 1e-4)


def _random_cotangent(out: Any, rng: np.random.Generator) -> Any:
    def draw(o):
        if _is_float(o):
            return np.asarray(rng.standard_normal(o.shape)).astype(o.dtype)  # cast in numpy: no compile
        return np.zeros(np.shape(o), jax.dtypes.float0)

    return jax.tree_util.tree_map(draw, out)


def check_vjp(fn: Callable, args: Sequence[Any], *, reference: Callable | None = None,
              rtol: float | None = None, atol: float | None = None, eps: float | None = None,
              seed: int = 0) -> VJPReport:
    """Checks the VJP of ``fn`` at ``args`` against float64 finite differences and a reference.

    Works on any JAX function of pytree arguments, including your own ``jax.custom_vjp``.
    A random cotangent ``c`` (seeded) is pulled back through ``jax.vjp(fn, *args)`` and
    each float leaf of the result is compared with

    (a) float64 central differences of ``⟨c, fn(args)⟩`` (always in float64, whatever the
        input dtype; leaves of more than 2048 entries are first probed along random
        directions and, on a mismatch, narrowed down by bisection to the failing entries);
    (b) ``jax.vjp`` of ``reference`` in float64, when given, and its forward value.

    An entry passes if ``|analytic − numerical| ≤ atol + rtol·|numerical|``. At a kink,
    where the one-sided differences disagree, any value between them is accepted.
    Integer and PRNG-key leaves are skipped (their cotangent is float0).

    Args:
      fn: a function of ``*args`` returning a pytree of arrays.
      args: a tuple of pytrees of arrays.
      reference: an independent function with the same signature, differentiated by JAX.
      rtol: relative tolerance; by default from the leaf dtype (float64 1e-6, float32 1e-4,
        float16 4e-3, bfloat16 3e-2).
      atol: absolute tolerance; by default ``rtol × (largest |gradient| in the leaf)`` plus a
        float64 round-off floor.
      eps: finite-difference step relative to ``max(1, |x|)``; default 1e-6.
      seed: seeds the cotangent and the projections.

    Returns:
      A :class:`VJPReport` with per-leaf max absolute and relative errors.

    Raises:
      AssertionError: worst entries first, each with its argument path (``args[0]['W']``),
        flat index, analytic and numerical values and the tolerance used.

    Example:
      >>> import pure
      >>> report = check_vjp(pure.relu, (jnp.array([-1.0, 0.0, 2.0]),))
      >>> report.kinks  # relu at 0: 0 lies between the one-sided slopes 0 and c
      1
    """
    args = tuple(args)
    eps = 1e-6 if eps is None else eps
    rng = np.random.default_rng([seed, _SALT])  # salted: data drawn from default_rng(seed) is not the cotangent
    out, vjp_fn = jax.vjp(fn, *args)
    cotangent = _random_cotangent(out, rng)
    analytic = vjp_fn(cotangent)

    keyed, treedef = jax.tree_util.tree_flatten_with_path(args)
    analytic_leaves = treedef.flatten_up_to(analytic)
    problems: list[tuple[float, str]] = []
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):  # float64 args meet float32 closures
        probe = _Probe(fn, args, cotangent, eps)
        forward_err, ref_leaves = None, [None] * len(keyed)
        if reference is not None:
            args64 = jax.tree_util.tree_unflatten(treedef, probe.leaves)
            ct64 = jax.tree_util.tree_map(_to64, cotangent)
            ref_out, ref_ct = jax.jit(partial(_vjp_of, reference))(args64, ct64)
            ref_leaves = treedef.flatten_up_to(ref_ct)
            forward_err = _compare_forward(out, ref_out, rtol, atol, problems)
        checked = [k for k, (_, x) in enumerate(keyed) if k in probe.offset and np.size(x)]
        small = [k for k in checked if np.size(keyed[k][1]) <= _MAX_ELEMENTWISE]
        differences = _split_entries(probe, small)  # every small leaf in one batched call
        reports = [_check_leaf(probe, k, _path(keyed[k][0]), keyed[k][1], analytic_leaves[k], ref_leaves[k],
                               differences.get(k), rtol, atol, rng, problems) for k in checked]
    if problems:
        problems.sort(key=lambda p: -p[0])
        lines = [msg for _, msg in problems[:_SHOWN]]
        more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise AssertionError(f"check_vjp: {len(problems)} mismatches in the VJP of "
                             f"{getattr(fn, '__name__', fn)!s} (worst first):\n  " + "\n  ".join(lines) + more)
    return VJPReport(tuple(reports), forward_err, eps)


def _vjp_of(fn: Callable, args: tuple, cotangent: Any) -> tuple[Any, tuple]:
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(cotangent)


def _split_entries(probe: _Probe, ks: list[int]) -> dict[int, tuple[np.ndarray, ...]]:
    """Finite differences of every entry of the leaves ``ks``, computed together."""
    if not ks:
        return {}
    sizes = [probe.leaves[k].size for k in ks]
    c, f, b = probe.entries(np.concatenate([probe.offset[k] + np.arange(n) for k, n in zip(ks, sizes, strict=True)]))
    cuts = np.cumsum(sizes)[:-1]
    return {k: parts for k, parts in zip(ks, zip(*(np.split(v, cuts) for v in (c, f, b)), strict=True), strict=True)}


def _compare_forward(out: Any, ref_out: Any, rtol: float | None, atol: float | None,
                     problems: list) -> float:
    worst = 0.0
    pairs = zip(jax.tree_util.tree_flatten_with_path(out)[0], jax.tree_util.tree_leaves(ref_out), strict=True)
    for (path, o), r in pairs:
        if not _is_float(o):
            continue
        o64, r64 = np.asarray(o, np.float64), np.asarray(r, np.float64)
        tol_r = _tolerance(o.dtype, rtol)
        scale = float(np.max(np.abs(r64), initial=0.0))
        tol = (atol if atol is not None else tol_r * scale + 1e-12) + tol_r * np.abs(r64)
        err = np.abs(o64 - r64)
        worst = max(worst, float(np.max(err, initial=0.0)))
        bad = np.flatnonzero(~(err <= tol).ravel())  # NaN on either side counts as bad
        for i in bad[:_SHOWN]:
            problems.append((float(np.inf if np.isnan(err.ravel()[i]) else err.ravel()[i] / tol.ravel()[i]),
                             f"forward output{jax.tree_util.keystr(path)} flat index {i}: fn {o64.ravel()[i]:.6g}, "
                             f"reference {r64.ravel()[i]:.6g}, tolerance {tol.ravel()[i]:.2e}"))
    return worst


def _check_leaf(probe: _Probe, k: int, path: str, x: Any, a: Any, ref: Any, differences: tuple | None,
                rtol: float | None, atol: float | None, rng: np.random.Generator, problems: list) -> LeafReport:
    if a.dtype != x.dtype or a.shape != x.shape:
        problems.append((np.inf, f"{path}: the cotangent has shape {a.shape} and dtype {a.dtype}, "
                                 f"but the primal has shape {x.shape} and dtype {x.dtype}"))
    a = np.asarray(a, np.float64).ravel()
    r = _tolerance(x.dtype, rtol)
    scale = float(np.max(np.abs(a), initial=0.0))

    if differences is not None:
        method, idx = "elementwise", np.arange(a.size)
    else:
        method = "projection"
        dirs = _unit_rows(rng.standard_normal((_PROJECTIONS, a.size)))
        c, f, b = probe.directions(probe.embed(k, dirs))
    noise = 1e-9 * (1.0 + abs(probe.phi0))  # float64 round-off of φ divided by the step
    if method == "projection":
        base = atol if atol is not None else r * scale + noise
        tol = np.sqrt(np.sum((dirs * (base + r * np.abs(a))) ** 2, axis=1)) + noise
        clean = np.all(np.abs(f - b) <= 2 * tol) and np.all(np.abs(dirs @ a - c) <= tol)
        idx = np.arange(0) if clean else _bisect(probe, k, a, r, base, rng)
        differences = probe.entries(probe.offset[k] + idx) if idx.size else None

    kink_at: dict[int, tuple[float, float]] = {}
    max_abs = max_rel = 0.0
    kinks = 0
    if differences is not None:
        c, f, b = differences
        scale = max(scale, float(np.max(np.abs(c), initial=0.0)))
        v = _judge(a[idx], c, f, b, r, atol if atol is not None else r * scale + noise)
        rel = v.err / np.maximum(np.abs(c), _REL_FLOOR * scale + 1e-300)
        for j in np.flatnonzero(~(v.err <= v.tol) | np.isnan(a[idx]))[: 4 * _SHOWN]:
            numerical = f"in [{v.lo[j]:.6g}, {v.hi[j]:.6g}] (kink)" if v.kink[j] else f"{v.central[j]:.6g}"
            problems.append((float(v.err[j] / v.tol[j]) if np.isfinite(v.err[j]) else np.inf,
                             f"{path} flat index {idx[j]}: analytic {a[idx][j]:.6g}, numerical {numerical}, "
                             f"tolerance {v.tol[j]:.2e} (rtol {r:g})"))
        max_abs, max_rel, kinks = float(np.max(v.err)), float(np.max(rel)), int(np.sum(v.kink))
        kink_at = dict(zip(idx[v.kink].tolist(), zip(v.lo[v.kink], v.hi[v.kink], strict=True), strict=True))

    ref_abs = ref_rel = None
    if ref is not None:
        ref_abs, ref_rel = _check_against_reference(probe, k, path, a, np.asarray(ref, np.float64).ravel(),
                                                    r, atol, noise, kink_at, problems)
    return LeafReport(path, tuple(x.shape), jnp.dtype(x.dtype).name, method, max_abs, max_rel, kinks,
                      ref_abs, ref_rel)


def _check_against_reference(probe: _Probe, k: int, path: str, a: np.ndarray, ref: np.ndarray, r: float,
                             atol: float | None, noise: float, kink_at: dict, problems: list
                             ) -> tuple[float, float]:
    """Compares with the reference VJP; a mismatch on a numerically confirmed kink is excused."""
    scale = float(np.max(np.abs(ref), initial=0.0))
    tol = (atol if atol is not None else r * scale + noise) + r * np.abs(ref)
    err = np.abs(a - ref)
    bad = np.flatnonzero(~(err <= tol))
    unknown = np.array([i for i in bad if i not in kink_at], dtype=int)
    if unknown.size:  # a projected leaf: learn the one-sided differences of just these entries
        c, f, b = probe.entries(probe.offset[k] + unknown)
        kinky = np.abs(f - b) > 2 * tol[unknown]
        bounds = zip(np.minimum(f, b)[kinky], np.maximum(f, b)[kinky], strict=True)
        kink_at.update(zip(unknown[kinky].tolist(), bounds, strict=True))
    excused = np.zeros(a.size, bool)
    for i in bad:
        if i in kink_at:
            lo, hi = kink_at[i]
            excused[i] = lo - tol[i] <= a[i] <= hi + tol[i]
    for i in bad[~excused[bad]][: 4 * _SHOWN]:
        problems.append((float(err[i] / tol[i]) if np.isfinite(err[i]) else np.inf,
                         f"{path} flat index {i}: analytic {a[i]:.6g}, reference {ref[i]:.6g}, "
                         f"tolerance {tol[i]:.2e} (rtol {r:g})"))
    kept = np.where(excused, 0.0, err)
    rel = kept / np.maximum(np.abs(ref), _REL_FLOOR * scale + 1e-300)
    return float(np.max(kept, initial=0.0)), float(np.max(rel, initial=0.0))


def max_abs_diff(a: Any, b: Any) -> float:
    """The largest ``|a − b|`` over the float leaves of two pytrees of the same structure.

    Example:
      >>> max_abs_diff({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 2.5])})
      0.5
    """
    def floats(tree: Any) -> list[np.ndarray]:
        return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree) if _is_float(x)]

    pairs = zip(floats(a), floats(b), strict=True)
    return max([float(np.max(np.abs(x - y), initial=0.0)) for x, y in pairs], default=0.0)


def numerical_vjp(fn: Callable, args: Sequence[Any], cotangent: Any, *, eps: float = 1e-6) -> tuple:
    """Float64 central-difference VJP of ``fn`` at ``args`` for the given ``cotangent``.

    Every float leaf of every argument is perturbed entry by entry (vmapped in chunks)
    by ``h = eps·max(1, |x|)``. Integer and key leaves get a float0 zero, as in ``jax.vjp``.

    Returns:
      A tuple shaped like ``args`` whose float leaves are float64 arrays.

    Example:
      >>> numerical_vjp(lambda x: x ** 2, (jnp.array([3.0]),), jnp.array([1.0]))[0]
      array([6.])
    """
    args = tuple(args)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        probe = _Probe(fn, args, cotangent, eps)
        central = _split_entries(probe, [k for k in probe.offset if np.size(leaves[k])])
        grads = [central[k][0].reshape(np.shape(x)) if k in central
                 else np.zeros(np.shape(x), np.float64 if _is_float(x) else jax.dtypes.float0)
                 for k, x in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, grads)


def numerical_grad(fn: Callable, args: Sequence[Any], *, eps: float = 1e-6) -> tuple:
    """Float64 central-difference gradient of a scalar ``fn`` w.r.t. every argument.

    Example:
      >>> numerical_grad(lambda x, y: x * y, (jnp.array(2.0), jnp.array(5.0)))
      (array(5.), array(2.))
    """
    return numerical_vjp(fn, args, np.ones(()), eps=eps)
