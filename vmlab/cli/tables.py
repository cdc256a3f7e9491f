"""The results tables every command prints the same way: storage (fio) rows with the ratio
to the first configuration and to the host baseline, and network (iperf3) rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.markup import escape
from rich.table import Table

from vmlab.cli.app import out
from vmlab.metrics import NET_HEADLINE, job_kind
from vmlab.report.table import Row, build_rows

Result = tuple[str, str, int, dict[str, float]]  # case id, job, repetition, flat metrics


def print_results(
    results: Sequence[Result],
    *,
    title: str,
    case_column: str = "configuration",
    stops: Mapping[tuple[str, str], str] | None = None,
) -> None:
    """Network rows first (one per repetition), then one storage row per configuration and job
    (repetitions averaged; the warm-up r0 is never counted). ``stops``: (case, job) -> how
    many repetitions it took and why (``repeat: {ci_pct}``), shown in a "reps" column."""
    counted = [r for r in results if r[2]]
    _print_network([r for r in counted if job_kind(r[3]) == "iperf3"])
    rows = build_rows([(c, j, m) for c, j, _, m in counted if job_kind(m) == "fio"])
    if not rows:
        return
    with_host = any(r.of_host is not None for r in rows)
    table = Table(title=title, title_justify="left")
    for name in (case_column, "job", *(("reps",) if stops else ())):
        table.add_column(name, justify="left")
    for name in (
        "IOPS",
        "clat mean µs",
        "clat p99 µs",
        "× first",
        *(("of host",) if with_host else ()),
    ):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            escape(row.case_id),
            escape(row.job),
            *((escape(stops.get((row.case_id, row.job), "-")),) if stops else ()),
            _iops(row),
            "-" if row.lat_mean_us is None else f"{row.lat_mean_us:,.1f}",
            "-" if row.lat_p99_us is None else f"{row.lat_p99_us:,.1f}",
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            *(("-" if row.of_host is None else f"{row.of_host:.0%}",) if with_host else ()),
        )
    out.print(table)
    if stops:
        out.print("reps: measured repetitions and why they stopped (`vmlab report` says more)")
    if any(r.noisy for r in rows):
        out.print("! noisy: a CV above the report's threshold; ± is the CI half-width of the mean")


def _iops(row: Row) -> str:
    """IOPS with the ± half-width of its confidence interval (as a share of the mean, so the
    column stays narrow) and a '!' on a noisy cell, as the report flags it."""
    text = f"{row.iops:,.0f}"
    if row.iops_ci is not None and row.iops:
        text += f" ±{row.iops_ci / row.iops:.0%}"
    return text + (" !" if row.noisy else "")


def _print_network(results: Sequence[Result]) -> None:
    if not results:
        return
    table = Table(title="network (iperf3, guest as client)", title_justify="left")
    for name in ("configuration", "job"):
        table.add_column(name, justify="left")
    for name in ("received Gbit/s", "retransmits"):
        table.add_column(name, justify="right")
    for case_id, job, repetition, metrics in results:
        table.add_row(
            escape(case_id),
            f"{escape(job)} r{repetition}",
            f"{metrics[NET_HEADLINE] / 1e9:.2f}",
            f"{metrics.get('retransmits', 0):.0f}",
        )
    out.print(table)
