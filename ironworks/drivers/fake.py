"""``fake-hardware``: every interface faked, for tests, demos and scale runs.

Operations succeed at once unless ``[fake] <kind>_delay`` asks for a delay (``"N"`` seconds or a
``"MIN:MAX"`` random range), which models a slow BMC: interface calls block for it, and steps return
``Wait(poll_after=delay)`` once before finishing (steps never sleep). ``driver_info`` knobs, for
tests only: ``fake_power_fail: true`` makes the BMC unreachable; ``fake_fail_steps: [names]`` makes
those steps fail.
"""

from __future__ import annotations

import random
import time
from typing import Any

from ironworks.drivers.base import (
    BiosInterface,
    BootDevice,
    BootInterface,
    ConsoleInterface,
    DeployInterface,
    FirmwareInterface,
    InspectInterface,
    ManagementInterface,
    PowerInterface,
    PowerState,
    RaidInterface,
    RescueInterface,
    Task,
    ValidationError,
)
from ironworks.drivers.registry import HardwareType
from ironworks.drivers.steps import Done, Failed, Outcome, Wait, step
from ironworks.errors import BmcError, BmcUnreachable


def parse_delay(spec: str) -> tuple[float, float]:
    """``"2"`` -> (2, 2); ``"1:5"`` -> (1, 5). Raises ``ValueError`` on anything else."""
    lo, _, hi = str(spec).partition(":")
    a = float(lo)
    b = float(hi) if hi else a
    if a < 0 or b < a:
        raise ValueError(f"invalid fake delay {spec!r}: use N or MIN:MAX with 0 <= MIN <= MAX")
    return a, b


class _FakeMixin:
    """Delay handling shared by the fake interfaces."""

    config: Any
    kind: str

    def _delay(self) -> float:
        fake = getattr(self.config, "fake", None)
        spec = getattr(fake, f"{self.kind}_delay", "0") if fake is not None else "0"
        lo, hi = parse_delay(spec)
        return lo if lo == hi else random.uniform(lo, hi)

    def _block(self) -> None:
        d = self._delay()
        if d:
            time.sleep(d)  # models a BMC call that takes this long (interface calls, not steps)

    def _step_outcome(self, task: Task, name: str) -> Outcome:
        """Wait once for the configured delay, then finish (or fail if told to)."""
        if name in task.node.driver_info.get("fake_fail_steps", []):
            return Failed("fake_step_failed", f"Fake step {name} failed as configured in fake_fail_steps.")
        key = f"fake_wait_{self.kind}_{name}"
        if not task.node.driver_internal_info.pop(key, False):
            d = self._delay()
            if d:
                task.node.driver_internal_info[key] = True
                return Wait(poll_after=d, reason=f"fake {name} takes {d:.1f}s")
        return Done()


def _check_reachable(task: Task) -> None:
    if task.node.driver_info.get("fake_power_fail"):
        raise BmcUnreachable(
            f"Fake BMC of node {task.node.uuid} is unreachable (driver_info fake_power_fail is set).",
            node=task.node.uuid,
        )


class FakePower(_FakeMixin, PowerInterface):
    """Power that follows the recorded state (like Ironic's fake power)."""

    name = "fake"

    def validate(self, task: Task) -> None:
        """Nothing to check."""

    def get_power_state(self, task: Task) -> str:
        """The recorded power state (``power off`` when never set)."""
        _check_reachable(task)
        self._block()
        return task.node.driver_internal_info.get("fake_power_state") or task.node.power_state or PowerState.OFF

    def set_power_state(self, task: Task, state: str, *, timeout: float | None = None) -> None:
        """Record ``state`` (soft variants land on their hard result)."""
        _check_reachable(task)
        if state not in PowerState.TARGETS:
            raise BmcError(f"Fake power cannot reach state {state!r}.")
        self._block()
        final = {PowerState.SOFT_OFF: PowerState.OFF, PowerState.REBOOT: PowerState.ON}.get(state, state)
        final = PowerState.ON if state == PowerState.SOFT_REBOOT else final
        task.node.driver_internal_info["fake_power_state"] = final

    def reboot(self, task: Task, *, timeout: float | None = None) -> None:
        """Reboot: lands powered on."""
        self.set_power_state(task, PowerState.ON, timeout=timeout)

    def supported_power_states(self, task: Task) -> list[str]:
        """Every power target."""
        return sorted(PowerState.TARGETS)


