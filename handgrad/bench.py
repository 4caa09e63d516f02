"""``handgrad bench``: one training step written three ways, timed in one process.

* H: pure's hand-written VJPs (``pure.nn.classification_loss`` + ``pure.optim.sgd``);
* A: ``jax.grad`` over a plain jax.numpy forward, with the same SGD;
* O: ``jax.grad`` + ``optax.chain(add_decayed_weights, sgd)``, what a jax + optax user writes.

Method: each step is lowered, then compiled explicitly three times, H, A, O in turn (compile
time, in CPU seconds, apart from step time), warmed up, then H, A and O run in turn step after
step (H A O, A O H, O H A, ...), each timed to ``block_until_ready``, so that the machine's
drift and any cost of going first hit all three alike.
Reported: the median of the per-round ratios (steps/s of H over A, and over O) with their
interquartile range, the same ratio by process CPU time (which a shared host's stolen time
does not inflate), and the compiled programs' temp memory from ``memory_analysis()``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pure.nn
import pure.optim
import reference.nn

LR, WEIGHT_DECAY = 0.01, 1e-4


@dataclasses.dataclass(frozen=True)
class BenchRow:
    sizes: str
    batch: int
    activation: str
    dtype: str  # the compute dtype; params and loss are float32
    ms_per_step: dict[str, float]  # median step time of H, A and O
    ratio: dict[str, tuple[float, float, float]]  # "H/A", "H/O": steps/s ratio (median, q1, q3)
    cpu_ratio: dict[str, tuple[float, float, float]]  # the same by process CPU time, blind to a shared host's steal
    compile_s: dict[str, float]  # median CPU seconds of compile_rounds compilations
    temp_bytes: dict[str, int]
    loss_spread: float  # the largest relative difference of A's and O's last loss from H's: the same model, 3 ways
    model_tflops: float  # H's achieved model TFLOP/s: 6 × parameters × batch per step
    matmul_tflops: float  # a plain (batch, width) @ (width, width) matmul in the compute dtype, same run


def matmul_tflops(batch: int, width: int, dtype: str, *, rounds: int = 10) -> float:
    """TFLOP/s of one plain matmul of the MLP's widest layer's size: the peak to compare with."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((batch, width)), dtype)
    b = jnp.asarray(rng.standard_normal((width, width)), dtype)
    mm = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(mm(a, b))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        times.append(time.perf_counter() - start)
    return 2 * batch * width * width / float(np.median(times)) / 1e12


def _steps(activation: str, compute_dtype: Any = None) -> dict[str, tuple[Callable, Any]]:
    """The three jitted steps ``(params, opt_state, x, y) -> (params, opt_state, loss)`` and their optimizers."""
    hand_opt = pure.optim.sgd(LR, weight_decay=WEIGHT_DECAY, mask=pure.nn.weights_only)
    optax_opt = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY, pure.nn.weights_only), optax.sgd(LR))

    def make(loss: Callable, opt: Any) -> Callable:
        def step(params, opt_state, x, y):
            value, grads = jax.value_and_grad(loss)(params, x, y)
            updates, opt_state = opt.update(grads, opt_state, params)
            return pure.optim.apply_updates(params, updates), opt_state, value
        return jax.jit(step, donate_argnums=(0, 1))

    policy = {"activation": activation, "compute_dtype": compute_dtype}
    hand = lambda p, x, y: pure.nn.classification_loss(p, x, y, **policy)  # noqa: E731
    plain = lambda p, x, y: reference.nn.classification_loss(p, x, y, **policy)  # noqa: E731
    return {"H": (make(hand, hand_opt), hand_opt), "A": (make(plain, hand_opt), hand_opt),
            "O": (make(plain, optax_opt), optax_opt)}


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(np.asarray(values), [25, 50, 75])
    return float(med), float(q1), float(q3)


