"""Driver interfaces: small ABCs, one per concern, each with ``validate()``.

A *hardware type* (``ironworks.drivers.hardware``) composes one implementation per interface kind.
Implementations are registered as entry points in the ``ironworks.interfaces`` group, named
``<kind>.<name>`` (``power.redfish``, ``boot.ipxe`` ...), so a vendor adds one with ``pip install``.

Drivers never see the database: they get a ``Task`` — the node as the conductor loaded it (secrets
revealed), its ports, and callbacks to record events and progress. Whatever a driver writes into
``task.node.driver_internal_info`` is saved by the conductor after the call returns.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ironworks.drivers.steps import Outcome
from ironworks.errors import InvalidInput


class PowerState:
    """Power states as Ironic spells them on the wire."""

    ON = "power on"
    OFF = "power off"
    REBOOT = "rebooting"
    SOFT_OFF = "soft power off"
    SOFT_REBOOT = "soft rebooting"
    ERROR = "error"

    #: targets accepted by ``PUT /v1/nodes/{id}/states/power``
    TARGETS = frozenset({ON, OFF, REBOOT, SOFT_OFF, SOFT_REBOOT})


class BootDevice:
    """Boot devices as Ironic spells them on the wire."""

    PXE = "pxe"
    DISK = "disk"
    CDROM = "cdrom"
    BIOS = "bios"
    SAFE = "safe"
    ALL = frozenset({PXE, DISK, CDROM, BIOS, SAFE})


@dataclass(slots=True)
class NodeView:
    """The node as a driver sees it (secrets revealed; no database handle)."""

    id: int
    uuid: str
    name: str | None
    driver: str
    driver_info: dict[str, Any]
    driver_internal_info: dict[str, Any]
    instance_info: dict[str, Any]
    properties: dict[str, Any]
    provision_state: str
    power_state: str | None
    boot_mode: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PortView:
    """A port as a driver sees it."""

    uuid: str
    address: str
    pxe_enabled: bool


class Task(Protocol):
    """What the conductor hands a driver for one unit of work on one node (it holds the lock)."""

    node: NodeView
    ports: list[PortView]

    def record(self, message: str, *, severity: str = "INFO", data: dict[str, Any] | None = None) -> None:
        """Add an entry to the node's timeline."""

    def progress(self, done: float, total: float | None = None, *, message: str = "") -> None:
        """Report progress of the current operation or step (e.g. bytes written of total)."""

    def interface(self, kind: str) -> Interface:
        """The node's implementation of another interface kind (a deploy step needs ``boot``)."""

    def set_power_state(self, state: str) -> str:
        """Change the power state through the node's power interface and record it; the new state."""


class ValidationError(InvalidInput):
    """``validate()`` found the node's configuration incomplete or wrong; the message says what."""


class Interface(abc.ABC):
    """Base of every driver interface."""

    #: interface kind (``power``, ``boot`` ...); set by each ABC below
    kind: ClassVar[str]
    #: implementation name (``fake``, ``redfish`` ...); set by each implementation
    name: ClassVar[str]
    #: the API calls ``validate()`` before it moves a node into a deploy, so a refusal leaves the node
    #: where it was (Ironic validates every interface there; here it is opt-in per implementation)
    validate_before_deploy: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        self.config = config

    @abc.abstractmethod
    def validate(self, task: Task) -> None:
        """Check that ``task.node`` has what this interface needs; raise ``ValidationError`` if not.

        Must not touch the hardware: the API calls it directly.
        """

    def on_verify(self, task: Task) -> None:
        """The node is being verified (``manage``) and its BMC answered: read and cache (in
        ``driver_internal_info``) what a later ``validate`` needs, which may not touch the hardware.
        Must not raise for what the machine lacks: record it instead (default: nothing)."""
        return None


class PowerInterface(Interface):
    """Turns the machine on and off through its BMC."""

    kind = "power"

    @abc.abstractmethod
    def get_power_state(self, task: Task) -> str:
        """Return the machine's power state as the BMC reports it (a ``PowerState`` value)."""

    @abc.abstractmethod
    def set_power_state(self, task: Task, state: str, *, timeout: float | None = None) -> None:
        """Move the machine to ``state`` and return once the BMC reports it (or raise after ``timeout``)."""

    def reboot(self, task: Task, *, timeout: float | None = None) -> None:
        """Power cycle the machine (default: off, then on)."""
        self.set_power_state(task, PowerState.OFF, timeout=timeout)
        self.set_power_state(task, PowerState.ON, timeout=timeout)

    def supported_power_states(self, task: Task) -> list[str]:
        """The targets this interface can reach."""
        return [PowerState.ON, PowerState.OFF, PowerState.REBOOT]


