"""What the audit prints and writes: a table, JSON, and JUnit XML (one test case per rule and check)."""

from __future__ import annotations

import collections
import dataclasses
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TextIO

from handgrad.audit.checks import CHECKS, EXIT_UNPROVEN, FAILING, TIMEOUT, UNPROVEN, Row, summarise
from handgrad.audit.discover import Discovery

SHOWN_SKIPPED = 8  # names listed per skip reason; the rest are counted (all are in the JSON)
HEADER = {"vjp": "vjp", "vjp of the vjp": "order 2", "transformations": "transforms"}


def rows_by_rule(rows: Sequence[Row]) -> dict[str, dict[str, Row]]:
    """Each rule's rows by check, rules in first-seen order."""
    found: dict[str, dict[str, Row]] = collections.defaultdict(dict)
    for r in rows:
        found[r.rule][r.check] = r
    return found


def skipped_by_reason(discovery: Discovery) -> list[tuple[str, list[str]]]:
    """What discovery skipped, grouped by why (every failed import as one reason), the largest group first."""
    reasons: dict[str, list[str]] = collections.defaultdict(list)
    for s in discovery.skipped:
        reasons[s.why.split(":")[0] if s.why.startswith("import failed") else s.why].append(s.name)
    return sorted(reasons.items(), key=lambda kv: -len(kv[1]))


def print_table(discovery: Discovery, rows: Sequence[Row], seconds: float, out: TextIO) -> None:
    by_rule = rows_by_rule(rows)
    width = max([len(name) for name in by_rule] + [4])
    checks = [c for c in CHECKS if any(c in v for v in by_rule.values())]
    print(f"{'rule':<{width}}  {'kind':<10} " + " ".join(f"{HEADER[c]:<12}" for c in checks) + "   time", file=out)
    for name, found in by_rule.items():
        kind = next(iter(found.values())).kind
        cells = " ".join(f"{found[c].status if c in found else '-':<12}" for c in checks)
        print(f"{name:<{width}}  {kind:<10} {cells} {sum(r.seconds for r in found.values()):6.1f}s", file=out)
    notable = [r for r in rows if r.status != "ok"]
    if notable:
        print("\ndetails", file=out)
    said: set[tuple[str, str, str]] = set()
    for r in notable:
        if (r.rule, r.status, r.detail) in said:  # a rule skipped for one reason: said once, for every check
            continue
        same = [c for c, other in by_rule[r.rule].items() if (other.status, other.detail) == (r.status, r.detail)]
        said.add((r.rule, r.status, r.detail))
        print(f"  {r.rule} [{', '.join(same)}] {r.status}: {r.detail}", file=out)
        if r.inputs:
            print(f"      inputs {r.inputs}", file=out)
    reasons = skipped_by_reason(discovery)
    if reasons:
        print("\nnot audited", file=out)
    for why, names in reasons:
        shown = ", ".join(names[:SHOWN_SKIPPED]) + (f", … {len(names) - SHOWN_SKIPPED} more"
                                                     if len(names) > SHOWN_SKIPPED else "")
        print(f"  {len(names):4d} {why}: {shown}", file=out)
    counts = summarise(list(rows))
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"\n{len(by_rule)} rules in {len(discovery.modules)} modules: {summary or 'nothing audited'}; "
          f"{seconds:.1f}s", file=out)


def write_json(discovery: Discovery, rows: Sequence[Row], seconds: float, path: str, **meta: object) -> None:
    with open(path, "w") as f:
        json.dump({"target": discovery.target, **meta, "seconds": seconds, "modules": len(discovery.modules),
                   "summary": summarise(list(rows)), "rows": [r.as_json() for r in rows],
                   "skipped": [dataclasses.asdict(s) for s in discovery.skipped]}, f, indent=2)


def write_junit(discovery: Discovery, rows: Sequence[Row], seconds: float, path: str) -> None:
    """One ``testcase`` per (rule, check): FAIL a failure, an oracle error or timeout an error, refused or
    skipped a skip, with the detail as its message."""
    suite = ET.Element("testsuite", name=f"handgrad audit {discovery.target}", tests=str(len(rows)),
                       failures=str(sum(r.status == "FAIL" for r in rows)),
                       errors=str(sum(r.status in ("oracle error", "timeout") for r in rows)),
                       skipped=str(sum(r.status in ("refused", "skipped") for r in rows)), time=f"{seconds:.3f}")
    for r in rows:
        module, _, qualname = r.rule.partition(":")
        case = ET.SubElement(suite, "testcase", classname=module, name=f"{qualname}[{r.check}]",
                             time=f"{r.seconds:.3f}")
        tag = {"FAIL": "failure", "oracle error": "error", "timeout": "error", "refused": "skipped",
               "skipped": "skipped"}.get(r.status)
        if tag is not None:
            ET.SubElement(case, tag, message=f"{r.status}: {r.detail}"[:2000]).text = r.inputs
        elif r.status != "ok":
            ET.SubElement(case, "system-out").text = f"{r.status}: {r.detail}"
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def exit_code(rows: Sequence[Row]) -> int:
    """1 on a FAIL or an oracle error; else EXIT_UNPROVEN (3) on a check that passed unproven or ran past its time
    limit (no verdict, and no proof); else 0."""
    if any(r.status in FAILING for r in rows):
        return 1
    return EXIT_UNPROVEN if any(r.status in (UNPROVEN, TIMEOUT) for r in rows) else 0
