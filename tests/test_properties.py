"""The property suite: every law on every pure op it fits, under the active Hypothesis profile; each law runs
its own row's op, and the table holds every law to the rows it is meant for."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import reference
from properties import PropertyViolation, laws, suite
from properties import strategies as hs
from properties.law import UNIVERSAL
from properties.table import BY_NAME, OPS, Op, bind


@pytest.mark.standard_promotion  # the decay laws run optax's own transforms
@pytest.mark.parametrize("prop", list(suite.PROPERTIES))
def test_property(prop):
    counts = suite.property_test(prop)()
    assert set(counts) == set(suite.PROPERTIES[prop]) and min(counts.values()) >= 10
    assert sum(counts.values()) >= settings().max_examples


def test_every_row_of_the_table_gets_the_universal_laws_and_every_law_fits_a_row():
    assert all(suite.PROPERTIES[law.name] == tuple(op.name for op in OPS) for law in UNIVERSAL)
    assert all(suite.PROPERTIES[prop] for prop in suite.PROPERTIES)
    assert set(suite.OPTIMIZER) == {"weight_decay_equivalence", "decay_non_equivalence",
                                    "cs231n_reg_is_twice_weight_decay"}


@jax.custom_vjp
def _sigmoid_with_bad_rule(x):
    return jax.nn.sigmoid(x)


# Seed 000's mix-up: the upstream gradient g used in place of the saved output y.
_sigmoid_with_bad_rule.defvjp(lambda x: (jax.nn.sigmoid(x), None), lambda _, g: (g * (1 - g),))


@pytest.fixture
def without_shrinking():
    """The active profile without its shrink phase (the failing example is reported as first found), then back."""
    active = settings.get_current_profile_name()
    settings.register_profile("handgrad-tests-no-shrink", settings.get_profile(active),
                              phases=[p for p in settings.get_profile(active).phases if p != Phase.shrink])
    settings.load_profile("handgrad-tests-no-shrink")
    yield
    settings.load_profile(active)


def test_a_planted_wrong_rule_is_reported_with_property_op_input_and_both_sides(without_shrinking):
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


# ------------------------------------------------------------------ the table holds each law to its own op
def _wrong_ops(ops):
    """Rows whose function or reference is not the op their name says (``module.op`` in pure/ and reference/)."""
    import importlib

    wrong = []
    for op in ops:
        module, short = op.name.rsplit(".", 1)
        for lib, fn in (("pure", op.unbound), ("reference", op.ref.func if hasattr(op.ref, "func") else op.ref)):
            if fn is not getattr(importlib.import_module(f"{lib}.{module}"), short, None):
                wrong.append(f"{op.name}: its {lib} side is {getattr(fn, '__qualname__', fn)}")
    return wrong


def _misplaced_laws(ops):
    """Laws named by rows they are not meant for, or missing from rows they are meant for."""
    named = {law.name: law for op in ops for law in op.laws}
    problems = []
    for name, law in named.items():
        has = {op.name for op in ops if name in {x.name for x in op.laws}}
        meant = {op.name for op in ops if law.fits(op)}
        problems += [f"{name} missing from {row}" for row in sorted(meant - has)]
        problems += [f"{name} on {row}, which it is not meant for" for row in sorted(has - meant)]
    return problems


def test_every_row_points_at_the_op_its_name_says_and_runs_the_laws_meant_for_it():
    assert _wrong_ops(OPS) == [] and _misplaced_laws(OPS) == []
    add, mul = BY_NAME["gates.add"], BY_NAME["gates.mul"]
    without = [dataclasses.replace(op, laws=()) if op is add else op for op in OPS]  # the gate law removed
    assert _misplaced_laws(without) == ["gate_routing missing from gates.add"]
    pointed = [dataclasses.replace(op, fn=mul.fn) if op is add else op for op in OPS]  # the row pointed at mul
    assert _wrong_ops(pointed) == ["gates.add: its pure side is mul"]
    x, y, g = jnp.array([[1.0, -2.0], [0.5, 3.0]]), jnp.array([2.0, 0.25]), jnp.ones((2, 2))
    gate_law = suite.law_of(add, "gate_routing")
    gate_law.check(add, (x, y, g))
    with pytest.raises(PropertyViolation, match="gate_routing"):  # and its own gate law fails it
        gate_law.check(dataclasses.replace(add, fn=mul.fn), (x, y, g))


class _Called(Exception):
    """Raised by a spy standing in for a row's op: the law under test did call it."""


def _spied(op):
    """``op`` with its function replaced by one that raises _Called when the law calls it (settings kept)."""
    @functools.wraps(op.unbound)
    def spy(*args, **kwargs):
        raise _Called(op.name)
    return dataclasses.replace(op, fn=bind(spy, **op.settings) if op.settings else spy)


@pytest.mark.parametrize("op,law", [(op, law) for op in OPS for law in op.laws],
                         ids=[f"{op.short}-{law.name}" for op in OPS for law in op.laws])
def test_each_law_tests_its_rows_op_not_a_fixed_one(op, law):
    @settings(max_examples=1, phases=[Phase.generate], database=None)
    @given(st.data())
    def run(data):
        law(_spied(op), data)

    with pytest.raises(_Called):
        run()


def _softmax_with_a_leak(x):
    """softmax whose backward forgets the ``− rowsum(g·y)`` term: right where g is constant along the axis only."""
    @jax.custom_vjp
    def f(x):
        return jax.nn.softmax(x)

    f.defvjp(lambda x: (jax.nn.softmax(x), jax.nn.softmax(x)), lambda y, g: (g * y,))
    return f(x)


def _embedding_that_overwrites(table, ids):
    """A lookup whose backward writes each id's cotangent instead of adding them: right only without repeats."""
    @jax.custom_vjp
    def f(table):
        return table[ids]

    f.defvjp(lambda t: (t[ids], t.shape), lambda shape, g: (jnp.zeros(shape, g.dtype).at[ids].set(g),))
    return f(table)


def test_the_transformer_laws_catch_a_dropped_term_and_an_overwrite():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)
    c = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5)), jnp.float32)
    laws.vjp_sums_to_zero(jax.nn.softmax, (x,), c)  # jax's own rule holds it
    with pytest.raises(laws.PropertyViolation, match="vjp_sums_to_zero"):
        laws.vjp_sums_to_zero(_softmax_with_a_leak, (x,), c)
    table = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3)), jnp.float32)
    ids = jnp.array([[1, 3], [1, 1]], jnp.int32)
    g = jnp.asarray(np.random.default_rng(3).standard_normal((2, 2, 3)), jnp.float32)
    laws.embedding_gradient_is_a_scatter_sum(lambda t, i: t[i], table, ids, g)
    with pytest.raises(laws.PropertyViolation, match="embedding_gradient_is_a_scatter_sum"):
        laws.embedding_gradient_is_a_scatter_sum(_embedding_that_overwrites, table, ids, g)
