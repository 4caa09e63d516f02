"""The ``handgrad`` console script."""

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
    from reference.verify import print_rows, verify, write_json

    start = time.perf_counter()
    rows = verify()
    print_rows(rows)
    if args.json:
        write_json(rows, args.json)
    failed = [r for r in rows if r.status != "ok"]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed in {time.perf_counter() - start:.1f}s")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="handgrad", description="Hand-written JAX backprop, proven right.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check every pure op's VJP against its reference and float64 differences")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(run=_verify)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
