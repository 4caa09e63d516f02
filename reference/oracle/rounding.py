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
  rounds to a narrower float (its functions are allowed the call's rounding, no more). Where it
  rounds is :mod:`.sites`' to say.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle.backward import offset, to_leaves
from reference.oracle.residuals import rounded_for_backward
from reference.oracle.sites import Policy, as_forward, evaluate, sites
from reference.oracle.tolerance import LEAF_ROUNDINGS
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

def _magnitude(t: jax.Array) -> jax.Array:
    """|t|, a complex entry's parts each on its own (they are separate entries of the flat vector)."""
    return jax.lax.complex(jnp.abs(t.real), jnp.abs(t.imag)) if jnp.iscomplexobj(t) else jnp.abs(t)


class Bound(NamedTuple):
    """What rounding explains, per output and per leaf of the VJP (:func:`forward_rounding`)."""

    outputs: list[np.ndarray]
    vjp: list[np.ndarray]
    backward: list[np.ndarray]  # the part of ``vjp`` the backward's own roundings explain


def forward_rounding(fn: Callable, leaves: Sequence[Any], cotangent: list, context: Callable[[], Any],
                     backward_eps: float | None = None, factor: float = 1.0, exact: float = LEAF_ROUNDINGS
                     ) -> Bound | None:
    """First-order bounds on how far rounding moves fn's outputs and its VJP for ``cotangent``:
    ``Σ_sites |∂/∂v (outputs, VJP) · δv|`` over every site ``v`` of the forward (see :func:`_evaluate`), and,
    with ``backward_eps``, of the backward (its functions and reductions, at that precision), ``factor`` times;
    the backward's correct roundings (a convert to a narrower leaf, a ``reduce_precision``: half an ulp, exactly)
    at most ``exact`` times. None when fn cannot be traced (it reads values) or differentiated."""
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
        rules = rounded_for_backward(closed.jaxpr, [k < n_out for k in range(len(closed.out_avals))])
        forward_policy = Policy(rules=rules)
        backward_policy = Policy(backward=True, eps=backward_eps, as_forward=as_forward(closed.jaxpr, rules),
                                 to_leaves=to_leaves(back.jaxpr, backward_eps) if backward_eps else frozenset(),
                                 exact_share=min(factor, exact) / factor)
        found = sites(closed.jaxpr, [], forward_policy)
        n_forward = len(found)
        if backward_eps is not None:
            found = sites(back.jaxpr, found, backward_policy)
        if not found:
            return None
        with_offset = backward_eps is not None and offset(back.jaxpr, len(closed.out_avals) - n_out)

        def effect(unit: jax.Array, xs: list, ct: list) -> tuple:  # one site's rounding (unit picks it), in magnitude
            def rounded(rounding: jax.Array) -> tuple:
                at = [0]
                values = evaluate(closed.jaxpr, closed.consts, xs, rounding, at, forward_policy)
                if backward_eps is None:
                    vjp = jax.tree_util.tree_unflatten(pull_def, values[n_out:])(ct)
                else:
                    at_zero: dict | None = None  # each site's offset: its value at zero cotangents
                    if with_offset:
                        at_zero = {}
                        evaluate(back.jaxpr, back.consts, [*map(jax.lax.stop_gradient, values[n_out:]),
                                                           *map(jnp.zeros_like, ct)], jnp.zeros_like(rounding),
                                 [at[0]], backward_policy, record=at_zero)
                    vjp = evaluate(back.jaxpr, back.consts, [*values[n_out:], *ct], rounding, at, backward_policy,
                                   offsets=at_zero)
                return values[:n_out], list(vjp)
            return jax.tree_util.tree_map(_magnitude, jax.jvp(rounded, (jnp.zeros(len(found)),), (unit,))[1])

        total: Any = None
        backward: Any = [np.zeros(np.shape(x)) for x in leaves]  # the VJP's leaves, as the leaves
        units = np.eye(len(found))
        try:
            # Inputs and cotangent are arguments, never constants XLA would fold; and a program the size of the
            # forward and backward differentiated once more, run a few times, is compiled quickly.
            one = jax.jit(effect).lower(units[0], leaves, ct).compile(QUICK_COMPILE)
        except _UNTRACEABLE:  # a primitive with no JVP rule on the way
            return None
        for k, unit in enumerate(units):
            part = jax.tree_util.tree_map(lambda t: factor * np.asarray(t).astype(
                np.complex128 if np.iscomplexobj(t) else np.float64), one(unit, leaves, ct))
            total = part if total is None else jax.tree_util.tree_map(np.add, total, part)
            if k >= n_forward:
                backward = jax.tree_util.tree_map(np.add, backward, part[1])
    return Bound(total[0], total[1], backward)
