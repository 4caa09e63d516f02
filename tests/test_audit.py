"""``handgrad audit``: discovery, inputs, every outcome a row, the CLI's outputs, the pytest plugin."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handgrad.audit import ConfigError, FunctionConfig, Rule, config, discover
from handgrad.audit.checks import run_check
from handgrad.audit.inputs import KINKS_AND_TIES, from_annotations, in_domain

HERE = os.path.dirname(__file__)


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """tests/auditpkg copied beside a fresh working directory, importable as ``auditpkg``."""
    shutil.copytree(os.path.join(HERE, "auditpkg"), tmp_path / "auditpkg")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for name in [m for m in sys.modules if m == "auditpkg" or m.startswith("auditpkg.")]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path


def test_discovery_finds_the_rules_of_a_users_package(user_package):
    found = discover("auditpkg")
    assert [(r.name, r.kind) for r in found.rules] == [
        ("auditpkg.rules:project", "custom_vjp"), ("auditpkg.rules:softplus", "custom_vjp"),
        ("auditpkg.rules:swish", "custom_vjp")]
    assert found.modules == ("auditpkg", "auditpkg.rules")


def test_discovery_says_why_it_skipped(tmp_path, monkeypatch):
    (tmp_path / "skippy").mkdir()
    (tmp_path / "skippy" / "__init__.py").write_text(textwrap.dedent("""
        import jax
        def plain(x):  # public, no annotations
            return x
        def _helper(x):  # private: not listed
            return x
    """))
    (tmp_path / "skippy" / "test_it.py").write_text("def test_x():\n    pass\n")
    (tmp_path / "skippy" / "broken.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = discover("skippy", exclude=[])
    why = {s.name: s.why for s in found.skipped}
    assert why["skippy:plain"] == "no jaxtyping annotations"
    assert why["skippy.test_it"] == "a test module"
    assert why["skippy.broken"].startswith("import failed: ModuleNotFoundError")
    assert why["skippy:_helper"] == "private" and not found.rules


def test_pure_audit_finds_every_op():
    names = {r.name.partition(":")[2] for r in discover("pure").rules}
    assert {"add", "mul", "maximum", "sigmoid", "tanh", "relu", "leaky_relu", "affine", "dropout", "mse",
            "softmax_cross_entropy", "multiclass_hinge", "binary_cross_entropy", "l2_penalty", "l1_penalty",
            "mlp"} <= names


def test_inputs_share_named_dimensions_and_the_third_draw_has_kinks_and_ties(user_package):
    from auditpkg.rules import project, swish

    x, w = from_annotations(project, 0, seed=0).args
    assert x.shape == (3, 4) and w.shape == (4,) and x.dtype == jnp.float32
    (y,) = from_annotations(swish, KINKS_AND_TIES, seed=0).args
    assert y[0] == 0 and y[1] == y[2]
    assert from_annotations(project, 0, seed=0).described == "f32[3,4], f32[4]"


def test_domains():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3)), jnp.float32)
    assert float(jnp.min(in_domain((x,), "positive")[0])) >= 0.5
    unit = in_domain((x,), "(0, 1)")[0]
    assert float(jnp.min(unit)) > 0 and float(jnp.max(unit)) < 1
    assert float(jnp.min(jnp.linalg.eigvalsh(in_domain((x,), "spd")[0]))) >= 1 - 1e-5


def test_a_structured_domain_checks_its_directions_only():
    """A rule that sees only sym(Q), as a QP's does: right along symmetric directions, and so not failed there."""
    v, w = jnp.asarray([1.0, -2.0, 0.5]), jnp.asarray([0.3, 0.7, -1.1])

    @jax.custom_vjp
    def quadratic(q):
        return v @ q @ w

    quadratic.defvjp(lambda q: (quadratic(q), None), lambda _, g: (g * jnp.outer(w, v),))  # outer(v, w)ᵀ
    rule = Rule("qp:quadratic", quadratic, "custom_vjp", quadratic)
    symmetric = run_check(rule, "vjp", FunctionConfig(("f32[3,3]",), "symmetric", None, None), 0)
    assert symmetric.status == "ok", symmetric.detail
    assert run_check(rule, "vjp", FunctionConfig(("f32[3,3]",), None, None, None), 0).status == "FAIL"
    simplex = in_domain((jnp.ones((2, 3)),), "simplex")[0]
    np.testing.assert_allclose(jnp.sum(simplex, axis=-1), 1.0, rtol=1e-6)


def test_config_is_read_and_checked(tmp_path):
    good = tmp_path / "audit.toml"
    good.write_text('timeout = 5\n[functions."*:swish"]\nargs = ["f32[4]"]\nexpect = "on purpose"\n')
    read = config.load(str(good), None)
    assert read.timeout == 5 and read.for_rule("auditpkg.rules:swish") == FunctionConfig(("f32[4]",), None,
                                                                                          "on purpose", None)
    assert read.for_rule("auditpkg.rules:softplus") == FunctionConfig()
    bad = tmp_path / "bad.toml"
    bad.write_text('[functions."*:swish"]\nargz = ["f32[4]"]\n')
    with pytest.raises(ConfigError, match="unknown key 'argz' for '\\*:swish'"):
        config.load(str(bad), None)


def test_the_planted_rule_fails_and_the_others_hold(user_package):
    rules = {r.name: r for r in discover("auditpkg").rules}
    swish = run_check(rules["auditpkg.rules:swish"], "vjp", FunctionConfig(), seed=0)
    assert swish.status == "FAIL" and "args[0]" in swish.detail and swish.inputs == "annotations: f32[3]"
    assert run_check(rules["auditpkg.rules:project"], "vjp", FunctionConfig(), seed=0).status == "ok"


