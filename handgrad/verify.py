"""``handgrad verify``: every op of the table (properties.table), forward and backward, against its reference.

For each op and dtype (float32, float64):
  * ``check_vjp`` of the op against finite differences and the reference;
  * ``check_transforms``: the VJP under jit, vmap (over distinct elements), grad-of-jit,
    jax.checkpoint and scan against the eager one.
Then, in float64, ``check_vjp(order=2)``: the VJP of the VJP, for every op whose backward is
differentiable (the table says which are not, and why). Then every optimizer configuration of
pure.optim against the optax chain it claims to be.
"""

from __future__ import annotations

import dataclasses
import inspect
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
from properties import laws
from properties.law import UNIVERSAL
from properties.table import OPS, Op
from reference import TransformMismatch, VJPMismatch, check_transforms, check_vjp, max_abs_diff


@dataclasses.dataclass(frozen=True)
class Row:
    op: str
    dtype: str
    max_abs_err: float
    max_rel_err: float
    kinks: int
    status: str  # "ok", "FAIL: ..." or "UNPROVEN: ..." (passed, more than 1% of the entries unchecked)
    seconds: float
    order: int = 1


def op_row(op: Op, dtype: Any, seed: int = 0, order: int = 1) -> Row:
    """For one op: ``check_vjp`` against finite differences and the reference, then ``check_transforms``
    (order 1); or ``check_vjp(order=2)``, the VJP of the VJP."""
    start = time.perf_counter()
    with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):  # thread-local, so rows can run side by side
        args = op.example(np.random.default_rng(seed), dtype)
        try:
            report = check_vjp(op.fn, args, reference=op.ref, seed=seed, order=order)
            if order == 1:
                check_transforms(op.fn, args, seed=seed + 1)
            status = "ok" if report.proven else f"UNPROVEN: {report.unproven_why}"
            err = (report.max_abs_err, report.max_rel_err, report.kinks + report.unchecked)
        except (VJPMismatch, TransformMismatch) as e:
            status, err = f"FAIL: {e.problems[0]}", (np.nan, np.nan, 0)
    return Row(op.name, jnp.dtype(dtype).name, *err, status, time.perf_counter() - start, order)


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


_WEIGHTS_ONLY = lambda p: [{"W": True, "b": False} for _ in p]  # noqa: E731
_OPTIMIZER_CONFIGS = {  # name: (the factory in pure.optim and reference.optim, a cosine learning rate?, keywords)
    "optim.sgd": ("sgd", False, {}),
    "optim.sgd+momentum+decay+mask+cosine": ("sgd", True, dict(momentum=0.9, weight_decay=0.01, mask=_WEIGHTS_ONLY)),
    "optim.sgd(decoupled_weight_decay)": ("sgd", False, dict(momentum=0.9, weight_decay=0.01,
                                                             decoupled_weight_decay=True)),
    "optim.adamw+decay+mask+cosine": ("adamw", True, dict(weight_decay=0.01, mask=_WEIGHTS_ONLY)),
}


def optimizer_row(name: str, dtype: Any, seed: int = 0) -> Row:
    """100 steps of pure.optim against the optax chain; float64 must agree bit for bit."""
    start = time.perf_counter()
    with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):
        if name == "optim.cosine_decay":
            steps = jnp.arange(0, 120)
            ours = jax.vmap(pure.optim.cosine_decay(0.1, 100, 0.05))(steps)
            diff = max_abs_diff(ours, jax.vmap(reference.optim.cosine_decay(0.1, 100, 0.05))(steps))
        else:
            factory, schedule, kw = _OPTIMIZER_CONFIGS[name]
            params = _mlp_params(np.random.default_rng(seed), dtype)
            ours, theirs = ((getattr(m, factory)(m.cosine_decay(0.1, 60, 0.1) if schedule else 0.05, **kw))
                            for m in (pure.optim, reference.optim))
            diff = max_abs_diff(trajectory(ours, params), trajectory(theirs, params))
    exact = jnp.dtype(dtype) == jnp.float64
    ok = diff == 0.0 if exact else diff <= 1e-4
    status = "ok" if ok else f"FAIL: differs from optax by {diff:.2e}" + (" (float64 must be bitwise)" if exact else "")
    return Row(name, jnp.dtype(dtype).name, diff, 0.0, 0, status, time.perf_counter() - start)


def _mlp_params(rng: np.random.Generator, dtype: Any) -> list:
    draw = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(dtype))  # noqa: E731
    return [{"W": draw(m, n), "b": draw(n)} for m, n in ((4, 6), (6, 3))]


