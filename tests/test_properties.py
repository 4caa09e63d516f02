"""The property suite: every law on every pure op it fits, under the active Hypothesis profile."""

import jax
import jax.numpy as jnp
import numpy as np
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


# ------------------------------------------------------------------ laws on users' own ops
@jax.custom_vjp
def _my_max(x, y):
    return jnp.maximum(x, y)


_my_max.defvjp(lambda x, y: (jnp.maximum(x, y), x >= y),
               lambda x_wins, g: (jnp.where(x_wins, g, 0.0), jnp.where(x_wins, 0.0, g)))

_max_ties_to_y = jax.custom_vjp(jnp.maximum)
_max_ties_to_y.defvjp(lambda x, y: (jnp.maximum(x, y), x > y),  # planted: a tie goes to y
                      lambda x_wins, g: (jnp.where(x_wins, g, 0.0), jnp.where(x_wins, 0.0, g)))


def test_gate_routing_takes_the_rule_as_data_for_a_users_gate():
    x = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    y, g = jnp.array([[1.0, 0.0, 5.0], [0.5, 2.0, 4.0]]), jnp.arange(1.0, 7.0).reshape(2, 3)  # three ties
    laws.gate_routing(_my_max, x, y, g, routing="max", ties="x")
    laws.gate_routing(jnp.maximum, x, y, g, routing="max", ties="split")  # jax's own rule splits a tie
    laws.gate_routing(jnp.multiply, x, y, g, routing=lambda a, b: (b, a))  # a local-derivative function
    with pytest.raises(PropertyViolation, match="property 'gate_routing' fails for .*: dx != g \\* d/x"):
        laws.gate_routing(_max_ties_to_y, x, y, g, routing="max", ties="x")
    with pytest.raises(TypeError, match="_my_max is not one of pure's gates; say which rule it follows"):
        laws.gate_routing(_my_max, x, y, g)


def test_backward_recursion_takes_the_activation_and_its_slope_as_data():
    params = [{"W": jnp.asarray(np.random.default_rng(i).standard_normal((4, 4)) * 0.5, jnp.float32),
               "b": jnp.zeros(4, jnp.float32)} for i in range(3)]
    x, labels = jnp.asarray(np.random.default_rng(9).standard_normal((5, 4)), jnp.float32), jnp.array([0, 1, 2, 3, 0])
    laws.backward_recursion(jax.nn.gelu, params, x, labels, slope=laws.elementwise_slope(jax.nn.gelu))
    wrong = jax.custom_vjp(jnp.tanh)
    wrong.defvjp(lambda z: (jnp.tanh(z), jnp.tanh(z)), lambda y, g: (g * (1 - y),))  # forgot the square
    with pytest.raises(PropertyViolation, match="backward_recursion"):
        laws.backward_recursion(wrong, params, x, labels, slope=laws.elementwise_slope(jnp.tanh))
