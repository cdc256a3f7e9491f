"""libvirt-python, imported on first use, its error codes, and removing a domain.

libvirt-python is an optional dependency (``pip install 'vmlab[libvirt]'``), so vmlab works
without it. :func:`remove_domain` is shared by the launcher and the sweep of stale domains.
"""

from __future__ import annotations

import importlib
import logging
import time
from types import ModuleType
from typing import Any

from vmlab.errors import HostError

log = logging.getLogger(__name__)

# --- libvirt-python, imported on first use ---------------------------------------------------
_MODULES: dict[str, ModuleType] = {}


def _quiet_handler(_ctx: object, err: Any) -> None:
    """libvirt prints every error to stderr unless a handler is registered: log it instead."""
    log.debug("libvirt: %s", err[2] if isinstance(err, list | tuple) and len(err) > 2 else err)


def libvirt_module(name: str = "libvirt") -> ModuleType:
    """``libvirt`` or ``libvirt_qemu`` from libvirt-python; HostError if it is not installed."""
    if name not in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise HostError(
                f"the libvirt launcher needs libvirt-python ({name} is not importable)",
                hint="apt-get install libvirt-dev pkg-config gcc python3-dev, then "
                "pip install 'vmlab[libvirt]' (libvirt-python)",
            ) from exc
        if name == "libvirt":
            module.registerErrorHandler(_quiet_handler, None)
        _MODULES[name] = module
    return _MODULES[name]


def _error_code(exc: BaseException) -> int | None:
    get = getattr(exc, "get_error_code", None)
    return int(get()) if callable(get) and get() is not None else None


# --- stopping ------------------------------------------------------------------------------
def _wait_inactive(domain: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while domain.isActive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def remove_domain(domain: Any, *, powerdown_s: float) -> None:
    """ACPI power button, wait, destroy; then undefine, on every path (Ctrl-C included)."""
    lv = libvirt_module()
    try:
        if powerdown_s > 0 and domain.isActive():
            domain.shutdownFlags(lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            if not _wait_inactive(domain, powerdown_s):
                log.info("domain %s did not power off within %.0f s", domain.name(), powerdown_s)
    except lv.libvirtError as exc:
        log.debug("shutting down %s: %s", domain.name(), exc)
    finally:
        try:
            if domain.isActive():
                domain.destroy()
        except lv.libvirtError as exc:
            if _error_code(exc) != lv.VIR_ERR_NO_DOMAIN:
                log.warning("destroying %s: %s", domain.name(), exc)
        finally:
            try:
                domain.undefineFlags(
                    lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                    | lv.VIR_DOMAIN_UNDEFINE_NVRAM
                )
            except lv.libvirtError as exc:
                if _error_code(exc) != lv.VIR_ERR_NO_DOMAIN:  # transient: gone on destroy
                    raise
