"""The ``handgrad`` console script: verify (ops, optimizers, properties) and bench."""

import dataclasses
import json
import pathlib

import pytest

import handgrad.verify
import properties.table
from handgrad.cli import main
from properties.law import UNIVERSAL


def test_verify_prints_rows_writes_json_and_exits_zero(tmp_path, capsys):
    path = tmp_path / "rows.json"
    assert main(["verify", "--ops", "activations.relu,gates.maximum", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "activations.relu" in out and "float64" in out and "6 passed, 0 failed" in out
    rows = json.loads(path.read_text())["rows"]
    assert [(r["op"], r["dtype"], r["order"], r["status"]) for r in rows] == [
        ("gates.maximum", "float32", 1, "ok"), ("gates.maximum", "float64", 1, "ok"),
        ("activations.relu", "float32", 1, "ok"), ("activations.relu", "float64", 1, "ok"),
        ("gates.maximum", "float64", 2, "ok"), ("activations.relu", "float64", 2, "ok")]
    assert all(r["kinks"] >= 1 for r in rows)  # the tie and the zeros are on the kink, and accepted


def _line(site):
    path, line = site.rsplit(":", 1)
    return pathlib.Path(path).read_text().splitlines()[int(line) - 1].strip()


@pytest.mark.parametrize("op", properties.table.OPS, ids=[op.name for op in properties.table.OPS])
def test_where_points_at_the_function_forward_backward_reference_row_and_laws(op):
    at = handgrad.verify.where(op)
    assert _line(at.public).startswith(f"def {op.short}(") and _line(at.reference).startswith(f"def {op.short}(")
    if op.name != "nn.classification_loss":  # built from other ops: no rule of its own
        assert _line(at.forward).startswith(f"def _{op.short}_fwd(")
        assert _line(at.backward).startswith(f"def _{op.short}_bwd(")
    assert _line(at.row).startswith(f'Op(name="{op.name}"')
    assert [name for name, _ in at.laws] == [*(law.name for law in UNIVERSAL), *(law.name for law in op.laws)]
    assert all(_line(site).startswith(f"def {name}(") for name, site in at.laws)


def test_verify_where_prints_one_op_and_refuses_an_unknown_one(capsys):
    assert main(["verify", "--where", "maximum"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "gates.maximum" and out[2].split()[:2] == ["forward", out[2].split()[1]]
    assert any(line.split()[0] == "gate_routing" for line in out)
    assert main(["verify", "--where", "swish"]) == 2
    assert "--where 'swish' names no op; the ops are gates.add" in capsys.readouterr().err


def test_verify_exits_nonzero_when_an_op_is_wrong(monkeypatch, capsys):
    relu = properties.table.BY_NAME["activations.relu"]
    wrong = dataclasses.replace(relu, name="planted.twice_relu", fn=lambda x: 2 * relu.fn(x))
    monkeypatch.setattr(properties.table, "OPS", (wrong,))
    assert main(["verify", "--ops", "planted"]) == 1
    out = capsys.readouterr().out
    assert "planted.twice_relu" in out and "FAIL" in out


def test_verify_runs_the_optimizer_rows_and_fails_a_wrong_optimizer(monkeypatch, capsys):
    rows = handgrad.verify.verify(ops=(), optimizers=handgrad.verify.OPTIMIZERS)
    assert [(r.op, r.dtype) for r in rows] == [(o, d) for o in handgrad.verify.OPTIMIZERS for d in ("float32",
                                                                                                    "float64")]
    assert all(r.status == "ok" for r in rows), rows
    assert all(r.max_abs_err == 0.0 for r in rows if r.dtype == "float64")  # float64 must be bitwise
    real_sgd = handgrad.verify.pure.optim.sgd  # plant a momentum that is 1% off
    monkeypatch.setattr(handgrad.verify.pure.optim, "sgd",
                        lambda lr, momentum=0.0, **kw: real_sgd(lr, momentum=momentum * 1.01, **kw))
    assert main(["verify", "--ops", "sgd+momentum"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: differs from optax by" in out and "(float64 must be bitwise)" in out


def test_verify_properties_runs_the_laws_of_the_chosen_ops(capsys):
    assert main(["verify", "--ops", "activations.relu", "--properties", "--profile", "handgrad-dev"]) == 0
    out = capsys.readouterr().out
    assert "properties (Hypothesis profile handgrad-dev, 20 examples" in out
    ran = {line.split()[0] for line in out.splitlines()[1:] if line.endswith(" ok") and "s  ok" in line}
    assert {"chain_rule", "backward_recursion", "vjp_linearity", "adjoint_identity",
            "transformations_agree"} <= ran
    assert "gate_routing" not in out  # it fits no chosen op
    assert "weight_decay_equivalence" not in out  # and no optimizer was chosen: the optimizer laws stay out


def test_verify_refuses_an_unknown_op(capsys):
    assert main(["verify", "--ops", "no_such_op"]) == 2
    assert "no op matches" in capsys.readouterr().err


def test_unknown_command_is_an_argparse_error():
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_runs_the_three_steps_on_a_tiny_size_and_they_agree(tmp_path, capsys, dtype):
    path = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "6,5,3", "--batch", "4", "--activations", "sigmoid", "--rounds", "3",
                 "--dtype", dtype, "--compile-rounds", "1", "--json", str(path)]) == 0
    assert "H/A" in capsys.readouterr().out
    (row,) = json.loads(path.read_text())["rows"]
    assert row["batch"] == 4 and row["dtype"] == dtype and row["temp_bytes"]["H"] >= 0
    assert set(row["ms_per_step"]) == {"H", "A", "O"} and min(row["ms_per_step"].values()) > 0
    # H, A and O are one model trained three ways: after the same steps their losses agree.
    assert row["loss_spread"] <= (1e-5 if dtype == "float32" else 2e-2), row["loss_spread"]


def test_bench_attention_times_both_steps_and_they_agree(tmp_path, capsys):
    """Two lengths around pure.attention's key block (both ragged): the rows the issue asks for, in --json."""
    path = tmp_path / "attention.json"
    assert main(["bench", "--attention", "--lengths", "48,200", "--rounds", "1", "--json", str(path)]) == 0
    assert "temp H/A" in capsys.readouterr().out
    rows = json.loads(path.read_text())["rows"]
    assert [r["T"] for r in rows] == [48, 200]
    for r in rows:
        median, q1, q3 = r["ratio"]["H/A"]
        assert q1 <= median <= q3 and median > 0 and r["temp_ratio"] > 0
        assert r["max_grad_diff"] < 1e-5  # the same gradients, two ways


def test_bench_refuses_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "784,abc"])
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_bench_oracle_finds_the_planted_entry_and_passes_the_correct_rule(capsys):
    from handgrad import bench

    rows = bench.oracle(sizes=(5000,), widths=(48,))
    assert [(r.case, r.planted.value, r.verdict) for r in rows] == [
        ("elementwise n=5e3", "1% needle", "found at flat index 1673"), ("elementwise n=5e3", "1% all", "failed"),
        ("elementwise n=5e3", "correct", "passed"),
        ("affine dW, W 48x48, x 64x48", "1% needle", "found at flat index 1157"),
        ("affine dW, W 48x48, x 64x48", "1% all", "failed"), ("affine dW, W 48x48, x 64x48", "correct", "passed")]
    assert all(r.check_grads_seconds > 0 and r.check_grads_verdict for r in rows)  # reported, whatever it says
    bench.print_oracle(rows)
    assert "check_grads" in capsys.readouterr().out
