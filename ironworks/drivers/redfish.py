"""``redfish``: machines managed through their BMC's Redfish API (via ``ironworks.bmc.redfish``).

``driver_info`` uses Ironic's names (``PROPERTIES``). Interface calls may block: power changes
poll the BMC until it reports the target state (``poll_interval``, ``clock`` and ``sleep`` are
injectable). The BIOS and firmware interfaces, whose work happens in steps that never sleep, are in
``redfish_steps``.

Boot is network boot (``ipxe``, the default; ``pxe``; ``petitboot``; ``ironworks.drivers.pxe``),
``redfish-virtual-media`` (``ironworks.drivers.vmedia``: ISOs on the BMC's virtual CD) or ``fake``.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ironworks.bmc.redfish import RedfishClient, RedfishEndpoint, shared_client
from ironworks.drivers.base import (
    BootDevice,
    InspectInterface,
    Interface,
    ManagementInterface,
    PowerInterface,
    PowerState,
    Task,
    ValidationError,
)
from ironworks.drivers.registry import HardwareType
from ironworks.drivers.steps import Done, Outcome
from ironworks.errors import BmcTimeout, BmcUnsupported, DriverError

PROPERTIES: dict[str, str] = {
    "redfish_address": "The BMC's Redfish URL or host (https is assumed without a scheme). Required.",
    "redfish_system_id": "The system's path, e.g. /redfish/v1/Systems/1 (or its id). Optional when the "
    "BMC manages exactly one system.",
    "redfish_username": "User name for the BMC. Optional.",
    "redfish_password": "Password for redfish_username. Optional.",
    "redfish_verify_ca": "Verify the BMC's TLS certificate: true (default), false, or the path of a CA "
    "bundle file or directory. Optional.",
    "redfish_auth_type": "basic, session or auto (session, falling back to basic; the default). Optional.",
}
_AUTH_TYPES = ("basic", "session", "auto")
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_driver_info(info: dict[str, Any]) -> tuple[RedfishEndpoint | None, list[str]]:
    """The endpoint described by ``driver_info``, and every problem with it."""
    problems: list[str] = []
    address = info.get("redfish_address")
    base = ""
    if not address or not isinstance(address, str):
        problems.append("redfish_address is required: the BMC's URL or host, e.g. https://10.0.0.5")
    else:
        shown = re.sub(
            r"^([a-zA-Z][a-zA-Z0-9+.-]*://)?[^/@]*@", r"\1***@", address
        )  # never echo credentials put in the URL
        try:
            url = urlsplit(address if "://" in address else f"https://{address}")
            host = url.hostname
        except ValueError:  # an unbalanced IPv6 bracket, say
            url, host = urlsplit("invalid://"), None
        if "@" in url.netloc:
            problems.append(f"redfish_address {shown!r} must not hold credentials: use redfish_username/password")
        elif url.scheme not in ("http", "https", "invalid"):
            problems.append(f"redfish_address {shown!r} must use http or https")
        elif not host:
            problems.append(f"redfish_address {shown!r} has no valid host")
        elif url.path.strip("/"):
            problems.append(f"redfish_address {shown!r} must not have a path (put the system in redfish_system_id)")
        base = f"{url.scheme}://{url.netloc}"
    system = info.get("redfish_system_id")
    if system is not None and (not isinstance(system, str) or not system.strip("/")):
        problems.append("redfish_system_id must be a system path such as /redfish/v1/Systems/1, or its id")
        system = None
    elif isinstance(system, str) and not system.startswith("/"):
        system = f"/redfish/v1/Systems/{system}"
    user, password = info.get("redfish_username"), info.get("redfish_password")
    for key, val in (("redfish_username", user), ("redfish_password", password)):
        if val is not None and not isinstance(val, str):
            problems.append(f"{key} must be a string")
    if password and not user:
        problems.append("redfish_password is set but redfish_username is not")
    verify: bool | str = True
    raw = info.get("redfish_verify_ca", True)
    if isinstance(raw, bool):
        verify = raw
    elif isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
        verify = raw.strip().lower() in _TRUE
    elif isinstance(raw, str) and os.path.exists(raw):
        verify = raw
    else:
        problems.append(f"redfish_verify_ca must be true, false or an existing CA bundle path, not {raw!r}")
    auth = info.get("redfish_auth_type", "auto")
    if auth not in _AUTH_TYPES:
        problems.append(f"redfish_auth_type must be one of {', '.join(_AUTH_TYPES)}, not {auth!r}")
    if problems:
        return None, problems
    ep = RedfishEndpoint(base, user or None, password or None, verify, str(auth), system)
    return ep, []


class RedfishBase(Interface):
    """What every Redfish interface shares: driver_info, the client, the clocks."""

    properties: ClassVar[dict[str, str]] = PROPERTIES

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.client: RedfishClient = shared_client()
        self.clock = time.monotonic  # power waits
        self.wall_clock = time.time  # deadlines kept in driver_internal_info (they outlive a process)
        self.sleep = time.sleep

    def validate(self, task: Task) -> None:
        """``driver_info`` describes a BMC well enough to reach it (every problem listed); no BMC traffic."""
        _, problems = parse_driver_info(task.node.driver_info)
        if problems:
            raise ValidationError(f"Invalid Redfish driver_info of node {task.node.uuid}: {'; '.join(problems)}.")

    def endpoint(self, task: Task) -> RedfishEndpoint:
        """The node's BMC (``DriverError`` naming the problems when driver_info is wrong)."""
        ep, problems = parse_driver_info(task.node.driver_info)
        if ep is None:
            raise DriverError(f"Invalid Redfish driver_info of node {task.node.uuid}: {'; '.join(problems)}.")
        return ep


