"""Quick compilation, for runs that compile many small programs once each: the test suite, ``handgrad verify``,
``check`` and ``audit``. Their cost is XLA's compile time, not the programs' run time.

Only optimisation is turned down: XLA's CPU backend at ``-O0`` computes the same values as at its default (the
suite's bitwise comparisons with optax hold under it). Flags that change how a program is emitted do not: with
jaxlib 0.10's legacy emitters (``--xla_cpu_use_fusion_emitters=false``, 40% less compile time) handgrad's SGD is no
longer bitwise optax's, so they are not asked for.
"""

from __future__ import annotations

import os

QUICK = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def ask_quick_compilation() -> None:
    """Sets ``XLA_FLAGS`` to :data:`QUICK` unless it is set already (the user's own flags are kept). XLA reads it
    when JAX starts its backend, so this is called before any computation runs."""
    os.environ.setdefault("XLA_FLAGS", QUICK)