class ManagementInterface(Interface):
    """Boot device and boot mode through the BMC."""

    kind = "management"

    @abc.abstractmethod
    def get_supported_boot_devices(self, task: Task) -> list[str]:
        """The boot devices the machine can be told to use."""

    @abc.abstractmethod
    def set_boot_device(self, task: Task, device: str, *, persistent: bool = False) -> None:
        """Boot from ``device`` next time (or every time if ``persistent``)."""

    @abc.abstractmethod
    def get_boot_device(self, task: Task) -> dict[str, Any]:
        """``{"boot_device": ..., "persistent": ...}`` as the BMC reports it."""

    def get_boot_mode(self, task: Task) -> str | None:
        """``uefi`` or ``bios``, or None when unknown."""
        return None


class BootInterface(Interface):
    """Gets a ramdisk or an instance booted: network boot configs, virtual media."""

    kind = "boot"

    @abc.abstractmethod
    def prepare_ramdisk(self, task: Task, *, params: dict[str, Any] | None = None) -> None:
        """Make the next boot load the utility ramdisk, with ``params`` on its kernel command line."""

    @abc.abstractmethod
    def clean_up_ramdisk(self, task: Task) -> None:
        """Undo ``prepare_ramdisk``; idempotent."""

    @abc.abstractmethod
    def prepare_instance(self, task: Task) -> None:
        """Make the next boot load the deployed instance."""

    @abc.abstractmethod
    def clean_up_instance(self, task: Task) -> None:
        """Undo ``prepare_instance``; idempotent."""

    def needs_precheck(self, task: Task) -> bool:
        """Whether a deploy request waits for ``precheck_deploy`` first (no I/O; default: no)."""
        return False

    def precheck_deploy(self, task: Task) -> None:
        """Run on a conductor while the API waits, before a deploy moves the node: checks that need the
        BMC or an image server (which the API never talks to). Raise to refuse; change nothing
        (default: nothing)."""
        return None


class DeployInterface(Interface):
    """Puts the workload on the machine. Its ``deploy`` is a deploy step."""

    kind = "deploy"

    @abc.abstractmethod
    def tear_down(self, task: Task) -> None:
        """Remove what deployment set up and power the machine off (undeploy)."""

    def prepare(self, task: Task) -> None:
        """Prepare the environment before deploy steps run (default: nothing)."""

    def clean_up(self, task: Task) -> None:
        """Remove anything left by a deployment (default: nothing)."""

    def take_over(self, task: Task) -> None:
        """Adopt a running instance (default: nothing)."""

    def tear_down_cleaning(self, task: Task) -> None:
        """After the last clean step: take down what cleaning booted (default: nothing)."""

    def tear_down_service(self, task: Task) -> None:
        """After the last service step: return the node to its instance (default: nothing)."""

    def clean_up_after_failure(self, task: Task) -> None:
        """After a flow failed or timed out: take down what it booted; must not raise (default: nothing)."""


class InspectInterface(Interface):
    """Learns what the machine has: CPUs, memory, disks, NICs."""

    kind = "inspect"

    @abc.abstractmethod
    def inspect_hardware(self, task: Task) -> Outcome:
        """Inspect; return ``Done`` with ``result={"properties": ..., "macs": [...]}`` or ``Wait``."""


class FirmwareInterface(Interface):
    """Firmware components and out-of-band updates."""

    kind = "firmware"

    def cache_firmware_components(self, task: Task) -> list[dict[str, Any]]:
        """Read the firmware components (``component``, ``current_version``) from the machine."""
        return []


class BiosInterface(Interface):
    """BIOS settings; ``apply_configuration`` / ``factory_reset`` are steps of implementations."""

    kind = "bios"

    def cache_bios_settings(self, task: Task) -> list[dict[str, Any]]:
        """Read the BIOS settings (``name``, ``value`` ...) from the machine."""
        return []


class RaidInterface(Interface):
    """RAID configuration; ``create_configuration`` / ``delete_configuration`` are steps."""

    kind = "raid"


class ConsoleInterface(Interface):
    """Serial console access."""

    kind = "console"

    def start_console(self, task: Task) -> None:
        """Start the console (default: nothing)."""

    def stop_console(self, task: Task) -> None:
        """Stop the console (default: nothing)."""

    def get_console(self, task: Task) -> dict[str, Any]:
        """Connection information for the console."""
        return {"type": "none", "url": None}


class RescueInterface(Interface):
    """Boots the rescue ramdisk on an active node and back."""

    kind = "rescue"

    @abc.abstractmethod
    def rescue(self, task: Task) -> Outcome:
        """Boot the rescue ramdisk; ``Done`` when it is up, or ``Wait`` for its call-back."""

    @abc.abstractmethod
    def unrescue(self, task: Task) -> None:
        """Return the node to its instance."""


#: kind -> ABC, for resolving and validating registrations
INTERFACE_KINDS: dict[str, type[Interface]] = {
    cls.kind: cls
    for cls in (
        PowerInterface,
        ManagementInterface,
        BootInterface,
        DeployInterface,
        InspectInterface,
        FirmwareInterface,
        BiosInterface,
        RaidInterface,
        ConsoleInterface,
        RescueInterface,
    )
}
