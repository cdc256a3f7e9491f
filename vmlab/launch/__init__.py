"""Launchers: QEMU directly (argv + QMP), libvirt, and the sidecars a guest needs."""
