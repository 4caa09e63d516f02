"""Pallas kernels under the oracle, in interpret mode on the CPU: no crash from what kernels use (program_id, a
grid of BlockSpecs, a scalar ref, a fixed out_shape), right rules pass and planted wrong ones fail."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference import VJPMismatch, check_vjp

pl = pytest.importorskip("jax.experimental.pallas")
BLOCK = 8


def _scaled_tanh_kernel(s_ref, x_ref, o_ref):
    i = pl.program_id(0)  # read, as tiled kernels do: it has no evaluation rule outside the kernel
    o_ref[...] = jnp.tanh(x_ref[...]) * s_ref[0] + 0.0 * i.astype(x_ref.dtype)


def _call(s, x):
    n, d = x.shape
    return pl.pallas_call(
        _scaled_tanh_kernel, grid=(n // BLOCK,),
        in_specs=[pl.BlockSpec((1,), lambda i: (0,)), pl.BlockSpec((BLOCK, d), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((BLOCK, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct(x.shape, jnp.float32), interpret=True)(s, x)  # float32, fixed


@functools.cache
def _rule(wrong: str | None):
    """s·tanh(x) over a grid of row tiles, s a scalar read from a ref; its backward right, or ``wrong``."""
    @jax.custom_vjp
    def scaled_tanh(s, x):
        return _call(s, x)

    def bwd(res, g):
        s, x = res
        t = jnp.tanh(x)
        ds = jnp.sum(g * t)[None] * (0.0 if wrong == "dropped scalar" else 1.0)
        dx = g * s[0] * (1 - t * t)
        if wrong == "tile at the wrong block":
            dx = jnp.roll(dx, BLOCK, axis=0)
        return ds, dx

    scaled_tanh.defvjp(lambda s, x: (_call(s, x), (s, x)), bwd)
    return scaled_tanh


ARGS = (np.array([1.5], np.float32), np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))


@pytest.mark.parametrize("x64", [False, True], ids=["x64 off", "x64 on"])
def test_a_tiled_kernel_with_a_scalar_ref_passes_without_a_crash(x64):
    with jax.enable_x64(x64):
        report = check_vjp(_rule(None), ARGS)
    assert report.proven and report.unchecked == 0, str(report)


@pytest.mark.parametrize("wrong", ["dropped scalar", "tile at the wrong block"])
def test_a_wrong_kernel_rule_fails(wrong):
    with pytest.raises(VJPMismatch) as caught:
        check_vjp(_rule(wrong), ARGS)
    assert {p.path for p in caught.value.problems} == {"args[0]" if wrong == "dropped scalar" else "args[1]"}


def test_jaxs_own_rms_norm_kernel_passes_in_interpret_mode():
    rms_norm = pytest.importorskip("jax.experimental.pallas.ops.gpu.rms_norm")
    rng = np.random.default_rng(1)
    x, w, b = (rng.standard_normal(shape).astype(np.float32) for shape in ((2, 4, 32), (32,), (32,)))
    report = check_vjp(functools.partial(rms_norm.rms_norm, interpret=True), (x, w, b))
    assert report.proven, str(report)
