"""What an imported fio job was asked to do, read from its own options: the parameters a
case and its job names are made of (:mod:`vmlab.results.importer`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from vmlab.fio.model import JobResult
from vmlab.sizes import parse_size

PARAM_KEYS = (
    "rw",
    "rwmixread",
    "bs",
    "iodepth",
    "numjobs",
    "ioengine",
    "direct",
    "size",
    "unified_rw_reporting",
    "hostname",
    "fio_job",
)
_MIXED = {"rw", "readwrite", "randrw", "trimwrite", "randtrimwrite"}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.+-]+", "-", text.lower()).strip("-.")


def _size_label(value: str) -> str:
    try:
        size = parse_size(value)
    except ValueError:
        return value.strip().lower()
    for unit, shift in (("t", 40), ("g", 30), ("m", 20), ("k", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def _int_label(value: str) -> str:
    text = value.strip()
    return str(int(text)) if text.isdigit() else text.lower()


def infer_params(job: JobResult) -> dict[str, str]:
    """The parameters that describe what a fio job measured, from its own options.

    fio prints only the options that were set; defaults are filled in where fio has one that
    does not depend on the platform (rw=read, bs=4k, iodepth=1, numjobs=1, direct=0).
    """
    opts = {k.lower(): v for k, v in job.options.items()}
    params: dict[str, str] = {}
    rw = (opts.get("rw") or opts.get("readwrite") or "read").strip().lower()
    params["rw"] = rw
    if rw.split(":")[0] in _MIXED:
        if "rwmixread" in opts:
            params["rwmixread"] = _int_label(opts["rwmixread"])
        elif "rwmixwrite" in opts and opts["rwmixwrite"].strip().isdigit():
            params["rwmixread"] = str(100 - int(opts["rwmixwrite"]))
    params["bs"] = _size_label(opts.get("bs") or opts.get("blocksize") or "4k")
    params["iodepth"] = _int_label(opts.get("iodepth", "1"))
    params["numjobs"] = _int_label(opts.get("numjobs", "1"))
    if opts.get("ioengine"):
        params["ioengine"] = opts["ioengine"].strip().lower()
    direct = opts.get("direct", "0").strip().lower()
    params["direct"] = "1" if direct in ("1", "true", "yes", "on") else "0"
    if opts.get("size"):
        params["size"] = _size_label(opts["size"])
    unified = opts.get("unified_rw_reporting", "0").strip().lower()
    if unified not in ("0", "none", "false", ""):
        params["unified_rw_reporting"] = unified
    if job.hostname:
        params["hostname"] = job.hostname + (f":{job.port}" if job.port else "")
    return params


def _part(key: str, value: str) -> str:
    match key:
        case "rwmixread":
            return f"mix{value}"
        case "bs":
            return f"bs{value}"
        case "iodepth":
            return f"qd{value}"
        case "numjobs":
            return f"nj{value}"
        case "direct":
            return "direct" if value == "1" else "buffered"
        case "size":
            return f"size{value}"
        case "unified_rw_reporting":
            return "unified"
        case _:
            return value


def job_name(params: Mapping[str, str], varying: Sequence[str]) -> str:
    """``randread-qd16-nj4``: rw, then every other parameter that varies in the folder."""
    parts = [params.get("rw", "job")]
    parts += [_part(k, params[k]) for k in varying if k != "rw" and k in params]
    return slug("-".join(parts)) or "job"


def natural_key(text: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
