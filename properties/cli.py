"""The ``handgrad`` console script. It lives in ``properties``, the top of the import stack
(pure ← reference ← properties), because ``verify --properties`` runs the property suite."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from typing import Any, NoReturn

# verify compiles ~300 small programs once each, so compile time is its whole cost: XLA's
# CPU backend is asked for quick compilation. Numerics are checked to the same tolerances.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _verify(args: argparse.Namespace) -> int:
    if "XLA_FLAGS" not in os.environ:  # read when JAX first starts its backend, which is below
        os.environ["XLA_FLAGS"] = _FAST_COMPILE
    import reference.cases
    from reference.verify import OPTIMIZERS, print_rows, verify, write_json

    wanted = [w for w in (args.ops or "").split(",") if w]
    cases = [c for c in reference.cases.CASES if not wanted or any(w in c.name for w in wanted)]
    optimizers = [o for o in OPTIMIZERS if not wanted or any(w in o for w in wanted)]
    if wanted and not cases and not optimizers:
        print(f"handgrad verify: no op matches --ops {args.ops!r}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = verify(cases, optimizers=optimizers)
    print_rows(rows)
    if args.json:
        write_json(rows, args.json)
    failed = [r for r in rows if r.status != "ok"]
    if args.properties:
        failed += _properties()
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed in {time.perf_counter() - start:.1f}s")
    return 1 if failed else 0


def _properties() -> list:
    """Runs the property suite in the ci profile; prints one row per property, returns the failures."""
    from hypothesis import settings

    from properties import suite

    settings.load_profile("ci")
    print(f"\nproperties (Hypothesis profile ci, {settings().max_examples} examples a property at least)")
    print(f"{'property':<34} {'ops':>3} {'examples':>8} {'time':>7}  status")
    results = suite.run_all(progress=lambda name: print(f"  running {name} ...", end="\r", flush=True))
    for r in results:
        print(f"{r.prop:<34} {r.ops:3d} {r.examples:8d} {r.seconds:6.1f}s  {r.status}")
    return [r for r in results if r.status != "ok"]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _bench(args: argparse.Namespace) -> int:
    from reference import bench

    if len(args.sizes) < 2:
        print(f"handgrad bench: --sizes needs at least an input and an output width, got {args.sizes}", file=sys.stderr)
        return 2
    rows = bench.run(args.sizes, args.batch, args.activations.split(","), rounds=args.rounds, dtype=args.dtype,
                     compile_rounds=args.compile_rounds,
                     progress=lambda what: print(f"  timing {what} ...", file=sys.stderr, flush=True))
    bench.print_rows(rows)
    if args.json:
        bench.write_json(rows, args.json)
    return 0


def _floats_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _distributed(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` from the flags, else from the environment (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID); CPU processes talk through gloo. Must run before JAX starts."""
    coordinator = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator:
        return
    import jax

    count = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0")) or None
    index = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=count, process_id=None if index is None else int(index))


