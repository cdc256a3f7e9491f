#!/bin/sh
# busybox acpid runs this for the ACPI power button (QMP system_powerdown) in the rootfs guest
# without systemd: flush the root file system, then power off.
echo "vmlab-init: power button: powering off" > /dev/console
sync
busybox poweroff -f
