"""A backward's own roundings: which the oracle allows and which make a rule wrong.

JAX's VJP of a computation that rounds (a ``reduce_precision`` simulating bfloat16, a leaf cast to float32 and
back) rounds its cotangents the same way, and that is allowed. A backward that rounds its gradient on its own (to a
few mantissa bits, through float8) is a few percent off and fails, lifted to float64 or as called: lifting drops
the rounding, so the float64 rule is right and only the call's own VJP shows it.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from reference import VJPMismatch, check_vjp
from reference.oracle import lifting, sites, vjp

EXAMPLES = max(5, settings().max_examples // 10)
QUICK = dict(phases=[Phase.explicit, Phase.reuse, Phase.generate], deadline=None)
SIZES = [4, 64, vjp.ELEMENTWISE + 1]  # per entry, and in blocks


def _two_sin(backward):
    """``2·sin(x)`` with ``backward(x, g)`` as its rule (right up to its rounding: ``2·g·cos(x)``)."""
    f = jax.custom_vjp(lambda x: 2.0 * jnp.sin(x))
    f.defvjp(lambda x: (2.0 * jnp.sin(x), x), lambda x, g: (backward(x, g),))
    return f


def _x(n: int, dtype, seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(n), dtype)


@settings(max_examples=EXAMPLES, **QUICK)
@given(bits=st.sampled_from([1, 3, 7]), n=st.sampled_from(SIZES), cast=st.booleans(), seed=st.integers(0, 2**16))
def test_a_backward_rounding_its_gradient_to_fewer_bits_than_its_forward_fails(bits, n, cast, seed):
    """3 mantissa bits are 6% off. With the no-op cast (lifted) this was a proof: the backward's
    ``reduce_precision`` was allowed its own bits, 8 times."""
    f = _two_sin(lambda x, g: jax.lax.reduce_precision(2 * g * jnp.cos(x), exponent_bits=8, mantissa_bits=bits))
    with pytest.raises(VJPMismatch):
        check_vjp((lambda x: f(x.astype(jnp.float32))) if cast else f, (_x(n, jnp.float32, seed),), seed=seed)


@settings(max_examples=EXAMPLES, **QUICK)
@given(bits=st.sampled_from([(8, 7), (5, 10)]), n=st.sampled_from(SIZES[:2]), seed=st.integers(0, 2**16))
def test_jaxs_own_vjp_of_a_forward_that_rounds_to_fewer_bits_is_no_false_alarm(bits, n, seed):
    """bfloat16 or float16 simulated in float32: JAX's VJP rounds the cotangent as the forward rounds."""
    def simulated(x):
        return jnp.tanh(jax.lax.reduce_precision(1.5 * x, exponent_bits=bits[0], mantissa_bits=bits[1])) * x

    check_vjp(simulated, (_x(n, jnp.float32, seed),), seed=seed)
    closed = jax.make_jaxpr(lambda x: jax.vjp(simulated, x))(_x(n, jnp.float32, seed))
    assert sites.as_forward(closed.jaxpr) == {bits}


@settings(max_examples=EXAMPLES, **QUICK)
@given(f8=st.sampled_from([jnp.float8_e4m3fn, jnp.float8_e5m2]), leaf=st.sampled_from([jnp.bfloat16, jnp.float16]),
       n=st.sampled_from([16, *SIZES[1:]]), seed=st.integers(0, 2**16))
def test_a_backward_through_float8_on_a_16_bit_leaf_is_no_proof(f8, leaf, n, seed):
    """A float32 computation of a bfloat16 leaf whose backward goes through float8 (3 mantissa bits, 6%): lifted, the
    call's VJP was judged at bfloat16's own rtol (3e-2), its rounding to the leaf allowed 8 ulps; it passed.
    Now at float32's rtol plus two roundings to the leaf, each counted twice at most: a failure. As called: never
    a proof."""
    f = _two_sin(lambda x, g: (2 * g * jnp.cos(x)).astype(f8).astype(x.dtype))
    x = _x(n, leaf, seed)
    with pytest.raises(VJPMismatch):
        check_vjp(lambda x: f(x.astype(jnp.float32)), (x,), seed=seed)
    with lifting.disabled():
        try:
            report = check_vjp(lambda x: f(x.astype(jnp.float32)), (x,), seed=seed)
        except VJPMismatch:
            return
    assert not report.proven, str(report)


@pytest.mark.parametrize("lifted", [True, False], ids=["lifted", "as called"])
@pytest.mark.parametrize("leaf", [jnp.bfloat16, jnp.float16])
def test_a_backward_rounding_to_its_leafs_own_dtype_is_a_proof(leaf, lifted):
    """The other side: a float32 rule rounded to the leaf's dtype before JAX rounds it there again."""
    f = _two_sin(lambda x, g: (2 * g * jnp.cos(x)).astype(leaf).astype(x.dtype))
    with contextlib.nullcontext() if lifted else lifting.disabled():
        report = check_vjp(lambda x: f(x.astype(jnp.float32)), (_x(64, leaf, 3),), seed=3)
    assert report.proven and report.precision == ("float64" if lifted else "float32"), str(report)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_an_entry_0_in_float64_for_every_cotangent_is_allowed_the_calls_round_off(dtype):
    """b's gradient is terms its backward cancels exactly in float64 and to 2⁻³⁰ in float32 (``(1 + u) − 1 − u``,
    which XLA would fold but for the barrier). A bfloat16 model with a repeated token id did that through JAX's
    own log_softmax VJP (equal logits), 2e-8 where float64 has 0, and failed against a tolerance of float32's
    smallest normal number: now a note, within float32's eps of the VJP's largest entry."""
    def cancelled(u):
        return jax.lax.optimization_barrier(1 + u) - 1 - u

    @jax.custom_vjp
    def scaled(b, u):
        return b * cancelled(u)

    scaled.defvjp(lambda b, u: (scaled(b, u), u), lambda u, g: (g * cancelled(u), jnp.zeros_like(u)))

    def fn(x, b, u):
        return jnp.sum(jnp.tanh(x.astype(jnp.float32))) + jnp.sum(scaled(b.astype(jnp.float32), u))

    x = jnp.asarray(np.random.default_rng(0).standard_normal(4), dtype)
    report = check_vjp(fn, (x, jnp.ones(3, dtype), jnp.asarray(2.0**-30, jnp.float32)))
    assert report.precision == "float64" and [n.path for n in report.notes] == ["args[1]"] * 3, str(report)
