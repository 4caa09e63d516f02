"""A stored audit to compare against, as mypy's and ruff's baselines let a checker into an existing CI.

``--write-baseline FILE`` stores each (rule, check)'s status. ``--baseline FILE`` then makes the audit (or
the pytest plugin) fail only on what got worse: a FAIL, an oracle error or a timeout that the baseline
does not have for that rule and check. Everything else, a rule fixed included, passes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from handgrad.audit.checks import Row

WORSE = ("FAIL", "oracle error", "timeout")  # outcomes that fail a run when the baseline lacks them
VERSION = 1


class BaselineError(Exception):
    """The baseline file cannot be read: missing, not JSON, or not a handgrad baseline."""

    def __init__(self, path: str, why: str):
        super().__init__(f"baseline {path}: {why}")
        self.path, self.why = path, why


@dataclasses.dataclass(frozen=True)
class Baseline:
    statuses: dict[tuple[str, str], str]  # (rule, check) -> status

    def worse(self, rows: Sequence[Row]) -> list[Row]:
        """The rows whose outcome is in WORSE and is not what the baseline has for their rule and check."""
        return [r for r in rows if r.status in WORSE and self.statuses.get((r.rule, r.check)) != r.status]


def write(rows: Sequence[Row], path: str) -> None:
    entries = [{"rule": r.rule, "check": r.check, "status": r.status} for r in rows]
    with open(path, "w") as f:
        json.dump({"handgrad_baseline": VERSION, "rows": entries}, f, indent=1)
        f.write("\n")


def load(path: str) -> Baseline:
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise BaselineError(path, e.strerror or str(e)) from None
    except json.JSONDecodeError as e:
        raise BaselineError(path, f"not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("handgrad_baseline") != VERSION or not isinstance(data.get("rows"), list):
        raise BaselineError(path, f"not a handgrad baseline (written by --write-baseline, version {VERSION})")
    try:
        return Baseline({(e["rule"], e["check"]): e["status"] for e in data["rows"]})
    except (KeyError, TypeError):
        raise BaselineError(path, "a row lacks rule, check or status") from None
