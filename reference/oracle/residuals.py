"""What a VJP's forward computes only for its backward: a rule's ``fwd`` that rounds its residuals to a narrower
float (a float8 copy of an activation) chooses an error of its own, which no rounding of the function explains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jax.extend.core import Literal

from reference.oracle.sites import inlined, narrowing

ROUNDINGS = frozenset({"reduce_precision"})  # besides narrowing converts


def rounded_for_backward(jaxpr: Any, reaching: Sequence[bool]) -> frozenset[int]:
    """The ids of the equations of a VJP's forward ``jaxpr`` that round to fewer bits (a narrowing convert, a
    ``reduce_precision``) and whose values reach none of the outvars marked in ``reaching`` (fn's outputs; the
    rest are residuals): in line through calls; a loop, a branch or a kernel counts as one equation that reaches
    wherever any of its outputs does."""
    live = {v for v, r in zip(jaxpr.outvars, reaching, strict=True) if r and not isinstance(v, Literal)}
    found: set[int] = set()
    for eqn in reversed(jaxpr.eqns):
        outs = [v in live for v in eqn.outvars]
        inner = inlined(eqn)
        if inner is not None:
            found |= rounded_for_backward(inner.jaxpr, outs)
        elif not any(outs) and (narrowing(eqn) or eqn.primitive.name in ROUNDINGS):
            found.add(id(eqn))
        if any(outs):
            live.update(v for v in eqn.invars if not isinstance(v, Literal))
    return frozenset(found)
