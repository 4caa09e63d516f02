"""The jit train step, the scanned epoch, and data parallelism over 8 CPU devices."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pure.nn as nn
import pure.optim as optim
import reference.train
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
    # the reference epoch (jax.grad + optax beside training) draws its own order: the same one
    assert a.tolist() == reference.train.epoch_order(7, 3, 50).tolist()


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


@pytest.mark.parametrize("make", ["step", "epoch"])
def test_params_and_opt_state_are_donated_as_documented_and_nothing_else_is(make):
    # CPU honours donation as GPUs do, so code here that reuses a donated array fails here, not only on a GPU.
    X, y = _data()
    opt = optim.sgd(0.1, momentum=0.9)
    params = nn.init_mlp(jax.random.key(0), SIZES)
    state, key = opt.init(params), jax.random.key(3)
    if make == "step":
        fn, rest = make_train_step(loss_fn, opt), ((X, y), key)
    else:
        fn, rest = make_epoch(loss_fn, opt, 8), (X, y, 0, 0, key)
    assert "donate" in (make_train_step if make == "step" else make_epoch).__doc__
    new_params, new_state, _ = fn(params, state, *rest)
    assert all(a.is_deleted() for a in jax.tree_util.tree_leaves((params, state)))
    assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves((new_params, new_state, rest))
                   if isinstance(a, jax.Array))


PARALLEL = r"""
import json
import jax, jax.numpy as jnp, numpy as np
import pure.nn as nn
import reference.train, pure.optim as optim
from pure.train import data_sharding, make_epoch, replicated

assert jax.device_count() == 8, jax.devices()
rng = np.random.default_rng(0)
X = rng.standard_normal((640, 16)).astype(np.float32)
y = rng.integers(0, 4, 640).astype(np.int32)
loss = lambda p, batch, key: nn.classification_loss(p, *batch, l2=1e-3, dropout_rate=0.1, key=key, deterministic=False)
opt = optim.sgd(0.1, momentum=0.9, weight_decay=1e-4, mask=nn.weights_only)
key = jax.random.key(1)
sharding = data_sharding()


def run(sharding):
    params = nn.init_mlp(jax.random.key(0), [16, 64, 32, 4])
    tree = (params, opt.init(params), X, y)
    if sharding is not None:
        tree = jax.device_put(tree, replicated(sharding))
    params, state, data = tree[0], tree[1], tree[2:]
    params, state, metrics = make_epoch(loss, opt, 32, steps=19, batch_sharding=sharding)(params, state, *data, 0, 0,
                                                                                          key)
    batch = (data[0][:32], data[1][:32])  # step 20's gradient, its batch split over the devices or not
    if sharding is not None:
        batch = jax.device_put(batch, sharding)
    grads = jax.jit(jax.grad(loss))(params, batch, key)
    devices = len(batch[0].sharding.device_set) if sharding is not None else 1
    return [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)], metrics["grad_norm"], devices


def rel(a, b):
    return max(float(np.max(np.abs(x - y)) / np.max(np.abs(y))) for x, y in zip(a, b))


one, one_norms, _ = run(None)
many, many_norms, placed = run(sharding)
try:
    make_epoch(loss, opt, 36, batch_sharding=sharding)
    ragged = "accepted"
except ValueError as e:
    ragged = str(e)
print(json.dumps({"grad_rel": rel(many, one), "norm_rel": rel([np.asarray(many_norms)], [np.asarray(one_norms)]),
                  "shards": placed, "ragged": ragged}))
"""


@pytest.mark.subprocess
def test_data_parallel_gradients_equal_single_device_after_20_steps(on_cpu_devices):
    result = on_cpu_devices(PARALLEL, 8)
    assert result["shards"] == 8
    assert result["grad_rel"] <= 1e-6 and result["norm_rel"] <= 1e-6, result
    assert result["ragged"] == ("make_epoch: batch_size 36 is not divisible by the 8 devices of batch_sharding; "
                                "use a multiple of 8")
