"""An example vendor hardware manager for the Ironworks agent.

Installed next to the agent (``pip install examples/vendor_manager``), it registers itself in the
``ironworks.agent.hardware_managers`` entry point group. On machines whose DMI vendor is
``ExampleVendor`` (or when ``IRONWORKS_EXAMPLE_VENDOR=1``, for tests) it rates itself VENDOR, so its
own step ``update_vendor_firmware`` is served, and everything it does not define (inventory, erase,
image writing) still goes to the generic manager.
"""

from __future__ import annotations

import os
from typing import Any

from ironworks.agent.hardware import HardwareManager, HardwareSupport, IncompatibleHardwareMethodError, agent_step

VENDOR = "ExampleVendor"
ENV_FLAG = "IRONWORKS_EXAMPLE_VENDOR"


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
