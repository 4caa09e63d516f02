"""The configurations other projects' test suites run under: lineax's and optimistix's conftest set strict dtype
promotion and rank promotion "raise". The oracle's own arithmetic must run under them, whatever fn runs under.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference import VJPMismatch, check_transforms, check_vjp

C = np.linspace(1.0, 2.0, 3).astype(np.float32)
CASES = {  # name: (fn, args at x64 off, args at x64 on)
    "complex square": (lambda z: z * z, (np.array([1 + 2j, 3 - 1j, 0.5j], np.complex64),),
                       (np.array([1 + 2j, 3 - 1j, 0.5j]),)),
    "|z|² + re z": (lambda z: jnp.abs(z) ** 2 + jnp.real(z), (np.array([1 + 2j, 3 - 1j], np.complex64),),
                    (np.array([1 + 2j, 3 - 1j]),)),
    "float32 constant": (lambda x: jnp.sin(x) * C, (np.ones(3, np.float32),), (np.ones(3, np.float32),)),
    "explicit broadcast": (lambda x, b: jnp.tanh(x + b[None, :]), (np.ones((4, 3), np.float32), np.ones(3, np.float32)),
                           (np.ones((4, 3)), np.ones(3))),
}


@pytest.mark.parametrize("x64", [False, True], ids=["x64 off", "x64 on"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_no_oracle_error_under_strict_promotion_and_rank_promotion_raise(name, x64):
    fn, args32, args64 = CASES[name]
    args = args64 if x64 else args32
    with jax.enable_x64(x64), jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        for order in (1, 2):
            report = check_vjp(fn, args, order=order)
            assert report.proven, str(report)
        check_transforms(fn, args)


def test_a_wrong_complex_rule_still_fails_under_them():
    @jax.custom_vjp
    def square(z):
        return z * z

    square.defvjp(lambda z: (z * z, z), lambda z, g: (g * 2 * jnp.conj(z),))  # wrong: the transpose of 2z·dz is 2z·g
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        with pytest.raises(VJPMismatch):
            check_vjp(square, (np.array([1 + 2j, 3 - 1j]),))


@pytest.mark.parametrize("x64", [False, True], ids=["x64 off", "x64 on"])
def test_a_complex_leaf_judged_in_blocks_is_no_oracle_error_under_them(x64):
    """Past the per-entry limit a leaf is judged in blocks: optimistix's rules of complex128[3,2,4,3,2,4] leaves
    were oracle errors there under rank promotion "raise" (a (3, n) by (n,) product in the block program)."""
    z = np.linspace(0.5, 2.0, 1200) * (1 + 0.5j)
    with jax.enable_x64(x64), jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        report = check_vjp(lambda z: z * z, (z.astype(np.complex128 if x64 else np.complex64),))
    assert report.proven and report.leaves[0].method == "blocks", str(report)
