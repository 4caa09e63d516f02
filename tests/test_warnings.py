"""The suite's warning policy (pyproject.toml's filterwarnings): a deprecation raised in handgrad's own code is an
error; one raised in another package (orbax-checkpoint reading an attribute a newer JAX deprecates) is shown and
let through, so that a release of someone else's package cannot fail the suite."""

import warnings

import pytest


def _warn(category: type[Warning], module: str) -> None:
    warnings.warn_explicit("deprecated", category, filename=f"{module.replace('.', '/')}.py", lineno=1, module=module,
                           registry={})


@pytest.mark.parametrize("module", ["handgrad.cli", "reference.oracle.vjp", "pure", "properties.laws",
                                    "tests.test_oracle", "test_oracle", "conftest"])
@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning])
def test_our_own_deprecations_are_errors(module, category):
    with pytest.raises(category):
        _warn(category, module)


@pytest.mark.parametrize("module", ["orbax.checkpoint._src.multihost.colocated_transport", "flax.core",
                                    "handgrad_plugin_of_someone_else", "purely"])
@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning])
def test_a_third_partys_deprecation_is_let_through(module, category):
    with pytest.warns(category):
        _warn(category, module)


def test_other_warnings_stay_errors_wherever_raised():
    with pytest.raises(UserWarning):
        _warn(UserWarning, "orbax.checkpoint")
