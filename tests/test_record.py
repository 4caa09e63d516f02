"""Recording the rules a program runs (handgrad.audit.record), ``pytest --handgrad-record``, ``handgrad audit
--record`` and ``--baseline``."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handgrad.audit import Discovery, baseline
from handgrad.audit import command as audit_command
from handgrad.audit.checks import EXIT_UNPROVEN, Row
from handgrad.audit.record import Recorder, check
from handgrad.audit.watchdog import CheckTimedOut, watchdog

HERE = os.path.dirname(os.path.abspath(__file__))


def _sin(scale: float = 1.0):
    """A call-time rule: sin, whose backward is scaled by ``scale`` (1 is correct)."""

    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (scale * g * jnp.cos(x),))
    return f


def _recorded(run) -> Recorder:
    recorder = Recorder()
    with recorder.recording():
        run()
    return recorder


def test_eager_calls_are_kept_concrete_and_counted_once_per_signature():
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    rec = _recorded(lambda: [_sin()(x) for _ in range(3)] + [_sin()(x[:2])])
    calls = list(rec.calls.values())
    assert [c.calls for c in calls] == [3, 1]
    assert calls[0].rule.endswith("_sin.<locals>.f(f32[5])") and calls[1].rule.endswith("f(f32[2])")
    np.testing.assert_array_equal(calls[0].arrays[0], x)
    line = test_eager_calls_are_kept_concrete_and_counted_once_per_signature.__code__.co_firstlineno + 2
    assert calls[0].site.endswith(f"test_record.py:{line}")


def test_calls_under_jit_are_read_when_their_program_runs():
    """Under jit (jit of grad too, and in a scan's body, whose first run counts), a call's arrays are read when
    its program runs: it is checked where it ran."""
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    for run in (lambda f: jax.jit(f)(x), lambda f: jax.jit(jax.grad(lambda v: jnp.sum(f(v))))(x),
                lambda f: jax.lax.scan(lambda c, v: (c + 1, f(c * v)), jnp.float32(1), jnp.stack([x, x]))):
        f = _sin(1.5)
        (call,) = _recorded(lambda: jax.block_until_ready(run(f))).calls.values()
        assert call.ran
        np.testing.assert_array_equal(call.arrays[0], x)
        (row,) = check([call], ["vjp"])
        assert row.status == "FAIL" and row.inputs.startswith("recorded: f32[2,3] (read as its compiled program ran)")
    y = jnp.asarray(x, jnp.bfloat16)  # whose numpy dtype's kind is "V", not "f"
    (call,) = _recorded(lambda: jax.block_until_ready(jax.jit(_sin(1.5))(y))).calls.values()
    assert call.ran and call.why == "" and call.arrays[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(call.arrays[0], y)


def test_calls_under_vmap_are_read_once_per_run_on_the_first_element():
    """A callback vmapped would be unrolled once per element (a batch of 1000, a program of 1000 callbacks): the
    first element is read, under vmap of vmap, of a while loop and of grad too."""
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 4, 3)
    for run in (lambda f: jax.jit(jax.vmap(jax.vmap(f)))(x),
                lambda f: jax.jit(jax.vmap(lambda v: jax.lax.while_loop(lambda s: s[1] < 2, lambda s: (
                    s[0] + jnp.sum(f(v)), s[1] + 1), (0.0, 0))[0]))(x[0]),
                lambda f: jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(f(v)))))(x[0])):
        f = _sin(1.5)
        rec = _recorded(lambda: jax.block_until_ready(run(f)))
        (call,) = rec.calls.values()
        assert call.ran and call.arrays[0].shape == (3,)
        np.testing.assert_array_equal(call.arrays[0], x[0, 0])
    with Recorder().recording():
        program = str(jax.make_jaxpr(jax.vmap(jax.vmap(_sin(1.5))))(x))
    assert program.count("debug_callback[") == 1, program


def test_calls_never_run_are_checked_on_draws_of_their_shapes():
    (call,) = _recorded(lambda: jax.eval_shape(_sin(1.5), jnp.ones((2, 3)))).calls.values()
    assert isinstance(call.arrays[0], jax.ShapeDtypeStruct) and call.arrays[0].shape == (2, 3) and not call.ran
    (row,) = check([call], ["vjp"])
    assert row.status == "FAIL" and row.inputs.startswith("drawn: f32[2,3]")


def _with_state(scale: float = 1.0):
    """A solver's shape of custom_jvp rule: a value, and beside it a state whose tangent the rule declares a
    symbolic zero (optimistix's root finders); the value's tangent scaled by ``scale`` (1 is correct)."""

    @jax.custom_jvp
    def solve(x):
        return jnp.sin(x), jnp.sum(x**2)

    def jvp(primals, tangents):
        (x,), (tx,) = primals, tangents
        out = solve(x)
        return out, (scale * jnp.cos(x) * tx, jax.custom_derivatives.zero_from_primal(out[1], symbolic_zeros=True))

    solve.defjvp(jvp, symbolic_zeros=True)
    return solve


@pytest.mark.parametrize("scale, status", [(1.0, "expected"), (1.01, "FAIL")])
def test_an_output_a_custom_jvp_rule_declares_without_tangent_is_expected_and_the_rest_is_checked(scale, status):
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    (call,) = _recorded(lambda: _with_state(scale)(x)).calls.values()
    (row,) = check([call], ["vjp"])
    assert row.status == status, row.detail
    assert ("outputs [1] have no tangent" if status == "expected" else "mismatches in outputs [0]") in row.detail


def test_an_output_a_custom_vjp_rule_ignores_still_fails():
    """A backward that never reads a cotangent is the lost-output error, not a declaration."""

    @jax.custom_vjp
    def f(x):
        return jnp.sin(x), jnp.sum(x**2)

    f.defvjp(lambda x: (f(x), x), lambda x, g: (g[0] * jnp.cos(x),))
    (call,) = _recorded(lambda: f(np.linspace(-1, 1, 5, dtype=np.float32))).calls.values()
    (row,) = check([call], ["vjp"])
    assert row.status == "FAIL"


def test_an_eager_grad_is_concrete():
    x = jnp.array([0.3, -0.7])
    (call,) = _recorded(lambda: jax.grad(lambda x: jnp.sum(_sin()(x)))(x)).calls.values()
    np.testing.assert_array_equal(call.arrays[0], np.asarray(x))


def test_rules_built_twice_with_other_settings_are_two_rules_and_the_wrong_one_fails():
    x = np.linspace(-1, 1, 7, dtype=np.float32)
    rec = _recorded(lambda: (_sin(1.0)(x), _sin(0.5)(x)))
    rows = check(list(rec.calls.values()), ["vjp"])
    assert [r.status for r in rows] == ["ok", "FAIL"] and rows[1].rule.endswith(" #2")


def test_a_rule_closing_over_a_tracer_is_listed_with_the_reason():
    @jax.jit
    def outer(x):
        @jax.custom_vjp
        def h(y):
            return y * x

        h.defvjp(lambda y: (y * x, None), lambda _, g: (g * x,))
        return h(x)

    (call,) = _recorded(lambda: outer(jnp.ones(3))).calls.values()
    assert call.fn is None and "closes over a tracer" in call.why
    (row,) = check([call], ["vjp"])
    assert row.status == "skipped" and "closes over a tracer" in row.detail


def test_static_arguments_and_integer_arguments_are_held_as_called():
    @jax.custom_vjp
    def pick(x, i):
        return jnp.sin(x)[i]

    pick.defvjp(lambda x, i: (jnp.sin(x)[i], (x, i)),
                lambda r, g: (jnp.zeros_like(r[0]).at[r[1]].add(g * jnp.cos(r[0][r[1]])), None))
    x, i = jnp.linspace(0, 1, 4), jnp.array([0, 2])
    (call,) = _recorded(lambda: pick(x, i)).calls.values()
    assert call.rule.endswith("pick(f32[4], i32[2])")
    (row,) = check([call], ["vjp"])
    assert row.status == "ok", row.detail


def test_jax_own_rules_are_counted_not_checked():
    rec = _recorded(lambda: jax.nn.relu(jnp.ones(3)))
    assert not rec.calls and any("relu" in r for r in rec.jax_rules)


def test_recording_changes_no_result_and_survives_its_own_failure(monkeypatch):
    x = jnp.linspace(-2, 2, 6)
    def loss(x):
        return jnp.sum(_sin(1.0)(x) ** 2)
    plain = (loss(x), jax.grad(loss)(x), jax.jit(jax.grad(loss))(x))
    rec = Recorder()
    monkeypatch.setattr("handgrad.audit.calls.site", lambda: 1 / 0)  # the recorder's own bug
    with rec.recording():
        recorded = (loss(x), jax.grad(loss)(x), jax.jit(jax.grad(loss))(x))
    for a, b in zip(plain, recorded, strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.custom_vjp.__call__ is not None and all("could not be recorded: ZeroDivisionError" in c.why
                                                         for c in rec.calls.values())


def test_stopping_restores_jax():
    before = (jax.custom_vjp.__call__, jax.custom_jvp.__call__)
    _recorded(lambda: None)
    assert (jax.custom_vjp.__call__, jax.custom_jvp.__call__) == before


def test_baseline_fails_only_what_got_worse(tmp_path):
    rows = [Row("m:a", "custom_vjp", "vjp", "FAIL", "", "", 0.0), Row("m:b", "custom_vjp", "vjp", "ok", "", "", 0.0)]
    path = str(tmp_path / "baseline.json")
    baseline.write(rows, path)
    stored = baseline.load(path)
    assert stored.worse(rows) == []
    fixed = [rows[0], Row("m:b", "custom_vjp", "vjp", "timeout", "", "", 0.0)]
    assert [r.rule for r in stored.worse(fixed)] == ["m:b"]
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(baseline.BaselineError, match="not a handgrad baseline"):
        baseline.load(str(tmp_path / "bad.json"))


@pytest.fixture
def project(tmp_path):
    """tests/recordpkg as a user's checkout: the package, and its tests as test_layers.py."""
    shutil.copytree(os.path.join(HERE, "recordpkg"), tmp_path / "recordpkg")
    shutil.copy(os.path.join(HERE, "recordpkg", "check_layers.py"), tmp_path / "test_layers.py")
    return tmp_path


def _run(args, where, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(where), os.path.dirname(HERE)]))
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(args, capture_output=True, text=True, cwd=where, timeout=timeout, env=env)


