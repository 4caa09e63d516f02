"""``handgrad verify``: every pure op, forward and backward, against its reference.

For each op and dtype (float32, float64):
  * ``check_vjp`` of the eager op against float64 central differences and the reference;
  * the VJP under ``jit`` and under ``vmap`` (a batch of 2 input sets) against the eager one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference.cases import CASES, Case
from reference.check import _RTOL, check_vjp


@dataclasses.dataclass(frozen=True)
class Row:
    op: str
    dtype: str
    max_abs_err: float
    max_rel_err: float
    kinks: int
    status: str  # "ok" or "FAIL: ..."
    seconds: float


def _vjp(fn, args, ct):
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(ct)


def _float_leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]


def _max_diff(a: Any, b: Any) -> float:
    pairs = zip(_float_leaves(a), _float_leaves(b), strict=True)
    return max([float(np.max(np.abs(x - y), initial=0.0)) for x, y in pairs], default=0.0)


def _scale(tree: Any) -> float:
    return max([float(np.max(np.abs(x), initial=0.0)) for x in _float_leaves(tree)], default=0.0)


def _transforms_agree(case: Case, dtype: Any, seed: int) -> str | None:
    """The VJP under jit and under vmap (a batch of 2) equals the eager one; returns a problem or None."""
    rng = np.random.default_rng(seed)
    batch = [case.make(rng, dtype) for _ in range(2)]
    out = jax.eval_shape(case.fn, *batch[0])
    cts = [jax.tree_util.tree_map(lambda o: rng.standard_normal(o.shape).astype(o.dtype), out) for _ in batch]
    eager = [_vjp(case.fn, args, ct) for args, ct in zip(batch, cts, strict=True)]
    stack = lambda *xs: np.stack(xs)  # noqa: E731  (numpy: no compile; keys in the table are raw uint32)
    vjp = partial(_vjp, case.fn)
    # One compilation holds both: a jitted VJP and a jitted vmap of the VJP.
    def jit_and_vmap(a, c, ba, bc):
        return vjp(a, c), jax.vmap(vjp)(ba, bc)

    jitted, mapped = jax.jit(jit_and_vmap)(
        batch[0], cts[0], jax.tree_util.tree_map(stack, *batch), jax.tree_util.tree_map(stack, *cts))
    tol = 10 * _RTOL[jnp.dtype(dtype).name] * max(1.0, _scale(eager))
    if (d := _max_diff(jitted, eager[0])) > tol:
        return f"jit differs from eager by {d:.2e}"
    if (d := _max_diff(mapped, jax.tree_util.tree_map(stack, *eager))) > tol:
        return f"vmap differs from eager by {d:.2e}"
    return None


def _row(case: Case, dtype: Any, seed: int) -> Row:
    start = time.perf_counter()
    with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):  # thread-local, so rows can run side by side
        args = case.make(np.random.default_rng(seed), dtype)
        try:
            report = check_vjp(case.fn, args, reference=case.ref, seed=seed)
            problem = _transforms_agree(case, dtype, seed + 1)
            status = "ok" if problem is None else f"FAIL: {problem}"
            err = (report.max_abs_err, report.max_rel_err, report.kinks)
        except AssertionError as e:
            status, err = "FAIL: " + str(e).splitlines()[1].strip(), (np.nan, np.nan, 0)
    return Row(case.name, jnp.dtype(dtype).name, *err, status, time.perf_counter() - start)


def verify(cases: Iterable[Case] = CASES, dtypes: Iterable[Any] = (jnp.float32, jnp.float64),
           seed: int = 0, workers: int | None = None) -> list[Row]:
    """Runs every case at every dtype and returns one :class:`Row` each, in table order.

    Rows run on ``workers`` threads (default: one per core); most of their time is XLA
    compilation, which runs outside the GIL.
    """
    jobs = [(case, dtype) for case in cases for dtype in dtypes]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: _row(*job, seed), jobs))


def print_rows(rows: list[Row]) -> None:
    print(f"{'op':<32} {'dtype':<8} {'abs err':>9} {'rel err':>9} {'kinks':>5} {'time':>6}  status")
    for r in rows:
        print(f"{r.op:<32} {r.dtype:<8} {r.max_abs_err:9.2e} {r.max_rel_err:9.2e} {r.kinks:5d} "
              f"{r.seconds:5.2f}s  {r.status}")


def write_json(rows: list[Row], path: str) -> None:
    with open(path, "w") as f:
        json.dump({"jax": jax.__version__, "device": str(jax.devices()[0]),
                   "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)
