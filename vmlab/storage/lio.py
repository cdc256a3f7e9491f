"""Kernel vhost-scsi (LIO) serving a disk (``served_by: lio``): preflight, the targetcli
commands for one disk, and the server that runs them around the guest.

The guest's virtio-scsi queues are served by the host kernel (``vhost_scsi``) from an LIO
target: a backstore (``block`` for a host block device such as a krbd ``/dev/rbd0``, ``fileio``
for a file), a vhost target named by a WWPN with its TPG 1, and a LUN in that TPG. QEMU only
names the target: ``-device vhost-scsi-pci,wwpn=naa.5001405...``.

Everything reads the host through ``root`` (``/`` on a real host), so the preflight runs
against generated trees in tests. targetcli runs through an injectable runner, one command
per invocation (``targetcli /vhost create naa...``); in that one-shot mode it does not save
the configuration to /etc/target. :class:`LioTarget` tears down exactly the steps that
succeeded, newest first, also when setup fails part way.

The guest sees the backstore's unit serial (``wwn=``, a UUID derived from the disk name) in
VPD page 0x80 (``/sys/block/sdX/device/vpd_pg80``): that identifies the disk, not ``sdX``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shlex
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from vmlab.errors import CommandError, HostError, SpecError
from vmlab.paths import check_socket_path
from vmlab.proc import ManagedProcess, run
from vmlab.render.model import DiskSource
from vmlab.spec import Disk
from vmlab.storage.base import Preview, ServeContext

log = logging.getLogger(__name__)

Backstore = Literal["block", "fileio"]
Runner = Callable[[Sequence[str]], None]  # runs one argv; raises CommandError/HostError

WWPN_PREFIX = "naa.5001405"  # NAA type 5 + the IEEE OUI LIO uses (00:14:05), as targetcli does
BACKSTORE_MODULES: dict[str, str] = {"block": "target_core_iblock", "fileio": "target_core_file"}
CONFIGFS = Path("/sys/kernel/config")
_SERIAL_NAMESPACE = uuid.UUID("5b6c7d1e-2f30-4a41-9b52-6c7d8e9fa0b1")  # vmlab's, fixed
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# --------------------------------------------------------------------------------------------
# preflight


@dataclass(frozen=True)
class Problem:
    code: str  # modules-missing, module-unavailable, dev-missing, configfs-unmounted, ...
    message: str
    fix: str


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _norm(module: str) -> str:
    return module.replace("-", "_")


def _module_loaded(root: Path, name: str) -> bool:
    if (root / "sys/module" / name).is_dir():
        return True
    return any(line.split(" ", 1)[0] == name for line in _read(root / "proc/modules").splitlines())


def _kernel_modules(root: Path) -> tuple[set[str], set[str]] | None:
    """(loadable, built-in) module names of the running kernel, when its lists are readable."""
    release = _read(root / "proc/sys/kernel/osrelease").strip()
    base = root / "lib/modules" / release
    if not release or not (base / "modules.dep").is_file():
        return None

    def names(text: str, *, dep: bool) -> set[str]:
        out = set()
        for line in text.splitlines():
            entry = line.split(":", 1)[0] if dep else line
            stem = Path(entry.strip()).name.split(".ko", 1)[0]
            if stem:
                out.add(_norm(stem))
        return out

    return (
        names(_read(base / "modules.dep"), dep=True),
        names(_read(base / "modules.builtin"), dep=False),
    )


def _configfs_mounted(root: Path) -> bool:
    mounts = _read(root / "proc/mounts") or _read(root / "proc/self/mounts")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "configfs" and fields[1] == str(CONFIGFS):
            return True
    return False


def preflight(
    root: Path = Path("/"),
    *,
    backstore: Backstore = "block",
    which: Callable[[str], str | None] = shutil.which,
    euid: int | None = None,
) -> list[Problem]:
    """Read-only check that kernel vhost-scsi with a ``backstore`` LUN can work here."""
    problems: list[Problem] = []
    rel_configfs = str(CONFIGFS).lstrip("/")
    has_dev = (root / "dev/vhost-scsi").exists()
    has_target_dir = (root / rel_configfs / "target").is_dir()
    present = {
        "vhost_scsi": has_dev or _module_loaded(root, "vhost_scsi"),
        "target_core_mod": has_target_dir or _module_loaded(root, "target_core_mod"),
    }
    backstore_module = BACKSTORE_MODULES[backstore]
    present[backstore_module] = _module_loaded(root, backstore_module)
    known = _kernel_modules(root)
    loadable, builtin = known if known is not None else (None, set[str]())
    missing = [name for name, ok in present.items() if not (ok or name in builtin)]
    unavailable = [n for n in missing if loadable is not None and n not in loadable]
    to_load = [n for n in missing if n not in unavailable]
    if to_load:
        problems.append(
            Problem(
                "modules-missing",
                f"kernel modules not loaded: {', '.join(to_load)}",
                f"modprobe {' '.join(to_load)} (list them in /etc/modules-load.d/ to keep them)",
            )
        )
    if unavailable:
        release = _read(root / "proc/sys/kernel/osrelease").strip()
        problems.append(
            Problem(
                "module-unavailable",
                f"this kernel ({release}) ships no {', '.join(unavailable)} module",
                "boot a kernel built with CONFIG_VHOST_SCSI=m and CONFIG_TARGET_CORE=m "
                "(Debian's linux-image-amd64 has them; cloud kernels may not)",
            )
        )
    if not has_dev:
        misc = _read(root / "sys/class/misc/vhost-scsi/dev").strip()
        if misc:
            major, _, minor = misc.partition(":")
            fix = (
                "vhost_scsi is loaded but the device node is missing: in a container pass "
                f"/dev/vhost-scsi through; on a host `mknod /dev/vhost-scsi c {major} {minor}`"
            )
        else:
            fix = "it appears with `modprobe vhost_scsi`"
        problems.append(Problem("dev-missing", "/dev/vhost-scsi is missing", fix))
    if not _configfs_mounted(root):
        problems.append(
            Problem(
                "configfs-unmounted",
                f"configfs is not mounted at {CONFIGFS}",
                f"mount -t configfs none {CONFIGFS}",
            )
        )
    elif not has_target_dir:
        problems.append(
            Problem(
                "lio-missing",
                f"{CONFIGFS}/target is missing: the LIO core is not loaded",
                "modprobe target_core_mod",
            )
        )
    if which("targetcli") is None:
        problems.append(
            Problem("targetcli-missing", "targetcli is not on PATH", "apt-get install targetcli-fb")
        )
    if needs_private_bus(root) and which("dbus-daemon") is None:
        problems.append(
            Problem(
                "dbus-missing",
                "there is no D-Bus system bus, and targetcli-fb dies without one",
                "apt-get install dbus-daemon (vmlab then starts a private bus for targetcli)",
            )
        )
    if (os.geteuid() if euid is None else euid) != 0:
        problems.append(
            Problem(
                "not-root",
                "vmlab is not root: targetcli writes configfs and QEMU opens /dev/vhost-scsi",
                "run vmlab as root for kernel vhost-scsi cases",
            )
        )
    return problems


def raise_for_problems(problems: Sequence[Problem]) -> None:
    if not problems:
        return
    raise HostError(
        "kernel vhost-scsi is not usable on this host:\n"
        + "\n".join(f"  {p.code}: {p.message}" for p in problems),
        hint="; ".join(dict.fromkeys(p.fix for p in problems)),
    )


# --------------------------------------------------------------------------------------------
# rendering


def wwpn_for(name: str) -> str:
    """``naa.5001405`` + 9 hex digits from the name: the same name, the same target."""
    return WWPN_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:9]


def unit_serial_for(name: str) -> str:
    """The backstore's T10 unit serial (``wwn=``), which the guest reads from VPD page 0x80."""
    return str(uuid.uuid5(_SERIAL_NAMESPACE, name))


