"""Where rounding happens in a computation and in its VJP, and the computation evaluated with rounding injected there.

:func:`.rounding.forward_rounding` differentiates :func:`evaluate` with respect to the injected amounts: in the
*forward*, every inexact operation at its own precision; in the *backward*, its functions, reductions and
products at the call's precision (its elementwise arithmetic is its author's), its roundings to a leaf
narrower than the call (:func:`to_leaves`) and the roundings its forward does too (:func:`as_forward`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Literal

from reference.oracle import kernels

# Operations that compute their outputs exactly (they move, select or negate values): no rounding to inject.
EXACT = frozenset({
    "broadcast_in_dim", "reshape", "transpose", "squeeze", "expand_dims", "slice", "dynamic_slice",
    "dynamic_update_slice", "gather", "scatter", "concatenate", "pad", "select_n", "copy", "copy_p", "neg", "abs",
    "sign", "max", "min", "reduce_max", "reduce_min", "stop_gradient", "rev", "iota", "sort", "argmax", "argmin",
    "convert_element_type", "real", "imag", "conj", "complex", "floor", "ceil", "round", "clamp",
    "optimization_barrier", "stack",
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
# Sums into entries picked by index (a gather's transpose), each entry's terms its own: bounded in closed form.
BY_INDEX = frozenset({"scatter-add"})
# Control flow a backward binds whole, its jaxprs' roundings unseen.
CONTROL = frozenset({"cond", "scan", "while"})
# Elementwise arithmetic: in the backward, its author's choice (no rounding excused there); everything else
# elementwise is a function whose float result is accurate to its inputs' rounding (backward stable).
ARITHMETIC = frozenset({"add", "add_any", "sub", "mul", "div", "rem", "integer_pow", "square", "reciprocal",
                        "nextafter"})


def params_jaxprs(params: dict) -> list[tuple[str, Any]]:
    """The jaxprs an equation's params hold, with their names."""
    found = []
    for name, value in params.items():
        for v in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(v, "jaxpr", v)
            if hasattr(inner, "eqns") and hasattr(inner, "invars"):
                found.append((name, inner))
    return found


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
        inner = closed_jaxpr(eqn.params.get(name))
        if (inner is not None and len(inner.jaxpr.invars) == len(eqn.invars)
                and len(inner.jaxpr.outvars) == len(eqn.outvars)):
            return inner
    return None


def closed_jaxpr(inner: Any) -> Any:
    """A param's jaxpr as a closed one: as it is where it is closed (jit's; every jaxpr from JAX 0.11 on), closed
    over no constants where it is open and has none (``jax.checkpoint``'s up to JAX 0.10); else None."""
    if inner is None or hasattr(inner, "jaxpr"):
        return inner
    if hasattr(inner, "eqns") and not getattr(inner, "constvars", True):
        return ClosedJaxpr(inner, [])
    return None


def floating(aval: Any) -> bool:
    return hasattr(aval, "dtype") and jnp.issubdtype(aval.dtype, jnp.floating)


TF32_EPS = 2.0**-10  # a float32 matmul run as TensorFloat-32 rounds its inputs to 10 mantissa bits


def _backend() -> str:
    return jax.default_backend()


# A dot's algorithm (jax.lax.DotAlgorithmPreset) names the format its operands are rounded to, whatever their
# dtype: mantissa bits per operand type; three or six bfloat16 passes carry about 16 and 23 bits.
_OPERAND_BITS = {"BF16": 7, "F16": 10, "TF32": 10, "F32": 23, "F64": 52}
_PASSES_BITS = {"X3": 16, "X6": 23, "X9": 23}


