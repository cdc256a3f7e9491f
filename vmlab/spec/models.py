"""The spec's pydantic models: disks, NICs, images, the guest, jobs, variants (the base model in
:mod:`vmlab.spec.base`, backends in :mod:`vmlab.spec.backends`).

Each model is frozen and forbids unknown keys. :mod:`vmlab.spec.load` validates every variant
of the matrix into them on its own, so an error names the exact field path that is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from vmlab.errors import SpecError
from vmlab.sizes import parse_size
from vmlab.spdk.cpumask import parse_cpumask
from vmlab.spec.backends import (
    Backend,
    FileBackend,
    MallocBackend,
    RbdBackend,
    Throttle,
)
from vmlab.spec.base import (
    CPU_MODEL,
    DAY_S,
    MACHINE,
    MAX_CPU,
    SLUG,
    Model,
    Size,
)
from vmlab.spec.fiooptions import check_fio_options
from vmlab.spec.hypervisor import Hypervisor


class Spdk(Model):
    """An SPDK vhost target: one vmlab starts (`binary`; left out, vmlab finds SPDK's `vhost`
    itself: VMLAB_SPDK, PATH, /opt/vmlab-spdk) or one already running (`rpc_socket`).

    `cpumask` is the disk's vhost controller's; a target vmlab starts runs on the union of the
    cpumasks of the run's disks on it. `mem_mib` is its hugepage memory (-s)."""

    binary: Path | None = None
    rpc_socket: Path | None = None
    cpumask: str = "0x1"
    mem_mib: int = Field(default=1024, ge=512, le=1 << 20)  # v23.01: less fails in its bdev_io pool

    @field_validator("cpumask")
    @classmethod
    def _cpumask(cls, v: str) -> str:
        try:
            parse_cpumask(v)
        except SpecError as exc:
            raise ValueError(f"{exc.message}: {exc.hint}") from exc
        return v

    @model_validator(mode="after")
    def _one_of(self) -> Spdk:
        if self.binary is not None and self.rpc_socket is not None:
            raise ValueError("give binary (vmlab starts spdk) or rpc_socket, not both")
        return self


DeviceModel = Literal["virtio-blk", "virtio-scsi", "nvme", "vhost-user-blk", "vhost-scsi"]


