"""The property suite: every law on every pure op it fits, under the active Hypothesis profile."""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from properties import PropertyViolation, laws, suite
from properties import strategies as hs


@pytest.mark.standard_promotion  # the decay laws run optax's own transforms
@pytest.mark.parametrize("prop", list(suite.PROPERTIES))
def test_property(prop):
    counts = suite.property_test(prop)()
    assert set(counts) == set(suite.PROPERTIES[prop][0]) and min(counts.values()) >= 10
    assert sum(counts.values()) >= settings().max_examples


@jax.custom_vjp
def _sigmoid_with_bad_rule(x):
    return jax.nn.sigmoid(x)


# Seed 000's mix-up: the upstream gradient g used in place of the saved output y.
_sigmoid_with_bad_rule.defvjp(lambda x: (jax.nn.sigmoid(x), None), lambda _, g: (g * (1 - g),))


def test_a_planted_wrong_rule_is_reported_with_property_op_input_and_both_sides():
    op = suite.Op("sigmoid_with_bad_rule", _sigmoid_with_bad_rule, reference.activations.sigmoid,
                  hs.float_arrays().map(lambda x: (x,)), hs.float_arrays().map(lambda x: (x,)))
    with pytest.raises(PropertyViolation) as info:
        suite.property_test("vjp_linearity", op=op)()
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
