"""Where a spec's guests run: on this host (``host``, the default) or inside a nested L1 host
that vmlab builds from Debian packages and boots (``{kind: nested, ...}``, see
:mod:`vmlab.nested`).

    hypervisor:
      kind: nested
      kernel: [linux-image-amd64, linux-image-amd64/bookworm-backports]   # an axis: 6.1, 6.12
      memory_mib: 3072                # left out: enough for the largest case
      packages: [strace]                                      # more Debian packages in L1
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from vmlab.spec.base import Model

# A Debian package name, optionally with =version (Debian Policy 5.6.1 / 5.6.12, loosely).
DEBIAN_PACKAGE = r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$"
# L1's kernel may also come from another suite, as apt writes it: linux-image-amd64/<suite>.
KERNEL_PACKAGE = r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?(/[a-z0-9-]+)?$"
KERNEL_SUITES = ("bookworm-backports",)  # vmlab.guest.image.debs.EXTRA_SUITES
DEFAULT_KERNEL = "linux-image-amd64"


class NestedHypervisor(Model):
    """An L1 host: a Debian 12 root file system with ``kernel`` (a Debian kernel package, its
    modules included), QEMU and what the spec's cases need, booted by vmlab; the cases run
    inside it with this same vmlab."""

    kind: Literal["nested"] = "nested"
    kernel: str = Field(
        default=DEFAULT_KERNEL,
        pattern=KERNEL_PACKAGE,
        description="a Debian kernel package; /bookworm-backports: a newer one from backports",
    )
    memory_mib: int | None = Field(
        default=None,
        ge=1024,
        le=1 << 20,
        description="L1's memory; left out: its largest case's guest and SPDK hugepages, "
        "plus 1.5 GiB for L1 itself (QEMU, vmlab, a micro Ceph cluster), at least 3 GiB",
    )
    cpus: int = Field(default=2, ge=1, le=256)
    packages: list[str] = Field(default_factory=list, description="more Debian packages in L1")
    iommu: bool = Field(default=False, description="an emulated Intel IOMMU in L1 (for VFIO)")
    nvme: int = Field(
        default=0,
        ge=0,
        le=len(range(0x10, 0x14)),
        description="emulated NVMe controllers in L1 at 0000:00:10.0, :11.0, ... for the "
        "guests to take with VFIO (guest.hostdevs)",
    )

    @field_validator("kernel")
    @classmethod
    def _kernel(cls, v: str) -> str:
        if not v.startswith("linux-image-"):
            raise ValueError(f"{v!r} is not a Debian kernel package (linux-image-...)")
        suite = v.partition("/")[2]
        if suite and suite not in KERNEL_SUITES:
            raise ValueError(
                f"{v!r}: vmlab takes a kernel from the host's apt sources or from "
                f"{', '.join(KERNEL_SUITES)}, not {suite}"
            )
        return v

    @field_validator("packages")
    @classmethod
    def _packages(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not re.fullmatch(DEBIAN_PACKAGE, p)]
        if bad:
            raise ValueError(f"not Debian package names: {', '.join(map(repr, bad))}")
        return v

    @model_validator(mode="after")
    def _nvme_needs_iommu(self) -> NestedHypervisor:
        if self.nvme and not self.iommu:
            raise ValueError("nvme devices are for VFIO passthrough in L1: set iommu: true")
        return self

    @property
    def nvme_addresses(self) -> list[str]:
        """The PCI addresses of L1's emulated NVMe controllers, as guest.hostdevs names them."""
        return [f"0000:00:{slot:02x}.0" for slot in range(0x10, 0x10 + self.nvme)]

    @property
    def label(self) -> str:
        """Readable and file-name safe: the kernel package without ``linux-image-``, ``-bpo``
        for one from bookworm-backports."""
        name = self.kernel.removeprefix("linux-image-").replace("/bookworm-backports", "-bpo")
        return name.replace("=", "-").replace(":", "-")


def _which(value: Any) -> str:
    return "host" if isinstance(value, str) else "nested"


# Tagged, so a wrong nested value is reported once, as hypervisor.nested.<field>, rather than
# also as "Input should be 'host'".
Hypervisor = Annotated[
    Annotated[Literal["host"], Tag("host")] | Annotated[NestedHypervisor, Tag("nested")],
    Discriminator(_which),
]
