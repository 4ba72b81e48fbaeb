"""An example vendor hardware manager for the Ironworks agent.

Installed next to the agent (``pip install examples/vendor_manager``), it registers itself in the
``ironworks.agent.hardware_managers`` entry point group. On machines whose DMI vendor is
``ExampleVendor`` (or when ``IRONWORKS_EXAMPLE_VENDOR=1``, for tests) it rates itself VENDOR, so its
own step ``update_vendor_firmware`` is served, and everything it does not define (inventory, erase,
image writing) still goes to the generic manager.

It also shows the BIOS and RAID hooks: steps on the ``bios`` interface (``apply_configuration``,
``factory_reset``) and the ``raid`` interface (``create_configuration``, ``delete_configuration``),
which the conductor's ``agent`` bios and raid interfaces run. A real vendor manager calls its own
tool there; this one checks its input, keeps the result in memory and reports it.
"""

from __future__ import annotations

import os
from typing import Any

from ironworks.agent.hardware import (
    HardwareManager,
    HardwareSupport,
    IncompatibleHardwareMethodError,
    InvalidStepArgs,
    agent_step,
)

VENDOR = "ExampleVendor"
ENV_FLAG = "IRONWORKS_EXAMPLE_VENDOR"
#: the settings this example's "firmware setup" starts from (and returns to on factory_reset)
BIOS_DEFAULTS = {"BootMode": "Uefi", "ProcTurboMode": "Enabled", "SriovGlobalEnable": "Disabled"}
RAID_LEVELS = ("0", "1", "5", "6", "1+0", "JBOD")


class VendorHardwareManager(HardwareManager):
    """ExampleVendor machines: a firmware step through the vendor's own tool."""

    HARDWARE_MANAGER_NAME = "example_vendor_hardware_manager"
    HARDWARE_MANAGER_VERSION = "1.0"

    def evaluate_hardware_support(self) -> int:
        """VENDOR on ExampleVendor machines, else NONE (the manager is then never called)."""
        if os.environ.get(ENV_FLAG) == "1":
            return HardwareSupport.VENDOR
        try:
            vendor = (self.ctx.root / "sys/class/dmi/id/sys_vendor").read_text().strip()
        except OSError:
            return HardwareSupport.NONE
        return HardwareSupport.VENDOR if vendor == VENDOR else HardwareSupport.NONE

    @agent_step(
        "clean",
        priority=0,
        argsinfo={"version": {"description": "firmware version to install", "required": False, "type": "string"}},
    )
    def update_vendor_firmware(
        self, *, node: dict[str, Any], ports: list[Any], version: str = "latest"
    ) -> dict[str, Any]:
        """Update the firmware with the vendor's tool (an example: it only reports what it would do)."""
        self.ctx.progress({"vendor_firmware": version})
        return {"vendor": VENDOR, "firmware_version": version}

    def burnin_cpu(self, *, node: dict[str, Any], ports: list[Any], **args: Any) -> dict[str, Any]:
        """The vendor has no CPU burn-in tool: the generic one runs instead."""
        raise IncompatibleHardwareMethodError("no vendor CPU burn-in; the generic manager runs it")

    # ---- BIOS hooks --------------------------------------------------------------------------
    def _bios_state(self) -> dict[str, str]:
        if not hasattr(self, "_bios"):
            self._bios = dict(BIOS_DEFAULTS)
        return self._bios

    @agent_step(
        "clean",
        interface="bios",
        argsinfo={"settings": {"description": "[{name, value}] to apply", "required": True, "type": "array"}},
    )
    def apply_configuration(self, *, node: dict[str, Any], ports: list[Any], settings: list[Any]) -> dict[str, Any]:
        """Apply BIOS settings; every name must be one the firmware knows."""
        state = self._bios_state()
        problems = []
        for item in settings:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "value" not in item:
                problems.append(f"{item!r} is not an object with 'name' and 'value'")
            elif item["name"] not in state:
                problems.append(f"unknown setting {item['name']!r}")
        if problems:
            raise InvalidStepArgs(
                f"bios apply_configuration: {'; '.join(problems)} (known settings: {', '.join(sorted(state))})"
            )
        for item in settings:
            state[item["name"]] = str(item["value"])
        return {"bios_settings": dict(state)}

    @agent_step("clean", interface="bios")
    def factory_reset(self, *, node: dict[str, Any], ports: list[Any]) -> dict[str, Any]:
        """Return every BIOS setting to its default."""
        self._bios = dict(BIOS_DEFAULTS)
        return {"bios_settings": dict(self._bios)}

    # ---- RAID hooks --------------------------------------------------------------------------
    @agent_step(
        "clean",
        interface="raid",
        argsinfo={
            "target_raid_config": {
                "description": "Ironic's target RAID configuration: {logical_disks: [{size_gb, raid_level}]}",
                "required": True,
                "type": "object",
            }
        },
    )
    def create_configuration(
        self, *, node: dict[str, Any], ports: list[Any], target_raid_config: dict[str, Any]
    ) -> dict[str, Any]:
        """Create the logical disks of ``target_raid_config``."""
        disks = target_raid_config.get("logical_disks")
        if not isinstance(disks, list) or not disks:
            raise InvalidStepArgs("raid create_configuration: target_raid_config needs a non-empty logical_disks list")
        made = []
        for i, disk in enumerate(disks):
            level = str(disk.get("raid_level", "")) if isinstance(disk, dict) else ""
            size = disk.get("size_gb") if isinstance(disk, dict) else None
            if level not in RAID_LEVELS:
                raise InvalidStepArgs(
                    f"raid create_configuration: logical disk {i} has raid_level {level!r}; "
                    f"supported: {', '.join(RAID_LEVELS)}"
                )
            if size != "MAX" and not (isinstance(size, int) and size > 0):
                raise InvalidStepArgs(f"raid create_configuration: logical disk {i} needs size_gb > 0 or 'MAX'")
            made.append({"raid_level": level, "size_gb": size, "controller": "example-raid-0", "volume_name": f"vd{i}"})
        self._raid = made
        return {"raid_config": {"logical_disks": made}}

    @agent_step("clean", interface="raid")
    def delete_configuration(self, *, node: dict[str, Any], ports: list[Any]) -> dict[str, Any]:
        """Delete every logical disk."""
        self._raid: list[dict[str, Any]] = []
        return {"raid_config": {"logical_disks": []}}
