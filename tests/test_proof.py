"""A pass is a proof: a check that leaves more than 1% of its entries unchecked passes nowhere.

``VJPReport.proven`` holds the rule (``PROVEN``, both sides pinned here); ``handgrad check``, ``handgrad audit``,
``handgrad verify`` and the pytest plugin give such a report a status of its own and exit 3.
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handgrad.audit.checks import EXIT_UNPROVEN, UNPROVEN, Row
from handgrad.audit.report import exit_code
from handgrad.cli import main
from handgrad.verify import op_row
from properties.op import Op
from reference import LeafReport, Method, VJPReport, check_vjp
from reference.oracle.report import PROVEN

# sin computed in float32 on the host: float32 differences only, and no jaxpr to raise to float64 (lifting).
HOST_SIN = """
import jax, jax.numpy as jnp, numpy as np

@jax.custom_jvp
def host_sin(x):
    y = jax.pure_callback(lambda v: np.sin(v.astype(np.float32)), jax.ShapeDtypeStruct(x.shape, jnp.float32), x,
                          vmap_method="broadcast_all")  # a batch of probes: one host call
    return y.astype(x.dtype)

host_sin.defjvp(lambda p, t: (host_sin(p[0]), jnp.cos(p[0]) * t[0]))
sin = jnp.sin
"""


def _host_sin():
    space: dict = {}
    exec(HOST_SIN, space)  # noqa: S102 (the test's own source, also written to files below)
    return space["host_sin"]


def _report(unchecked: int, shape: tuple[int, ...], dtype: str = "float32") -> VJPReport:
    return VJPReport((LeafReport("args[0]", shape, dtype, Method.ENTRIES, 0.0, 0.0, 0, unchecked=unchecked),), None,
                     1e-2)


@settings(max_examples=25)
@given(entries=st.integers(1, 10**6), complex_leaf=st.booleans())
def test_the_1_percent_rule_holds_on_both_sides(entries, complex_leaf):
    """At most PROVEN of the entries unchecked is a proof; one more entry is not. A complex entry counts twice."""
    real = entries * (2 if complex_leaf else 1)
    most = int(PROVEN * real)  # the largest count that is still a proof
    dtype = "complex64" if complex_leaf else "float32"
    assert _report(most, (entries,), dtype).proven
    beyond = _report(most + 1, (entries,), dtype)
    assert not beyond.proven and f"{most + 1} of {real} entries unchecked" in beyond.unproven_why
    assert "NOT A PROOF" in str(beyond) and "NOT A PROOF" not in str(_report(most, (entries,), dtype))


@pytest.mark.parametrize("entries, most", [(100, 1), (1000, 10), (99, 0), (10**6, 10**4)])
def test_the_limit_is_1_percent(entries, most):
    """The limit itself, in numbers: a looser PROVEN (or a stricter one) fails here."""
    assert _report(most, (entries,)).proven and not _report(most + 1, (entries,)).proven


def test_a_float32_host_function_with_most_entries_unchecked_is_no_proof():
    """The right rule, honestly unchecked (float32 differences over 2000 outputs cannot resolve one entry, and a
    host callback cannot be lifted): the report says so, and is no proof; the same function in jax is one."""
    x = np.random.default_rng(0).standard_normal(2000)
    with jax.enable_x64(True):
        cast = check_vjp(_host_sin(), (x,))
        plain = check_vjp(jnp.sin, (x,))
    assert cast.unchecked > PROVEN * cast.entries and not cast.proven
    assert plain.proven and plain.unchecked == 0


def test_entries_the_differences_cannot_check_count_as_checked_where_the_reference_confirms_them(x64):
    """affine's second derivative in its bias is exactly 0, and the order-2 differences carry the round-off of
    the forward's bias term: unchecked. Given a reference, its VJP confirms those entries: a proof."""
    import pure
    import reference.layers

    rng = np.random.default_rng(0)
    args = (rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3))
    alone = check_vjp(pure.affine, args, order=2)
    confirmed = check_vjp(pure.affine, args, order=2, reference=reference.layers.affine)
    assert alone.unchecked == confirmed.unchecked == 3 and alone.confirmed == 0 and not alone.proven
    assert confirmed.confirmed == 3 and confirmed.proven and "agree with the reference" in str(confirmed)


@pytest.fixture
def cast_module(tmp_path, monkeypatch):
    (tmp_path / "cast_ops.py").write_text(HOST_SIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_handgrad_check_gives_an_unproven_pass_its_own_status_and_exit_code(cast_module, capsys):
    assert main(["check", "cast_ops.py:host_sin", "f64[2000]"]) == EXIT_UNPROVEN
    out = capsys.readouterr().out
    assert "UNPROVEN" in out and "not a proof" in out
    assert main(["check", "cast_ops.py:sin", "f64[2000]"]) == 0


def test_the_audits_exit_code_ranks_a_failure_above_an_unproven_pass():
    row = Row("m:f", "custom_vjp", "vjp", "ok", "", "", 0.0)
    unproven, failed = (Row("m:g", "custom_vjp", "vjp", status, "", "", 0.0) for status in (UNPROVEN, "FAIL"))
    assert exit_code([row]) == 0
    assert exit_code([row, unproven]) == EXIT_UNPROVEN
    assert exit_code([row, unproven, failed]) == 1


def test_verify_gives_an_unproven_op_its_own_status():
    f = _host_sin()
    op = Op(name="host.sin", fn=f, ref=f, example=lambda rng, dtype: (jnp.asarray(rng.standard_normal(2000), dtype),),
            args=st.nothing())
    row = op_row(op, jnp.float64)
    assert row.status.startswith("UNPROVEN: ") and "entries unchecked" in row.status
    assert op_row(Op(name="plain.sin", fn=jnp.sin, ref=jnp.sin, example=op.example, args=st.nothing()),
                  jnp.float64).status == "ok"


@pytest.mark.subprocess
def test_the_check_vjp_fixture_fails_an_unproven_pass_unless_allowed(tmp_path):
    (tmp_path / "test_cast.py").write_text(HOST_SIN + textwrap.dedent("""
        X = np.random.default_rng(0).standard_normal(2000)

        def test_unproven(check_vjp):
            with jax.enable_x64(True):
                check_vjp(host_sin, (X,))

        def test_allowed(check_vjp):
            with jax.enable_x64(True):
                assert not check_vjp(host_sin, (X,), allow_unproven=True).proven
        """))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "test_cast.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "1 failed, 1 passed" in done.stdout and "is no proof" in done.stdout
