"""The terminal results table: the interval and the noisy flag of repeated cells."""

from __future__ import annotations


def test_terminal_table_shows_the_interval_and_the_noisy_flag() -> None:
    from rich.console import Console

    import vmlab.cli.tables as tables

    steady = {"read_iops": 1000.0, "read_lat_mean_ns": 1000.0, "read_lat_p99_ns": 2000.0}
    jumpy = {"read_iops": 3000.0, "read_lat_mean_ns": 1000.0, "read_lat_p99_ns": 2000.0}
    near = {**steady, "read_iops": 1010.0}
    console = Console(width=100, record=True)
    old, tables.out = tables.out, console
    try:
        tables.print_results(
            [
                ("a", "j", 1, steady),
                ("a", "j", 2, near),
                ("b", "j", 1, steady),
                ("b", "j", 2, jumpy),
            ],
            title="t",
        )
    finally:
        tables.out = old
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert "±" in lines["a"] and " !" not in lines["a"]
    assert "±" in lines["b"] and " !" in lines["b"]
    assert "noisy" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_terminal_table_shows_how_many_repetitions_and_why_when_asked() -> None:
    from rich.console import Console

    import vmlab.cli.tables as tables

    metrics = {"read_iops": 1000.0, "read_lat_mean_ns": 1000.0, "read_lat_p99_ns": 2000.0}
    console = Console(width=100, record=True)
    old, tables.out = tables.out, console
    try:
        results = [("a", "j", 1, metrics), ("b", "j", 1, metrics)]
        tables.print_results(results, title="t")
        plain = console.export_text()
        tables.print_results(results, title="t", stops={("a", "j"): "3 ci", ("b", "j"): "20 max"})
    finally:
        tables.out = old
    text = console.export_text()
    assert "reps" not in plain
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert "│ 3 ci " in lines["a"] and "│ 20 max " in lines["b"]
    assert "why they stopped" in text


def test_progress_reaches_its_total_when_jobs_stop_before_max() -> None:
    """repeat {min 3, max 20}: the bar counts every job at 20; a job that is sure after 3
    moves the bar by the 17 it did not need, so a finished bench shows a full bar."""
    from types import SimpleNamespace
    from typing import Any

    from rich.progress import Progress

    from vmlab.cli.bench import RichEvents

    case: Any = SimpleNamespace(id="a", jobs=["j", "k"])
    with Progress(disable=True) as progress:
        events = RichEvents(progress, total_jobs=2 * 20, runs_per_job=20)
        for r in range(1, 4):
            events.job_finished(case, "j", r, {})
        events.job_stopped(case, "j", 3)
        for r in range(1, 21):
            events.job_finished(case, "k", r, {})
        events.job_stopped(case, "k", 20)
        (task,) = progress.tasks
        assert (task.completed, task.total) == (40, 40)
