"""A user's package of three hand-written rules, for the audit's tests: ``softplus`` and ``project``
are right, ``swish``'s backward is planted wrong (it drops the ``x·σ'(x)`` term)."""

from auditpkg.rules import project, softplus, swish

__all__ = ["project", "softplus", "swish"]
