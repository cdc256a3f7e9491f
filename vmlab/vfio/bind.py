"""Binding devices to vfio-pci through driver_override, with a crash-safe restore record.

Binding follows the kernel's documented driver_override sequence (Documentation/ABI/testing/
sysfs-bus-pci): set ``driver_override`` to ``vfio-pci``, unbind from the current driver, write
the address to ``/sys/bus/pci/drivers_probe``. Before any of that, the original driver and
override of every device are written to a JSON state file (fsync + rename), so a crashed run
is undone by :func:`recover_stale` at the start of the next one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmlab.errors import HostError, SpecError
from vmlab.paths import state_dir
from vmlab.vfio.address import _normalize_all, normalize_address
from vmlab.vfio.preflight import check_passthrough
from vmlab.vfio.sysfs import (
    _PCI_DEVICES,
    _PCI_DRIVERS,
    VFIO_DRIVER,
    Sysfs,
    _access,
    _basename_of_link,
    _current_driver,
    _read_override,
)

log = logging.getLogger(__name__)

_STATE_VERSION = 1


@dataclass(frozen=True)
class Binding:
    """One device's state before vmlab bound it to vfio-pci."""

    address: str
    original_driver: str | None
    original_override: str  # "" when unset
    bound_by_vmlab: bool = True  # False: it was on vfio-pci already

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "original_driver": self.original_driver,
            "original_override": self.original_override,
        }


def default_state_file() -> Path:
    """Where a run records its VFIO bindings (survives a crash, per user)."""
    return state_dir() / "vfio-bindings.json"


