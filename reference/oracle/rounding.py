"""What rounding explains: how far a VJP may be from its exact value without being wrong.

Three measures, each per entry of the flat VJP vector:

* :func:`natural_scale`: the RMS of the entry over random cotangents, the size its round-off is
  relative to (an entry that cancels to ~0 for one cotangent is not ~0 for the others);
* :func:`input_spread`: how far the VJP moves when every input moves by one unit of round-off.
  A VJP cannot be more accurate than that: a weight gradient that is a sum of terms cancelling
  to almost nothing moves with its terms;
* :func:`forward_rounding`: a first-order bound on what rounding in the *forward* computation
  (every value it computes, including what it saves for the backward) does to the VJP and to
  fn's outputs. A float32 VJP computed from a saved, rounded output (tanh's ``1 − y²``) or
  from large terms that cancel (sinc near 0) can be no closer to its float64 version. The
  backward's own arithmetic is not excused: a backward that throws away digits its inputs
  had (``1 − (1 − p)`` on a softmax tail) is still wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from reference.oracle.trees import Flat

# Allowances never excuse more than this fraction of an entry's scale: an error of order one is a wrong rule
# (a branch at alpha == -1 that one ulp of alpha crosses must not hide a wrong sign).
ALLOWANCE_CAP = 0.1
# How many times its sensitivity to ulp-sized input noise an entry's round-off may reach.
INPUT_SPREAD = 8.0
# How many times the first-order forward-rounding bound a float32 VJP may be off by: XLA's float32
# transcendentals are accurate to a few ulps, not half of one (jnp.tanh at 10⁶ entries reaches 3.6).
ROUNDING_FACTOR = 8.0
QUICK_COMPILE: dict[str, str | bool] = {"xla_backend_optimization_level": "0",
                                        "xla_llvm_disable_expensive_passes": True}
# Operations that compute their outputs exactly (they move, select or negate values): no rounding to inject.
EXACT = frozenset({
    "broadcast_in_dim", "reshape", "transpose", "squeeze", "expand_dims", "slice", "dynamic_slice",
    "dynamic_update_slice", "gather", "scatter", "concatenate", "pad", "select_n", "copy", "copy_p", "neg", "abs",
    "sign", "max", "min", "reduce_max", "reduce_min", "stop_gradient", "rev", "iota", "sort", "argmax", "argmin",
    "convert_element_type", "real", "imag", "conj", "complex", "floor", "ceil", "round", "clamp",
})
# Elementwise operations round each output to within half an ulp of itself. Every other inexact operation
# (a matrix product, a sum, an eigensolver, a loop) is at best backward stable: its outputs are off by
# about u times the largest of them, not u times each (an eigenvector's small entries are off by u·‖v‖).
ELEMENTWISE = frozenset({
    "add", "add_any", "sub", "mul", "div", "rem", "pow", "integer_pow", "square", "sqrt", "rsqrt", "cbrt", "exp",
    "exp2", "expm1", "log", "log1p", "logistic", "tanh", "sin", "cos", "tan", "asin", "acos", "atan", "atan2",
    "sinh", "cosh", "asinh", "acosh", "atanh", "erf", "erfc", "erf_inv", "lgamma", "digamma", "igamma", "igammac",
    "igamma_grad_a", "random_gamma_grad", "polygamma", "zeta", "bessel_i0e", "bessel_i1e", "nextafter",
    "reduce_precision", "reciprocal",
})

def natural_scale(flat: Flat, analytic: Sequence[np.ndarray]) -> np.ndarray:
    """Per entry, the RMS of the flat VJPs ``analytic`` (one per cotangent)."""
    rows = np.stack(list(analytic))
    return np.sqrt(np.mean(rows * rows, axis=0))


def input_spread(version: Any, cotangents: list[list], flat: Flat, analytic: Sequence[np.ndarray], eps: float,
                 rng: np.random.Generator, samples: int = 2) -> np.ndarray:
    """Per entry, how far the flat VJP moves when every input moves by ``±eps`` relative (``samples`` draws)."""
    worst = np.zeros(flat.size)
    leaves = version.split.diff_leaves()
    for _ in range(samples):
        with version.context():
            moved = [jnp.asarray(np.asarray(x) * (1 + eps * rng.choice([-1.0, 1.0], np.shape(x))).astype(
                np.asarray(x).real.dtype), jnp.result_type(x)) for x in leaves]
        again = version.vjp(cotangents, moved)[1]  # the same compiled program, at moved inputs
        for a, base in zip(again, analytic, strict=True):
            with np.errstate(invalid="ignore"):  # inf − inf: NaN, no allowance (below)
                worst = np.maximum(worst, np.abs(flat.real(a, conjugate=True) - base))
    return np.where(np.isfinite(worst), worst, 0.0)


def capped(allowance: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """An allowance, never more than ALLOWANCE_CAP of the entry's scale."""
    return np.minimum(allowance, ALLOWANCE_CAP * scale)


# ---------------------------------------------------------------- rounding injected into the forward
def _inline(eqn: Any) -> Any:
    """The jaxpr an equation only wraps (jit, remat, a custom rule's primal), evaluated in line; else None."""
    for name in ("jaxpr", "call_jaxpr"):
        inner = eqn.params.get(name)
        if (inner is not None and hasattr(inner, "jaxpr") and len(inner.jaxpr.invars) == len(eqn.invars)
                and len(inner.jaxpr.outvars) == len(eqn.outvars)):
            return inner
    return None


