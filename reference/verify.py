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
import optax

import pure.optim
import reference.optim
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


def max_abs_diff(a: Any, b: Any) -> float:
    """The largest ``|a − b|`` over the float leaves of two pytrees of the same structure."""
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
    if (d := max_abs_diff(jitted, eager[0])) > tol:
        return f"jit differs from eager by {d:.2e}"
    if (d := max_abs_diff(mapped, jax.tree_util.tree_map(stack, *eager))) > tol:
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


def trajectory(opt: Any, params: Any, steps: int = 100, seed: int = 1) -> Any:
    """Final params after ``steps`` updates of ``opt`` on the gradients ``0.3·w + noise_t``, in one jit.

    The noise is drawn by numpy up front, so the compiled scan holds no random-number code.
    """
    rng = np.random.default_rng(seed)
    noise = jax.tree_util.tree_map(lambda w: rng.standard_normal((steps, *w.shape)).astype(w.dtype), params)

    def body(carry, noise_t):
        p, s = carry
        u, s = opt.update(jax.tree_util.tree_map(lambda w, e: 0.3 * w + e, p, noise_t), s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.jit(lambda p, e: jax.lax.scan(body, (p, opt.init(p)), e)[0][0])(params, noise)


_SGD_CONFIGS = {  # name: (learning rate is a cosine schedule?, keyword arguments)
    "optim.sgd": (False, {}),
    "optim.sgd+momentum+decay+mask+cosine": (True, dict(momentum=0.9, weight_decay=0.01,
                                                        mask=lambda p: [{"W": True, "b": False} for _ in p])),
    "optim.sgd(decoupled_weight_decay)": (False, dict(momentum=0.9, weight_decay=0.01, decoupled_weight_decay=True)),
}


def _optimizer_row(name: str, dtype: Any, seed: int) -> Row:
    """100 steps of pure.optim against the optax chain; float64 must agree bit for bit."""
    start = time.perf_counter()
    with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):
        if name == "optim.cosine_decay":
            steps = jnp.arange(0, 120)
            ours = jax.vmap(pure.optim.cosine_decay(0.1, 100, 0.05))(steps)
            diff = max_abs_diff(ours, jax.vmap(reference.optim.cosine_decay(0.1, 100, 0.05))(steps))
        else:
            schedule, kw = _SGD_CONFIGS[name]
            params = _mlp_params(np.random.default_rng(seed), dtype)
            ours, theirs = ((m.sgd(m.cosine_decay(0.1, 60, 0.1) if schedule else 0.05, **kw))
                            for m in (pure.optim, reference.optim))
            diff = max_abs_diff(trajectory(ours, params), trajectory(theirs, params))
    exact = jnp.dtype(dtype) == jnp.float64
    ok = diff == 0.0 if exact else diff <= _RTOL["float32"]
    status = "ok" if ok else f"FAIL: differs from optax by {diff:.2e}" + (" (float64 must be bitwise)" if exact else "")
    return Row(name, jnp.dtype(dtype).name, diff, 0.0, 0, status, time.perf_counter() - start)


def _mlp_params(rng: np.random.Generator, dtype: Any) -> list:
    draw = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(dtype))  # noqa: E731
    return [{"W": draw(m, n), "b": draw(n)} for m, n in ((4, 6), (6, 3))]


OPTIMIZERS = (*_SGD_CONFIGS, "optim.cosine_decay")


def verify(cases: Iterable[Case] = CASES, dtypes: Iterable[Any] = (jnp.float32, jnp.float64),
           seed: int = 0, workers: int | None = None, optimizers: Iterable[str] = OPTIMIZERS) -> list[Row]:
    """Runs every case and optimizer at every dtype and returns one :class:`Row` each, in table order.

    Rows run on ``workers`` threads (default: one per core); most of their time is XLA
    compilation, which runs outside the GIL.
    """
    dtypes = list(dtypes)
    jobs = [partial(_row, case, dtype, seed) for case in cases for dtype in dtypes]
    jobs += [partial(_optimizer_row, name, dtype, seed) for name in optimizers for dtype in dtypes]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: job(), jobs))


def print_rows(rows: list[Row]) -> None:
    print(f"{'op':<32} {'dtype':<8} {'abs err':>9} {'rel err':>9} {'kinks':>5} {'time':>6}  status")
    for r in rows:
        print(f"{r.op:<32} {r.dtype:<8} {r.max_abs_err:9.2e} {r.max_rel_err:9.2e} {r.kinks:5d} "
              f"{r.seconds:5.2f}s  {r.status}")


def write_json(rows: list[Row], path: str) -> None:
    with open(path, "w") as f:
        json.dump({"jax": jax.__version__, "device": str(jax.devices()[0]),
                   "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)
