"""``no-*`` implementations: the interface kind is not available for this node.

Validation fails with a message that says so, and operations that need the interface fail the same
way, so an operator sees "not supported" instead of a crash.
"""

from __future__ import annotations

from ironworks.drivers.base import (
    BiosInterface,
    ConsoleInterface,
    FirmwareInterface,
    InspectInterface,
    RaidInterface,
    RescueInterface,
    Task,
    ValidationError,
)
from ironworks.drivers.steps import Failed, Outcome


def _unsupported(kind: str) -> str:
    return f"The node has no {kind} interface ({kind}_interface is no-{kind}); choose one its driver supports."


class NoInspect(InspectInterface):
    """Inspection is not available."""

    name = "no-inspect"

    def validate(self, task: Task) -> None:
        """Always fails."""
        raise ValidationError(_unsupported("inspect"))

    def inspect_hardware(self, task: Task) -> Outcome:
        """Always fails."""
        return Failed("unsupported", _unsupported("inspect"))


class NoFirmware(FirmwareInterface):
    """Firmware management is not available."""

    name = "no-firmware"

    def validate(self, task: Task) -> None:
        """Always fails."""
        raise ValidationError(_unsupported("firmware"))


class NoBios(BiosInterface):
    """BIOS settings are not available."""

    name = "no-bios"

    def validate(self, task: Task) -> None:
        """Always fails."""
        raise ValidationError(_unsupported("bios"))


class NoRaid(RaidInterface):
    """RAID configuration is not available."""

    name = "no-raid"

    def validate(self, task: Task) -> None:
        """Always fails."""
        raise ValidationError(_unsupported("raid"))


class NoConsole(ConsoleInterface):
    """Console access is not available."""

    name = "no-console"

    def validate(self, task: Task) -> None:
        """Always fails."""
        raise ValidationError(_unsupported("console"))


class NoRescue(RescueInterface):
    """Rescue is not available."""

    name = "no-rescue"

    def validate(self, task: Task) -> None:
        """Always fails."""
        raise ValidationError(_unsupported("rescue"))

    def rescue(self, task: Task) -> Outcome:
        """Always fails."""
        return Failed("unsupported", _unsupported("rescue"))

    def unrescue(self, task: Task) -> None:
        """Always fails."""
        raise ValidationError(_unsupported("rescue"))
