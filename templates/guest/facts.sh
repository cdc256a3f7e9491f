#!/bin/sh
# Runs inside the guest (busybox sh or any POSIX sh). Prints what the guest is, then one
# "disk <serial|-> /dev/<name> <queues> <pci address|->" line per PCI-attached block device:
# virtio-blk exposes the serial in /sys/block/X/serial, NVMe on the controller, SCSI in VPD
# page 0x80; vhost-user-blk has none of its own, so the PCI address identifies it.
echo "kernel $(uname -r)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "distro ${PRETTY_NAME:-unknown}"; fi
# VMLAB_FIO_VERSION: the image's fio, known from its build (starting fio takes ~0.6 s under TCG)
echo "fio ${VMLAB_FIO_VERSION:-$(fio --version 2>/dev/null || echo missing)}"
echo "cpus $(grep -c ^processor /proc/cpuinfo)"
echo "memory_kib $(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
for dev in /sys/block/*; do
    name=${dev##*/}
    serial=""
    if [ -r "$dev/serial" ]; then
        serial=$(cat "$dev/serial")
    elif [ -r "$dev/device/serial" ]; then
        serial=$(cat "$dev/device/serial")
    elif [ -r "$dev/device/vpd_pg80" ]; then
        serial=$(tail -c +5 "$dev/device/vpd_pg80" | tr -d '\000')
    fi
    serial=$(echo "$serial" | tr -d ' ')
    pci=$(readlink -f "$dev/device" 2>/dev/null |
          grep -o '[0-9a-f]\{4\}:[0-9a-f]\{2\}:[0-9a-f]\{2\}\.[0-9a-f]' | tail -n 1)
    [ -n "$serial$pci" ] || continue
    queues=$(ls -d "$dev"/mq/* 2>/dev/null | wc -l)
    echo "disk ${serial:--} /dev/$name $queues ${pci:--}"
done
