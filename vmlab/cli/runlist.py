"""`vmlab results list`: the runs of a results root, newest first, as aligned columns.

Without Typer (vmlab.cli.results attaches it; vmlab.cli.quick runs it directly): listing
10,000 runs is mostly start-up, and the index's own work (syncing, reading) is ~0.1 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Span, Text

from vmlab.results.index import RunRow, default_index_path, list_runs, sync_index


def warn_skipped(console: Console, skipped: dict[str, str]) -> None:
    for path, reason in skipped.items():
        console.print(f"[yellow]skipped[/] {escape(path)}: {escape(reason)}")


def list_runs_command(results: Path) -> None:
    """`vmlab results list`: the runs, newest first (new or changed run directories are
    indexed first)."""
    console = Console(highlight=False)
    if not results.is_dir():
        console.print(f"no runs: {escape(str(results))} does not exist")
        return
    synced = sync_index(results)
    warn_skipped(console, dict(synced.skipped))
    rows = list_runs(default_index_path(results))
    if not rows:
        console.print(f"no runs under {escape(str(results))}")
        return
    listing = _run_list(rows, f"runs in {results}")
    if console.is_terminal:
        console.print(listing, end="", soft_wrap=True)
    else:  # piped: the same text without styles, and without rich rendering 10,000 lines
        console.file.write(listing.plain)


_STATUS_STYLE = {"complete": "green", "failed": "red", "interrupted": "yellow"}


def _cells(r: RunRow) -> tuple[str, ...]:
    started, host = r.started or "-", r.host or "-"
    return (r.id, r.name, r.status, r.source, started, str(r.cases), str(r.samples), host)


def _run_list(rows: Sequence[RunRow], title: str) -> Text:
    """The runs as aligned columns in one Text: a rich Table measures every cell and takes
    seconds for 10,000 runs; this takes milliseconds."""
    header = ("run", "name", "status", "source", "started", "cases", "samples", "host")
    cells = [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    right = {5, 6}  # counts
    # One format for every line; the status column starts at the same place on each.
    layout = "  ".join(f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths)).format
    status_at = widths[0] + widths[1] + 4
    head = layout(*header).rstrip() + "\n"
    lines = [title + "\n", head]
    offset = len(lines[0])
    spans = [Span(offset, offset + len(head), "bold")]
    offset += len(head)
    for values in cells:
        text = layout(*values).rstrip() + "\n"
        style = _STATUS_STYLE.get(values[2])
        if style:
            spans.append(Span(offset + status_at, offset + status_at + len(values[2]), style))
        lines.append(text)
        offset += len(text)
    return Text("".join(lines), spans=spans)
