"""What a broken law raises (:class:`PropertyViolation`), and the closeness every law is judged by."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.oracle import tolerance

FLOOR = 1.0  # inputs are O(1): round-off is relative to O(1) intermediates, not to a tiny result


class PropertyViolation(AssertionError):
    """A law of backprop that does not hold for an op: ``prop``, ``op``, the two sides' names and values,
    and ``detail`` (how far apart, or what else differs)."""

    def __init__(self, prop: str, op: Any, lhs_name: str, lhs: Any, rhs_name: str, rhs: Any, detail: str = ""):
        self.prop, self.op = prop, op_name(op)
        self.lhs_name, self.lhs, self.rhs_name, self.rhs, self.detail = lhs_name, lhs, rhs_name, rhs, detail
        show = lambda t: np.array2string(np.asarray(t, np.float64), precision=6, threshold=12)  # noqa: E731
        sides = "\n".join(f"  {name} = {show(leaf)}" for name, tree in ((lhs_name, lhs), (rhs_name, rhs))
                          for leaf in jax.tree_util.tree_leaves(tree)[:3])
        super().__init__(f"{self.headline}\n{sides}")

    @property
    def headline(self) -> str:
        """One line: the property, the op, the two sides and how they differ."""
        return (f"property {self.prop!r} fails for {self.op}: {self.lhs_name} != {self.rhs_name}"
                f"{' (' + self.detail + ')' if self.detail else ''}")


def op_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def agreement(tree: Any) -> float:
    """The agreement of two evaluations in the least precise float of ``tree`` (reference.oracle.tolerance)."""
    return tolerance.narrowest(tree).agree


def assert_close(prop: str, op: Any, lhs_name: str, lhs: Any, rhs_name: str, rhs: Any,
                 rtol: float | None = None) -> None:
    """``|lhs − rhs| ≤ rtol·(|rhs| + max(max|rhs|, 1))`` leaf by leaf, else :class:`PropertyViolation`; ``rtol``
    defaults to the agreement of lhs's precision (:mod:`reference.oracle.tolerance`)."""
    rtol = agreement(lhs) if rtol is None else rtol
    a_leaves, b_leaves = jax.tree_util.tree_leaves(lhs), jax.tree_util.tree_leaves(rhs)
    if len(a_leaves) != len(b_leaves):
        raise PropertyViolation(prop, op, lhs_name, lhs, rhs_name, rhs, "different tree structures")
    for a, b in zip(a_leaves, b_leaves, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise PropertyViolation(prop, op, lhs_name, lhs, rhs_name, rhs, f"shapes {a.shape} and {b.shape}")
        err = np.abs(a - b)
        if not np.all(tolerance.agree(a, b, rtol, FLOOR)):
            raise PropertyViolation(prop, op, lhs_name, lhs, rhs_name, rhs,
                                    f"max |diff| {float(np.max(err)):.3g}, rtol {rtol:g}")


def differ(prop: str, op: Any, a_name: str, a: Any, b_name: str, b: Any, at_least: float) -> None:
    gap = max(float(jnp.max(jnp.abs(x - y))) for x, y in
              zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))
    if not gap >= at_least:
        raise PropertyViolation(prop, op, a_name, a, b_name, b,
                                f"expected them to differ by at least {at_least:.3g}, got {gap:.3g}")
