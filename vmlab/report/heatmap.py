"""Heat-maps of a two-parameter sweep for the HTML report: one cell per (x, y) value pair,
shaded light to dark by the metric's mean (a log shade when it spans more than 20x), with the
value written in the cell. Inline SVG geometry only, like :mod:`vmlab.report.charts`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vmlab.report.charts import Tick, human
from vmlab.report.model import Stat


@dataclass(frozen=True)
class HeatCell:
    x: float
    y: float
    width: float
    height: float
    fill: str
    text: str
    text_fill: str
    title: str


@dataclass(frozen=True)
class HeatMap:
    title: str
    x_label: str
    y_label: str
    width: float
    height: float
    left: float
    top: float
    plot_width: float
    plot_height: float
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    cells: tuple[HeatCell, ...]
    note: str


def _heat_fill(t: float) -> tuple[str, str]:
    """A light-to-dark blue for t in [0, 1], and the text colour that reads on it."""
    lo, hi = (239, 246, 255), (30, 58, 138)
    rgb = tuple(round(a + (b - a) * t) for a, b in zip(lo, hi, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb), ("#ffffff" if t > 0.55 else "#1a202c")


def heat_map(
    title: str,
    axes: tuple[str, str],
    grid: Mapping[tuple[float, float], Stat],
    label: str,
    unit: str,
    value_label: Callable[[str, float], str],
) -> HeatMap | None:
    """``grid`` ((x, y) -> statistics) as cells, x across and y up; ``None`` unless both
    parameters take two values or more. ``value_label(param, value)`` writes a tick."""
    x, y = axes
    xs = sorted({k[0] for k in grid})
    ys = sorted({k[1] for k in grid})
    if len(xs) < 2 or len(ys) < 2:
        return None
    cell_w, cell_h, left, top, bottom = 84.0, 28.0, 96.0, 10.0, 48.0
    values = [m.mean for m in grid.values() if m.mean > 0]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    log = lo > 0 and hi / lo > 20

    def shade(v: float) -> float:
        if hi <= lo or v <= 0:
            return 0.0
        if log:
            return (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return (v - lo) / (hi - lo)

    cells = []
    for (xv, yv), m in grid.items():
        col, row = xs.index(xv), len(ys) - 1 - ys.index(yv)
        fill, ink = _heat_fill(shade(m.mean))
        text = human(m.mean, unit)
        cells.append(
            HeatCell(
                x=left + col * cell_w,
                y=top + row * cell_h,
                width=cell_w - 2,
                height=cell_h - 2,
                fill=fill,
                text=text,
                text_fill=ink,
                title=f"{x}={value_label(x, xv)}, {y}={value_label(y, yv)}: {label} {text}"
                f" (n={m.n})",
            )
        )
    plot_w, plot_h = len(xs) * cell_w, len(ys) * cell_h
    return HeatMap(
        title=title,
        x_label=x,
        y_label=y,
        width=left + plot_w + 16,
        height=top + plot_h + bottom,
        left=left,
        top=top,
        plot_width=plot_w,
        plot_height=plot_h,
        x_ticks=tuple(
            Tick(left + i * cell_w + cell_w / 2, value_label(x, v)) for i, v in enumerate(xs)
        ),
        y_ticks=tuple(
            Tick(top + (len(ys) - 1 - i) * cell_h + cell_h / 2, value_label(y, v))
            for i, v in enumerate(ys)
        ),
        cells=tuple(cells),
        note=f"{label}; darker = higher" + (" (log colour scale)" if log else ""),
    )
