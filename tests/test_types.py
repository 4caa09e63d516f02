"""The public API is typed. mypy on pure/ and reference/ (configured in pyproject.toml) runs in the README's
test command, after pytest, rather than inside the timed test run."""


def test_public_ops_carry_shape_annotations():
    import typing

    import pure

    hints = typing.get_type_hints(pure.affine, include_extras=True)
    assert "*batch d" in str(hints["x"]) and "d c" in str(hints["W"]) and "*batch c" in str(hints["return"])
