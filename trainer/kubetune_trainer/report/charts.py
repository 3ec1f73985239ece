"""Charts as inline SVG, drawn by matplotlib: the one way report.html and search.html draw.

Both pages must open offline and from file://, so a chart is an <svg> element inside the
page, drawn by matplotlib without pyplot (no global state, no GUI backend), its text kept
as text (small, searchable, selectable) and its ids made unique in the page. A chart may
name some of its artists (matplotlib's gid): each becomes a group with a class and a
tooltip, so a person hovering a trial's mark reads which trial it is.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from kubetune_trainer.formatting import fmt_number
from kubetune_trainer.report.page import Markup, h, printable, tag

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

MAX_LABEL_CHARS = 32
"""Chart labels are clipped to this many characters (tables show them whole)."""
PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04"]
CHART_STYLE: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",  # text as <text>, not glyph paths: small, searchable, selectable
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "axes.prop_cycle": cycler(color=PALETTE),
    "legend.frameon": False,
    "legend.fontsize": 8,
}

Draw = Callable[[Figure], None]


@dataclass(frozen=True)
class Hover:
    """What an artist drawn with gid=key becomes: a group of class `css`, titled `title`."""

    css: str
    title: str


def chart(
    chart_id: str,
    title: str,
    draw: Draw,
    size: tuple[float, float],
    hovers: Mapping[str, Hover] | None = None,
) -> Markup:
    """An inline <svg> of the figure that `draw` fills (size in inches)."""
    with matplotlib.rc_context({**CHART_STYLE, "svg.hashsalt": chart_id}):  # stable ids
        figure = Figure(figsize=size, layout="constrained")
        draw(figure)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return tag("figure", _inline_svg(buffer.getvalue(), chart_id, title, hovers or {}))


def _inline_svg(svg: str, chart_id: str, title: str, hovers: Mapping[str, Hover]) -> Markup:
    """The <svg> element alone, its ids made unique in the page, titled for screen readers."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>|<!--.*?-->", "", svg, flags=re.DOTALL)
    svg = re.sub(r"\n\s+", "\n", svg)  # matplotlib's indentation
    svg = re.sub(r'<g id="([^"]+)">', lambda match: _hover_group(match, hovers), svg)
    svg = re.sub(r"<[^>]+>", lambda match: _prefixed_ids(match.group(), chart_id), svg)
    opening = f'<svg class="chart" role="img" aria-label="{h(title)}" id="{h(chart_id)}"'
    svg = svg.replace("<svg", opening, 1)
    head_end = svg.index(">") + 1
    return Markup(f"{svg[:head_end]}<title>{h(title)}</title>{svg[head_end:]}")


def _hover_group(match: re.Match[str], hovers: Mapping[str, Hover]) -> str:
    hover = hovers.get(match.group(1))
    if hover is None:
        return match.group()
    return f'<g class="{h(hover.css)}"><title>{h(hover.title)}</title>'


def _prefixed_ids(element: str, prefix: str) -> str:
    """An SVG tag with its id and references to ids prefixed (charts share one page).

    Groups lose their ids (matplotlib's labels such as "axes_1", never referenced), which
    keeps the page small; clip paths and markers keep theirs, prefixed.
    """
    if element.startswith(("<svg", "<g ")):
        element = re.sub(r'\sid="[^"]*"', "", element)
    element = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', element)
    element = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", element)
    return re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', element)


def chart_text(text: object) -> str:
    """A label for matplotlib: clipped, and with `$` escaped (no mathtext from data)."""
    label = printable(str(text))
    if len(label) > MAX_LABEL_CHARS:
        label = label[: MAX_LABEL_CHARS - 1] + "\u2026"
    return label.replace("$", r"\$")


def number_ticks(axis: Axis) -> None:
    """Tick labels as the pages write numbers (0.0001, 1e-5, 12,350), not in mathtext."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: fmt_number(value)))


def horizontal_bars(ax: Axes, names: Sequence[object], values: Sequence[float]) -> BarContainer:
    """A bar per name, the first on top, each labelled with its (clipped) name."""
    bars = ax.barh(range(len(values)), values, height=0.7)
    ax.set_yticks(range(len(names)), [chart_text(name) for name in names])
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    return bars
