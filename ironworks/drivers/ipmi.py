"""``ipmi``: machines managed over IPMI-over-LAN, through the ``ipmitool`` command.

Power and management talk to the BMC through ``ironworks.bmc.ipmitool``; boot is network boot
(``ipxe`` by default, ``pxe``, ``petitboot``: ``ironworks.drivers.pxe``); the rest is absent for
now. The seams are constructor keywords kept as instance attributes, so tests
can also swap them on the shared instances a ``DriverFactory`` hands out: ``runner`` (how ipmitool
is run), ``retry`` (a ``RetryPolicy``), ``clock`` and ``sleep`` (power polling), ``poll_interval``.

Interface calls block: ``set_power_state`` returns once the BMC reports the new state, polling
``power status`` every ``poll_interval`` seconds, or raises ``BmcTimeout``. (Steps must not
sleep; these are not steps.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

from ironworks.bmc.ipmitool import (
    PRIV_LEVELS,
    Bridging,
    IpmiTarget,
    IpmitoolClient,
    RetryPolicy,
    Runner,
    run_subprocess,
)
from ironworks.drivers.base import (
    BootDevice,
    ManagementInterface,
    PowerInterface,
    PowerState,
    Task,
    ValidationError,
)
from ironworks.drivers.capabilities import requested_boot_mode
from ironworks.drivers.registry import HardwareType
from ironworks.errors import BmcAuthFailed, BmcError, BmcRequestFailed, BmcTimeout, BmcUnsupported

LOG = logging.getLogger(__name__)

#: ``driver_info`` keys the ipmi interfaces understand (served at /v1/drivers/ipmi/properties)
PROPERTIES: dict[str, str] = {
    "ipmi_address": "IP address or host name of the BMC. Required.",
    "ipmi_port": "UDP port of the BMC's IPMI-over-LAN service. Optional, default 623.",
    "ipmi_username": "User name on the BMC. Optional, default empty (the anonymous user).",
    "ipmi_password": (
        "Password of ipmi_username. Optional, default empty. Given to ipmitool in its environment, "
        "never on its command line."
    ),
    "ipmi_priv_level": "Session privilege level: ADMINISTRATOR (default), OPERATOR, USER or CALLBACK.",
    "ipmi_protocol_version": "IPMI version: 2.0 (default; ipmitool -I lanplus) or 1.5 (-I lan).",
    "ipmi_bridging": "Bridge requests to a controller behind the BMC: no (default), single or dual.",
    "ipmi_target_channel": "Destination channel of bridged requests. Required when ipmi_bridging is single or dual.",
    "ipmi_target_address": "Destination address of bridged requests. Required when ipmi_bridging is single or dual.",
    "ipmi_transit_channel": "Transit channel of bridged requests. Required when ipmi_bridging is dual.",
    "ipmi_transit_address": "Transit address of bridged requests. Required when ipmi_bridging is dual.",
    "ipmi_disable_boot_timeout": (
        "Ask the BMC not to clear the boot device after 60 s, as the IPMI spec lets it (raw 0x00 0x08 0x03 "
        "0x08 before each boot device change). Optional, default true; false for BMCs that reject it."
    ),
}
_BRIDGING = ("no", "single", "dual")
_IPMI_MAX_USERNAME = 16
_IPMI_MAX_PASSWORD = {"1.5": 16, "2.0": 20}


def _int_field(info: dict[str, Any], key: str, *, lo: int, hi: int) -> int:
    value = info[key]
    try:
        number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value), 0)
    except ValueError:
        raise ValidationError(f"driver_info {key} must be an integer, got {value!r}.") from None
    if not lo <= number <= hi:
        raise ValidationError(f"driver_info {key} must be between {lo} and {hi}, got {value!r}.")
    return number


def _bool_field(info: dict[str, Any], key: str, default: bool) -> bool:
    value = info.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValidationError(f"driver_info {key} must be true or false, got {value!r}.")


def _bridging(info: dict[str, Any]) -> Bridging | None:
    mode = str(info.get("ipmi_bridging") or "no").lower()
    if mode not in _BRIDGING:
        raise ValidationError(f"driver_info ipmi_bridging must be one of {', '.join(_BRIDGING)}, got {mode!r}.")
    if mode == "no":
        return None
    needed = ["ipmi_target_channel", "ipmi_target_address"]
    needed += ["ipmi_transit_channel", "ipmi_transit_address"] if mode == "dual" else []
    missing = [k for k in needed if info.get(k) in (None, "")]
    if missing:
        raise ValidationError(f"driver_info {' and '.join(missing)} required when ipmi_bridging is {mode!r}.")
    num = {k: _int_field(info, k, lo=0, hi=255) for k in needed}
    return Bridging(
        target_channel=num["ipmi_target_channel"],
        target_address=num["ipmi_target_address"],
        transit_channel=num.get("ipmi_transit_channel"),
        transit_address=num.get("ipmi_transit_address"),
    )


def parse_driver_info(info: dict[str, Any]) -> IpmiTarget:
    """The BMC ``driver_info`` describes; ``ValidationError`` that names the field when it is wrong."""
    address = str(info.get("ipmi_address") or "").strip()
    if not address:
        raise ValidationError("driver_info ipmi_address is required: the BMC's IP address or host name.")
    port = _int_field(info, "ipmi_port", lo=1, hi=65535) if info.get("ipmi_port") not in (None, "") else 623
    version = str(info.get("ipmi_protocol_version") or "2.0")
    if version not in _IPMI_MAX_PASSWORD:
        raise ValidationError(f"driver_info ipmi_protocol_version must be 1.5 or 2.0, got {version!r}.")
    priv = str(info.get("ipmi_priv_level") or "ADMINISTRATOR").upper()
    if priv not in PRIV_LEVELS:
        raise ValidationError(f"driver_info ipmi_priv_level must be one of {', '.join(PRIV_LEVELS)}, got {priv!r}.")
    username = str(info.get("ipmi_username") or "")
    if len(username.encode()) > _IPMI_MAX_USERNAME:
        raise ValidationError(f"driver_info ipmi_username is longer than IPMI's {_IPMI_MAX_USERNAME} bytes.")
    password = str(info.get("ipmi_password") or "")
    if len(password.encode()) > _IPMI_MAX_PASSWORD[version]:
        raise ValidationError(
            f"driver_info ipmi_password is longer than IPMI {version}'s {_IPMI_MAX_PASSWORD[version]} bytes."
        )
    return IpmiTarget(
        address=address,
        port=port,
        username=username,
        password=password,
        priv_level=priv,
        protocol_version=version,
        bridging=_bridging(info),
    )


class _IpmitoolInterface:
    """Seams and client construction shared by the ipmitool interfaces."""

    properties: ClassVar[dict[str, str]] = PROPERTIES

    def __init__(
        self,
        config: Any = None,
        *,
        runner: Runner = run_subprocess,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(config)  # type: ignore[call-arg]  # Interface.__init__, next in the MRO
        self.runner = runner
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.sleep = sleep
        self.poll_interval = poll_interval

    def validate(self, task: Task) -> None:
        """``driver_info`` must name a BMC, with sensible optional fields; touches no hardware."""
        parse_driver_info(task.node.driver_info)

    def client(self, task: Task) -> IpmitoolClient:
        """An ipmitool client for the node's BMC."""
        return IpmitoolClient(parse_driver_info(task.node.driver_info), runner=self.runner, retry=self.retry)


