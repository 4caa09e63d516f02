"""``handgrad bench --attention``: one attention step (forward + backward, jit) written two ways, timed in one run.

* H: :func:`pure.attention`, whose hand-written backward is flash-style: it saves the output and each row's
  logsumexp, and recomputes the probabilities block by block over the keys;
* A: ``jax.grad`` through ``jax.nn.dot_product_attention(..., implementation="xla")``, whose backward holds the
  T × T probabilities.

Both are causal, ``[1, T, heads, head_dim]``, the loss ``Σ out · w`` for a fixed random ``w``, and the step returns
the gradients of q, k and v. Method as ``handgrad bench`` (:mod:`handgrad.bench`): compiled once each (temp memory
from XLA's ``memory_analysis()``), warmed up, then H and A in turn, the first place alternating (H A, A H, ...),
each timed to ``block_until_ready`` in wall and process CPU time. Reported per T: the median and interquartile
range of the per-round ratios (steps/s of H over A), and H's temp memory over A's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pure
from handgrad.bench import _quartiles

HEADS, HEAD_DIM = 4, 64
LENGTHS = (512, 1024, 2048, 4096)


@dataclasses.dataclass(frozen=True)
class AttentionRow:
    T: int
    heads: int
    head_dim: int
    dtype: str
    ms_per_step: dict[str, float]  # median step time of H and A
    ratio: dict[str, tuple[float, float, float]]  # "H/A": steps/s ratio by wall time (median, q1, q3)
    cpu_ratio: dict[str, tuple[float, float, float]]  # the same by process CPU time
    temp_bytes: dict[str, int]  # XLA's temp memory of each compiled step (-1: not reported)
    temp_ratio: float  # H's temp memory over A's
    max_grad_diff: float  # the largest |H − A| over the three gradients, over A's largest: the same step twice


def _steps(w: jax.Array) -> dict[str, Callable]:
    def loss_of(attend: Callable) -> Callable:
        return lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) * w)

    hand = loss_of(lambda q, k, v: pure.attention(q, k, v, is_causal=True))
    auto = loss_of(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"))
    return {name: jax.jit(jax.grad(loss, argnums=(0, 1, 2))) for name, loss in (("H", hand), ("A", auto))}


def bench_one(T: int, *, rounds: int = 10, warmup: int = 2, seed: int = 0, dtype: str = "float32",
              heads: int = HEADS, head_dim: int = HEAD_DIM) -> AttentionRow:
    """Times one sequence length; see the module docstring for the method."""
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((1, T, heads, head_dim)), dtype) for _ in range(3))
    w = jnp.asarray(rng.standard_normal((1, T, heads, head_dim)), jnp.float32)
    compiled = {name: step.lower(q, k, v).compile() for name, step in _steps(w).items()}
    temp = {}
    for name, c in compiled.items():
        memory = c.memory_analysis()
        temp[name] = int(getattr(memory, "temp_size_in_bytes", -1)) if memory is not None else -1
    times: dict[str, list[float]] = {name: [] for name in compiled}
    cpu: dict[str, list[float]] = {name: [] for name in compiled}
    grads: dict[str, Any] = {}
    for i in range(warmup + rounds):
        for name in (("H", "A") if i % 2 == 0 else ("A", "H")):
            start, start_cpu = time.perf_counter(), time.process_time()
            grads[name] = jax.block_until_ready(compiled[name](q, k, v))
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if i >= warmup:
                times[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
    largest = max(float(jnp.max(jnp.abs(g.astype(jnp.float32)))) for g in grads["A"])
    diff = max(float(jnp.max(jnp.abs(h.astype(jnp.float32) - a.astype(jnp.float32))))
               for h, a in zip(grads["H"], grads["A"], strict=True)) / largest

    def ratio(t: dict[str, list[float]]) -> dict[str, tuple[float, float, float]]:
        return {"H/A": _quartiles(np.asarray(t["A"]) / np.asarray(t["H"]))}

    temp_ratio = temp["H"] / temp["A"] if temp["A"] > 0 and temp["H"] >= 0 else float("nan")
    return AttentionRow(T, heads, head_dim, dtype, {n: 1e3 * float(np.median(t)) for n, t in times.items()},
                        ratio(times), ratio(cpu), temp, temp_ratio, diff)


def run(lengths: Sequence[int] = LENGTHS, *, rounds: int = 10, dtype: str = "float32",
        progress: Callable[[str], None] = lambda _: None) -> list[AttentionRow]:
    rows = []
    for T in lengths:
        progress(f"attention T={T}, {dtype}")
        rows.append(bench_one(T, rounds=rounds, dtype=dtype))
    return rows


def print_rows(rows: Sequence[AttentionRow]) -> None:
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"attention step (forward + backward, jit), causal, heads {HEADS}, head_dim {HEAD_DIM}; "
          f"H pure.attention, A jax.grad of jax.nn.dot_product_attention (xla)")
    print(f"{'T':>5} {'dtype':<8} {'H ms':>8} {'A ms':>8} {'H/A [IQR]':>20} {'H/A cpu [IQR]':>20} "
          f"{'temp H MiB':>10} {'temp A MiB':>10} {'temp H/A':>8} {'|H-A|':>8}")
    for r in rows:
        wall = "{:.2f} [{:.2f}, {:.2f}]".format(*r.ratio["H/A"])
        cpu = "{:.2f} [{:.2f}, {:.2f}]".format(*r.cpu_ratio["H/A"])
        print(f"{r.T:5d} {r.dtype:<8} {r.ms_per_step['H']:8.1f} {r.ms_per_step['A']:8.1f} {wall:>20} {cpu:>20} "
              f"{r.temp_bytes['H'] / 2**20:10.1f} {r.temp_bytes['A'] / 2**20:10.1f} {r.temp_ratio:8.3f} "
              f"{r.max_grad_diff:8.1e}")
