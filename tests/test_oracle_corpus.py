"""check_vjp on code no one here wrote: correct third-party functions must pass (no false alarm), and
realistic wrong custom rules must be flagged (no silent pass). Inputs as users pass them: float32 with
x64 off, numpy arrays, Python scalars, keys, pytrees."""

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np
import optax
import pytest
from jax.experimental.ode import odeint

from reference import check_vjp

rng = np.random.default_rng(7)
X = jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)
V = jnp.asarray(rng.standard_normal(5), jnp.float32)
POSITIVE = jnp.asarray(rng.uniform(0.5, 3.0, 6), jnp.float32)
LABELS = jnp.array([0, 3, 1, 4])
SPD = jnp.asarray(np.eye(4) * 3 + 0.3 * (lambda a: a + a.T)(rng.standard_normal((4, 4))), jnp.float32)
SYM = jnp.asarray(np.diag([1.0, 2.5, 4.0, 6.0]) + 0.1 * (lambda a: a + a.T)(rng.standard_normal((4, 4))), jnp.float32)
Z = jnp.asarray(rng.standard_normal(4) + 1j * rng.standard_normal(4), jnp.complex64)


def _rnn(params, xs, h0):
    def step(h, x):
        h = jnp.tanh(x @ params["Wx"] + h @ params["Wh"] + params["b"])
        return h, h
    return jax.lax.scan(step, h0, xs)[1]


RNN = {"Wx": jnp.asarray(0.5 * rng.standard_normal((3, 4)), jnp.float32),
       "Wh": jnp.asarray(0.5 * rng.standard_normal((4, 4)), jnp.float32), "b": jnp.zeros(4, jnp.float32)}
XS, H0 = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32), jnp.asarray(rng.standard_normal(4), jnp.float32)


def _ode(y0, ts, k):
    def rhs(y, t, k):
        return {"a": -k * y["a"], "b": y["a"] * jnp.sin(y["b"])}
    return odeint(rhs, y0, ts, k)


def _newton_sqrt(a):
    def solve(f, x0):
        x = x0
        for _ in range(30):
            x = x - f(x) / (2 * x)
        return x
    return jax.lax.custom_root(lambda x: x * x - a, jnp.ones_like(a), solve, lambda g, y: y / (2.0 * jnp.sqrt(a)))


def _cg(A, b):
    return jsp.sparse.linalg.cg(lambda v: A @ v, b, tol=1e-10, maxiter=100)[0]


def _mlp_remat(params, x):
    layer = jax.checkpoint(lambda h, W: jax.nn.gelu(h @ W))
    return jnp.sum(layer(layer(x, params[0]), params[1]) ** 2)


CORRECT = {  # third-party differentiable code: correct, so check_vjp must pass it
    "jax.nn.softmax": (jax.nn.softmax, (X,)),
    "jax.nn.log_softmax axis 0": (lambda x: jax.nn.log_softmax(x, axis=0), (X,)),
    "jax.nn.gelu": (jax.nn.gelu, (X,)),
    "jax.nn.silu": (jax.nn.silu, (X,)),
    "jax.nn.softplus": (jax.nn.softplus, (3 * X,)),
    "jax.nn.elu": (jax.nn.elu, (X,)),
    "jax.nn.logsumexp": (lambda x: jax.nn.logsumexp(x, axis=1), (X,)),
    "jax.nn.standardize": (jax.nn.standardize, (X,)),
    "jax.scipy.special.erf": (jsp.special.erf, (X,)),
    "jax.scipy.special.gammaln": (jsp.special.gammaln, (POSITIVE,)),
    "jax.scipy.special.digamma": (jsp.special.digamma, (POSITIVE,)),
    "jax.scipy.special.xlogy": (jsp.special.xlogy, (POSITIVE, POSITIVE[::-1])),
    "jax.scipy.special.ndtri": (jsp.special.ndtri, (POSITIVE / 4,)),
    "jax.scipy.stats.norm.logpdf": (jsp.stats.norm.logpdf, (X, 0.5, 2.0)),
    "linalg.solve": (jnp.linalg.solve, (SPD, X[:, :4].T)),
    "linalg.slogdet": (lambda a: jnp.linalg.slogdet(a)[1], (SPD,)),
    "linalg.eigh eigenvalues": (lambda a: jnp.linalg.eigh(a)[0], (SYM,)),
    "linalg.cholesky": (lambda a: jnp.linalg.cholesky(a), (SPD,)),
    "odeint, pytree state": (_ode, ({"a": jnp.float32(1.5), "b": jnp.float32(0.3)}, jnp.linspace(0.0, 1.0, 5), 0.7)),
    "lax.custom_root (Newton)": (_newton_sqrt, (POSITIVE,)),
    "scipy.sparse.linalg.cg": (_cg, (SPD, V[:4])),
    "jnp.max with ties": (jnp.max, (jnp.array([1.0, 3.0, 3.0, -2.0]),)),
    "jnp.abs at 0": (jnp.abs, (jnp.array([0.0, -1.5, 2.0]),)),
    "optax.softmax_cross_entropy_with_integer_labels": (optax.softmax_cross_entropy_with_integer_labels, (X, LABELS)),
    "optax.sigmoid_binary_cross_entropy": (optax.sigmoid_binary_cross_entropy, (X, jnp.abs(X) / 3)),
    "optax.huber_loss": (optax.huber_loss, (X, 0.2 * X[::-1])),
    "optax.cosine_distance": (optax.cosine_distance, (X, X[::-1])),
    "optax.log_cosh": (optax.log_cosh, (X,)),
    "scan RNN": (_rnn, (RNN, XS, H0)),
    "remat MLP": (_mlp_remat, ([jnp.asarray(0.4 * rng.standard_normal((5, 5)), jnp.float32)] * 2, X)),
    "complex: holomorphic": (lambda z: jnp.exp(z) * z, (Z,)),
    "complex: non-holomorphic": (lambda z: jnp.abs(z) ** 2 + jnp.real(z * jnp.conj(z[::-1])), (Z,)),
    "numpy float64 input, x64 off": (jnp.sin, (np.linspace(-1.0, 1.0, 5),)),
    "Python float and list": (lambda s, xs: s * sum(jnp.cos(x) for x in xs), (1.5, [0.2, -0.7])),
    "random draw in the default dtype": (lambda x, k: x * jax.random.normal(k, x.shape), (X, jax.random.key(3))),
    "dropout-like mask": (lambda x, k: jnp.where(jax.random.uniform(k, x.shape) < 0.7, x / 0.7, 0.0),
                          (X, jax.random.key(4))),
    "cast to float32 inside": (lambda x: jnp.tanh(jnp.asarray(x, jnp.float32)) * 2, (np.linspace(0.1, 1.0, 4),)),
    "bfloat16 compute inside": (lambda x: jnp.tanh(x.astype(jnp.bfloat16)).astype(jnp.float32), (X,)),
    "boolean mask argument": (lambda x, m: jnp.sum(jnp.where(m, x, 0.0) ** 2), (X, X > 0)),
}


