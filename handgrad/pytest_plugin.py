"""handgrad's pytest plugin: ``pytest --handgrad-audit PACKAGE`` and the ``check_vjp`` fixture.

Registered as a ``pytest11`` entry point, so it is loaded in every pytest run of an environment
where handgrad is installed. It therefore imports nothing at module level beyond pytest and the
standard library, and changes no global state: JAX, the oracle and the audit are imported only
when ``--handgrad-audit`` is given or a test asks for the fixture.

* ``--handgrad-audit PACKAGE`` (repeatable) adds one test item per rule the audit discovers in
  PACKAGE, named ``handgrad-audit::module:qualname``; the item runs ``check_vjp`` at orders 1
  and 2 and ``check_transforms`` on three draws of inputs, as ``handgrad audit`` does, with the
  same configuration (``[tool.handgrad.audit]``). A FAIL or an oracle error fails the item; a
  rule skipped or refused at every check is a skipped test, with the reason.
* The ``check_vjp`` fixture is :func:`reference.check_vjp` with a seed of its own per test
  (from the test's id and ``--handgrad-seed``), named in the failure so the run can be repeated.
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
    group.addoption("--handgrad-checks", default="vjp,order2,transforms", metavar="NAMES",
                    help="the audit's checks, comma-separated: vjp, order2, transforms (default all three)")
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
        from handgrad.audit.checks import FAILING, run_check, select

        seed = self.config.getoption("handgrad_seed")
        checks = select(self.config.getoption("handgrad_checks"))
        self.rows = [run_check(self.rule, check, self.entry, seed) for check in checks]
        for row in self.rows:
            self.add_report_section("call", row.check, f"{row.status}: {row.detail}\ninputs {row.inputs}")
        if any(r.status in FAILING for r in self.rows):
            raise AuditFailure(self.rows)
        if all(r.status in ("skipped", "refused") for r in self.rows):
            pytest.skip(f"{self.rows[0].status}: {self.rows[0].detail}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, AuditFailure):
            return "\n".join(f"{r.check}: {r.status}: {r.detail}\n    inputs {r.inputs}" for r in excinfo.value.rows)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[str, int | None, str]:
        return self.rule.name.partition(":")[0], None, f"handgrad audit {self.rule.name}"


class AuditFailure(Exception):
    def __init__(self, rows: list):
        super().__init__(f"{sum(r.status == 'FAIL' for r in rows)} checks failed")
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

    def check(fn: Callable, args: Any, **options: Any) -> Any:
        options.setdefault("seed", seed)
        try:
            return oracle(fn, args, **options)
        except VJPMismatch as e:
            e.add_note(f"check_vjp seed {options['seed']} (this test's id with --handgrad-seed {base})")
            raise

    yield check
