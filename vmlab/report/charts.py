"""Chart geometry for the HTML report, and human-readable numbers.

Charts are inline SVG drawn by the report template from the geometry computed here: no
JavaScript library, no network. Bars are horizontal (long configuration names fit on the left),
with a whisker for the confidence interval of the mean. Percentile curves put the percentile on
a "nines" axis (-log10(1 - p), so p90, p99, p99.9 are evenly spaced) and latency on a log axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DIRECTION_COLORS = {"read": "#2b6cb0", "write": "#c05621", "trim": "#6b46c1", "mixed": "#2f855a"}
LIMIT_COLOR = "#8a8f98"
SERIES_COLORS = (
    "#2b6cb0",
    "#c05621",
    "#2f855a",
    "#6b46c1",
    "#b83280",
    "#975a16",
    "#2c7a7b",
    "#c53030",
    "#4a5568",
    "#d69e2e",
)
DIRECTION_DASH = {"read": "", "write": "6 3", "trim": "2 3", "mixed": ""}
KEY_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


# --------------------------------------------------------------------------------------------
# Numbers for people


def _scale(value: float, unit: str) -> tuple[float, str]:
    """(divisor, unit label) that suits ``value`` of ``unit``."""
    v = abs(value)
    if unit == "ns":
        for div, label in ((1e9, "s"), (1e6, "ms"), (1e3, "µs")):
            if v >= div:
                return div, label
        return 1.0, "ns"
    if unit == "KiB/s":
        for div, label in ((1024.0**2, "GiB/s"), (1024.0, "MiB/s")):
            if v >= div:
                return div, label
        return 1.0, "KiB/s"
    if unit == "IOPS":
        for div, label in ((1e6, "M"), (1e3, "k")):
            if v >= div:
                return div, label
        return 1.0, ""
    return 1.0, unit


def _digits(value: float) -> str:
    v = abs(value)
    if v >= 100:
        return f"{value:,.0f}"
    if v >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def human(value: float | None, unit: str) -> str:
    """12.3k IOPS style: 3 significant digits, unit scaled (ns -> µs/ms, KiB/s -> MiB/s)."""
    if value is None or not math.isfinite(value):
        return "-"
    div, label = _scale(value, unit)
    text = _digits(value / div)
    if unit == "IOPS":
        return f"{text}{label}"
    return f"{text} {label}".rstrip()


def human_pm(mean: float, half: float | None, unit: str) -> str:
    """Mean ± confidence half-width, both in the mean's scale."""
    if half is None:
        return human(mean, unit)
    div, label = _scale(mean, unit)
    if unit == "IOPS":  # 15.4k ± 0.57k
        return f"{_digits(mean / div)}{label} ± {_digits(half / div)}{label}"
    return f"{_digits(mean / div)} ± {_digits(half / div)} {label}".rstrip()


def human_fixed(value: float, scale: tuple[float, str], unit: str) -> str:
    """``value`` in a given scale (from ``_scale``): axis ticks share one unit."""
    div, label = scale
    if not value:
        return "0"
    text = _digits(value / div)
    return f"{text}{label}" if unit == "IOPS" else f"{text} {label}".rstrip()


def nice_step(span: float, count: int = 5) -> float:
    """A 1/2/5 x 10^k step that cuts ``span`` into about ``count`` intervals."""
    if span <= 0:
        return 1.0
    raw = span / count
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


# --------------------------------------------------------------------------------------------
# Bars


@dataclass(frozen=True)
class BarInput:
    group: str
    """The row label: a configuration, or a job in a one-configuration run."""
    series: str
    """The bar within the row: a direction (read, write...)."""
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    note: str = ""
    """Shown after the value, e.g. "0.83× limit", "noisy"."""
    limit: bool = False
    """The host baseline: drawn grey."""


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    series: str
    value: float
    text: str
    title: str
    limit: bool
    whisker: tuple[float, float] | None

    @property
    def cy(self) -> float:
        return self.y + self.height / 2


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class LegendItem:
    label: str
    color: str
    dash: str = ""


@dataclass(frozen=True)
class BarChart:
    title: str
    unit: str
    width: float
    height: float
    left: float
    top: float
    plot_width: float
    plot_height: float
    bars: tuple[Bar, ...]
    labels: tuple[Label, ...]
    ticks: tuple[Tick, ...]
    legend: tuple[LegendItem, ...]
    axis_label: str = ""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


CHAR_WIDTH_PX = 6.6
"""A generous width of one character of the charts' 11 px sans-serif, to leave room for text."""


def _bar_value_text(item: BarInput, unit: str) -> str:
    if item.ci_low is not None and item.ci_high is not None:
        return human_pm(item.value, (item.ci_high - item.ci_low) / 2, unit)
    return human(item.value, unit)


