"""The ``handgrad`` console script: ``verify``, ``check``, ``audit``, ``train`` and ``bench``.

Each command imports what it needs when it runs: ``train`` and ``bench`` never import
Hypothesis, and ``train`` needs the ``train`` extra only once it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys
import time
from typing import Any, NoReturn

from handgrad.compilation import ask_quick_compilation


def _verify(args: argparse.Namespace) -> int:
    ask_quick_compilation()  # verify compiles ~300 small programs once each: compile time is its whole cost
    from handgrad.audit.checks import EXIT_UNPROVEN
    from handgrad.verify import OPTIMIZERS, print_rows, verify, where, write_json
    from properties.table import BY_NAME, OPS

    if args.where:
        found = [op for op in OPS if args.where in (op.name, op.short)]
        if len(found) != 1:
            print(f"handgrad verify: --where {args.where!r} names {'no op' if not found else 'several ops'}; "
                  f"the ops are {', '.join(BY_NAME)}", file=sys.stderr)
            return 2
        print("\n".join(where(found[0]).lines()))
        return 0
    wanted = [w for w in (args.ops or "").split(",") if w]
    ops = [op for op in OPS if not wanted or any(w in op.name for w in wanted)]
    optimizers = [o for o in OPTIMIZERS if not wanted or any(w in o for w in wanted)]
    if wanted and not ops and not optimizers:
        print(f"handgrad verify: no op matches --ops {args.ops!r}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = verify(ops, optimizers=optimizers)
    print_rows(rows, ops)
    if args.json:
        write_json(rows, args.json)
    unproven = [r for r in rows if r.status.startswith("UNPROVEN")]
    failed = [r for r in rows if r.status != "ok" and r not in unproven]
    if args.properties:
        failed += _properties(ops, args.profile, optimizers=bool(optimizers))
    print(f"{len(rows) - len(failed) - len(unproven)} passed, {len(failed)} failed, {len(unproven)} unproven (more "
          f"than 1% of the entries unchecked) in {time.perf_counter() - start:.1f}s")
    return 1 if failed else EXIT_UNPROVEN if unproven else 0


def _properties(ops: list, profile: str, *, optimizers: bool) -> list:
    """Runs the property suite on ``ops`` (and the optimizer laws) under ``profile``; prints one row per property,
    returns the failures."""
    from hypothesis import settings

    from properties import profiles, suite

    profiles.load(profile)
    print(f"\nproperties (Hypothesis profile {profile}, {settings().max_examples} examples a property at least)")
    print(f"{'property':<34} {'ops':>3} {'examples':>8} {'time':>7}  status")
    show = (lambda name: print(f"  running {name} ...", end="\r", flush=True)) if sys.stdout.isatty() else (
        lambda name: None)  # a progress line only where it can be overwritten
    results = suite.run_all(progress=show, ops=ops, optimizers=optimizers)
    for r in results:
        print(f"{r.prop:<34} {r.ops:3d} {r.examples:8d} {r.seconds:6.1f}s  {r.status}")
    return [r for r in results if r.status != "ok"]


def _check(args: argparse.Namespace) -> int:
    ask_quick_compilation()
    import jax
    import numpy as np

    from handgrad import check

    wide = any(re.match(r"(f64|c128)\[", spec) for spec in args.specs)  # float64 asked for: x64 on, for the check
    try:
        with jax.enable_x64(True) if wide else contextlib.nullcontext():
            fn, name = check.load_function(args.target)
            values = check.parse_args(args.specs, np.random.default_rng(args.seed))
            rows = check.run(fn, name, values, order=args.order, transforms=args.transforms, seed=args.seed,
                             plot=args.plot)
    except (check.UsageError, TypeError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"handgrad check: {message}", file=sys.stderr)
        return 2
    check.print_rows(name, args.specs, rows)
    if args.json:
        check.write_json(name, args.specs, rows, args.json)
    return check.exit_code(rows)


def _audit(args: argparse.Namespace) -> int:
    from handgrad.audit import command

    return command.run(args)


def _checks(text: str) -> tuple[str, ...]:
    from handgrad.audit.checks import select

    try:
        return select(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _bench(args: argparse.Namespace) -> int:
    from handgrad import bench

    if args.attention:
        from handgrad import bench_attention

        rows = bench_attention.run(args.lengths, rounds=args.rounds or 10,
                                   dtype=args.dtype, progress=lambda what: print(f"  timing {what} ...",
                                                                                 file=sys.stderr, flush=True))
        bench_attention.print_rows(rows)
        if args.json:
            bench.write_json(rows, args.json)
        return 0
    if args.oracle:
        rows = bench.oracle(args.entries,
                            progress=lambda what: print(f"  checking {what} ...", file=sys.stderr, flush=True))
        bench.print_oracle(rows)
        if args.json:
            bench.write_json(rows, args.json)
        return 0

    if len(args.sizes) < 2:
        print(f"handgrad bench: --sizes needs at least an input and an output width, got {args.sizes}", file=sys.stderr)
        return 2
    rows = bench.run(args.sizes, args.batch, args.activations.split(","), rounds=args.rounds or 30, dtype=args.dtype,
                     compile_rounds=args.compile_rounds,
                     progress=lambda what: print(f"  timing {what} ...", file=sys.stderr, flush=True))
    bench.print_rows(rows)
    if args.json:
        bench.write_json(rows, args.json)
    return 0


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
    from handgrad.train import config as train_config

    if args.processes is not None:
        from handgrad.train import launch

        return launch.local(args.argv, args.processes, coordinator=args.coordinator)
    try:
        from tqdm import tqdm

        from handgrad.train import command, lm, loop
        from handgrad.train.checkpoints import CheckpointError
        from handgrad.train.data import DataError
    except ModuleNotFoundError as e:
        print(f"handgrad train: needs the train extra (missing {e.name}); install it with "
              f"pip install 'handgrad[train]'", file=sys.stderr)
        return 2
    import jax

    _distributed(args)
    lead = jax.process_index() == 0
    log = tqdm.write if lead else (lambda text: None)
    bar = functools.partial(tqdm, unit="step", leave=False, disable=None if lead else True, dynamic_ncols=True)
    try:
        config = train_config.from_arguments(args)
        (lm.train if isinstance(config, train_config.LMConfig) else command.train)(config, log=log, bar=bar)
    except (DataError, CheckpointError, train_config.TrainError) as e:
        print(f"handgrad train: {e}", file=sys.stderr)
        return 2
    except loop.Diverged as e:
        print(f"handgrad train: {e}", file=sys.stderr)
        return 3
    except (command.OutputError, command.CheckpointMissed) as e:
        print(f"handgrad train: {e}", file=sys.stderr)
        return 1
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (with a pointer to --help), never a traceback or a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_train(sub: Any) -> None:
    from handgrad.train.config import add_arguments

    t = sub.add_parser("train", help="train an MLP or a transformer language model with hand-written backprop on "
                                     "real data (needs the train extra)",
                       description="Train a model with pure's hand-written backprop through jit. Without arguments: "
                                   "an MLP 64-128-64-10 on scikit-learn's digits, relu, SGD with momentum and cosine "
                                   "decay. --model transformer: a byte-level language model of the standard "
                                   "library's source (docs/training.md).")
    add_arguments(t)
    g = t.add_argument_group("several processes (jax.distributed, gloo on CPU)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (or JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, help="(or JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="(or JAX_PROCESS_ID)")
    g.add_argument("--processes", type=int, metavar="N", help="start N processes of this command here, joined "
                                                               "through a free local port (handgrad.train.launch)")
    t.set_defaults(run=_train)


def main(argv: list[str] | None = None) -> int:
    from handgrad.train.config import positive_ints

    parser = _Parser(prog="handgrad", description="Hand-written JAX backprop, proven right.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check every pure op's VJP against its reference and float64 differences")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--properties", action="store_true", help="also run the Hypothesis property suite on the same ops")
    p.add_argument("--profile", default="handgrad-ci",
                   help="the Hypothesis profile for --properties (default handgrad-ci; also handgrad-dev, "
                        "handgrad-thorough, or one of your own)")
    p.add_argument("--ops", metavar="NAMES", help="only the ops whose names contain one of these, comma-separated")
    p.add_argument("--where", metavar="OP", help="print where OP's function, forward, backward, reference, table row "
                                                 "and laws are (file:line), and check nothing")
    p.set_defaults(run=_verify)
    c = sub.add_parser("check", help="audit any importable function's VJP: check_vjp, order 2, transformations",
                       description="Check the VJP of MODULE:FUNCTION (a dotted module or a .py file) at random "
                                   "arguments described by specs: f32[4,5], f64[3], c64[3], i32[4]<10 (labels "
                                   "below 10), bool[4], key, 1.5, @data.npz, @data.npz:X, @x.npy.")
    c.add_argument("target", metavar="MODULE:FUNCTION")
    c.add_argument("specs", metavar="SPEC", nargs="*", help="one per positional argument")
    c.add_argument("--order", type=int, choices=[1, 2], default=1, help="2 also checks the VJP of the VJP")
    c.add_argument("--transforms", action="store_true",
                   help="also check the VJP under jit, vmap, grad-of-jit, jax.checkpoint and scan")
    c.add_argument("--seed", type=int, default=0, help="for the arguments, cotangents and probes (default 0)")
    c.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    c.add_argument("--plot", metavar="PATH", help="on a FAIL, draw where the VJP is off to PATH (a PNG)")
    c.set_defaults(run=_check)
    a = sub.add_parser("audit", help="check every hand-written rule of a package, module or .py file",
                       description="Find every jax.custom_vjp and jax.custom_jvp rule (and every public function "
                                   "with jaxtyping array annotations) in TARGET, build inputs, and check each: "
                                   "check_vjp at orders 1 and 2, and check_transforms. Per-function specs, domains "
                                   "and expected differences go in [tool.handgrad.audit] of the target's "
                                   "pyproject.toml, or in a TOML file given with --config. Exit 0 when every "
                                   "checked rule holds, 1 on a FAIL or an oracle error, 2 on bad usage.")
    a.add_argument("target", metavar="TARGET", nargs="?", help="a dotted package or module, or a path to a .py file")
    a.add_argument("--record", metavar="CMD", help="instead of a target: run the shell command CMD (a test suite, "
                                                   "examples) and check every custom_vjp and custom_jvp rule its "
                                                   "Python processes call, at the inputs they call it with")
    a.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="only rules whose module:qualname (or qualname) matches; repeatable")
    a.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="skip these; repeatable")
    a.add_argument("--config", metavar="TOML", help="a TOML file with the audit table (default: the target's "
                                                     "pyproject.toml)")
    a.add_argument("--no-known", action="store_true",
                   help="ignore handgrad's table of library rules that differ by design (optax.scale_gradient)")
    a.add_argument("--timeout", type=float, help="seconds each check of each rule may take (default 60)")
    a.add_argument("--seed", type=int, default=0, help="for the inputs, cotangents and probes (default 0)")
    a.add_argument("--checks", type=_checks, default=("vjp", "vjp of the vjp", "transformations"),
                   help="which checks, comma-separated: vjp, order2, transforms (default all three)")
    a.add_argument("--x64", action="store_true", help="float64 inputs, x64 on (default float32, x64 off)")
    a.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a.add_argument("--junit-xml", metavar="PATH", help="also write JUnit XML: one test case per rule and check")
    a.add_argument("--html", metavar="DIR", help="also write a page, DIR/index.html, with each FAIL's picture")
    a.add_argument("--baseline", metavar="FILE", help="exit 1 only on what got worse than FILE: a new FAIL, oracle "
                                                      "error or timeout of a rule and check")
    a.add_argument("--write-baseline", metavar="FILE", help="write this audit's outcomes to FILE, for --baseline")
    a.set_defaults(run=_audit)
    b = sub.add_parser("bench", help="time the MLP training step: hand-written VJPs vs jax.grad vs jax.grad + optax")
    b.add_argument("--sizes", type=positive_ints, default=(784, 512, 512, 10),
                   help="layer widths (default 784,512,512,10)")
    b.add_argument("--batch", type=positive_ints, default=(128, 1024), help="batch sizes (default 128,1024)")
    b.add_argument("--activations", default="relu,sigmoid,tanh", help="default relu,sigmoid,tanh")
    b.add_argument("--rounds", type=int, help="timed rounds of H, A and O (default 30; with --attention, 10)")
    b.add_argument("--compile-rounds", type=int, default=3, help="compilations from scratch per step (default 3)")
    b.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="compute dtype; params and loss stay float32 (default float32)")
    b.add_argument("--oracle", action="store_true",
                   help="instead, time check_vjp against jax.test_util.check_grads on a rule with a 1%% error in one "
                        "entry of leaves of 1e4 to 1e7 entries, and on the correct rule")
    b.add_argument("--entries", type=positive_ints, default=(10**4, 10**5, 10**6, 10**7),
                   help="with --oracle: the elementwise leaf sizes (default 10000,100000,1000000,10000000)")
    b.add_argument("--attention", action="store_true", help="instead: an attention step, pure.attention against "
                   "jax.grad of jax.nn.dot_product_attention, at each --lengths (handgrad.bench_attention)")
    b.add_argument("--lengths", type=positive_ints, default=(512, 1024, 2048, 4096),
                   help="--attention's sequence lengths (default 512,1024,2048,4096)")
    b.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    b.set_defaults(run=_bench)
    _add_train(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for train --processes, which starts the command again
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
