"""Shared fixtures. Every test runs with strict dtype promotion, as in Equinox's suite."""

import jax
import pytest


@pytest.fixture(autouse=True)
def strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def x64():
    """Enables float64 for one test only (never globally on import)."""
    with jax.enable_x64(True):
        yield
