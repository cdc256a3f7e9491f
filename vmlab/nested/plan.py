"""The L1 plan: which nested hosts a spec needs, what goes into each, which cases run where.

Pure: no I/O. A spec's cases are grouped by their ``hypervisor`` value (one L1 per distinct
``{kind: nested, kernel, memory_mib, cpus, packages}``; a list of kernels is an axis, so two
kernels make two L1 hosts). Each L1 gets the Debian packages its cases need
(:func:`l1_packages`) on top of the minimal rootfs, and the kernel modules they load
(:func:`l1_modules`). Inside L1, vmlab runs the *inner spec* (:func:`inner_spec`): the spec as
the user wrote it without ``hypervisor:``, so an inner case id is the host's case id without
the hypervisor axes (:func:`inner_case_id`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from vmlab.errors import SpecError
from vmlab.plan import Case, case_id
from vmlab.spec import BenchSpec, BlockBackend, FileBackend, NestedHypervisor, RbdBackend

# Every L1: QEMU to boot the L2 guests, fio for the baseline, python3 for vmlab itself, kmod
# for modprobe, iproute2 for the lab network's bridges, taps and namespaces.
BASE_PACKAGES = ("qemu-system-x86", "qemu-utils", "fio", "python3", "kmod", "iproute2")
CEPH_CLIENT_PACKAGES = ("ceph-common", "qemu-block-extra")  # rbd CLI, krbd map, QEMU's rbd
CEPH_MICRO_PACKAGES = ("ceph-mon", "ceph-osd", "ceph-mgr")  # vmlab's micro cluster in L1
# launcher: libvirt: libvirtd and virtlogd with the QEMU driver (not libvirt-daemon-system: no
# default network, no systemd units), Debian's libvirt-python (built for L1's libvirt0; the
# payload carries only vmlab's required libraries), iptables and dnsmasq for libvirt networks.
LIBVIRT_PACKAGES = (
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "python3-libvirt",
    "iptables",
    "dnsmasq-base",
)
# SPDK is no Debian package: L1 gets the host's build (on the payload disk, at the same prefix)
# and the Debian libraries it links (../shared/tools/build-spdk: DPDK 22.11, librbd, uring).
SPDK_RUNTIME_PACKAGES = (
    "libaio1",
    "librados2",
    "librbd1",
    "librte-bus-pci23",
    "librte-cryptodev23",
    "librte-dmadev23",
    "librte-eal23",
    "librte-ethdev23",
    "librte-hash23",
    "librte-kvargs23",
    "librte-mbuf23",
    "librte-mempool-ring23",
    "librte-mempool23",
    "librte-net23",
    "librte-pci23",
    "librte-power23",
    "librte-rcu23",
    "librte-ring23",
    "librte-telemetry23",
    "librte-vhost23",
    "liburing2",
)
# Loaded once L1 is up: these always (cheap; L1's host facts then show /dev/vhost-net), the
# rest only when a case needs them.
ALWAYS_MODULES = ("tun", "vhost_net")
L1_OWN_MIB = 1536  # L1's kernel, QEMU, vmlab and a micro Ceph cluster, besides its guests
L1_MIN_MIB = 3072
NET_MODULES = ("bridge", "veth")


@dataclass(frozen=True)
class L1Plan:
    """One nested host and the cases it serves."""

    label: str  # the L1's name in the run (nested/<label>/): its kernel, made safe
    hypervisor: NestedHypervisor
    packages: tuple[str, ...]  # Debian packages beyond the minimal rootfs, sorted
    modules: tuple[str, ...]  # modprobe'd in L1 before the bench
    case_ids: tuple[str, ...]  # the host's case ids, in plan order
    inner_ids: Mapping[str, str]  # host case id -> the case id inside L1
    spdk: bool = False  # a case has a disk with target spdk: L1 gets the host's SPDK
    libvirt: bool = False  # a case has launcher libvirt: L1 starts virtlogd and libvirtd

    def describe(self) -> dict[str, Any]:
        """What goes into L1, as stored in the run (nested/<label>/plan.json) and golden."""
        return {
            "label": self.label,
            "kernel": self.hypervisor.kernel,
            "memory_mib": self.hypervisor.memory_mib,
            "cpus": self.hypervisor.cpus,
            "packages": list(self.packages),
            "modules": list(self.modules),
            "cases": {c: self.inner_ids[c] for c in self.case_ids},
            "spdk": self.spdk,
            **({"libvirt": True} if self.libvirt else {}),
        }


def inner_case_id(case: Case) -> str:
    return case_id({k: v for k, v in case.params.items() if not k.startswith("hypervisor")})


def _unsupported(case: Case) -> list[str]:
    """What a case asks for that vmlab cannot yet provide inside L1."""
    problems = []
    guest = case.variant.guest
    for disk in guest.disks:
        spdk = disk.spdk if disk.served_by == "spdk" else None
        if spdk is not None and (spdk.rpc_socket is not None or spdk.binary is not None):
            problems.append(
                f"disk {disk.name}: spdk.rpc_socket/binary name host paths; L1 starts the "
                "SPDK vmlab finds on the host: leave them out"
            )
        if isinstance(disk.backend, RbdBackend) and not disk.backend.cluster.is_micro:
            problems.append(
                f"disk {disk.name}: an external Ceph cluster (L1 sees only vmlab's micro cluster)"
            )
        if isinstance(disk.backend, FileBackend | BlockBackend) and disk.backend.path:
            problems.append(
                f"disk {disk.name}: backend path {disk.backend.path} is a host path; L1 has "
                "its own disks: leave path out for a scratch file"
            )
    hv = case.variant.hypervisor
    l1_nvme = hv.nvme_addresses if isinstance(hv, NestedHypervisor) else []
    for address in guest.hostdevs:
        if address.lower() not in l1_nvme and f"0000:{address.lower()}" not in l1_nvme:
            problems.append(
                f"hostdev {address}: not one of L1's emulated NVMe controllers "
                f"({', '.join(l1_nvme) or 'none: set hypervisor.nvme and iommu: true'})"
            )
    if guest.image != "default":
        problems.append("guest.image: only the default guest image is carried into L1 yet")
    return problems


def l1_packages(hv: NestedHypervisor, cases: Sequence[Case], *, net_jobs: bool) -> tuple[str, ...]:
    """The Debian packages L1 needs for ``cases`` (sorted, so the image cache key is stable)."""
    wanted = set(BASE_PACKAGES) | set(hv.packages)
    for case in cases:
        guest = case.variant.guest
        if guest.nics or net_jobs:
            wanted.add("iperf3")
        if guest.hostdevs:
            wanted.add("pciutils")
        if case.variant.launcher == "libvirt":
            wanted.update(LIBVIRT_PACKAGES)
        for disk in guest.disks:
            if disk.served_by == "lio":  # its D-Bus question needs a bus (vmlab starts one)
                wanted.update(("targetcli-fb", "dbus-daemon"))
            if disk.served_by == "spdk":
                wanted.update(SPDK_RUNTIME_PACKAGES)
            if isinstance(disk.backend, RbdBackend):
                wanted.update(CEPH_CLIENT_PACKAGES)
                if disk.backend.cluster.is_micro:
                    wanted.update(CEPH_MICRO_PACKAGES)
    return tuple(sorted(wanted))


def l1_modules(cases: Sequence[Case]) -> tuple[str, ...]:
    """Kernel modules to load in L1 for ``cases`` (in load order, no duplicates)."""
    wanted: list[str] = list(ALWAYS_MODULES)
    for case in cases:
        guest = case.variant.guest
        if guest.nics:
            wanted += NET_MODULES
        if any(n.vhost for n in guest.nics):
            wanted.append("vhost_net")
        if any(n.attach == "macvtap" for n in guest.nics):
            wanted.append("macvtap")
        if guest.hostdevs:
            wanted.append("vfio_pci")
        for disk in guest.disks:
            if disk.served_by == "lio":
                wanted += ["target_core_mod", "target_core_iblock", "target_core_file"]
                wanted.append("vhost_scsi")
            if disk.host_krbd:  # a guest that maps the image loads rbd in its own kernel
                wanted.append("rbd")
    return tuple(dict.fromkeys(wanted))


def l1_memory_mib(hv: NestedHypervisor, cases: Sequence[Case]) -> int:
    """``hv.memory_mib``, or enough for the largest of ``cases``: its guest's memory and the
    hugepages of its SPDK targets, plus what L1 itself uses."""
    if hv.memory_mib is not None:
        return hv.memory_mib
    need = 0
    for case in cases:
        guest = case.variant.guest
        spdk = {d.spdk_target.model_dump_json(): d.spdk_target.mem_mib
                for d in guest.disks if d.served_by == "spdk"}  # fmt: skip
        need = max(need, guest.memory_mib + sum(spdk.values()))
    return max(L1_MIN_MIB, need + L1_OWN_MIB)


def l1_plans(spec: BenchSpec, cases: Sequence[Case]) -> list[L1Plan]:
    """One plan per distinct nested hypervisor, in the order the cases first name it."""
    problems = [f"case {c.id}: {p}" for c in cases for p in _unsupported(c)]
    if any(not c.variant.nested for c in cases):
        problems.append("hypervisor: every case of a nested run must be nested")
    if problems:
        raise SpecError(
            f"{spec.name}: {len(problems)} thing(s) cannot run inside a nested L1 host yet",
            problems=problems,
            hint="run those cases with hypervisor: host, or change them as each line says",
        )
    groups: dict[str, tuple[NestedHypervisor, list[Case]]] = {}
    for case in cases:
        hv = case.variant.hypervisor
        assert isinstance(hv, NestedHypervisor)
        groups.setdefault(hv.model_dump_json(), (hv, []))[1].append(case)
    labels = [hv.label for hv, _ in groups.values()]
    if len(set(labels)) != len(labels):  # one kernel, other memory/cpus/packages: number them
        labels = [f"{label}-{index}" for index, label in enumerate(labels, start=1)]
    plans = []
    for label, (hv, group) in zip(labels, groups.values(), strict=True):
        inner = {c.id: inner_case_id(c) for c in group}
        if len(set(inner.values())) != len(inner):
            raise SpecError(
                f"{spec.name}: two cases of L1 {label} would share a case id inside it",
                hint="the hypervisor axes must be the only difference between L1 hosts",
            )
        plans.append(
            L1Plan(
                label=label,
                hypervisor=hv.model_copy(update={"memory_mib": l1_memory_mib(hv, group)}),
                packages=l1_packages(hv, group, net_jobs=bool(spec.net_jobs)),
                modules=l1_modules(group),
                case_ids=tuple(c.id for c in group),
                inner_ids=inner,
                spdk=any(d.served_by == "spdk" for c in group for d in c.variant.guest.disks),
                libvirt=any(c.variant.launcher == "libvirt" for c in group),
            )
        )
    return plans


def inner_spec(spec: BenchSpec) -> str:
    """The spec vmlab runs inside L1: the user's YAML without ``hypervisor:``, also in its
    ``include:`` entries (the cases run on L1 itself), with the run's runtime override written
    in."""
    if not spec.source:
        raise SpecError(
            f"{spec.name}: a nested run needs the spec's YAML text (this spec was built in Python)",
            hint="pass a spec file to `vmlab bench`",
        )
    raw = yaml.safe_load(spec.source)
    if not isinstance(raw, dict):
        raise SpecError(f"{spec.name}: the spec's YAML is not a mapping")
    raw.pop("hypervisor", None)
    for entry in raw.get("include") or []:  # an extra case may name its own L1
        if isinstance(entry, dict):
            entry.pop("hypervisor", None)
    raw["name"] = spec.name
    if spec.runtime_s is not None:
        raw["runtime_s"] = spec.runtime_s
    return "# vmlab nested: the inner spec, run inside L1\n" + yaml.safe_dump(raw, sort_keys=False)


def with_nested(spec: BenchSpec, hv: NestedHypervisor | None = None) -> BenchSpec:
    """``vmlab bench --nested``: every case that runs on the host runs in a default L1."""
    hv = hv or NestedHypervisor()
    variants = [v if v.nested else v.model_copy(update={"hypervisor": hv}) for v in spec.variants]
    return spec.model_copy(update={"variants": variants})
