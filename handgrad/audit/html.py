"""``handgrad audit --html DIR``: a static page, ``DIR/index.html``, to read an audit by.

A table of every rule's status per check; below it each FAIL with its message and a picture of where its
VJP is off (a PNG beside the page, :mod:`reference.oracle.plot`), then every other outcome that is not ok,
then what discovery skipped. Every text is escaped; the page links only to its own PNGs, by relative paths.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence

from handgrad.audit.checks import CHECKS, Row, summarise
from handgrad.audit.discover import Discovery
from handgrad.audit.report import HEADER, rows_by_rule, skipped_by_reason

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1180px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
th { background: #f2f2f2; }
td.time { text-align: right; font-variant-numeric: tabular-nums; }
.s-ok { background: #e3f4e1; } .s-FAIL { background: #f8d0cc; font-weight: bold; }
.s-oracle-error, .s-timeout { background: #fde2b8; } .s-expected, .s-note { background: #dde9f7; }
.s-refused, .s-skipped { background: #eeeeee; color: #555; }
section { border-left: 4px solid #ccc; padding: 0.1em 0 0.4em 1em; margin: 1.2em 0; }
section.s-FAIL { border-color: #d7301f; background: none; font-weight: normal; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 0.5em; margin: 0.4em 0; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
code { font-size: 95%; }
"""


def write(discovery: Discovery, rows: Sequence[Row], seconds: float, directory: str, **meta: object) -> str:
    """Writes ``directory/index.html`` (and a PNG for each row with a picture); returns the page's path.
    ``meta`` (jax's version, the seed) is shown under the title."""
    os.makedirs(directory, exist_ok=True)
    by_rule = rows_by_rule(rows)
    notable = [r for r in rows if r.status != "ok"]
    anchors = {(r.rule, r.check): f"row-{n}" for n, r in enumerate(notable)}
    checks = [c for c in CHECKS if any(c in found for found in by_rule.values())]
    counts = ", ".join(f"{n} {s}" for s, n in summarise(list(rows)).items() if n) or "nothing audited"
    said = ", ".join(f"{k} {v}" for k, v in meta.items())
    out = [f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
           f"<title>handgrad audit {_e(discovery.target)}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
           f"<h1>handgrad audit <code>{_e(discovery.target)}</code></h1>",
           f"<p>{len(by_rule)} rules in {len(discovery.modules)} modules: <strong>{_e(counts)}</strong>; "
           f"{seconds:.1f} s{'; ' + _e(said) if said else ''}</p>",
           "<table>\n<thead><tr><th>rule</th><th>kind</th>"
           + "".join(f"<th>{_e(HEADER[c])}</th>" for c in checks) + "<th>time</th></tr></thead>\n<tbody>"]
    for name, found in by_rule.items():
        cells = []
        for c in checks:
            r = found.get(c)
            text = _e(r.status) if r else "-"
            if r is not None and (r.rule, r.check) in anchors:
                text = f"<a href=\"#{anchors[(r.rule, r.check)]}\">{text}</a>"
            cells.append(f"<td class=\"{_status_class(r.status) if r else ''}\">{text}</td>")
        out.append(f"<tr><td><code>{_e(name)}</code></td><td>{_e(next(iter(found.values())).kind)}</td>"
                   + "".join(cells) + f"<td class=\"time\">{sum(r.seconds for r in found.values()):.1f} s</td></tr>")
    out.append("</tbody>\n</table>")
    failed = [r for r in notable if r.status == "FAIL"]
    for heading, part in (("Failures", failed), ("Other outcomes", [r for r in notable if r.status != "FAIL"])):
        if part:
            out.append(f"<h2>{heading}</h2>")
            out += [_section(r, anchors[(r.rule, r.check)], directory) for r in part]
    reasons = skipped_by_reason(discovery)
    if reasons:
        out.append("<h2>Not audited</h2>\n<ul>")
        out += [f"<li>{len(names)} {_e(why)}: " + ", ".join(f"<code>{_e(n)}</code>" for n in names) + "</li>"
                for why, names in reasons]
        out.append("</ul>")
    out.append("</body>\n</html>\n")
    page = os.path.join(directory, "index.html")
    with open(page, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    return page


def _section(r: Row, anchor: str, directory: str) -> str:
    """One outcome: its rule, check and status, its message, its inputs, and its picture where it has one."""
    parts = [f"<section id=\"{anchor}\" class=\"{_status_class(r.status)}\">",
             f"<h3><code>{_e(r.rule)}</code> [{_e(r.check)}] {_e(r.status)}</h3>", f"<pre>{_e(r.detail)}</pre>"]
    if r.inputs:
        parts.append(f"<p>inputs: <code>{_e(r.inputs)}</code></p>")
    if r.picture is not None:
        parts.append(_picture(r, f"{anchor}-{_slug(r.rule)}-{_slug(r.check)}.png", directory))
    elif r.status == "FAIL":
        parts.append("<p>no picture: only a check_vjp mismatch found in this run is drawn (not check_transforms', "
                     "nor one read back from a --record run)</p>")
    return "\n".join(parts + ["</section>"])


def _picture(r: Row, name: str, directory: str) -> str:
    """The row's picture written to ``directory/name``, as an <img> linked to the file; or why there is none."""
    from reference.oracle.plot import NeedsMatplotlib

    assert r.picture is not None
    try:
        r.picture.report.plot(os.path.join(directory, name), r.picture.problems,
                              title=f"{r.rule} [{r.check}]: error over tolerance, per entry")
    except NeedsMatplotlib as e:
        return f"<p>no picture: {_e(str(e))}</p>"
    src = _e(name)  # a slug: nothing to quote in a URL
    return (f"<p><a href=\"{src}\"><img src=\"{src}\" alt=\"{_e(r.rule)} [{_e(r.check)}]: where the VJP is off, "
            f"in tolerances\"></a></p>")


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.") or "rule"


def _status_class(status: str) -> str:
    return "s-" + _slug(status)
