"""`vmlab render` shows the argv that runs: every token from the same templates and the same
disk servers as the bench, with run-time values (fds, sockets, secrets) as placeholders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SPECS = Path(__file__).parent.parent / "data" / "specs"


def render(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "vmlab.cli", "render", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_lab_nics_are_in_the_preview() -> None:
    """Before: NIC argv was built in Python at run time only, so the preview had no lab NIC."""
    out = render(str(SPECS / "network.yaml"))
    assert "-netdev 'tap,id=lab0,fd=<tap-fd-0>'" in out
    assert "-netdev 'tap,id=lab0,fd=<macvtap-fd-0>'" in out
    assert "-netdev 'tap,id=lab0,fds=<tap-fd-0>:<tap-fd-1>,vhost=on'" in out
    assert "-device e1000e,netdev=lab1,id=nic-lab1," in out
    assert out.count("-device virtio-net-pci,netdev=lab0,id=nic-lab0,") == 3


def test_sidecars_and_targets_are_in_the_preview() -> None:
    out = render(str(SPECS / "targets.yaml"))
    assert "# disk data: SPDK RPC calls, made first:" in out
    assert "vhost_create_blk_controller" in out
    assert "# disk lio: LIO setup, made first:" in out and "targetcli" in out
    storage = render(str(SPECS / "storage.yaml"))
    assert "qemu-storage-daemon, started first:" in storage
    assert "--export 'type=vhost-user-blk," in storage
