"""What rounding explains: how far a VJP may be from its exact value without being wrong.

Three measures, each per entry of the flat VJP vector:

* :func:`natural_scale`: the RMS of the entry over random cotangents, the size its round-off is
  relative to (an entry that cancels to ~0 for one cotangent is not ~0 for the others);
* :func:`input_spread`: how far the VJP moves when every input moves by one unit of round-off.
  A VJP cannot be more accurate than that: a weight gradient that is a sum of terms cancelling
  to almost nothing moves with its terms;
* :func:`forward_rounding`: a first-order bound on what rounding does to the VJP and to fn's
  outputs: in the *forward* computation every value it computes, including what it saves for
  the backward, and the inputs of its transcendental functions (digamma near its root is off
  by float32's absolute error); in the *backward*, its transcendental functions and its
  reductions and products, at the call's precision (a backward that recomputes tanh from x
  has the forward's limits). A float32 VJP computed from a saved, rounded output (tanh's
  ``1 − y²``) or from large terms that cancel (sinc near 0) can be no closer to its float64
  version. The backward's own arithmetic is not excused: a backward that throws away digits
  its inputs had (``1 − (1 − p)`` on a softmax tail) is still wrong, and so is one that
  rounds to a narrower float (its functions are allowed the call's rounding, no more).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from reference.oracle import kernels
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
# Primitives that run their one jaxpr once on their own operands, in order (jit was pjit, remat2 checkpoint, and
# custom_vjp_call custom_vjp_call_jaxpr in older JAX; JAX 0.12's closed_call is named eval_jaxpr).
CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "eval_jaxpr", "remat2", "checkpoint", "custom_jvp_call",
                   "custom_vjp_call", "custom_vjp_call_jaxpr"})
# Elementwise arithmetic: in the backward, its author's choice (no rounding excused there); everything else
# elementwise is a function whose float result is accurate to its inputs' rounding (backward stable).
ARITHMETIC = frozenset({"add", "add_any", "sub", "mul", "div", "rem", "integer_pow", "square", "reciprocal",
                        "nextafter"})

# What tracing or differentiating a user's function can raise: it branches on values (a concretization error),
# or JAX has no rule for a primitive on the way.
_UNTRACEABLE = (jax.errors.JAXTypeError, NotImplementedError, TypeError, ValueError)


def finite_abs(a: np.ndarray) -> np.ndarray:
    """``|a|`` where it is finite, 0 where it is not: the scale an entry's allowance is taken from (an inf or NaN
    VJP earns none)."""
    return np.where(np.isfinite(a), np.abs(a), 0.0)


def natural_scale(flat: Flat, analytic: Sequence[np.ndarray]) -> np.ndarray:
    """Per entry, the RMS of the flat VJPs ``analytic`` (one per cotangent), of their finite values
    (:func:`finite_abs`)."""
    rows = finite_abs(np.stack(list(analytic)))
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


# ---------------------------------------------------------------- rounding injected into the forward (and backward)
def inlined(eqn: Any) -> Any:
    """The jaxpr an equation only wraps (jit, remat, a custom rule's primal, a Pallas kernel as JAX's interpreter
    runs it), evaluated in line; else None (a scan's body has the scan's arity, but runs on slices of its operands:
    the scan is bound as it is)."""
    if eqn.primitive.name == "pallas_call":
        try:
            return kernels.interpreted(eqn)
        except kernels.Uninterpretable:
            return None
    if eqn.primitive.name not in CALLS:
        return None
    for name in ("jaxpr", "call_jaxpr"):
        inner = eqn.params.get(name)
        if (inner is not None and hasattr(inner, "jaxpr") and len(inner.jaxpr.invars) == len(eqn.invars)
                and len(inner.jaxpr.outvars) == len(eqn.outvars)):
            return inner
    return None


def _floating(aval: Any) -> bool:
    return hasattr(aval, "dtype") and jnp.issubdtype(aval.dtype, jnp.floating)


TF32_EPS = 2.0**-10  # a float32 matmul run as TensorFloat-32 rounds its inputs to 10 mantissa bits


def _backend() -> str:
    return jax.default_backend()


def runs_tf32(eqn: Any) -> bool:
    """A float32 dot that the backend runs as TF32: on a GPU, at default precision, unless
    ``jax_default_matmul_precision`` asks for more. Read through what JAX keeps public, with a safe fallback."""
    if eqn.primitive.name != "dot_general" or not all(
            getattr(v.aval, "dtype", None) == jnp.float32 for v in eqn.invars):
        return False
    try:
        backend = _backend()
        default = str(getattr(jax.config, "jax_default_matmul_precision", None) or "default").lower()
    except RuntimeError:  # no backend: nothing runs as TF32
        return False
    asked = eqn.params.get("precision")
    explicit = any(p is not None and "DEFAULT" not in str(p) for p in (asked if isinstance(asked, tuple) else (asked,)))
    return backend == "gpu" and not explicit and default in ("default", "bfloat16", "tensorfloat32", "fastest")


@dataclasses.dataclass(frozen=True)
class _Policy:
    """Where rounding is injected. The forward: every inexact operation at its own precision. The backward: its
    functions, reductions and products only, at the call's precision ``eps`` (its elementwise arithmetic is its
    author's). An operation whose precision is not its dtype's has it in both: ``reduce_precision`` (its mantissa
    bits) and a dot run as TF32 (its inputs rounded to 10 bits)."""

    backward: bool = False
    eps: float | None = None
    to_leaves: frozenset[int] = frozenset()  # ids of the backward's roundings to a narrower leaf (:func:`to_leaves`)

    def outputs(self, eqn: Any) -> bool:
        name = eqn.primitive.name
        return id(eqn) in self.to_leaves or name not in EXACT and not (self.backward and name in ARITHMETIC)

    def relative(self, eqn: Any) -> bool:
        """Whether an output's rounding is half an ulp of each entry (else of the largest)."""
        return eqn.primitive.name in ELEMENTWISE or id(eqn) in self.to_leaves

    def inputs(self, eqn: Any) -> bool:
        """A function whose result is accurate to its inputs' rounding: their rounding is injected too."""
        name = eqn.primitive.name
        return name in ELEMENTWISE and name not in ARITHMETIC and name != "reduce_precision"

    def error(self, value: jax.Array, dtype: Any, relative: bool, eqn: Any) -> jax.Array:
        """A rounding error of ``value``: half an ulp of each entry (``relative``) or of the largest."""
        info = jnp.finfo(dtype)
        # the backward: the call's, whatever its dtype; a rounding to a narrower leaf, that leaf's
        eps = info.eps if self.eps is None or id(eqn) in self.to_leaves else self.eps
        if eqn.primitive.name == "reduce_precision":
            eps = max(eps, 2.0 ** -int(eqn.params.get("mantissa_bits", info.nmant)))
        size = jnp.abs(value) if relative else jnp.max(jnp.abs(value), initial=0.0)
        error = jnp.where(size < info.tiny, info.tiny, eps / 2 * size)
        return jax.lax.stop_gradient(jnp.where(jnp.isfinite(error), error, 0))