def _floating(aval: Any) -> bool:
    return hasattr(aval, "dtype") and jnp.issubdtype(aval.dtype, jnp.floating)


def _sites(jaxpr: Any, found: list) -> list:
    """The float outputs of the inexact operations, in evaluation order (what :func:`_evaluate` rounds)."""
    for eqn in jaxpr.eqns:
        inner = _inline(eqn)
        if inner is not None:
            _sites(inner.jaxpr, found)
        elif eqn.primitive.name not in EXACT:
            found += [v.aval for v in eqn.outvars if _floating(v.aval)]
    return found


def _evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], rounding: jax.Array, at: list[int]) -> list:
    """The jaxpr evaluated with ``rounding[site]`` times a rounding error added to each inexact operation's
    float outputs: half an ulp of each entry for an elementwise operation, of the largest entry for any
    other, in a fixed pattern of signs (the roundings of different entries are independent); an entry
    below the smallest normal number may be flushed to zero."""
    env: dict = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]  # noqa: E731
    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        inner = _inline(eqn)
        if inner is not None:
            outs = _evaluate(inner.jaxpr, inner.consts, values, rounding, at)
        else:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
            if eqn.primitive.name not in EXACT:
                for j, v in enumerate(eqn.outvars):
                    if _floating(v.aval):
                        info = jnp.finfo(v.aval.dtype)
                        size = (jnp.abs(outs[j]) if eqn.primitive.name in ELEMENTWISE
                                else jnp.max(jnp.abs(outs[j]), initial=0.0))
                        error = jnp.where(size < info.tiny, info.tiny, info.eps / 2 * size)
                        error = jnp.where(jnp.isfinite(error), error, 0) * _signs(v.aval.shape, v.aval.dtype, at[0])
                        outs[j] = outs[j] + rounding[at[0]].astype(v.aval.dtype) * jax.lax.stop_gradient(error)
                        at[0] += 1
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _signs(shape: tuple[int, ...], dtype: Any, salt: int) -> jax.Array:
    """±1 alternating along the entries, in a phase set by ``salt``: roundings of neighbouring entries, and of
    one entry at successive operations, do not all go one way."""
    j = jax.lax.iota(jnp.int32, int(np.prod(shape, dtype=np.int64))) + salt
    return (1 - 2 * (j & 1)).astype(dtype).reshape(shape)


def _magnitude(t: jax.Array) -> jax.Array:
    """|t|, a complex entry's parts each on its own (they are separate entries of the flat vector)."""
    return jnp.abs(t.real) + 1j * jnp.abs(t.imag) if jnp.iscomplexobj(t) else jnp.abs(t)


def forward_rounding(fn: Callable, leaves: Sequence[Any], cotangent: list,
                     context: Callable[[], Any]) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """First-order bounds on how far rounding in fn's forward moves its outputs and its VJP for ``cotangent``:
    ``Σ_ops |∂/∂v (outputs, VJP) · δv|`` over the float output ``v`` of every inexact operation of the
    forward, with ``δv`` a rounding error (see :func:`_evaluate`). None when fn cannot be traced (it reads
    values) or differentiated."""
    leaves = list(leaves)
    with context():
        structure: list = []  # the VJP's pytree structure and the number of outputs, learnt while tracing

        def forward(*xs: Any) -> list:
            out, vjp = jax.vjp(fn, *xs)
            structure[:] = [jax.tree_util.tree_structure(vjp), len(out)]
            return [*out, *jax.tree_util.tree_leaves(vjp)]
        try:
            closed = jax.make_jaxpr(forward)(*leaves)
        except Exception:  # concretization and the like: fn branches on values
            return None
        pull_def, n_out = structure
        sites = _sites(closed.jaxpr, [])
        if not sites:
            return None

        def effect(unit: jax.Array, xs: list, ct: list) -> tuple:  # one site's rounding (unit picks it), in magnitude
            def rounded(rounding: jax.Array) -> tuple:
                values = _evaluate(closed.jaxpr, closed.consts, xs, rounding, [0])
                vjp = jax.tree_util.tree_unflatten(pull_def, values[n_out:])
                return values[:n_out], list(vjp(ct))
            return jax.tree_util.tree_map(_magnitude, jax.jvp(rounded, (jnp.zeros(len(sites)),), (unit,))[1])

        total: Any = None
        try:
            units = np.eye(len(sites))
            ct = [jnp.asarray(c) for c in cotangent]
            # Inputs and cotangent are arguments, never constants XLA would fold; and a program the size of the
            # forward and backward differentiated once more, run a few times, is compiled quickly.
            one = jax.jit(effect).lower(units[0], leaves, ct).compile(QUICK_COMPILE)
            for unit in units:
                part = jax.tree_util.tree_map(lambda t: np.asarray(t).astype(
                    np.complex128 if np.iscomplexobj(t) else np.float64), one(unit, leaves, ct))
                total = part if total is None else jax.tree_util.tree_map(np.add, total, part)
        except Exception:  # a forward JAX cannot differentiate (a primitive with no JVP rule)
            return None
    return total[0], total[1]
