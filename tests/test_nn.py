"""The MLP: hand-written backprop against jax.grad + optax, the CS231n toy check, init and counting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pure.nn as nn
import pure.optim as optim
import reference
import reference.nn as ref_nn
import reference.optim as ref_optim
import reference.train as ref_train
from pure.train import make_train_step

SIZES = [8, 16, 16, 3]


def _batch(dtype, n=32):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.standard_normal((n, SIZES[0])), dtype), jnp.asarray(rng.integers(0, SIZES[-1], n))


@pytest.mark.standard_promotion  # the reference step runs optax's code
@pytest.mark.parametrize("dtype, rtol, atol", [(jnp.float64, 1e-12, 1e-12), (jnp.float32, 1e-5, 1e-6)],
                         ids=["float64", "float32"])
def test_100_steps_of_hand_written_backprop_track_jax_grad_plus_optax(dtype, rtol, atol):
    with jax.enable_x64(dtype == jnp.float64):
        x, y = _batch(dtype)
        kw = dict(l2=1e-3, activation="tanh")
        hand = make_train_step(lambda p, b, k: nn.classification_loss(p, *b, **kw),
                               optim.sgd(0.1, momentum=0.9, weight_decay=1e-4))
        ref = ref_train.make_train_step(lambda p, b, k: ref_nn.classification_loss(p, *b, **kw),
                                        ref_optim.sgd(0.1, momentum=0.9, weight_decay=1e-4))
        params = nn.init_mlp(jax.random.key(0), SIZES, dtype=dtype)
        p_ref, s_ref = params, ref_optim.sgd(0.1, momentum=0.9, weight_decay=1e-4).init(params)
        p_hand = jax.tree_util.tree_map(jnp.copy, params)  # the hand step donates its buffers
        s_hand = optim.sgd(0.1, momentum=0.9, weight_decay=1e-4).init(p_hand)
        key = jax.random.key(1)
        for _ in range(100):
            p_hand, s_hand, m_hand = hand(p_hand, s_hand, (x, y), key)
            p_ref, s_ref, m_ref = ref(p_ref, s_ref, (x, y), key)
        assert float(m_hand["loss"]) < 0.5 * float(np.log(SIZES[-1]))  # it did learn
        for a, b in zip(jax.tree_util.tree_leaves(p_hand), jax.tree_util.tree_leaves(p_ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_cs231n_two_layer_toy_gradients_agree_with_numerical_to_1e8(x64):
    D, H, C, N = 4, 10, 3, 5
    rng = np.random.default_rng(0)
    params = [{"W": jnp.asarray(1e-1 * rng.standard_normal((D, H))), "b": jnp.asarray(1e-1 * rng.standard_normal(H))},
              {"W": jnp.asarray(1e-1 * rng.standard_normal((H, C))), "b": jnp.asarray(1e-1 * rng.standard_normal(C))}]
    x, y = jnp.asarray(10 * rng.standard_normal((N, D))), jnp.array([0, 1, 2, 2, 1])
    loss, grads = jax.value_and_grad(nn.two_layer_net_loss)(params, x, y, reg=0.05)
    np.testing.assert_allclose(loss, ref_nn.two_layer_net_loss(params, x, y, reg=0.05), rtol=1e-12)
    # h = 1e-5 as in CS231n: near ε^(1/3), where float64 round-off and truncation balance.
    (numerical,) = reference.numerical_grad(lambda p: nn.two_layer_net_loss(p, x, y, reg=0.05), (params,), eps=1e-5)
    for a, n in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(numerical), strict=True):
        rel = np.max(np.abs(a - n) / np.maximum(1e-8, np.abs(a) + np.abs(n)))  # CS231n's relative error
        assert rel < 1e-8, rel


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_check_vjp_on_the_full_mlp_loss_wrt_the_params_pytree(activation):
    x, y = _batch(jnp.float32, n=8)
    params = nn.init_mlp(jax.random.key(2), SIZES)
    report = reference.check_vjp(
        lambda p: nn.classification_loss(p, x, y, l2=0.01, activation=activation), (params,),
        reference=lambda p: ref_nn.classification_loss(p, x, y, l2=0.01, activation=activation))
    assert report.leaves[0].path == "args[0][0]['W']" and len(report.leaves) == 6


def test_mlp_with_live_dropout_matches_its_reference_and_keeps_logits():
    x, _ = _batch(jnp.float32, n=8)
    params, key = nn.init_mlp(jax.random.key(0), SIZES), jax.random.key(5)
    kw = dict(dropout_rate=0.5, key=key, deterministic=False)
    np.testing.assert_allclose(nn.mlp(params, x, **kw), ref_nn.mlp(params, x, **kw), rtol=1e-5, atol=1e-6)
    assert not np.allclose(nn.mlp(params, x, **kw), nn.mlp(params, x))
    linear = nn.init_mlp(jax.random.key(0), [SIZES[0], SIZES[-1]])  # no hidden layer: nothing is dropped
    np.testing.assert_array_equal(nn.mlp(linear, x, **kw), nn.mlp(linear, x))


def test_mlp_errors():
    params = nn.init_mlp(jax.random.key(0), SIZES)
    with pytest.raises(ValueError, match="mlp: a key is required when dropout is live"):
        nn.mlp(params, jnp.ones((2, 8)), dropout_rate=0.1, deterministic=False)
    with pytest.raises(ValueError, match="mlp: activation must be one of .*, got 'gelu'"):
        nn.mlp(params, jnp.ones((2, 8)), activation="gelu")
    with pytest.raises(ValueError, match="init_mlp: scheme must be one of .*, got 'lecun'"):
        nn.init_mlp(jax.random.key(0), SIZES, scheme="lecun")


@pytest.mark.parametrize("scheme, want", [("normal", 0.01), ("xavier", np.sqrt(2 / 1500)), ("he", np.sqrt(2 / 1000))])
def test_init_schemes_have_their_standard_deviations(scheme, want):
    (layer,) = nn.init_mlp(jax.random.key(0), [1000, 500], scheme=scheme)
    assert layer["W"].shape == (1000, 500) and not np.any(layer["b"])
    assert float(jnp.std(layer["W"])) == pytest.approx(want, rel=0.01)  # 500k draws: std error 0.1%


def test_count_params_follows_the_seed_rule():
    assert nn.count_params(nn.init_mlp(jax.random.key(0), [784, 512, 512, 10])) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10


def test_mlp_with_dropout_but_deterministic_drops_nothing_value_or_gradient():
    x, _ = _batch(jnp.float32, n=8)
    params, key = nn.init_mlp(jax.random.key(0), SIZES), jax.random.key(5)
    loss = lambda p, **kw: jnp.sum(nn.mlp(p, x, **kw) ** 2)  # noqa: E731
    kw = dict(dropout_rate=0.5, key=key, deterministic=True)
    np.testing.assert_array_equal(nn.mlp(params, x, **kw), nn.mlp(params, x))
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss)(params, **kw)),
                    jax.tree_util.tree_leaves(jax.grad(loss)(params)), strict=True):
        np.testing.assert_array_equal(a, b)
