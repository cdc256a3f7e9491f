"""The results index: a SQLite cache over the run directories of one results root.

The files are the truth; the index is a cache that makes listing and querying fast. Any run can
be re-read from its directory (``scan_run``) and the whole index rebuilt (``reindex``).

Schema versions are counted in ``PRAGMA user_version`` and reached through ``MIGRATIONS``, an
ordered tuple of functions: migration *k* takes a database at version *k - 1* to version *k*.
To change the schema, append a function (never edit a released one). The file is in WAL mode
with ``synchronous = NORMAL``: readers do not block the writer, and a commit does not wait for
the disk (a crash may lose the last transactions, never consistency; reindex restores them).
Each migration runs in its own transaction together with the version bump, under
``BEGIN IMMEDIATE``, so two processes opening an old index at once apply it exactly once.

Tables (v3):
    runs(id, path, name, status, started, finished, source, host, stamp, indexed,
         cases, samples)                        v2: the run's case count and measured
                                                repetitions, written with its rows (what
                                                `results list` shows: not counted per list)
    cases(run, case_id, status, params JSON)
    parameters(run, case_id, job, key, value)   job = '' for the case's own axis values;
                                                a job's fio options under its name
    metrics(run, case_id, job, repetition, metric, value)   repetition 0 = warm-up;
                                                v3: WITHOUT ROWID, no index but its key
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmlab.errors import ResultError, VmlabError
from vmlab.results.rundir import (
    RunRecord,
    is_run_dir,
    now_iso,
    run_dirs,
    run_stamp,
    scan_run,
)

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
BUSY_TIMEOUT_S = 30.0
_HINT_REINDEX = (
    "the run directories are the truth: delete the index file and run `vmlab results reindex`"
)

Migration = Callable[[sqlite3.Connection], None]


# --------------------------------------------------------------------------------------------
# Schema and migrations


def _migration_1_initial(conn: sqlite3.Connection) -> None:
    statements = [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            started TEXT,
            finished TEXT,
            source TEXT NOT NULL CHECK (source IN ('native', 'import')),
            host TEXT,
            stamp INTEGER NOT NULL,
            indexed TEXT NOT NULL
        )""",
        """CREATE TABLE cases (
            run TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            case_id TEXT NOT NULL,
            status TEXT NOT NULL,
            params TEXT NOT NULL,
            PRIMARY KEY (run, case_id)
        )""",
        """CREATE TABLE parameters (
            run TEXT NOT NULL,
            case_id TEXT NOT NULL,
            job TEXT NOT NULL DEFAULT '',
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (run, case_id, job, key),
            FOREIGN KEY (run, case_id) REFERENCES cases(run, case_id) ON DELETE CASCADE
        )""",
        """CREATE TABLE metrics (
            run TEXT NOT NULL,
            case_id TEXT NOT NULL,
            job TEXT NOT NULL,
            repetition INTEGER NOT NULL,
            metric TEXT NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (run, case_id, job, repetition, metric),
            FOREIGN KEY (run, case_id) REFERENCES cases(run, case_id) ON DELETE CASCADE
        )""",
        "CREATE INDEX parameters_by_value ON parameters(key, value)",
        "CREATE INDEX metrics_by_name ON metrics(metric, run)",
    ]
    for statement in statements:
        conn.execute(statement)


