"""A picture of where a VJP is wrong: each leaf's error over its tolerance, entry by entry (or block by block).

A 2-D leaf is a heatmap over its own shape, so a transposed or doubled weight gradient, a wrong row or a
single wrong entry shows as a pattern; any other leaf is a profile against its flat index. The colour is
how many tolerances an entry is off (``Mismatch.badness``) on a log scale from 1; an entry with no mismatch
is within its tolerance, and NaN or inf has a colour of its own.

Each leaf of a report carries every entry's error over its tolerance against the differences
(``LeafReport.badness``): all of them are drawn, and entries the differences could not check are drawn as
"unchecked". Mismatches of other kinds (against the float64 rule, the reference) are folded in from
``problems``, of which check_vjp keeps the ``REPORTED`` worst of each kind: where such a kind reached that many,
or a leaf has no per-entry figures, an entry without a mismatch may be off too, and is drawn as "not recorded",
never as "within". A complex leaf counts its real parts first, then its imaginary parts, as check_vjp's flat indices
do: its heatmap has the real parts on top and the imaginary parts below.

matplotlib (the ``train`` extra) is imported when a picture is drawn, never with :mod:`reference`; the
figure is a ``matplotlib.figure.Figure`` on the Agg canvas, so pyplot's global state is left alone.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reference.oracle.compare import REPORTED
from reference.oracle.report import LeafReport, Mismatch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure

WITHIN = "#ffffff"  # no mismatch: within tolerance
UNRECORDED = "#d0d0d0"  # no mismatch, but the kind's record is full: within, or off and not among the worst kept
NOT_FINITE = "#2c7bb6"  # NaN or inf (badness inf): a hue the colour scale of finite errors never reaches
UNCHECKED = "#7f7f7f"  # the differences could not check it: no verdict either way
RINGED = 12  # off entries of a leaf at most that each get a ring: a needle in a large heatmap stays visible
BARS = 4096  # off entries of a profile at most drawn as bars of their own colour; more, as one filled outline
TOP = 1e6  # tolerances off at which the colour scale saturates (it starts at 1)
COLUMNS = 3  # panels a row
DPI = 100  # a picture of a few leaves stays well under 200 KB


class NeedsMatplotlib(ImportError):
    """Drawing a check needs matplotlib, which the ``train`` extra installs."""


def leaf_badness(problems: Sequence[Mismatch], leaf: LeafReport) -> np.ndarray:
    """How many tolerances each entry of ``leaf`` is off: its error against the differences (the report's
    per-entry figures, where it has them), or the worst mismatch that covers it (its own, or a block it is in);
    0 where none does, inf for NaN (and for a cotangent of the wrong shape or dtype: the whole leaf), −1 where
    the differences could not check it.

    Shape: the leaf's; a complex leaf's is ``(2, *shape)``, its real parts, then its imaginary parts.
    """
    n = math.prod(leaf.shape)
    parts = 2 if leaf.dtype.startswith("complex") else 1
    flat = np.zeros(parts * n)
    if leaf.badness is not None and leaf.badness.size == flat.size:
        flat = np.where(np.isnan(leaf.badness), -1.0, leaf.badness.astype(np.float64))
    for p in problems:
        if p.path != leaf.path:
            continue
        if p.index is None:  # the whole leaf
            cover = slice(None)
        elif p.stop is not None:  # a block: flat indices over the real parts, then the imaginary parts
            cover = slice(p.index, p.stop)
        else:
            k = p.index + (n if p.part == "imaginary" else 0)
            cover = slice(k, k + 1)
        flat[cover] = np.fmax(flat[cover], np.inf if math.isnan(p.badness) else p.badness)
    return flat.reshape((parts, *leaf.shape) if parts == 2 else leaf.shape)


def unrecorded(problems: Sequence[Mismatch], leaves: Sequence[LeafReport] = ()) -> bool:
    """Whether entries without a mismatch may be off too: a kind of mismatch (value and kink together, blocks
    per leaf; an output's forward mismatches are no leaf's) reached the ``REPORTED`` that check_vjp keeps, and
    the leaves drawn do not carry every entry's figures for it (they do for the differences': value, kink,
    block)."""
    figures = bool(leaves) and all(leaf.badness is not None for leaf in leaves)
    counts = collections.Counter(("value" if p.kind == "kink" else p.kind, p.path if p.kind == "block" else "")
                                 for p in problems if p.kind != "forward"
                                 and not (figures and p.kind in ("value", "kink", "block")))
    return any(n >= REPORTED for n in counts.values())


def failing(leaves: Sequence[LeafReport], problems: Sequence[Mismatch]) -> list[LeafReport]:
    """The leaves some mismatch is in; every leaf where there is none (only fn's outputs were off)."""
    paths = {p.path for p in problems}
    return [leaf for leaf in leaves if leaf.path in paths] or list(leaves)


def draw(path: str | os.PathLike[str], leaves: Sequence[LeafReport], problems: Sequence[Mismatch],
         title: str) -> Figure:
    """:func:`figure`, written to the PNG ``path``."""
    fig = figure(leaves, problems, title)
    fig.savefig(path, dpi=DPI)
    return fig


def figure(leaves: Sequence[LeafReport], problems: Sequence[Mismatch], title: str) -> Figure:
    """One panel per leaf, in order, on one shared colour scale. Each panel's image (``ax.images[0]``) holds the
    leaf's :func:`leaf_badness`, with entries within tolerance at 0.5 (below the scale) and NaN or inf masked."""
    mpl = _matplotlib()
    unknown = unrecorded(problems, leaves)
    arrays = [leaf_badness(problems, leaf) for leaf in leaves]
    worst = max([10.0] + [float(np.max(b[np.isfinite(b)], initial=0.0)) for b in arrays])
    norm = mpl.colors.LogNorm(vmin=1.0, vmax=min(worst, TOP))
    scale = mpl.colormaps["YlOrRd"]
    cmap = mpl.colors.ListedColormap(scale(np.linspace(0.25, 1.0, 256))).with_extremes(
        under=UNRECORDED if unknown else WITHIN, over=scale(1.0), bad=NOT_FINITE)
    cols = max(1, min(COLUMNS, len(leaves)))
    rows = max(1, math.ceil(len(leaves) / cols))
    fig = mpl.figure.Figure(figsize=(4.4 * cols + 1.2, 3.7 * rows + 1.0), layout="constrained")
    mpl.backends.backend_agg.FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, leaf, b in zip(axes.flat, leaves, arrays, strict=False):
        if len(leaf.shape) == 2 and b.size:
            _heatmap(ax, leaf, b, cmap, norm)
        else:
            _profile(ax, leaf, b, cmap, norm)
        ax.set_title(_caption(leaf, b, unknown), fontsize=9)
    for ax in axes.flat[len(leaves):]:
        ax.set_axis_off()
    fig.colorbar(mpl.cm.ScalarMappable(norm, cmap), ax=axes, extend="max", shrink=0.9,
                 label="error / tolerance (log)")
    keys = [(WITHIN, "within tolerance (≤ 1)"), (NOT_FINITE, "NaN or inf")]
    if unknown:
        keys[0] = (UNRECORDED, f"no record: within, or off beyond the {REPORTED} worst check_vjp keeps")
    if any(np.any(b < 0) for b in arrays):
        keys.append((UNCHECKED, "unchecked"))
    fig.legend(handles=[mpl.patches.Patch(facecolor=c, edgecolor="#808080", label=text) for c, text in keys],
               loc="outside lower center", ncols=len(keys), fontsize=9, frameon=False)
    elsewhere = [p for p in problems if p.path not in {leaf.path for leaf in leaves}]
    if elsewhere:
        title += f"\n(and {len(elsewhere)} mismatches not drawn: {', '.join(sorted({p.path for p in elsewhere}))})"
    fig.suptitle(title, fontsize=11)
    return fig


def _heatmap(ax: Axes, leaf: LeafReport, b: np.ndarray, cmap: Colormap, norm: Normalize) -> None:
    rows, cols = leaf.shape
    grid = b.reshape(-1, cols)  # a complex leaf: its real parts' rows, then its imaginary parts'
    shown = np.ma.masked_invalid(np.where(grid > 1, grid, 0.5))
    ratio = grid.shape[0] / grid.shape[1]
    aspect: Literal["equal", "auto"] = "equal" if 1 / 4 <= ratio <= 4 else "auto"
    ax.imshow(shown, cmap=cmap, norm=norm, interpolation="nearest", aspect=aspect)
    if np.any(grid < 0):
        from matplotlib.colors import ListedColormap

        ax.imshow(np.ma.masked_where(grid >= 0, np.zeros_like(grid)), cmap=ListedColormap([UNCHECKED]),
                  interpolation="nearest", aspect=aspect)
    if max(grid.shape) <= 40:  # cell borders, so that white cells read as cells
        ax.set_xticks(np.arange(-0.5, grid.shape[1]), minor=True)
        ax.set_yticks(np.arange(-0.5, grid.shape[0]), minor=True)
        ax.grid(which="minor", color="#e4e4e4", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    if grid.shape[0] > rows:
        ax.axhline(rows - 0.5, color="black", linewidth=1.5)
        ax.set_ylabel("row (real parts, then imaginary)")
    else:
        ax.set_ylabel("row")
    ax.set_xlabel("column")
    off = np.argwhere(grid > 1)
    if 0 < len(off) <= RINGED:
        ax.scatter(off[:, 1], off[:, 0], s=150, facecolors="none", edgecolors="black", linewidths=1.2)
    _integer_ticks(ax)


def _profile(ax: Axes, leaf: LeafReport, b: np.ndarray, cmap: Colormap, norm: Normalize) -> None:
    """The flat index against badness: an off entry is a bar from 1 up, NaN or inf a bar to the top; the band
    below 1 is within tolerance (or not recorded, in its colour)."""
    flat = b.ravel()
    edges = np.arange(flat.size + 1) - 0.5
    top = norm.vmax or TOP  # set: figure gives the scale its top
    ax.set_yscale("log")
    ax.set_ylim(0.5, top * 2)
    ax.set_xlim(-0.5, max(flat.size, 1) - 0.5)
    ax.axhspan(0.5, 1.0, color=cmap.get_under(), zorder=0)
    ax.axhline(1.0, color="#808080", linewidth=0.8, linestyle="--")
    finite = np.flatnonzero(np.isfinite(flat) & (flat > 1))
    if finite.size <= BARS:  # each its colour on the scale
        height = np.minimum(flat[finite], top)
        ax.bar(finite, height - 1, bottom=1.0, width=1.0, color=cmap(norm(height)))
    else:
        ax.stairs(np.where(np.isfinite(flat) & (flat > 1), np.minimum(flat, top), 1.0), edges, baseline=1.0,
                  fill=True, color=cmap(0.6))
    ax.stairs(np.where(np.isinf(flat), top * 2, 1.0), edges, baseline=1.0, fill=True, color=NOT_FINITE)
    if np.any(flat < 0):  # unchecked: the band below 1, in its own colour
        ax.stairs(np.where(flat < 0, 1.0, 0.5), edges, baseline=0.5, fill=True, color=UNCHECKED)
    off = np.flatnonzero(flat > 1)
    if 0 < off.size <= RINGED:
        ax.scatter(off, np.minimum(flat[off], top), c=flat[off], cmap=cmap, norm=norm, s=40,
                   edgecolors="black", linewidths=1.0, zorder=3, plotnonfinite=True)
    n = math.prod(leaf.shape)
    if flat.size > n:
        ax.axvline(n - 0.5, color="black", linewidth=1.5)
        ax.set_xlabel("flat index (real parts, then imaginary)")
    else:
        ax.set_xlabel("flat index")
    ax.set_ylabel("error / tolerance")
    _integer_ticks(ax, y=False)


def _caption(leaf: LeafReport, b: np.ndarray, unknown: bool) -> str:
    off = int(np.sum(b > 1))  # NaN and inf count; unchecked (−1) does not
    worst = float(np.max(b, initial=0.0))
    said = (("no mismatch recorded" if unknown else "within tolerance") if not off else
            f"{off}{' recorded' if unknown else ''} of {b.size} entries off, worst "
            f"{'NaN or inf' if math.isinf(worst) else f'{worst:.3g}×'}")
    unchecked = f", {leaf.unchecked} unchecked" if leaf.unchecked else ""
    return f"{leaf.path} {leaf.dtype}{list(leaf.shape)}\n{said}{unchecked}"


def _integer_ticks(ax: Axes, y: bool = True) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _matplotlib() -> Any:
    """matplotlib, with the parts drawn with imported (the Agg canvas, not pyplot); NeedsMatplotlib if missing."""
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.cm
        import matplotlib.colors
        import matplotlib.figure
        import matplotlib.patches
    except ModuleNotFoundError as e:
        raise NeedsMatplotlib(f"drawing a check needs matplotlib (missing {e.name}); install it with "
                              f"pip install 'handgrad[train]'", name=e.name) from None
    return matplotlib
