"""``handgrad audit``: the command's steps, from the arguments to the exit code (the parser is handgrad.cli's).

:func:`run` discovers the rules of a target and checks them in a worker (:mod:`.runner`); :func:`recorded_run`
runs a command with a recorder in each of its Python processes (:mod:`.recorded`); both end in :func:`report`:
the table, the files asked for (JSON, JUnit XML, the HTML page, a baseline) and the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import Any


def run(args: argparse.Namespace) -> int:
    """``handgrad audit TARGET`` (or ``--record CMD``): the rules found, checked, reported."""
    from handgrad.audit import ConfigError, TargetError, config, discover, runner

    if args.record is not None:
        return recorded_run(args)
    if args.target is None:
        print("handgrad audit: give a TARGET, or --record CMD", file=sys.stderr)
        return 2
    try:
        found_config = config.load(args.config, config.location(args.target))
        if not args.no_known:
            found_config = config.with_known(found_config)
        options = runner.Options(args.target, dataclasses.replace(
            found_config, include=found_config.include + tuple(args.include),
            exclude=found_config.exclude + tuple(args.exclude)), seed=args.seed, x64=args.x64,
            timeout=args.timeout or found_config.timeout or 60.0, checks=args.checks)
        found = discover(args.target, options.config.include, options.config.exclude)
    except (ConfigError, TargetError) as e:
        print(f"handgrad audit: {e}", file=sys.stderr)
        return 2
    if not found.rules:
        print(f"handgrad audit: nothing to audit in {args.target} ({len(found.modules)} modules, "
              f"{len(found.skipped)} functions skipped)", file=sys.stderr)
    start = time.perf_counter()
    rows = []
    with progress(len(found.rules) * len(options.checks), "checks") as step:
        for row in runner.run(found, options, progress=step):
            rows.append(row)
    return report(args, found, rows, time.perf_counter() - start, f"config {options.config.path or 'none'}")


def recorded_run(args: argparse.Namespace) -> int:
    """``handgrad audit --record CMD``: the command runs with a recorder in each of its Python processes."""
    import subprocess
    import tempfile

    from handgrad.audit import Discovery, recorded

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="handgrad-record-") as directory:
        env = recorded.prepare(directory, args.checks, args.seed, args.timeout or 60.0)
        runs = 0
        while True:  # a check past its time limit ends its process: the command runs again for the checks left
            runs += 1
            print(f"handgrad audit --record: running {args.record}" + (f" (run {runs})" if runs > 1 else ""),
                  file=sys.stderr)
            status = subprocess.run(args.record, shell=True, env=env).returncode
            recording = recorded.collected(directory)
            if not recording.overran or runs == recorded.RUNS:
                break
            for name in os.listdir(directory):  # their rows are in; a file that overran says so no more
                recorded.settled(os.path.join(directory, name))
    seconds = time.perf_counter() - start
    if recording.processes == 0:  # killed, not Python, or no jax imported: nothing was checked, which is no pass
        print(f"handgrad audit --record: no Python process of the command wrote a recording (it exited {status}): "
              f"nothing was checked", file=sys.stderr)
        return 2
    if recording.overran:
        print(f"handgrad audit --record: stopped after {runs} runs of the command, each ended by a check past its "
              f"time limit; rules after the last of them were not checked", file=sys.stderr)
    print(f"the command exited {status} (run {runs}); {recording.processes} Python processes recorded, "
          f"{recording.seconds:.2f} s spent recording; {len(recording.jax_rules)} of JAX's own rules called "
          f"(not checked)")
    found = Discovery(f"--record {args.record!r}", tuple(sorted({r.rule.partition(":")[0] for r in recording.rows})),
                      (), ())
    return report(args, found, recording.rows, seconds, "recorded")


def report(args: argparse.Namespace, found: Any, rows: list, seconds: float, where: str) -> int:
    """The table, the files asked for, and the exit code: 1 on a FAIL or an oracle error, or with --baseline
    on what got worse than it."""
    import jax

    from handgrad.audit import baseline, html
    from handgrad.audit import report as audit_report

    print(f"handgrad audit {found.target} (jax {jax.__version__}, {'float64' if args.x64 else 'float32'}, "
          f"seed {args.seed}, {where})")
    audit_report.print_table(found, rows, seconds, sys.stdout)
    if args.json:
        audit_report.write_json(found, rows, seconds, args.json, jax=jax.__version__, seed=args.seed, x64=args.x64)
    if args.junit_xml:
        audit_report.write_junit(found, rows, seconds, args.junit_xml)
    if args.html:
        print(f"page: {html.write(found, rows, seconds, args.html, jax=jax.__version__, seed=args.seed)}")
    if args.write_baseline:
        baseline.write(rows, args.write_baseline)
    if args.baseline is None:
        return audit_report.exit_code(rows)
    try:
        worse = baseline.load(args.baseline).worse(rows)
    except baseline.BaselineError as e:
        print(f"handgrad audit: {e}", file=sys.stderr)
        return 2
    for r in worse:
        print(f"worse than the baseline: {r.rule} [{r.check}] {r.status}", file=sys.stderr)
    return 1 if worse else 0


@contextlib.contextmanager
def progress(total: int, unit: str) -> Any:
    """A progress bar on stderr (tqdm), advanced by calling what it yields with a description."""
    from tqdm import tqdm

    with tqdm(total=total, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True, disable=None) as bar:
        started = [False]

        def step(what: str) -> None:
            if started[0]:  # the one before this is done
                bar.update(1)
            started[0] = True
            bar.set_description_str(what[-60:], refresh=True)
        yield step