@pytest.mark.subprocess
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_pytest_record_checks_the_rules_the_tests_ran_and_fails_the_wrong_one(project, workers):
    run = _run([sys.executable, "-m", "pytest", "--handgrad-record", "-p", "no:cacheprovider", "-q",
                "test_layers.py", *workers], project)
    assert run.returncode == 1, run.stdout[-3000:]
    assert "3 passed" in run.stdout  # the project's own tests pass: the recording fails the session
    table = run.stdout.split("handgrad record")[1]
    assert "recordpkg.layers:gated.<locals>.unit(f32[4,3], f32[3,2])" in table  # eager, and an eager grad
    assert "FAILED handgrad-record::recordpkg.layers:scaled_softplus.<locals>.f(f32[5,4]) [vjp] FAIL" in table
    assert "FAILED handgrad-record::recordpkg.layers:gated" not in table
    assert "recording took" in table


@pytest.mark.subprocess
def test_audit_record_with_a_baseline_both_ways(project, capsys):
    command = f"{sys.executable} -m pytest -q -p no:cacheprovider test_layers.py"
    first = _run([sys.executable, "-m", "handgrad.cli", "audit", "--checks", "vjp", "--json", "rows.json",
                  "--write-baseline", "baseline.json", "--record", command], project)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "the command exited 0" in first.stdout and "1 FAIL" in first.stdout
    rows = [Row(**r) for r in json.loads((project / "rows.json").read_text())["rows"]]

    def audited_against(path):  # the same rows reported again, as the next CI run's would be
        args = argparse.Namespace(x64=False, seed=0, json=None, junit_xml=None, html=None, write_baseline=None,
                                  baseline=path)
        return audit_command.report(args, Discovery("--record", (), (), ()), rows, 0.0, "recorded")

    assert audited_against(str(project / "baseline.json")) == 0  # unchanged: passes
    stored = json.loads((project / "baseline.json").read_text())
    for row in stored["rows"]:
        row["status"] = "ok"  # a baseline from before the bug: the FAIL is new
    (project / "old.json").write_text(json.dumps(stored))
    assert audited_against(str(project / "old.json")) == 1
    assert "worse than the baseline: recordpkg.layers:scaled_softplus" in capsys.readouterr().err


