"""The ``handgrad`` console script. It lives in ``properties``, the top of the import stack
(pure ← reference ← properties), because ``verify --properties`` runs the property suite."""

from __future__ import annotations

import argparse
import os
import sys
import time

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
    rows = bench.run(args.sizes, args.batch, args.activations.split(","), rounds=args.rounds,
                     progress=lambda what: print(f"  timing {what} ...", file=sys.stderr, flush=True))
    bench.print_rows(rows)
    if args.json:
        bench.write_json(rows, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="handgrad", description="Hand-written JAX backprop, proven right.")
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
    b.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    b.set_defaults(run=_bench)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
