"""The public API is typed: mypy is clean on pure/ and reference/ (configured in pyproject.toml)."""

import os
import subprocess
import sys


def test_pure_and_reference_are_mypy_clean(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")], cwd=root,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    assert "Success: no issues found" in done.stdout


def test_public_ops_carry_shape_annotations():
    import typing

    import pure

    hints = typing.get_type_hints(pure.affine, include_extras=True)
    assert "*batch d" in str(hints["x"]) and "d c" in str(hints["W"]) and "*batch c" in str(hints["return"])
