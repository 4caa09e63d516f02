"""pure.optim against optax, and the weight-decay equivalences (d2l)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pure.optim as optim
import reference.optim as ref_optim
from handgrad.verify import trajectory
from pure.regularizers import l2_penalty


def _params(dtype=jnp.float64):
    rng = np.random.default_rng(0)
    return [{"W": jnp.asarray(rng.standard_normal((3, 4)), dtype), "b": jnp.asarray(rng.standard_normal(4), dtype)},
            {"W": jnp.asarray(rng.standard_normal((4, 2)), dtype), "b": jnp.asarray(rng.standard_normal(2), dtype)}]


BIAS_FREE = lambda p: [{"W": True, "b": False} for _ in p]  # noqa: E731


@pytest.mark.standard_promotion
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("mask", [None, BIAS_FREE], ids=["all", "weights-only"])
@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "cosine"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["coupled", "SGDW"])
@pytest.mark.cpu_numerics("two programs compared bit for bit; a GPU compiler may fuse a·b + c into an FMA in only one")
def test_sgd_is_bitwise_the_optax_chain_over_100_steps_in_float64(x64, momentum, mask, schedule, decoupled):
    lr = optim.cosine_decay(0.1, 60, 0.1) if schedule else 0.05
    ref_lr = ref_optim.cosine_decay(0.1, 60, 0.1) if schedule else 0.05
    kw = dict(momentum=momentum, weight_decay=0.01, mask=mask, decoupled_weight_decay=decoupled)
    ours = trajectory(optim.sgd(lr, **kw), _params())
    theirs = trajectory(ref_optim.sgd(ref_lr, **kw), _params())
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.standard_promotion
def test_sgd_composes_inside_optax_chain():
    chained = optax.chain(optax.clip_by_global_norm(0.5), optim.sgd(0.1, momentum=0.9))
    plain = optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.1, momentum=0.9))
    for a, b in zip(jax.tree_util.tree_leaves(trajectory(chained, _params(jnp.float32), 10)),
                    jax.tree_util.tree_leaves(trajectory(plain, _params(jnp.float32), 10)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.standard_promotion
def test_cosine_decay_equals_optax_at_every_integer_step(x64):
    for alpha in (0.0, 0.25):
        ours, theirs = optim.cosine_decay(0.3, 50, alpha), optax.cosine_decay_schedule(0.3, 50, alpha)
        steps = jnp.arange(0, 80)
        np.testing.assert_array_equal(jax.vmap(ours)(steps), jax.vmap(theirs)(steps))
        for t in (0, 25, 50, 51, 1000):  # Python ints too, including 0, T and past T
            assert float(ours(t)) == float(theirs(t))
        assert float(ours(0)) == 0.3 and float(ours(50)) == pytest.approx(0.3 * alpha) and ours(80) == ours(50)
    assert float(optim.cosine_decay(2.0, 10)(5)) == pytest.approx(0.5 * 2.0 * (1 + np.cos(np.pi / 2)))  # ½η₀(1 + cos(tπ/T))


def test_weight_decay_equals_l2_penalty_equals_the_decay_formula_without_momentum(x64):
    lam, eta, k = 0.2, 0.1, 30
    target = _params()

    def loss(p):  # any smooth L; its gradient is the ∇L of the formula
        return 0.5 * sum(jnp.sum((a - b) ** 2 * (1 + a ** 2)) for a, b in
                         zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(target), strict=True))

    def descend(opt, objective):
        p, s = jax.tree_util.tree_map(jnp.zeros_like, target), None
        s = opt.init(p)
        for _ in range(k):
            u, s = opt.update(jax.grad(objective)(p), s, p)
            p = optim.apply_updates(p, u)
        return p

    decayed = descend(optim.sgd(eta, weight_decay=lam), loss)
    penalised = descend(optim.sgd(eta), lambda p: loss(p) + l2_penalty(p, lam))
    p = jax.tree_util.tree_map(jnp.zeros_like, target)
    for _ in range(k):  # w ← (1 − ηλ)w − η∇L, d2l's update
        p = jax.tree_util.tree_map(lambda w, g: (1 - eta * lam) * w - eta * g, p, jax.grad(loss)(p))
    for a, b, c in zip(*(jax.tree_util.tree_leaves(t) for t in (decayed, penalised, p)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)


def test_with_momentum_coupled_and_decoupled_decay_differ_by_a_measured_amount(x64):
    lam, eta, mu = 0.1, 0.1, 0.9
    coupled = trajectory(optim.sgd(eta, momentum=mu, weight_decay=lam), _params(), 20)
    decoupled = trajectory(optim.sgd(eta, momentum=mu, weight_decay=lam, decoupled_weight_decay=True), _params(), 20)
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree_util.tree_leaves(coupled), jax.tree_util.tree_leaves(decoupled), strict=True))
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(coupled))
    # Coupled decay is amplified by the momentum trace (up to 1/(1 − μ) = 10×); decoupled is not.
    assert gap > 0.05 * scale, (gap, scale)
    # Without momentum the two orders coincide.
    a = trajectory(optim.sgd(eta, weight_decay=lam), _params(), 20)
    b = trajectory(optim.sgd(eta, weight_decay=lam, decoupled_weight_decay=True), _params(), 20)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-13)


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=-0.1), "sgd: learning_rate must be in [0.0, inf], got -0.1"),
    (dict(learning_rate=0.1, weight_decay=-1.0), "sgd: weight_decay must be in [0.0, inf], got -1.0"),
    (dict(learning_rate=0.1, momentum=1.0), "sgd: momentum must be in [0.0, 1.0), got 1.0"),
    (dict(learning_rate=0.1, momentum=-0.5), "sgd: momentum must be in [0.0, 1.0), got -0.5"),
])
def test_bad_hyperparameters_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        optim.sgd(**kwargs)


def test_grads_tree_differing_from_params_names_both_structures():
    opt = optim.sgd(0.1)
    params = {"W": jnp.ones(2), "b": jnp.ones(1)}
    with pytest.raises(TypeError, match=r"sgd: updates has tree structure .*'W'.* but params has .*'b'"):
        opt.update({"W": jnp.ones(2)}, opt.init(params), params)


def test_cosine_decay_rejects_bad_steps():
    with pytest.raises(ValueError, match="decay_steps must be a positive integer, got 0"):
        optim.cosine_decay(0.1, 0)
