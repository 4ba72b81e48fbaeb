"""``agent`` deploy and rescue interfaces: the work happens in the utility ramdisk's agent.

Deploy steps run in Ironic's order: ``deploy`` (100: boot the ramdisk, wait for the agent's first
heartbeat) → ``write_image`` (80: ``standby.prepare_image``, progress polled from the agent) →
``prepare_instance_boot`` (60: boot from disk) → ``tear_down_agent`` (40: power off, ramdisk
config removed) → ``boot_instance`` (20: power on). Clean and service steps that the agent performs
(``erase_devices_metadata``, ``erase_devices``, ``update_firmware``, burn-in) boot the ramdisk the
first time one runs and are sent to the agent as ``clean.execute_clean_step`` /
``service.execute_service_step``.

Every agent command is started once and then polled (``Wait(poll_after)``); the command's id is
kept in ``driver_internal_info`` so a resumed step finds it. An agent that stops answering fails the
step after ``[conductor] agent_silence_timeout`` seconds without a heartbeat.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

from ironworks.drivers.agent_client import (
    AgentBusy,
    AgentClient,
    AgentError,
    AgentUnreachable,
    command_error_message,
)
from ironworks.drivers.base import (
    BootDevice,
    BootInterface,
    DeployInterface,
    ManagementInterface,
    PowerState,
    RescueInterface,
    Task,
    ValidationError,
)
from ironworks.drivers.steps import Done, Failed, Outcome, Wait, step
from ironworks.images.configdrive import ConfigDriveError, for_agent

#: driver_internal_info keys that belong to one boot of the agent (cleared when it is torn down)
AGENT_KEYS = (
    "agent_url",
    "agent_version",
    "agent_last_heartbeat",
    "agent_secret_token",
    "agent_booting",
    "agent_steps_listed",
)
FIRMWARE_ARGS = {
    "url": {"description": "URL of the firmware tarball (holding runme.sh)", "required": True, "type": "string"},
    "checksum": {"description": "sha256:<hex> of the tarball", "required": False, "type": "string"},
    "timeout": {"description": "seconds runme.sh may run (default 1800)", "required": False, "type": "integer"},
}
BURNIN_ARGS = {"timeout": {"description": "seconds to run", "required": False, "type": "integer"}}
BURNIN_NETWORK_ARGS = {
    "role": {"description": "reader (listens) or writer (connects to partner)", "required": True, "type": "string"},
    "partner": {"description": "host or address of the reader (writer only)", "required": False, "type": "string"},
    "port": {"description": "TCP port of the reader (default 9000)", "required": False, "type": "integer"},
    "runtime": {"description": "seconds of traffic (default 60)", "required": False, "type": "integer"},
    "timeout": {"description": "seconds to wait for the partner (default 300)", "required": False, "type": "integer"},
    "size": {"description": "fio size of one pass, e.g. 64m (default 1g)", "required": False, "type": "string"},
}


#: at most this many characters of an agent's answer go into the timeline
RESULT_LIMIT = 8000


def record_result(task: Task, name: str, result: dict[str, Any]) -> None:
    """Put what the agent answered into the timeline: a firmware update's output is only seen there."""
    inner = result
    for key in ("clean_result", "service_result", "deploy_result"):
        if isinstance(result.get(key), dict):
            inner = result[key]
    text = json.dumps(inner, default=str)
    data: dict[str, Any] = {"type": "agent.result", "command": name}
    if len(text) <= RESULT_LIMIT:
        data["result"] = inner
    else:
        data["result_truncated"] = text[:RESULT_LIMIT]
    message = f"The agent's {name} succeeded"
    tail = inner.get("output_tail")
    if isinstance(tail, str) and tail.strip():
        message += f"; last output:\n{tail[-RESULT_LIMIT:]}"
    task.record(message, data=data)