def _migration_2_run_counts(conn: sqlite3.Connection) -> None:
    """Each run's counts in its row: counting them per listing was 60 of the 85 ms that
    listing 10,000 runs took."""
    conn.execute("ALTER TABLE runs ADD COLUMN cases INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE runs ADD COLUMN samples INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        """UPDATE runs SET
            cases = (SELECT COUNT(*) FROM cases c WHERE c.run = runs.id),
            samples = (SELECT COUNT(*) FROM (
                SELECT DISTINCT case_id, job, repetition FROM metrics m
                WHERE m.run = runs.id AND m.repetition >= 1
            ))"""
    )


def _migration_3_metrics_clustered(conn: sqlite3.Connection) -> None:
    """metrics becomes its primary key (WITHOUT ROWID), and loses metrics_by_name.

    Each row went into three b-trees (the rowid table, the key's index, metrics_by_name); now
    into one. Importing 10,000 files (240,000 rows) took 0.3 s less CPU in this process. No
    command looks a metric up across all runs; by run or by parameters
    (:func:`query_metrics`), the key's (run, case_id) prefix finds the rows."""
    conn.execute(
        """CREATE TABLE metrics_v3 (
            run TEXT NOT NULL,
            case_id TEXT NOT NULL,
            job TEXT NOT NULL,
            repetition INTEGER NOT NULL,
            metric TEXT NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (run, case_id, job, repetition, metric),
            FOREIGN KEY (run, case_id) REFERENCES cases(run, case_id) ON DELETE CASCADE
        ) WITHOUT ROWID"""
    )
    conn.execute(
        "INSERT INTO metrics_v3 (run, case_id, job, repetition, metric, value)"
        " SELECT run, case_id, job, repetition, metric, value FROM metrics"
    )
    conn.execute("DROP TABLE metrics")  # and its index metrics_by_name
    conn.execute("ALTER TABLE metrics_v3 RENAME TO metrics")


MIGRATIONS: tuple[Migration, ...] = (
    _migration_1_initial,
    _migration_2_run_counts,
    _migration_3_metrics_clustered,
)
"""Migration k (1-based) takes the schema from version k - 1 to k. Append only."""


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the schema to ``len(migrations)``; returns the version reached.

    ``conn`` must be in autocommit mode (``isolation_level=None``): each step is its own
    ``BEGIN IMMEDIATE`` transaction, and the version is re-read under that lock.
    """
    target = len(migrations)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(conn)
            if current > target:
                raise ResultError(
                    f"the index has schema version {current}; this vmlab knows up to {target}",
                    hint="upgrade vmlab, or " + _HINT_REINDEX,
                )
            if current == target:
                conn.execute("COMMIT")
                return current
            migrations[current](conn)
            conn.execute(f"PRAGMA user_version = {current + 1:d}")
            conn.execute("COMMIT")
            log.info("results index migrated to schema version %d", current + 1)
        except BaseException:
            conn.execute("ROLLBACK")
            raise


@contextmanager
def open_index(
    db_path: Path, *, migrations: Sequence[Migration] = MIGRATIONS
) -> Iterator[sqlite3.Connection]:
    """An autocommit connection to a migrated index; SQLite errors become ResultError."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise ResultError(f"cannot open the results index: {exc}", path=db_path) from exc
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        # A cache of the run directories: a commit need not wait for the disk (fsync cost
        # ~8 ms per run when importing); the write-ahead log keeps the file consistent.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn, migrations)
        yield conn
    except sqlite3.DatabaseError as exc:
        raise ResultError(f"results index error: {exc}", path=db_path, hint=_HINT_REINDEX) from exc
    finally:
        conn.close()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def default_index_path(results_root: Path) -> Path:
    return results_root / INDEX_NAME


# --------------------------------------------------------------------------------------------
# Writing the index


def _delete(conn: sqlite3.Connection, run_id: str) -> None:
    conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))  # cascades to every other table


def _measured(rec: RunRecord) -> int:
    """The run's measured repetitions: what migration 2 counts in its metrics rows."""
    return len(
        {(s.case_id, s.job, s.repetition) for s in rec.samples if s.repetition >= 1 and s.metrics}
    )


def _insert(conn: sqlite3.Connection, rec: RunRecord) -> None:
    conn.execute(
        "INSERT INTO runs (id, path, name, status, started, finished, source, host, stamp,"
        " indexed, cases, samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            rec.id,
            str(rec.path),
            rec.name,
            rec.status,
            rec.started,
            rec.finished,
            rec.source,
            rec.host,
            rec.stamp,
            now_iso(),
            len(rec.cases),
            _measured(rec),
        ),
    )
    conn.executemany(
        "INSERT INTO cases (run, case_id, status, params) VALUES (?, ?, ?, ?)",
        [(rec.id, c.case_id, c.status, json.dumps(dict(c.params))) for c in rec.cases],
    )
    jobs_by_case: dict[str, set[str]] = {}
    for sample in rec.samples:
        jobs_by_case.setdefault(sample.case_id, set()).add(sample.job)
    rows = [(rec.id, c.case_id, "", k, v) for c in rec.cases for k, v in c.params.items()]
    for case in rec.cases:
        for job in sorted(jobs_by_case.get(case.case_id, ())):
            rows.extend(
                (rec.id, case.case_id, job, k, v) for k, v in rec.job_params.get(job, {}).items()
            )
    conn.executemany(
        "INSERT INTO parameters (run, case_id, job, key, value) VALUES (?, ?, ?, ?, ?)", rows
    )
    conn.executemany(
        "INSERT INTO metrics (run, case_id, job, repetition, metric, value)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (rec.id, s.case_id, s.job, s.repetition, metric, value)
            for s in rec.samples
            for metric, value in s.metrics.items()
        ],
    )


