"""Shared fixtures. Tests run with strict dtype promotion, as in Equinox's suite."""


import jax
import pytest


@pytest.fixture(autouse=True)
def strict_promotion(request):
    # optax's own schedules mix int32 counts with Python floats, which strict mode refuses;
    # tests that run optax code say so with @pytest.mark.standard_promotion.
    if request.node.get_closest_marker("standard_promotion"):
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def x64():
    """Enables float64 for one test only (never globally on import)."""
    with jax.enable_x64(True):
        yield