@dataclass(frozen=True)
class LioDisk:
    """One host block device or file exported to one guest as a vhost-scsi LUN."""

    name: str  # backstore name, also the seed of the WWPN and unit serial
    path: Path  # /dev/rbd0 for ``block``; an existing file for ``fileio``
    backstore: Backstore = "block"
    readonly: bool = False
    write_back: bool = False  # fileio: through the host page cache (targetcli's default: on)


@dataclass(frozen=True)
class LioStep:
    create: tuple[str, ...]
    delete: tuple[str, ...]


@dataclass(frozen=True)
class LioPlan:
    name: str
    wwpn: str
    unit_serial: str
    storage_object: str  # /backstores/block/NAME
    steps: tuple[LioStep, ...]  # backstore, vhost target (+ TPG 1), LUN 0

    @property
    def setup(self) -> list[list[str]]:
        return [list(s.create) for s in self.steps]

    @property
    def teardown(self) -> list[list[str]]:
        return [list(s.delete) for s in reversed(self.steps)]

    @property
    def configfs_lun(self) -> Path:
        """Where the kernel shows the LUN once setup worked (relative to configfs)."""
        return Path("target/vhost", self.wwpn, "tpgt_1/lun/lun_0")

    def describe(self) -> str:
        lines = [f"LIO vhost-scsi disk {self.name} ({self.wwpn}, unit serial {self.unit_serial})"]
        lines += [f"  {shlex.join(argv)}" for argv in self.setup]
        lines.append("  teardown:")
        lines += [f"  {shlex.join(argv)}" for argv in self.teardown]
        return "\n".join(lines)