def test_an_exception_inside_the_oracle_is_a_row(user_package, monkeypatch):
    import reference

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the oracle")
    monkeypatch.setattr(reference, "check_vjp", broken)
    rule = discover("auditpkg").rules[0]
    row = run_check(rule, "vjp", FunctionConfig(), seed=0)
    assert row.status == "oracle error" and "ZeroDivisionError: a bug in the oracle at" in row.detail
    assert "test_audit.py" in row.detail  # where it was raised


def test_scale_gradient_is_expected_with_its_entry_and_fails_without():
    rule = discover("optax", include=["*:_scale_gradient"]).rules[0]
    known = config.with_known(config.AuditConfig()).for_rule(rule.name)
    assert run_check(rule, "vjp", known, seed=0).status == "expected"
    bare = run_check(rule, "vjp", FunctionConfig(args=known.args), seed=0)
    assert bare.status == "FAIL" and "scale_gradient" in bare.rule


def test_optax_and_equinox_rules_end_in_verdicts():
    """Every rule optax and equinox hold, order 1: a verdict each, never an oracle error."""
    known = config.with_known(config.AuditConfig())
    rows = [run_check(rule, "vjp", known.for_rule(rule.name), seed=0)
            for target in ("optax", "equinox") for rule in discover(target).rules]
    assert len(rows) >= 5
    assert {r.status for r in rows} <= {"ok", "note", "expected", "skipped", "refused"}, rows


def test_a_check_past_its_time_limit_is_a_row_and_the_next_rule_runs(tmp_path):
    from handgrad.audit import runner

    target = tmp_path / "slow.py"
    target.write_text(textwrap.dedent("""
        import time
        import jax
        import jax.numpy as jnp
        from jaxtyping import Array, Float

        @jax.custom_vjp
        def a_slow(x: Float[Array, " n"]) -> Float[Array, " n"]:
            return 2 * x

        def _bwd(x, g):
            time.sleep(60)
            return (2 * g,)

        a_slow.defvjp(lambda x: (a_slow(x), x), _bwd)

        @jax.custom_vjp
        def b_fast(x: Float[Array, " n"]) -> Float[Array, " n"]:
            return 3 * x

        b_fast.defvjp(lambda x: (b_fast(x), x), lambda x, g: (3 * g,))
    """))
    options = runner.Options(str(target), config.AuditConfig(), timeout=5.0, checks=("vjp",))
    rows = list(runner.run(discover(str(target)), options))
    assert [(r.rule, r.status) for r in rows] == [("slow:a_slow", "timeout"), ("slow:b_fast", "ok")]


@pytest.mark.subprocess
def test_cli_audit_prints_a_table_and_writes_json_and_junit(user_package):
    run = subprocess.run([sys.executable, "-m", "handgrad.cli", "audit", "auditpkg", "--checks", "vjp,transforms",
                          "--json", "out.json", "--junit-xml", "out.xml"], capture_output=True, text=True,
                         cwd=user_package, timeout=300, env=_env(user_package))
    assert run.returncode == 1, run.stderr
    assert "auditpkg.rules:swish" in run.stdout and "1 FAIL, 2 ok" in run.stdout
    rows = json.loads((user_package / "out.json").read_text())["rows"]
    status = {(r["rule"].partition(":")[2], r["check"]): r["status"] for r in rows}
    assert status[("swish", "vjp")] == "FAIL" and status[("softplus", "vjp")] == "ok"
    suite = ET.parse(user_package / "out.xml").getroot()
    assert suite.get("tests") == "6"  # 3 rules, 2 checks each
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert "swish[vjp]" in failed and not any(n.startswith(("softplus", "project")) for n in failed)


@pytest.mark.subprocess
def test_pytest_plugin_adds_one_item_per_rule(user_package):
    run = subprocess.run([sys.executable, "-m", "pytest", "--handgrad-audit", "auditpkg", "--handgrad-checks", "vjp",
                          "-p", "no:cacheprovider", "-q", "-rA"], capture_output=True, text=True, cwd=user_package,
                         timeout=300, env=_env(user_package))
    assert run.returncode == 1, run.stdout[-2000:]
    assert "PASSED ::handgrad-audit[auditpkg]::auditpkg.rules:project" in run.stdout
    assert "PASSED ::handgrad-audit[auditpkg]::auditpkg.rules:softplus" in run.stdout
    assert "FAILED ::handgrad-audit[auditpkg]::auditpkg.rules:swish" in run.stdout
    assert "1 failed, 2 passed" in run.stdout


@pytest.mark.subprocess
def test_pytest_plugin_imports_nothing_heavy_until_used(tmp_path):
    (tmp_path / "test_plain.py").write_text(textwrap.dedent("""
        import sys

        def test_plain(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("handgrad")
            assert "jax" not in sys.modules and "reference" not in sys.modules
            import hypothesis
            assert not hypothesis.settings._current_profile.startswith("handgrad")  # "default", or "ci" under CI
    """))
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_plain.py"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120, env=_env(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:]


def test_check_vjp_fixture_seeds_per_test(check_vjp):
    report = check_vjp(jnp.tanh, (np.linspace(-1, 1, 5, dtype=np.float32),))
    assert report.max_rel_err < 1e-4


def _env(where) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(where), os.path.dirname(HERE)]))
    env.pop("PYTEST_XDIST_WORKER", None)
    return env
