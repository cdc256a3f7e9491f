"""fio output parsing: every fio 2.x/3.x layout in tests/data/fio, checked against the files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vmlab.errors import ResultError
from vmlab.fio.combine import combine_jobs, percentiles_from_bins
from vmlab.fio.model import FioOutput, JobResult, Latency
from vmlab.fio.parse import ALL_CLIENTS, parse_fio_file, parse_fio_output, plat_idx_to_val
from vmlab.fio.summary import summarize
from vmlab.metrics import FIO_METRICS as METRICS

DATA = Path(__file__).resolve().parents[1] / "data" / "fio"
FIO_218 = DATA / "fio-2.18-ssd"
FIO_31 = DATA / "fio-3.1-raid-ssd"
FIO_333 = DATA / "fio-3.33"

CORPUS = sorted(FIO_218.glob("*.json")) + sorted(FIO_31.glob("*.json"))
LOCAL = sorted(p for p in FIO_333.iterdir() if p.suffix in {".json", ".txt"})
JSON_PLUS = [
    "randrw-jsonplus.json",
    "randrw-numjobs2.json",
    "randrw-numjobs2-group-reporting.json",
    "randrw-lat-percentiles.json",
    "client-two-servers.json",
]


def local(name: str) -> FioOutput:
    return parse_fio_file(FIO_333 / name)


def test_data_is_there() -> None:
    assert len(list(FIO_218.glob("*.json"))) == 16
    assert len(list(FIO_31.glob("*.json"))) == 98
    assert len(LOCAL) >= 14


@pytest.mark.parametrize("path", CORPUS + LOCAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_file_parses_and_round_trips(path: Path) -> None:
    out = parse_fio_file(path)
    assert out.fio_version.startswith("fio-")
    assert out.jobs
    for job in out.jobs:
        assert job.name
        assert job.directions() or job.error
    # Results are saved as JSON and loaded again: nothing may change on the way.
    assert FioOutput.model_validate_json(out.model_dump_json()) == out
    assert FioOutput.model_validate(json.loads(out.model_dump_json())) == out
    assert FioOutput.model_validate(out.model_dump()) == out


def test_models_are_frozen() -> None:
    job = local("randread.json").jobs[0]
    with pytest.raises(ValueError, match="frozen"):
        job.name = "other"


# --- numbers read by hand from the files --------------------------------------------------


def test_fio_218_usec_fields_become_ns() -> None:
    out = parse_fio_file(FIO_218 / "randread-01.json")
    assert out.fio_version == "fio-2.18-59-g618e"
    assert out.timestamp == 1491067859
    job = out.jobs[0]
    assert job.name == "random-io"
    assert job.options["rw"] == "randread"
    assert job.options["iodepth"] == "01"
    assert job.write is None and job.trim is None
    read = job.read
    assert read is not None
    assert read.iops == pytest.approx(73.184143)
    assert read.bw_kib_s == 292
    assert read.runtime_ms == 60013
    assert read.total_ios == 4392
    # fio 2.x printed KiB under the name io_bytes: 4392 I/Os of 4 KiB.
    assert read.io_kib == 17568 == 4392 * 4
    assert read.clat is not None and read.slat is not None and read.lat is not None
    assert read.clat.mean_ns == pytest.approx(13636.394809 * 1000)
    assert read.clat.min_ns == 2761_000
    assert read.clat.stdev_ns == pytest.approx(3949.424092 * 1000)
    assert read.clat.p50_ns == 13504_000
    assert read.clat.p99_ns == 22912_000
    assert read.clat.p99_9_ns == 24960_000
    assert read.clat.percentiles_ns["99.990000"] == 26240_000
    assert "0.00" not in read.clat.percentiles_ns  # fio 2.x table padding
    assert len(read.clat.percentiles_ns) == 17
    assert read.clat.samples is None  # fio 2.18 prints no N
    assert read.slat.min_ns == 12_000
    assert read.lat.mean_ns == pytest.approx(13652.220173 * 1000)
    assert read.lat.percentiles_ns == {}
    assert job.usr_cpu_pct == pytest.approx(0.046657)
    assert job.ctx == 4426
    assert job.runtime_ms == 60013  # no job_runtime in 2.18: the longest direction
    assert [d["name"] for d in out.disk_util] == ["md10", "sdb", "sdc", "sdd", "sde"]


def test_fio_31_ns_fields() -> None:
    out = parse_fio_file(FIO_31 / "randread-4-8.json")
    job = out.jobs[0]
    assert job.options["numjobs"] == "8" and job.options["group_reporting"] == "1"
    read = job.read
    assert read is not None and read.clat is not None and read.lat is not None
    assert read.iops == pytest.approx(46422.885904)
    assert read.io_kib == 11141864  # io_kbytes, not io_bytes (11409268736 bytes)
    assert read.clat.p99_9_ns == 1138688
    assert read.clat.p50_ns == 667648
    assert read.clat.mean_ns == pytest.approx(672433.772864)
    assert read.lat.mean_ns == pytest.approx(685672.792770)

    write = parse_fio_file(FIO_31 / "randwrite-1-1.json").jobs[0].write
    assert write is not None and write.clat is not None
    assert write.iops == pytest.approx(7428.909518)
    assert write.clat.p99_9_ns == 7176192


def test_fio_333_local_sample_fields() -> None:
    out = local("randrw-jsonplus.json")
    assert out.fio_version == "fio-3.33"
    job = out.jobs[0]
    read, write = job.read, job.write
    assert read is not None and write is not None and job.trim is None
    assert read.iops == pytest.approx(12790.604698)
    assert read.bw_kib_s == 51162
    assert read.io_kib == 102376
    assert read.clat is not None and read.lat is not None and read.slat is not None
    assert read.clat.samples == 25594 == read.total_ios
    assert read.clat.p50_ns == 46336
    assert read.clat.p99_ns == 101888
    assert read.lat.mean_ns == pytest.approx(67458.632805)
    assert read.clat.bins_ns is not None and len(read.clat.bins_ns) == 303
    assert sum(read.clat.bins_ns.values()) == 25594
    assert job.runtime_ms == 2000  # fio 3's job_runtime
    assert job.options["rwmixread"] == "90"


@pytest.mark.parametrize("path", LOCAL, ids=lambda p: p.name)
def test_local_samples_populate_the_same_fields(path: Path) -> None:
    for job in parse_fio_file(path).jobs:
        if job.error:
            continue
        for name, d in job.directions().items():
            assert d.iops > 0 and d.bw_kib_s > 0 and d.io_kib > 0 and d.runtime_ms > 0, name
            assert d.clat is not None and d.lat is not None
            assert d.clat.samples == d.total_ios
            assert d.clat.p50_ns is not None and d.clat.p99_ns is not None
            assert d.clat.min_ns <= d.clat.p50_ns <= d.clat.p99_ns
            assert d.clat.p99_ns <= d.clat.max_ns * 1.02  # a bin value may top the max a bit
            assert (d.clat.bins_ns is not None) == (path.name in JSON_PLUS)
            if job.options.get("ioengine") == "libaio":
                assert d.slat is not None and d.slat.mean_ns > 0


def test_read_only_job_has_no_write_or_trim() -> None:
    job = local("randread.json").jobs[0]
    assert job.read is not None
    assert job.write is None and job.trim is None and job.mixed is None
    assert list(job.directions()) == ["read"]


def test_sync_engine_has_no_submission_latency() -> None:
    write = local("randwrite-psync.json").jobs[0].write
    assert write is not None and write.clat is not None
    assert write.slat is None  # slat_ns.N == 0


def test_unified_rw_reporting_gives_mixed() -> None:
    job = local("randrw-unified-mixed.json").jobs[0]
    assert job.read is None and job.write is None
    assert job.mixed is not None and job.mixed.iops > 0
    assert summarize(job)["mixed_iops"] == job.mixed.iops


def test_lat_percentiles_are_exposed() -> None:
    read = local("randrw-lat-percentiles.json").jobs[0].read
    assert read is not None and read.lat is not None and read.clat is not None
    assert read.lat.p99_ns is not None and read.lat.bins_ns
    assert read.clat.p99_ns is not None
    assert read.lat.p50_ns is not None and read.clat.p50_ns is not None
    assert read.lat.p50_ns >= read.clat.p50_ns  # total = submission + completion


def test_global_options_are_merged_under_the_jobs_own() -> None:
    out = local("two-jobs-global.json")
    assert out.global_options["ioengine"] == "libaio"
    assert out.global_options["iodepth"] == "1"
    reader, writer = out.jobs
    assert (reader.name, writer.name) == ("reader", "writer")
    assert reader.options["rw"] == "randread" and reader.options["iodepth"] == "1"
    assert writer.options["rw"] == "randwrite" and writer.options["iodepth"] == "4"
    assert writer.options["ioengine"] == "libaio"
    assert reader.write is None and writer.read is None


# --- text around the JSON -------------------------------------------------------------------


def test_normal_and_json_output() -> None:
    text = (FIO_333 / "randrw-normal-json.txt").read_text()
    assert text.startswith("x: (g=0)") and "Run status group 0" in text  # text around it
    job = parse_fio_output(text, source="normal,json").jobs[0]
    assert job.read is not None and job.read.iops == pytest.approx(15173.913043)


def test_noise_before_and_after_json() -> None:
    clean = (FIO_333 / "randrw.json").read_text()
    noisy = (
        "fio: file hash not empty on exit\n"
        "note: both iodepth >= 1 and synchronous I/O engine are selected, queue depth will be "
        "capped at 1\n{not json either\n" + clean + "\nfio: some trailing warning {\n"
    )
    assert parse_fio_output(noisy) == parse_fio_output(clean)


def test_error_lines_before_json_and_job_error_kept() -> None:
    text = (FIO_333 / "error-einval.txt").read_text()
    assert text.startswith("fio: io_u error")
    job = parse_fio_output(text).jobs[0]
    assert job.error == 22
    assert job.read is not None and job.read.io_kib == 0  # one failed I/O, no data


def test_status_interval_uses_the_final_report() -> None:
    text = (FIO_333 / "status-interval.txt").read_text()
    assert text.count('"fio version"') == 4
    read = parse_fio_output(text).jobs[0].read
    assert read is not None and read.total_ios == 50133  # the fourth report's


# --- client/server --------------------------------------------------------------------------


def test_client_server_one_host() -> None:
    out = local("client-one-server.json")
    assert out.all_clients is None
    (job,) = out.jobs
    assert (job.hostname, job.port) == ("127.0.0.1", 18765)
    assert job.options["rw"] == "randrw" and job.options["ioengine"] == "libaio"


def test_client_server_two_hosts_keep_aggregate_apart() -> None:
    out = local("client-two-servers.json")
    assert sorted(j.port for j in out.jobs if j.port is not None) == [18765, 18766]
    assert all(j.name == "cs" and j.hostname == "127.0.0.1" for j in out.jobs)
    agg = out.all_clients
    assert agg is not None and agg.name == ALL_CLIENTS
    assert agg.hostname is None and agg.port is None
    assert agg.read is not None
    assert agg.read.total_ios == sum(j.read.total_ios for j in out.jobs if j.read)


def test_combine_matches_fios_all_clients_sum() -> None:
    out = local("client-two-servers.json")
    agg = out.all_clients
    merged = combine_jobs(out.jobs)
    assert agg is not None
    for name in ("read", "write"):
        mine, fios = getattr(merged, name), getattr(agg, name)
        assert mine.iops == pytest.approx(fios.iops)
        assert mine.bw_kib_s == fios.bw_kib_s
        assert mine.total_ios == fios.total_ios
        assert mine.runtime_ms == fios.runtime_ms
        for kind in ("clat", "lat", "slat"):
            a, b = getattr(mine, kind), getattr(fios, kind)
            assert a.mean_ns == pytest.approx(b.mean_ns, rel=1e-9)
            assert a.stdev_ns == pytest.approx(b.stdev_ns, rel=1e-7)
            assert (a.min_ns, a.max_ns, a.samples) == (b.min_ns, b.max_ns, b.samples)
    assert merged.usr_cpu_pct == pytest.approx(agg.usr_cpu_pct)
    assert merged.ctx == agg.ctx


# --- combining jobs and percentiles from bins -----------------------------------------------


def _latencies_with_bins() -> list[tuple[str, Latency]]:
    found = []
    for name in JSON_PLUS:
        for job in local(name).jobs:
            for dname, d in job.directions().items():
                for kind in ("clat", "lat"):
                    lat = getattr(d, kind)
                    if lat is not None and lat.bins_ns:
                        found.append((f"{name}:{job.name}:{dname}:{kind}", lat))
    return found


def test_percentiles_from_bins_equal_fios_own() -> None:
    checked = _latencies_with_bins()
    assert len(checked) >= 10
    for where, lat in checked:
        assert lat.bins_ns is not None
        assert percentiles_from_bins(lat.bins_ns, list(lat.percentiles_ns)) == (
            lat.percentiles_ns
        ), where


def test_bin_values_are_fios_bucket_values() -> None:
    buckets = {plat_idx_to_val(i) for i in range(1856)}  # fio 3: FIO_IO_U_PLAT_NR
    for where, lat in _latencies_with_bins():
        assert lat.bins_ns is not None
        assert set(lat.bins_ns) <= buckets, where
    # Index 129: group 1 (128..255, buckets 2 wide), bucket 1 -> its middle, 131.
    assert [plat_idx_to_val(i) for i in (0, 127, 128, 129, 192)] == [0, 127, 129, 131, 258]


def test_combine_one_job_keeps_its_percentiles() -> None:
    job = local("randrw-jsonplus.json").jobs[0]
    merged = combine_jobs([job])
    assert merged.read is not None and job.read is not None
    assert merged.read.clat is not None and job.read.clat is not None
    assert merged.read.clat.percentiles_ns == job.read.clat.percentiles_ns
    assert merged.read.clat.p50_ns == job.read.clat.p50_ns
    assert merged.read.clat.mean_ns == pytest.approx(job.read.clat.mean_ns)
    assert merged.read.clat.stdev_ns == pytest.approx(job.read.clat.stdev_ns)
    assert merged.read.iops == job.read.iops


def test_combine_numjobs_sums_and_merges_bins() -> None:
    jobs = local("randrw-numjobs2.json").jobs
    assert len(jobs) == 2 and jobs[0].name == jobs[1].name == "n"
    merged = combine_jobs(jobs)
    assert merged.name == "n"
    assert merged.options["numjobs"] == "2"
    for name in ("read", "write"):
        parts = [getattr(j, name) for j in jobs]
        mine = getattr(merged, name)
        assert mine.iops == pytest.approx(sum(p.iops for p in parts))
        assert mine.bw_kib_s == sum(p.bw_kib_s for p in parts)
        assert mine.io_kib == sum(p.io_kib for p in parts)
        assert mine.total_ios == sum(p.total_ios for p in parts)
        assert sum(mine.clat.bins_ns.values()) == mine.total_ios
        for key, value in mine.clat.percentiles_ns.items():
            per_job = [p.clat.percentiles_ns[key] for p in parts]
            assert min(per_job) <= value <= max(per_job), (name, key)
    summary = summarize(merged)
    assert summary["read_iops"] == pytest.approx(sum(j.read.iops for j in jobs if j.read))


def test_combine_without_bins_takes_the_largest_percentile() -> None:
    a = local("randrw.json").jobs[0]
    b = local("client-one-server.json").jobs[0]
    merged = combine_jobs([a, b])
    assert merged.name == "x+cs"
    assert merged.hostname is None  # the jobs disagree
    assert merged.read is not None and merged.read.clat is not None
    assert merged.read.clat.bins_ns is None
    for key, value in merged.read.clat.percentiles_ns.items():
        assert value == max(
            j.read.clat.percentiles_ns[key] for j in (a, b) if j.read and j.read.clat
        )
    assert merged.options["rw"] == "randrw" and "name" not in merged.options


def test_combine_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        combine_jobs([])


# --- summaries and metrics ------------------------------------------------------------------


def test_summarize() -> None:
    job = local("randrw-jsonplus.json").jobs[0]
    s = summarize(job)
    assert job.read is not None and job.read.lat is not None and job.read.clat is not None
    assert s["read_iops"] == job.read.iops
    assert s["read_bw_kib_s"] == 51162
    assert s["read_lat_mean_ns"] == pytest.approx(67458.632805)  # total latency
    assert s["read_lat_p99_ns"] == 101888  # completion latency percentile
    assert s["read_lat_p99_9_ns"] == job.read.clat.p99_9_ns
    assert job.write is not None and job.write.clat is not None
    assert s["total_iops"] == pytest.approx(job.read.iops + job.write.iops)
    assert s["write_lat_p99_ns"] == job.write.clat.p99_ns == 333824
    assert set(s) <= set(METRICS)
    ro = summarize(local("randread.json").jobs[0])
    assert "read_iops" in ro and not any(k.startswith(("write_", "trim_")) for k in ro)


def test_summarize_fio_2x_uses_total_latency_mean() -> None:
    s = summarize(parse_fio_file(FIO_218 / "randwrite-01.json").jobs[0])
    assert s["write_lat_mean_ns"] == pytest.approx(3435349, abs=1)
    assert "read_iops" not in s


def test_metrics_registry() -> None:
    assert METRICS["read_iops"].higher_is_better
    assert METRICS["write_bw_kib_s"].higher_is_better
    assert not METRICS["read_lat_p99_ns"].higher_is_better
    assert not METRICS["sys_cpu_pct"].higher_is_better
    assert METRICS["read_lat_mean_ns"].unit == "ns"
    assert all(name == m.name for name, m in METRICS.items())
    assert all(m.label for m in METRICS.values())


# --- fio 2.x json+ layout -------------------------------------------------------------------


def test_fio_2x_index_keyed_bins() -> None:
    # Hand-built: no real fio 2.x json+ file is at hand. fio 2.x keyed its bins by bucket
    # index and added its FIO_IO_U_PLAT_* constants; values were microseconds.
    doc = json.loads((FIO_218 / "randread-01.json").read_text())
    doc["jobs"][0]["read"]["clat"]["bins"] = {
        "FIO_IO_U_PLAT_BITS": 6,
        "FIO_IO_U_PLAT_VAL": 64,
        "FIO_IO_U_PLAT_NR": 1216,
        "100": 3,
        "129": 1,
        "130": 0,
    }
    read = parse_fio_output(json.dumps(doc)).jobs[0].read
    assert read is not None and read.clat is not None
    assert read.clat.bins_ns == {100_000: 3, 131_000: 1}  # usec -> ns


# --- bad input ------------------------------------------------------------------------------


def _error(text: str, source: str = "case-7/fio.out") -> ResultError:
    with pytest.raises(ResultError) as info:
        parse_fio_output(text, source=source)
    err = info.value
    assert source in str(err)
    assert err.hint
    return err


def test_garbage_raises_with_source() -> None:
    assert "no JSON object found" in str(_error("Segmentation fault\n"))
    assert "no JSON object found" in str(_error(""))


def test_json_that_is_not_fio() -> None:
    assert "no fio report" in str(_error('{"hello": [1, 2]}\n'))


def test_fio_json_without_jobs() -> None:
    err = _error('{"fio version": "fio-3.33", "timestamp": 1}')
    assert "neither 'jobs' nor 'client_stats'" in str(err)
    assert "lists no jobs" in str(_error('{"fio version": "fio-3.33", "jobs": []}'))


def test_truncated_report() -> None:
    text = (FIO_333 / "randrw.json").read_text()
    err = _error("Starting 1 process\n" + text[: len(text) // 2])
    assert "incomplete or invalid" in str(err)


def test_cut_off_final_report_is_not_replaced_by_a_snapshot() -> None:
    text = (FIO_333 / "status-interval.txt").read_text()
    last = text.rindex('{\n  "fio version"')
    assert "incomplete or invalid" in str(_error(text[: last + 3000]))


def test_missing_field_is_named() -> None:
    doc = json.loads((FIO_31 / "randread-1-1.json").read_text())
    del doc["jobs"][0]["read"]["iops"]
    err = _error(json.dumps(doc))
    assert "jobs[0].read.iops is missing" in str(err)
    doc["jobs"][0]["read"]["iops"] = "fast"
    assert "jobs[0].read.iops is not a number" in str(_error(json.dumps(doc)))


def test_file_errors_carry_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "fio.json"
    bad.write_text("fio: failed to open job file\n")
    with pytest.raises(ResultError) as info:
        parse_fio_file(bad)
    assert info.value.path == bad and str(bad) in str(info.value)
    with pytest.raises(ResultError, match="cannot read"):
        parse_fio_file(tmp_path / "missing.json")


def test_latency_named_percentiles_follow_the_table() -> None:
    lat = Latency(
        min_ns=1, max_ns=9, mean_ns=5, stdev_ns=1, percentiles_ns={"50.000000": 4, "99.900000": 8}
    )
    assert (lat.p50_ns, lat.p90_ns, lat.p99_ns, lat.p99_9_ns) == (4, None, None, 8)
    assert not math.isnan(lat.mean_ns)
    job = JobResult(name="j", runtime_ms=1)
    assert job.directions() == {}
