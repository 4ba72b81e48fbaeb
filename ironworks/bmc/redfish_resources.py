"""Reading and changing Redfish resources through sushy's objects, and the vendor quirks it takes.

``RedfishClient`` (``redfish.py``) runs these functions with a logged-in sushy root and system,
retries them and translates their errors; they return plain values spelled as Redfish spells them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
#: HTTP statuses worth another try: the BMC is busy or restarting its web server
TRANSIENT_HTTP = frozenset({500, 502, 503, 504})


def sushy_module() -> Any:
    """sushy, imported on first use (a server without Redfish nodes never loads it)."""
    import sushy  # type: ignore[import-untyped]

    return sushy


@dataclass(frozen=True, slots=True)
class BootSettings:
    """The boot override as the BMC reports it."""

    target: str | None
    enabled: str | None
    mode: str | None
    allowed_targets: frozenset[str]


@dataclass(frozen=True, slots=True)
class Inventory:
    """What out-of-band inspection learns; None where the BMC does not say."""

    cpus: int | None
    cpu_arch: str | None
    memory_mb: int | None
    macs: list[str]
    disk_bytes: int | None
    boot_mode: str | None


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A BMC task (a firmware update ...): still running, or finished well or badly."""

    done: bool
    ok: bool
    percent: int | None = None
    state: str | None = None
    messages: tuple[str, ...] = ()


def value(enum_or_none: Any) -> str | None:
    """sushy maps protocol strings to enums (unknown ones to None); give back the protocol string."""
    return None if enum_or_none is None else str(getattr(enum_or_none, "value", enum_or_none))


def optional(fn: Callable[[], T]) -> T | None:
    """A part the BMC may not have: a missing link, 400, 404 or 5xx means "not reported"."""
    sx = sushy_module().exceptions
    try:
        return fn()
    except (sx.MissingAttributeError, sx.ResourceNotFoundError, sx.ServerSideError, sx.BadRequestError):
        return None


def boot_settings(system: Any) -> BootSettings:
    """The boot override target, its frequency, the boot mode and the targets the BMC accepts."""
    boot = system.boot
    if boot is None:
        return BootSettings(None, None, None, frozenset())
    allowed = frozenset(boot.allowed_values or ())
    return BootSettings(value(boot.target), value(boot.enabled), value(boot.mode), allowed)


def set_boot(system: Any, target: str | None, enabled: str | None, mode: str | None) -> None:
    """PATCH the boot override (only the parts given)."""
    sushy = sushy_module()
    system.set_system_boot_options(
        target=sushy.BootSource(target) if target else None,
        enabled=sushy.BootSourceOverrideEnabled(enabled) if enabled else None,
        mode=sushy.BootSourceOverrideMode(mode) if mode else None,
    )


def inventory(system: Any) -> Inventory:
    """CPUs (logical), architecture, memory, NIC MACs, the largest disk or volume, the boot mode."""
    cpus, arch = 0, None
    for proc in optional(lambda: system.processors.get_members()) or []:
        cpus += proc.total_threads or proc.total_cores or 1
        arch = arch or value(proc.instruction_set) or value(proc.processor_architecture)
    if not cpus:
        cpus = int((system.json.get("ProcessorSummary") or {}).get("Count") or 0)
    gib = system.memory_summary.size_gib if system.memory_summary else None
    macs: list[str] = []
    for nic in optional(lambda: system.ethernet_interfaces.get_members()) or []:
        mac = (nic.mac_address or nic.permanent_mac_address or "").lower()
        if mac and mac != "00:00:00:00:00:00" and mac not in macs:
            macs.append(mac)
    sizes = [
        optional(lambda: system.simple_storage.max_size_bytes),
        optional(lambda: system.storage.max_drive_size_bytes),
        optional(lambda: system.storage.max_volume_size_bytes),
    ]
    disk = max((s for s in sizes if s), default=None)
    mode = value(system.boot.mode) if system.boot is not None else None
    return Inventory(cpus or None, arch, int(gib * 1024) if gib else None, macs, disk, mode)


_BIOS_WORDS = re.compile(r"\b(bios|system rom|uefi)\b")
_BMC_WORDS = re.compile(r"\b(bmc|idrac|ilo|xcc|remote access controller)\b")


def component_name(identity: str, name: str) -> str | None:
    """``bios`` or ``bmc`` for those firmware inventory entries, else the entry's id.

    Vendors name them differently: Supermicro ``BIOS``/``BMC``; Dell ``Installed-159-1.7.5__BIOS.Setup.1-1``
    and ``Installed-25227-6.10__iDRAC.Embedded.1-1``; HPE ``System ROM`` and ``iLO 5``; Lenovo
    ``BIOS-Primary`` and ``BMC-Primary``. Dell also lists ``Previous-``/``Available-`` images: not what runs.
    """
    if identity.startswith(("Previous-", "Available-")):
        return None
    text = re.sub(r"[._\-]+", " ", f"{identity} {name}").lower()
    if _BIOS_WORDS.search(text):
        return "bios"
    if _BMC_WORDS.search(text):
        return "bmc"
    return identity or None


