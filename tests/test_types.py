"""The public API is typed. mypy on pure/ and reference/ (configured in pyproject.toml) runs in the README's
test command, after pytest, rather than inside the timed test run."""


def test_public_ops_carry_shape_annotations():
    import typing

    import pure

    hints = typing.get_type_hints(pure.affine, include_extras=True)
    assert "*batch d" in str(hints["x"]) and "d c" in str(hints["W"]) and "*batch c" in str(hints["return"])


def test_the_distribution_ships_every_package_of_the_source_tree():
    # An explicit package list forgets a new subpackage silently: `pip install .` then lacks it.
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(root).parts) for top in ("pure", "reference", "properties", "handgrad")
             for init in (root / top).rglob("__init__.py")}
    assert listed == found, (found - listed, listed - found)
