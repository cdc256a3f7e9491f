"""Sweep charts: a metric against a numeric parameter that varies (iodepth, numjobs, bs,
num_queues...), one line per value of the other varying parameters and per run, the way
fio-plot draws a queue-depth x numjobs sweep; and a heat-map when two numeric parameters vary.

Points are (run, case, job) cells of a report; a cell's parameters are its case's and its job's
(the job's win). Workloads are kept apart by ``rw`` and directions by name: a read line and a
write line never share a chart. Latency charts use the completion latency (clat) for both the
mean and the p99, so the two agree; a run stored without the clat mean falls back to the total
latency mean for the whole chart, and the axis title says which one it shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vmlab.metrics import DIRECTIONS
from vmlab.report.charts import (
    SERIES_COLORS,
    Tick,
    _scale,
    human,
    human_fixed,
    human_pm,
    nice_step,
)
from vmlab.report.heatmap import HeatMap, heat_map
from vmlab.report.model import JobView, MetricView, Report, Stat
from vmlab.sizes import parse_size

PREFERRED_X = ("iodepth", "numjobs", "bs", "num_queues", "iothreads", "queue_size", "cpus")
"""Which varying numeric parameter goes on the x axis first."""
IGNORED = frozenset({"name", "rw", "disk", "runtime_s", "ramp_s", "size", "filename"})
"""Parameters that say nothing about what a sweep varies."""
MAX_SERIES = 16
_DASHES = ("", "6 3", "2 3", "8 3 2 3")


def param_number(name: str, value: str) -> float | None:
    """A parameter value as a number (``bs`` sizes in bytes: ``4k`` = 4096), else ``None``."""
    text = value.strip().lower()
    if name == "bs":
        try:
            return float(parse_size(text))
        except ValueError:
            return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _size_label(value: float) -> str:
    for power, suffix in ((3, "G"), (2, "M"), (1, "k")):
        if value >= 1024**power and value % 1024**power == 0:
            return f"{value / 1024**power:g}{suffix}"
    return f"{value:g}"


def _value_label(name: str, value: float) -> str:
    return _size_label(value) if name == "bs" else f"{value:g}"


@dataclass(frozen=True)
class Point:
    run: str
    case: str
    job: JobView
    params: Mapping[str, str]
    p99_kinds: Mapping[str, str]
    """direction -> "clat" or "lat": where the p99 came from."""


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    title: str
    whisker: tuple[float, float] | None


@dataclass(frozen=True)
class SweepLine:
    label: str
    color: str
    dash: str
    points: str
    dots: tuple[Dot, ...]
    values: Mapping[str, str]
    """x value as labelled -> the mean ± CI as text: the same numbers as a table."""


@dataclass(frozen=True)
class SweepChart:
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
    lines: tuple[SweepLine, ...]
    x_values: tuple[str, ...] = ()
    """Every x value, labelled: the rows of the chart as a table."""
    left_out: tuple[str, ...] = ()
    """Labels of the lines beyond MAX_SERIES, not drawn (the chart says so)."""


@dataclass(frozen=True)
class Sweep:
    """All charts of one workload (rw) and direction."""

    title: str
    x_param: str
    lines_by: tuple[str, ...]
    charts: tuple[SweepChart, ...]
    heatmaps: tuple[HeatMap, ...]


# --------------------------------------------------------------------------------------------


def _points(report: Report) -> list[Point]:
    several_runs = len(report.runs) > 1
    points = []
    for run in report.runs:
        label = run.name if several_runs else ""
        for case in run.cases:
            for job in case.jobs:
                kinds = {c.direction: c.latency for c in job.curves}
                params = {**case.params, **job.params}
                points.append(Point(label, case.id, job, params, kinds))
    return points


def _varying(points: Sequence[Point]) -> list[str]:
    keys = dict.fromkeys(k for p in points for k in p.params if k not in IGNORED)
    return [k for k in keys if len({p.params.get(k, "") for p in points}) > 1]


def _numeric(points: Sequence[Point], key: str) -> bool:
    return all(param_number(key, p.params.get(key, "")) is not None for p in points)


def _x_order(names: Sequence[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(PREFERRED_X)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _latency_metric(points: Sequence[Point], d: str) -> tuple[str, str, str]:
    """(metric, title, axis label) of the mean latency: the clat mean when every point has it."""
    if all(p.job.get(f"{d}_clat_mean_ns") for p in points):
        return f"{d}_clat_mean_ns", "mean completion latency (clat)", f"{d} clat mean"
    return f"{d}_lat_mean_ns", "mean total latency (slat + clat)", f"{d} total lat mean"


def _p99_label(points: Sequence[Point], d: str) -> tuple[str, str]:
    """(title, axis label) of the p99: completion latency unless fio gave only total."""
    kinds = {p.p99_kinds.get(d, "clat") for p in points}
    if kinds == {"clat"}:
        return "p99 completion latency (clat)", f"{d} clat p99"
    if kinds == {"lat"}:
        return "p99 total latency", f"{d} total lat p99"
    return "p99 latency (clat; total where fio had no clat percentiles)", f"{d} p99"


def _axis(values: Sequence[float], *, log: bool) -> tuple[float, float]:
    if log:
        return math.log10(min(values)), math.log10(max(values))
    return min(values), max(values)


@dataclass(frozen=True)
class _Series:
    label: str
    key: tuple[str, ...]
    points: list[tuple[float, Point]]


def _series(points: Sequence[Point], x: str, by: Sequence[str]) -> list[_Series]:
    found: dict[tuple[str, ...], _Series] = {}
    for p in points:
        key = tuple(p.params.get(k, "") for k in by)
        label = ", ".join(
            v if k in ("run", "case") else f"{k}={v}"
            for k, v in zip(by, key, strict=True)
            if v  # a parameter this cell does not have (the host baseline's model) says nothing
        )
        value = param_number(x, p.params.get(x, ""))
        assert value is not None
        found.setdefault(key, _Series(label or "all", key, [])).points.append((value, p))
    for s in found.values():
        s.points.sort(key=lambda item: item[0])
    runs = {p.run: i for i, p in reversed(list(enumerate(points)))}  # report order

    def order(s: _Series) -> tuple[tuple[float, str], ...]:
        return tuple(
            (float(runs.get(v, 0)) if k == "run" else (param_number(k, v) or 0.0), v)
            for k, v in zip(by, s.key, strict=True)
        )

    return sorted(found.values(), key=order)


def _y_axis(
    ys: Sequence[float],
    positive: Sequence[float],
    unit: str,
    log_y: bool,
    top: float,
    plot_h: float,
) -> tuple[Callable[[float], float], tuple[Tick, ...]]:
    """The y position of a value, and the ticks: decades (1-2-5) on a log axis, round
    numbers from 0 in the shown unit on a linear one."""
    if log_y:
        y_lo = float(math.floor(math.log10(min(positive))))
        y_hi = float(math.ceil(math.log10(max(positive))))
        y_hi += 1 if y_hi == y_lo else 0
        y_values = [
            m * 10.0**e
            for e in range(int(y_lo), int(y_hi) + 1)
            for m in ((1, 2, 5) if y_hi - y_lo <= 3 else (1,))
            if 10.0**y_lo <= m * 10.0**e <= 10.0**y_hi
        ]
    else:
        top_value = max(ys)
        scale_div = _scale(top_value, unit)[0]
        step = nice_step(top_value / scale_div) * scale_div
        y_hi = step * math.ceil(top_value * 1.02 / step)
        y_lo = 0.0
        y_values = [i * step for i in range(round(y_hi / step) + 1)]

    def ypos(v: float) -> float:
        if log_y:
            t = (math.log10(max(v, 10.0**y_lo)) - y_lo) / (y_hi - y_lo)
        else:
            t = (v - y_lo) / (y_hi - y_lo)
        return top + plot_h - t * plot_h

    scale = _scale(max(ys), unit)
    ticks = tuple(
        Tick(ypos(v), human(v, unit) if log_y else human_fixed(v, scale, unit)) for v in y_values
    )
    return ypos, ticks


def _line_chart(
    title: str,
    x: str,
    y_label: str,
    unit: str,
    series: Sequence[_Series],
    metric_of: str,
    *,
    width: float = 1000,
    height: float = 330,
) -> SweepChart | None:
    left, right, top, bottom = 96.0, 24.0, 14.0, 52.0
    data: list[tuple[_Series, list[tuple[float, MetricView, Point]]]] = []
    for s in series:
        got = [(xv, m, p) for xv, p in s.points if (m := p.job.get(metric_of)) is not None]
        if got:
            data.append((s, got))
    xs = sorted({xv for _, got in data for xv, _, _ in got})
    if len(xs) < 2:
        return None
    ys = [v for _, got in data for _, m, _ in got for v in (m.stat.mean, m.stat.ci_high) if v]
    lows = [m.stat.ci_low or m.stat.mean for _, got in data for _, m, _ in got]
    if not ys:
        return None
    log_x = min(xs) > 0 and max(xs) / min(xs) >= 8
    positive = [v for v in (*ys, *lows) if v > 0]
    log_y = unit == "ns" and bool(positive) and max(positive) / min(positive) > 20
    plot_w, plot_h = width - left - right, height - top - bottom
    x_lo, x_hi = _axis(xs, log=log_x)

    def xpos(v: float) -> float:
        t = (math.log10(v) if log_x else v) - x_lo
        return left + t / (x_hi - x_lo) * plot_w

    ypos, y_ticks = _y_axis(ys, positive, unit, log_y, top, plot_h)
    if len(xs) <= 16:
        x_ticks = tuple(Tick(xpos(v), _value_label(x, v)) for v in xs)
    else:
        step = nice_step(xs[-1] - xs[0])
        first = math.ceil(xs[0] / step) * step
        count = int((xs[-1] - first) / step) + 1
        x_ticks = tuple(Tick(xpos(first + i * step), f"{first + i * step:g}") for i in range(count))
    lines = []
    for index, (s, got) in enumerate(data[:MAX_SERIES]):
        color = SERIES_COLORS[index % len(SERIES_COLORS)]
        dash = _DASHES[(index // len(SERIES_COLORS)) % len(_DASHES)]
        dots = []
        for xv, m, p in got:
            st = m.stat
            whisker = None
            if st.ci_low is not None and st.ci_high is not None:
                whisker = (ypos(max(st.ci_low, 1e-9)), ypos(st.ci_high))
            where = f"{p.run} " if p.run else ""
            dots.append(
                Dot(
                    xpos(xv),
                    ypos(st.mean),
                    f"{where}{p.case}/{p.job.name}: {x}={_value_label(x, xv)}, {y_label} "
                    f"{human(st.mean, unit)} (n={st.n}{', noisy' if st.noisy else ''})",
                    whisker,
                )
            )
        lines.append(
            SweepLine(
                label=s.label,
                color=color,
                dash=dash,
                points=" ".join(f"{d.x:.1f},{d.y:.1f}" for d in dots),
                dots=tuple(dots),
                values={_value_label(x, xv): _stat_text(m, unit) for xv, m, _ in got},
            )
        )
    return SweepChart(
        title=title,
        x_label=x + (" (bytes)" if x == "bs" else "") + (", log scale" if log_x else ""),
        y_label=y_label + (", log scale" if log_y else ""),
        width=width,
        height=height,
        left=left,
        top=top,
        plot_width=plot_w,
        plot_height=plot_h,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        lines=tuple(lines),
        x_values=tuple(_value_label(x, v) for v in xs),
        left_out=tuple(s.label for s, _ in data[MAX_SERIES:]),
    )


def _stat_text(metric: MetricView, unit: str) -> str:
    s = metric.stat
    half = None if s.ci_low is None or s.ci_high is None else (s.ci_high - s.ci_low) / 2
    return human_pm(s.mean, half, unit) + (" noisy" if s.noisy else "")


# --------------------------------------------------------------------------------------------


def _grid(points: Sequence[Point], x: str, y: str, metric: str) -> dict[tuple[float, float], Stat]:
    """(x value, y value) -> the metric's statistics, for the points that have all three."""
    grid: dict[tuple[float, float], Stat] = {}
    for p in points:
        xv, yv = param_number(x, p.params.get(x, "")), param_number(y, p.params.get(y, ""))
        m = p.job.get(metric)
        if xv is not None and yv is not None and m is not None:
            grid[(xv, yv)] = m.stat
    return grid