def to_leaves(jaxpr: Any, eps: float) -> frozenset[int]:
    """The equations of a backward that round its VJP to a leaf narrower than the call (``eps``): a convert to a
    narrower float, or a sum in a float narrower than the call, whose result reaches the VJP through nothing but
    moves (EXACT) and such sums. JAX's own VJP of a bfloat16 leaf cast to float32 twice (a residual) rounds each
    part to bfloat16 and adds them in bfloat16, which cancelling parts make a few percent of their sum. A
    backward that computes in the narrower float (a product, a function) is its author's, not excused."""
    out = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    consumers: dict[Any, list] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, Literal):
                consumers.setdefault(v, []).append(eqn)
    leaving: set[int] = set()  # equations whose every output reaches the VJP only through moves and sums

    def leaves_only(v: Any) -> bool:
        return (v in out or v in consumers) and all(id(e) in leaving for e in consumers.get(v, []))

    sites: set[int] = set()
    for eqn in reversed(jaxpr.eqns):
        if not eqn.outvars or not eqn.invars or not all(leaves_only(v) for v in eqn.outvars):
            continue
        name, aval, first = eqn.primitive.name, eqn.outvars[0].aval, eqn.invars[0].aval
        narrower = _floating(aval) and float(jnp.finfo(aval.dtype).eps) > eps
        if name == "convert_element_type":  # a convert passes the VJP on only where it rounds it to the leaf's
            if not (narrower and _floating(first) and jnp.finfo(aval.dtype).nmant < jnp.finfo(first.dtype).nmant):
                continue  # (a bfloat16 round trip of a float32 leaf's VJP is its author's)
            sites.add(id(eqn))
        elif name == "add_any":
            if narrower:
                sites.add(id(eqn))
        elif name not in EXACT:
            continue
        leaving.add(id(eqn))
    return frozenset(sites)


def _sites(jaxpr: Any, found: list, policy: _Policy) -> list:
    """The float values :func:`_evaluate` rounds, in evaluation order: inputs of functions, outputs of operations."""
    for eqn in jaxpr.eqns:
        inner = inlined(eqn)
        if inner is not None:
            _sites(inner.jaxpr, found, policy)
            continue
        if policy.inputs(eqn):
            found += [v.aval for v in eqn.invars if _floating(v.aval)]
        if policy.outputs(eqn):
            found += [v.aval for v in eqn.outvars if _floating(v.aval)]
    return found


