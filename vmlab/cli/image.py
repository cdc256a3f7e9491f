"""`vmlab image build` / `info`: the guests vmlab boots (the default initramfs guest, and the
Debian rootfs, optionally as a firmware-bootable disk)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from vmlab.cli.app import err, new_app, out
from vmlab.cli.spec import check_choice
from vmlab.errors import VmlabError

app = new_app("The default guest image (kernel + initramfs with fio and sshd).")


@app.command("build")
def image_build(
    kind: Annotated[
        str,
        typer.Option(help="default (the initramfs guest) or rootfs (a Debian ext4 root disk)"),
    ] = "default",
    systemd: Annotated[
        bool, typer.Option(help="rootfs: boot systemd, not vmlab's tiny init")
    ] = False,
    cloud_init: Annotated[
        bool, typer.Option(help="rootfs: with cloud-init (NoCloud seed); implies --systemd")
    ] = False,
    disk: Annotated[
        bool,
        typer.Option(
            help="rootfs: also a firmware-bootable qcow2 (MBR, syslinux, kernel, root): use it "
            "as `image: {kind: cloud, source: PATH}`"
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="rebuild even if cached")] = False,
) -> None:
    """Build (or reuse) a guest image and print where it is."""
    from vmlab.guest.image import build_image

    def progress(message: str) -> None:
        err.print(f"[dim]{escape(message)}[/]")

    check_choice(kind, ("default", "rootfs"), "--kind")
    if kind == "default":
        if systemd or cloud_init or disk:
            raise typer.BadParameter(
                "--systemd, --cloud-init and --disk build a rootfs: add --kind rootfs",
                param_hint="--kind",
            )
        out.print(str(build_image(force=force, progress=progress).root))
        return
    from vmlab.guest.diskimage import build_disk_image
    from vmlab.guest.rootfs import build_rootfs

    rootfs = build_rootfs(
        systemd=systemd or cloud_init, cloud_init=cloud_init, force=force, progress=progress
    )
    out.print(str(rootfs.root))
    if disk:
        out.print(str(build_disk_image(rootfs)))


@app.command("info")
def image_info() -> None:
    """Show the cached default guest image, if any."""
    from vmlab.guest.image import find_image

    image = find_image()
    if image is None:
        raise VmlabError("no guest image is built yet", hint="run `vmlab image build`")
    for key, value in (
        ("path", image.root),
        ("key", image.key),
        ("kernel", image.kernel),
        ("kernel version", image.kernel_version),
        ("initrd", image.initrd),
        ("initrd (slim)", image.slim_initrd),
        ("fio", image.fio_version),
        ("host key", image.host_key),
        ("cmdline", image.cmdline),
    ):
        out.print(f"{key:15} {value}")
