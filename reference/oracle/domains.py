"""Arguments with a structured domain: the directions a VJP is checked along.

A function of a symmetric matrix (``jnp.linalg.eigh``, a quadratic program's Q that only enters as
sym(Q)) or of a point on the simplex has a VJP that is only meaningful along the directions that stay in
its domain: its rule may return any gradient whose projection onto them is right. ``check_vjp(...,
domain=...)`` checks that projection:

* ``"symmetric"`` and ``"spd"``: along symmetric directions of the last two axes; the VJP compared is
  sym(g) = (g + gᵀ)/2;
* ``"simplex"``: along directions of the last axis that sum to 0; the VJP compared is g − mean(g).

It does so by checking ``fn ∘ P`` at the same point, P the projection of the argument onto its domain's
tangent space about that point (P(x) = x there): JAX carries the rule's VJP through P, and the
differences of ``fn ∘ P`` move only along the domain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

DOMAINS = ("symmetric", "spd", "simplex")


def projected(name: str, fn: Callable, args: tuple, domain: Sequence[str | None]) -> Callable:
    """``fn`` with each argument that has a domain projected onto its tangent space about ``args``."""
    if len(domain) != len(args):
        raise ValueError(f"check_vjp: domain gives {len(domain)} entries for {len(args)} arguments of {name}; "
                         f"give one per argument (None for an unconstrained one)")
    projections = [_projection(name, i, d, a) for i, (d, a) in enumerate(zip(domain, args, strict=True))]

    def on_domain(*xs: Any) -> Any:
        return fn(*(p(x) for p, x in zip(projections, xs, strict=True)))

    on_domain.__name__ = name
    return on_domain


def _projection(name: str, i: int, domain: str | None, arg: Any) -> Callable:
    if domain is None:
        return lambda x: x
    shape = getattr(arg, "shape", None)
    if domain not in DOMAINS:
        raise ValueError(f"check_vjp: domain[{i}] of {name} is {domain!r}; use one of {', '.join(DOMAINS)} or None")
    if shape is None:
        raise ValueError(f"check_vjp: domain[{i}] of {name} is {domain!r}, but args[{i}] is not an array "
                         f"(got {type(arg).__name__})")
    if domain in ("symmetric", "spd"):
        if len(shape) < 2 or shape[-1] != shape[-2]:
            raise ValueError(f"check_vjp: domain[{i}] of {name} is {domain!r}, which needs square matrices in the "
                             f"last two axes; args[{i}] has shape {tuple(shape)}")
        a = np.asarray(arg)
        if np.max(np.abs(a - np.swapaxes(a, -1, -2)), initial=0.0) > 1e-6 * np.max(np.abs(a), initial=0.0):
            raise ValueError(f"check_vjp: domain[{i}] of {name} is {domain!r}, but args[{i}] is not symmetric; "
                             f"the check is at a point of the domain")
        return lambda x: (x + jnp.swapaxes(x, -1, -2)) / 2
    if len(shape) < 1:
        raise ValueError(f"check_vjp: domain[{i}] of {name} is 'simplex', which needs a vector in the last axis; "
                         f"args[{i}] is a scalar")
    centre = jnp.mean(jnp.asarray(arg), axis=-1, keepdims=True)
    return lambda x: x - jnp.mean(x, axis=-1, keepdims=True) + centre