def algorithm_bits(eqn: Any) -> int | None:
    """The mantissa bits a ``dot_general``'s algorithm rounds its operands to (``precision=BF16_BF16_F32``, as
    ``jax.nn.dot_product_attention`` asks for): None where it names none (a ``Precision``, ``DEFAULT``, ``ANY_*``)."""
    algorithm = eqn.params.get("precision") if eqn.primitive.name == "dot_general" else None
    if isinstance(algorithm, jax.lax.DotAlgorithmPreset):
        parts = algorithm.name.split("_")
        if parts[0] in ("DEFAULT", "ANY"):
            return None
        return _PASSES_BITS.get(parts[-1], _OPERAND_BITS.get(parts[0], 7))  # a format not listed: bfloat16's bits
    operand = getattr(algorithm, "lhs_precision_type", None)  # a jax.lax.DotAlgorithm
    return None if operand is None else int(jnp.finfo(operand).nmant)


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


def _operand_eps(eqn: Any) -> float | None:
    """How far a dot rounds its operands where they are narrower than their dtype: TF32 (:func:`runs_tf32`), or its
    algorithm's format (:func:`algorithm_bits`); None where it does not."""
    if runs_tf32(eqn):
        return TF32_EPS
    bits = algorithm_bits(eqn)
    own = min((jnp.finfo(v.aval.dtype).nmant for v in eqn.invars if floating(v.aval)), default=None)
    return None if bits is None or own is None or bits >= own else 2.0**-bits


@dataclasses.dataclass(frozen=True)
class Policy:
    """Where rounding is injected. The forward: every inexact operation at its own precision. The backward: its
    functions, reductions and products only, at the call's precision ``eps`` or their dtype's where finer (its
    elementwise arithmetic is its author's); its roundings to a narrower leaf (:func:`to_leaves`) at that leaf's;
    a ``reduce_precision`` only where the forward rounds to the same bits (:func:`as_forward`: JAX's VJP of one is
    one; a backward that rounds its gradient to 3 bits on its own is 6% off, not rounded). A dot run as TF32 has
    its inputs rounded to 10 bits. A correct rounding (a convert, ``reduce_precision``) of the backward counts
    ``exact_share`` times."""

    backward: bool = False
    eps: float | None = None
    to_leaves: frozenset[int] = frozenset()  # ids of the backward's roundings to a narrower leaf (backward.to_leaves)
    as_forward: frozenset[tuple[int, int]] = frozenset()  # the bits the forward's reduce_precisions round to
    exact_share: float = 1.0
    rules: frozenset[int] = frozenset()  # ids of the forward's roundings for the backward alone (residuals.py)

    def outputs(self, eqn: Any) -> bool:
        name = eqn.primitive.name
        if id(eqn) in self.rules:  # the rule's own choice, as a backward's narrowing is
            return False
        if self.backward and name == "reduce_precision":
            return _rounds_to(eqn) in self.as_forward
        if narrowing(eqn):  # float32 work rounded to bfloat16: in a backward, where its forward computes in it too
            to = _format(eqn.outvars[0].aval.dtype)
            return not self.backward or id(eqn) in self.to_leaves or to in self.as_forward
        return id(eqn) in self.to_leaves or name not in EXACT and not (self.backward and name in ARITHMETIC)

    def relative(self, eqn: Any) -> bool:
        """Whether an output's rounding is half an ulp of each entry (else of the largest)."""
        return eqn.primitive.name in ELEMENTWISE or id(eqn) in self.to_leaves or narrowing(eqn)

    def inputs(self, eqn: Any) -> bool:
        """A function whose result is accurate to its inputs' rounding: their rounding is injected too."""
        name = eqn.primitive.name
        return name in ELEMENTWISE and name not in ARITHMETIC and name != "reduce_precision"

    def error(self, value: jax.Array, dtype: Any, relative: bool, eqn: Any) -> jax.Array:
        """A rounding error of ``value``: half an ulp of each entry (``relative``) or of the largest."""
        info = jnp.finfo(dtype)
        name = eqn.primitive.name
        if id(eqn) in self.to_leaves or narrowing(eqn) or name == "reduce_precision":  # a correct rounding
            eps = max(float(info.eps), 2.0 ** -_rounds_to(eqn)[1]) if name == "reduce_precision" else info.eps
            share = self.exact_share if self.backward else 1.0
        elif name in BY_INDEX:  # correct roundings, bounded in closed form: once, at the call's precision or finer
            eps = info.eps if self.eps is None else min(self.eps, float(info.eps))
            share = self.exact_share
        else:  # the backward: the call's, or its dtype's where finer (float32 work in a bfloat16 call); a loop's or
            # a branch's, its dtype's (inside, JAX's transposes round to it: a bfloat16 carry, a residual in a cond)
            eps = info.eps if self.eps is None or name in CONTROL else min(self.eps, float(info.eps))
            share = 1.0
        size = jnp.abs(value) if relative else jnp.max(jnp.abs(value), initial=0.0)  # (wider than dtype: BY_INDEX)
        error = jnp.where(size < float(info.tiny), float(info.tiny), share * float(eps) / 2 * size)
        error = jnp.where(error <= float(info.max), error, 0)  # (inf or NaN: no allowance)
        return jax.lax.stop_gradient(error.astype(dtype))


