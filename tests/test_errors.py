"""Bad input gets a clear error naming the argument and what it got, never a silently wrong number."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pure

f32 = jnp.float32


@pytest.mark.parametrize("call, error, message", [
    (lambda: pure.affine(jnp.ones((2, 5)), jnp.ones((4, 3)), jnp.ones(3)),
     ValueError, "affine: x has last axis 5 but W has shape (4, 3)"),
    (lambda: pure.affine(jnp.ones((2, 4)), jnp.ones((4, 3)), jnp.ones(2)),
     ValueError, "affine: W has shape (4, 3), so b must have shape (3,), got (2,)"),
    (lambda: pure.affine(jnp.ones((2, 4), jnp.int32), jnp.ones((4, 3)), jnp.ones(3)),
     TypeError, "affine: expected x to have a floating-point dtype, got int32"),
    (lambda: pure.add(jnp.ones((2, 3)), jnp.ones(4)),
     ValueError, "add: x with shape (2, 3) and y with shape (4,) do not broadcast"),
    (lambda: pure.relu(jnp.arange(3)), TypeError, "relu: expected x to have a floating-point dtype, got int32"),
    (lambda: pure.softmax_cross_entropy(jnp.ones((4, 3)), jnp.zeros(4, f32)),
     TypeError, "softmax_cross_entropy: expected labels to be an integer array of class indices, got float32"),
    (lambda: pure.softmax_cross_entropy(jnp.ones((4, 3)), jnp.zeros((4, 1), jnp.int32)),
     ValueError, "softmax_cross_entropy: logits has shape (4, 3), so labels must have shape (4,), got (4, 1)"),
    (lambda: pure.multiclass_hinge(jnp.ones(3), jnp.zeros(3, jnp.int32)),
     ValueError, "multiclass_hinge: expected logits of shape (N, C), got shape (3,)"),
    (lambda: pure.binary_cross_entropy(jnp.ones((4, 1)), jnp.ones(4)),
     ValueError, "binary_cross_entropy: logits has shape (4, 1) but targets has shape (4,)"),
    (lambda: pure.binary_cross_entropy(jnp.ones(4), jnp.ones(4, jnp.int32)),
     TypeError, "binary_cross_entropy: expected targets to have a floating-point dtype, got int32"),
    (lambda: pure.mse(jnp.ones((4, 1)), jnp.ones(4)), ValueError, "mse: pred has shape (4, 1) but target has shape (4,)"),
    (lambda: pure.dropout(jnp.ones(3), jax.random.key(0), 1.5), ValueError, "dropout: rate must be in [0.0, 1.0], got 1.5"),
    (lambda: pure.dropout(jnp.ones(3), jax.random.key(0), -0.1), ValueError, "dropout: rate must be in [0.0, 1.0], got -0.1"),
    (lambda: pure.dropout(jnp.ones(3), None, 0.5), ValueError, "dropout: a key is required"),
    (lambda: pure.l2_penalty({"W": jnp.ones(2)}, -1.0), ValueError, "l2_penalty: strength must be in [0.0, inf], got -1.0"),
    (lambda: pure.l2_penalty({"W": jnp.ones(2)}, 0.1, mask={"V": True}), TypeError, "l2_penalty: mask has tree structure"),
    (lambda: pure.max_norm({"W": jnp.ones((2, 2))}, 0.0), ValueError, "max_norm: max_value must be in (0.0, inf], got 0.0"),
])
def test_bad_input_raises_a_named_error(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


@pytest.mark.parametrize("loss", [pure.softmax_cross_entropy, pure.multiclass_hinge])
@pytest.mark.parametrize("bad", [-1, 3])
def test_out_of_range_labels(loss, bad):
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), f32)
    labels = jnp.array([0, bad, 2, bad])
    # Eager: the labels are concrete, so the count of bad labels and one of them are named.
    with pytest.raises(ValueError, match=re.escape(f"2 of 4 labels are outside [0, 3), e.g. labels[1] = {bad}")):
        loss(logits, labels)
    # Under jit the labels are abstract: the loss and its gradient are NaN, never a finite wrong number.
    value, grad = jax.jit(jax.value_and_grad(loss))(logits, labels)
    assert np.isnan(value)
    assert np.all(np.isnan(grad[1])) and np.all(np.isfinite(grad[0]))
