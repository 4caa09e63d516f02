"""Hypothesis profiles for the property suite, under handgrad's own names.

Nothing happens on import. :func:`register` adds the three profiles to Hypothesis's registry
(idempotently) and :func:`load` registers them and makes one active; tests/conftest.py and
``handgrad verify --properties`` call it, and so can you::

    from properties import profiles
    profiles.load("handgrad-dev")

* ``handgrad-ci``: derandomized, no deadline, 100 examples a property (the suite's default);
* ``handgrad-dev``: randomized, 20 examples;
* ``handgrad-thorough``: randomized, 1000 examples.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]
PROFILES: dict[str, dict] = {
    "handgrad-ci": dict(derandomize=True, deadline=None, max_examples=100, print_blob=True,
                        suppress_health_check=_SLOW_DATA),
    "handgrad-dev": dict(deadline=None, max_examples=20, suppress_health_check=_SLOW_DATA),
    "handgrad-thorough": dict(deadline=None, max_examples=1000, suppress_health_check=_SLOW_DATA),
}


def register() -> None:
    """Registers ``handgrad-ci``, ``handgrad-dev`` and ``handgrad-thorough`` with Hypothesis."""
    for name, options in PROFILES.items():
        settings.register_profile(name, **options)


def load(name: str = "handgrad-ci") -> None:
    """Registers the profiles and loads ``name`` (any registered profile, handgrad's or yours)."""
    register()
    settings.load_profile(name)
