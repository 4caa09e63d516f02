"""The oracle's own test: check_vjp must FAIL deliberately wrong rules and PASS correct ones at kinks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pure
import reference
from reference import check_vjp, numerical_grad, numerical_vjp

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

    with pytest.raises(AssertionError, match=f"1 mismatches .*\n  args\\[0\\] flat index {planted}:"):
        check_vjp(custom(jax.nn.sigmoid, bwd), (x,))


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
