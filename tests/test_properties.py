"""The property suite: every law on every pure op it fits, under the active Hypothesis profile."""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from properties import PropertyViolation, laws, suite
from properties import strategies as hs
from properties.table import Op


@pytest.mark.standard_promotion  # the decay laws run optax's own transforms
@pytest.mark.parametrize("prop", list(suite.PROPERTIES))
def test_property(prop):
    counts = suite.property_test(prop)()
    assert set(counts) == set(suite.PROPERTIES[prop]) and min(counts.values()) >= 10
    assert sum(counts.values()) >= settings().max_examples


def test_every_row_of_the_table_gets_the_universal_laws_and_every_law_fits_a_row():
    assert all(len(suite.PROPERTIES[law]) == len(suite.OPS) for law in suite.UNIVERSAL)
    assert all(suite.PROPERTIES[prop] for prop in suite.PROPERTIES)
    named = {law for op in suite.OPS for law in op.laws}
    assert named <= set(suite.BODIES), named - set(suite.BODIES)


@jax.custom_vjp
def _sigmoid_with_bad_rule(x):
    return jax.nn.sigmoid(x)


# Seed 000's mix-up: the upstream gradient g used in place of the saved output y.
_sigmoid_with_bad_rule.defvjp(lambda x: (jax.nn.sigmoid(x), None), lambda _, g: (g * (1 - g),))


def test_a_planted_wrong_rule_is_reported_with_property_op_input_and_both_sides():
    op = Op("sigmoid_with_bad_rule", _sigmoid_with_bad_rule, reference.activations.sigmoid, None,
            hs.float_arrays().map(lambda x: (x,)))
    with pytest.raises(PropertyViolation) as info:
        suite.property_test("vjp_linearity", op)()
    message = str(info.value)
    assert "property 'vjp_linearity' fails for _sigmoid_with_bad_rule" in message
    assert "vjp(a*c1 + b*c2) = [" in message and "a*vjp(c1) + b*vjp(c2) = [" in message
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Failing test case" in notes or "Falsifying example" in notes  # Hypothesis's shrunk input
    assert "Draw 1: (Array(" in notes


@settings(max_examples=20)
@given(hs.tied_pairs(), st.data())
def test_laws_take_a_users_function(pair, data):
    # The same laws, pointed at a function outside this package.
    x, y = pair
    c = data.draw(hs.float_arrays(jnp.float32, x.shape))
    laws.vjp_linearity(jnp.maximum, (x, y), c, c, 2.0, 1.0)
    laws.transformations_agree(jnp.maximum, (x, y), c)


@jax.custom_batching.custom_vmap
def _cos_times(x, g):
    return jnp.cos(x) * g


@_cos_times.def_vmap
def _cos_times_batched(axis_size, in_batched, x, g):
    return jnp.cos(x) * jnp.roll(g, 1, axis=0), True  # planted: each element takes its neighbour's cotangent


@jax.custom_vjp
def _sin_that_bleeds_under_vmap(x):
    return jnp.sin(x)


_sin_that_bleeds_under_vmap.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (_cos_times(x, g),))


def test_transformations_agree_vmaps_over_distinct_elements_so_a_bleeding_batch_rule_is_caught():
    x, c = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), jnp.ones((2, 3))
    assert jnp.allclose(jax.vjp(_sin_that_bleeds_under_vmap, x)[1](c)[0], jnp.cos(x))  # right when eager
    with pytest.raises(PropertyViolation, match=r"under vmap, batch element \d, args\[0\] flat index"):
        laws.transformations_agree(_sin_that_bleeds_under_vmap, (x,), c)
    laws.transformations_agree(jnp.sin, (x,), c)  # the same law passes the plain function
