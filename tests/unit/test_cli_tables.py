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
