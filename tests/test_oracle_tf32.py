"""float32 matmuls that run as TensorFloat-32 (a GPU's default), emulated on the CPU: the function rounds its
dots' inputs to 10 mantissa bits in float32 only, as the GPU does (its float64 version stays exact), by bit
arithmetic that a jaxpr shows no more than the GPU shows TF32; and the oracle is told the backend is a GPU's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference import VJPMismatch, check_vjp
from reference.oracle import jaxprs, sites


def _tf32(v):
    if v.dtype != jnp.float32:
        return v
    bits = jax.lax.bitcast_convert_type(v, jnp.uint32)
    return jax.lax.bitcast_convert_type((bits + jnp.uint32(0x1000)) & jnp.uint32(0xFFFFE000), jnp.float32)  # 13 bits off


def _dot(a, b):
    return _tf32(a) @ _tf32(b)


def _affine(dx_scale=1.0, dW=lambda x, g: _dot(x.T, g)):
    @jax.custom_vjp
    def f(x, W):
        return _dot(x, W)

    f.defvjp(lambda x, W: (_dot(x, W), (x, W)), lambda res, g: (dx_scale * _dot(g, res[1].T), dW(res[0], g)))
    return f


RNG = np.random.default_rng(0)
ARGS = (jnp.asarray(RNG.standard_normal((16, 48)), jnp.float32), jnp.asarray(RNG.standard_normal((48, 48)), jnp.float32))


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(sites, "_backend", lambda: "gpu")


def test_a_correct_rule_whose_dots_run_in_tf32_passes_with_notes_and_strict_fails_them(gpu):
    report = check_vjp(_affine(), ARGS)
    assert report.precision == "float64" and report.notes  # the float64 version checked; TF32's loss noted
    with pytest.raises(VJPMismatch) as info:
        check_vjp(_affine(), ARGS, precision="strict")
    assert info.value.kinds == {"precision"}


@pytest.mark.parametrize("name, wrong", [
    ("dW transposed", _affine(dW=lambda x, g: _dot(x.T, g).T)),
    ("dW doubled", _affine(dW=lambda x, g: 2 * _dot(x.T, g))),
    ("dx 0.1% off", _affine(dx_scale=1.001)),
])
def test_a_wrong_rule_still_fails_with_tf32_dots(gpu, name, wrong):
    with pytest.raises(VJPMismatch) as info:
        check_vjp(wrong, ARGS)
    assert info.value.kinds - {"precision"}  # against the differences, not only against the float64 rule


def test_a_function_rounding_to_10_bits_computes_at_that_precision():
    closed = jax.make_jaxpr(lambda v: jax.lax.reduce_precision(v, exponent_bits=8, mantissa_bits=10) * 2)(ARGS[0])
    assert jaxprs.narrowest_float(closed) == 10


def test_only_a_gpus_default_float32_dot_runs_as_tf32(gpu):
    eqn = jax.make_jaxpr(lambda a, b: a @ b)(*ARGS).jaxpr.eqns[0]
    assert sites.runs_tf32(eqn)
    precise = jax.make_jaxpr(lambda a, b: jnp.matmul(a, b, precision="highest"))(*ARGS).jaxpr.eqns[0]
    assert not sites.runs_tf32(precise)
    with jax.enable_x64(True):
        wide = jax.make_jaxpr(lambda a, b: a @ b)(*(np.asarray(a, np.float64) for a in ARGS)).jaxpr.eqns[0]
    assert not sites.runs_tf32(wide)
