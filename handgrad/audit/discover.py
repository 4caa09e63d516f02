"""Finding what to audit in a package, module or ``.py`` file.

A *rule* is a ``jax.custom_vjp`` or ``jax.custom_jvp`` object at module level, or a function
that leads to one through ``__wrapped__`` or its closure (``jax.jit`` of one, ``functools.wraps``
around one, pure's ``hand_written``), private or not: these are the hand-written derivatives.
Public functions with jaxtyping array annotations are audited too, since their inputs can be
built. Everything else is listed as skipped, with the reason.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import inspect
import os
import types
from collections.abc import Callable, Sequence
from typing import Any

from handgrad.audit import distributions
from handgrad.check import UsageError, import_module

TEST_PARTS = ("test", "tests", "testing", "conftest")  # module name parts that mark a test module
WRAPPED_DEPTH = 4  # __wrapped__ and closure links followed from a function to a custom rule


@dataclasses.dataclass(frozen=True)
class Rule:
    """One function to audit: ``name`` is ``module:qualname`` (``handgrad check``'s target syntax)."""

    name: str
    fn: Callable
    kind: str  # "custom_vjp", "custom_jvp", "annotated" or "distribution"
    signature_of: Callable  # the function whose signature and annotations describe the inputs
    draw: Callable[[int, int], Any] | None = None  # inputs(draw, seed), where the signature cannot say


@dataclasses.dataclass(frozen=True)
class Skipped:
    name: str
    why: str  # "private", "a test module", "no jaxtyping annotations", "import failed: …", "excluded"


@dataclasses.dataclass(frozen=True)
class Discovery:
    target: str
    modules: tuple[str, ...]
    rules: tuple[Rule, ...]
    skipped: tuple[Skipped, ...]


TargetError = UsageError  # the target cannot be imported: bad usage, one line

def discover(target: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Discovery:
    """Imports ``target`` (a dotted package or module, or a path to a ``.py`` file), walks its
    modules, and returns its rules and what was skipped. ``include``/``exclude`` are fnmatch
    patterns on ``module:qualname`` (or on the qualname alone)."""
    modules, skipped = _modules(target)
    rules: dict[int, Rule] = {}
    for module in modules:
        for attr, obj in sorted(vars(module).items()):
            if isinstance(obj, type) and _defined_in(obj, module) and distributions.is_distribution(obj):
                for rule in _distribution_rules(f"{module.__name__}:{obj.__qualname__}", obj):
                    if _wanted(rule.name, include, exclude):
                        rules[id(rule)] = rule
                continue
            if not callable(obj) or isinstance(obj, type) or not _defined_in(obj, module):
                continue
            name = f"{module.__name__}:{getattr(_home(obj), '__qualname__', attr)}"
            rule = _as_rule(name, obj, attr)
            if isinstance(rule, Skipped):
                skipped.append(rule)
                continue
            key = id(_innermost(obj))
            if key in rules or not _wanted(name, include, exclude):
                if key not in rules:
                    skipped.append(Skipped(name, "excluded"))
                continue
            rules[key] = rule
    public = {r.name.partition(":")[0] for r in rules.values() if r.kind == "annotated"}
    for key, rule in list(rules.items()):
        module, _, qualname = rule.name.partition(":")
        if qualname.startswith("_") and module in public:
            del rules[key]
            skipped.append(Skipped(rule.name, f"a private rule, audited through {module}'s public functions"))
    return Discovery(target, tuple(m.__name__ for m in modules), tuple(sorted(rules.values(), key=lambda r: r.name)),
                     tuple(sorted(skipped, key=lambda s: s.name)))


def _distribution_rules(name: str, cls: type) -> list[Rule]:
    """One rule per method of a distribution (handgrad.audit.distributions), private classes left out."""
    if cls.__name__.startswith("_") or any(p.startswith("_") for p in name.partition(":")[0].split(".")):
        return []
    names = distributions.parameters(cls)
    if not names:
        return []
    functions = {m: distributions.rule_function(cls, m, names) for m in distributions.methods(cls)}
    return [Rule(f"{name}.{m}", fn, "distribution", fn, distributions.drawer(cls, m, names))
            for m, fn in functions.items()]


def _wanted(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    def hit(patterns: Sequence[str]) -> bool:
        short = name.partition(":")[2]
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(short, p) for p in patterns)
    return (not include or hit(include)) and not hit(exclude)


def _modules(target: str) -> tuple[list[types.ModuleType], list[Skipped]]:
    root = import_module(target)
    if target.endswith(".py"):
        return [root], []
    modules, skipped = [root], []
    for name in _module_names(root.__name__, getattr(root, "__path__", [])):
        if any(part.startswith(TEST_PARTS) or part.endswith("_test") for part in name.split(".")):
            skipped.append(Skipped(name, "a test module"))
            continue
        try:
            modules.append(importlib.import_module(name))
        except Exception as e:  # an optional dependency missing, a module that needs a device: skipped, said why
            first = (str(e).splitlines() or [""])[0][:100]
            skipped.append(Skipped(name, f"import failed: {type(e).__name__}: {first}"))
    return modules, skipped


def _module_names(package: str, paths: Sequence[str]) -> list[str]:
    """Every module under a package's directories, namespace directories (no __init__.py, as optax._src) too."""
    names = []
    for root in paths:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d.isidentifier() and not d.startswith("__"))  # not __pycache__
            parts = os.path.relpath(directory, root).split(os.sep)
            prefix = ".".join([package] + [p for p in parts if p != "."])
            names += [f"{prefix}.{f[:-3]}" for f in sorted(files)
                      if f.endswith(".py") and f != "__init__.py" and f[:-3].isidentifier()]
            if directory != root:
                names.append(prefix)
    return sorted(set(names))


def _defined_in(obj: Any, module: types.ModuleType) -> bool:
    return getattr(_home(obj), "__module__", None) == module.__name__


def _home(obj: Any) -> Any:
    """What says where obj was written: itself, or for a rule object (equinox's filter_custom_vjp keeps its
    class's module) the function it wraps."""
    if _is_custom(obj):
        for attr in ("__wrapped__", "fun", "fn"):
            inner = getattr(obj, attr, None)
            if inspect.isfunction(inner):
                return inner
    return obj


def _as_rule(name: str, obj: Any, attr: str) -> Rule | Skipped:
    rule = custom_rule(obj)
    if rule is not None:
        return Rule(name, obj, _kind(rule), _signature_source(obj, rule))
    if attr.startswith("_") or any(part.startswith("_") for part in name.partition(":")[0].split(".")):
        return Skipped(name, "private")  # a private name, or a public one in a private module
    if not inspect.isfunction(obj):
        return Skipped(name, "not a function")  # an instance with __call__, a builtin
    if not _has_array_annotation(obj):
        return Skipped(name, "no jaxtyping annotations")
    return Rule(name, obj, "annotated", obj)


def _kind(rule: Any) -> str:
    return "custom_vjp" if "vjp" in type(rule).__name__ else "custom_jvp"


def _is_custom(obj: Any) -> bool:
    import jax

    return isinstance(obj, jax.custom_vjp | jax.custom_jvp) or type(obj).__name__ in (
        "filter_custom_vjp", "filter_custom_jvp")  # equinox's


def custom_rule(obj: Any, depth: int = WRAPPED_DEPTH) -> Any:
    """The custom_vjp/custom_jvp object ``obj`` is, or leads to through ``__wrapped__`` and closures."""
    if _is_custom(obj):
        return obj
    if depth == 0:
        return None
    links = [getattr(obj, "__wrapped__", None)]
    links += [c.cell_contents for c in (getattr(obj, "__closure__", None) or ()) if filled(c)]
    for link in links:
        if link is not None and link is not obj and callable(link):
            found = custom_rule(link, depth - 1)
            if found is not None:
                return found
    return None


def filled(cell: Any) -> bool:
    """Whether a closure cell holds a value (an empty one: a name not yet bound in the enclosing function)."""
    try:
        cell.cell_contents  # noqa: B018
        return True
    except ValueError:
        return False


def _innermost(obj: Any) -> Any:
    """The custom rule behind obj, or obj: two names for one rule are audited once."""
    return custom_rule(obj) or obj


def _signature_source(obj: Any, rule: Any) -> Callable:
    """The function whose parameters describe the inputs: obj itself when it has annotations, else the
    rule's primal (``custom_vjp.fun``), else obj."""
    for candidate in (obj, getattr(rule, "fun", None), getattr(rule, "fn", None), rule):
        if candidate is not None and _has_array_annotation(candidate):
            return candidate
    return getattr(rule, "fun", None) or obj


def _has_array_annotation(fn: Any) -> bool:
    from handgrad.audit.inputs import annotations_of, is_array_type

    return any(is_array_type(a) for a in annotations_of(fn).values())