class AgentMixin:
    """Booting the agent, and running one command on it to completion across ``Wait`` calls."""

    config: Any

    def _conductor_setting(self, name: str, default: float) -> float:
        conductor = getattr(self.config, "conductor", None)
        return float(getattr(conductor, name, default))

    @property
    def poll_interval(self) -> float:
        """Seconds between two polls of a running agent command."""
        return self._conductor_setting("agent_poll_interval", 2.0)

    def api_url(self) -> str:
        """The URL the agent reaches the API at (``ipa-api-url``)."""
        api = getattr(self.config, "api", None)
        if api is not None and api.public_url:
            return str(api.public_url).rstrip("/")
        host = getattr(api, "host", "127.0.0.1")
        return f"http://{host}:{getattr(api, 'port', 6385)}"

    def agent_ready(self, task: Task) -> bool:
        """Whether the agent of this flow has heartbeated."""
        return bool(task.node.driver_internal_info.get("agent_url"))

    def boot_agent(self, task: Task, *, purpose: str) -> Outcome | None:
        """Boot the ramdisk once; ``None`` when the agent is up, else ``Wait`` for its heartbeat."""
        info = task.node.driver_internal_info
        if self.agent_ready(task):
            return None
        if not info.get("agent_booting"):
            boot = task.interface("boot")
            assert isinstance(boot, BootInterface)
            boot.prepare_ramdisk(task, params={"ipa-api-url": self.api_url()})
            info["agent_booting"] = time.time()
            task.set_power_state(PowerState.REBOOT if task.node.power_state == PowerState.ON else PowerState.ON)
            task.record(f"Booting the agent ramdisk for {purpose}; waiting for its first heartbeat")
        return Wait(None, reason="waiting for the agent's first heartbeat")

    def stop_agent(self, task: Task) -> None:
        """Power off, remove the ramdisk boot config, forget this agent and its token."""
        task.set_power_state(PowerState.OFF)
        boot = task.interface("boot")
        assert isinstance(boot, BootInterface)
        boot.clean_up_ramdisk(task)
        for key in AGENT_KEYS:
            task.node.driver_internal_info.pop(key, None)

    def abandon_agent(self, task: Task) -> None:
        """After a failure: power off and remove the ramdisk's boot config as far as possible, and
        always forget the agent and its token, so no later flow talks to this ramdisk or trusts it.

        Each part that fails is recorded as a warning instead of raised: the node is already failed,
        and the operator needs to see the original error, not one about the clean-up.
        """
        info = task.node.driver_internal_info
        if not (info.get("agent_booting") or self.agent_ready(task)):
            return
        for what, action in (
            ("power the machine off", lambda: task.set_power_state(PowerState.OFF)),
            ("remove the ramdisk's boot configuration", lambda: self._clean_up_ramdisk(task)),
        ):
            try:
                action()
            except Exception as exc:
                task.record(f"After the failure, could not {what}: {exc}", severity="WARNING")
        for key in AGENT_KEYS:
            info.pop(key, None)

    def _clean_up_ramdisk(self, task: Task) -> None:
        boot = task.interface("boot")
        assert isinstance(boot, BootInterface)
        boot.clean_up_ramdisk(task)

    def run_command(self, task: Task, key: str, name: str, params: dict[str, Any]) -> Outcome:
        """Start agent command ``name`` once (remembered under ``key``), then poll it to its end."""
        info = task.node.driver_internal_info
        client = AgentClient(str(info["agent_url"]), str(info.get("agent_secret_token", "")))
        slot = f"agent_command_{key}"
        try:
            if slot not in info:
                result = client.execute(name, params)
                info[slot] = result["id"]
            else:
                result = client.get(str(info[slot]))
        except AgentBusy:
            return Wait(self.poll_interval, reason="the agent is busy with another command")
        except AgentUnreachable as exc:
            silent = time.time() - float(info.get("agent_last_heartbeat") or info.get("agent_booting") or 0)
            limit = self._conductor_setting("agent_silence_timeout", 600.0)
            if silent > limit:
                info.pop(slot, None)
                return Failed(
                    "agent_silent",
                    f"The agent stopped answering while running {name}: {exc.message} No heartbeat for "
                    f"{silent:.0f}s (limit [conductor] agent_silence_timeout = {limit:g}s). "
                    "Check the machine's console.",
                )
            return Wait(self.poll_interval, reason="the agent does not answer; it may be rebooting")
        except AgentError as exc:
            info.pop(slot, None)
            return Failed(exc.reason, exc.message)
        finally:
            client.close()
        status = result.get("command_status")
        if status == "RUNNING":
            progress = result.get("progress") or (result.get("command_result") or {}).get("progress")
            if isinstance(progress, dict) and progress.get("done") is not None:
                task.progress(float(progress["done"]), progress.get("total"), message=progress.get("message", name))
            return Wait(self.poll_interval, reason=f"agent runs {name}")
        info.pop(slot, None)
        if status == "SUCCEEDED":
            outcome = result.get("command_result") or {}
            if not name.startswith("rescue."):  # nothing of a rescue's answer belongs in the timeline
                record_result(task, name, outcome)
            return Done(outcome)
        return Failed("agent_command_failed", f"The agent's {name} failed: {command_error_message(result)}")

    def run_step(self, task: Task, kind: str, name: str, args: dict[str, Any], *, interface: str = "deploy") -> Outcome:
        """Boot the agent if needed, then have it execute step ``name`` of ``kind`` (clean/service)."""
        waiting = self.boot_agent(task, purpose=f"{kind} step {name}")
        if waiting is not None:
            return waiting
        params = {
            "step": {"interface": interface, "step": name, "args": args, "priority": 0},
            "node": {"uuid": task.node.uuid, "properties": task.node.properties},
            "ports": [{"address": p.address} for p in task.ports],
        }
        if kind == "clean":
            params["clean_version"] = None
        slot = f"{kind}_{name}" if interface == "deploy" else f"{kind}_{interface}_{name}"
        return self.run_command(task, slot, f"{kind}.execute_{kind}_step", params)

    def refresh_steps(self, task: Task, kind: str) -> list[dict[str, Any]] | None:
        """Ask the agent (once per boot) for its ``kind`` steps and cache them; None: not up, or asked already.

        The cache outlives the agent, so the API checks requested steps up front. Keys, as Ironic's:
        ``agent_cached_<kind>_steps`` (``{interface: [step, ...]}``), ``agent_cached_<kind>_steps_refreshed``
        (UTC time), ``agent_cached_<kind>_steps_agent_version`` and ``hardware_manager_version``.
        """
        info = task.node.driver_internal_info
        listed = list(info.get("agent_steps_listed") or [])
        if not self.agent_ready(task) or kind in listed:
            return None
        client = AgentClient(str(info["agent_url"]), str(info.get("agent_secret_token", "")))
        try:
            by_interface, versions = client.get_steps(kind, self._step_params(task))
        except (AgentBusy, AgentUnreachable):
            return None  # asked again before the next step; a reported step waits for the answer
        finally:
            client.close()
        info[f"agent_cached_{kind}_steps"] = by_interface
        info[f"agent_cached_{kind}_steps_refreshed"] = datetime.now(UTC).isoformat()
        info[f"agent_cached_{kind}_steps_agent_version"] = info.get("agent_version")
        info["hardware_manager_version"] = versions
        info["agent_steps_listed"] = [*listed, kind]
        flat = [item for steps in by_interface.values() for item in steps]
        names = sorted(f"{item.get('interface', 'deploy')}.{item['step']}" for item in flat)
        task.record(
            f"The agent reports {len(flat)} {kind} steps: {', '.join(names) or 'none'}",
            data={"type": "agent.steps", "kind": kind, "steps": names},
        )
        return flat

    def _step_params(self, task: Task) -> dict[str, Any]:
        return {
            "node": {"uuid": task.node.uuid, "properties": task.node.properties},
            "ports": [{"address": p.address} for p in task.ports],
        }


