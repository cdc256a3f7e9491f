#!/bin/sh
# Runs inside the guest (busybox sh or any POSIX sh). Prints what the guest is, then one
# "disk <serial> /dev/<name> <queues>" line per block device that carries a serial number:
# virtio-blk exposes it in /sys/block/X/serial, NVMe on the controller, SCSI in VPD page 0x80.
echo "kernel $(uname -r)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "distro ${PRETTY_NAME:-unknown}"; fi
echo "fio $(fio --version 2>/dev/null || echo missing)"
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
    [ -n "$serial" ] || continue
    queues=$(ls -d "$dev"/mq/* 2>/dev/null | wc -l)
    echo "disk $serial /dev/$name $queues"
done
