"""The picture of a failing check: each wrong entry of a weight gradient marked where it sits, and nothing else;
``handgrad check --plot`` and ``handgrad audit --html`` write it."""

import dataclasses
import html.parser
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handgrad.cli import main
from reference import LeafReport, Method, Mismatch, VJPMismatch, VJPReport, check_vjp
from reference.oracle import plot
from reference.oracle.compare import REPORTED

HERE = os.path.dirname(__file__)
PNG = b"\x89PNG\r\n\x1a\n"
N = 6  # W is N×N: its N·(N−1) off-diagonal entries stay within the REPORTED that check_vjp keeps


def _matmul_with(dW_of):
    """x @ W, whose backward returns ``dW_of(the right dW)`` for W."""
    @jax.custom_vjp
    def matmul(x, W):
        return x @ W

    matmul.defvjp(lambda x, W: (x @ W, (x, W)), lambda r, g: (g @ r[1].T, dW_of(r[0].T @ g)))
    return matmul


def _args(n=N):
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_normal((4, n)), jnp.float32),
            jnp.asarray(rng.standard_normal((n, n)), jnp.float32))


def _cells(mask):
    return {tuple(int(i) for i in ij) for ij in np.argwhere(mask)}


ALL = {(i, j) for i in range(N) for j in range(N)}
WRONG = [  # a planted bug in dW, and the cells it makes wrong
    ("transposed", lambda dW: dW.T, {(i, j) for i, j in ALL if i != j}),
    ("doubled", lambda dW: 2 * dW, ALL),
    ("a wrong row", lambda dW: dW.at[2].multiply(1.5), {(2, j) for j in range(N)}),
    ("a needle", lambda dW: dW.at[3, 4].multiply(1.01), {(3, 4)}),
]


@pytest.mark.parametrize("dW_of, wrong", [w[1:] for w in WRONG], ids=[w[0] for w in WRONG])
def test_the_heatmap_marks_exactly_the_wrong_cells(dW_of, wrong, tmp_path):
    with pytest.raises(VJPMismatch) as caught:
        check_vjp(_matmul_with(dW_of), _args())
    e = caught.value
    fig = e.plot(tmp_path / "dW.png")
    assert (tmp_path / "dW.png").read_bytes()[:8] == PNG
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 1 and panels[0].get_title().startswith("args[1] float32[6, 6]")  # dx is right: not drawn
    drawn = panels[0].images[0].get_array()
    assert drawn.shape == (N, N) and not np.ma.is_masked(drawn)  # nothing is NaN
    assert _cells(drawn > 1) == wrong
    assert np.all(drawn[drawn <= 1] == 0.5)  # below the colour scale: within tolerance
    leaf = next(leaf for leaf in e.report.leaves if leaf.path == "args[1]")
    np.testing.assert_array_equal(drawn > 1, plot.leaf_badness(e.problems, leaf) > 1)
    assert "within tolerance" in [t.get_text() for t in fig.legends[0].get_texts()][0]


def test_every_wrong_entry_is_drawn_past_the_mismatches_check_vjp_lists(tmp_path):
    """16×16 transposed: 240 wrong entries, of which check_vjp lists the REPORTED worst as mismatches; the
    report's per-entry figures draw all of them, and only them: the off-diagonal cells."""
    n = 16
    with pytest.raises(VJPMismatch) as caught:
        check_vjp(_matmul_with(lambda dW: dW.T), _args(n))
    assert len([p for p in caught.value.problems if p.kind == "value"]) == REPORTED
    fig = caught.value.plot(tmp_path / "dW.png")
    marked = _cells(fig.axes[0].images[0].get_array() > 1)
    assert marked == {(i, j) for i in range(n) for j in range(n) if i != j}
    assert "within tolerance" in fig.legends[0].get_texts()[0].get_text()
    assert "240 of 256 entries off" in fig.axes[0].get_title()