class AgentDeploy(AgentMixin, DeployInterface):
    """Deploys by having the agent write the image (and config drive) onto the machine's disk."""

    name = "agent"
    properties: ClassVar[dict[str, str]] = {}
    #: steps the agent reports (a vendor hardware manager's) may be requested on this interface
    runs_reported_steps: ClassVar[bool] = True

    def validate(self, task: Task) -> None:
        """An image to deploy is named in instance_info when the node is being deployed."""
        deploying = task.node.provision_state in ("deploying", "wait call-back", "available", "active")
        if deploying and not task.node.instance_info.get("image_source"):
            raise ValidationError(
                "instance_info/image_source is required for the agent deploy: the URL of the image "
                "(raw or qcow2), with image_os_hash_algo and image_os_hash_value."
            )

    # ---- deploy steps, in Ironic's order -----------------------------------------------
    @step("deploy", priority=100)
    def deploy(self, task: Task) -> Outcome:
        """Boot the ramdisk and wait for the agent."""
        return self.boot_agent(task, purpose="deployment") or Done()

    @step("deploy", priority=80)
    def write_image(self, task: Task) -> Outcome:
        """The agent writes the image (and the config drive) onto the disk."""
        ii = task.node.instance_info
        try:
            configdrive = for_agent(ii.get("configdrive"), node_uuid=task.node.uuid, node_name=task.node.name)
        except ConfigDriveError as exc:
            return Failed(exc.reason, exc.message)
        image_info = {
            "id": ii.get("image_source"),
            "urls": [ii.get("image_source")],
            "disk_format": ii.get("image_disk_format", "raw"),
            "os_hash_algo": ii.get("image_os_hash_algo"),
            "os_hash_value": ii.get("image_os_hash_value"),
            "checksum": ii.get("image_checksum"),
        }
        return self.run_command(
            task, "write_image", "standby.prepare_image", {"image_info": image_info, "configdrive": configdrive}
        )

    @step("deploy", priority=60)
    def prepare_instance_boot(self, task: Task) -> Outcome:
        """Make the machine boot the deployed disk from now on."""
        mgmt = task.interface("management")
        assert isinstance(mgmt, ManagementInterface)
        mgmt.set_boot_device(task, BootDevice.DISK, persistent=True)
        boot = task.interface("boot")
        assert isinstance(boot, BootInterface)
        boot.prepare_instance(task)
        return Done()

    @step("deploy", priority=40)
    def tear_down_agent(self, task: Task) -> Outcome:
        """Power off and remove the ramdisk's boot configuration."""
        self.stop_agent(task)
        return Done()

    @step("deploy", priority=20)
    def boot_instance(self, task: Task) -> Outcome:
        """Power on into the instance."""
        task.set_power_state(PowerState.ON)
        return Done()

    def tear_down(self, task: Task) -> None:
        """Undeploy: power off and forget the instance's boot configuration."""
        task.set_power_state(PowerState.OFF)
        boot = task.interface("boot")
        assert isinstance(boot, BootInterface)
        boot.clean_up_instance(task)

    def tear_down_cleaning(self, task: Task) -> None:
        """After cleaning: the ramdisk goes away and the machine is off."""
        if task.node.driver_internal_info.get("agent_booting") or self.agent_ready(task):
            self.stop_agent(task)

    def clean_up_after_failure(self, task: Task) -> None:
        """A failed or timed-out flow leaves no ramdisk running, booting or trusted (as Ironic powers off)."""
        self.abandon_agent(task)

    def tear_down_service(self, task: Task) -> None:
        """After servicing: back to the instance."""
        if task.node.driver_internal_info.get("agent_booting") or self.agent_ready(task):
            self.stop_agent(task)
            boot = task.interface("boot")
            assert isinstance(boot, BootInterface)
            boot.prepare_instance(task)
            task.set_power_state(PowerState.ON)

    def run_reported_step(self, task: Task, kind: str, name: str, args: dict[str, Any]) -> Outcome:
        """Run a ``kind`` step only the agent knows (a vendor manager's), once it listed its steps."""
        waiting = self.boot_agent(task, purpose=f"{kind} step {name}")
        if waiting is not None:
            return waiting
        if kind not in (task.node.driver_internal_info.get("agent_steps_listed") or []):
            # the conductor checks such a step against the agent's list first (conductor.steps.replan)
            return Wait(self.poll_interval, reason=f"waiting for the agent's list of {kind} steps")
        return self.run_step(task, kind, name, args)

    # ---- clean and service steps run by the agent -----------------------------------------
    @step("clean", priority=99, abortable=True, requires_ramdisk=True)
    def erase_devices_metadata(self, task: Task) -> Outcome:
        """Wipe partition tables and signatures of every disk."""
        return self.run_step(task, "clean", "erase_devices_metadata", {})

    @step("clean", priority=0, abortable=True, requires_ramdisk=True)
    def erase_devices(self, task: Task) -> Outcome:
        """Erase every disk (NVMe format, ATA secure erase, else shred)."""
        return self.run_step(task, "clean", "erase_devices", {})

    @step("clean", priority=0, args=FIRMWARE_ARGS, requires_ramdisk=True)
    @step("service", priority=0, args=FIRMWARE_ARGS, requires_ramdisk=True)
    def update_firmware(self, task: Task, **args: Any) -> Outcome:
        """Download a vendor tarball, verify it, run its runme.sh (seed 000)."""
        kind = "service" if task.node.provision_state in ("servicing", "service wait") else "clean"
        return self.run_step(task, kind, "update_firmware", args)

    @step("clean", priority=0, args=BURNIN_ARGS, requires_ramdisk=True)
    def burnin_cpu(self, task: Task, **args: Any) -> Outcome:
        """Load every CPU (stress-ng)."""
        return self.run_step(task, "clean", "burnin_cpu", args)

    @step("clean", priority=0, args=BURNIN_ARGS, requires_ramdisk=True)
    def burnin_memory(self, task: Task, **args: Any) -> Outcome:
        """Exercise memory (stress-ng)."""
        return self.run_step(task, "clean", "burnin_memory", args)

    @step("clean", priority=0, args=BURNIN_ARGS, requires_ramdisk=True)
    def burnin_disk(self, task: Task, **args: Any) -> Outcome:
        """Exercise every disk (fio, with verification)."""
        return self.run_step(task, "clean", "burnin_disk", args)

    @step("clean", priority=0, args=BURNIN_NETWORK_ARGS, requires_ramdisk=True)
    def burnin_network(self, task: Task, **args: Any) -> Outcome:
        """Stream traffic between two nodes' agents (fio net engine): one ``reader``, one ``writer``."""
        return self.run_step(task, "clean", "burnin_network", args)


class AgentRescue(AgentMixin, RescueInterface):
    """Rescue: boot the ramdisk, have the agent set the rescue password."""

    name = "agent"

    def validate(self, task: Task) -> None:
        """A rescue password is needed when rescuing (the API stores it)."""
        if task.node.provision_state == "rescuing" and not task.node.instance_info.get("rescue_password"):
            raise ValidationError("instance_info/rescue_password is required to rescue a node.")

    def rescue(self, task: Task) -> Outcome:
        """Boot the ramdisk, then ``rescue.finalize_rescue`` with the password."""
        waiting = self.boot_agent(task, purpose="rescue")
        if waiting is not None:
            return waiting
        password = str(task.node.instance_info.get("rescue_password", ""))
        return self.run_command(task, "rescue", "rescue.finalize_rescue", {"rescue_password": password})

    def unrescue(self, task: Task) -> None:
        """Power off, drop the ramdisk, boot the instance again."""
        self.stop_agent(task)
        boot = task.interface("boot")
        assert isinstance(boot, BootInterface)
        boot.prepare_instance(task)
        task.set_power_state(PowerState.ON)
