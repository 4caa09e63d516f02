"""handgrad's Hypothesis property suite: the laws of backprop for any JAX function.

* :mod:`properties.strategies`: array, label, parameter and key strategies in fixed shape buckets;
* :mod:`properties.laws`: each law as a function of the op under test and concrete inputs;
* :mod:`properties.suite`: every law applied to every pure op it fits.

Hypothesis profiles ``ci`` (derandomized, no deadline, 100 examples), ``dev`` (randomized,
20 examples) and ``thorough`` (1000 examples) are registered on import; choose one with the
environment variable ``HANDGRAD_PROFILE`` or pytest's ``--hypothesis-profile``. Without either,
``ci`` is loaded.
"""

import os

from hypothesis import HealthCheck, settings

_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=100, print_blob=True,
                          suppress_health_check=_SLOW_DATA)
settings.register_profile("dev", deadline=None, max_examples=20, suppress_health_check=_SLOW_DATA)
settings.register_profile("thorough", deadline=None, max_examples=1000, suppress_health_check=_SLOW_DATA)
if "HANDGRAD_PROFILE" in os.environ:
    settings.load_profile(os.environ["HANDGRAD_PROFILE"])
elif settings.get_current_profile_name() == "default":  # keep one chosen with --hypothesis-profile
    settings.load_profile("ci")

from properties import laws, strategies  # noqa: E402
from properties.laws import PropertyViolation  # noqa: E402

__all__ = ["laws", "strategies", "PropertyViolation"]
