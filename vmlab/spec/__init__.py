"""The bench spec: YAML validated once, at the edge, into frozen pydantic models.

A spec describes a matrix of guests. Any scalar field may be given as a list; each list is an
axis, and the guests to run are the cross product of the axes (see :func:`expand_matrix`). Each
combination is validated on its own, so an error names the exact field path that is wrong.

    name: compare-devices
    runtime_s: 10
    guest:
      memory_mib: 512
      disks:
        - model: [virtio-blk, virtio-scsi, nvme]     # an axis: three guests
          backend: {type: file, format: raw, size: 1G}
    jobs: reference                                   # the two jobs of the reference experiment

The package holds the models (:mod:`vmlab.spec.models`, :mod:`vmlab.spec.backends`,
:mod:`vmlab.spec.base`), the matrix expansion
(:mod:`vmlab.spec.matrix`) and the loading of a spec file (:mod:`vmlab.spec.load`); every public
name is importable from ``vmlab.spec``.
"""

from __future__ import annotations

from vmlab.sizes import parse_size
from vmlab.spec.backends import (
    Backend,
    BlockBackend,
    CephCluster,
    FileBackend,
    MallocBackend,
    RbdBackend,
    Throttle,
)
from vmlab.spec.base import (
    SLUG,
    Model,
)
from vmlab.spec.hypervisor import DEFAULT_KERNEL, Hypervisor, NestedHypervisor
from vmlab.spec.load import (
    CONFIRM_CASES,
    DEFAULT_LAB,
    MAX_CASES,
    default_lab,
    load_spec,
    parse_spec,
)
from vmlab.spec.matrix import expand_matrix
from vmlab.spec.models import (
    BenchSpec,
    CloudImageSpec,
    DeviceModel,
    Disk,
    FioJob,
    Guest,
    ImageSpec,
    IOThread,
    IperfJob,
    Nic,
    Repeat,
    RootfsImageSpec,
    Spdk,
    Variant,
    reference_jobs,
)

__all__ = [
    "CONFIRM_CASES",
    "DEFAULT_KERNEL",
    "DEFAULT_LAB",
    "MAX_CASES",
    "SLUG",
    "Backend",
    "BenchSpec",
    "BlockBackend",
    "CephCluster",
    "CloudImageSpec",
    "DeviceModel",
    "Disk",
    "FileBackend",
    "FioJob",
    "Guest",
    "Hypervisor",
    "IOThread",
    "ImageSpec",
    "IperfJob",
    "MallocBackend",
    "Model",
    "NestedHypervisor",
    "Nic",
    "RbdBackend",
    "Repeat",
    "RootfsImageSpec",
    "Spdk",
    "Throttle",
    "Variant",
    "default_lab",
    "expand_matrix",
    "load_spec",
    "parse_size",
    "parse_spec",
    "reference_jobs",
]
