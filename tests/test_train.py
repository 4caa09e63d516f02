"""The jit train step and the scanned epoch."""

import jax
import jax.numpy as jnp
import numpy as np

import pure.nn as nn
import pure.optim as optim
from pure.train import epoch_order, make_epoch, make_train_step

SIZES = [8, 16, 3]


def _data(n=40):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.standard_normal((n, SIZES[0])), jnp.float32), jnp.asarray(rng.integers(0, 3, n))


def loss_fn(p, batch, key):
    return nn.classification_loss(p, *batch, dropout_rate=0.2, key=key, deterministic=False)


def test_step_is_pure_and_compiles_once():
    X, y = _data()
    opt = optim.sgd(0.1, momentum=0.9)
    step = make_train_step(loss_fn, opt)
    results = []
    for _ in range(2):
        params = nn.init_mlp(jax.random.key(0), SIZES)
        p, s, m = step(params, opt.init(params), (X, y), jax.random.key(3))
        results.append((p, m["loss"]))
    assert float(results[0][1]) == float(results[1][1])
    for a, b in zip(jax.tree_util.tree_leaves(results[0][0]), jax.tree_util.tree_leaves(results[1][0]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert step._cache_size() == 1
    assert set(m) == {"loss", "grad_norm", "grad_norms"} and m["grad_norms"][0]["W"].shape == ()


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a, b, c = epoch_order(7, 3, 50), epoch_order(7, 3, 50), epoch_order(7, 4, 50)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist() and sorted(a.tolist()) == list(range(50))


def test_scanned_epoch_equals_the_same_steps_one_by_one():
    X, y = _data()
    opt = optim.sgd(0.05, weight_decay=1e-3)
    params = nn.init_mlp(jax.random.key(0), SIZES)
    key = jax.random.key(9)
    p_scan, _, metrics = make_epoch(loss_fn, opt, 8)(jax.tree_util.tree_map(jnp.copy, params), opt.init(params),
                                                     X, y, 0, 2, key)
    assert metrics["loss"].shape == (5,)
    step, order = make_train_step(loss_fn, opt), np.asarray(epoch_order(0, 2, 40)).reshape(5, 8)
    p, s = params, opt.init(params)
    for i, idx in enumerate(order):
        p, s, _ = step(p, s, (X[idx], y[idx]), jax.random.fold_in(key, i))
    for a, b in zip(jax.tree_util.tree_leaves(p_scan), jax.tree_util.tree_leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
