"""Packed repetitions (an imported case's summaries.json + raw.tar) read as unpacked ones."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from vmlab.errors import ResultError
from vmlab.results.rundir import CaseDir, read_raw, read_summary
from vmlab.results.rundir.packed import (
    RAW_TAR,
    SUMMARIES,
    PackedRepetition,
    repetition_summaries,
    tar_bytes,
    write_packed,
)


def _rep(job: str, n: int, raw: bytes, iops: float) -> PackedRepetition:
    return PackedRepetition(job, n, raw, {"metrics": {"read_iops": iops}, "fio": None})


def test_written_pack_is_a_plain_tar_and_reads_back(tmp_path: Path) -> None:
    long_job = "randread-" + "x" * 200  # beyond ustar's 155 + 100 characters: a pax header
    reps = [
        _rep("seq", 1, b"fio: warning\n{}", 1.0),
        _rep("seq", 2, b"\xff\x00 not utf-8", 2.0),
        _rep(long_job, 1, b"", 3.0),
    ]
    write_packed(tmp_path, reps)
    with tarfile.open(tmp_path / RAW_TAR) as tar:
        assert tar.getnames() == [f"jobs/{r.job}/r{r.repetition}/fio.json" for r in reps]
    for rep in reps:
        where = tmp_path / "jobs" / rep.job / f"r{rep.repetition}"
        assert read_raw(where) == rep.raw
        assert read_summary(where) == rep.summary
    listed = list(repetition_summaries(tmp_path))
    assert [(j, n, s["metrics"]["read_iops"]) for j, n, s, _ in listed] == [
        (long_job, 1, 3.0),
        ("seq", 1, 1.0),
        ("seq", 2, 2.0),
    ]
    # GNU tar extracts it where an unpacked case keeps its raw files
    subprocess.run(["tar", "-xf", RAW_TAR], cwd=tmp_path, check=True)
    assert (tmp_path / "jobs" / "seq" / "r2" / "fio.json").read_bytes() == b"\xff\x00 not utf-8"


@pytest.mark.parametrize("sizes", [[], [0], [1, 511, 512, 513, 0], [18 * 512], [19 * 512 - 1]])
def test_tar_bytes_are_what_tarfile_encodes(sizes: list[int]) -> None:
    """Each header byte for byte as TarInfo.tobuf writes it (ustar, its name split in two
    past 100 bytes, pax past 255), and the end as TarFile.close writes it: two zero blocks,
    then zeros to a 10 KiB record. [18 * 512] ends the data one block before a record's
    end, where padding only to the record left a lone zero block."""
    mtime = 1_700_000_000
    names = ["jobs/seq/r1/fio.json", "jobs/é-lat/r2/fio.json", f"jobs/{'x' * 120}/r3/fio.json"]
    names.append(f"jobs/{'y' * 300}/r4/fio.json")
    members = [(names[i % 4], bytes([i]) * size) for i, size in enumerate(sizes)]
    written = tar_bytes(members, mtime)
    expected = b""
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), mtime, 0o644
        fmt = tarfile.USTAR_FORMAT if "y" not in name else tarfile.PAX_FORMAT
        expected += info.tobuf(fmt, "utf-8", "surrogateescape") + data
        expected += bytes(-len(data) % tarfile.BLOCKSIZE)
    assert written[: len(expected)] == expected
    end = written[len(expected) :]
    assert len(written) % tarfile.RECORDSIZE == 0
    assert len(end) >= 2 * tarfile.BLOCKSIZE and end == bytes(len(end))
    with tarfile.open(fileobj=io.BytesIO(written)) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == members  # type: ignore[union-attr]


def test_a_pack_is_never_written_twice(tmp_path: Path) -> None:
    write_packed(tmp_path, [_rep("a", 1, b"{}", 1.0)])
    with pytest.raises(ResultError, match="refusing to overwrite"):
        write_packed(tmp_path, [_rep("a", 1, b"{}", 1.0)])


def test_both_layouts_in_one_case_are_read_together(tmp_path: Path) -> None:
    write_packed(tmp_path, [_rep("a", 1, b"{}", 1.0), _rep("a", 10, b"{}", 10.0)])
    r0 = tmp_path / "jobs" / "a" / "r0"
    r0.mkdir(parents=True)
    (r0 / "summary.json").write_text(json.dumps({"metrics": {"read_iops": 0.5}}))
    metrics = CaseDir(tmp_path, "c").stored_metrics()
    assert metrics == [
        ("a", 0, {"read_iops": 0.5}),
        ("a", 1, {"read_iops": 1.0}),
        ("a", 10, {"read_iops": 10.0}),
    ]


def test_a_missing_repetition_names_where_it_was_looked_for(tmp_path: Path) -> None:
    write_packed(tmp_path, [_rep("a", 1, b"{}", 1.0)])
    with pytest.raises(ResultError, match="no packed summary") as info:
        read_summary(tmp_path / "jobs" / "a" / "r2")
    assert SUMMARIES in (info.value.hint or "")
    with pytest.raises(ResultError, match=r"no fio\.json") as raw_info:
        read_raw(tmp_path / "jobs" / "b" / "r1")
    assert RAW_TAR in (raw_info.value.hint or "")


def test_a_damaged_summaries_file_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / SUMMARIES).write_text("[1, 2")
    assert list(repetition_summaries(tmp_path)) == []
    assert "cannot read summaries.json" in caplog.text
    (tmp_path / SUMMARIES).unlink()
    (tmp_path / SUMMARIES).write_text(json.dumps({"no-slash": {}, "a/r1": {"metrics": {}}}))
    assert [(j, n) for j, n, _, _ in repetition_summaries(tmp_path)] == [("a", 1)]
    assert "'no-slash' is not <job>/r<N>" in caplog.text