def bench_one(sizes: Sequence[int], batch: int, activation: str, *, rounds: int = 30, warmup: int = 3,
              seed: int = 0, dtype: str = "float32", compile_rounds: int = 3) -> BenchRow:
    """Times one configuration; see the module docstring for the method. Params, inputs and the
    loss are float32; ``dtype`` is the compute dtype (the mixed-precision policy of pure.nn.mlp)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = jnp.asarray(rng.integers(0, sizes[-1], batch).astype(np.int32))
    steps, state, compiled = _steps(activation, None if dtype == "float32" else jnp.dtype(dtype)), {}, {}
    compile_cpu, temp = {name: [] for name in steps}, {}
    for name, (_, opt) in steps.items():
        params = pure.nn.init_mlp(jax.random.key(seed), sizes)
        state[name] = (params, opt.init(params))
    for r in range(compile_rounds):  # H, A, O compiled in turn, each from scratch (no cached executable)
        for name, (step, _) in steps.items():
            if r:
                jax.clear_caches()
            lowered = step.lower(*state[name], x, y)
            start = time.process_time()
            compiled[name] = lowered.compile()
            compile_cpu[name].append(time.process_time() - start)
    compile_s = {name: float(np.median(t)) for name, t in compile_cpu.items()}
    for name in steps:
        memory = compiled[name].memory_analysis()
        temp[name] = int(getattr(memory, "temp_size_in_bytes", -1)) if memory is not None else -1
    last_loss: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for i in range(warmup + rounds):
        for name in names[i % 3:] + names[:i % 3]:  # in turn, first place rotating: drift hits all alike
            start, start_cpu = time.perf_counter(), time.process_time()
            params, opt_state, loss = compiled[name](*state[name], x, y)
            jax.block_until_ready(loss)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            state[name] = (params, opt_state)
            last_loss[name] = float(loss)
            if i >= warmup:
                times[name].append(elapsed)
                cpu[name].append(elapsed_cpu)

    def ratios(t: dict[str, list[float]]) -> dict[str, tuple[float, float, float]]:
        return {f"H/{other}": _quartiles(np.asarray(t[other]) / np.asarray(t["H"])) for other in ("A", "O")}

    n_params = sum(m * n + n for m, n in zip(sizes[:-1], sizes[1:], strict=False))
    model = 6 * n_params * batch / float(np.median(times["H"])) / 1e12
    return BenchRow(",".join(map(str, sizes)), batch, activation, dtype,
                    {name: 1e3 * float(np.median(t)) for name, t in times.items()}, ratios(times), ratios(cpu),
                    compile_s, temp, max(abs(last_loss[n] / last_loss["H"] - 1) for n in "AO"), model,
                    matmul_tflops(batch, max(sizes), dtype))


def run(sizes: Sequence[int] = (784, 512, 512, 10), batches: Sequence[int] = (128, 1024),
        activations: Sequence[str] = ("relu", "sigmoid", "tanh"), rounds: int = 30, dtype: str = "float32",
        compile_rounds: int = 3, progress: Callable[[str], None] = lambda _: None) -> list[BenchRow]:
    rows = []
    for batch in batches:
        for activation in activations:
            progress(f"batch {batch}, {activation}, {dtype}")
            rows.append(bench_one(sizes, batch, activation, rounds=rounds, dtype=dtype, compile_rounds=compile_rounds))
    return rows


def print_rows(rows: Sequence[BenchRow]) -> None:
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"compute dtype {rows[0].dtype if rows else '-'} (params and loss float32)")
    print(f"{'batch':>5} {'act':<8} {'H ms':>7} {'A ms':>7} {'O ms':>7} {'H/A [IQR]':>20} {'H/O [IQR]':>20} "
          f"{'H/A cpu [IQR]':>20} {'compile H/A':>11} {'temp H/A':>9} {'TFLOP/s H':>9} {'of matmul':>9}")
    for r in rows:
        ratio = {k: f"{m:.2f} [{q1:.2f}, {q3:.2f}]" for k, (m, q1, q3) in r.ratio.items()}
        cpu = "{:.2f} [{:.2f}, {:.2f}]".format(*r.cpu_ratio["H/A"])
        temp = r.temp_bytes["H"] / r.temp_bytes["A"] if r.temp_bytes["A"] > 0 else float("nan")
        print(f"{r.batch:5d} {r.activation:<8} {r.ms_per_step['H']:7.2f} {r.ms_per_step['A']:7.2f} "
              f"{r.ms_per_step['O']:7.2f} {ratio['H/A']:>20} {ratio['H/O']:>20} {cpu:>20} "
              f"{r.compile_s['H'] / r.compile_s['A']:11.2f} {temp:9.2f} {r.model_tflops:9.3g} "
              f"{r.model_tflops / r.matmul_tflops:9.0%}")


def write_json(rows: Sequence[Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump({"jax": jax.__version__, "device": str(jax.devices()[0]), "backend": jax.default_backend(),
                   "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)


# ---------------------------------------------------------------- the oracle on needles in large leaves
class Planted(enum.Enum):
    """The error a bench rule carries."""

    NEEDLE = "1% needle"  # one entry 1% off
    UNIFORM = "1% all"  # every entry 1% off
    CORRECT = "correct"


@dataclasses.dataclass(frozen=True)
class OracleRow:
    case: str  # "elementwise n=…" or "affine dW W d×d"
    entries: int
    planted: Planted
    seconds: float  # check_vjp
    verdict: str  # "found at flat index …", "failed", "missed", "passed" or "false alarm"
    check_grads_seconds: float
    check_grads_verdict: str


def _needle_cases(sizes: Sequence[int], widths: Sequence[int]) -> list[tuple[str, int, Callable, tuple, int]]:
    """(case, entries, fn factory(Planted), args, needle) for an elementwise sigmoid rule and affine's dW."""
    rng = np.random.default_rng(0)

    def wrong(v, needle, planted):  # the correct flat cotangent v, with the planted error
        if planted is Planted.UNIFORM:
            return v * 1.01
        return v.at[needle].multiply(1.01) if planted is Planted.NEEDLE else v

    def sigmoid_rule(needle):
        def rule(planted):
            f = jax.custom_vjp(jax.nn.sigmoid)
            f.defvjp(lambda x: (jax.nn.sigmoid(x), jax.nn.sigmoid(x)),
                     lambda y, g: (wrong(g * y * (1 - y), needle, planted),))
            return f
        return rule

    def affine_rule(needle):
        def rule(planted):
            f = jax.custom_vjp(lambda x, W, b: x @ W + b)

            def bwd(res, g):
                x, W = res
                return g @ W.T, wrong((x.T @ g).reshape(-1), needle, planted).reshape(W.shape), g.sum(0)
            f.defvjp(lambda x, W, b: (x @ W + b, (x, W)), bwd)
            return f
        return rule

    cases = [(f"elementwise n={n:.0e}".replace("e+0", "e"), n, sigmoid_rule(n // 3 + 7),
              (jnp.asarray(rng.standard_normal(n), jnp.float32),), n // 3 + 7) for n in sizes]
    for d in widths:
        args = (jnp.asarray(rng.standard_normal((64, d)), jnp.float32),
                jnp.asarray(rng.standard_normal((d, d)) / np.sqrt(d), jnp.float32), jnp.zeros(d, jnp.float32))
        cases.append((f"affine dW, W {d}x{d}, x 64x{d}", d * d, affine_rule(d * d // 2 + 5), args, d * d // 2 + 5))
    return cases


def oracle(sizes: Sequence[int] = (10**4, 10**5, 10**6, 10**7), widths: Sequence[int] = (256, 1024),
           progress: Callable[[str], None] = lambda _: None) -> list[OracleRow]:
    """``check_vjp`` and ``jax.test_util.check_grads`` on a rule with a 1% error in one entry, on one 1% off in every
    entry, and on the correct rule, at each size: time and verdict of each."""
    from jax.test_util import check_grads

    from reference import VJPMismatch, check_vjp

    rows = []
    for case, entries, rule, args, needle in _needle_cases(sizes, widths):
        for planted in Planted:
            progress(f"{case}, {planted.value}")
            fn = rule(planted)
            start = time.perf_counter()
            try:
                check_vjp(fn, args)
                verdict = "passed" if planted is Planted.CORRECT else "missed"
            except VJPMismatch as e:
                named = any(p.kind == "value" and p.index == needle for p in e.problems)
                verdict = {Planted.CORRECT: "false alarm", Planted.UNIFORM: "failed",
                           Planted.NEEDLE: f"found at flat index {needle}" if named else "flagged elsewhere"}[planted]
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            try:
                check_grads(fn, args, order=1, modes=["rev"])
                theirs = "passed" if planted is Planted.CORRECT else "missed"
            except AssertionError:
                theirs = "false alarm" if planted is Planted.CORRECT else "found (no index)"
            rows.append(OracleRow(case, entries, planted, seconds, verdict, time.perf_counter() - start, theirs))
    return rows


def print_oracle(rows: Sequence[OracleRow]) -> None:
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"{'case':<34} {'rule':<10} {'check_vjp':>9}  {'verdict':<28} {'check_grads':>11}  verdict")
    for r in rows:
        print(f"{r.case:<34} {r.planted.value:<10} {r.seconds:8.2f}s  {r.verdict:<28} "
              f"{r.check_grads_seconds:10.2f}s  {r.check_grads_verdict}")
