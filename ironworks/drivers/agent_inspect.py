"""``agent`` inspect interface: in-band inspection by the utility ramdisk's agent.

``inspect_hardware`` boots the ramdisk (``AgentMixin.boot_agent``) and returns ``Wait`` until the
agent's first heartbeat; the resumed call asks the agent for its inventory with
``poll.get_hardware_info`` (IPA's command, so a stock ironic-python-agent answers it too). An agent
in IPA's inspection mode may instead post its inventory to ``POST /v1/continue_inspection``; the
conductor then hands it to ``process_inventory``. Either way the result is the redfish inspector's
shape, ``{"properties": {cpus, cpu_arch, memory_mb, local_gb, capabilities}, "macs": [...]}``, plus
the inventory itself for the conductor to store, and the ramdisk is torn down (power off, ramdisk
boot config removed, token forgotten).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from ironworks.drivers.agent import AgentMixin
from ironworks.drivers.agent_client import AgentBusy, AgentClient, AgentError, AgentUnreachable
from ironworks.drivers.agent_client import command_error_message as _command_error
from ironworks.drivers.base import InspectInterface, Task
from ironworks.drivers.steps import Done, Failed, Outcome, Wait

GIB = 1 << 30
INVENTORY_COMMAND = "poll.get_hardware_info"


def inventory_properties(inventory: dict[str, Any], capabilities: str | None = None) -> dict[str, Any]:
    """Node properties from an IPA inventory: ``local_gb`` is the largest disk in GiB minus one, as Ironic does."""
    props: dict[str, Any] = {}
    cpu = inventory.get("cpu") or {}
    if isinstance(cpu.get("count"), int) and cpu["count"] > 0:
        props["cpus"] = cpu["count"]
    if cpu.get("architecture"):
        props["cpu_arch"] = str(cpu["architecture"])
    memory = inventory.get("memory") or {}
    mb = memory.get("physical_mb") or (int(memory.get("total") or 0) // (1 << 20))
    if mb:
        props["memory_mb"] = int(mb)
    sizes = [int(d.get("size") or 0) for d in inventory.get("disks") or [] if isinstance(d, dict)]
    if sizes:
        props["local_gb"] = max(0, max(sizes) // GIB - 1)
    mode = str((inventory.get("boot") or {}).get("current_boot_mode") or "")
    if mode in ("uefi", "bios"):
        caps = [c for c in str(capabilities or "").split(",") if c and not c.startswith("boot_mode:")]
        props["capabilities"] = ",".join([*caps, f"boot_mode:{mode}"])
    return props


def inventory_macs(inventory: dict[str, Any]) -> list[str]:
    """The NICs' MAC addresses, lower case, each once, in the inventory's order."""
    macs: list[str] = []
    for nic in inventory.get("interfaces") or []:
        mac = str((nic or {}).get("mac_address") or "").strip().lower()
        if mac and mac != "00:00:00:00:00:00" and mac not in macs:
            macs.append(mac)
    return macs


class AgentInspect(AgentMixin, InspectInterface):
    """In-band inspection: the agent in the ramdisk reports CPUs, memory, disks and NICs."""

    name = "agent"
    properties: ClassVar[dict[str, str]] = {}

    def validate(self, task: Task) -> None:
        """Nothing to check up front: the boot interface validates the ramdisk it boots."""

    def inspect_hardware(self, task: Task) -> Outcome:
        """Boot the ramdisk, wait for the agent, fetch its inventory, tear the ramdisk down."""
        if not task.ports and not task.node.driver_internal_info.get("agent_booting"):
            task.record(
                "The node has no port, so the agent cannot look it up by MAC address; it can still post its "
                "inventory to /v1/continue_inspection, where the BMC address identifies the node.",
                severity="WARNING",
            )
        waiting = self.boot_agent(task, purpose="inspection")
        if waiting is not None:
            return waiting
        fetched = self._fetch_inventory(task)
        if not isinstance(fetched, dict):
            return fetched
        outcome = self.process_inventory(task, fetched)
        if isinstance(outcome, Done) and outcome.result is not None:
            outcome.result["inventory"] = fetched
        return outcome

    def process_inventory(
        self, task: Task, inventory: dict[str, Any], plugin_data: dict[str, Any] | None = None
    ) -> Outcome:
        """Properties and MACs from ``inventory``; the ramdisk is torn down either way."""
        self.stop_agent(task)
        macs = inventory_macs(inventory)
        if not macs:
            return Failed("inventory_invalid", "The agent's inventory lists no NIC with a MAC address.")
        props = inventory_properties(inventory, task.node.properties.get("capabilities"))
        missing = [k for k in ("cpus", "cpu_arch", "memory_mb", "local_gb") if k not in props]
        summary = ", ".join(f"{k}={props[k]}" for k in ("cpus", "cpu_arch", "memory_mb", "local_gb") if k in props)
        task.record(
            f"Inventory from the agent: {summary or 'no sizes'}; {len(macs)} NIC(s)"
            + (f"; not reported: {', '.join(missing)} (left as they were)" if missing else ""),
            data={"type": "inspection.agent", "properties": props, "macs": macs},
        )
        return Done({"properties": props, "macs": macs, "plugin_data": dict(plugin_data or {})})

    def _fetch_inventory(self, task: Task) -> dict[str, Any] | Outcome:
        """The agent's answer to ``poll.get_hardware_info`` (a quick, synchronous command)."""
        info = task.node.driver_internal_info
        client = AgentClient(str(info["agent_url"]), str(info.get("agent_secret_token", "")))
        try:
            result = client.execute(INVENTORY_COMMAND, wait=True)
        except AgentBusy:
            return Wait(self.poll_interval, reason="the agent is busy with another command")
        except AgentUnreachable as exc:
            silent = time.time() - float(info.get("agent_last_heartbeat") or info.get("agent_booting") or 0)
            limit = self._conductor_setting("agent_silence_timeout", 600.0)
            if silent <= limit:
                return Wait(self.poll_interval, reason="the agent does not answer; it may be rebooting")
            self.stop_agent(task)
            return Failed(
                "agent_silent",
                f"The agent stopped answering before it sent its inventory: {exc.message} No heartbeat for "
                f"{silent:.0f}s (limit [conductor] agent_silence_timeout = {limit:g}s). Check the machine's console.",
            )
        except AgentError as exc:
            self.stop_agent(task)
            return Failed(exc.reason, f"Asking the agent for its inventory failed: {exc.message}")
        finally:
            client.close()
        inventory = result.get("command_result")
        if result.get("command_status") != "SUCCEEDED" or not isinstance(inventory, dict):
            self.stop_agent(task)
            return Failed("agent_command_failed", f"The agent's {INVENTORY_COMMAND} failed: {_command_error(result)}")
        return inventory
