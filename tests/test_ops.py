"""The op table: every pure op against its reference and finite differences, at float32 and float64,
eager and under every transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handgrad.verify import op_row
from properties.table import OPS

IDS = [op.name for op in OPS]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_vjp_matches_reference_and_finite_differences(op, dtype):
    # check_vjp on the eager op, then check_transforms: jit, vmap, grad-of-jit, checkpoint, scan.
    row = op_row(op, dtype, seed=0)
    assert row.status == "ok", row.status


def _is_float(x):
    return jnp.issubdtype(x.dtype, jnp.floating)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_bfloat16_forward_matches_float32_reference_and_cotangents_keep_their_primal_dtype(op):
    args16 = op.example(np.random.default_rng(1), jnp.bfloat16)
    args32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32) if _is_float(x) else x, args16)
    out, vjp = jax.vjp(op.fn, *args16)
    got = jax.tree_util.tree_leaves(out)
    want = jax.tree_util.tree_leaves(op.ref(*args32))
    for g, w in zip(got, want, strict=True):
        # bfloat16 keeps 8 significant bits; losses are computed in float32 either way.
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), rtol=2e-2, atol=2e-2)
    cotangents = vjp(jax.tree_util.tree_map(jnp.ones_like, out))
    for primal, cotangent in zip(jax.tree_util.tree_leaves(args16), jax.tree_util.tree_leaves(cotangents),
                                 strict=True):
        if _is_float(primal):  # the mixed-precision contract: a bfloat16 primal gets a bfloat16 cotangent
            assert cotangent.dtype == primal.dtype, (op.name, primal.dtype, cotangent.dtype)


IMPORT_EVERYTHING_UNDER_A_USERS_PROFILE = r"""
import json, pkgutil, importlib
import jax
from hypothesis import settings

settings.register_profile("ci", derandomize=False, max_examples=7)  # the user's own, under a name handgrad once took
settings.load_profile("ci")
before = (jax.config.jax_enable_x64, jax.config.jax_numpy_dtype_promotion, jax.config.jax_default_matmul_precision)
import pure, reference, properties, handgrad
for package in (pure, reference, properties, handgrad):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
import properties.table, properties.suite, properties.laws  # the heavy ones, by name too
after = (jax.config.jax_enable_x64, jax.config.jax_numpy_dtype_promotion, jax.config.jax_default_matmul_precision)


def registered(name):
    try:
        settings.get_profile(name)
        return True
    except Exception:
        return False


current = settings()
print(json.dumps({"max_examples": current.max_examples, "derandomize": current.derandomize,
                  "ci": settings.get_profile("ci").max_examples, "jax_unchanged": before == after,
                  "handgrad_profiles": [n for n in ("handgrad-ci", "handgrad-dev", "handgrad-thorough")
                                        if registered(n)]}))
"""


def test_importing_every_module_keeps_a_users_hypothesis_profile_and_jax_config():
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING_UNDER_A_USERS_PROFILE], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state == {"max_examples": 7, "derandomize": False, "ci": 7, "jax_unchanged": True,
                     "handgrad_profiles": []}, state


def test_import_does_not_enable_x64():
    import handgrad.cli  # noqa: F401
    import properties.suite  # noqa: F401
    import pure  # noqa: F401
    import reference  # noqa: F401

    assert not jax.config.jax_enable_x64
    assert pure.relu(jnp.ones(2)).dtype == jnp.float32
