"""The audit's configuration: ``[tool.handgrad.audit]`` in the target's pyproject.toml, or a TOML file.

.. code-block:: toml

    [tool.handgrad.audit]
    exclude = ["*:_internal_*"]        # fnmatch on module:qualname, or on the qualname alone
    timeout = 60                       # seconds a check may take

    [tool.handgrad.audit.functions."*:dropout"]
    args = ["f32[3,4]", "key", "0.5"]  # handgrad check's specs
    domain = "positive"                # or "(0, 1)", "spd", or one per argument
    expect = "scales its gradient on purpose"  # a mismatch is by design: reported, not failed
    skip = "needs a trained model"     # not audited, with this reason

A TOML file given with ``--config`` may hold the same table, or the audit table's keys at its top level.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import sys
import tomllib
from typing import Any

TOP_KEYS = {"include", "exclude", "timeout", "seed", "functions"}
FUNCTION_KEYS = {"args", "domain", "expect", "skip"}


class ConfigError(ValueError):
    """The config cannot be read or names a key it does not know: bad usage, one line."""


@dataclasses.dataclass(frozen=True)
class FunctionConfig:
    args: tuple[str, ...] | None = None
    domain: str | list[str] | None = None
    expect: str | None = None
    skip: str | None = None


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    path: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    timeout: float | None = None
    seed: int | None = None
    functions: tuple[tuple[str, FunctionConfig], ...] = ()

    def for_rule(self, name: str) -> FunctionConfig:
        """The entry whose pattern matches ``module:qualname`` or the qualname alone: the first, in file order."""
        short = name.partition(":")[2]
        for pattern, entry in self.functions:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(short, pattern):
                return entry
        return FunctionConfig()


KNOWN = os.path.join(os.path.dirname(__file__), "known.toml")  # rules of installed libraries that differ by design


def with_known(config: AuditConfig) -> AuditConfig:
    """``config`` followed by the entries of :data:`KNOWN` (the config's own match first)."""
    known = load(KNOWN, None)
    return dataclasses.replace(config, functions=config.functions + known.functions)


def load(path: str | None, near: str | None) -> AuditConfig:
    """The config in ``path``, or else in the first pyproject.toml at or above ``near`` (a file or
    directory of the target), or an empty one."""
    if path is None:
        path = _pyproject_above(near) if near else None
        if path is None:
            return AuditConfig()
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    table = document.get("tool", {}).get("handgrad", {}).get("audit")
    if table is None:
        table = {k: v for k, v in document.items() if k != "tool"} if path.endswith(".toml") and \
            os.path.basename(path) != "pyproject.toml" else {}
    return _parse(table, path)


def location(target: str) -> str | None:
    """Where a target's files are, without importing it (its config is looked for at or above there): a
    ``.py`` path itself, else the file of its top-level package, found from the current directory too."""
    import importlib.util

    if target.endswith(".py"):
        return target
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as discover() does: a package of the user's own, beside them
    try:
        spec = importlib.util.find_spec(target.split(".")[0])
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin not in (None, "built-in") else None


def _pyproject_above(near: str) -> str | None:
    here = os.path.abspath(near if os.path.isdir(near) else os.path.dirname(near))
    for _ in range(4):
        candidate = os.path.join(here, "pyproject.toml")
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    return None


def _parse(table: dict[str, Any], path: str) -> AuditConfig:
    unknown = set(table) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} in the audit table; known: {sorted(TOP_KEYS)}")
    functions = []
    for pattern, entry in (table.get("functions") or {}).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: functions.{pattern!r} must be a table, got {type(entry).__name__}")
        bad = set(entry) - FUNCTION_KEYS
        if bad:
            raise ConfigError(f"{path}: unknown key {sorted(bad)[0]!r} for {pattern!r}; known: {sorted(FUNCTION_KEYS)}")
        args = entry.get("args")
        if args is not None and not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
            raise ConfigError(f"{path}: args of {pattern!r} must be a list of specs such as \"f32[3]\", got {args!r}")
        functions.append((pattern, FunctionConfig(tuple(args) if args is not None else None, entry.get("domain"),
                                                  entry.get("expect"), entry.get("skip"))))
    timeout = table.get("timeout")
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ConfigError(f"{path}: timeout must be a positive number of seconds, got {timeout!r}")
    return AuditConfig(path, tuple(table.get("include", ())), tuple(table.get("exclude", ())), timeout,
                       table.get("seed"), tuple(functions))