def index_record(conn: sqlite3.Connection, rec: RunRecord) -> None:
    """Replace one run's rows with ``rec`` (one transaction)."""
    with _transaction(conn):
        _delete(conn, rec.id)
        _insert(conn, rec)


def index_run(db_path: Path, run_dir: Path) -> None:
    """(Re-)index one run directory: its previous rows, if any, are replaced."""
    rec = scan_run(run_dir)
    with open_index(db_path) as conn:
        index_record(conn, rec)
    log.info("indexed %s (%d cases, %d samples)", rec.id, len(rec.cases), len(rec.samples))


def index_run_in(results_root: Path, run_dir: Path) -> None:
    """Keep the default index of ``results_root`` in step after a run wrote its final status;
    the files are the truth, so a failure only warns."""
    try:
        index_run(default_index_path(results_root), run_dir)
    except VmlabError as exc:
        log.warning("could not index %s: %s (run `vmlab results reindex`)", run_dir, exc)


@dataclass(frozen=True)
class RunRow:
    """One run as the index knows it."""

    id: str
    location: str
    """The run directory as indexed; :attr:`path` as a Path (made on demand: `vmlab results
    list` reads 10,000 rows and prints none of their paths)."""
    name: str
    status: str
    started: str | None
    finished: str | None
    source: str
    host: str | None
    cases: int
    samples: int
    indexed: str

    @property
    def path(self) -> Path:
        return Path(self.location)


_RUN_QUERY = """
    SELECT id, path, name, status, started, finished, source, host, cases, samples, indexed
    FROM runs
"""


def _row(values: Sequence[Any]) -> RunRow:
    # positional, in _RUN_QUERY's column order (keywords cost a tenth of `results list`)
    v = values
    return RunRow(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], int(v[8]), int(v[9]), v[10])


_ALL_RUNS_QUERY = _RUN_QUERY + "ORDER BY COALESCE(started, '') DESC, id DESC"


def list_runs(db_path: Path) -> list[RunRow]:
    """Every indexed run, newest first (by start time, then id)."""
    with open_index(db_path) as conn:
        rows = conn.execute(_ALL_RUNS_QUERY).fetchall()
    return [_row(r) for r in rows]


def get_run(db_path: Path, run_id: str) -> RunRow:
    """One indexed run. Raises ResultError if the index does not know it."""
    with open_index(db_path) as conn:
        row = conn.execute(_RUN_QUERY + "WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise ResultError(
            f"run {run_id!r} is not in the index",
            path=db_path,
            hint="`vmlab results reindex` rebuilds the index from the run directories",
        )
    return _row(row)


def remove_run(db_path: Path, run_id: str, *, delete_files: bool) -> Path:
    """Drop a run from the index and, with ``delete_files``, delete its directory.

    Files go first: if deleting them fails, the index still lists the run. Returns its path.
    """
    path = get_run(db_path, run_id).path
    if delete_files and path.exists():
        if not is_run_dir(path):
            raise ResultError(
                "refusing to delete: not a vmlab run directory (no spec.json)",
                path=path,
                hint="delete it by hand if it really is a run",
            )
        shutil.rmtree(path)
        log.info("deleted %s", path)
    with open_index(db_path) as conn, _transaction(conn):
        _delete(conn, run_id)
    return path


@dataclass(frozen=True)
class SyncResult:
    indexed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)
    """Directory -> why it could not be read."""