SLOW_AND_FINE = '''
import time
import jax, jax.numpy as jnp, numpy as np

PAUSE = [0.5]  # seconds each evaluation of slow waits on the host

@jax.custom_vjp
def slow(x):  # each evaluation waits on the host: its check runs past any short time limit
    return jax.pure_callback(lambda v: (time.sleep(PAUSE[0]), np.sin(v))[1], jax.ShapeDtypeStruct(x.shape, x.dtype), x)

@jax.custom_vjp
def fine(x):
    return jnp.sin(x)

slow.defvjp(lambda x: (slow(x), x), lambda x, g: (g * jnp.cos(x),))
fine.defvjp(lambda x: (fine(x), x), lambda x, g: (g * jnp.cos(x),))
slow(jnp.ones(3)), fine(jnp.ones(3))
'''


@pytest.mark.subprocess
def test_audit_record_interrupts_a_check_past_its_time_limit_and_checks_the_rest(tmp_path):
    (tmp_path / "slow_and_fine.py").write_text(SLOW_AND_FINE)
    run = _run([sys.executable, "-m", "handgrad.cli", "audit", "--checks", "vjp", "--timeout", "3", "--json",
                "out.json", "--record", f"{sys.executable} slow_and_fine.py"], tmp_path)
    assert "(run 2)" not in run.stderr, run.stderr[-2000:]  # interrupted in its process, not run again
    status = {r["rule"].partition(":")[2]: r["status"] for r in json.loads((tmp_path / "out.json").read_text())["rows"]}
    assert status == {"slow(f32[3])": "timeout", "fine(f32[3])": "ok"}
    assert run.returncode == EXIT_UNPROVEN  # a timeout is no verdict, and no proof