def _evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], rounding: jax.Array, at: list[int],
              policy: _Policy) -> list:
    """The jaxpr evaluated with ``rounding[site]`` times a rounding error added at each site of :func:`_sites`:
    half an ulp of each entry for an elementwise operation (and a function's inputs), of the largest entry
    for any other, in a fixed pattern of signs (the roundings of different entries are independent); an
    entry below the smallest normal number may be flushed to zero."""
    env: dict = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]  # noqa: E731

    def rounded(value: jax.Array, aval: Any, error: jax.Array) -> jax.Array:
        error = error * _signs(aval.shape, aval.dtype, at[0])
        at[0] += 1
        return value + rounding[at[0] - 1].astype(aval.dtype) * error

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        inner = inlined(eqn)
        if inner is not None:
            outs = _evaluate(inner.jaxpr, inner.consts, values, rounding, at, policy)
        else:
            if policy.inputs(eqn):
                values = [rounded(x, v.aval, policy.error(x, v.aval.dtype, True, eqn)) if _floating(v.aval) else x
                          for x, v in zip(values, eqn.invars, strict=True)]
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
            if runs_tf32(eqn):  # inputs rounded to 10 bits: each output off by up to 2⁻¹⁰ Σ|a||b|, in closed form
                with eqn.ctx.manager:
                    size = eqn.primitive.bind(*map(jnp.abs, values), **eqn.params)
                outs = [rounded(outs[0], eqn.outvars[0].aval, jax.lax.stop_gradient(TF32_EPS * size))]
            elif policy.outputs(eqn):
                outs = [rounded(o, v.aval, policy.error(o, v.aval.dtype, policy.relative(eqn), eqn))
                        if _floating(v.aval) else o for o, v in zip(outs, eqn.outvars, strict=True)]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _signs(shape: tuple[int, ...], dtype: Any, salt: int) -> jax.Array:
    """±1 alternating along the entries, in a phase set by ``salt``: roundings of neighbouring entries, and of
    one entry at successive operations, do not all go one way."""
    j = jax.lax.iota(jnp.int32, int(np.prod(shape, dtype=np.int64))) + salt
    return (1 - 2 * (j & 1)).astype(dtype).reshape(shape)


def _magnitude(t: jax.Array) -> jax.Array:
    """|t|, a complex entry's parts each on its own (they are separate entries of the flat vector)."""
    return jax.lax.complex(jnp.abs(t.real), jnp.abs(t.imag)) if jnp.iscomplexobj(t) else jnp.abs(t)


def forward_rounding(fn: Callable, leaves: Sequence[Any], cotangent: list, context: Callable[[], Any],
                     backward_eps: float | None = None) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """First-order bounds on how far rounding moves fn's outputs and its VJP for ``cotangent``:
    ``Σ_sites |∂/∂v (outputs, VJP) · δv|`` over every site ``v`` of the forward (see :func:`_evaluate`), and,
    with ``backward_eps``, of the backward (its functions and reductions, at that precision). None when fn
    cannot be traced (it reads values) or differentiated."""
    leaves = list(leaves)
    with context():
        structure: list = []  # the VJP's pytree structure and the number of outputs, learnt while tracing

        def forward(*xs: Any) -> list:
            out, vjp = jax.vjp(fn, *xs)
            structure[:] = [jax.tree_util.tree_structure(vjp), len(out)]
            return [*out, *jax.tree_util.tree_leaves(vjp)]
        ct = [jnp.asarray(c) for c in cotangent]
        try:
            closed = jax.make_jaxpr(forward)(*leaves)
            pull_def, n_out = structure
            back = jax.make_jaxpr(lambda saved, c: list(jax.tree_util.tree_unflatten(pull_def, saved)(c)))(
                [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.out_avals[n_out:]], ct)
        except _UNTRACEABLE:  # fn branches on values, or JAX cannot differentiate it
            return None
        forward_policy = _Policy()
        backward_policy = _Policy(backward=True, eps=backward_eps,
                                  to_leaves=to_leaves(back.jaxpr, backward_eps) if backward_eps else frozenset())
        sites = _sites(closed.jaxpr, [], forward_policy)
        if backward_eps is not None:
            sites = _sites(back.jaxpr, sites, backward_policy)
        if not sites:
            return None

        def effect(unit: jax.Array, xs: list, ct: list) -> tuple:  # one site's rounding (unit picks it), in magnitude
            def rounded(rounding: jax.Array) -> tuple:
                at = [0]
                values = _evaluate(closed.jaxpr, closed.consts, xs, rounding, at, forward_policy)
                if backward_eps is None:
                    vjp = jax.tree_util.tree_unflatten(pull_def, values[n_out:])(ct)
                else:
                    vjp = _evaluate(back.jaxpr, back.consts, [*values[n_out:], *ct], rounding, at, backward_policy)
                return values[:n_out], list(vjp)
            return jax.tree_util.tree_map(_magnitude, jax.jvp(rounded, (jnp.zeros(len(sites)),), (unit,))[1])

        total: Any = None
        units = np.eye(len(sites))
        try:
            # Inputs and cotangent are arguments, never constants XLA would fold; and a program the size of the
            # forward and backward differentiated once more, run a few times, is compiled quickly.
            one = jax.jit(effect).lower(units[0], leaves, ct).compile(QUICK_COMPILE)
        except _UNTRACEABLE:  # a primitive with no JVP rule on the way
            return None
        for unit in units:
            part = jax.tree_util.tree_map(lambda t: np.asarray(t).astype(
                np.complex128 if np.iscomplexobj(t) else np.float64), one(unit, leaves, ct))
            total = part if total is None else jax.tree_util.tree_map(np.add, total, part)
    return total[0], total[1]