class IpmiPower(_IpmitoolInterface, PowerInterface):
    """Power through ``ipmitool chassis power``; every change is confirmed by polling ``power status``."""

    name = "ipmitool"
    _STATES = {"on": PowerState.ON, "off": PowerState.OFF}

    def get_power_state(self, task: Task) -> str:
        """``power on`` or ``power off`` as the BMC reports it."""
        return self._STATES[self.client(task).power_status()]

    def set_power_state(self, task: Task, state: str, *, timeout: float | None = None) -> None:
        """Reach ``state``: ``power on``/``off``/``soft power off`` directly, the reboots through ``reboot``."""
        if state in (PowerState.REBOOT, PowerState.SOFT_REBOOT):
            self.reboot(task, timeout=timeout, soft=state == PowerState.SOFT_REBOOT)
            return
        action = {PowerState.ON: "on", PowerState.OFF: "off", PowerState.SOFT_OFF: "soft"}.get(state)
        if action is None:
            raise BmcUnsupported(f"ipmitool power cannot reach state {state!r}.", node=task.node.uuid)
        client = self.client(task)
        want = "on" if action == "on" else "off"
        if client.power_status() == want:
            return  # idempotent: some BMCs reject "soft" on a machine that is already off
        self._command(client, action, want, self._timeout(timeout))

    def reboot(self, task: Task, *, timeout: float | None = None, soft: bool = False) -> None:
        """Power off (soft or hard), wait until off, power on, wait until on.

        Not ``power cycle``: VirtualBMC rejects it ("Invalid data field in request"), many BMCs
        refuse it on a machine that is off, and Ironic's ipmitool driver reboots this way too.
        """
        client = self.client(task)
        limit = self._timeout(timeout)
        if client.power_status() == "on":
            self._command(client, "soft" if soft else "off", "off", limit)
        self._command(client, "on", "on", limit)

    def _command(self, client: IpmitoolClient, action: str, want: str, timeout: float) -> None:
        """Send ``power <action>`` and poll until the BMC reports ``want``.

        A BMC may act on the command but answer too late for ipmitool (VirtualBMC takes ~2 s to
        power a TCG VM off; ipmitool waits ``-N`` seconds), which ipmitool reports as a failure.
        The state the BMC then reports is the truth: only if it never gets there does the error
        of the command stand. Credentials errors are never second-guessed.
        """
        try:
            client.power(action)
        except BmcAuthFailed:
            raise
        except BmcError as exc:
            LOG.warning(
                "'power %s' on %s reported an error; checking the power state: %s", action, client.target.label, exc
            )
            try:
                self._wait_for(client, want, action, timeout)
            except BmcError:
                raise exc from None
            return
        self._wait_for(client, want, action, timeout)

    def supported_power_states(self, task: Task) -> list[str]:
        """Every power target."""
        return [PowerState.ON, PowerState.OFF, PowerState.REBOOT, PowerState.SOFT_OFF, PowerState.SOFT_REBOOT]

    def _timeout(self, timeout: float | None) -> float:
        if timeout:
            return timeout
        conductor = getattr(self.config, "conductor", None)
        return float(getattr(conductor, "power_state_change_timeout", 60.0))

    def _wait_for(self, client: IpmitoolClient, want: str, action: str, timeout: float) -> None:
        deadline = self.clock() + timeout
        while True:
            seen = client.power_status()
            if seen == want:
                return
            left = deadline - self.clock()
            if left <= 0:
                hint = " (a soft power off needs an OS that acts on the ACPI power button)" if action == "soft" else ""
                raise BmcTimeout(
                    f"IPMI BMC {client.target.label} still reports power {seen} {timeout:.0f} s after "
                    f"'power {action}'{hint}: check the machine and retry.",
                    bmc=client.target.label,
                )
            self.sleep(min(self.poll_interval, left))