def firmware_versions(root: Any, system: Any) -> dict[str, str]:
    """Component (``bios``, ``bmc``, else the inventory id) -> version."""
    out: dict[str, str] = {}
    for item in optional(lambda: root.get_update_service().firmware_inventory.get_members()) or []:
        name = component_name(item.identity or "", item.name or "")
        if name and item.version and name not in out:
            out[name] = str(item.version)
    # BMCs without a FirmwareInventory still report these two on the system and its manager
    if "bios" not in out and system.bios_version:
        out["bios"] = str(system.bios_version)
    managers = optional(lambda: system.managers) or []
    if "bmc" not in out and managers and managers[0].firmware_version:
        out["bmc"] = str(managers[0].firmware_version)
    return out


def simple_update(root: Any, system: Any, url: str, component: str) -> str:
    """Start UpdateService.SimpleUpdate; returns the task monitor URI.

    Targets name what to flash: the system for ``bios``, its manager for ``bmc``, none otherwise (the
    BMC decides from the image; sushy-tools needs them, and DMTF's spec defines them this way).
    """
    targets = None
    if component == "bios":
        targets = [system.path]
    elif component == "bmc":
        managers = optional(lambda: system.managers) or []
        targets = [managers[0].path] if managers else None
    protocol = "HTTPS" if url.lower().startswith("https:") else "HTTP"
    monitor = root.get_update_service().simple_update(url, targets=targets, transfer_protocol=protocol)
    return str(monitor.task_monitor_uri)


def task_status(root: Any, monitor_uri: str) -> TaskStatus:
    """Poll a task monitor once: 202 is running; a Task body says how it ended; other 2xx is success."""
    sx = sushy_module().exceptions
    try:
        monitor = root.get_task_monitor(monitor_uri)
    except sx.HTTPError as exc:
        if exc.status_code in TRANSIENT_HTTP or exc.status_code in (401, 403):
            raise
        return TaskStatus(done=True, ok=False, messages=(f"HTTP {exc.status_code}: {exc.detail or exc.code}",))
    task = monitor.task
    if monitor.is_processing:
        state = value(task.task_state) if task is not None else None
        return TaskStatus(done=False, ok=False, percent=task.percent_complete if task else None, state=state)
    body = monitor.response.json() if monitor.response.content else {}
    if not body.get("TaskState"):
        return TaskStatus(done=True, ok=True)  # the operation's own final answer (Redfish spec)
    task = monitor.get_task()
    state, status = value(task.task_state), value(task.task_status)
    messages = tuple(str(m.message or m.message_id) for m in (task.messages or []) if m.message or m.message_id)
    ok = state == "Completed" and status in (None, "OK", "Warning")
    return TaskStatus(done=True, ok=ok, percent=task.percent_complete, state=state, messages=messages)


_MEDIA_TYPES = {"cd": {"CD", "DVD"}, "usb": {"USBStick"}, "floppy": {"Floppy"}}


def virtual_media(system: Any, device: str) -> Any:
    """The virtual media slot for ``device`` (``cd``, ``usb`` or ``floppy``)."""
    sx = sushy_module().exceptions
    wanted = _MEDIA_TYPES.get(device, {device})
    try:
        collections = [system.virtual_media]
    except sx.MissingAttributeError:  # BMCs before Redfish 2021.2 hang it off the manager, not the system
        collections = [m.virtual_media for m in system.managers]
    for coll in collections:
        for vm in coll.get_members():
            if wanted & {value(t) for t in vm.media_types or ()}:
                return vm
    raise sx.MissingAttributeError(attribute=f"VirtualMedia of type {device}", resource=system.path)


def virtual_media_kinds(system: Any) -> list[str]:
    """The virtual media devices the BMC offers for the system (``cd``, ``usb``, ``floppy``); [] for none."""
    sx = sushy_module().exceptions
    try:
        collections = [system.virtual_media]
    except sx.MissingAttributeError:  # the manager's collection on BMCs before Redfish 2021.2
        collections = [m.virtual_media for m in (optional(lambda: system.managers) or [])]
    types: set[str] = set()
    for coll in collections:
        for vm in optional(coll.get_members) or []:
            types |= {value(t) or "" for t in vm.media_types or ()}
    return [kind for kind, wanted in _MEDIA_TYPES.items() if wanted & types]


def insert_media(system: Any, url: str, device: str) -> None:
    """Insert ``url`` (ejecting another image first; nothing to do when it is already in)."""
    vm = virtual_media(system, device)
    if vm.inserted and vm.image == url:
        return
    if vm.inserted:
        vm.eject_media()
    vm.insert_media(url, inserted=True, write_protected=True)


def eject_media(system: Any, device: str) -> None:
    """Eject whatever ``device`` holds (nothing to do when it is empty)."""
    vm = virtual_media(system, device)
    if vm.inserted:
        vm.eject_media()