OPTIMIZERS = (*_OPTIMIZER_CONFIGS, "optim.cosine_decay")


def verify(ops: Iterable[Op] = OPS, dtypes: Iterable[Any] = (jnp.float32, jnp.float64),
           seed: int = 0, workers: int | None = None, optimizers: Iterable[str] = OPTIMIZERS) -> list[Row]:
    """Runs every op and optimizer at every dtype and returns one :class:`Row` each, in table order.

    Rows run on ``workers`` threads (default: one per core); most of their time is XLA
    compilation, which runs outside the GIL.
    """
    dtypes = list(dtypes)
    jobs = [partial(op_row, op, dtype, seed) for op in ops for dtype in dtypes]
    jobs += [partial(op_row, op, jnp.float64, seed, 2) for op in ops if op.second_order is None]
    jobs += [partial(optimizer_row, name, dtype, seed) for name in optimizers for dtype in dtypes]
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: job(), jobs))


def print_rows(rows: list[Row], ops: Iterable[Op] = ()) -> None:
    """The table; ``kinks`` counts the entries on a kink or a jump, where any value between the one-sided
    slopes is accepted (order 2: where there is no second derivative to check)."""
    print(f"{'op':<36} {'dtype':<8} {'order':>5} {'abs err':>9} {'rel err':>9} {'kinks':>5} {'time':>6}  status")
    for r in rows:
        print(f"{r.op:<36} {r.dtype:<8} {r.order:5d} {r.max_abs_err:9.2e} {r.max_rel_err:9.2e} {r.kinks:5d} "
              f"{r.seconds:5.2f}s  {r.status}")
    for op in ops:
        if op.second_order is not None:
            print(f"{op.name}: no order-2 row, its backward is not differentiable: {op.second_order}")


def write_json(rows: list[Row], path: str) -> None:
    with open(path, "w") as f:
        json.dump({"jax": jax.__version__, "device": str(jax.devices()[0]),
                   "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)


@dataclasses.dataclass(frozen=True)
class Where:
    """Where the pieces of one op are, each as ``file:line``."""

    op: str
    public: str  # the public function
    forward: str | None  # the hand-written rule's forward and backward; None for an op composed of others
    backward: str | None
    reference: str
    row: str  # the row of the table
    laws: tuple[tuple[str, str], ...]  # (law, where its function is), the universal ones first

    def lines(self) -> list[str]:
        own = (f"  forward     {self.forward}", f"  backward    {self.backward}") if self.forward else (
            "  forward     (no rule of its own: composed of ops with hand-written rules)",)
        return [self.op, f"  function    {self.public}", *own, f"  reference   {self.reference}",
                f"  table row   {self.row}", f"  laws        {len(self.laws)}",
                *(f"    {name:<32} {site}" for name, site in self.laws)]


def _bare(fn: Any) -> Any:
    """The function itself: without bound settings (``functools.partial``) or decorators' wrappers."""
    return inspect.unwrap(fn.func if isinstance(fn, partial) else fn)


def _site(fn: Any) -> str:
    fn = _bare(fn)
    path = inspect.getsourcefile(fn) or "?"
    relative = os.path.relpath(path)
    return f"{path if relative.startswith('..') else relative}:{inspect.getsourcelines(fn)[1]}"


def _names(code: Any) -> Iterable[str]:
    """The global names ``code`` and the functions defined inside it use."""
    yield from code.co_names
    for const in code.co_consts:
        if inspect.iscode(const):
            yield from _names(const)


def _rule(fn: Any) -> Any:
    """The custom_vjp behind a public op: a rule among the module globals its code (nested functions too) names."""
    from handgrad.audit.discover import custom_rule

    fn = _bare(fn)
    found = (custom_rule(fn.__globals__[name]) for name in _names(fn.__code__) if name in fn.__globals__)
    return next((rule for rule in found if rule is not None and hasattr(rule, "bwd")), None)


def where(op: Op) -> Where:
    """The file:line of ``op``'s function, forward, backward, reference, table row and of each law it runs."""
    rule = _rule(op.fn)
    return Where(op.name, _site(op.fn), _site(rule.fwd) if rule else None, _site(rule.bwd) if rule else None,
                 _site(op.ref), os.path.relpath(op.defined_at),
                 tuple((law.name, _site(getattr(laws, law.name))) for law in (*UNIVERSAL, *op.laws)))
