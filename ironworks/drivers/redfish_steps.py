"""``redfish`` BIOS and firmware: interfaces whose work happens in steps.

Steps never sleep: each starts the work on the BMC, keeps its progress in
``driver_internal_info`` (``redfish_bios``, ``redfish_firmware``) and returns ``Wait``; the
conductor calls it again after ``poll_after`` seconds and it carries on from there. Progress
belongs to one run of the step with one set of arguments (``_progress``): a new run, other
arguments, or a failure start afresh, so a flow aborted or crashed mid-step never resumes stale work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ironworks.drivers.base import BiosInterface, FirmwareInterface, PowerState, Task
from ironworks.drivers.redfish import RedfishBase, RedfishPower
from ironworks.drivers.steps import Done, Failed, Outcome, Wait, step
from ironworks.errors import BmcRequestFailed, BmcUnreachable, BmcUnsupported

_SETTINGS_ARG = {"settings": {"description": "[{name, value}]", "required": True, "type": "array"}}


class RedfishBios(RedfishBase, BiosInterface):
    """BIOS attributes: read, staged in the Settings resource, applied by a reboot.

    ``apply_configuration`` and ``factory_reset`` work the way Ironic's do, in short: stage the
    change, reboot the node (power it on if it was off), then poll until the BIOS reports the
    requested values (``bios_apply_timeout``) — each call returns ``Wait`` in between.
    """

    name = "redfish"
    poll_interval = 10.0
    bios_apply_timeout = 1800.0

    def cache_bios_settings(self, task: Task) -> list[dict[str, Any]]:
        """Current attributes as ``{"name", "value"}`` (values as strings); [] when the BMC has no BIOS resource."""
        try:
            attrs = self.client.bios_attributes(self.endpoint(task))
        except BmcUnsupported:
            return []
        return [{"name": k, "value": None if v is None else _text(v)} for k, v in sorted(attrs.items())]

    @step("clean", priority=0, args=_SETTINGS_ARG)
    @step("service", priority=0, args=_SETTINGS_ARG)
    def apply_configuration(self, task: Task, settings: list[dict[str, Any]]) -> Outcome:
        """Set BIOS attributes ``[{"name": ..., "value": ...}]`` and reboot to apply them."""
        bad = [s for s in settings if not isinstance(s, dict) or not isinstance(s.get("name"), str) or "value" not in s]
        if bad or not settings:
            return Failed("invalid_settings", 'settings must be a non-empty list of {"name": ..., "value": ...}.')
        wanted = {s["name"]: s["value"] for s in settings}
        with _forget_on_error(task, "redfish_bios"):
            ep = self.endpoint(task)
            if _progress(task, "redfish_bios", {"step": "apply_configuration", "settings": wanted}) is None:
                self.client.set_bios_attributes(ep, wanted, operation="staging BIOS settings")
                return self._reboot(task, f"BIOS settings {', '.join(wanted)} staged")
            current = self.client.bios_attributes(ep)
            differ = sorted(k for k, v in wanted.items() if _text(current.get(k)).lower() != _text(v).lower())
            if not differ:
                task.node.driver_internal_info.pop("redfish_bios", None)
                return Done()
            return self._wait_or_fail(
                task,
                f"BIOS settings {', '.join(differ)} still differ after the reboot (the BMC reports "
                f"{', '.join(f'{k}={current.get(k)!r}' for k in differ)}): check the names and values against "
                f"GET /v1/nodes/{task.node.uuid}/bios and the BMC's job queue.",
            )

    @step("clean", priority=0)
    @step("service", priority=0)
    def factory_reset(self, task: Task) -> Outcome:
        """Restore the BIOS defaults and reboot to apply them."""
        with _forget_on_error(task, "redfish_bios"):
            ep = self.endpoint(task)
            if _progress(task, "redfish_bios", {"step": "factory_reset"}) is None:
                self.client.reset_bios(ep, operation="resetting the BIOS to its defaults")
                return self._reboot(task, "BIOS factory reset requested")
            if self.client.power_state(ep) == "On":
                task.node.driver_internal_info.pop("redfish_bios", None)
                return Done()
            return self._wait_or_fail(task, "the node did not power on again after the BIOS factory reset.")

    def _reboot(self, task: Task, what: str) -> Outcome:
        power = RedfishPower(self.config)
        power.client = self.client
        power.start_power_change(task, PowerState.REBOOT)
        task.node.driver_internal_info["redfish_bios"]["since"] = self.wall_clock()
        task.record(f"{what}; rebooting the node to apply them")
        return Wait(poll_after=self.poll_interval, reason="rebooting to apply BIOS settings")

    def _wait_or_fail(self, task: Task, problem: str) -> Outcome:
        since = float(task.node.driver_internal_info["redfish_bios"].get("since", 0))
        if self.wall_clock() - since < self.bios_apply_timeout:
            return Wait(poll_after=self.poll_interval, reason="waiting for the BIOS to apply the change")
        task.node.driver_internal_info.pop("redfish_bios", None)
        return Failed("bios_not_applied", f"After {self.bios_apply_timeout:g}s, {problem}")


_FIRMWARE_ARG = {
    "settings": {
        "description": "[{component, url, wait}]: flashed in order; wait = seconds to let it settle afterwards",
        "required": True,
        "type": "array",
    }
}


class RedfishFirmware(RedfishBase, FirmwareInterface):
    """Firmware inventory, and updates through UpdateService.SimpleUpdate polled by task monitor."""

    name = "redfish"
    poll_interval = 5.0
    #: seconds one component may take (the BMC may stop answering while it flashes itself)
    update_timeout = 3600.0

    def cache_firmware_components(self, task: Task) -> list[dict[str, Any]]:
        """``bios``, ``bmc`` and other inventory entries (by id) with their versions."""
        try:
            versions = self.client.firmware_versions(self.endpoint(task))
        except BmcUnsupported:
            return []
        return [{"component": c, "current_version": v} for c, v in sorted(versions.items())]

    @step("clean", priority=0, args=_FIRMWARE_ARG)
    @step("service", priority=0, args=_FIRMWARE_ARG)
    def update(self, task: Task, settings: list[dict[str, Any]]) -> Outcome:
        """Flash each ``{"component", "url", "wait"}`` in turn; not abortable (a half-flashed part is worse)."""
        problems = _firmware_problems(settings)
        if problems:
            return Failed("invalid_settings", f"Invalid firmware update settings: {'; '.join(problems)}.")
        state = _progress(task, "redfish_firmware", settings)
        if state is None:
            state = task.node.driver_internal_info["redfish_firmware"]
            state["index"] = 0
        with _forget_on_error(task, "redfish_firmware"):
            return self._continue(task, settings, state)

    def _continue(self, task: Task, settings: list[dict[str, Any]], state: dict[str, Any]) -> Outcome:
        ep = self.endpoint(task)
        while state["index"] < len(settings):
            item = settings[state["index"]]
            label = f"{item['component']} from {item['url']}"
            if "settle_until" in state:
                left = float(state["settle_until"]) - self.wall_clock()
                if left > 0:
                    return Wait(poll_after=left, reason=f"letting {item['component']} settle")
                del state["settle_until"]
                state["index"] += 1
                continue
            if "monitor" not in state:
                op = f"starting the firmware update of {label}"
                state["monitor"] = self.client.simple_update(ep, item["url"], component=item["component"], operation=op)
                state["since"] = self.wall_clock()
                task.record(f"Firmware update of {label} started (task monitor {state['monitor']})")
                task.progress(state["index"], len(settings), message=f"updating {item['component']}")
                return Wait(poll_after=self.poll_interval, reason=f"updating {item['component']}")
            try:
                status = self.client.task_status(ep, state["monitor"], operation=f"checking the update of {label}")
            except (BmcUnreachable, BmcRequestFailed) as exc:
                # a BMC flashing itself stops answering for a while; only a long silence is a failure
                if not exc.context.get("retryable") or self.wall_clock() - state["since"] > self.update_timeout:
                    raise
                return Wait(poll_after=self.poll_interval, reason=f"the BMC does not answer while updating: {exc}")
            if not status.done:
                if self.wall_clock() - state["since"] > self.update_timeout:
                    task.node.driver_internal_info.pop("redfish_firmware", None)
                    return Failed(
                        "firmware_timeout", f"The firmware update of {label} took over {self.update_timeout:g}s."
                    )
                pct = f" {status.percent}%" if status.percent is not None else ""
                return Wait(
                    poll_after=self.poll_interval, reason=f"{item['component']}: {status.state or 'running'}{pct}"
                )
            if not status.ok:
                task.node.driver_internal_info.pop("redfish_firmware", None)
                why = "; ".join(status.messages) or "the BMC gave no message"
                return Failed(
                    "firmware_update_failed",
                    f"The BMC reports the firmware update of {label} {status.state or 'failed'}: {why}",
                )
            task.record(f"Firmware update of {label} finished")
            del state["monitor"]
            wait = float(item.get("wait") or 0)
            if wait > 0:
                state["settle_until"] = self.wall_clock() + wait
                return Wait(poll_after=wait, reason=f"letting {item['component']} settle for {wait:g}s")
            state["index"] += 1
        task.node.driver_internal_info.pop("redfish_firmware", None)
        task.progress(len(settings), len(settings), message="firmware updated")
        return Done()


def _firmware_problems(settings: list[dict[str, Any]]) -> list[str]:
    if not settings:
        return ["settings is empty"]
    problems = []
    for i, item in enumerate(settings):
        if not isinstance(item, dict):
            problems.append(f"item {i} is not an object")
            continue
        if not isinstance(item.get("component"), str) or not item["component"]:
            problems.append(f"item {i} needs a component (bios, bmc, or a firmware inventory id)")
        url = item.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            problems.append(f"item {i} needs an http(s) url the BMC can download the image from")
        wait = item.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, int | float | None) or (wait or 0) < 0:
            problems.append(f"item {i} wait must be a number of seconds >= 0")
        unknown = set(item) - {"component", "url", "wait"}
        if unknown:
            problems.append(f"item {i} has unknown keys {', '.join(sorted(unknown))}")
    return problems


def _progress(task: Task, key: str, args: Any) -> dict[str, Any] | None:
    """This run's progress under ``key``; None (and a fresh record) when the step starts anew.

    A run is known by the conductor's ``step_started_at`` (kept until the step ends) and the
    step's arguments.
    """
    info = task.node.driver_internal_info
    mark = {"run": info.get("step_started_at"), "args": args}
    state = info.get(key)
    if isinstance(state, dict) and all(state.get(k) == v for k, v in mark.items()):
        return state
    info[key] = dict(mark)
    return None


@contextlib.contextmanager
def _forget_on_error(task: Task, key: str) -> Iterator[None]:
    """A step that raises has failed: drop its progress so that the next run starts afresh."""
    try:
        yield
    except Exception:
        task.node.driver_internal_info.pop(key, None)
        raise


def _text(value: Any) -> str:
    """Redfish attribute values are strings, numbers or booleans; Ironic keeps them as strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