def _train(args: argparse.Namespace) -> int:
    try:
        from tqdm import tqdm

        from reference import trainer
        from reference.checkpoints import CheckpointError
        from reference.datasets import DataError
    except ModuleNotFoundError as e:
        print(f"handgrad train: needs the train extra (missing {e.name}); install it with "
              f"pip install 'handgrad[train]'", file=sys.stderr)
        return 2
    import jax

    _distributed(args)
    fields = {f.name for f in dataclasses.fields(trainer.TrainConfig)}
    config = trainer.TrainConfig(**{k: (tuple(v) if k == "hidden" else v) for k, v in vars(args).items()
                                    if k in fields})
    lead = jax.process_index() == 0
    log = tqdm.write if lead else (lambda text: None)
    bar = functools.partial(tqdm, unit="step", leave=False, disable=None if lead else True, dynamic_ncols=True)
    try:
        trainer.train(config, log=log, bar=bar)
    except (DataError, CheckpointError, trainer.TrainError) as e:
        print(f"handgrad train: {e}", file=sys.stderr)
        return 2
    except trainer.Diverged as e:
        print(f"handgrad train: {e}", file=sys.stderr)
        return 3
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (with a pointer to --help), never a traceback or a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_train(sub: Any) -> None:
    from_config = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 30, "batch_size": 64}
    t = sub.add_parser("train", help="train an MLP with hand-written backprop on real data (needs the train extra)",
                       description="Train an MLP with pure's hand-written backprop through jit. Without arguments: "
                                   "scikit-learn's digits, 64-128-64-10, relu, SGD with momentum and cosine decay.")
    g = t.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (default), breast_cancer, iris, diabetes, or a .npz holding X and y")
    g.add_argument("--task", choices=["classification", "regression"],
                   help="for a .npz: default classification for integer y, regression for float y")
    g.add_argument("--val-fraction", type=float, default=0.1, help="stratified validation split (default 0.1)")
    g.add_argument("--test-fraction", type=float, default=0.2, help="stratified test split, used once at the end "
                                                                     "(default 0.2)")
    g.add_argument("--kfold", type=int, metavar="K", help="K-fold cross-validation on train+val: mean ± std")
    g = t.add_argument_group("model")
    g.add_argument("--hidden", type=_ints, default=[128, 64], help="hidden widths (default 128,64)")
    g.add_argument("--activation", choices=["relu", "sigmoid", "tanh"], default="relu")
    g.add_argument("--init", choices=["he", "xavier", "normal"], default="he")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout rate on hidden units (default 0)")
    g = t.add_argument_group("loss")
    g.add_argument("--loss", choices=["softmax", "hinge"], help="for classification (default softmax)")
    g.add_argument("--l1", type=float, default=0.0, help="l1 · Σ|W| penalty (default 0)")
    g.add_argument("--l2", type=float, default=0.0, help="l2/2 · ΣW² penalty (default 0)")
    g.add_argument("--max-norm", type=_floats_or_none, help="project each unit's incoming weights to norm ≤ c")
    g = t.add_argument_group("optimiser")
    g.add_argument("--optimizer", choices=["sgd"], default="sgd")
    g.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    for flag, value in from_config.items():
        g.add_argument(f"--{flag.replace('_', '-')}", type=type(value), default=value, help=f"default {value:g}")
    g = t.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="initialisation, data order, splits and dropout (default 0)")
    g.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better val metric; keep the best parameters")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="write orbax checkpoints here")
    g.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                   help="checkpoint every N steps within an epoch, and at each epoch's end (default 50)")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    g.add_argument("--reference", action="store_true",
                   help="also train with jax.grad + optax and report the largest parameter difference per epoch")
    g.add_argument("--out", metavar="DIR", help="write metrics.json, params.npz and plots here")
    g.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="with --out, draw curves.png, weights.png and grad_norms.png (default on)")
    g = t.add_argument_group("several processes (jax.distributed, gloo on CPU)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (or JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, help="(or JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="(or JAX_PROCESS_ID)")
    t.set_defaults(run=_train)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="handgrad", description="Hand-written JAX backprop, proven right.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check every pure op's VJP against its reference and float64 differences")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--properties", action="store_true", help="also run the Hypothesis property suite (ci profile)")
    p.add_argument("--ops", metavar="NAMES", help="only the ops whose names contain one of these, comma-separated")
    p.set_defaults(run=_verify)
    b = sub.add_parser("bench", help="time the MLP training step: hand-written VJPs vs jax.grad vs jax.grad + optax")
    b.add_argument("--sizes", type=_ints, default=[784, 512, 512, 10], help="layer widths (default 784,512,512,10)")
    b.add_argument("--batch", type=_ints, default=[128, 1024], help="batch sizes (default 128,1024)")
    b.add_argument("--activations", default="relu,sigmoid,tanh", help="default relu,sigmoid,tanh")
    b.add_argument("--rounds", type=int, default=30, help="timed rounds of H, A and O (default 30)")
    b.add_argument("--compile-rounds", type=int, default=3, help="compilations from scratch per step (default 3)")
    b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="compute dtype; params and loss stay float32 (default float32)")
    b.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    b.set_defaults(run=_bench)
    _add_train(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
