"""``handgrad check MODULE:FUNCTION SPEC...``: audit any importable function's VJP from the shell.

A spec says what one positional argument is:

* ``f32[4,5]``, ``f64[3]``, ``bf16[8]``, ``c64[3]``: a random normal array of that dtype and shape
  (``f32[]`` is a scalar); ``i32[4]<10``: integers in [0, 10) (labels below 10); ``bool[4]``;
* ``key``: a ``jax.random`` key;
* ``1.5``: a Python float (``3`` a Python int);
* ``@data.npz``: every array in the file, in its order, one argument each; ``@data.npz:X`` just X;
  ``@x.npy``: that array.

MODULE is a dotted module (importable from the current directory) or a path to a ``.py`` file.
With ``--plot PATH`` a failing check_vjp also draws where the VJP is off (:mod:`reference.oracle.plot`) to
PATH, a PNG; a failing order 2 to PATH with ``-order2`` before its extension.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import sys
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from reference import VJPMismatch

_DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64", "c64": "complex64",
           "c128": "complex128", "i8": "int8", "i32": "int32", "i64": "int64", "u8": "uint8", "u32": "uint32",
           "bool": "bool"}
_ARRAY = re.compile(r"^(?P<dtype>[a-z]+\d*)\[(?P<shape>[\d,\s]*)\](?:<(?P<high>\d+))?$")


class UsageError(ValueError):
    """Bad usage: the message is one line."""


def import_module(target: str, said_as: str | None = None) -> types.ModuleType:
    """A dotted module (found from the current directory too) or a ``.py`` file, imported; UsageError says why
    not, naming ``said_as`` (what the user wrote) or the target."""
    said = said_as or target
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise UsageError(f"no such file: {target}")
        name = os.path.splitext(os.path.basename(target))[0]
        spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look a module up by its name
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise UsageError(f"importing {target} failed: {type(e).__name__}: {e}") from None
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module of the user's own, beside them
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise UsageError(f"no module named {e.name!r} (from {said!r})") from None
    except Exception as e:
        raise UsageError(f"importing {target} failed: {type(e).__name__}: {e}") from None


def load_function(target: str) -> tuple[Callable, str]:
    """``module:function`` (dotted, or a ``.py`` path) to the function, and a name for it."""
    module_name, sep, attribute = target.rpartition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"expected MODULE:FUNCTION, got {target!r}")
    module = import_module(module_name, said_as=target)
    fn: Any = module
    for part in attribute.split("."):
        if not hasattr(fn, part):
            raise UsageError(f"{module_name} has no attribute {attribute!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise UsageError(f"{target} is a {type(fn).__name__}, not a function")
    return fn, attribute


def parse_args(specs: list[str], rng: np.random.Generator) -> list[Any]:
    """The positional arguments the specs describe (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    args: list[Any] = []
    for spec in specs:
        spec = spec.strip()
        if spec == "key":
            args.append(jax.random.key(int(rng.integers(2**31))))
        elif spec.startswith("@"):
            args.extend(_from_file(spec[1:]))
        elif re.fullmatch(r"[-+]?\d+", spec):
            args.append(int(spec))
        elif re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+", spec):
            args.append(float(spec))
        elif match := _ARRAY.match(spec):
            dtype = _DTYPES.get(match["dtype"])
            if dtype is None:
                raise UsageError(f"unknown dtype {match['dtype']!r} in {spec!r}; use one of {', '.join(_DTYPES)}")
            shape = tuple(int(n) for n in match["shape"].replace(" ", "").split(",") if n)
            high = int(match["high"]) if match["high"] else None
            args.append(_draw(jnp.dtype(dtype), shape, high, rng, spec))
        else:
            raise UsageError(f"cannot parse argument spec {spec!r}; expected e.g. f32[4,5], i32[4]<10, key, 1.5 "
                             f"or @data.npz")
    return args


def _draw(dtype: Any, shape: tuple[int, ...], high: int | None, rng: np.random.Generator, spec: str) -> Any:
    import jax

    if high is not None and dtype.kind not in "iu":
        raise UsageError(f"{spec!r}: a bound <N is for integer arrays")
    if dtype.kind in "iu":
        values = rng.integers(0, high if high is not None else 10, shape)
    elif dtype.kind == "b":
        values = rng.random(shape) < 0.5
    elif dtype.kind == "c":
        values = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    else:
        values = rng.standard_normal(shape)
    return jax.device_put(np.asarray(values).astype(dtype))


def _from_file(source: str) -> list[Any]:
    import jax

    path, _, name = source.partition(":")
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if isinstance(loaded, np.ndarray):
        return [jax.device_put(loaded)]
    with loaded:
        if name and name not in loaded.files:
            raise UsageError(f"{path} holds {loaded.files}; no array {name!r}")
        return [jax.device_put(loaded[n]) for n in ([name] if name else loaded.files)]


@dataclasses.dataclass(frozen=True)
class CheckRow:
    check: str  # "vjp", "vjp of the vjp", "transformations"
    status: str  # "ok", "FAIL" or "UNPROVEN" (passed, with more than 1% of the entries unchecked)
    detail: str
    seconds: float
    picture: str | None = None  # the PNG of a FAIL drawn with --plot


def run(fn: Callable, name: str, args: list[Any], *, order: int = 1, transforms: bool = False,
        seed: int = 0, plot: str | None = None) -> list[CheckRow]:
    """The checks of ``handgrad check``: check_vjp at each order up to ``order``, then check_transforms; a
    failing check_vjp drawn to ``plot`` (see the module docstring)."""
    from reference import TransformMismatch, VJPMismatch, check_transforms, check_vjp

    rows = []
    for k in range(1, order + 1):
        start = time.perf_counter()
        picture = None
        try:
            report = check_vjp(fn, tuple(args), seed=seed, order=k)
            detail = (f"{len(report.leaves)} leaves, differences in {report.precision}; max rel err "
                      f"{report.max_rel_err:.1e}, {report.kinks} kinks, {report.unchecked} unchecked")
            status = "ok" if report.proven else "UNPROVEN"  # a pass is a proof: most entries checked
            if not report.proven:
                detail = f"not a proof: {report.unproven_why}"
        except VJPMismatch as e:
            status = "FAIL"
            detail = "\n".join([f"{len(e.problems)} mismatches ({', '.join(sorted(e.kinds))}), differences in "
                                 f"{e.report.precision}", *(str(p) for p in e.problems[:3])])
            if plot is not None:
                picture, why_not = _picture(e, plot if k == 1 else "-order2".join(os.path.splitext(plot)))
                detail += why_not
        rows.append(CheckRow("vjp" if k == 1 else "vjp of the vjp", status, detail, time.perf_counter() - start,
                             picture))
    if transforms:
        start = time.perf_counter()
        try:
            t = check_transforms(fn, tuple(args), seed=seed)
            status, detail = "ok", ", ".join(f"{n} {d:.1e}" for n, d in t.max_abs_diff.items())
        except TransformMismatch as e:
            status, detail = "FAIL", "\n".join([f"differs from eager under {', '.join(e.transforms)}",
                                                 *(str(p) for p in e.problems[:2])])
        rows.append(CheckRow("transformations", status, detail, time.perf_counter() - start))
    return rows


def exit_code(rows: list[CheckRow]) -> int:
    """1 on a FAIL; else 3 (handgrad.audit.checks.EXIT_UNPROVEN) on a check that passed unproven; else 0."""
    from handgrad.audit.checks import EXIT_UNPROVEN

    if any(r.status == "FAIL" for r in rows):
        return 1
    return EXIT_UNPROVEN if any(r.status == "UNPROVEN" for r in rows) else 0


def _picture(mismatch: VJPMismatch, path: str) -> tuple[str | None, str]:
    """The mismatch drawn to ``path``: (the path, "") or (None, a line that says why not)."""
    from reference.oracle.plot import NeedsMatplotlib

    try:
        mismatch.plot(path)
    except NeedsMatplotlib as e:
        return None, f"\nno picture: {e}"
    except OSError as e:
        return None, f"\nno picture: cannot write {path}: {e.strerror or e}"
    return path, ""


def print_rows(name: str, specs: list[str], rows: list[CheckRow]) -> None:
    print(f"handgrad check {name}({', '.join(specs)})")
    print(f"{'check':<16} {'status':<6} {'time':>7}  detail")
    for r in rows:
        first, *rest = r.detail.splitlines() or [""]
        print(f"{r.check:<16} {r.status:<6} {r.seconds:6.2f}s  {first}")
        for line in rest:
            print(f"{'':<33}{line}")
        if r.picture:
            print(f"{'':<33}picture: {r.picture}")


def write_json(name: str, specs: list[str], rows: list[CheckRow], path: str) -> None:
    import jax

    with open(path, "w") as f:
        json.dump({"function": name, "args": specs, "jax": jax.__version__,
                   "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)
