"""One rule, one check, three draws: what the audit runs for each row, in whichever process runs it.

Every outcome is a status; no exception escapes. An exception from inside the oracle (anything
but a mismatch or a refusal) is an ``oracle error``, reported with where it was raised, so that
it can be fixed in the oracle.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from handgrad.audit.config import FunctionConfig
from handgrad.audit.discover import Rule
from handgrad.audit.inputs import (
    DRAWS,
    STRUCTURED,
    Inputs,
    NoInputs,
    from_annotations,
    from_specs,
    guessed,
    in_domain,
)

if TYPE_CHECKING:
    from reference import Mismatch, VJPReport

CHECKS = ("vjp", "vjp of the vjp", "transformations")
SHORT = {"vjp": "vjp", "order2": "vjp of the vjp", "transforms": "transformations"}  # as --checks names them
# The order rows are summarised in: the first status any draw has, wins.
PRIORITY = ("oracle error", "FAIL", "timeout", "unproven", "expected", "note", "ok", "refused", "skipped")
FAILING = ("FAIL", "oracle error")  # a row with one of these makes the audit exit 1
# A check_vjp that passed with more than reference.oracle.report.PROVEN of its entries unchecked: no failure, and
# no pass either (a pass is a proof). Without a failing row, such a row makes handgrad's commands exit 3.
UNPROVEN = "unproven"
TIMEOUT = "timeout"  # a check that ran past its time limit: no verdict, so no proof (exit 3 as unproven)
EXIT_UNPROVEN = 3


class Picture(NamedTuple):
    """What a picture of a check_vjp mismatch needs: ``report.plot(path, problems)`` draws it."""

    report: VJPReport
    problems: tuple[Mismatch, ...]


@dataclasses.dataclass(frozen=True)
class Row:
    """The outcome of one check of one rule over its draws."""

    rule: str
    kind: str  # custom_vjp, custom_jvp, annotated
    check: str  # one of CHECKS
    status: str  # one of PRIORITY
    detail: str  # one line for ok; for the others, what and where
    inputs: str  # "annotations: f32[3,4], i32[3]<2" or "config: …" or "guessed: …"
    seconds: float
    # A check_vjp mismatch (FAIL, expected), of the draw the detail is from; it stays in the processes of one
    # run: as_json leaves it out, so a row read back from JSON (--record) has none.
    picture: Picture | None = dataclasses.field(default=None, compare=False, repr=False)

    def as_json(self) -> dict[str, Any]:
        """The fields JSON holds: all but the picture."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "picture"}