def _subdirs(results_root: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(results_root) as entries:
            return [e for e in entries if e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def sync_index(results_root: Path, db_path: Path | None = None) -> SyncResult:
    """Index run directories that are new or changed since they were indexed (their status.json
    changed), and drop rows of runs whose directory is gone."""
    db = db_path or default_index_path(results_root)
    indexed, removed, skipped = [], [], {}
    with open_index(db) as conn:
        # id -> stamp (paths only for the runs gone: reading 10,000 costs more than the rest)
        known: dict[str, int] = dict(conn.execute("SELECT id, stamp FROM runs").fetchall())
        present: set[str] = set()
        changed: list[Path] = []
        # One stat per indexed run that did not change (10,000 runs: ~25 ms): a run's status
        # changes only in its own directory, so nothing cheaper can tell that it did.
        for entry in _subdirs(results_root):
            seen = known.get(entry.name)
            if seen is not None:
                try:
                    stamp = os.stat(f"{entry.path}/status.json").st_mtime_ns  # noqa: PTH116
                except OSError:
                    stamp = run_stamp(Path(entry.path))  # no status.json: spec.json's
                if stamp == seen:
                    present.add(entry.name)
                    continue
            path = Path(entry.path)
            if is_run_dir(path):
                present.add(entry.name)
                changed.append(path)
        for path in sorted(changed):
            try:
                index_record(conn, scan_run(path))
            except ResultError as exc:
                skipped[str(path)] = str(exc)
                continue
            indexed.append(path.name)
        for run_id in known:
            if run_id in present:
                continue
            (where,) = conn.execute("SELECT path FROM runs WHERE id = ?", (run_id,)).fetchone()
            if not is_run_dir(Path(where)):
                with _transaction(conn):
                    _delete(conn, run_id)
                removed.append(run_id)
    return SyncResult(tuple(indexed), tuple(removed), skipped)


def reindex(results_root: Path, db_path: Path | None = None) -> SyncResult:
    """Rebuild the index from the run directories alone (every row is dropped first)."""
    db = db_path or default_index_path(results_root)
    with open_index(db) as conn:
        with _transaction(conn):
            dropped = [row[0] for row in conn.execute("SELECT id FROM runs")]
            conn.execute("DELETE FROM runs")
        indexed, skipped = [], {}
        for path in run_dirs(results_root):
            try:
                index_record(conn, scan_run(path))
            except ResultError as exc:
                skipped[str(path)] = str(exc)
                continue
            indexed.append(path.name)
    gone = tuple(r for r in dropped if r not in indexed)
    return SyncResult(tuple(indexed), gone, skipped)


@dataclass(frozen=True)
class MetricRow:
    run: str
    case_id: str
    job: str
    repetition: int
    metric: str
    value: float


def query_metrics(
    db_path: Path,
    *,
    metric: str,
    params: Mapping[str, str] | None = None,
    run: str | None = None,
    include_warmup: bool = False,
) -> list[MetricRow]:
    """Values of one metric, filtered by parameters: a case's axis values or its job's options
    (``{"disks.0.model": "nvme"}``, ``{"iodepth": "16"}``)."""
    sql = ["SELECT m.run, m.case_id, m.job, m.repetition, m.metric, m.value FROM metrics m"]
    where = ["m.metric = ?"]
    args: list[Any] = [metric]
    for i, (key, value) in enumerate((params or {}).items()):
        if i == 0:  # the cases that have it (parameters_by_value), then their rows by key
            where.append(
                "(m.run, m.case_id) IN (SELECT p.run, p.case_id FROM parameters p"
                " WHERE p.key = ? AND p.value = ?)"
            )
            args += [key, value]
        where.append(
            "EXISTS (SELECT 1 FROM parameters p WHERE p.run = m.run AND p.case_id = m.case_id"
            " AND p.job IN ('', m.job) AND p.key = ? AND p.value = ?)"
        )
        args += [key, value]
    if run is not None:
        where.append("m.run = ?")
        args.append(run)
    if not include_warmup:
        where.append("m.repetition >= 1")
    sql.append("WHERE " + " AND ".join(where))
    sql.append("ORDER BY m.run, m.case_id, m.job, m.repetition")
    with open_index(db_path) as conn:
        rows = conn.execute(" ".join(sql), args).fetchall()
    return [MetricRow(r[0], r[1], r[2], int(r[3]), r[4], float(r[5])) for r in rows]
