"""``handgrad check MODULE:FUNCTION SPEC...`` on functions in a user's own file, and check_transforms on
user-style functions: a custom_vjp written here, third-party code, and a planted bug for each check."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.custom_batching import custom_vmap

from handgrad.cli import main
from reference import check_transforms

USER_FILE = '''
import jax, jax.numpy as jnp
from jax.custom_batching import custom_vmap

@jax.custom_vjp
def softplus(x):
    return jnp.logaddexp(x, 0.0)

softplus.defvjp(lambda x: (jnp.logaddexp(x, 0.0), x), lambda x, g: (g * jax.nn.sigmoid(x),))

@jax.custom_vjp
def softplus_one_percent_off(x):
    return jnp.logaddexp(x, 0.0)

softplus_one_percent_off.defvjp(lambda x: (jnp.logaddexp(x, 0.0), x), lambda x, g: (0.99 * g * jax.nn.sigmoid(x),))

@custom_vmap
def _cos_times(x, g):
    return jnp.cos(x) * g

@_cos_times.def_vmap
def _batched(axis_size, in_batched, x, g):
    return jnp.cos(x) * jnp.roll(g, 1, axis=0), True  # mixes the elements of a batch

@jax.custom_vjp
def sin_that_bleeds_under_vmap(x):
    return jnp.sin(x)

sin_that_bleeds_under_vmap.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (_cos_times(x, g),))

def linear_loss(W, x, labels):
    logits = x @ W
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0])
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_ops.py"
    path.write_text(USER_FILE)
    return str(path)


def test_a_correct_rule_in_a_users_file_passes_every_check(user_file, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check", f"{user_file}:softplus", "f32[4,5]", "--order", "2", "--transforms", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "handgrad check softplus(f32[4,5])" in text and "differences in float64" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["check"], r["status"]) for r in rows] == [("vjp", "ok"), ("vjp of the vjp", "ok"),
                                                         ("transformations", "ok")]


def test_a_wrong_rule_exits_1_naming_the_entry(user_file, capsys):
    assert main(["check", f"{user_file}:softplus_one_percent_off", "f32[3]"]) == 1
    assert "args[0] flat index" in capsys.readouterr().out


def test_a_rule_right_eagerly_but_wrong_under_vmap_fails_only_with_transforms(user_file, capsys):
    assert main(["check", f"{user_file}:sin_that_bleeds_under_vmap", "f32[5]"]) == 0
    assert main(["check", f"{user_file}:sin_that_bleeds_under_vmap", "f32[5]", "--transforms"]) == 1
    assert "differs from eager under vmap" in capsys.readouterr().out


def test_labels_keys_and_real_data_from_a_file(user_file, tmp_path, monkeypatch, capsys):
    data = tmp_path / "batch.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((6, 4)).astype(np.float32), labels=rng.integers(0, 3, 6).astype(np.int32))
    monkeypatch.chdir(tmp_path)  # a dotted module beside the user
    assert main(["check", "my_ops:linear_loss", "f32[4,3]", f"@{data}", "--order", "2"]) == 0
    assert "linear_loss(f32[4,3], @" in capsys.readouterr().out
    assert main(["check", "jax.numpy:sin", "f64[3]"]) == 0  # float64 turns x64 on for this check


def test_third_party_code_on_complex_input_is_checked_or_refused_as_jax_allows(capsys):
    z = jnp.ones(3, jnp.complex64)
    try:  # newer JAX (0.12 here) refuses: its softmax rule compares the input (gt), which no complex number allows
        jax.vjp(jax.nn.softmax, z)[1](z)
    except TypeError:
        assert main(["check", "jax.nn:softmax", "c64[3]"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "order 1: JAX cannot differentiate softmax (TypeError: " in err, err
    else:
        assert main(["check", "jax.nn:softmax", "c64[3]"]) == 0
        assert "softmax(c64[3])" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["no_such_module:f", "f32[3]"], "handgrad check: no module named 'no_such_module' (from 'no_such_module:f')"),
    (["{user}:missing", "f32[3]"], "has no attribute 'missing'"),
    (["{user}:softplus", "f32[3"], "handgrad check: cannot parse argument spec 'f32[3'"),
    (["{user}:softplus", "q8[3]"], "handgrad check: unknown dtype 'q8' in 'q8[3]'"),
    (["{user}:softplus", "@absent.npz"], "handgrad check: no such file: absent.npz"),
    (["softplus", "f32[3]"], "handgrad check: expected MODULE:FUNCTION, got 'softplus'"),
    (["{user}:softplus", "i32[3]<5"], "handgrad check: check_vjp: no argument of softplus has a float or complex "
                                      "leaf"),
])
def test_bad_usage_is_one_line_and_exit_2(argv, message, user_file, capsys):
    assert main(["check", *(a.format(user=user_file) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# ------------------------------------------------------------------ check_transforms on user-style code
@jax.custom_vjp
def _scaled_tanh(x, s):
    return s * jnp.tanh(x)


_scaled_tanh.defvjp(lambda x, s: (s * jnp.tanh(x), (x, s)),
                    lambda r, g: (g * r[1] * (1 - jnp.tanh(r[0]) ** 2), jnp.sum(g * jnp.tanh(r[0]))))


@pytest.mark.parametrize("fn, args", [
    (_scaled_tanh, (jnp.linspace(-2.0, 2.0, 6), jnp.float32(1.5))),
    (jax.nn.softmax, (jnp.arange(12.0).reshape(3, 4) / 5,)),
    (lambda logits, labels: jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels]),
     (jnp.ones((3, 4)), jnp.array([0, 2, 3]))),
], ids=["custom_vjp here", "jax.nn.softmax", "with integer labels"])
def test_check_transforms_passes_user_style_functions(fn, args):
    report = check_transforms(fn, args)
    assert set(report.max_abs_diff) == {"jit", "vmap", "grad-of-jit", "checkpoint", "scan"} and report.batch == 3


@custom_vmap
def _mixing(x, g):
    return jnp.cos(x) * g


@_mixing.def_vmap
def _mixing_batched(axis_size, in_batched, x, g):
    return jnp.cos(x) * jnp.flip(g, axis=0), True


_bleeds = jax.custom_vjp(jnp.sin)
_bleeds.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (_mixing(x, g),))


def test_check_transforms_catches_a_batching_rule_that_mixes_elements():
    with pytest.raises(AssertionError, match=r"differs from eager under vmap:\n  under vmap, batch element 0, "
                                             r"args\[0\] flat index 0"):
        check_transforms(_bleeds, (jnp.linspace(0.1, 1.0, 4),))