def select(text: str) -> tuple[str, ...]:
    """``"vjp,order2,transforms"`` to check names; ValueError names an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHORT]
    if unknown or not names:
        raise ValueError(f"unknown check {unknown[0] if unknown else text!r}; use {', '.join(SHORT)}")
    return tuple(SHORT[n] for n in names)


def run_check(rule: Rule, check: str, entry: FunctionConfig, seed: int, given: Sequence[Inputs] = ()) -> Row:
    """``check`` on ``rule`` at each draw (or at each of the ``given`` inputs), summarised."""
    start = time.perf_counter()
    if entry.skip:
        return Row(rule.name, rule.kind, check, "skipped", entry.skip, "", 0.0)
    outcomes: list[tuple[str, str, Picture | None]] = []
    described = ""
    for draw in range(len(given) or DRAWS):
        try:
            inputs = given[draw] if given else _inputs(rule, entry, draw, seed)
        except NoInputs as e:
            outcomes.append(("skipped", e.why, None))
            break
        described = f"{inputs.source}: {inputs.described}"
        outcomes.append(_one(rule, check, inputs, entry, seed, draw))
        if outcomes[-1][0] in ("skipped", "oracle error"):
            break
    status = min((s for s, _, _ in outcomes), key=PRIORITY.index)
    chosen = [(d, p) for s, d, p in outcomes if s == status]
    detail = chosen[0][0] + (f" (in {len(chosen)} of {len(outcomes)} draws)" if len(outcomes) > 1 else "")
    return Row(rule.name, rule.kind, check, status, detail, described, time.perf_counter() - start, chosen[0][1])


def _inputs(rule: Rule, entry: FunctionConfig, draw: int, seed: int) -> Inputs:
    if entry.args is not None:
        inputs = from_specs(list(entry.args), draw, seed)
    elif rule.draw is not None:
        inputs = rule.draw(draw, seed)
    else:
        try:
            inputs = from_annotations(rule.signature_of, draw, seed)
        except NoInputs as e:
            if rule.kind == "annotated":
                raise
            try:
                inputs = guessed(rule.signature_of, draw, seed)
            except NoInputs:
                raise e from None
    return dataclasses.replace(inputs, args=in_domain(inputs.args, entry.domain))


def _one(rule: Rule, check: str, inputs: Inputs, entry: FunctionConfig, seed: int, draw: int
         ) -> tuple[str, str, Picture | None]:
    import jax

    from reference import CheckRefused, TransformMismatch, VJPMismatch, check_transforms, check_vjp
    from reference.oracle.report import said

    fn, args = _settings_bound(rule, inputs.args)
    try:
        jax.eval_shape(fn, *args)
    except Exception as e:
        fix = "; give specs in the audit config" if inputs.source != "config" else ""
        return "skipped", f"{_short(rule.name)}({inputs.described}) raised {said(e)}{fix}", None
    try:
        if check == "transformations":
            t = check_transforms(fn, args, seed=seed + draw)
            within = sum(t.rounding.values())
            skipped = f"; {t.skipped}" if t.skipped else ""
            rounded = f"; {within} entries differ within rounding" if within else ""
            return "ok", f"jit, vmap, scan, checkpoint, grad of jit agree with eager{skipped}{rounded}", None
        report = check_vjp(fn, args, seed=seed + draw, order=1 if check == "vjp" else 2,
                           domain=_directions(entry.domain, inputs.args))
    except (VJPMismatch, TransformMismatch) as e:
        first = e.problems[0]
        what = f"{len(e.problems)} mismatches; {first}" if isinstance(e, VJPMismatch) else \
            f"differs from eager under {', '.join(e.transforms)}; {first}"
        picture = Picture(e.report, tuple(e.problems)) if isinstance(e, VJPMismatch) else None
        if entry.expect or inputs.expect:
            return "expected", f"{entry.expect or inputs.expect}: {what}", picture
        if check == "vjp" and rule.kind == "custom_jvp":
            declared = _declared(fn, args, what, picture, seed + draw, draw)
            if declared is not None:
                return declared
        return "FAIL", what + f" [draw {draw}]", picture
    except CheckRefused as e:
        hint = "; the inputs were not configured: a domain in the audit config may fit fn" \
            if inputs.source != "config" and entry.domain is None and "nothing could be checked" in e.reason else ""
        return "refused", e.reason + hint, None
    except Exception as e:  # the oracle's own failure: reported with where, never raised
        return "oracle error", f"{said(e)} at {where(e)}", None
    if not report.proven:
        return UNPROVEN, report.unproven_why + f" [draw {draw}]", None
    if report.notes:
        note = report.notes[0]
        return "note", f"{len(report.notes)} precision notes; {note}", None
    unchecked = sum(leaf.unchecked for leaf in report.leaves)
    extra = f", {unchecked} entries unchecked" + (f" ({report.unchecked_why})" if report.unchecked_why else "") \
        if unchecked else ""
    return "ok", f"max rel err {report.max_rel_err:.1e}, {report.kinks} kinks{extra}", None


def _declared(fn: Callable, args: tuple, what: str, picture: Picture | None, seed: int, draw: int
              ) -> tuple[str, str, Picture | None] | None:
    """A custom_jvp rule that gives some outputs no tangent at all (optimistix's root finders: the solver's state
    beside the root, a symbolic zero by design) fails wherever those outputs move. Its other outputs are checked
    alone: right, the row is ``expected`` and says which outputs; wrong, it fails on them. None where the rule
    declares no such output, or declares every one (nothing else to check)."""
    from reference import CheckRefused, VJPMismatch, check_vjp
    from reference.oracle import parts

    reached = parts.tangent_reached(fn, args)
    constant = [i for i, r in enumerate(reached) if not r]
    others = [i for i, r in enumerate(reached) if r]
    if not constant or not others:
        return None
    try:
        report = check_vjp(parts.restricted(fn, others), args, seed=seed)
    except VJPMismatch as e:
        return "FAIL", f"{len(e.problems)} mismatches in outputs {others}; {e.problems[0]} [draw {draw}]", \
            Picture(e.report, tuple(e.problems))
    except CheckRefused:
        return None
    if not report.proven:
        return UNPROVEN, f"outputs {others}: {report.unproven_why} [draw {draw}]", None
    return "expected", (f"outputs {constant} have no tangent by the rule's own declaration (a symbolic zero, as for "
                        f"a solver's state) and move: {what}; outputs {others} check out"), picture


def _directions(domain: str | list[str] | None, args: tuple) -> list[str | None] | None:
    """check_vjp's ``domain``: the structured domains (``spd``, ``symmetric``, ``simplex``) of the array
    arguments (``args`` as the config lists them, settings too, which :func:`_settings_bound` binds), whose VJP
    is checked along them; None where there are none."""
    domains = domain if isinstance(domain, list) else [domain] * len(args)
    found = [d if d in STRUCTURED else None for d, a in zip(domains, args, strict=True)
             if not isinstance(a, bool | int | float | complex)]
    return found if any(found) else None


def _settings_bound(rule: Rule, args: tuple) -> tuple[Callable, tuple]:
    """fn of its array arguments, with its Python numbers (a rate, a scale: settings, which a rule may need
    concrete) bound as given. A scalar to differentiate is written ``f32[]``."""
    settings = {i: a for i, a in enumerate(args) if isinstance(a, bool | int | float | complex)}
    arrays = tuple(a for i, a in enumerate(args) if i not in settings)

    def fn(*xs: Any) -> Any:
        given = iter(xs)
        return rule.fn(*[settings[i] if i in settings else next(given) for i in range(len(args))])

    fn.__name__ = _short(rule.name)
    return fn, arrays


def where(e: BaseException) -> str:
    """The innermost frame of the traceback in handgrad's own libraries, else the innermost one."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if any(f"{os.sep}{p}{os.sep}" in f.filename for p in ("reference", "handgrad"))]
    if not frames:
        return "?"
    place = [f"{os.sep.join(f.filename.split(os.sep)[-3:])}:{f.lineno}" for f in (ours or frames)[-1:] + frames[-1:]]
    return place[0] if place[0] == place[1] else f"{place[0]} (raised in {place[1]})"


def _short(name: str) -> str:
    return name.partition(":")[2] or name


def summarise(rows: list[Row]) -> dict[str, Any]:
    """Counts per status over rules: a rule's status is the worst of its checks."""
    by_rule: dict[str, list[Row]] = {}
    for r in rows:
        by_rule.setdefault(r.rule, []).append(r)
    counts = {s: 0 for s in PRIORITY}
    for checks in by_rule.values():
        counts[min((r.status for r in checks), key=PRIORITY.index)] += 1
    return counts