def narrowing(eqn: Any) -> bool:
    """A convert from a float to a float with fewer mantissa bits: it rounds."""
    if eqn.primitive.name != "convert_element_type":
        return False
    first, aval = eqn.invars[0].aval, eqn.outvars[0].aval
    return floating(first) and floating(aval) and jnp.finfo(aval.dtype).nmant < jnp.finfo(first.dtype).nmant


def _rounds_to(eqn: Any) -> tuple[int, int]:
    """A ``reduce_precision``'s (exponent, mantissa) bits."""
    info = jnp.finfo(eqn.invars[0].aval.dtype)
    return int(eqn.params.get("exponent_bits", info.nexp)), int(eqn.params.get("mantissa_bits", info.nmant))


def _format(dtype: Any) -> tuple[int, int]:
    info = jnp.finfo(dtype)
    return int(info.nexp), int(info.nmant)


def as_forward(jaxpr: Any, rules: frozenset[int] = frozenset()) -> frozenset[tuple[int, int]]:
    """The (exponent, mantissa) bits a forward rounds to, in nested jaxprs too: its ``reduce_precision`` equations',
    and the narrower float of each convert between floats (bfloat16 activations cast to float32 and back); not
    ``rules``' (roundings of residuals alone)."""
    eqns = [e for e in jaxpr.eqns if id(e) not in rules]
    found = {_rounds_to(e) for e in eqns if e.primitive.name == "reduce_precision"}
    for e in eqns:
        if e.primitive.name == "convert_element_type" and floating(e.invars[0].aval) and floating(e.outvars[0].aval):
            found.add(min(_format(e.invars[0].aval.dtype), _format(e.outvars[0].aval.dtype), key=lambda f: f[1]))
    for eqn in eqns:
        inner = inlined(eqn)
        for sub in [inner.jaxpr] if inner is not None else [j for _, j in params_jaxprs(eqn.params)]:
            found |= as_forward(sub, rules)
    return frozenset(found)


def sites(jaxpr: Any, found: list, policy: Policy) -> list:
    """The float values :func:`_evaluate` rounds, in evaluation order: inputs of functions, outputs of operations."""
    for eqn in jaxpr.eqns:
        inner = inlined(eqn)
        if inner is not None:
            sites(inner.jaxpr, found, policy)
            continue
        if policy.inputs(eqn):
            found += [v.aval for v in eqn.invars if floating(v.aval)]
        if policy.outputs(eqn):
            found += [v.aval for v in eqn.outvars if floating(v.aval)]
    return found


def evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], rounding: jax.Array, at: list[int],
              policy: Policy, offsets: dict[int, jax.Array] | None = None, record: dict[int, jax.Array] | None = None
              ) -> list:
    """The jaxpr evaluated with ``rounding[site]`` times a rounding error added at each site of :func:`_sites`:
    half an ulp of each entry for an elementwise operation (and a function's inputs), of the largest entry
    for any other, in a fixed pattern of signs (the roundings of different entries are independent); an
    entry below the smallest normal number may be flushed to zero. ``record`` collects each site's value;
    ``offsets`` (a backward's, recorded at zero cotangents: backward.offset) are taken off the value of a site
    the cotangents move, where finite, before its rounding error is sized."""
    env: dict = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]  # noqa: E731

    def error(value: jax.Array, aval: Any, relative: bool, eqn: Any) -> jax.Array:
        if record is not None:
            record[at[0]] = value
        if offsets is not None:  # a value the cotangents move: its part they move (of each entry, in a stack too)
            o = offsets[at[0]]
            moved = jnp.any((o != value) & jnp.isfinite(o) & jnp.isfinite(value))
            value = jnp.where(moved & jnp.isfinite(o) & (jnp.abs(value - o) < jnp.abs(value)), value - o, value)
        return policy.error(value, aval.dtype, relative, eqn)

    def rounded(value: jax.Array, aval: Any, error: jax.Array) -> jax.Array:
        error = error * signs(aval.shape, aval.dtype, at[0])
        at[0] += 1
        return value + rounding[at[0] - 1].astype(aval.dtype) * error

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        inner = inlined(eqn)
        if inner is not None:
            outs = evaluate(inner.jaxpr, inner.consts, values, rounding, at, policy, offsets, record)
        else:
            if policy.inputs(eqn):
                values = [rounded(x, v.aval, error(x, v.aval, True, eqn)) if floating(v.aval) else x
                          for x, v in zip(values, eqn.invars, strict=True)]
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
            narrowed = _operand_eps(eqn)
            if narrowed is not None:  # inputs rounded: each output off by up to eps Σ|a||b|, in closed form
                with eqn.ctx.manager:
                    size = eqn.primitive.bind(*map(jnp.abs, values), **eqn.params)
                outs = [rounded(outs[0], eqn.outvars[0].aval, jax.lax.stop_gradient(narrowed * size))]
            elif (eqn.primitive.name in BY_INDEX and policy.backward and floating(eqn.outvars[0].aval)
                  and policy.outputs(eqn)):  # (a bound already: no offset taken off)
                aval = eqn.outvars[0].aval
                outs = [rounded(outs[0], aval, policy.error(_summed(eqn, values), aval.dtype, True, eqn))]
            elif policy.outputs(eqn):
                outs = [rounded(o, v.aval, error(o, v.aval, policy.relative(eqn), eqn))
                        if floating(v.aval) else o for o, v in zip(outs, eqn.outvars, strict=True)]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _summed(eqn: Any, values: Sequence[jax.Array]) -> jax.Array:
    """A scatter-add's rounding bound in closed form, per entry, not its largest entry's (a gather's transpose adds
    each entry's own terms): one rounding of its terms' magnitudes, plus one of its sum per inexact addition (terms
    of one sign stall a long bfloat16 sum). Adding a 0, or to one, is exact: none where no index repeats, nor where
    the cotangents of all but one of the lookups are masked. Summed in float32 at least (float16 overflows, and a
    bfloat16 count stops at 256)."""
    operand, indices, updates = values
    wide = jnp.float64 if jnp.finfo(eqn.outvars[0].aval.dtype).bits == 64 else jnp.float32
    p = eqn.params
    add = functools.partial(jax.lax.scatter_add, dimension_numbers=p["dimension_numbers"],
                            indices_are_sorted=p["indices_are_sorted"], unique_indices=p["unique_indices"],
                            mode=p["mode"])
    total = add(jnp.abs(operand).astype(wide), indices, jnp.abs(updates).astype(wide))
    terms = add((operand != 0).astype(wide), indices, (updates != 0).astype(wide))
    inexact = jnp.maximum(terms - 1, 0)  # additions of a 0, or to one, are exact
    summed = jnp.abs(add(operand.astype(wide), indices, updates.astype(wide)))
    return jax.lax.stop_gradient(inexact * summed + jnp.minimum(inexact, 1) * total)


def signs(shape: tuple[int, ...], dtype: Any, salt: int) -> jax.Array:
    """±1 alternating along the entries, in a phase set by ``salt``: roundings of neighbouring entries, and of
    one entry at successive operations, do not all go one way."""
    j = jax.lax.iota(jnp.int32, int(np.prod(shape, dtype=np.int64))) + salt
    return (1 - 2 * (j & 1)).astype(dtype).reshape(shape)