# Ironic power target -> (ResetType, the PowerState the BMC reports when it is done)
_RESETS = {
    PowerState.ON: ("On", "On"),
    PowerState.OFF: ("ForceOff", "Off"),
    PowerState.SOFT_OFF: ("GracefulShutdown", "Off"),
    PowerState.REBOOT: ("ForceRestart", "On"),
    PowerState.SOFT_REBOOT: ("GracefulRestart", "On"),
}
_POWER_STATES = {"On": PowerState.ON, "PoweringOn": PowerState.ON, "Off": PowerState.OFF, "PoweringOff": PowerState.OFF}


class RedfishPower(RedfishBase, PowerInterface):
    """Power through ComputerSystem.Reset; changes wait until the BMC reports the result."""

    name = "redfish"
    poll_interval = 1.0
    default_timeout = 60.0

    def get_power_state(self, task: Task) -> str:
        """``power on``/``power off`` (transitions count as their destination), else ``error``."""
        raw = self.client.power_state(self.endpoint(task))
        return _POWER_STATES.get(raw or "", PowerState.ERROR)

    def start_power_change(self, task: Task, state: str) -> str | None:
        """Ask the BMC for ``state`` without waiting; the Redfish state to expect, None if already there."""
        if state not in _RESETS:
            raise BmcUnsupported(f"Redfish power cannot reach {state!r}; targets: {', '.join(sorted(_RESETS))}.")
        ep = self.endpoint(task)
        reset, final = _RESETS[state]
        current = self.client.power_state(ep)
        if state in (PowerState.ON, PowerState.OFF, PowerState.SOFT_OFF) and current == final:
            return None  # idempotent: a second "power on" changes nothing
        if state in (PowerState.REBOOT, PowerState.SOFT_REBOOT) and current in ("Off", "PoweringOff"):
            reset = "On"  # rebooting a machine that is off powers it on
        self.client.reset(ep, reset, operation=f"requesting {reset} for '{state}'")
        return final

    def set_power_state(self, task: Task, state: str, *, timeout: float | None = None) -> None:
        """Move to ``state`` and return once the BMC reports it; ``BmcTimeout`` after ``timeout`` seconds."""
        final = self.start_power_change(task, state)
        if final is None:
            return
        limit = timeout or self.default_timeout
        deadline = self.clock() + limit
        ep = self.endpoint(task)
        while True:
            current = self.client.power_state(ep, operation=f"waiting for power state {final}")
            if current == final:
                return
            left = deadline - self.clock()
            if left <= 0:
                raise BmcTimeout(
                    f"Redfish BMC {ep.address} still reports power state {current} {limit:g}s after the "
                    f"request for '{state}': check the machine, or retry with a longer timeout.",
                    bmc=ep.address,
                )
            self.sleep(min(self.poll_interval, left))

    def reboot(self, task: Task, *, timeout: float | None = None) -> None:
        """ForceRestart, or On when the machine is off; returns once it reports On."""
        self.set_power_state(task, PowerState.REBOOT, timeout=timeout)

    def supported_power_states(self, task: Task) -> list[str]:
        """Every power target."""
        return sorted(_RESETS)


_BOOT_TARGETS = {
    BootDevice.PXE: "Pxe",
    BootDevice.DISK: "Hdd",
    BootDevice.CDROM: "Cd",
    BootDevice.BIOS: "BiosSetup",
}
_BOOT_MODES = {"uefi": "UEFI", "bios": "Legacy"}