class FakeManagement(_FakeMixin, ManagementInterface):
    """Boot device kept in ``driver_internal_info``."""

    name = "fake"

    def validate(self, task: Task) -> None:
        """Nothing to check."""

    def get_supported_boot_devices(self, task: Task) -> list[str]:
        """pxe, disk, cdrom, bios."""
        return [BootDevice.PXE, BootDevice.DISK, BootDevice.CDROM, BootDevice.BIOS]

    def set_boot_device(self, task: Task, device: str, *, persistent: bool = False) -> None:
        """Record the boot device."""
        _check_reachable(task)
        if device not in self.get_supported_boot_devices(task):
            raise BmcError(f"Fake management does not support boot device {device!r}.")
        self._block()
        task.node.driver_internal_info["fake_boot_device"] = {"boot_device": device, "persistent": persistent}

    def get_boot_device(self, task: Task) -> dict[str, Any]:
        """The recorded boot device (disk, persistent, when never set)."""
        _check_reachable(task)
        self._block()
        dev = task.node.driver_internal_info.get("fake_boot_device")
        return dict(dev) if dev else {"boot_device": BootDevice.DISK, "persistent": True}

    def get_boot_mode(self, task: Task) -> str | None:
        """Always uefi."""
        return "uefi"


class FakeBoot(_FakeMixin, BootInterface):
    """Boot preparation that records what it was asked."""

    name = "fake"

    def validate(self, task: Task) -> None:
        """Nothing to check."""

    def prepare_ramdisk(self, task: Task, *, params: dict[str, Any] | None = None) -> None:
        """Record that the ramdisk would boot."""
        self._block()
        task.node.driver_internal_info["fake_boot"] = "ramdisk"

    def clean_up_ramdisk(self, task: Task) -> None:
        """Forget the ramdisk."""
        task.node.driver_internal_info.pop("fake_boot", None)

    def prepare_instance(self, task: Task) -> None:
        """Record that the instance would boot."""
        self._block()
        task.node.driver_internal_info["fake_boot"] = "instance"

    def clean_up_instance(self, task: Task) -> None:
        """Forget the instance boot."""
        task.node.driver_internal_info.pop("fake_boot", None)


class FakeDeploy(_FakeMixin, DeployInterface):
    """A deployment that writes nothing; its steps finish after the configured delay."""

    name = "fake"

    def validate(self, task: Task) -> None:
        """Nothing to check."""

    @step("deploy", priority=100)
    def deploy(self, task: Task) -> Outcome:
        """Pretend to write the image (reporting half of it written while it waits)."""
        outcome = self._step_outcome(task, "deploy")
        if isinstance(outcome, Wait):
            task.progress(512, 1024, message="writing image")
        return outcome

    def tear_down(self, task: Task) -> None:
        """Pretend to remove the instance."""
        self._block()

    @step("clean", priority=10, abortable=True)
    def erase_devices_metadata(self, task: Task) -> Outcome:
        """Pretend to wipe partition tables (the automated clean step)."""
        return self._step_outcome(task, "erase_devices_metadata")

    @step("clean", priority=0, abortable=True)
    @step("service", priority=0, abortable=True)
    def erase_devices(self, task: Task) -> Outcome:
        """Pretend to erase every disk (manual)."""
        return self._step_outcome(task, "erase_devices")

    @step("service", priority=0, args={"message": {"description": "text to record", "type": "string"}})
    def log_passthrough(self, task: Task, message: str = "") -> Outcome:
        """Record a message in the node's timeline (a service step for demos)."""
        task.record(f"fake service step: {message}")
        return self._step_outcome(task, "log_passthrough")


class FakeInspect(_FakeMixin, InspectInterface):
    """Inspection that reports a small fixed machine."""

    name = "fake"

    def validate(self, task: Task) -> None:
        """Nothing to check."""

    def inspect_hardware(self, task: Task) -> Outcome:
        """Report 8 CPUs, 16 GiB, 100 GiB disk."""
        outcome = self._step_outcome(task, "inspect_hardware")
        if not isinstance(outcome, Done):
            return outcome
        return Done({"properties": {"cpus": 8, "cpu_arch": "x86_64", "memory_mb": 16384, "local_gb": 100}})