def test_without_per_entry_figures_past_the_records_the_rest_is_drawn_as_not_recorded(tmp_path):
    """A leaf with no per-entry figures (a report built by hand) and REPORTED mismatches listed: the entries
    without one may be off too, and are not drawn as within tolerance."""
    leaf = _leaf("args[0]", (8, 8))
    problems = [_mismatch("args[0]", k, 5.0) for k in range(REPORTED)]
    fig = VJPReport((leaf,), None, 1e-2).plot(tmp_path / "p.png", problems)
    assert len(_cells(fig.axes[0].images[0].get_array() > 1)) == REPORTED
    assert tuple(fig.axes[0].images[0].get_cmap().get_under()[:3]) != (1.0, 1.0, 1.0)  # not the colour of "within"
    assert "no record" in fig.legends[0].get_texts()[0].get_text()
    assert f"{REPORTED} recorded of 64 entries off" in fig.axes[0].get_title()


def test_entries_the_differences_could_not_check_are_drawn_as_unchecked(tmp_path):
    leaf = dataclasses.replace(_leaf("args[0]", (2, 3)), badness=np.array([0.1, np.nan, 3.0, 0.5, 1.0, np.inf],
                                                                         np.float32))
    drawn = plot.leaf_badness([], leaf)
    assert drawn.shape == (2, 3) and drawn[0, 1] == -1 and drawn[0, 2] == 3.0 and np.isinf(drawn[1, 2])
    fig = VJPReport((leaf,), None, 1e-2).plot(tmp_path / "u.png")
    assert "unchecked" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert "2 of 6 entries off" in fig.axes[0].get_title()


def _leaf(path, shape, dtype="float32"):
    return LeafReport(path, shape, dtype, Method.ENTRIES, 0.0, 0.0, 0, judged=math.prod(shape))


def _mismatch(path, index, badness, **fields):
    return Mismatch("value", path, index, 1.0, 2.0, 1e-3, badness, **fields)


def test_a_complex_leaf_counts_real_parts_first():
    leaf = _leaf("args[0]", (2, 3), "complex64")
    problems = [_mismatch("args[0]", 1, 5.0, part="imaginary"), _mismatch("args[0]", 4, 7.0, part="real"),
                Mismatch("block", "args[0]", 8, 0.0, 1.0, 1e-3, 3.0, stop=10)]  # imaginary parts of entries 2, 3
    b = plot.leaf_badness(problems, leaf)
    assert b.shape == (2, 2, 3)
    assert _cells(b > 1) == {(1, 0, 1), (0, 1, 1), (1, 0, 2), (1, 1, 0)}
    fig = plot.figure([leaf], problems, "complex")
    drawn = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(drawn.reshape(b.shape) > 1, b > 1)  # real parts' rows on top, imaginary below


def test_nan_a_wrong_cotangent_and_a_block_in_a_profile(tmp_path):
    """A leaf that is not 2-D is a profile against its flat index; NaN (badness inf) is masked, as is a whole
    leaf whose cotangent has the wrong shape."""
    vector, matrix = _leaf("args[0]", (10,)), _leaf("args[1]", (2, 2))
    problems = [_mismatch("args[0]", 7, math.inf), Mismatch("block", "args[0]", 2, 0.0, 1.0, 1e-3, 4.0, stop=5),
                Mismatch("cotangent", "args[1]", None, np.nan, np.nan, np.inf, np.inf, detail="shape (3,)"),
                Mismatch("forward", "output 0", 0, 1.0, 2.0, 1e-3, 9.0)]
    b = plot.leaf_badness(problems, vector)
    np.testing.assert_array_equal(b, [0, 0, 4, 4, 4, 0, 0, np.inf, 0, 0])
    assert np.all(np.isinf(plot.leaf_badness(problems, matrix)))
    fig = VJPReport((vector, matrix), None, 1e-3).plot(tmp_path / "p.png", problems)
    profile, heatmap = fig.axes[:2]
    assert not profile.images and profile.get_yscale() == "log"
    assert heatmap.images[0].get_array().mask.all()  # every cell NaN-coloured
    assert "1 mismatches not drawn: output 0" in fig.get_suptitle()
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG


def test_a_report_alone_draws_every_leaf_within(tmp_path):
    report = check_vjp(jnp.tanh, (jnp.ones((3, 4)),))
    fig = report.plot(tmp_path / "ok.png")
    drawn = fig.axes[0].images[0].get_array()
    assert drawn.shape == (3, 4) and np.all(drawn == 0.5)
    assert "within tolerance" in fig.axes[0].get_title()


def test_without_matplotlib_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(plot.NeedsMatplotlib, match=r"pip install 'handgrad\[train\]'") as caught:
        VJPReport((_leaf("args[0]", (2,)),), None, 1e-3).plot(tmp_path / "p.png")
    assert isinstance(caught.value, ImportError)


@pytest.mark.subprocess
def test_importing_reference_imports_no_matplotlib():
    code = "import reference, sys; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(HERE))
    assert run.returncode == 0, run.stderr[-2000:]


USER_FILE = '''
import jax

@jax.custom_vjp
def matmul(x, W):
    return x @ W

matmul.defvjp(lambda x, W: (x @ W, (x, W)), lambda r, g: (g @ r[1].T, (r[0].T @ g).T))  # dW transposed
'''


def test_check_plot_writes_the_picture_of_a_fail(tmp_path, capsys):
    (tmp_path / "ops.py").write_text(USER_FILE)
    picture = tmp_path / "where.png"
    assert main(["check", f"{tmp_path / 'ops.py'}:matmul", "f32[4,6]", "f32[6,6]", "--plot", str(picture)]) == 1
    assert f"picture: {picture}" in capsys.readouterr().out
    assert picture.read_bytes()[:8] == PNG


# ------------------------------------------------------------------ handgrad audit --html
@pytest.fixture(scope="module")
def audit_page(tmp_path_factory):
    """One ``handgrad audit auditpkg --html`` for the tests below: its directory, exit code and JSON rows."""
    where = tmp_path_factory.mktemp("audit")
    shutil.copytree(os.path.join(HERE, "auditpkg"), where / "auditpkg")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(where))
        mp.chdir(where)
        for name in [m for m in sys.modules if m == "auditpkg" or m.startswith("auditpkg.")]:
            mp.delitem(sys.modules, name)
        code = main(["audit", "auditpkg", "--checks", "vjp", "--html", "page", "--json", "rows.json"])
    return where / "page", code, json.loads((where / "rows.json").read_text())["rows"]


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images, self.sections = set(), [], [], {}
        self._section = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self._section = a["id"]
            self.sections[a["id"]] = (a.get("class", ""), [])
        if tag == "a":
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a["src"])
            if self._section:
                self.sections[self._section][1].append(a["src"])

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None


def test_audit_html_links_every_fail_to_its_picture(audit_page):
    page, code, rows = audit_page
    assert code == 1
    assert {(r["rule"], r["status"]) for r in rows} == {("auditpkg.rules:project", "ok"),
                                                       ("auditpkg.rules:softplus", "ok"),
                                                       ("auditpkg.rules:swish", "FAIL")}
    assert all("picture" not in r for r in rows)  # the records stay out of the JSON
    parsed = _Page()
    parsed.feed((page / "index.html").read_text(encoding="utf-8"))
    parsed.close()
    for link in parsed.links + parsed.images:
        if link.startswith("#"):
            assert link[1:] in parsed.ids, link
        else:
            assert "://" not in link and not link.startswith("/") and (page / link).is_file(), link
    fails = [images for cls, images in parsed.sections.values() if cls == "s-FAIL"]
    assert len(fails) == 1 and all(len(images) == 1 for images in fails)
    assert all((page / src).read_bytes()[:8] == PNG for src in parsed.images)
    text = (page / "index.html").read_text(encoding="utf-8")
    assert "auditpkg.rules:swish</code> [vjp] FAIL" in text and "args[0] flat index" in text