def _slow_tests(pause: float) -> str:
    return SLOW_AND_FINE.replace("slow(jnp.ones(3)), fine(jnp.ones(3))", "") + (
        f"\ndef test_calls():\n    slow(jnp.ones(3)), fine(jnp.ones(3))\n    PAUSE[0] = {pause}\n")


@pytest.mark.subprocess
def test_pytest_record_ends_a_check_past_its_time_limit_as_its_own_row(tmp_path):
    (tmp_path / "test_slow.py").write_text(_slow_tests(0.5))
    run = _run([sys.executable, "-m", "pytest", "--handgrad-record", "--handgrad-timeout", "3", "-p",
                "no:cacheprovider", "-q", "test_slow.py"], tmp_path)
    assert run.returncode == 1 and "ends here" not in run.stderr, run.stdout[-3000:] + run.stderr[-2000:]
    table = run.stdout.split("handgrad record")[1]
    assert "slow(f32[3]) [vjp] timeout" in table and "fine(f32[3])" in table, table


@pytest.mark.subprocess
def test_pytest_record_ends_the_session_at_a_check_stuck_in_one_call(tmp_path):
    """A check stuck in one host call cannot be interrupted: past its time limit and the grace after it, the
    session ends with the rows so far."""
    (tmp_path / "test_slow.py").write_text(_slow_tests(60.0))
    run = _run([sys.executable, "-m", "pytest", "--handgrad-record", "--handgrad-timeout", "3", "-p",
                "no:cacheprovider", "-q", "test_slow.py"], tmp_path)
    assert run.returncode == 1 and "ends here" in run.stderr
    assert "slow(f32[3]) [vjp] timeout: still running after 3.0 s" in run.stderr, run.stderr[-2000:]


def test_audit_record_of_a_command_that_records_nothing_is_an_error(tmp_path):
    run = _run([sys.executable, "-m", "handgrad.cli", "audit", "--record", "exit 143"], tmp_path)
    assert run.returncode == 2 and "nothing was checked" in run.stderr and "exited 143" in run.stderr


# ------------------------------------------------------------------ the watchdog's interruption, in process
def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # Python bytecode all along: interruptible at any point
        pass


def test_a_check_past_its_time_limit_is_interrupted_and_one_within_it_is_not():
    fallback = []
    with pytest.raises(CheckTimedOut):
        with watchdog().interrupting(0.2, lambda: fallback.append(1), grace=5.0):
            _spin(3.0)
    with watchdog().interrupting(0.5, lambda: fallback.append(1), grace=5.0):
        _spin(0.1)
    _spin(0.8)  # past the limit once the block has ended: nothing is raised
    assert fallback == []


def test_a_check_stuck_in_one_call_gets_the_fallback_after_its_grace():
    fallback = []
    with pytest.raises(CheckTimedOut):  # raised once the call returns
        with watchdog().interrupting(0.1, lambda: fallback.append(time.monotonic()), grace=0.2):
            start = time.monotonic()
            time.sleep(1.0)  # one call Python cannot interrupt
    assert len(fallback) == 1 and 0.25 < fallback[0] - start < 0.9
