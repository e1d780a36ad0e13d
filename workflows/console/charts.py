"""Charts drawn on the server as inline SVG: stacked bars or lines over time buckets,
with a y scale, time labels and a legend. No script, no library, nothing fetched: the
dashboard works offline and prints as it shows.
"""

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from workflows.engine.hooks import PanelData

PALETTE = ("#2563eb", "#16a34a", "#f59e0b", "#9333ea", "#0891b2", "#db2777", "#64748b")
WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


@dataclass(frozen=True)
class LegendItem:
    name: str
    color: str
    total: str


@dataclass(frozen=True)
class Chart:
    svg: SafeString
    legend: list[LegendItem]
    marks: int
    """How many bars or lines were drawn (0: nothing to show)."""


def nice_max(value: float) -> float:
    """A round top for the y scale at or above `value` (1, 2 or 5 times a power of 10)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        top = step * 10.0**exponent
        if top >= value:
            return top
    return 10.0 ** (exponent + 1)


def number_text(value: float, unit: str = "") -> str:
    if unit == "$":
        return f"${value:,.2f}" if value < 100 else f"${value:,.0f}"
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.3g}" if value < 10 else f"{value:,.1f}"


def _bucket_label(bucket: datetime, step_minutes: float) -> str:
    bucket = bucket.astimezone(UTC)
    return f"{bucket:%H:%M}"


def colors_for(data: PanelData) -> dict[str, str]:
    fixed = dict(data.colors)
    free = iter(c for c in PALETTE if c not in fixed.values())
    return {s.name: fixed.get(s.name) or next(free, PALETTE[-1]) for s in data.series}


def chart_draw(data: PanelData, *, title: str) -> Chart:
    """The panel's series as an SVG (stacked bars, or lines), and its legend."""
    n = len(data.buckets)
    colors = colors_for(data)
    legend = [
        LegendItem(
            s.name,
            colors[s.name],
            number_text(s.values[-1] if data.levels else sum(s.values), data.unit)
            + (" now" if data.levels else ""),
        )
        for s in data.series
        if s.values
    ]
    if not n or not data.series:
        return Chart(svg=mark_safe(""), legend=legend, marks=0)
    if data.chart == "lines":
        peak = max((v for s in data.series for v in s.values), default=0.0)
    else:
        peak = max(sum(s.values[i] for s in data.series) for i in range(n))
    top = nice_max(peak)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / n

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * value / top

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0, 0.5, 1):
        gy = y(top * fraction)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" '
            'stroke="#e5e7eb" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="#6b7280">{escape(number_text(top * fraction, data.unit))}</text>'
        )
    step = (data.buckets[1] - data.buckets[0]).total_seconds() / 60 if n > 1 else 60
    for i in sorted({0, n // 2, n - 1}):
        x = LEFT + slot * (i + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="10" '
            f'fill="#6b7280">{_bucket_label(data.buckets[i], step)}</text>'
        )
    marks = 0
    if data.chart == "lines":
        for s in data.series:
            if not any(s.values):
                continue
            points = " L ".join(
                f"{LEFT + slot * (i + 0.5):.1f} {y(v):.1f}" for i, v in enumerate(s.values)
            )
            parts.append(
                f'<path class="mark" d="M {points}" fill="none" stroke="{colors[s.name]}" '
                f'stroke-width="2" stroke-linejoin="round"><title>{escape(s.name)}</title></path>'
            )
            marks += 1
    else:
        bar_w = max(slot * 0.8, 1.0)
        for i in range(n):
            base = 0.0
            for s in data.series:
                value = s.values[i]
                if value <= 0:
                    continue
                y0, y1 = y(base), y(base + value)
                when = f"{data.buckets[i].astimezone(UTC):%H:%M} UTC"
                parts.append(
                    f'<rect class="mark" x="{LEFT + slot * i + (slot - bar_w) / 2:.1f}" '
                    f'y="{y1:.1f}" width="{bar_w:.1f}" height="{max(y0 - y1, 1.0):.1f}" '
                    f'fill="{colors[s.name]}"><title>{when} · {escape(s.name)}: '
                    f"{escape(number_text(value, data.unit))}</title></rect>"
                )
                base += value
                marks += 1
    parts.append("</svg>")
    return Chart(svg=mark_safe("".join(parts)), legend=legend, marks=marks)