def _check(disk: LioDisk) -> None:
    if not _NAME_RE.match(disk.name):
        raise SpecError(
            f"vhost-scsi disk name {disk.name!r} is not usable as an LIO backstore name",
            hint="use 1-64 letters, digits, '_' or '-'",
        )
    text = str(disk.path)
    # targetcli joins its arguments with spaces before parsing them
    if not disk.path.is_absolute() or any(c.isspace() for c in text):
        raise SpecError(
            f"vhost-scsi disk {disk.name}: {text!r} must be an absolute path without spaces",
            hint="targetcli cannot take relative paths or paths with spaces",
        )
    if disk.backstore not in BACKSTORE_MODULES:
        raise SpecError(f"unknown LIO backstore {disk.backstore!r}", hint="use block or fileio")


def render_lio(disk: LioDisk, *, targetcli: str = "targetcli") -> LioPlan:
    """The targetcli commands that export ``disk`` (and remove it again); pure."""
    _check(disk)
    wwpn = wwpn_for(disk.name)
    serial = unit_serial_for(disk.name)
    store = f"/backstores/{disk.backstore}"
    if disk.backstore == "block":
        create = [targetcli, store, "create", f"name={disk.name}", f"dev={disk.path}"]
        if disk.readonly:
            create.append("readonly=true")
    else:
        create = [targetcli, store, "create", f"name={disk.name}", f"file_or_dev={disk.path}"]
        create.append(f"write_back={'true' if disk.write_back else 'false'}")
    create.append(f"wwn={serial}")
    storage_object = f"{store}/{disk.name}"
    luns = f"/vhost/{wwpn}/tpg1/luns"
    steps = (
        LioStep(tuple(create), (targetcli, store, "delete", disk.name)),
        LioStep((targetcli, "/vhost", "create", wwpn), (targetcli, "/vhost", "delete", wwpn)),
        LioStep(
            (targetcli, luns, "create", storage_object, "lun=0"),
            (targetcli, luns, "delete", "lun0"),
        ),
    )
    return LioPlan(disk.name, wwpn, serial, storage_object, steps)


# --------------------------------------------------------------------------------------------
# running it


# targetcli-fb (2.1.53, Debian 12) asks tcmu-runner for user backstores over the D-Bus system
# bus on every start and dies ("g-io-error-quark: Could not connect") where there is none:
# containers, an init without D-Bus, vmlab's L1 host. A private bus that nobody else joins is
# enough; the question then finds no tcmu-runner, which targetcli handles.
SYSTEM_BUS_SOCKET = Path("/run/dbus/system_bus_socket")
BUS_READY_S = 10.0


def needs_private_bus(root: Path = Path("/"), environ: Mapping[str, str] = os.environ) -> bool:
    """True where targetcli would find no D-Bus system bus."""
    if environ.get("DBUS_SYSTEM_BUS_ADDRESS"):
        return False
    return not (root / str(SYSTEM_BUS_SOCKET).lstrip("/")).exists()


