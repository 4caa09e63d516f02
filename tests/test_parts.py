"""Outputs that compute in different precisions (reference/oracle/parts.py): each is judged at its own precision.
A float16 or bfloat16 auxiliary output beside a float32 one once set the tolerance of the whole VJP: a float32
rule computed in bfloat16, or 0.3% off, passed."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from reference import VJPMismatch, check_vjp
from reference.oracle import jaxprs, lifting, parts
from reference.oracle.tolerance import BFLOAT16, FLOAT16, FLOAT32

EXAMPLES = max(4, settings().max_examples // 20)  # 5 under handgrad-ci
QUICK = dict(phases=[Phase.explicit, Phase.reuse, Phase.generate], deadline=None)


def test_each_output_has_the_precision_of_its_own_paths():
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x), jnp.cos(x).astype(jnp.float16)
    f.defvjp(lambda x: (f(x), x), lambda x, g: (g[0] * jnp.cos(x) - g[1].astype(jnp.float32) * jnp.sin(x),))

    def fn(x):
        y, aux = jax.jit(f)(x)
        return [y, aux, (x.astype(jnp.bfloat16) * 2).astype(jnp.float32), x * 0 + jnp.float32(1)]

    x = jnp.ones(3, jnp.float32)
    closed = jax.make_jaxpr(fn)(x)
    found = jaxprs.output_precisions(closed, [x], fn(x))
    assert [p.name for p in found] == ["float32", "float16", "bfloat16", "float32"]
    assert jaxprs.precision_of(closed, [x], fn(x)) == BFLOAT16
    assert parts.groups(found) == [[0, 3], [1], [2]]
    assert parts.groups([FLOAT32, FLOAT32]) == [[0, 1]]


def _with_aux(aux_dtype, error):
    """A float32 sine beside an auxiliary cosine rounded to ``aux_dtype``, and its rule with ``error`` planted."""
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x), jnp.cos(x).astype(aux_dtype)

    def bwd(x, g):
        gy, ga = g
        main = gy * jnp.cos(x)
        side = -ga.astype(jnp.float32) * jnp.sin(x)
        if error == "main 0.3% off":
            main = main * 1.003
        elif error == "main in bfloat16":
            main = (gy.astype(jnp.bfloat16) * jnp.cos(x).astype(jnp.bfloat16)).astype(jnp.float32)
        elif error == "main noisy":
            main = main * (1 + 0.01 * jnp.sin(1e3 * x))
        elif error == "side sign":
            side = -side
        elif error == "side dropped":
            side = jnp.zeros_like(side)
        elif isinstance(error, float):
            main = main * (1 + error)
        return (main + side,)
    f.defvjp(lambda x: (f(x), x), bwd)
    return f


ERRORS = ["main 0.3% off", "main in bfloat16", "main noisy", "side sign", "side dropped"]


@pytest.mark.parametrize("how", ["lifted", "as called"])
@pytest.mark.parametrize("error", [None, *ERRORS])
@settings(max_examples=max(2, EXAMPLES // 2), **QUICK)
@given(aux=st.sampled_from([jnp.float16, jnp.bfloat16]), n=st.sampled_from([64, 1500]), seed=st.integers(0, 2**16))
def test_a_low_precision_auxiliary_output_sets_no_tolerance_but_its_own(how, error, aux, n, seed):
    """Sizes on both sides of the switch to blocks (1024 entries)."""
    x = jnp.asarray(np.random.default_rng(seed).uniform(-3, 3, n), jnp.float32)
    with lifting.disabled() if how == "as called" else contextlib.nullcontext():
        if error is not None:
            with pytest.raises(VJPMismatch):
                check_vjp(_with_aux(aux, error), (x,), seed=seed)
            return
        report = check_vjp(_with_aux(aux, None), (x,), seed=seed)
    assert "outputs [0] (float32)" in report.how and f"outputs [1] ({jnp.dtype(aux).name})" in report.how
    if how == "lifted":
        assert report.proven, str(report)


@pytest.mark.parametrize("how", ["lifted", "as called"])
@pytest.mark.parametrize("off, caught", [(3e-4, True), (3e-5, False)])
def test_a_float32_output_beside_a_float16_one_is_judged_at_float32s_rtol(how, off, caught):
    """The float32 part of the rule 3e-4 off fails (float16's rtol, 4e-3, passed it); 3e-5 off passes."""
    assert FLOAT32.rtol < 3e-4 < FLOAT16.rtol
    x = jnp.asarray(np.random.default_rng(1).uniform(-3, 3, 64), jnp.float32)
    with lifting.disabled() if how == "as called" else contextlib.nullcontext():
        if caught:
            with pytest.raises(VJPMismatch) as raised:
                check_vjp(_with_aux(jnp.float16, off), (x,))
            assert raised.value.problems[0].kind in ("value", "precision")
        else:
            check_vjp(_with_aux(jnp.float16, off), (x,))


def test_the_parts_merged_count_an_entry_unchecked_where_any_part_left_it():
    x = jnp.asarray(np.random.default_rng(2).uniform(-3, 3, 64), jnp.float32)
    with lifting.disabled():
        report = check_vjp(_with_aux(jnp.float16, None), (x,))
    leaf = report.leaves[0]
    assert leaf.unchecked == int(np.sum(np.isnan(leaf.badness)))
    assert report.precision == "float16"  # the narrowest part's: the float16 output's, differenced as called
    with lifting.disabled():
        float32_part = check_vjp(lambda v: _with_aux(jnp.float16, None)(v)[0], (x,))
    assert float32_part.unchecked <= leaf.unchecked


@pytest.mark.parametrize("error", [None, "side sign"])
def test_a_reference_with_a_float16_output_confirms_the_parts(error):
    """The reference's own float16 output takes its cotangent in float16 (it was an oracle error against the
    lifted fn's float64 one)."""
    x = jnp.asarray(np.random.default_rng(3).uniform(-3, 3, 64), jnp.float32)
    reference = lambda v: (jnp.sin(v), jnp.cos(v).astype(jnp.float16))  # noqa: E731
    if error is None:
        assert check_vjp(_with_aux(jnp.float16, None), (x,), reference=reference).proven
    else:
        with pytest.raises(VJPMismatch) as raised:
            check_vjp(_with_aux(jnp.float16, error), (x,), reference=reference)
        assert "reference" in raised.value.kinds


def test_an_unknown_primitive_takes_the_precision_of_its_own_inputs_paths():
    """A primitive whose jaxpr the walk cannot read (a custom_linear_solve) marks its outputs with the narrowest
    float on its own inputs' paths and inside it, not with one that only another output's path holds."""
    def fn(x):
        aux = jnp.cos(x).astype(jnp.float16)  # traced first: the walk has met float16 before the solve
        return [aux, jax.lax.custom_linear_solve(lambda v: 2.0 * v, x, lambda mv, b: b / 2.0)]

    x = jnp.ones(3, jnp.float32)
    found = jaxprs.output_precisions(jax.make_jaxpr(fn)(x), [x], fn(x))
    assert [p.name for p in found] == ["float16", "float32"]
