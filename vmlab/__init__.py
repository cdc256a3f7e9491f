"""vmlab: benchmark virtualized storage on KVM/QEMU."""

__version__ = "0.1.0"
