"""Which fio options a spec's ``jobs[].options`` may carry.

The options are written into the job file after vmlab's own lines, and fio takes the last value.
The same job file also runs on the host, as root, for the host baseline (``baseline: true``). So
an option that names what fio opens (``filename: /dev/vdb`` aimed at a guest disk would hit the
host's /dev/vdb), runs a program (``exec_prerun``), loads code (``ioengine=external:...``) or
writes files somewhere (logs, iologs, state files) is refused here: where fio does I/O is the
job's ``disk:``, and which engine is the job's ``ioengine:``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# option -> why it is refused (the hint says what to use instead).
_TARGET = "names what fio opens; the job's disk: chooses the target (the guest's disk, or the "
_TARGET += "backing store for the host baseline)"
_PROGRAM = "runs a program (on the host too, as root, for the host baseline)"
_FILES = "writes files outside the run directory (on the host too, for the host baseline)"
_HOST = "changes the host's configuration when the job runs as the host baseline"
REFUSED_OPTIONS: Mapping[str, str] = {
    "filename": _TARGET,
    "filename_format": _TARGET,
    "directory": _TARGET,
    "opendir": _TARGET,
    "unique_filename": _TARGET,
    "replay_redirect": _TARGET,
    "pool": _TARGET,
    "rbdname": _TARGET,
    "clientname": _TARGET,
    "hostname": _TARGET,
    "uri": _TARGET,
    "unlink": "deletes the files fio opened (the backing store, for the host baseline)",
    "unlink_each_loop": "deletes the files fio opened (the backing store, for the baseline)",
    "exec_prerun": _PROGRAM,
    "exec_postrun": _PROGRAM,
    "ioengine": "chooses the engine, external code included: use the job's ioengine: field",
    "write_bw_log": _FILES,
    "write_lat_log": _FILES,
    "write_iops_log": _FILES,
    "write_hist_log": _FILES,
    "write_iolog": _FILES,
    "read_iolog": "reads an I/O log from a path (and replays it against its own devices)",
    "merge_blktrace_file": _FILES,
    "aux_path": _FILES,
    "ioscheduler": _HOST,
    "cgroup": _HOST,
}
# Options that would override a job field behind its back (and past its bounds: numjobs is at
# most 256 because the host baseline forks that many fio processes): option -> the field.
SHADOWED: Mapping[str, str] = {
    "rw": "rw",
    "readwrite": "rw",
    "rwmixread": "rwmixread",
    "bs": "bs",
    "blocksize": "bs",
    "iodepth": "iodepth",
    "numjobs": "numjobs",
    "direct": "direct",
    "buffered": "direct",
    "runtime": "runtime_s",
    "ramp_time": "ramp_s",
    "size": "size",
    "name": "name",
}
# fio's memory types that map a file: mmap:PATH, mmapshared:PATH, mmaphuge:PATH.
_MEMORY_OPTIONS = ("mem", "iomem")
_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")


def check_fio_options(options: Mapping[str, object]) -> None:
    """Raise ValueError naming the first option a spec may not set."""
    for key, value in options.items():
        if not _KEY.fullmatch(key):
            raise ValueError(
                f"option {key!r} is not a fio option name (lower-case letters, digits and _; "
                "no '=', spaces or brackets)"
            )
        if key in REFUSED_OPTIONS:
            raise ValueError(
                f"option {key} is not allowed: it {REFUSED_OPTIONS[key]}; use the job's "
                "disk:, ioengine:, size: and the spec's disks instead"
            )
        if key in SHADOWED:
            raise ValueError(
                f"option {key} is the job's own {SHADOWED[key]}: field (checked and shown in "
                f"results); set {SHADOWED[key]}: on the job instead"
            )
        if key in _MEMORY_OPTIONS and ":" in str(value):
            raise ValueError(f"option {key}={value}: a memory type backed by a file {_FILES}")
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"option {key}: an empty value (leave the option out instead)")
