"""handgrad's pytest plugin: ``pytest --handgrad-audit PACKAGE`` and the ``check_vjp`` fixture.

Registered as a ``pytest11`` entry point, so it is loaded in every pytest run of an environment
where handgrad is installed. It therefore imports nothing at module level beyond pytest and the
standard library, and changes no global state: JAX, the oracle and the audit are imported only
when ``--handgrad-audit`` is given or a test asks for the fixture.

* ``--handgrad-audit PACKAGE`` (repeatable) adds one test item per rule the audit discovers in
  PACKAGE, named ``handgrad-audit::module:qualname``; the item runs ``check_vjp`` at orders 1
  and 2 and ``check_transforms`` on three draws of inputs, as ``handgrad audit`` does, with the
  same configuration (``[tool.handgrad.audit]``). A FAIL or an oracle error fails the item, and so does
  a check that passed with more than 1% of its entries unchecked (``unproven``: a pass is a proof); a
  rule skipped or refused at every check is a skipped test, with the reason.
* ``--handgrad-record`` records every call of a ``custom_vjp`` or ``custom_jvp`` rule that the session's
  tests make (:mod:`handgrad.audit.record`), and checks each distinct rule, shapes and dtypes at the session's
  end, at the recorded arguments (or at draws of their shapes, where the call was under ``jit``). The results
  are a ``handgrad record`` section of the summary; a FAIL, an oracle error or an unproven check fails the
  session. Under
  pytest-xdist each worker checks what it recorded and sends the rows to the controller.
* ``--handgrad-baseline FILE`` (written by ``handgrad audit --write-baseline``) fails the audit's items and
  the recording only on what got worse than FILE.
* The ``check_vjp`` fixture is :func:`reference.check_vjp` with a seed of its own per test
  (from the test's id and ``--handgrad-seed``), named in the failure so the run can be repeated. A report
  that is no proof (more than 1% of its entries unchecked) fails the test too, unless the call says
  ``allow_unproven=True``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("handgrad", "handgrad: hand-written VJPs checked")
    group.addoption("--handgrad-audit", action="append", default=[], metavar="PACKAGE",
                    help="add one test per hand-written rule (custom_vjp, custom_jvp, jaxtyping-annotated function) "
                         "found in PACKAGE, checked as `handgrad audit` does; repeatable")
    group.addoption("--handgrad-checks", default=None, metavar="NAMES",
                    help="the checks, comma-separated: vjp, order2, transforms (default all three for "
                         "--handgrad-audit, vjp for --handgrad-record)")
    group.addoption("--handgrad-record", action="store_true",
                    help="record every custom_vjp and custom_jvp rule the tests call, and check each at the session's "
                         "end at the arguments it was called with")
    group.addoption("--handgrad-timeout", type=float, default=60.0, metavar="SECONDS",
                    help="seconds each recorded rule's check may take (default 60); one that overruns ends the "
                         "session with what was checked so far, since JAX cannot be interrupted")
    group.addoption("--handgrad-baseline", metavar="FILE",
                    help="fail only on what got worse than FILE (written by handgrad audit --write-baseline)")
    group.addoption("--handgrad-seed", type=int, default=0, metavar="N",
                    help="seed of the audit's inputs and of the check_vjp fixture (default 0)")


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: the audit's items can be selected like any other
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for target in config.getoption("handgrad_audit"):
        items.extend(AuditTarget.from_parent(session, name=f"handgrad-audit[{target}]", target=target).collect())


class AuditTarget(pytest.Collector):
    """The rules of one package, one item each."""

    def __init__(self, *, target: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.target = target

    def collect(self) -> list[pytest.Item]:
        from handgrad.audit import config as audit_config
        from handgrad.audit import discover

        found_config = audit_config.with_known(audit_config.load(None, audit_config.location(self.target)))
        found = discover(self.target, found_config.include, found_config.exclude)
        return [AuditItem.from_parent(self, name=rule.name, rule=rule, entry=found_config.for_rule(rule.name))
                for rule in found.rules]


class AuditItem(pytest.Item):
    """One rule: its three checks, each on three draws."""

    def __init__(self, *, rule: Any, entry: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.rule, self.entry = rule, entry
        self.rows: list = []

    def runtest(self) -> None:
        from handgrad.audit.checks import run_check, select

        seed = self.config.getoption("handgrad_seed")
        checks = select(self.config.getoption("handgrad_checks") or "vjp,order2,transforms")
        self.rows = [run_check(self.rule, check, self.entry, seed) for check in checks]
        for row in self.rows:
            self.add_report_section("call", row.check, f"{row.status}: {row.detail}\ninputs {row.inputs}")
        if _failing(self.config, self.rows):
            raise AuditFailure(self.rows)
        if all(r.status in ("skipped", "refused") for r in self.rows):
            pytest.skip(f"{self.rows[0].status}: {self.rows[0].detail}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, AuditFailure):
            return "\n".join(f"{r.check}: {r.status}: {r.detail}\n    inputs {r.inputs}" for r in excinfo.value.rows)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[str, int | None, str]:
        return self.rule.name.partition(":")[0], None, f"handgrad audit {self.rule.name}"


def _failing(config: pytest.Config, rows: list) -> list:
    """The rows that fail the run: a FAIL, an oracle error, an unproven pass or a check past its time limit, or with
    a baseline what got worse than it."""
    from handgrad.audit.checks import FAILING, TIMEOUT, UNPROVEN

    if _BASELINE in config.stash:
        return config.stash[_BASELINE].worse(rows)
    return [r for r in rows if r.status in FAILING or r.status in (UNPROVEN, TIMEOUT)]


_BASELINE = pytest.StashKey[Any]()
_RECORDER = pytest.StashKey[Any]()
_RECORDED = pytest.StashKey[list]()  # rows: this process's, and under xdist the workers'
_RECORDER_SECONDS = pytest.StashKey[float]()


def _overrun(rows: list) -> None:
    """A recorded rule's check ran past --handgrad-timeout, and cannot be stopped: the rows so far (the overrun one
    last, a timeout) on stderr, and the session ends failed."""
    import os
    import sys

    print("\nhandgrad record: a check ran past --handgrad-timeout; the session ends here", file=sys.stderr)
    for r in rows:
        print(f"  {r.rule} [{r.check}] {r.status}: {r.detail}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(int(pytest.ExitCode.TESTS_FAILED))


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("handgrad_baseline")
    if path is not None:
        from handgrad.audit import baseline

        try:
            config.stash[_BASELINE] = baseline.load(path)
        except baseline.BaselineError as e:
            raise pytest.UsageError(f"--handgrad-baseline: {e}") from None
    if config.getoption("handgrad_record"):
        from handgrad.audit.record import Recorder

        config.stash[_RECORDED] = []
        config.stash[_RECORDER] = recorder = Recorder()
        recorder.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Checks what this process recorded; a worker sends its rows on, the controller fails the session."""
    config = session.config
    recorder = config.stash.get(_RECORDER, None)
    if recorder is None:
        return
    from handgrad.audit.checks import select
    from handgrad.audit.record import check

    recorder.stop()
    checks = select(config.getoption("handgrad_checks") or "vjp")
    rows = check(list(recorder.calls.values()), checks, config.getoption("handgrad_seed"),
                 timeout=config.getoption("handgrad_timeout"), overrun=_overrun)
    config.stash[_RECORDED].extend(rows)
    if hasattr(config, "workeroutput"):  # a pytest-xdist worker: the controller reports
        config.workeroutput["handgrad_record"] = {"rows": [r.as_json() for r in rows],
                                                  "seconds": recorder.seconds}
        return
    config.stash[_RECORDER_SECONDS] = config.stash.get(_RECORDER_SECONDS, 0.0) + recorder.seconds
    if _failing(config, config.stash[_RECORDED]) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: a worker finished; its recorded rows join the controller's."""
    from handgrad.audit.checks import Row

    sent = getattr(node, "workeroutput", {}).get("handgrad_record")
    if sent is not None:
        config = node.config
        config.stash[_RECORDED].extend(Row(**r) for r in sent["rows"])
        config.stash[_RECORDER_SECONDS] = config.stash.get(_RECORDER_SECONDS, 0.0) + sent["seconds"]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _RECORDED not in config.stash or hasattr(config, "workeroutput"):
        return
    import io

    from handgrad.audit import Discovery
    from handgrad.audit.recorded import merged
    from handgrad.audit.report import print_table

    rows = merged(config.stash[_RECORDED])
    terminalreporter.write_sep("=", "handgrad record")
    text = io.StringIO()
    modules = tuple(sorted({r.rule.partition(":")[0] for r in rows}))
    print_table(Discovery("the recorded rules", modules, (), ()), rows, sum(r.seconds for r in rows), text)
    terminalreporter.write(text.getvalue())
    terminalreporter.write_line(f"recording took {config.stash.get(_RECORDER_SECONDS, 0.0):.3f} s over the session")
    for r in _failing(config, rows):
        terminalreporter.write_line(f"FAILED handgrad-record::{r.rule} [{r.check}] {r.status}", red=True)


class AuditFailure(Exception):
    def __init__(self, rows: list):
        super().__init__(f"{sum(r.status != 'ok' for r in rows)} checks failed or unproven")
        self.rows = rows


@pytest.fixture
def check_vjp(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """:func:`reference.check_vjp`, seeded per test: ``check_vjp(fn, args, **options)``.

    The seed is a hash of the test's id plus ``--handgrad-seed``; a failure's message names it.
    """
    from reference import VJPMismatch
    from reference import check_vjp as oracle

    base = request.config.getoption("handgrad_seed")
    seed = (zlib.crc32(request.node.nodeid.encode()) + base) % 2**31

    def check(fn: Callable, args: Any, *, allow_unproven: bool = False, **options: Any) -> Any:
        options.setdefault("seed", seed)
        try:
            report = oracle(fn, args, **options)
        except VJPMismatch as e:
            e.add_note(f"check_vjp seed {options['seed']} (this test's id with --handgrad-seed {base})")
            raise
        if not report.proven and not allow_unproven:
            pytest.fail(f"check_vjp passed, but is no proof: {report.unproven_why} (check_vjp seed {options['seed']}; "
                        f"allow_unproven=True accepts it)\n{report}", pytrace=False)
        return report

    yield check
