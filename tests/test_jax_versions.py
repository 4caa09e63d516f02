"""What handgrad reads from JAX that JAX does not promise to keep: the layout of primitives' params.

The precision walk (reference.oracle.precision) follows dependence through nested jaxprs. JAX 0.11 dropped scan's
num_consts and num_carry params; a walk that read them by name crashed every check of a function with a scan.
It now reads loops' layouts from their jaxprs' arities and types, and takes the conservative path (every input
may reach every output) for a primitive or layout it does not know."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from jax.extend.core import Primitive

from reference.oracle import jaxprs


def _walk(closed, dependent):
    """Which outputs the ``dependent`` inputs reach (the walk marks each with the narrowest float on the way)."""
    found = jaxprs._Found(bits=52)
    marks = jaxprs._walk(closed.jaxpr, [52 if d else None for d in dependent], found)
    return [m is not None for m in marks], found


# A primitive no JAX version has: it runs its nested program once, like a jit, but the walk cannot know that.
_mystery = Primitive("handgrad_test_mystery")
_mystery.multiple_results = True
_mystery.def_abstract_eval(lambda *avals, body: body.out_avals)


def _program(a, b):  # b reaches only the second output, through a float16 cast
    return a * 2, b.astype(jnp.float16)


def test_an_unknown_primitive_with_a_nested_program_takes_the_conservative_path():
    x = jnp.ones(3, jnp.float32)
    closed = jax.make_jaxpr(lambda a, b: _mystery.bind(a, b, body=jax.make_jaxpr(_program)(a, b)))(x, x)
    assert [e.primitive.name for e in closed.jaxpr.eqns] == ["handgrad_test_mystery"]
    marks, found = _walk(closed, [True, False])
    # Read as a call, only the first output would depend on a, and the float16 cast would be off the path.
    assert marks == [True, True]
    assert found.bits == 10  # the nested program was walked with every input dependent


def test_an_unknown_primitive_without_a_nested_program_marks_every_output():
    closed = jax.make_jaxpr(lambda a, b: _mystery.bind(a, b, body=jax.make_jaxpr(lambda a, b: (a, b))(a, b)))(
        jnp.ones(2), jnp.ones(2))
    eqn = closed.jaxpr.eqns[0]
    bare = closed.jaxpr.replace(eqns=[eqn.replace(params={})])  # no params at all, so no nested program
    assert _walk(closed.replace(jaxpr=bare), [False, True])[0] == [True, True]


def _strip(closed):
    """The same program with every param that holds no jaxpr removed from its loops: what the walk may not read."""
    eqns = [e.replace(params={n: v for n, v in e.params.items() if n in dict(jaxprs.params_jaxprs(e.params))})
            if e.primitive.name in ("scan", "while") else e for e in closed.jaxpr.eqns]
    return closed.replace(jaxpr=closed.jaxpr.replace(eqns=eqns))


def _swap(c, h, xs):  # the carry takes each x, the output the carry before it: xs reach ys one iteration late
    return lax.scan(lambda h, x: (x * c, h), h, xs)


def _count(c, x):  # a while loop whose carry meets c only in the body
    return lax.while_loop(lambda s: s[0] < 3, lambda s: (s[0] + 1, s[1] * c, s[2]), (0, x, x))[1:]


# (function, example arguments, which arguments depend on the inputs, which outputs must)
LOOPS = {
    "scan: xs reach ys through the carry": (_swap, (2.0, 1.0, jnp.ones(3)), [False, False, True], [True, True]),
    "scan: h0 reaches ys, never the final carry": (_swap, (2.0, 1.0, jnp.ones(3)), [False, True, False],
                                                   [False, True]),
    "scan: fori_loop, no xs, c reaches one carry": (
        lambda c, x, y: lax.fori_loop(0, 3, lambda i, s: (s[0] * c, s[1] + 1.0), (x, y)), (2.0, 1.0, 1.0),
        [True, False, False], [True, False]),
    "while: a body const reaches the carry it multiplies": (_count, (2.0, 1.0), [True, False], [True, False]),
    "while: x reaches both carries": (_count, (2.0, 1.0), [False, True], [True, True]),
}


@pytest.mark.parametrize("name", list(LOOPS))
def test_loops_are_read_from_their_jaxprs_not_their_params(name):
    fn, args, dependent, expected = LOOPS[name]
    closed = jax.make_jaxpr(fn)(*args)
    assert {"scan", "while"} & {e.primitive.name for e in closed.jaxpr.eqns}
    assert _walk(closed, dependent)[0] == expected
    assert _walk(_strip(closed), dependent)[0] == expected  # as on a JAX that names its params otherwise


def test_laws_run_their_products_at_full_float32():
    # On a GPU float32 matmuls default to TF32; inside a law they must not (its tolerance is a few float32 ulps).
    from properties.law import Law, OptimizerLaw

    seen = []

    def record(*_):
        seen.append(jax.config.jax_default_matmul_precision)

    Law("probe", draw=lambda op, data: (), check=record)(None, None)
    OptimizerLaw("probe", "nothing", draw=lambda data: (), check=record)(None)
    assert seen == ["float32", "float32"] and jax.config.jax_default_matmul_precision in (None, "default")