@pytest.mark.parametrize("name", list(CORRECT))
def test_correct_third_party_code_passes(name):
    fn, args = CORRECT[name]
    report = check_vjp(fn, args)
    assert report.leaves and report.unchecked < sum(np.prod(leaf.shape, dtype=int) for leaf in report.leaves)


def _custom(fwd, bwd):
    f = jax.custom_vjp(fwd)
    f.defvjp(lambda *a: (fwd(*a), a), bwd)
    return f


_swapped = _custom(lambda p: p["a"] * 2.0 + jnp.sin(p["b"]),
                   lambda r, g: ({"a": g * jnp.cos(r[0]["b"]), "b": 2.0 * g},))  # the two leaves' cotangents swapped


def _sum_along(axis):
    f = jax.custom_vjp(lambda x: jnp.sum(x * x, axis=axis))
    f.defvjp(lambda x: (jnp.sum(x * x, axis=axis), x), lambda x, g: (2 * x * jnp.expand_dims(g, -1),))  # axis ignored
    return f


_step = jax.custom_vjp(lambda h, x: jnp.tanh(h + x))
_step.defvjp(lambda h, x: (jnp.tanh(h + x), jnp.tanh(h + x)),
             lambda y, g: (jnp.zeros_like(g), g * (1 - y * y)))  # the recurrent gradient dropped


def _scan_dropping_dh(h0, xs):
    return jax.lax.scan(lambda h, x: (_step(h, x), _step(h, x)), h0, xs)[1]


_two = jax.custom_vjp(lambda x: (jnp.sin(x), x * x))
_two.defvjp(lambda x: ((jnp.sin(x), x * x), x), lambda x, g: (g[0] * jnp.cos(x),))  # the second output ignored

_softplus = _custom(jax.nn.softplus, lambda r, g: (g * jnp.exp(r[0]) / (1 + jnp.exp(r[0])),))  # overflows: inf/inf


@jax.custom_jvp
def _sin_jvp(x):
    return jnp.sin(x)


_sin_jvp.defjvp(lambda p, t: (jnp.sin(p[0]), 1.1 * jnp.cos(p[0]) * t[0]))  # a wrong custom_jvp

_abs2 = _custom(lambda z: jnp.real(z * jnp.conj(z)),
                lambda r, g: (2 * g.astype(r[0].dtype) * r[0],))  # the conjugate missing: JAX wants 2·g·conj(z)


WRONG = {  # realistic wrong rules: each must be flagged, at the argument that is wrong
    "pytree leaves swapped": (_swapped, ({"a": V, "b": V[::-1]},), "args[0]['"),
    "nondiff axis ignored": (_sum_along(0), (X[:, :4],), "args[0]"),
    "recurrent gradient dropped in scan": (_scan_dropping_dh, (H0, jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)),
                                           "args[0]"),
    "second output's cotangent ignored": (_two, (V,), "args[0]"),
    "where(x > 0, sqrt(x), 0) NaN": (lambda x: jnp.where(x > 0, jnp.sqrt(x), 0.0), (X,), "args[0]"),
    "overflowing formula": (_softplus, (jnp.array([1.0, 95.0, -3.0]),), "args[0] flat index 1"),
    "wrong custom_jvp": (_sin_jvp, (V,), "args[0]"),
    "missing conjugate": (_abs2, (Z,), "args[0]"),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_realistic_wrong_rules_are_flagged(name):
    fn, args, path = WRONG[name]
    with pytest.raises(AssertionError, match=r"check_vjp: \d+ mismatches") as info:
        check_vjp(fn, args)
    assert f"\n  {path}" in str(info.value), str(info.value)
