"""The ``handgrad`` console script."""

import json

import pytest

import reference.cases
from properties.cli import main
from reference.cases import Case


def test_verify_prints_rows_writes_json_and_exits_zero(tmp_path, capsys):
    path = tmp_path / "rows.json"
    assert main(["verify", "--ops", "activations.relu,gates.maximum", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "activations.relu" in out and "float64" in out and "4 passed, 0 failed" in out
    rows = json.loads(path.read_text())["rows"]
    assert [(r["op"], r["dtype"], r["status"]) for r in rows] == [
        ("gates.maximum", "float32", "ok"), ("gates.maximum", "float64", "ok"),
        ("activations.relu", "float32", "ok"), ("activations.relu", "float64", "ok")]
    assert all(r["kinks"] >= 1 for r in rows)  # the tie and the zeros are on the kink, and accepted


def test_verify_exits_nonzero_when_an_op_is_wrong(monkeypatch, capsys):
    relu = next(c for c in reference.cases.CASES if c.name == "activations.relu")
    wrong = Case("planted.twice_relu", lambda x: 2 * relu.fn(x), relu.ref, relu.make)
    monkeypatch.setattr(reference.cases, "CASES", (wrong,))
    assert main(["verify", "--ops", "planted"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_refuses_an_unknown_op(capsys):
    assert main(["verify", "--ops", "no_such_op"]) == 2
    assert "no op matches" in capsys.readouterr().err


def test_unknown_command_is_an_argparse_error():
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_runs_on_a_tiny_size_and_writes_json(tmp_path, capsys, dtype):
    path = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "6,5,3", "--batch", "4", "--activations", "sigmoid", "--rounds", "3",
                 "--dtype", dtype, "--compile-rounds", "1", "--json", str(path)]) == 0
    assert "H/A" in capsys.readouterr().out
    (row,) = json.loads(path.read_text())["rows"]
    assert row["batch"] == 4 and set(row["ms_per_step"]) == {"H", "A", "O"} and row["temp_bytes"]["H"] >= 0
    assert row["dtype"] == dtype
    median, q1, q3 = row["ratio"]["H/A"]
    assert q1 <= median <= q3  # a ratio, never asserted against a target in tests


def test_bench_refuses_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "784,abc"])
    assert "expected comma-separated integers" in capsys.readouterr().err
