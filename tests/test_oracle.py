"""The oracle's own test: check_vjp must FAIL deliberately wrong rules and PASS correct ones at kinks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pure
import reference
from reference import VJPMismatch, check_vjp, numerical_grad, numerical_vjp

rng = np.random.default_rng(0)
X = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
W_SQUARE = jnp.asarray(rng.standard_normal((4, 4)), jnp.float32)
B = jnp.asarray(rng.standard_normal(4), jnp.float32)
LABELS = jnp.array([0, 3, 1, 1, 2])


def custom(fwd_value, bwd):
    """A custom_vjp whose forward is ``fwd_value`` and whose backward is ``bwd(args, g)``."""
    f = jax.custom_vjp(fwd_value)
    f.defvjp(lambda *a: (fwd_value(*a), a), bwd)
    return f


def _softmax_ce_bwd_missing_mean(args, g):
    logits, labels = args
    return g * (jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[1])), None  # no 1/N


def _affine_bwd_dw_transposed(args, g):
    x, W, b = args
    return g @ W.T, (x.T @ g).T, g.sum(0)


def _affine_bwd_bias_averaged(args, g):
    x, W, b = args
    return g @ W.T, x.T @ g, g.mean(0)


def _max_bwd_to_smaller(args, g):
    x, y = args
    return jnp.where(x < y, g, 0.0), jnp.where(x < y, 0.0, g)


def _sigmoid_bwd_g_as_y(args, g):
    return (g * (1 - g),)  # the classic mix-up: the upstream gradient used as σ(x)


WRONG = {
    "loss missing its 1/N": (custom(reference.losses.softmax_cross_entropy, _softmax_ce_bwd_missing_mean),
                             (X, LABELS), "args[0]"),
    "dW transposed (square W)": (custom(reference.layers.affine, _affine_bwd_dw_transposed),
                                 (X, W_SQUARE, B), "args[1]"),
    "max routed to the smaller input": (custom(reference.gates.maximum, _max_bwd_to_smaller),
                                        (X, X[::-1]), "args[0]"),
    "sigmoid bwd uses g as y": (custom(reference.activations.sigmoid, _sigmoid_bwd_g_as_y), (X,), "args[0]"),
    "bias gradient averaged": (custom(reference.layers.affine, _affine_bwd_bias_averaged),
                               (X, W_SQUARE, B), "args[2]"),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_wrong_rules_fail_with_path_index_and_values(name):
    fn, args, path = WRONG[name]
    with pytest.raises(AssertionError) as info:
        check_vjp(fn, args)
    message = str(info.value)
    assert re.search(re.escape(path) + r" flat index \d+: analytic -?[\d.e+-]+, numerical", message), message
    assert "tolerance" in message


def test_wrong_rules_also_fail_against_the_reference():
    fn, args, _ = WRONG["bias gradient averaged"]
    with pytest.raises(AssertionError, match=r"reference -?[\d.]+"):
        check_vjp(fn, args, reference=reference.layers.affine)


def test_argument_paths_name_pytree_keys():
    def layer_loss(params, x):
        return jnp.sum(custom(reference.layers.affine, _affine_bwd_dw_transposed)(x, params["W"], params["b"]) ** 2)

    with pytest.raises(AssertionError, match=re.escape("args[0]['W'] flat index")):
        check_vjp(layer_loss, ({"W": W_SQUARE, "b": B}, X))


def _bf16_sigmoid_bwd(args, g):
    y = jax.nn.sigmoid(args[0]).astype(jnp.bfloat16)
    return ((g.astype(jnp.bfloat16) * y * (1 - y)).astype(g.dtype),)


@pytest.mark.parametrize("shape", [(5, 4), (64, 64)], ids=["elementwise", "projected"])
def test_a_bwd_that_silently_goes_through_bfloat16_fails_at_float32(shape):
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
    with pytest.raises(AssertionError, match="rtol 0.0001"):
        check_vjp(custom(jax.nn.sigmoid, _bf16_sigmoid_bwd), (x,))
    check_vjp(pure.sigmoid, (x,))  # the correct float32 rule passes at the same tolerance


def test_a_single_wrong_entry_of_a_large_leaf_is_narrowed_down():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((64, 64)), jnp.float32)
    planted = 2345

    def bwd(args, g):
        y = jax.nn.sigmoid(args[0])
        return (g * y * (1 - y) * jnp.where(jnp.arange(x.size).reshape(x.shape) == planted, 3.0, 1.0),)

    with pytest.raises(VJPMismatch) as info:
        check_vjp(custom(jax.nn.sigmoid, bwd), (x,))
    _only(info.value, "args[0]", planted)


def _only(error, path, index):
    """The one wrong entry is named first, and every block reported holds it."""
    assert [(p.path, p.index) for p in error.problems if p.kind == "value"] == [(path, index)]
    assert error.problems[0].kind == "value"
    assert all(p.index <= index < p.stop for p in error.problems if p.kind == "block")


@pytest.mark.parametrize("fn, args", [
    (pure.relu, (jnp.array([-1.0, 0.0, 0.0, 2.0]),)),
    (pure.maximum, (jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 3.0]))),
    (lambda w: pure.l1_penalty([w], 0.3), (jnp.array([0.0, -1.0, 0.0]),)),
    (lambda w: jnp.abs(w), (jnp.array([0.0, 2.0]),)),
], ids=["relu(0)", "max tie", "l1(0)", "abs(0)"])
def test_correct_rules_pass_at_exact_kinks_and_the_report_says_so(fn, args):
    report = check_vjp(fn, args)
    assert report.kinks >= 1
    assert "kink" in str(report)


def test_report_has_per_leaf_errors():
    report = check_vjp(pure.affine, (X, W_SQUARE, B), reference=reference.layers.affine)
    assert [leaf.path for leaf in report.leaves] == ["args[0]", "args[1]", "args[2]"]
    assert all(leaf.max_rel_err < 1e-5 and leaf.ref_max_abs_err is not None for leaf in report.leaves)
    assert report.forward_max_abs_err < 1e-5


def test_integer_and_key_leaves_are_skipped():
    report = check_vjp(lambda x, k, y: pure.dropout(x, k, 0.5) * y.astype(x.dtype),
                       (X, jax.random.key(0), jnp.arange(4)))
    assert [leaf.path for leaf in report.leaves] == ["args[0]"]


def test_numerical_helpers_are_float64_central_differences():
    gx, gy = numerical_grad(lambda x, y: jnp.sum(x * x) * y, (jnp.array([1.0, -2.0], jnp.float32), jnp.array(3.0)))
    assert gx.dtype == np.float64
    np.testing.assert_allclose(gx, [6.0, -12.0], rtol=1e-9)
    np.testing.assert_allclose(gy, 5.0, rtol=1e-9)
    (v,) = numerical_vjp(jnp.sin, (jnp.array([0.5, 1.0]),), jnp.array([2.0, -1.0]))
    np.testing.assert_allclose(v, [2 * np.cos(0.5), -np.cos(1.0)], rtol=1e-9)


# ------------------------------------------------------------------ what users pass, and what is refused
@pytest.mark.parametrize("args, error, message", [
    (jnp.ones(3), TypeError, "check_vjp: args must be a tuple of sin's arguments, e.g. (x,) for sin(x); got an array "
                             "of shape (3,)"),
    ((jnp.array([1.0, jnp.nan, 2.0]),), ValueError, "check_vjp: args[0] holds 1 non-finite values, e.g. nan at flat "
                                                    "index 1"),
    (({"w": jnp.array([1.0, jnp.inf])},), ValueError, "check_vjp: args[0]['w'] holds 1 non-finite values, e.g. inf"),
    ((3,), TypeError, "check_vjp: no argument of sin has a float or complex leaf, so there is no VJP to check "
                      "(got args[0]: int)"),
])
def test_bad_calls_are_refused_naming_the_argument(args, error, message):
    with pytest.raises(error, match=re.escape(message)):
        check_vjp(jnp.sin, args)


@pytest.mark.parametrize("fn", [lambda x: x > 0, lambda x: None, lambda x: jnp.argmax(x)], ids=["bool", "None", "int"])
def test_a_function_with_no_float_output_is_refused(fn):
    with pytest.raises(TypeError, match="returns no float or complex output, so there is no VJP to check"):
        check_vjp(fn, (X,))


def test_a_non_deterministic_function_is_named_not_reported_as_mismatches():
    with pytest.raises(ValueError, match="is not deterministic: two calls with the same arguments differ .* pass its "
                                         "randomness in as an argument"):
        check_vjp(lambda x: x * np.random.default_rng().standard_normal(), (X,))


@jax.custom_vjp
def _sin_off_by_10_percent(x):
    return jnp.sin(x)


_sin_off_by_10_percent.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (1.1 * g * jnp.cos(x),))


@pytest.mark.parametrize("args", [(1.5,), ([0.3, -1.2, 2.0],), (np.array([0.3, 2.0]),)],
                         ids=["Python float", "list of floats", "numpy float64"])
def test_python_scalars_lists_and_numpy_are_checked_not_skipped(args):
    right = (lambda xs: sum(jnp.sin(x) for x in xs)) if isinstance(args[0], list) else jnp.sin
    report = check_vjp(right, args)  # a correct function passes, and something was checked
    assert sum(np.prod(leaf.shape, dtype=int) for leaf in report.leaves) >= 1
    wrong = (lambda xs: sum(_sin_off_by_10_percent(x) for x in xs)) if isinstance(args[0], list) else \
        _sin_off_by_10_percent
    with pytest.raises(AssertionError, match=r"args\[0\](\[\d\])? flat index 0: analytic"):
        check_vjp(wrong, args)  # ... and a wrong rule is caught, not a float0 TypeError from JAX


def test_keys_integer_and_boolean_leaves_stay_fixed_and_are_listed():
    report = check_vjp(lambda x, k, n, m: pure.dropout(x, k, 0.5) * n.astype(x.dtype) * m.astype(x.dtype),
                       (X, jax.random.key(0), jnp.arange(4), jnp.ones(4, bool)))
    assert [leaf.path for leaf in report.leaves] == ["args[0]"]
    assert report.fixed == ("args[1] (key<fry>[])", "args[2] (int32[4])", "args[3] (bool[4])")


# ------------------------------------------------------------------ precision: which function, which step
def test_the_report_names_the_precision_and_why():
    assert check_vjp(jnp.sin, (np.ones(3),)).precision == "float64"  # numpy float64 with x64 off: no false alarm
    # Random draws in the default dtype, and a cast inside: the function's own jaxpr raised to float64 (lifting),
    # the draws the call's own.
    drawn = check_vjp(lambda x, k: x * jax.random.normal(k, x.shape), (X, jax.random.key(1)))
    assert drawn.precision == "float64" and "lifted to float64" in drawn.how
    cast = check_vjp(lambda x: jnp.tanh(x.astype(jnp.bfloat16)).astype(jnp.float32), (X,))
    assert cast.precision == "float64" and "lifted to float64" in cast.how and cast.proven
    assert "differences in float64" in str(check_vjp(pure.tanh, (X,)))


def test_a_float64_call_with_x64_on_is_checked_as_called(x64):
    report = check_vjp(pure.tanh, (jnp.asarray(np.linspace(-2, 2, 5)),))
    assert report.precision == "float64" and report.how == "as called (float64)"


def _softmax_tail_losing_bwd(args, g):
    p = jax.nn.softmax(args[0])
    p = 1 - (1 - p)  # right in exact arithmetic; in float32 it wipes out every p below ~6e-8
    return (p * (g - jnp.sum(g * p)),)


def test_precision_lost_in_tiny_entries_is_caught_entry_by_entry():
    logits = jnp.asarray(np.linspace(-25.0, 8.0, 12), jnp.float32)  # softmax from 1e-15 to 0.9
    check_vjp(jax.nn.softmax, (logits,))  # float32 jax.nn: every tail entry right to its own precision
    with pytest.raises(AssertionError, match="mismatches") as info:
        check_vjp(custom(lambda x: jax.nn.softmax(x), _softmax_tail_losing_bwd), (logits,))
    flagged = {int(i) for i in re.findall(r"flat index (\d+)", str(info.value))}
    assert {0, 1} <= flagged <= set(range(9))  # the tail only (p < 1e-3), down to p ~ 1e-15, 1e-14 of the largest


# ------------------------------------------------------------------ complex: JAX's convention
@pytest.mark.standard_promotion  # |z|² · w mixes a real and a complex factor
def test_complex_leaves_follow_jaxs_convention_holomorphic_or_not():
    z, w = Z4, Z4[::-1]
    for fn in (lambda z, w: z * w + jnp.exp(z), lambda z, w: jnp.abs(z) ** 2 * w + jnp.conj(z) * w):
        report = check_vjp(fn, (z, w), reference=fn)
        assert [leaf.dtype for leaf in report.leaves] == ["complex64", "complex64"]
        c = jnp.asarray(np.random.default_rng(3).standard_normal(4) + 1j, jnp.complex64)
        with jax.enable_x64(True):  # numerical_vjp equals JAX's own VJP of the plain jnp code
            ours = numerical_vjp(fn, (z, w), c)
        theirs = jax.vjp(fn, z, w)[1](c)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


Z4 = jnp.asarray(np.random.default_rng(5).standard_normal(4) + 1j * np.random.default_rng(6).standard_normal(4),
                 jnp.complex64)


# ------------------------------------------------------------------ needles in large leaves
def _sigmoid_with_needle(index):
    def bwd(args, g):
        y = jax.nn.sigmoid(args[0])
        return ((g * y * (1 - y)).at[index].multiply(1.01),)
    return custom(jax.nn.sigmoid, bwd)


@pytest.mark.parametrize("n", [10**4])  # 10⁵ and 10⁶: tests/test_oracle_thresholds.py
def test_a_one_percent_error_in_one_entry_of_a_large_leaf_is_found_and_named(n):
    x = jnp.asarray(np.random.default_rng(n).standard_normal(n), jnp.float32)
    needle = n // 3 + 7
    with pytest.raises(VJPMismatch) as info:
        check_vjp(_sigmoid_with_needle(needle), (x,))
    _only(info.value, "args[0]", needle)
    check_vjp(pure.sigmoid, (x,))  # the correct rule of the same size passes


def _affine_with_needle(index):
    def bwd(args, g):
        x, W, b = args
        return g @ W.T, (x.T @ g).reshape(-1).at[index].multiply(1.01).reshape(W.shape), g.sum(0)
    return custom(lambda x, W, b: x @ W + b, bwd)


def test_a_one_percent_error_in_one_entry_of_dW_is_found():
    rng = np.random.default_rng(11)  # W 128²: 16,384 entries, searched by blocks (256² and 1024²: handgrad bench)
    x, W, b = (jnp.asarray(a, jnp.float32) for a in (rng.standard_normal((64, 128)),
                                                     rng.standard_normal((128, 128)) / 12, np.zeros(128)))
    with pytest.raises(VJPMismatch) as info:
        check_vjp(_affine_with_needle(8197), (x, W, b))
    _only(info.value, "args[1]", 8197)
    report = check_vjp(pure.affine, (x, W, b))
    assert [leaf.method for leaf in report.leaves] == ["blocks", "blocks", "elementwise"]


# ------------------------------------------------------------------ second order
def _differentiated_wrongly():
    stop = custom(jax.nn.sigmoid, lambda a, g: (g * jax.lax.stop_gradient(jax.nn.sigmoid(a[0]) *
                                                                         (1 - jax.nn.sigmoid(a[0]))),))
    rounded = custom(lambda x: x * x, lambda a, g: (2 * g * jnp.round(a[0]),))  # exact at integers only
    return {"stop_gradient": (stop, (X[0],)), "round": (rounded, (jnp.array([1.0, -2.0, 3.0]),))}


@pytest.mark.parametrize("name", ["stop_gradient", "round"])
def test_a_backward_right_at_order_1_but_wrong_to_differentiate_is_caught_at_order_2(name):
    fn, args = _differentiated_wrongly()[name]
    check_vjp(fn, args)  # right in value
    with pytest.raises(AssertionError, match=r"mismatches in the VJP of the VJP of .*\n  args\[0\] flat index"):
        check_vjp(fn, args, order=2)


def test_order_2_passes_pure_ops_and_counts_the_kinks_it_cannot_check():
    smooth = check_vjp(pure.nn.classification_loss, (pure.nn.init_mlp(jax.random.key(0), [4, 5, 3]), X[:, :4],
                                                     LABELS % 3), order=2)
    assert smooth.order == 2 and smooth.unchecked == 0
    kinked = check_vjp(pure.relu, (jnp.array([-1.0, 0.0, 2.0]),), order=2)
    assert kinked.unchecked == 1 and "could not be checked" in str(kinked)
