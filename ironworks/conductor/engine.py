"""The steps engine and the helpers every flow shares (fail, power, caches).

``FlowEngine`` runs a node's planned steps in order, records each step's start and end (outcome,
duration, error) in the timeline, moves the node to its wait or hold state when a step asks, and
finishes the flow when the plan is done. ``FlowRunner`` (``flows.py``) builds on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from ironworks import states
from ironworks.conductor import steps as stepslib
from ironworks.conductor.task import TaskContext
from ironworks.config import Config
from ironworks.db.engine import Database
from ironworks.db.models import BiosSetting, FirmwareComponent, Node
from ironworks.drivers.base import (
    BiosInterface,
    BootInterface,
    DeployInterface,
    FirmwareInterface,
    PortView,
    PowerInterface,
    PowerState,
)
from ironworks.drivers.registry import DriverFactory
from ironworks.drivers.steps import Done, Failed, Hold, Outcome, Wait
from ironworks.errors import IronworksError

LOG = logging.getLogger(__name__)
S, E = states.State, states.Event

#: seconds between checks of a flow paused because its node is in maintenance
MAINTENANCE_RECHECK_S = 30.0
#: Flow kind of a state in which steps run.
STEP_KIND = {
    S.CLEANING: "clean",
    S.CLEAN_WAIT: "clean",
    S.DEPLOYING: "deploy",
    S.DEPLOY_WAIT: "deploy",
    S.SERVICING: "service",
    S.SERVICE_WAIT: "service",
}


def describe_error(exc: BaseException) -> str:
    """A message for ``last_error``: ours as written, anything else named with its type."""
    if isinstance(exc, IronworksError):
        return exc.message
    return f"Unexpected {type(exc).__name__}: {exc}"


class FlowEngine:
    """Shared machinery of flows. ``schedule(node_id, delay, user)`` queues a ``resume`` timer."""

    def __init__(
        self,
        config: Config,
        db: Database,
        drivers: DriverFactory,
        *,
        hostname: str,
        schedule: Callable[[int, float, str | None], None],
    ) -> None:
        self.config = config
        self.db = db
        self.drivers = drivers
        self.hostname = hostname
        self.schedule = schedule

    def task(
        self, node_id: int, user: str | None = None, *, preloaded: tuple[Node, list[PortView]] | None = None
    ) -> TaskContext:
        """Load a node for a unit of work (``preloaded``: a row and ports already read)."""
        return TaskContext(self.db, self.drivers, node_id, conductor=self.hostname, user=user, preloaded=preloaded)

    # ---- helpers -----------------------------------------------------------------------
    def fail(self, task: TaskContext, error: str) -> None:
        """Move the node along its ``fail`` edge with ``error`` as ``last_error``."""
        state = S(task.node.provision_state)
        if (state, E.FAIL) not in states.TRANSITIONS:
            task.set(last_error=error)
            task.save()
            return
        kind = STEP_KIND.get(state)
        if kind:
            task.set(**{f"{kind}_step": None})
        task.node.driver_internal_info.pop("abort_after", None)
        new = task.transition(E.FAIL, error=error, save=False)
        if new == S.CLEAN_FAILED:
            # like Ironic: a node that failed cleaning is not handed out until an operator looks
            task.set(maintenance=True, fault="clean failure", maintenance_reason=error)
        self.clean_up_after_failure(task)
        task.save()

    def clean_up_after_failure(self, task: TaskContext) -> None:
        """Take down what the failed flow booted (the deploy interface knows what that is); never raises."""
        deploy = task.driver["deploy"]
        assert isinstance(deploy, DeployInterface)
        try:
            deploy.clean_up_after_failure(task)
        except Exception as exc:  # the node is failed already; its original error is what matters
            task.event("cleanup", f"Clean-up after the failure failed: {describe_error(exc)}", severity="WARNING")

    def _power_iface(self, task: TaskContext) -> PowerInterface:
        iface = task.driver["power"]
        assert isinstance(iface, PowerInterface)
        return iface

    def _set_power(self, task: TaskContext, target: str, timeout: float | None = None) -> str:
        power = self._power_iface(task)
        timeout = timeout or self.config.conductor.power_state_change_timeout
        if target == PowerState.REBOOT:  # a soft reboot is the interface's set_power_state
            power.reboot(task, timeout=timeout)
        else:
            power.set_power_state(task, target, timeout=timeout)
        new = power.get_power_state(task)
        task.node.power_state = new
        task.set(power_state=new, target_power_state=None)
        return new

    def refresh_caches(self, task: TaskContext) -> None:
        """Store the BIOS settings and firmware components the driver reports.

        The flow's work is done by then: a BMC that stops answering here is a warning in the
        timeline, not a failed clean or inspection.
        """
        try:
            self._refresh_caches(task)
        except Exception as exc:
            LOG.warning("node %s: could not refresh BIOS/firmware caches: %s", task.node.uuid, exc)
            task.event("cache", f"Could not refresh BIOS/firmware caches: {describe_error(exc)}", severity="WARNING")

    def _refresh_caches(self, task: TaskContext) -> None:
        bios, fw = task.driver.interfaces.get("bios"), task.driver.interfaces.get("firmware")
        settings = bios.cache_bios_settings(task) if isinstance(bios, BiosInterface) else []
        comps = fw.cache_firmware_components(task) if isinstance(fw, FirmwareInterface) else []
        if not settings and not comps:
            return
        with self.db.write() as s:
            existing = {
                b.name: b for b in s.execute(select(BiosSetting).where(BiosSetting.node_id == task.node.id)).scalars()
            }
            for item in settings:
                row = existing.get(item["name"])
                if row is None:
                    s.add(BiosSetting(node_id=task.node.id, **item))
                else:
                    for k, v in item.items():
                        setattr(row, k, v)
            known = {
                c.component: c
                for c in s.execute(select(FirmwareComponent).where(FirmwareComponent.node_id == task.node.id)).scalars()
            }
            for item in comps:
                row2 = known.get(item["component"])
                if row2 is None:
                    s.add(
                        FirmwareComponent(
                            node_id=task.node.id,
                            component=item["component"],
                            initial_version=item.get("current_version"),
                            current_version=item.get("current_version"),
                        )
                    )
                elif row2.current_version != item.get("current_version"):
                    row2.last_version_flashed = item.get("current_version")
                    row2.current_version = item.get("current_version")

    # ---- the steps engine ----------------------------------------------------------------
    def _begin_steps(self, task: TaskContext, kind: str, plan: list[dict[str, Any]]) -> None:
        info = task.node.driver_internal_info
        info[f"{kind}_steps"] = plan
        info[f"{kind}_step_index"] = 0
        for key in ("abort_after", "wait_until", "held", "step_started_at"):
            info.pop(key, None)

    def _call_step(self, task: TaskContext, step: dict[str, Any]) -> Outcome:
        name, iface, args = step["step"], step["interface"], step.get("args") or {}
        info = task.node.driver_internal_info
        if name == "wait" and name in stepslib.RESERVED:
            until = info.get("wait_until")
            if until is None:
                seconds = float(args.get("seconds", 0))
                info["wait_until"] = time.time() + seconds
                return Wait(poll_after=seconds, reason=f"wait step: {seconds:g}s") if seconds else Done()
            if time.time() >= until:
                info.pop("wait_until", None)
                return Done()
            return Wait(poll_after=max(0.0, until - time.time()))
        if name == "hold":
            if info.pop("held", False):
                return Done()
            info["held"] = True
            return Hold("hold step")
        if iface == "power" and name in ("power_on", "power_off", "reboot"):
            target = {"power_on": PowerState.ON, "power_off": PowerState.OFF, "reboot": PowerState.REBOOT}[name]
            self._set_power(task, target)
            return Done()
        impl = task.driver.interfaces[iface]
        kind = STEP_KIND[S(task.node.provision_state)]
        if not stepslib.is_static(task.driver, kind, iface, name):
            # a step the agent reports (a vendor hardware manager's): the API let it through for an
            # interface that runs such steps, and replan() checked it against the agent's list
            run_reported = getattr(impl, "run_reported_step", None)
            if run_reported is None:
                return Failed("unknown_step", f"The {iface} interface has no {kind} step {name}.")
            outcome: Outcome = run_reported(task, kind, name, args)
            return outcome
        result = getattr(impl, name)(task, **args)
        return Done() if result is None else result

    def _agent_replan(self, task: TaskContext, kind: str, plan: list[dict[str, Any]], index: int) -> str | None:
        """Once the agent is up, take in the steps it reports; an error message when the plan is refused."""
        refresh = getattr(task.driver.interfaces.get("deploy"), "refresh_steps", None)
        if refresh is None:
            return None
        try:
            reported = refresh(task, kind)
        except IronworksError as exc:
            return f"Could not list the agent's {kind} steps: {exc.message}"
        if reported is None:  # not up yet, or already asked during this boot of the agent
            return None
        automated = kind == "deploy" or (kind == "clean" and task.target != S.MANAGEABLE.value)
        # the operator's choice of a full erase wins over the agent's priority for it, as Ironic's
        # [deploy]erase_devices_priority does
        overrides = {"erase_devices": 10 if self.config.conductor.automated_clean_full_erase else 0}
        try:
            new = stepslib.replan(task.driver, kind, plan, index, reported, automated=automated, overrides=overrides)
        except stepslib.StepsRejected as exc:
            return exc.message
        if new != plan:
            task.node.driver_internal_info[f"{kind}_steps"] = new
            plan[:] = new
        return None

    def _run_steps(self, task: TaskContext, kind: str) -> None:
        info = task.node.driver_internal_info
        plan: list[dict[str, Any]] = info.get(f"{kind}_steps") or []
        index = int(info.get(f"{kind}_step_index", 0))
        if info.get("maintenance_paused") and not task.db_node.maintenance:
            info.pop("maintenance_paused")
            task.event("maintenance", f"{kind.capitalize()} resumed: maintenance was unset", kind=kind)
        while index < len(plan):
            if task.db_node.maintenance:
                self._pause_for_maintenance(task, kind)
                return
            refused = self._agent_replan(task, kind, plan, index)
            if refused is not None:
                task.set(**{f"{kind}_step": None})
                info.pop("step_started_at", None)
                self.fail(task, f"{kind.capitalize()} failed: {refused}")
                return
            step = plan[index]
            label = f"{step['interface']}.{step['step']}"
            if "step_started_at" not in info:
                info["step_started_at"] = time.time()
                task.set(**{f"{kind}_step": {k: step[k] for k in ("interface", "step", "args", "priority")}})
                task.event(
                    "step.start",
                    f"Started {kind} step {label}",
                    kind=kind,
                    step=label,
                    args=task.masked(step.get("args")),
                )
                task.save()
            try:
                outcome = self._call_step(task, step)
            except Exception as exc:
                outcome = Failed("exception", describe_error(exc))
            if isinstance(outcome, Wait):
                self._wait(task, outcome)
                return
            if isinstance(outcome, Hold):
                task.event(
                    "step.hold",
                    f"{kind} step {label} holds the node: {outcome.reason}",
                    kind=kind,
                    step=label,
                )
                task.transition(E.HOLD)
                return
            duration = round(time.time() - float(info.pop("step_started_at", time.time())), 3)
            info.pop("progress", None)
            if isinstance(outcome, Failed):
                msg = f"{kind.capitalize()} step {label} failed: {outcome.message}"
                task.event(
                    "step.end",
                    msg,
                    severity="ERROR",
                    kind=kind,
                    step=label,
                    outcome="failed",
                    reason=outcome.reason,
                    duration_s=duration,
                )
                self.fail(task, msg)
                return
            task.event(
                "step.end",
                f"Finished {kind} step {label} in {duration:g}s",
                kind=kind,
                step=label,
                outcome="done",
                duration_s=duration,
            )
            index += 1
            info[f"{kind}_step_index"] = index
            if info.pop("abort_after", False):
                self._abort_after(task, kind, label)
                return
        self._finish_steps(task, kind)

    def _pause_for_maintenance(self, task: TaskContext, kind: str) -> None:
        """A node put into maintenance mid-flow waits, as in Ironic: no step runs until it is unset.

        A heartbeat or a poll after maintenance is unset carries the flow on from the same step.
        """
        info = task.node.driver_internal_info
        if not info.get("maintenance_paused"):
            info["maintenance_paused"] = True
            reason = task.db_node.maintenance_reason or "no reason given"
            task.event(
                "maintenance",
                f"{kind.capitalize()} paused: the node is in maintenance ({reason}); it carries on from the same "
                "step once maintenance is unset",
                severity="WARNING",
                kind=kind,
            )
        self._wait(task, Wait(MAINTENANCE_RECHECK_S, reason="node in maintenance"))

    def _abort_after(self, task: TaskContext, kind: str, label: str) -> None:
        task.set(**{f"{kind}_step": None})
        msg = f"{kind.capitalize()} aborted by the operator after step {label} finished."
        state = S(task.node.provision_state)
        if (state, E.FAIL) in states.TRANSITIONS:
            task.transition(E.FAIL, error=msg)
        else:
            task.set(last_error=msg)
            task.save()

    def _finish_steps(self, task: TaskContext, kind: str) -> None:
        info = task.node.driver_internal_info
        for key in (f"{kind}_steps", f"{kind}_step_index"):
            info.pop(key, None)
        task.set(**{f"{kind}_step": None})
        if kind == "clean":
            event = E.MANAGE if task.target == S.MANAGEABLE.value else E.DONE
            if task.db_node.fault == "clean failure":
                task.set(maintenance=False, fault=None, maintenance_reason=None)
        else:
            event = E.DONE
        if kind == "deploy":
            boot = task.driver["boot"]
            assert isinstance(boot, BootInterface)
            boot.prepare_instance(task)
        if kind in ("clean", "service"):
            deploy = task.driver["deploy"]
            assert isinstance(deploy, DeployInterface)
            (deploy.tear_down_cleaning if kind == "clean" else deploy.tear_down_service)(task)
            self.refresh_caches(task)
        task.transition(event)

    def _wait(self, task: TaskContext, outcome: Wait) -> None:
        state = S(task.node.provision_state)
        if state in states.ACTIVE_FLOW_STATES:
            task.transition(E.WAIT)
        else:
            task.save()
        if outcome.poll_after is not None:
            self.schedule(task.node.id, outcome.poll_after, task.user)