@contextmanager
def bus_for_targetcli(workdir: Path, socket_dir: Path) -> Iterator[dict[str, str] | None]:
    """The environment targetcli runs with: None (inherit) where a system bus is there, else
    one pointing at a private ``dbus-daemon`` (its log in ``workdir``, its socket in the short
    ``socket_dir``: a case's scratch path can pass a unix socket's 107 bytes), stopped on
    exit."""
    if not needs_private_bus():
        yield None
        return
    workdir.mkdir(parents=True, exist_ok=True)
    socket = socket_dir / "dbus.sock"
    check_socket_path(socket, "the private D-Bus socket for targetcli")
    daemon = ManagedProcess(
        ["dbus-daemon", "--session", f"--address=unix:path={socket}", "--nofork", "--nopidfile"],
        log_path=workdir / "dbus-daemon.log",
        what="dbus-daemon (a private bus for targetcli)",
        missing_hint="apt-get install dbus-daemon: targetcli-fb needs a D-Bus system bus",
    )
    with daemon:
        deadline = time.monotonic() + BUS_READY_S
        while not socket.exists():
            daemon.check_running("starting")
            if time.monotonic() > deadline:
                raise HostError(
                    f"dbus-daemon made no socket {socket} within {BUS_READY_S:.0f} s",
                    hint=f"read {daemon.log_path}",
                )
            time.sleep(0.05)
        yield {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={socket}"}


def run_command(
    argv: Sequence[str], *, timeout_s: float = 60.0, env: Mapping[str, str] | None = None
) -> None:
    """The default runner: one targetcli invocation; CommandError when it fails."""
    run(
        argv,
        timeout_s=timeout_s,
        env=env,
        missing_hint="apt-get install targetcli-fb",
        hint="is another targetcli holding the configfs lock? `targetcli ls` shows the "
        "current LIO configuration",
    )


class LioTarget:
    """The LIO objects of one disk, present inside the ``with`` block.

    Setup runs ``plan.setup`` through ``runner``; if ``root`` is given, it then checks that
    the LUN exists under ``root``/sys/kernel/config (targetcli may exit 0 after a failure).
    On exit, and on a failure part way, the steps that succeeded are undone newest first.
    """

    def __init__(
        self, plan: LioPlan, *, runner: Runner = run_command, root: Path | None = Path("/")
    ) -> None:
        self.plan = plan
        self.runner = runner
        self.root = root
        self._done: list[LioStep] = []

    def __enter__(self) -> Self:
        try:
            for step in self.plan.steps:
                self.runner(step.create)
                self._done.append(step)
            self._verify()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failed = self.teardown()
        if failed and exc is None:
            raise HostError(
                f"LIO teardown of {self.plan.name} left: " + "; ".join(failed),
                hint="remove it by hand: `targetcli ls` shows it; "
                f"`targetcli /vhost delete {self.plan.wwpn}`",
            )

    def _verify(self) -> None:
        if self.root is None:
            return
        lun = self.root / str(CONFIGFS).lstrip("/") / self.plan.configfs_lun
        if not lun.is_dir():
            raise HostError(
                f"targetcli reported success, but {CONFIGFS / self.plan.configfs_lun} is missing",
                hint="run the commands of `vmlab render` by hand and read targetcli's output",
            )

    def teardown(self) -> list[str]:
        """Undo what was done, newest first; every step is tried. Returns the failures."""
        failed: list[str] = []
        done, self._done = self._done, []
        for step in reversed(done):
            try:
                self.runner(step.delete)
            except (CommandError, HostError) as exc:
                log.error("LIO teardown step %s failed: %s", shlex.join(step.delete), exc)
                failed.append(shlex.join(step.delete))
        return failed


# --------------------------------------------------------------------------------------------
# the server


def lio_plan(disk: Disk, source: DiskSource) -> LioPlan:
    backstore: Literal["block", "fileio"] = (
        "block" if source.protocol == "host_device" else "fileio"
    )
    return render_lio(LioDisk(name=f"vmlab-{disk.name}", path=source.path, backstore=backstore))


class LioServer:
    """Kernel LIO exporting a disk as vhost-scsi (``served_by: lio``)."""

    name = "lio"

    def preview(self, disk: Disk, source: DiskSource) -> Preview:
        plan = lio_plan(disk, source)
        return Preview(
            source=replace(source, wwpn=plan.wwpn),
            title="LIO setup, made first",
            steps=plan.describe(),
        )

    def serve(
        self, stack: ExitStack, disk: Disk, source: DiskSource, ctx: ServeContext
    ) -> DiskSource:
        plan = lio_plan(disk, source)
        ctx.case_dir.write_text(f"lio-{disk.name}.txt", plan.describe() + "\n")
        # entered first, so the bus outlives the target's teardown (which runs targetcli too)
        env = stack.enter_context(
            bus_for_targetcli(ctx.scratch_root / f"lio-{ctx.case.id}", ctx.private_dir)
        )
        stack.enter_context(LioTarget(plan, runner=functools.partial(run_command, env=env)))
        return replace(source, wwpn=plan.wwpn)