def bar_chart(
    title: str,
    unit: str,
    items: Sequence[BarInput],
    *,
    width: float = 1000,
    left: float = 200,
    right: float = 300,
    axis_label: str = "",
) -> BarChart | None:
    """Horizontal grouped bars with confidence whiskers; ``None`` when there is nothing to draw."""
    items = [i for i in items if math.isfinite(i.value)]
    if not items:
        return None
    bar_h, gap, group_gap, top, bottom = 16.0, 3.0, 12.0, 8.0, 44.0
    highest = max(max(i.value, i.ci_high or 0.0) for i in items) or 1.0
    scale = _scale(highest, unit)
    step = nice_step(highest / scale[0]) * scale[0]  # round numbers in the unit shown
    axis_max = step * math.ceil(highest / step)
    if axis_max < highest * 1.02:
        axis_max += step
    texts = {id(i): _bar_value_text(i, unit) for i in items}
    longest = max(len(f"{i.series} {texts[id(i)]} · {i.note}") for i in items)
    right = min(max(right, 12 + CHAR_WIDTH_PX * longest), width - left - 300)  # text fits
    plot_w = width - left - right

    def xpos(v: float) -> float:
        return left + max(v, 0.0) / axis_max * plot_w

    groups: dict[str, list[BarInput]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    bars: list[Bar] = []
    labels: list[Label] = []
    y = top
    for group, members in groups.items():
        start = y
        for item in members:
            whisker = None
            if item.ci_low is not None and item.ci_high is not None:
                whisker = (xpos(item.ci_low), xpos(item.ci_high))
            text = texts[id(item)]
            bars.append(
                Bar(
                    x=left,
                    y=y,
                    width=max(xpos(item.value) - left, 0.5),
                    height=bar_h,
                    color=LIMIT_COLOR if item.limit else DIRECTION_COLORS.get(item.series, "#555"),
                    series=item.series,
                    value=item.value,
                    text=f"{item.series} {text}" + (f" · {item.note}" if item.note else ""),
                    title=f"{group} {item.series}: {text}"
                    + (f" ({item.note})" if item.note else ""),
                    limit=item.limit,
                    whisker=whisker,
                )
            )
            y += bar_h + gap
        labels.append(Label(left - 8, (start + y - gap) / 2, _clip(group, 28), group))
        y += group_gap - gap
    plot_h = y - top
    ticks = []
    value = 0.0
    while value <= axis_max * 1.0001:
        ticks.append(Tick(xpos(value), human_fixed(value, scale, unit)))
        value += step
    series = list(dict.fromkeys(i.series for i in items))
    legend = [LegendItem(s, DIRECTION_COLORS.get(s, "#555")) for s in series]
    if any(i.limit for i in items):
        legend.append(LegendItem("host baseline (limit)", LIMIT_COLOR))
    return BarChart(
        title=title,
        unit=unit,
        width=width,
        height=top + plot_h + bottom,
        left=left,
        top=top,
        plot_width=plot_w,
        plot_height=plot_h,
        bars=tuple(bars),
        labels=tuple(labels),
        ticks=tuple(ticks),
        legend=tuple(legend),
        axis_label=axis_label or title,
    )


# --------------------------------------------------------------------------------------------
# Percentile curves


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    dash: str
    points: str
    """SVG polyline points: "x,y x,y ..."."""
    markers: tuple[Marker, ...]


@dataclass(frozen=True)
class LineChart:
    title: str
    width: float
    height: float
    left: float
    top: float
    plot_width: float
    plot_height: float
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    series: tuple[Series, ...]


@dataclass(frozen=True)
class CurveInput:
    label: str
    direction: str
    color_key: str
    points: Sequence[tuple[float, float]]
    """(percentile, ns)."""
    limit: bool = False
    """The host baseline: drawn grey."""


def nines(percentile: float) -> float:
    return -math.log10(1 - percentile / 100)


def _percent_label(p: float) -> str:
    return f"p{p:g}"


def percentile_chart(
    title: str,
    curves: Sequence[CurveInput],
    *,
    width: float = 1000,
    height: float = 314,
    left: float = 80,
    right: float = 20,
    top: float = 12,
    bottom: float = 44,
) -> LineChart | None:
    """Latency (log axis) against percentile (nines axis), one line per curve."""
    usable = [
        (c, [(p, v) for p, v in c.points if 0 < p < 100 and v > 0]) for c in curves if c.points
    ]
    usable = [(c, pts) for c, pts in usable if pts]
    if not usable:
        return None
    all_x = [nines(p) for _, pts in usable for p, _ in pts]
    all_v = [v for _, pts in usable for _, v in pts]
    x_max = max(3.0, math.ceil(max(all_x) * 2) / 2)
    lo = math.floor(math.log10(min(all_v)))
    hi = math.ceil(math.log10(max(all_v)))
    if hi == lo:
        hi += 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def xpos(p: float) -> float:
        return left + nines(p) / x_max * plot_w

    def ypos(v: float) -> float:
        return top + plot_h - (math.log10(v) - lo) / (hi - lo) * plot_h

    x_ticks = tuple(
        Tick(xpos(p), _percent_label(p))
        for p in (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)
        if nines(p) <= x_max + 1e-9
    )
    y_values: list[float] = []
    for decade in range(lo, hi + 1):
        for mult in (1, 2, 5) if hi - lo <= 2 else (1,):
            value = mult * 10.0**decade
            if 10.0**lo <= value <= 10.0**hi:
                y_values.append(value)
    y_ticks = tuple(Tick(ypos(v), human(v, "ns")) for v in y_values)
    colors: dict[str, str] = {}
    series = []
    for curve, pts in usable:
        if curve.limit:
            color = LIMIT_COLOR
        else:
            color = colors.setdefault(
                curve.color_key, SERIES_COLORS[len(colors) % len(SERIES_COLORS)]
            )
        markers = tuple(
            Marker(xpos(p), ypos(v), f"{curve.label} {_percent_label(p)}: {human(v, 'ns')}")
            for p, v in pts
            if any(math.isclose(p, k) for k in KEY_PERCENTILES)
        )
        series.append(
            Series(
                label=curve.label,
                color=color,
                dash=DIRECTION_DASH.get(curve.direction, ""),
                points=" ".join(f"{xpos(p):.1f},{ypos(v):.1f}" for p, v in pts),
                markers=markers,
            )
        )
    return LineChart(
        title=title,
        width=width,
        height=height,
        left=left,
        top=top,
        plot_width=plot_w,
        plot_height=plot_h,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        series=tuple(series),
    )


def pct(value: float | None, digits: int = 1) -> str:
    """A signed percentage: ``+4.2%``; ``-`` for none."""
    return "-" if value is None else f"{value:+.{digits}f}%"
