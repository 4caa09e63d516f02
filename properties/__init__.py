"""handgrad's Hypothesis property suite: the laws of backprop for any JAX function.

* :mod:`properties.strategies`: array, label, parameter and key strategies in fixed shape buckets;
* :mod:`properties.laws`: each law as a function of the op under test and concrete inputs;
* :mod:`properties.op`: :class:`~properties.op.Op`, a row of the table;
* :mod:`properties.law`: each law as one object that draws its inputs for a row and checks that
  row's op; the optimizer laws, which need no row;
* :mod:`properties.table`: one row per pure op (its reference, inputs, strategies and laws), a
  module per module of pure/;
* :mod:`properties.suite`: every law applied to every op of the table it fits, and the optimizer laws;
* :mod:`properties.profiles`: the Hypothesis profiles ``handgrad-ci``, ``handgrad-dev`` and
  ``handgrad-thorough``, registered and loaded only when you call :func:`properties.profiles.load`.

Importing this package, or any module of it, changes no global state: no Hypothesis profile
is registered or loaded and no JAX setting is touched. Submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["law", "laws", "op", "profiles", "strategies", "suite", "table", "PropertyViolation"]


def __getattr__(name: str) -> Any:
    if name == "PropertyViolation":
        return importlib.import_module("properties.laws").PropertyViolation
    if name in __all__:
        return importlib.import_module(f"properties.{name}")
    raise AttributeError(f"module 'properties' has no attribute {name!r}")
