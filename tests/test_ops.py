"""The op table: every pure op against its reference, at float32 and float64, eager, jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference.cases import CASES
from reference.verify import _row

IDS = [case.name for case in CASES]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vjp_matches_reference_and_finite_differences(case, dtype):
    # check_vjp on the eager op, then the jit and vmap VJPs against the eager one.
    row = _row(case, dtype, seed=0)
    assert row.status == "ok", row.status


def _is_float(x):
    return jnp.issubdtype(x.dtype, jnp.floating)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bfloat16_forward_matches_float32_reference_and_cotangents_keep_their_primal_dtype(case):
    args16 = case.make(np.random.default_rng(1), jnp.bfloat16)
    args32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32) if _is_float(x) else x, args16)
    out, vjp = jax.vjp(case.fn, *args16)
    got = jax.tree_util.tree_leaves(out)
    want = jax.tree_util.tree_leaves(case.ref(*args32))
    for g, w in zip(got, want, strict=True):
        # bfloat16 keeps 8 significant bits; losses are computed in float32 either way.
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), rtol=2e-2, atol=2e-2)
    cotangents = vjp(jax.tree_util.tree_map(jnp.ones_like, out))
    for primal, cotangent in zip(jax.tree_util.tree_leaves(args16), jax.tree_util.tree_leaves(cotangents),
                                 strict=True):
        if _is_float(primal):  # the mixed-precision contract: a bfloat16 primal gets a bfloat16 cotangent
            assert cotangent.dtype == primal.dtype, (case.name, primal.dtype, cotangent.dtype)


def test_import_does_not_enable_x64():
    import pure  # noqa: F401
    import reference  # noqa: F401

    assert not jax.config.jax_enable_x64
    assert pure.relu(jnp.ones(2)).dtype == jnp.float32
