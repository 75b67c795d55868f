"""Figures as inline SVG for the HTML pages (the run report and the comparison page): one
style, one colour per precision, one serialiser that makes the SVG safe to inline.

Figures are built on `matplotlib.figure.Figure` directly, never through pyplot: no backend is
selected, no window can open, and the host program's own backend is left alone. Style is applied
per figure with `rc_context`, so importing this changes no global matplotlib setting either.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections.abc import Callable
from typing import Any, TypeVar

import matplotlib
from matplotlib.figure import Figure

from bench.results.manifest import shown_styles

STYLE = {
    "svg.fonttype": "none",  # text stays text: selectable, searchable, small
    "svg.hashsalt": "mpbench",  # deterministic ids, so a re-render gives the same file
    "svg.image_inline": True,
    "font.size": 8.5,
    "font.family": "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "lines.markersize": 4,
}
# A precision's colour and line style are its mode's (bench.engine.modes: the same in every
# figure; an amp mode and its pure-dtype twin share a hue, the pure one dashed), recorded in the
# run's manifest; a run is shown under its styles (`PrecisionStyles.shown`, set by the CLI). A
# precision no run described gets a stable colour from this spare palette.
EXTRA_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
VERDICT_COLORS = {
    "ok": "#4c9a2a",
    "baseline": "#555555",
    "warn": "#e0a100",
    "diverged": "#d62728",
    "nan": "#7b0000",
}
NO_VERDICT_COLOR = "#9fb4c7"
WIDTH_IN = 5.0  # one plot of a grid of two per row at ~1200 px
HEIGHT_IN = 3.0

F = TypeVar("F", bound=Callable[..., Any])


def styled(func: F) -> F:
    """Run a plotting function under the report style without touching global rcParams."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def literal(text: str) -> str:
    """Text for matplotlib shown as written: an unescaped pair of '$' would start mathtext.

    (rcParams["text.parse_math"] = False would also stop the log axes' own mathtext tick labels.)
    """
    return str(text).replace("$", r"\$")


def color_of(mode: str) -> str:
    """The colour of a mode's precision ("bf16 +compile" and "bf16 ddp2" are bf16's); a
    precision no run described gets a stable one from the spare palette."""
    precision = mode.split(" ")[0]
    style = shown_styles().get(precision)
    if style is not None:
        return style.color
    digest = int(hashlib.sha1(precision.encode()).hexdigest(), 16)
    return EXTRA_COLORS[digest % len(EXTRA_COLORS)]


def linestyle_of(mode: str) -> str:
    """Dotted under torch.compile, dash-dotted under CUDA graphs, dashed for a pure
    low-precision dtype, solid otherwise."""
    if mode.endswith(" +compile"):
        return ":"
    if mode.endswith(" +graphs"):
        return "-."
    return "--" if shown_styles().dashed(mode.split(" ")[0]) else "-"


_TAG = re.compile(r"<[^>]+>")


def _prefix_ids(svg: str, prefix: str) -> str:
    """Make ids unique in the page: many SVGs inlined in one HTML document share an id space.

    Only tags are rewritten (matplotlib escapes '<' and '>' inside text and attributes), so text
    that happens to read id="..." is left as it is.
    """

    def fix(match: re.Match[str]) -> str:
        tag = match.group(0)
        tag = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}\1"', tag)
        tag = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}\1)", tag)
        return re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', tag)

    return _TAG.sub(fix, svg)


def to_svg(fig: Figure, id_prefix: str = "f") -> str:
    """Serialise a figure as inline SVG: no XML prolog, DOCTYPE, RDF metadata or namespace
    declarations (all carry URLs; an HTML parser puts inline <svg> in the SVG namespace and knows
    xlink:href by itself), no comments, ids prefixed with `id_prefix` and a hash of the figure so
    they are unique in the page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    # matplotlib repeats every text as an XML comment (escaped); the page has no use for them.
    text = re.sub(r"<!--.*?-->\s*", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text, count=2)
    prefix = id_prefix + hashlib.sha1(text.encode()).hexdigest()[:10] + "-"
    return _prefix_ids(text, prefix)
