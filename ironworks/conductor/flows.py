"""Flows: what a conductor does for each kind of action, one node at a time, under its lock.

The API has already made the first move of a provision flow (``enroll -> verifying``,
``available -> deploying`` ...) in the transaction that queued the action; a flow carries it on to a
stable state. Steps run in order; a step that returns ``Wait`` moves the node to the matching wait
state and the flow ends (lock released) until a ``resume`` action — a timer, an agent heartbeat or
``unhold`` — continues it from the same step.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select

from ironworks import states
from ironworks.conductor import steps as stepslib
from ironworks.conductor.engine import STEP_KIND, FlowEngine, describe_error
from ironworks.conductor.queue import ClaimedAction
from ironworks.conductor.task import TaskContext
from ironworks.db.models import NodeInventory, Port, utcnow
from ironworks.drivers.agent import AGENT_KEYS
from ironworks.drivers.agent_inspect import AgentInspect
from ironworks.drivers.base import (
    BootInterface,
    DeployInterface,
    InspectInterface,
    ManagementInterface,
    RescueInterface,
)
from ironworks.drivers.steps import Done, Failed, Outcome, Wait
from ironworks.errors import IronworksError

LOG = logging.getLogger(__name__)
S, E = states.State, states.Event

__all__ = ["EXPECTED_STATE", "STEP_KIND", "FlowRunner", "describe_error"]

#: The state a provision action expects the node in when the conductor picks it up.
EXPECTED_STATE: dict[str, frozenset[states.State]] = {
    "manage": frozenset({S.VERIFYING}),
    "provide": frozenset({S.CLEANING}),
    "clean": frozenset({S.CLEANING}),
    "inspect": frozenset({S.INSPECTING}),
    "deploy": frozenset({S.DEPLOYING}),
    "rebuild": frozenset({S.DEPLOYING}),
    "delete": frozenset({S.DELETING}),
    "rescue": frozenset({S.RESCUING}),
    "unrescue": frozenset({S.UNRESCUING}),
    "adopt": frozenset({S.ADOPTING}),
    "service": frozenset({S.SERVICING}),
    "resume": states.WAIT_STATES,
    "abort": states.FAILURE_STATES | frozenset({S.ACTIVE}),
}


class FlowRunner(FlowEngine):
    """Runs claimed actions: power, management and provision flows."""

    # ---- entry point -------------------------------------------------------------
    def run(self, action: ClaimedAction) -> dict[str, Any] | None:
        """Run one action (the caller holds the node's lock); returns the action's result."""
        task = self.task(action.node_id, action.user)
        if action.kind == "power":
            return self.power(task, action.name, action.args.get("timeout"))
        if action.kind == "management":
            return self.management(task, action.name, action.args)
        if action.kind == "agent":
            if action.name == "continue_inspection":
                return self.continue_inspection(task)
            return self.agent_heartbeat(task, action.args)
        if action.kind == "provision":
            state = S(task.node.provision_state)
            if state not in EXPECTED_STATE.get(action.name, frozenset()):
                LOG.info("node %s: skipping %s in state %s", task.node.uuid, action.name, state.value)
                return {"skipped": f"node is {state.value}"}
            try:
                getattr(self, f"_flow_{action.name}")(task, action.args)
            except Exception as exc:  # a flow must never leave a node half-moved
                LOG.exception("node %s: %s flow failed", task.node.uuid, action.name)
                self.fail(task, describe_error(exc))
            return None
        raise ValueError(f"unknown action kind {action.kind!r}")

    # ---- power and management ------------------------------------------------------
    def power(self, task: TaskContext, target: str, timeout: float | None) -> dict[str, Any]:
        """Change the power state; record the result or the BMC's error."""
        old = task.node.power_state
        try:
            new = self._set_power(task, target, timeout)
        except Exception as exc:
            err = f"Failed to change power state to {target!r}: {describe_error(exc)}"
            task.set(target_power_state=None, last_error=err)
            task.event("power", err, severity="ERROR", target=target)
            task.save()
            return {"error": err}
        task.set(last_error=None)
        task.event("power", f"Power state {old} -> {new} (requested {target})", target=target)
        task.save()
        return {"power_state": new}

    def management(self, task: TaskContext, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Boot device get/set and the deploy pre-check, answered synchronously through the action's result."""
        if name == "precheck_deploy":
            try:
                boot = task.driver["boot"]
                if isinstance(boot, BootInterface):
                    boot.precheck_deploy(task)
            except Exception as exc:
                reason = exc.reason if isinstance(exc, IronworksError) else "error"
                return {"error": describe_error(exc), "reason": reason}
            finally:
                task.save()  # what it learnt (the BMC's virtual media devices) is kept either way
            return {}
        mgmt = task.driver["management"]
        assert isinstance(mgmt, ManagementInterface)
        try:
            if name == "set_boot_device":
                mgmt.set_boot_device(task, args["boot_device"], persistent=bool(args.get("persistent")))
                task.event("management", f"Boot device set to {args['boot_device']}", **args)
                task.save()
                return {}
            if name == "get_boot_device":
                return mgmt.get_boot_device(task)
            if name == "get_supported_boot_devices":
                return {"supported_boot_devices": mgmt.get_supported_boot_devices(task)}
        except Exception as exc:
            reason = exc.reason if isinstance(exc, IronworksError) else "error"
            return {"error": describe_error(exc), "reason": reason}
        raise ValueError(f"unknown management action {name!r}")

    def agent_heartbeat(self, task: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
        """Record where the agent listens; a flow waiting for it carries on."""
        info = task.node.driver_internal_info
        if not (info.get("agent_booting") or info.get("agent_url")):
            # no flow has booted an agent: this heartbeat was queued by one that has been torn down
            # since (an agent beats right after its last command, as the flow powers it off); taking
            # it would make the next flow skip booting the ramdisk and talk to a machine that is off
            LOG.info("node %s: ignored a heartbeat from %s: no agent booted", task.node.uuid, args.get("callback_url"))
            return {"state": task.node.provision_state}
        first = not info.get("agent_url")
        info["agent_url"] = args.get("callback_url")
        info["agent_version"] = args.get("agent_version")
        info["agent_last_heartbeat"] = time.time()
        if first:
            task.event("agent", f"Agent {args.get('agent_version') or ''} up at {args.get('callback_url')}".strip())
        state = S(task.node.provision_state)
        if state in states.WAIT_STATES and not task.db_node.maintenance:
            try:
                self._flow_resume(task, {})
            except Exception as exc:
                LOG.exception("node %s: resuming after a heartbeat failed", task.node.uuid)
                self.fail(task, describe_error(exc))
        else:
            task.save()
        return {"state": task.node.provision_state}

    # ---- provision flows -------------------------------------------------------------
    def _flow_manage(self, task: TaskContext, args: dict[str, Any]) -> None:
        """Verifying: the BMC must answer before the node is manageable."""
        power = self._power_iface(task)
        power.validate(task)
        state = power.get_power_state(task)
        task.set(power_state=state)
        for iface in task.driver.interfaces.values():
            iface.on_verify(task)
        task.transition(E.DONE)

    def _flow_inspect(self, task: TaskContext, args: dict[str, Any]) -> None:
        # a new inspection boots a new ramdisk: nothing of an earlier agent (say one whose inspection
        # timed out, token included) may stand in for it
        for key in AGENT_KEYS:
            task.node.driver_internal_info.pop(key, None)
        task.set(inspection_started_at=utcnow(), inspection_finished_at=None)
        self._inspect(task)

    def _inspect(self, task: TaskContext) -> None:
        inspect = task.driver["inspect"]
        assert isinstance(inspect, InspectInterface)
        self._inspected(task, inspect.inspect_hardware(task))

    def continue_inspection(self, task: TaskContext) -> dict[str, Any]:
        """The agent posted its inventory (``/v1/continue_inspection``, stored by the API): finish with it."""
        inspect = task.driver["inspect"]
        state = S(task.node.provision_state)
        problem = None
        if state != S.INSPECT_WAIT:
            problem = f"the node is {state.value}, not inspect wait"
        elif not isinstance(inspect, AgentInspect):
            problem = f"its inspect interface is {inspect.name!r}, not 'agent'"
        elif task.db_node.maintenance:
            problem = "the node is in maintenance"
        stored = self._stored_inventory(task) if problem is None else None
        if problem is None and stored is None:
            problem = "no inventory is stored"
        if problem is not None or stored is None or not isinstance(inspect, AgentInspect):
            task.event("inspection", f"Inspection data posted by the agent was not used: {problem}", severity="WARNING")
            task.save()
            return {"skipped": problem}
        task.transition(E.RESUME, save=False)
        try:
            outcome = inspect.process_inventory(task, stored[0], stored[1])
        except Exception as exc:  # a flow must never leave a node half-moved
            LOG.exception("node %s: processing posted inspection data failed", task.node.uuid)
            outcome = Failed("exception", describe_error(exc))
        self._inspected(task, outcome)
        return {"state": task.node.provision_state}

    def _stored_inventory(self, task: TaskContext) -> tuple[dict[str, Any], dict[str, Any]] | None:
        with self.db.read() as s:
            row = s.execute(select(NodeInventory).where(NodeInventory.node_id == task.node.id)).scalar_one_or_none()
            return None if row is None else (dict(row.inventory or {}), dict(row.plugin_data or {}))

    def _store_inventory(self, task: TaskContext, inventory: dict[str, Any], plugin_data: dict[str, Any]) -> None:
        with self.db.write() as s:
            row = s.execute(select(NodeInventory).where(NodeInventory.node_id == task.node.id)).scalar_one_or_none()
            if row is None:
                s.add(NodeInventory(node_id=task.node.id, inventory=inventory, plugin_data=plugin_data))
            else:
                row.inventory, row.plugin_data = inventory, plugin_data

    def _inspected(self, task: TaskContext, outcome: Outcome) -> None:
        """Apply an inspect interface's outcome: wait, fail, or store what it found and finish."""
        if isinstance(outcome, Wait):
            self._wait(task, outcome)
            return
        if isinstance(outcome, Failed):
            self.fail(task, outcome.message)
            return
        result = (outcome.result if isinstance(outcome, Done) else None) or {}
        if isinstance(result.get("inventory"), dict):
            self._store_inventory(task, result["inventory"], dict(result.get("plugin_data") or {}))
        props = {**task.node.properties, **result.get("properties", {})}
        task.set(properties=props, inspection_finished_at=utcnow())
        mgmt = task.driver.interfaces.get("management")
        if isinstance(mgmt, ManagementInterface):
            try:
                mode = mgmt.get_boot_mode(task)
            except Exception as exc:  # inspection found the hardware; the boot mode is a bonus
                task.event("inspection", f"Boot mode not read: {describe_error(exc)}", severity="WARNING")
            else:
                if mode:
                    task.set(boot_mode=mode)
        self._add_ports(task, result.get("macs", []))
        self.refresh_caches(task)
        task.transition(E.DONE)

    def _add_ports(self, task: TaskContext, macs: list[str]) -> None:
        if not macs:
            return
        with self.db.write() as s:
            known = set(s.execute(select(Port.address).where(Port.address.in_(macs))).scalars())
            for mac in macs:
                if mac.lower() not in known:
                    s.add(Port(address=mac.lower(), node_id=task.node.id))
                    task.event("inspection", f"Port {mac} created by inspection", mac=mac)

    def _flow_provide(self, task: TaskContext, args: dict[str, Any]) -> None:
        self._start_cleaning(task, manual=None)

    def _flow_clean(self, task: TaskContext, args: dict[str, Any]) -> None:
        self._start_cleaning(task, manual=args.get("clean_steps"))

    def _start_cleaning(self, task: TaskContext, manual: list[dict[str, Any]] | None) -> None:
        if manual is not None:
            plan = manual  # validated and normalized by the API before it was queued
        elif self._automated_clean_enabled(task):
            plan = stepslib.automated_steps(task.driver, "clean")
            if self.config.conductor.automated_clean_full_erase:
                full = [s for s in stepslib.available_steps(task.driver, "clean") if s["step"] == "erase_devices"]
                plan = sorted(plan + [dict(s, priority=10) for s in full[:1]], key=lambda s: -s["priority"])
        else:
            plan = []
            task.event("cleaning", "Automated cleaning is disabled: skipping it")
        self._begin_steps(task, "clean", plan)
        self._run_steps(task, "clean")

    def _automated_clean_enabled(self, task: TaskContext) -> bool:
        node_setting = task.db_node.automated_clean
        return node_setting if node_setting is not None else self.config.conductor.automated_clean

    def _flow_deploy(self, task: TaskContext, args: dict[str, Any]) -> None:
        deploy = task.driver["deploy"]
        assert isinstance(deploy, DeployInterface)
        deploy.validate(task)
        deploy.prepare(task)
        # operator deploy steps were validated and normalized by the API before it queued them
        user_steps = args.get("deploy_steps") or []
        self._begin_steps(task, "deploy", stepslib.merge_deploy_steps(task.driver, user_steps))
        self._run_steps(task, "deploy")

    _flow_rebuild = _flow_deploy

    def _flow_service(self, task: TaskContext, args: dict[str, Any]) -> None:
        self._begin_steps(task, "service", list(args.get("service_steps") or []))
        self._run_steps(task, "service")

    def _flow_delete(self, task: TaskContext, args: dict[str, Any]) -> None:
        deploy, boot = task.driver["deploy"], task.driver["boot"]
        assert isinstance(deploy, DeployInterface) and isinstance(boot, BootInterface)
        deploy.tear_down(task)
        boot.clean_up_instance(task)
        deploy.clean_up(task)
        for key in ("deploy_steps", "deploy_step_index"):
            task.node.driver_internal_info.pop(key, None)
        task.set(instance_info={}, instance_uuid=None, deploy_step=None)
        task.transition(E.CLEAN, save=False)
        self._start_cleaning(task, manual=None)

    def _flow_rescue(self, task: TaskContext, args: dict[str, Any]) -> None:
        rescue = task.driver["rescue"]
        assert isinstance(rescue, RescueInterface)
        rescue.validate(task)
        outcome = rescue.rescue(task)
        if isinstance(outcome, Wait):
            self._wait(task, outcome)
        elif isinstance(outcome, Failed):
            self.fail(task, outcome.message)
        else:
            task.transition(E.DONE)

    def _flow_unrescue(self, task: TaskContext, args: dict[str, Any]) -> None:
        rescue = task.driver["rescue"]
        assert isinstance(rescue, RescueInterface)
        rescue.unrescue(task)
        info = dict(task.node.instance_info)
        info.pop("rescue_password", None)
        task.set(instance_info=info)
        task.transition(E.DONE)

    def _flow_adopt(self, task: TaskContext, args: dict[str, Any]) -> None:
        deploy = task.driver["deploy"]
        assert isinstance(deploy, DeployInterface)
        deploy.validate(task)
        deploy.take_over(task)
        task.transition(E.DONE)

    def _flow_abort(self, task: TaskContext, args: dict[str, Any]) -> None:
        """Clean up after the API aborted a waiting flow (the state already moved)."""
        boot = task.driver["boot"]
        assert isinstance(boot, BootInterface)
        boot.clean_up_ramdisk(task)
        for kind in ("clean", "deploy", "service"):
            for key in (f"{kind}_steps", f"{kind}_step_index"):
                task.node.driver_internal_info.pop(key, None)
        for key in ("abort_after", "wait_until", "held", "step_started_at"):
            task.node.driver_internal_info.pop(key, None)
        task.set(clean_step=None, deploy_step=None, service_step=None)
        task.event("provision", f"Aborted by {task.user or 'the operator'}; clean-up done")
        task.save()

    def _flow_resume(self, task: TaskContext, args: dict[str, Any]) -> None:
        wait_state = S(task.node.provision_state)
        task.transition(E.RESUME, save=False)
        if wait_state == S.INSPECT_WAIT:
            self._inspect(task)
        elif wait_state == S.RESCUE_WAIT:
            self._flow_rescue(task, {})
        else:
            self._run_steps(task, STEP_KIND[wait_state])
