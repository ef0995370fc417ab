"""The access timeline as inline SVG, drawn at generation time by matplotlib (svg
backend, no pyplot state, no browser).

Groups carry ids so that the page can be checked element by element: one
``<g id="wg-loads-N">`` per identity whose ``<use>`` markers are its non-empty time
bins, ``<g id="wg-denied">`` and ``<g id="wg-tamper">`` with one marker per listed
event.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from datetime import timedelta

from weightguard._internal.foundation.extras import require
from weightguard._internal.report.access import Listed, Timeline, parse_record_time

MAX_SERIES = 10  # identities drawn one by one; the rest are summed as "(others)"
_PALETTE = (
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf",
    "#bcbd22", "#7f7f7f", "#e377c2", "#393b79", "#637939", "#aaaaaa",
)  # fmt: skip


def series_for_plot(tl: Timeline) -> list[tuple[str, dict[int, int]]]:
    """The identities drawn, busiest first; beyond MAX_SERIES one summed series."""
    ranked = sorted(tl.series.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    shown = ranked[:MAX_SERIES]
    rest = ranked[MAX_SERIES:]
    if rest:
        other: dict[int, int] = {}
        for _, s in rest:
            for b, c in s.items():
                other[b] = other.get(b, 0) + c
        shown.append(("(all other identities)", other))
    return shown


def _marks(listed: Sequence[Listed]) -> tuple[list[float], list[int]]:
    from matplotlib.dates import date2num

    xs: list[float] = []
    for m in listed:
        t = parse_record_time(m.time)
        if t is not None:
            xs.append(float(date2num(t)))
    return xs, [0] * len(xs)


def timeline_svg(
    tl: Timeline,
    denied: Sequence[Listed],
    tamper: Sequence[Listed],
    *,
    title: str,
    gid: str = "wg-loads",
    size: tuple[float, float] = (9.5, 3.6),
) -> str:
    """An ``<svg>`` element (no XML prolog) of loads per bin per series (identity, pod
    or node: group ids ``<gid>-N``), with the listed denials and tamper events marked
    on the time axis."""
    require("the report's timeline", "matplotlib")
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.dates import AutoDateFormatter, AutoDateLocator, date2num
    from matplotlib.figure import Figure

    with matplotlib.rc_context(
        # text.parse_math off: a "$" in an identity is text, not TeX to parse
        {
            "svg.fonttype": "none",
            "svg.hashsalt": "weightguard",
            "font.size": 9,
            "text.parse_math": False,
        }
    ):
        fig = Figure(figsize=size, dpi=100)
        FigureCanvasSVG(fig)
        ax = fig.add_subplot(1, 1, 1)
        if tl.start is None:
            ax.text(0.5, 0.5, "no events", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        else:
            half = tl.bin_hours / 2
            # every bin on the line (a silent bin is a 0, so gaps show), a marker only
            # where the identity loaded: one <use> per non-empty bin
            xs = [float(date2num(tl.bin_start(b) + timedelta(hours=half))) for b in range(tl.bins)]
            for i, (ident, s) in enumerate(series_for_plot(tl)):
                ax.plot(
                    xs,
                    [s.get(b, 0) for b in range(tl.bins)],
                    markevery=sorted(s),
                    marker="o",
                    markersize=3,
                    linewidth=1,
                    color=_PALETTE[i % len(_PALETTE)],
                    label=_label(ident),
                    gid=f"{gid}-{i}",
                )
            for gid, listed, marker, color, label in (
                ("wg-denied", denied, "v", "#d62728", "denied"),
                ("wg-tamper", tamper, "X", "#000000", "tamper"),
            ):
                xs, ys = _marks(listed)
                if xs:
                    ax.plot(
                        xs,
                        ys,
                        linestyle="none",
                        marker=marker,
                        markersize=7,
                        color=color,
                        label=f"{label} ({len(xs)})",
                        gid=gid,
                        clip_on=False,
                    )
            locator = AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(AutoDateFormatter(locator))
            ax.set_ylabel(f"loads per {tl.bin_hours} h")
            ax.set_ylim(bottom=-0.5)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
            fig.autofmt_xdate()
        ax.set_title(_shown(title), fontsize=10)
        w, h = size  # margins in inches: axis labels left and below, legend right
        fig.subplots_adjust(left=0.7 / w, right=1 - 2.6 / w, bottom=0.8 / h, top=1 - 0.36 / h)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "weightguard"})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # inline: no XML prolog or doctype
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)


def _label(text: str) -> str:
    """A legend label shown as written: matplotlib hides labels starting with "_";
    characters a font cannot draw (controls, line separators) as escapes."""
    text = _shown(text)
    return "\u2009" + text if text.startswith("_") else text


def _shown(text: str) -> str:
    """``text`` with each unprintable character as its escape (``\\x0d``): names come
    from audit logs, and a hostile one should read as what it is, not vanish."""
    return "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
        for c in text
    )