def boot_mode_of(task: Task) -> str | None:
    """The boot mode the node should boot in: requested (capabilities) first, then the one observed."""
    found = requested_boot_mode(task.node)
    return found[0] if found else None


class IpmiManagement(_IpmitoolInterface, ManagementInterface):
    """Boot device through ``ipmitool chassis bootdev`` and ``chassis bootparam get 5``."""

    name = "ipmitool"
    _DEVICES = (BootDevice.PXE, BootDevice.DISK, BootDevice.CDROM, BootDevice.BIOS, BootDevice.SAFE)

    def get_supported_boot_devices(self, task: Task) -> list[str]:
        """pxe, disk, cdrom, bios, safe."""
        return list(self._DEVICES)

    def set_boot_device(self, task: Task, device: str, *, persistent: bool = False) -> None:
        """``chassis bootdev``, with ``efiboot`` when the node boots in UEFI mode."""
        if device not in self._DEVICES:
            raise BmcUnsupported(
                f"ipmitool management cannot set boot device {device!r}; supported: {', '.join(self._DEVICES)}.",
                node=task.node.uuid,
            )
        client = self.client(task)
        if _bool_field(task.node.driver_info, "ipmi_disable_boot_timeout", True):
            try:
                client.disable_boot_flag_timeout()
            except (BmcUnsupported, BmcRequestFailed) as exc:
                # not fatal: the flags still hold for 60 s, long enough for the power action that follows
                task.record(
                    f"The BMC refused to keep the boot device past 60 s ({exc}); set driver_info "
                    "ipmi_disable_boot_timeout to false to stop asking.",
                    severity="WARNING",
                )
        client.set_boot_device(device, persistent=persistent, efiboot=boot_mode_of(task) == "uefi")

    def get_boot_device(self, task: Task) -> dict[str, Any]:
        """``{"boot_device": pxe|disk|cdrom|bios|safe|None, "persistent": bool}`` from the boot flags."""
        flags = self.client(task).boot_flags()
        return {"boot_device": flags.device, "persistent": flags.persistent if flags.valid else False}


class IpmiHardware(HardwareType):
    """Machines with an IPMI BMC, driven through ipmitool."""

    name = "ipmi"
    supported = {
        "power": ["ipmitool"],
        "management": ["ipmitool"],
        "boot": ["ipxe", "pxe", "petitboot", "fake"],
        "deploy": ["fake", "agent", "ramdisk"],
        "inspect": ["no-inspect", "agent"],
        "bios": ["no-bios", "agent"],
        "firmware": ["no-firmware"],
        "raid": ["no-raid", "agent"],
        "console": ["no-console"],
        "rescue": ["no-rescue"],
    }