def _write_state(state_file: Path, bindings: Sequence[Binding]) -> None:
    """Write-then-rename with fsync of the file and its directory: it exists or it does not."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(
        {"version": _STATE_VERSION, "devices": [b.to_json() for b in bindings]}, indent=2
    )
    tmp = state_file.with_name(f".{state_file.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(state_file)
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(state_file.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _corrupt(state_file: Path, why: str) -> HostError:
    return HostError(
        f"VFIO state file {state_file} is unreadable: {why}",
        hint="it records which driver each device had before vmlab bound it to vfio-pci: "
        "rebind the devices by hand if needed, then delete the file",
    )


def _read_state(state_file: Path) -> list[Binding]:
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _corrupt(state_file, str(exc)) from exc
    if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
        raise _corrupt(state_file, f"expected version {_STATE_VERSION}")
    out: list[Binding] = []
    try:
        for rec in data["devices"]:
            address, drv = rec["address"], rec["original_driver"]
            override = rec["original_override"]
            if not (
                isinstance(address, str)
                and (drv is None or isinstance(drv, str))
                and isinstance(override, str)
            ):
                raise TypeError(f"bad record {rec!r}")
            out.append(Binding(normalize_address(address), drv, override))
    except (KeyError, TypeError, SpecError) as exc:
        raise _corrupt(state_file, str(exc)) from exc
    return out


def _unbind(fs: Sysfs, address: str, driver: str) -> None:
    log.info("%s: unbinding from %s", address, driver)
    fs.write(f"{_PCI_DRIVERS}/{driver}/unbind", address)


def _bind_one(fs: Sysfs, binding: Binding) -> None:
    address = binding.address
    fs.write(f"{_PCI_DEVICES}/{address}/driver_override", VFIO_DRIVER)
    if binding.original_driver is not None:
        _unbind(fs, address, binding.original_driver)
    fs.write("sys/bus/pci/drivers_probe", address)
    now = _current_driver(fs, address)
    if now != VFIO_DRIVER:
        raise HostError(
            f"{address} did not bind to {VFIO_DRIVER} (driver now: {now or 'none'})",
            hint="see `dmesg | tail` for the vfio-pci probe error",
        )
    group = _basename_of_link(fs.readlink(f"{_PCI_DEVICES}/{address}/iommu_group"))
    if group is not None and not fs.exists(f"dev/vfio/{group}"):
        log.warning("%s is bound to vfio-pci but /dev/vfio/%s is missing", address, group)
    log.info("%s: bound to %s (was %s)", address, VFIO_DRIVER, binding.original_driver or "none")


def bind_vfio(
    addresses: Sequence[str],
    *,
    root: Path = Path("/"),
    state_file: Path,
    sysfs: Sysfs | None = None,
) -> list[Binding]:
    """Bind every device to vfio-pci via driver_override; one Binding per device, in order.

    Preflight first (HostError if it finds problems); the state file is written before the
    first sysfs write; a failure part way restores what was done and re-raises.
    """
    fs = _access(root, sysfs)
    if state_file.exists():
        raise HostError(
            f"VFIO state file {state_file} from an earlier run is still there",
            hint="restore it first (vmlab does so at the start of a run via recover_stale)",
        )
    check_passthrough(addresses, sysfs=fs).raise_for_problems()
    bindings: list[Binding] = []
    for address in _normalize_all(addresses):
        driver = _current_driver(fs, address)
        bindings.append(
            Binding(address, driver, _read_override(fs, address), driver != VFIO_DRIVER)
        )
    todo = [b for b in bindings if b.bound_by_vmlab]
    for b in bindings:
        if not b.bound_by_vmlab:
            log.info("%s: already bound to %s; left alone", b.address, VFIO_DRIVER)
    if not todo:
        return bindings
    _write_state(state_file, todo)
    try:
        for b in todo:
            _bind_one(fs, b)
    except BaseException:
        log.error("binding to vfio-pci failed; restoring the devices' drivers")
        try:
            restore(state_file, root=root, sysfs=fs)
        except Exception:
            log.exception("restore after a failed bind failed; %s is kept", state_file)
        raise
    return bindings


def _restore_one(fs: Sysfs, b: Binding) -> None:
    address = b.address
    if not fs.exists(f"{_PCI_DEVICES}/{address}"):
        raise HostError(f"{address} is gone", hint="was the device hot-unplugged?")
    driver = _current_driver(fs, address)
    if driver == b.original_driver and _read_override(fs, address) == b.original_override:
        log.debug("%s: already on %s", address, driver or "no driver")
        return
    if driver is not None and driver != b.original_driver:
        _unbind(fs, address, driver)
    # The kernel strips one trailing newline; a lone "\n" clears the override.
    fs.write(f"{_PCI_DEVICES}/{address}/driver_override", b.original_override or "\n")
    if b.original_driver is not None and _current_driver(fs, address) is None:
        bind_attr = f"{_PCI_DRIVERS}/{b.original_driver}/bind"
        if fs.exists(bind_attr):
            fs.write(bind_attr, address)
        else:
            fs.write("sys/bus/pci/drivers_probe", address)
    now = _current_driver(fs, address)
    if now != b.original_driver:
        raise HostError(
            f"{address} is on {now or 'no driver'}, not back on {b.original_driver or 'none'}",
            hint=f"is the {b.original_driver} module loaded? see `dmesg | tail`",
        )
    log.info("%s: restored to %s", address, b.original_driver or "no driver")


def restore(
    state_file: Path, *, root: Path = Path("/"), sysfs: Sysfs | None = None
) -> list[Binding]:
    """Put every recorded device back on its original driver and override.

    Tries every device; removes the state file only when all succeeded, else raises HostError
    (the file stays, so the next run retries).
    """
    fs = _access(root, sysfs)
    bindings = _read_state(state_file)
    failures: list[str] = []
    for b in bindings:
        try:
            _restore_one(fs, b)
        except (OSError, HostError) as exc:
            log.error("%s: restore failed: %s", b.address, exc)
            failures.append(f"{b.address}: {exc}")
    if failures:
        raise HostError(
            "could not restore the original drivers of: " + "; ".join(failures),
            hint=f"the record stays in {state_file} and the next vmlab run retries it; "
            "or rebind by hand and delete the file",
        )
    state_file.unlink()
    return bindings


def recover_stale(
    state_file: Path, *, root: Path = Path("/"), sysfs: Sysfs | None = None
) -> list[Binding]:
    """At the start of a run: undo the bindings a crashed run left behind (if any)."""
    if not state_file.exists():
        return []
    log.warning("found %s from a run that did not finish; restoring its devices", state_file)
    restored = restore(state_file, root=root, sysfs=sysfs)
    for b in restored:
        log.warning(
            "recovered %s: back on %s (driver_override %r)",
            b.address,
            b.original_driver or "no driver",
            b.original_override,
        )
    return restored


@contextlib.contextmanager
def vfio_bound(
    addresses: Sequence[str],
    *,
    root: Path = Path("/"),
    state_file: Path,
    sysfs: Sysfs | None = None,
) -> Iterator[list[Binding]]:
    """Devices on vfio-pci inside the block; restored on exit, also on KeyboardInterrupt."""
    bindings = bind_vfio(addresses, root=root, state_file=state_file, sysfs=sysfs)
    if not any(b.bound_by_vmlab for b in bindings):
        yield bindings
        return
    try:
        yield bindings
    except BaseException:
        try:
            restore(state_file, root=root, sysfs=sysfs)
        except Exception:
            log.exception("restoring VFIO devices failed; %s is kept", state_file)
        raise
    restore(state_file, root=root, sysfs=sysfs)