class Disk(Model):
    """One disk under test: the device model the guest sees and the backend behind it.

    `target` says who serves the backend: QEMU itself, a qemu-storage-daemon sidecar or an
    SPDK vhost target (both for vhost-user-blk), or the kernel's LIO (vhost-scsi).
    """

    name: str = Field(default="data", pattern=r"^[a-z0-9][a-z0-9-]{0,13}$")
    model: DeviceModel = "virtio-blk"
    backend: Backend = Field(default_factory=FileBackend)
    target: Literal["qemu", "qsd", "spdk", "lio", "guest"] | None = None
    spdk: Spdk | None = None
    cache: Literal["none", "directsync", "writeback", "writethrough", "unsafe"] = "none"
    aio: Literal["threads", "native", "io_uring"] = "threads"
    iothread: bool | str = Field(
        default=False,
        description="true: its own iothread; a name: a shared one from guest.iothreads",
    )
    iothread_cpu: int | None = Field(
        default=None, ge=0, le=MAX_CPU, description="pin its own iothread"
    )
    num_queues: int | None = Field(default=None, ge=1, le=64)
    queue_size: int | None = Field(default=None, ge=4, le=1024)
    discard: bool = False
    throttle: Throttle | None = None

    @field_validator("queue_size")
    @classmethod
    def _power_of_two(cls, v: int | None) -> int | None:
        if v is not None and v & (v - 1):
            lower = 1 << (v.bit_length() - 1)
            raise ValueError(f"QEMU needs a power of two: {lower} or {lower * 2}, not {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Disk:
        if self.aio == "native" and self.cache not in ("none", "directsync"):
            raise ValueError(
                f"aio=native needs O_DIRECT: use cache none or directsync "
                f"(got cache={self.cache}), or aio threads/io_uring"
            )
        target = self.served_by
        if target == "guest":
            if not isinstance(self.backend, RbdBackend) or not self.backend.cluster.is_micro:
                raise ValueError(
                    "target guest (the guest is the Ceph client) needs an rbd "
                    "backend on vmlab's micro cluster (cluster: {})"
                )
            return self  # krbd: the guest maps the image with its own kernel driver
        allowed = {
            "vhost-user-blk": ("qsd", "spdk"),
            "vhost-scsi": ("lio",),
        }.get(self.model, ("qemu",))
        if target not in allowed:
            raise ValueError(
                f"model {self.model} is served by {' or '.join(allowed)}, not {target}"
            )
        if isinstance(self.backend, MallocBackend) and target != "spdk":
            raise ValueError(
                "backend malloc is a RAM disk inside an SPDK target: use model "
                f"vhost-user-blk with target spdk (not {target})"
            )
        if self.spdk is not None and target != "spdk":
            raise ValueError(f"spdk: configures target spdk, but this disk's target is {target}")
        if self.throttle is not None and target != "qemu":
            raise ValueError(f"throttle is applied by QEMU's block layer, not by {target}")
        if self.iothread_cpu is not None and self.iothread is not True:
            raise ValueError("iothread_cpu pins a disk's own iothread: set iothread: true")
        if self.iothread and self.model in ("nvme", "vhost-user-blk", "vhost-scsi"):
            raise ValueError(f"{self.model} has no iothread option in QEMU")
        if target == "lio" and isinstance(self.backend, FileBackend) and self.backend.overlay:
            raise ValueError("LIO serves a block device or a raw file, not a qcow2 overlay")
        if isinstance(self.backend, RbdBackend) and target == "lio" and not self.backend.krbd:
            raise ValueError("LIO serves RBD through the kernel driver: set backend.krbd: true")
        if self.backend.format == "qcow2" and target in ("spdk", "lio"):
            raise ValueError(f"{target} reads raw data: use format raw")
        return self

    @property
    def spdk_target(self) -> Spdk:
        """The SPDK target of a disk with target spdk (no ``spdk:``: one vmlab finds)."""
        return self.spdk or Spdk()

    @property
    def guest_is_client(self) -> bool:
        """The guest reaches this disk's data itself (fio's rbd engine): QEMU has no device."""
        return self.target == "guest"

    @property
    def host_krbd(self) -> bool:
        """This host's kernel maps the disk's RBD image (not a guest that maps it itself)."""
        return (
            isinstance(self.backend, RbdBackend) and self.backend.krbd and not self.guest_is_client
        )

    @property
    def served_by(self) -> str:
        if self.target is not None:
            return self.target
        return {"vhost-user-blk": "qsd", "vhost-scsi": "lio"}.get(self.model, "qemu")

    @property
    def serial(self) -> str:
        """What the guest reads back to find this disk (virtio and NVMe allow 20 chars)."""
        return f"vmlab-{self.name}"


class Nic(Model):
    """A NIC under test on the bench's lab network (the management NIC stays separate, so SSH
    works whatever is measured): a tap on the lab bridge, a macvtap in bridge mode, or (with
    launcher libvirt) a libvirt network of its own, ``forward`` nat or route, whose traffic
    reaches the lab through the host's routing."""

    name: str = Field(default="lab0", pattern=r"^[a-z0-9]{1,8}$")
    attach: Literal["tap", "macvtap", "network"] = "tap"
    forward: Literal["nat", "route"] | None = Field(
        default=None, description="attach network: libvirt's forward mode (default nat)"
    )
    model: Literal["virtio-net-pci", "e1000e"] = "virtio-net-pci"
    queues: int = Field(default=1, ge=1, le=16)
    vhost: bool = False

    @model_validator(mode="after")
    def _queues(self) -> Nic:
        if self.queues > 1 and self.model != "virtio-net-pci":
            raise ValueError(f"{self.model} has one queue; multi-queue needs virtio-net-pci")
        if self.forward is not None and self.attach != "network":
            raise ValueError(
                f"forward is how a libvirt network leaves the host: attach network, not "
                f"{self.attach}"
            )
        return self

    @property
    def forward_mode(self) -> Literal["nat", "route"]:
        return self.forward or "nat"


class RootfsImageSpec(Model):
    """vmlab's Debian 12 root filesystem (mmdebstrap + mkfs.ext4 -d), booted from an overlay:
    a tiny init, or systemd, or systemd + cloud-init configured by a NoCloud seed."""

    kind: Literal["rootfs"] = "rootfs"
    systemd: bool = False
    cloud_init: bool = False

    @model_validator(mode="after")
    def _cloud_init_needs_systemd(self) -> RootfsImageSpec:
        if self.cloud_init and not self.systemd:
            raise ValueError("cloud_init needs systemd: set systemd: true")
        return self


class CloudImageSpec(Model):
    """A cloud image (qcow2 or raw) with cloud-init, never written: guests boot overlays of it
    through their firmware, configured by a NoCloud seed vmlab generates."""

    kind: Literal["cloud"] = "cloud"
    source: str = Field(description="a local path or an http(s)/file URL")
    sha256: str | None = Field(default=None, pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")
    format: Literal["qcow2", "raw"] | None = None
    packages: list[str] = Field(default_factory=list, description="cloud-init installs them")
    runcmd: list[str] = Field(default_factory=list)
    network: Literal["static", "dhcp"] = "static"
    disk_size: Size | None = None
    cloud_init_timeout_s: int = Field(default=600, ge=10, le=DAY_S)


ImageSpec = Annotated[Union[RootfsImageSpec, CloudImageSpec], Field(discriminator="kind")]  # noqa: UP007


class IOThread(Model):
    """A shared iothread that several disks can name."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,13}$")
    cpu: int | None = Field(default=None, ge=0, le=MAX_CPU, description="host CPU to pin it to")


class Guest(Model):
    """One guest's hardware. The default image is vmlab's own initramfs guest."""

    memory_mib: int = Field(default=512, ge=256, le=1 << 20)
    memory_backend: Literal["default", "memfd", "hugepages", "file"] = "default"
    memory_path: Path | None = Field(default=None, description="for memory_backend file")
    cpus: int = Field(default=2, ge=1, le=256)
    vcpu_pinning: list[Annotated[int, Field(ge=0, le=MAX_CPU)]] | None = Field(
        default=None, description="host CPU per vCPU"
    )
    machine: str = Field(default="q35", description="a machine type name: q35, pc, microvm")
    cpu_model: str | None = None
    image: Literal["default"] | ImageSpec = "default"
    iothreads: list[IOThread] = Field(default_factory=list)
    disks: list[Disk] = Field(default_factory=lambda: [Disk()], min_length=1)
    nics: list[Nic] = Field(default_factory=list)
    hostdevs: list[str] = Field(
        default_factory=list,
        description="host PCI devices passed through with VFIO; a fio job aims at the block "
        "device of the first with disk: hostdev0",
    )

    def hostdev_names(self) -> list[str]:
        """What a fio job's ``disk`` calls each passed-through device, in ``hostdevs`` order."""
        return [f"hostdev{i}" for i in range(len(self.hostdevs))]

    kernel_args: str = ""

    @field_validator("machine")
    @classmethod
    def _machine(cls, v: str) -> str:
        if not re.fullmatch(MACHINE, v):
            raise ValueError(
                "a machine type is a name such as q35, pc or pc-q35-7.2 (`qemu-system-x86_64 "
                "-machine help` lists them); vmlab sets accel= and memory-backend= itself"
            )
        return v

    @field_validator("cpu_model")
    @classmethod
    def _cpu_model(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(CPU_MODEL, v):
            raise ValueError(
                "a CPU model is a name with optional feature flags, such as host, max or "
                "Skylake-Server,-hle,+pcid (`qemu-system-x86_64 -cpu help` lists them); "
                "leave it out for host under KVM and max under TCG"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Guest:
        names = [d.name for d in self.disks]
        if {"root", "seed"} & set(names):
            raise ValueError("disk names root and seed are taken by the boot disk and the seed")
        taken = [n for n in names if re.fullmatch(r"hostdev[0-9]+", n)]
        if taken:
            raise ValueError(
                f"disk name {taken[0]} is taken: a fio job names the guest's passed-through "
                "devices hostdev0, hostdev1, ... in guest.hostdevs order"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"disk names must be unique, repeated: {', '.join(dupes)}")
        if any(d.guest_is_client for d in self.disks) and not self.nics:
            raise ValueError(
                "a disk with target guest needs a lab NIC to reach the cluster: "
                "nics: [{attach: tap}]"
            )
        pool = {t.name for t in self.iothreads}
        for disk in self.disks:
            if isinstance(disk.iothread, str) and disk.iothread not in pool:
                raise ValueError(
                    f"disk {disk.name} names iothread {disk.iothread!r}, which guest.iothreads "
                    f"does not define (defined: {', '.join(sorted(pool)) or 'none'})"
                )
        for address in self.hostdevs:
            if not re.fullmatch(
                r"(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]", address
            ):
                raise ValueError(f"hostdev {address!r} is not a PCI address like 0000:01:00.0")
        if self.vcpu_pinning is not None and len(self.vcpu_pinning) != self.cpus:
            raise ValueError(
                f"vcpu_pinning lists {len(self.vcpu_pinning)} CPUs for {self.cpus} vCPUs"
            )
        if self.memory_backend == "file" and self.memory_path is None:
            raise ValueError("memory_backend file needs memory_path (a directory, e.g. /dev/shm)")
        return self

    @property
    def needs_shared_memory(self) -> bool:
        """vhost-user back ends map guest RAM: it must be a shared memory backend."""
        return any(d.model == "vhost-user-blk" for d in self.disks)

    @property
    def effective_memory_backend(self) -> str:
        if self.memory_backend == "default" and self.needs_shared_memory:
            return "memfd"
        return self.memory_backend


class FioJob(Model):
    """One fio job, run inside the guest against one disk."""

    name: str = Field(pattern=SLUG)
    disk: str = "data"
    rw: Literal["read", "write", "randread", "randwrite", "rw", "randrw", "trim", "randtrim"]
    rwmixread: int | None = Field(default=None, ge=0, le=100)
    bs: Size = "4k"
    iodepth: int = Field(default=1, ge=1, le=4096)
    numjobs: int = Field(default=1, ge=1, le=256)
    direct: bool = True
    ioengine: str = Field(default="libaio", pattern=r"^[a-z0-9_]{1,32}$")
    runtime_s: int = Field(default=120, ge=1, le=DAY_S)
    ramp_s: int = Field(default=0, ge=0, le=DAY_S)
    size: str | None = None
    options: dict[str, str | int] = Field(default_factory=dict)

    @field_validator("size")
    @classmethod
    def _job_size(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[1-9][0-9]?%|100%", v.strip()):
            parse_size(v)
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        check_fio_options(v)
        return v


class IperfJob(Model):
    """iperf3 between the guest (client) and a server on the lab network, over one NIC."""

    name: str = Field(pattern=SLUG)
    nic: str = "lab0"
    duration_s: int = Field(default=10, ge=1, le=DAY_S)
    reverse: bool = Field(default=False, description="the server sends, the guest receives")
    parallel: int = Field(default=1, ge=1, le=128)


def reference_jobs() -> list[FioJob]:
    """The two fio jobs of the reference experiment (design.md): latency and throughput."""
    common: dict[str, Any] = {
        "rw": "randrw",
        "rwmixread": 90,
        "bs": "4k",
        "numjobs": 1,
        "direct": True,
        "runtime_s": 120,
    }
    return [
        FioJob(name="latency", iodepth=1, **common),
        FioJob(name="throughput", iodepth=64, **common),
    ]


class Variant(Model):
    """One point of the matrix: the axis values that chose it and the guest it describes."""

    params: dict[str, str]
    launcher: Literal["qemu", "libvirt"] = "qemu"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    hypervisor: Hypervisor = "host"
    guest: Guest = Field(default_factory=Guest)

    @property
    def nested(self) -> bool:
        return self.hypervisor != "host"

    @model_validator(mode="after")
    def _network_needs_libvirt(self) -> Variant:
        if self.launcher != "libvirt" and any(n.attach == "network" for n in self.guest.nics):
            raise ValueError("a NIC with attach network joins a libvirt network: launcher: libvirt")
        return self


class Repeat(Model):
    """How often each job runs: a fixed count (``repeat: 3`` is ``{min: 3, max: 3}``), or from
    ``min`` to ``max`` until the answer is sure (:mod:`vmlab.bench.repeat`).

    ``until: ci`` stops a job once the confidence interval of its mean IOPS is within
    ±``ci_pct`` % of the mean. ``until: significant`` (a spec that compares configurations)
    does that for the first configuration, the reference; every other one stops once the
    interval of its mean's ratio to the reference's excludes 1, or is within ±``ci_pct`` %.
    """

    min: int = Field(default=3, ge=1, le=100)
    max: int = Field(default=20, ge=1, le=100)
    ci_pct: float | None = Field(default=None, gt=0, le=100)
    until: Literal["ci", "significant"] = "ci"

    @model_validator(mode="before")
    @classmethod
    def _count(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"min": data, "max": data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Repeat:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        if self.min < self.max and self.ci_pct is None:
            raise ValueError(
                "repeating from min to max needs a stopping rule: give ci_pct (e.g. 2 for ±2 %)"
            )
        if self.ci_pct is not None and self.min < 2:
            raise ValueError("ci_pct needs min >= 2: one repetition has no confidence interval")
        return self

    @property
    def fixed(self) -> bool:
        return self.ci_pct is None or self.min == self.max


class BenchSpec(Model):
    _free_text: ClassVar[frozenset[str]] = frozenset({"description"})
    _verbatim: ClassVar[frozenset[str]] = frozenset({"source"})

    name: str = Field(pattern=SLUG)
    description: str = ""
    runtime_s: int | None = Field(
        default=None, ge=1, le=DAY_S, description="overrides every job's runtime"
    )
    baseline: bool = Field(default=False, description="also run each job with fio on the host")
    repeat: Repeat = Field(
        default_factory=lambda: Repeat(min=1, max=1), description="repetitions of every job"
    )
    net_jobs: list[IperfJob] = Field(default_factory=list)
    warmup: bool = Field(default=False, description="one more repetition first, never counted")
    jobs: list[FioJob]
    variants: list[Variant] = Field(min_length=1)
    source: str = Field(default="", description="the spec text as the user wrote it")

    @property
    def nested(self) -> bool:
        """Its cases run inside nested L1 hosts (hypervisor: {kind: nested})."""
        return any(v.nested for v in self.variants)

    def job_runtime_s(self, job: FioJob) -> int:
        return self.runtime_s if self.runtime_s is not None else job.runtime_s
