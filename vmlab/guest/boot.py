"""How one case's guest boots and how to know it is ready, whatever its image.

- default: the image's kernel and initramfs; ready at VMLAB-READY; host key from the build.
- rootfs: its kernel, an overlay of its base as root disk; with cloud_init also a seed, and
  ready when cloud-init is done; host key from the build (or the seed).
- cloud: its own firmware and boot loader on an overlay of the image, a seed, cloud-init;
  host key from the seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from vmlab.guest import cloud, cloudinit
from vmlab.guest.image import GuestImage, authkey_cmdline
from vmlab.guest.image.recipe import BOOT_GROUPS_ARG
from vmlab.guest.image.stubs import FULL_ENGINES
from vmlab.guest.rootfs import build_rootfs
from vmlab.render.model import BootImage, mac_address
from vmlab.results.rundir import CaseDir
from vmlab.spec import CloudImageSpec, FioJob, Guest, RbdBackend, RootfsImageSpec, parse_size


@dataclass(frozen=True)
class BootPlan:
    boot: BootImage
    ready_marker: str
    failed_marker: str
    host_key: str
    user: str
    instance_id: str | None = None  # cloud-init guests: the identity check and the wait
    cloud_init_timeout_s: float | None = None


def _cmdline(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _seed(
    case_id: str,
    case_dir: CaseDir,
    nonce: str,
    public_key: str,
    *,
    dhcp: bool,
    packages: tuple[str, ...] = (),
    runcmd: tuple[str, ...] = (),
) -> cloudinit.SeedConfig:
    config = cloudinit.SeedConfig(
        instance_id=cloudinit.new_instance_id(nonce),
        authorized_keys=(public_key,),
        host_key=cloudinit.generate_host_key(),
        network=cloudinit.NetworkConfig(mac=mac_address(case_id), dhcp=dhcp),
        packages=packages,
        runcmd=runcmd,
    )
    cloudinit.make_seed(config, case_dir.file("seed.iso"))
    return config


def needs_full_image(guest: Guest, jobs: Iterable[FioJob]) -> bool:
    """Whether the default guest boots its full initramfs: fio in it uses an engine whose
    libraries the slim one only stands in for (a job's ``ioengine``, or the rbd engine on a
    disk the guest reaches as a Ceph client; a guest that maps its image with krbd runs
    libaio)."""
    rbd_client = any(
        d.guest_is_client and isinstance(d.backend, RbdBackend) and not d.backend.krbd
        for d in guest.disks
    )
    return rbd_client or any(job.ioengine in FULL_ENGINES for job in jobs)


SCSI_MODELS = ("virtio-scsi", "vhost-scsi")  # both are virtio-scsi to the guest's kernel


def boot_groups(guest: Guest) -> str:
    """The default image's ``vmlab.modules=`` argument: the module groups (recipe.
    ON_DEMAND_MODULES) /init loads at boot for this guest's disks, or '' for none."""
    groups = ["scsi"] if any(d.model in SCSI_MODELS for d in guest.disks) else []
    return f"{BOOT_GROUPS_ARG}={','.join(groups)}" if groups else ""


def preview_boot(guest: Guest, default: BootImage) -> BootImage:
    """What `vmlab render` shows for a guest's boot, without building or downloading
    (``default``: the default image's boot for this guest's jobs)."""
    image = guest.image
    if image == "default":
        cmdline = _cmdline(default.cmdline, boot_groups(guest), guest.kernel_args)
        return replace(default, cmdline=cmdline)
    root = Path("<scratch>/boot/<case>-root.qcow2")
    if isinstance(image, RootfsImageSpec):
        seed = Path("<run>/cases/<case>/seed.iso") if image.cloud_init else None
        return BootImage(
            Path("<rootfs>/vmlinux"),
            Path("<rootfs>/initrd.img"),
            _cmdline(
                "<rootfs cmdline> root=LABEL=vmlab-root rw vmlab.nonce=<per boot>",
                guest.kernel_args,
            ),
            root_disk=root,
            seed=seed,
            no_reboot=seed is None,
        )
    return BootImage(
        None, None, "", root_disk=root, seed=Path("<run>/cases/<case>/seed.iso"), no_reboot=False
    )


def plan_boot(
    case_id: str,
    guest: Guest,
    *,
    case_dir: CaseDir,
    scratch: Path,
    nonce: str,
    public_key: str,
    default: GuestImage,
    full: bool = False,
) -> BootPlan:
    """Build (or reuse) what the guest boots from; overlays go under `scratch`. ``full``: the
    default image boots its full initramfs (:func:`needs_full_image`)."""
    identity = f"vmlab.nonce={nonce}"
    image = guest.image
    if image == "default":
        cmdline = _cmdline(
            default.cmdline,
            authkey_cmdline(public_key),
            identity,
            boot_groups(guest),
            guest.kernel_args,
        )
        return BootPlan(
            BootImage(default.kernel, default.initrd_for(full), cmdline),
            default.ready_marker,
            default.failed_marker,
            default.host_key,
            default.user,
        )
    scratch.mkdir(parents=True, exist_ok=True)
    if isinstance(image, RootfsImageSpec):
        rootfs = build_rootfs(systemd=image.systemd, cloud_init=image.cloud_init)
        overlay = cloud.make_overlay(
            rootfs.base, scratch / f"{case_id}-root.qcow2", base_format=rootfs.base_format
        )
        cmdline = _cmdline(rootfs.cmdline, authkey_cmdline(public_key), identity, guest.kernel_args)
        if not image.cloud_init:
            assert rootfs.host_key is not None and rootfs.ready_marker is not None
            return BootPlan(
                BootImage(rootfs.kernel, rootfs.initrd, cmdline, root_disk=overlay),
                rootfs.ready_marker,
                rootfs.failed_marker,
                rootfs.host_key,
                rootfs.user,
            )
        config = _seed(case_id, case_dir, nonce, public_key, dhcp=False)
        return BootPlan(
            BootImage(
                rootfs.kernel,
                rootfs.initrd,
                cmdline,
                root_disk=overlay,
                seed=case_dir.file("seed.iso"),
                no_reboot=False,
            ),
            cloudinit.CLOUD_READY_MARKER,
            rootfs.failed_marker,
            cloudinit.pinned_host_key(config),
            config.user,
            config.instance_id,
            600.0,
        )
    assert isinstance(image, CloudImageSpec)
    base = cloud.resolve_cloud_image(image.source, sha256=image.sha256)
    size = parse_size(image.disk_size) if image.disk_size else None
    overlay = cloud.make_overlay(
        base, scratch / f"{case_id}-root.qcow2", base_format=image.format, size=size
    )
    config = _seed(
        case_id,
        case_dir,
        nonce,
        public_key,
        dhcp=image.network == "dhcp",
        packages=tuple(image.packages),
        runcmd=tuple(image.runcmd),
    )
    return BootPlan(
        BootImage(
            None, None, "", root_disk=overlay, seed=case_dir.file("seed.iso"), no_reboot=False
        ),
        cloudinit.CLOUD_READY_MARKER,
        "VMLAB-INIT-FAILED",
        cloudinit.pinned_host_key(config),
        config.user,
        config.instance_id,
        float(image.cloud_init_timeout_s),
    )