class FakeFirmware(_FakeMixin, FirmwareInterface):
    """Firmware components bios/bmc whose versions a fake update bumps."""

    name = "fake"

    def validate(self, task: Task) -> None:
        """Nothing to check."""

    def cache_firmware_components(self, task: Task) -> list[dict[str, Any]]:
        """bios and bmc, at the versions last 'flashed'."""
        versions = task.node.driver_internal_info.get("fake_firmware", {})
        return [{"component": c, "current_version": versions.get(c, "1.0.0")} for c in ("bios", "bmc")]

    @step(
        "clean",
        priority=0,
        args={"settings": {"description": "[{component, url}]", "required": True, "type": "array"}},
    )
    @step(
        "service",
        priority=0,
        args={"settings": {"description": "[{component, url}]", "required": True, "type": "array"}},
    )
    def update(self, task: Task, settings: list[dict[str, Any]]) -> Outcome:
        """Pretend to flash each component; its version becomes 2.0.0."""
        outcome = self._step_outcome(task, "update")
        if isinstance(outcome, Done):
            versions = task.node.driver_internal_info.setdefault("fake_firmware", {})
            for item in settings:
                versions[str(item.get("component", "bios"))] = "2.0.0"
        return outcome


class FakeBios(_FakeMixin, BiosInterface):
    """BIOS settings kept in ``driver_internal_info``."""

    name = "fake"
    _DEFAULTS = {"ProcTurboMode": "Enabled", "BootMode": "Uefi"}

    def validate(self, task: Task) -> None:
        """Nothing to check."""

    def cache_bios_settings(self, task: Task) -> list[dict[str, Any]]:
        """The fake settings."""
        values = {**self._DEFAULTS, **task.node.driver_internal_info.get("fake_bios", {})}
        return [{"name": k, "value": v} for k, v in sorted(values.items())]

    @step(
        "clean",
        priority=0,
        args={"settings": {"description": "[{name, value}]", "required": True, "type": "array"}},
    )
    @step(
        "service",
        priority=0,
        args={"settings": {"description": "[{name, value}]", "required": True, "type": "array"}},
    )
    def apply_configuration(self, task: Task, settings: list[dict[str, Any]]) -> Outcome:
        """Store the given settings."""
        outcome = self._step_outcome(task, "apply_configuration")
        if isinstance(outcome, Done):
            store = task.node.driver_internal_info.setdefault("fake_bios", {})
            for item in settings:
                store[str(item["name"])] = str(item["value"])
        return outcome

    @step("clean", priority=0)
    @step("service", priority=0)
    def factory_reset(self, task: Task) -> Outcome:
        """Forget the stored settings."""
        task.node.driver_internal_info.pop("fake_bios", None)
        return self._step_outcome(task, "factory_reset")


class FakeRaid(_FakeMixin, RaidInterface):
    """RAID steps that do nothing."""

    name = "fake"

    def validate(self, task: Task) -> None:
        """Nothing to check."""

    @step("clean", priority=0)
    @step("deploy", priority=0)
    def create_configuration(self, task: Task) -> Outcome:
        """Pretend to build the target RAID configuration."""
        return self._step_outcome(task, "create_configuration")

    @step("clean", priority=0)
    @step("deploy", priority=0)
    def delete_configuration(self, task: Task) -> Outcome:
        """Pretend to delete every RAID volume."""
        return self._step_outcome(task, "delete_configuration")


class FakeConsole(_FakeMixin, ConsoleInterface):
    """A console with nothing behind it."""

    name = "fake"

    def validate(self, task: Task) -> None:
        """Nothing to check."""


class FakeRescue(_FakeMixin, RescueInterface):
    """Rescue that succeeds (after the configured delay)."""

    name = "fake"

    def validate(self, task: Task) -> None:
        """A rescue password must be set (the API stores it in instance_info)."""
        if task.node.provision_state in ("rescuing",) and not task.node.instance_info.get("rescue_password"):
            raise ValidationError("rescue_password is required to rescue a node")

    def rescue(self, task: Task) -> Outcome:
        """Pretend to boot the rescue ramdisk."""
        return self._step_outcome(task, "rescue")

    def unrescue(self, task: Task) -> None:
        """Pretend to boot the instance again."""
        self._block()


class FakeHardware(HardwareType):
    """Every interface faked."""

    name = "fake-hardware"
    supported = {
        "power": ["fake"],
        "management": ["fake"],
        "boot": ["fake", "ipxe", "pxe", "petitboot"],
        "deploy": ["fake", "agent", "ramdisk"],
        "inspect": ["fake", "agent", "no-inspect"],
        "firmware": ["fake", "no-firmware"],
        "bios": ["fake", "no-bios", "agent"],
        "raid": ["fake", "no-raid", "agent"],
        "console": ["fake", "no-console"],
        "rescue": ["fake", "agent", "no-rescue"],
    }