class RedfishManagement(RedfishBase, ManagementInterface):
    """Boot device (BootSourceOverrideTarget, Once or Continuous) and boot mode."""

    name = "redfish"

    def get_supported_boot_devices(self, task: Task) -> list[str]:
        """pxe, disk, cdrom, bios: those the BMC lists as allowed (all when it lists none)."""
        allowed = self.client.boot_settings(self.endpoint(task)).allowed_targets
        return [dev for dev, target in _BOOT_TARGETS.items() if not allowed or target in allowed]

    def set_boot_device(self, task: Task, device: str, *, persistent: bool = False) -> None:
        """Boot from ``device`` next time (Once) or every time (Continuous)."""
        if device not in _BOOT_TARGETS:
            raise BmcUnsupported(
                f"Redfish management cannot set boot device {device!r}; supported: {', '.join(_BOOT_TARGETS)}."
            )
        self.client.set_boot(
            self.endpoint(task),
            target=_BOOT_TARGETS[device],
            enabled="Continuous" if persistent else "Once",
            operation=f"setting the boot device to {device}",
        )

    def get_boot_device(self, task: Task) -> dict[str, Any]:
        """``{"boot_device": pxe|disk|cdrom|bios|None, "persistent": bool|None}`` as the BMC reports it."""
        boot = self.client.boot_settings(self.endpoint(task))
        device = {target: dev for dev, target in _BOOT_TARGETS.items()}.get(boot.target or "")
        persistent = {"Continuous": True, "Once": False}.get(boot.enabled or "")
        return {"boot_device": device, "persistent": persistent}

    def get_boot_mode(self, task: Task) -> str | None:
        """``uefi`` or ``bios`` (None when the BMC does not say)."""
        mode = self.client.boot_settings(self.endpoint(task)).mode
        return {v: k for k, v in _BOOT_MODES.items()}.get(mode or "")

    def set_boot_mode(self, task: Task, mode: str) -> None:
        """Boot in ``uefi`` or ``bios`` (legacy) mode."""
        if mode not in _BOOT_MODES:
            raise BmcUnsupported(f"Boot mode must be one of {', '.join(_BOOT_MODES)}, not {mode!r}.")
        self.client.set_boot(self.endpoint(task), mode=_BOOT_MODES[mode], operation=f"setting the boot mode to {mode}")


# Redfish InstructionSet / ProcessorArchitecture -> Ironic's cpu_arch
_ARCHES = {"x86-64": "x86_64", "x86": "x86_64", "IA-64": "ia64", "ARM-A64": "aarch64", "ARM-A32": "armhf"}
_ARCHES |= {"ARM": "aarch64", "PowerISA": "ppc64le", "Power": "ppc64le", "MIPS64": "mips64", "MIPS": "mips"}


class RedfishInspect(RedfishBase, InspectInterface):
    """Out-of-band inspection: CPUs, memory, disks, NICs and boot mode from the BMC."""

    name = "redfish"

    def inspect_hardware(self, task: Task) -> Outcome:
        """Read the inventory; ``local_gb`` is the largest disk in GiB minus one, as Ironic reports it."""
        inv = self.client.inventory(self.endpoint(task))
        props: dict[str, Any] = {}
        if inv.cpus:
            props["cpus"] = inv.cpus
        if inv.cpu_arch:
            props["cpu_arch"] = _ARCHES.get(inv.cpu_arch, inv.cpu_arch.lower())
        if inv.memory_mb:
            props["memory_mb"] = inv.memory_mb
        if inv.disk_bytes:
            props["local_gb"] = max(0, inv.disk_bytes // (1 << 30) - 1)
        mode = {"UEFI": "uefi", "Legacy": "bios"}.get(inv.boot_mode or "")
        if mode:
            caps = [c for c in str(task.node.properties.get("capabilities") or "").split(",") if c]
            caps = [c for c in caps if not c.startswith("boot_mode:")] + [f"boot_mode:{mode}"]
            props["capabilities"] = ",".join(caps)
        missing = [k for k in ("cpus", "cpu_arch", "memory_mb", "local_gb") if k not in props]
        if missing:
            task.record(f"The BMC did not report {', '.join(missing)}; those properties were left as they were.")
        if not inv.macs:
            task.record("The BMC reported no NIC MAC address; no ports were created.", severity="WARNING")
        return Done({"properties": props, "macs": inv.macs})


class RedfishHardware(HardwareType):
    """Machines whose BMC speaks Redfish; they network-boot (ipxe by default) or boot virtual media."""

    name = "redfish"
    supported = {
        "power": ["redfish"],
        "management": ["redfish"],
        "boot": ["ipxe", "pxe", "petitboot", "redfish-virtual-media", "fake"],
        "deploy": ["fake", "agent", "ramdisk"],
        "inspect": ["redfish", "agent", "no-inspect"],
        "firmware": ["redfish", "no-firmware"],
        "bios": ["redfish", "no-bios", "agent"],
        "raid": ["no-raid", "agent"],
        "console": ["no-console"],
        "rescue": ["no-rescue", "agent"],
    }
