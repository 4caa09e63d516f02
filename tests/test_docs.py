"""The README stays short and every page's relative links lead somewhere: a moved or renamed page, or a heading
renamed under an anchor, fails here rather than in a reader's browser."""

import pathlib
import re
import tomllib

import pytest

ROOT = pathlib.Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MOST_LINES = 300  # issue 33: a README a newcomer finishes; the reference material lives in docs/

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def _prose(text):
    """The page without its code: a `[x](y)` inside a fence or a code span is code, not a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchors(page):
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces as hyphens, and a
    repeated heading numbered from -1."""
    seen, anchors = {}, set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _broken_links(page, root=ROOT):
    text, root, broken = _prose(page.read_text()), root.resolve(), []
    for target in _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:: not a file of this repository
            continue
        path, _, anchor = target.partition("#")
        if target.startswith("/"):
            broken.append(f"{target}: not relative (it resolves against the host, not this repository)")
            continue
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_file():
            where = resolved.relative_to(root) if resolved.is_relative_to(root) else resolved
            broken.append(f"{target}: no file {where}")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading of {resolved.relative_to(root)} has the anchor #{anchor}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_its_heading(page):
    assert _broken_links(page) == []


def test_a_broken_link_a_missing_anchor_and_an_absolute_path_are_each_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Its `second` heading\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md) [ok](docs/a.md#its-second-heading) [ok](#top) [ok](https://x.org/y.md)\n"
                    "`[code](not/a/link.md)`\n\n```\n[fenced](nor/this.md)\n```\n\n# Top\n\n"
                    "[gone](docs/b.md) [no anchor](docs/a.md#second) [absolute](/docs/a.md)\n")
    assert _broken_links(page, root=tmp_path) == ["docs/b.md: no file docs/b.md",
                                                  "docs/a.md#second: no heading of docs/a.md has the anchor #second",
                                                  "/docs/a.md: not relative (it resolves against the host, not this repository)"]


def test_the_readme_has_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MOST_LINES


def test_the_readme_holds_the_one_test_command_ci_runs():
    # .ci/run greps this pattern and runs the first line it finds, verbatim.
    commands = re.findall(r"^python3 -m venv .+pytest.*$", (ROOT / "README.md").read_text(), re.M)
    assert len(commands) == 1 and ".venv/bin/pytest" in commands[0], commands


def test_every_page_with_examples_is_collected_as_a_doctest():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    globs = re.findall(r"--doctest-glob=(\S+)", options["addopts"])
    collected = {path for pattern in options["testpaths"] for path in ROOT.glob(pattern)}
    with_examples = [page for page in PAGES if re.search(r"^>>> ", page.read_text(), re.M)]
    assert with_examples, "no page has an example: the pattern above is stale"
    missed = [str(page.relative_to(ROOT)) for page in with_examples
              if page not in collected or not any(page.relative_to(ROOT).match(g) for g in globs)]
    assert missed == []


def test_every_test_the_oracles_threshold_table_names_exists():
    # The table says which test pins which threshold; a test renamed or removed must not leave it pointing nowhere.
    text = (ROOT / "docs" / "oracle.md").read_text()
    rows = re.search(r"^\| threshold or decision \|.*\n((?:\|.*\n)+)", text, re.M)
    assert rows, "docs/oracle.md has no threshold table"
    named = set(re.findall(r"`(?:tests/(test_\w+)\.py::)?(test_\w+)(?:\[[^\]]*\])?`", rows.group(1)))
    defined = {(path.stem, name) for path in (ROOT / "tests").glob("test_*.py")
               for name in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M)}
    anywhere = {name for _, name in defined}  # a name without its file may be in any of them
    missing = sorted(f"tests/{module}.py::{name}" if module else name for module, name in named
                     if ((module, name) not in defined if module else name not in anywhere))
    assert len(named) > 20, named  # the pattern still reads the table
    assert missing == []