def sweeps(report: Report) -> list[Sweep]:
    """Every sweep of the report: per workload (rw) and direction, the charts of IOPS, mean and
    p99 latency against the first varying numeric parameter, and heat-maps for two."""
    points = _points(report)
    workloads: dict[str, list[Point]] = {}
    for p in points:
        workloads.setdefault(p.params.get("rw", ""), []).append(p)
    out = []
    for rw, members in workloads.items():
        for d in DIRECTIONS:
            pts = [p for p in members if p.job.get(f"{d}_iops") is not None]
            if len(pts) < 2:
                continue
            found = _sweep(rw, d, pts, several_runs=len({p.run for p in pts}) > 1)
            if found is not None:
                out.append(found)
    return out


def _sweep(rw: str, d: str, pts: Sequence[Point], *, several_runs: bool) -> Sweep | None:
    varying = _varying(pts)
    numeric = _x_order([k for k in varying if _numeric(pts, k)])
    if not numeric:
        return None
    x = numeric[0]
    by = [k for k in varying if k != x]
    if several_runs:
        by = ["run", *by]
    keyed = [Point(p.run, p.case, p.job, {**p.params, "run": p.run}, p.p99_kinds) for p in pts]
    series = _series(keyed, x, by)
    if len({(s.key, xv) for s in series for xv, _ in s.points}) < len(keyed):
        by = [*by, "case"]  # two cells with the same parameters: tell them apart by case
        keyed = [
            Point(p.run, p.case, p.job, {**p.params, "case": p.case}, p.p99_kinds) for p in keyed
        ]
        series = _series(keyed, x, by)
    single = {"read": "read", "randread": "read", "write": "write", "randwrite": "write"}
    what = rw if single.get(rw) == d else (f"{rw} {d}" if rw else d)
    lat_metric, lat_title, lat_axis = _latency_metric(pts, d)
    p99_title, p99_axis = _p99_label(pts, d)
    charts = [
        _line_chart(f"{what}: IOPS by {x}", x, f"{d} IOPS", "IOPS", series, f"{d}_iops"),
        _line_chart(f"{what}: {lat_title} by {x}", x, lat_axis, "ns", series, lat_metric),
        _line_chart(f"{what}: {p99_title} by {x}", x, p99_axis, "ns", series, f"{d}_lat_p99_ns"),
    ]
    heatmaps: list[HeatMap] = []
    if len(numeric) >= 2 and len(varying) == 2:
        y = numeric[1]
        for run in dict.fromkeys(p.run for p in pts):
            mine = [p for p in pts if p.run == run]
            where = f" ({run})" if run else ""
            for metric, label, unit in (
                (f"{d}_iops", f"{d} IOPS", "IOPS"),
                (lat_metric, f"{d} {lat_title}", "ns"),
            ):
                name = f"{what}{where}: {label} by {x} × {y}"
                found = heat_map(name, (x, y), _grid(mine, x, y, metric), label, unit, _value_label)
                if found is not None:
                    heatmaps.append(found)
    drawn = tuple(c for c in charts if c is not None)
    if not drawn:
        return None
    return Sweep(what, x, tuple(by), drawn, tuple(heatmaps))
