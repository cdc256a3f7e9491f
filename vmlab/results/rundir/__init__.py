"""The run directory: every artifact of a bench, written before it is interpreted. This
package is the only reader and writer of a run's files: :mod:`.dirs` writes them, :mod:`.scan`
reads them back.

    results/<run-id>/
      spec.yaml  spec.json  host.json  status.json
      cases/<case-id>/
        case.json  argv.json  argv.sh  qemu.log  serial.log  guest.json  status.json
        jobs/<job>/r<N>/  job.fio  fio.json (raw stdout)  fio.stderr  exit.json  summary.json
        jobs/<job>/repeat.json   how many repetitions the job took and why it stopped
        summaries.json  raw.tar   an imported case: its repetitions packed (:mod:`.packed`)
      attempts/<case-id>.<n>/   what an interrupted or failed case left before a --resume

Artifacts are created exclusively: a second write to the same name is a bug and raises.
Only status.json files change, and they are replaced atomically; so is host.json, once, when
a run finds at run time that KVM fails under its guests and switches to TCG (the switch is
recorded inside it).
"""

from vmlab.results.rundir.dirs import ArtifactDir, CaseDir, RunDir, now_iso
from vmlab.results.rundir.packed import read_raw, read_summary
from vmlab.results.rundir.scan import (
    CaseRecord,
    RepeatStop,
    RunRecord,
    Sample,
    is_run_dir,
    resolve_run,
    run_dirs,
    run_stamp,
    scan_run,
)

__all__ = [
    "ArtifactDir",
    "CaseDir",
    "CaseRecord",
    "RepeatStop",
    "RunDir",
    "RunRecord",
    "Sample",
    "is_run_dir",
    "now_iso",
    "read_raw",
    "read_summary",
    "resolve_run",
    "run_dirs",
    "run_stamp",
    "scan_run",
]
