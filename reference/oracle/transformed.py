"""The VJP under each transformation (jit, grad-of-jit, vmap, checkpoint, scan): the programs
:func:`~reference.oracle.transforms.check_transforms` compares, compiled once per function and argument layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from reference.oracle.report import said
from reference.oracle.trees import outputs


@functools.lru_cache(maxsize=128)
def programs(fn: Callable, treedef: Any, diff: tuple, shared: tuple, varying: tuple, static: tuple) -> tuple:
    """The eager VJP and one jitted program for jit, grad-of-jit, vmap, checkpoint and scan, built once per
    function and argument structure, so that repeated checks (a property's examples) reuse one compilation."""
    out_fn = outputs(fn)
    jitted_out, remat_out = jax.jit(out_fn), jax.checkpoint(out_fn)
    n = len(diff) + len(shared) + len(varying) + len(static)

    def vjp(fixed, d, varied, ct, *, jitted=False, remat=False):
        def call(*dd):
            full = dict(static) | dict(zip(shared, fixed, strict=True)) | dict(zip(varying, varied, strict=True))
            full |= dict(zip(diff, dd, strict=True))
            args = jax.tree_util.tree_unflatten(treedef, [full[i] for i in range(n)])
            return (jitted_out if jitted else remat_out if remat else out_fn)(*args)
        return jax.vjp(call, *d)[1](ct)

    # One program for all five (each compilation costs more than the comparison); ``names`` picks a part of
    # it, for a function that cannot be taken through all of them (Python control flow on values: no jit;
    # a pure_callback without a vmap_method: no vmap).
    @functools.partial(jax.jit, static_argnums=0)
    def transformed(names, fixed, each, batched):
        one = lambda d, varied, ct: vjp(fixed, d, varied, ct)  # noqa: E731
        parts = {"each": lambda: [one(*e) for e in each], "vmap": lambda: jax.vmap(one)(*batched),
                 "checkpoint": lambda: vjp(fixed, *each[0], remat=True),
                 "grad-of-jit": lambda: vjp(fixed, *each[0], jitted=True),
                 "scan": lambda: jax.lax.scan(lambda carry, x: (carry, one(*x)), None, batched)[1]}
        return {name: parts[name]() for name in names}

    return vjp, transformed


PARTS = ("each", "vmap", "checkpoint", "grad-of-jit", "scan")


def each_part(transformed: Callable, fixed: list, each: list, stacked: Any, eager: Callable) -> tuple[dict, dict]:
    """Every part that can be computed, one program each, and why the others cannot (the error's first line).
    Without jit, each element's eager VJP stands in for "each" (the baseline of vmap and scan)."""
    results, skipped = {}, {}
    for name in PARTS:
        try:
            results.update(jax.block_until_ready(transformed((name,), fixed, each, stacked)))
        except Exception as e:  # JAX's limit for this function: reported, and that transformation not compared
            skipped["jit" if name == "each" else name] = said(e)
    if "each" not in results:
        results["each"] = [eager(*e) for e in each]
    return results, skipped
