"""``agent`` bios and raid interfaces: BIOS and RAID configured in-band by a vendor hardware manager.

The generic agent knows no vendor tool, so these steps only succeed on machines whose ramdisk carries
a hardware manager that declares them (``ironworks/agent/hardware.py`` names the hooks; the example in
``examples/vendor_manager`` implements them). On any other machine the agent answers that no manager
handles the step, and the step fails with that message. The steps boot the ramdisk through the node's
``agent`` deploy interface, which also takes it down when cleaning or servicing ends.
"""

from __future__ import annotations

from typing import Any

from ironworks.drivers.agent import AgentMixin
from ironworks.drivers.base import BiosInterface, DeployInterface, RaidInterface, Task, ValidationError
from ironworks.drivers.steps import Failed, Outcome, step

_SETTINGS_ARG = {"settings": {"description": "[{name, value}] to apply", "required": True, "type": "array"}}
_RAID_ARG = {
    "target_raid_config": {
        "description": "the logical disks to create: {logical_disks: [{size_gb, raid_level, ...}]}",
        "required": True,
        "type": "object",
    }
}


def _kind(task: Task) -> str:
    return "service" if task.node.provision_state in ("servicing", "service wait") else "clean"


def _agent_deploy_missing(task: Task, what: str) -> str | None:
    deploy = task.interface("deploy")
    if isinstance(deploy, DeployInterface) and deploy.name == "agent":
        return None
    return (
        f"The agent {what} interface runs its steps in the utility ramdisk, which the agent deploy "
        f"interface boots and takes down; this node's deploy_interface is {deploy.name!r}. "
        "Set deploy_interface=agent."
    )


def _needs_agent_deploy(task: Task, what: str) -> None:
    problem = _agent_deploy_missing(task, what)
    if problem:
        raise ValidationError(problem)


class _AgentHook(AgentMixin):
    """Runs one vendor hook step, after checking the node can boot the ramdisk for it."""

    def hook(self, task: Task, interface: str, name: str, args: dict[str, Any], *, kind: str = "") -> Outcome:
        problem = _agent_deploy_missing(task, interface)
        if problem:
            return Failed("agent_deploy_required", problem)
        return self.run_step(task, kind or _kind(task), name, args, interface=interface)


class AgentBios(_AgentHook, BiosInterface):
    """BIOS settings applied by the ramdisk's vendor hardware manager."""

    name = "agent"

    def validate(self, task: Task) -> None:
        """The ramdisk is booted by the agent deploy interface."""
        _needs_agent_deploy(task, "bios")

    @step("clean", priority=0, args=_SETTINGS_ARG, requires_ramdisk=True)
    @step("service", priority=0, args=_SETTINGS_ARG, requires_ramdisk=True)
    def apply_configuration(self, task: Task, settings: list[dict[str, Any]]) -> Outcome:
        """Apply BIOS settings ``[{"name": ..., "value": ...}]`` through the vendor's tool in the ramdisk."""
        return self.hook(task, "bios", "apply_configuration", {"settings": settings})

    @step("clean", priority=0, requires_ramdisk=True)
    @step("service", priority=0, requires_ramdisk=True)
    def factory_reset(self, task: Task) -> Outcome:
        """Return the BIOS settings to their defaults through the vendor's tool in the ramdisk."""
        return self.hook(task, "bios", "factory_reset", {})


class AgentRaid(_AgentHook, RaidInterface):
    """RAID volumes created and deleted by the ramdisk's vendor hardware manager."""

    name = "agent"

    def validate(self, task: Task) -> None:
        """The ramdisk is booted by the agent deploy interface."""
        _needs_agent_deploy(task, "raid")

    @step("clean", priority=0, args=_RAID_ARG, requires_ramdisk=True)
    def create_configuration(self, task: Task, target_raid_config: dict[str, Any]) -> Outcome:
        """Create the logical disks of ``target_raid_config`` (Ironic's shape)."""
        return self.hook(task, "raid", "create_configuration", {"target_raid_config": target_raid_config})

    @step("clean", priority=0, requires_ramdisk=True)
    def delete_configuration(self, task: Task) -> Outcome:
        """Delete every logical disk."""
        return self.hook(task, "raid", "delete_configuration", {})
