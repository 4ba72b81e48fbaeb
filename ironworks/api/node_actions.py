"""Requests that make a conductor act: provision and power changes, boot device, validation.

Each checks the request and the node, then records the intent as an action row in the same
transaction as the state change, wakes the conductors and answers 202 with a ``Location``. Boot
device reads and writes are answered synchronously: the API waits (bounded) for the conductor.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from starlette.responses import Response

from ironworks import states
from ironworks.api import versions
from ironworks.api.app import ApiContext, base_url, ctx_of, json_response, user_of, version_of
from ironworks.api.nodes import find_node
from ironworks.conductor import queue
from ironworks.conductor import steps as stepslib
from ironworks.conductor.task import TaskContext
from ironworks.db.engine import DatabaseUnavailable
from ironworks.db.models import Action, Node, NodeEvent, Port, utcnow
from ironworks.drivers.base import BootDevice, BootInterface, PortView, PowerState, ValidationError
from ironworks.errors import (
    Conflict,
    DriverError,
    InvalidInput,
    InvalidTransition,
    IronworksError,
    NodeLocked,
    error_class_for,
)
from ironworks.images import configdrive

router = APIRouter()
S, E = states.State, states.Event
#: Verbs refused while the node is in maintenance (flows that would use the hardware).
MAINTENANCE_BLOCKED = frozenset({E.DEPLOY, E.REBUILD, E.RESCUE, E.INSPECT, E.CLEAN, E.SERVICE, E.PROVIDE})
MAX_CONFIGDRIVE = 64 << 20


class ProvisionBody(BaseModel):
    """Body of ``PUT /v1/nodes/{id}/states/provision``."""

    model_config = ConfigDict(extra="forbid")
    target: str
    configdrive: str | dict[str, Any] | None = None
    clean_steps: list[dict[str, Any]] | None = None
    deploy_steps: list[dict[str, Any]] | None = None
    service_steps: list[dict[str, Any]] | None = None
    rescue_password: str | None = None
    disable_ramdisk: bool | None = None
    runbook: str | None = None


def _location(request: Request, ctx: ApiContext, node_uuid: str) -> dict[str, str]:
    return {"Location": f"{base_url(request, ctx.config)}/v1/nodes/{node_uuid}/states"}


@router.put("/v1/nodes/{ident}/states/provision", status_code=202, summary="Change the provision state")
def set_provision_state(request: Request, ident: str, body: ProvisionBody) -> Response:
    """Start a provision flow (``manage``, ``provide``, ``active``, ``deleted``, ``clean`` ...)."""
    ctx = ctx_of(request)
    version = version_of(request)
    try:
        event = states.verb_to_event(body.target)
    except KeyError:
        raise InvalidInput(
            f"Invalid provision target {body.target!r}; valid targets: {', '.join(sorted(states.VERBS))}."
        ) from None
    _check_version(event, version)
    if isinstance(body.configdrive, dict) and version < versions.FEATURES["configdrive_dict"]:
        raise InvalidInput(
            f"A configdrive given as an object needs API version {versions.fmt(versions.FEATURES['configdrive_dict'])}"
            " or newer; send X-OpenStack-Ironic-API-Version, or pass a base64-encoded gzipped config-2 image."
        )
    args = _provision_args(event, body)
    if event == E.DEPLOY:
        _precheck_deploy(request, ident)
    with ctx.db.write() as s:
        node = find_node(s, ident)
        if node.reservation:
            raise NodeLocked(node.uuid, node.reservation)
        if node.maintenance and event in MAINTENANCE_BLOCKED:
            raise InvalidInput(
                f"Node {node.uuid} is in maintenance ({node.maintenance_reason or 'no reason given'}); "
                f"unset maintenance before '{body.target}'."
            )
        current = S(node.provision_state)
        if event == E.ABORT and _abort_deferred(node, current):
            node_info = dict(node.driver_internal_info or {})
            node_info["abort_after"] = True
            node.driver_internal_info = node_info
            node_uuid = node.uuid
            s.add(
                NodeEvent(
                    node_id=node.id,
                    event_type="provision",
                    user=user_of(request),
                    event="Abort requested: the current step cannot be interrupted, the flow stops when it finishes",
                )
            )
            return Response(status_code=202, headers=_location(request, ctx, node_uuid))
        try:
            tr = states.advance(
                current, event, target=S(node.target_provision_state) if node.target_provision_state else None
            )
        except states.InvalidTransitionError as exc:
            raise InvalidTransition(
                f'The requested action "{body.target}" can not be performed on node "{node.uuid}" while it is in '
                f'state "{current.value}". {str(exc).split(". ", 1)[-1]}'
            ) from None
        if event in (E.CLEAN, E.SERVICE, E.DEPLOY, E.REBUILD):
            driver = ctx.drivers.driver_for(node.driver, _requested_interfaces(node))
            kind = {E.CLEAN: "clean", E.SERVICE: "service"}.get(event, "deploy")
            steps_arg = args.get(f"{kind}_steps")
            if steps_arg is not None:
                args[f"{kind}_steps"] = stepslib.validate_requested(
                    driver,
                    kind,
                    steps_arg,
                    with_priority=kind == "deploy",
                    reported=stepslib.cached_agent_steps(node.driver_internal_info or {}, kind),
                )
            if kind == "deploy":
                _validate_before_deploy(ctx, s, node)
        if event == E.RESCUE:
            info = dict(ctx.db.secrets.reveal(node.instance_info))
            info["rescue_password"] = args.pop("rescue_password")
            node.instance_info = ctx.db.secrets.seal(info)
        if isinstance(args.get("configdrive"), dict):  # refused now, not when the agent is about to write it
            configdrive.validate(args["configdrive"], node_uuid=node.uuid, node_name=node.name)
            # kept as one JSON string: sealing encrypts a secret key's string whole but walks into a dict,
            # which would leave user_data (often holding passwords) in clear at rest
            args["configdrive"] = json.dumps(args["configdrive"])
        if "configdrive" in args:
            info = dict(node.instance_info or {})
            info["configdrive"] = args.pop("configdrive")
            node.instance_info = ctx.db.secrets.seal(info)
        node.provision_state = tr.state.value
        node.target_provision_state = tr.target.value if tr.target else None
        node.provision_updated_at = utcnow()
        if event != E.ABORT:
            node.last_error = None
        s.add(
            NodeEvent(
                node_id=node.id,
                event_type="provision",
                user=user_of(request),
                event=f"Provision state {current.value} -> {tr.state.value} ({body.target} requested)",
                data={"from": current.value, "to": tr.state.value, "target": body.target},
            )
        )
        name = _action_name(event, current, tr.state)
        if name is not None:
            queue.enqueue(
                ctx.db,
                s,
                node_id=node.id,
                kind="provision",
                name=name,
                args=args,
                user=user_of(request),
                request_id=request.headers.get("x-openstack-request-id"),
            )
        node_uuid = node.uuid
    ctx.db.wake()
    return Response(status_code=202, headers=_location(request, ctx, node_uuid))


def _precheck_deploy(request: Request, ident: str) -> None:
    """Checks of a deploy that need the BMC or an image server (a ramdisk deploy's ``boot_iso``: it
    downloads, matches its checksum, is an ISO with a boot config, fits the disk budget), run by a
    conductor while this request waits: a refusal is a 400 and the node has not moved. Only boot
    interfaces that ask for it (``needs_precheck``) cost the round trip."""
    ctx = ctx_of(request)
    with ctx.db.read() as s:
        node = find_node(s, ident)
        if node.reservation or (node.maintenance and E.DEPLOY in MAINTENANCE_BLOCKED):
            return  # refused below with the usual message
        try:
            states.advance(S(node.provision_state), E.DEPLOY)
            boot = ctx.drivers.driver_for(node.driver, _requested_interfaces(node)).interfaces.get("boot")
            if not isinstance(boot, BootInterface) or type(boot).needs_precheck is BootInterface.needs_precheck:
                return  # this boot interface never asks (the common case: no task built)
            rows = s.execute(select(Port).where(Port.node_id == node.id).order_by(Port.id)).scalars().all()
            ports = [PortView(p.uuid, p.address, p.pxe_enabled) for p in rows]
            task = TaskContext(ctx.db, ctx.drivers, node.id, conductor="api", preloaded=(node, ports))
            if not boot.needs_precheck(task):
                return
        except (states.InvalidTransitionError, IronworksError):
            return  # an invalid request: the checks below say what is wrong
        uuid = node.uuid
    try:
        _, error = _queue_and_wait(request, ident, "precheck_deploy")
    except DatabaseUnavailable:
        raise Conflict(
            f"Node {uuid}: checking its boot ISO took longer than [api] sync_timeout "
            f"({ctx.config.api.sync_timeout:g} s), probably a large download; it goes on into the image cache. "
            "Request the deploy again in a moment: nothing has changed on the node."
        ) from None
    if error is not None:
        raise InvalidInput(f"The deploy of node {uuid} was refused before anything changed: {error}")


def _validate_before_deploy(ctx: ApiContext, s: Any, node: Node) -> None:
    """Validate the interfaces that ask for it (``validate_before_deploy``): a refusal changes nothing."""
    rows = s.execute(select(Port).where(Port.node_id == node.id).order_by(Port.id)).scalars().all()
    ports = [PortView(p.uuid, p.address, p.pxe_enabled) for p in rows]
    task = TaskContext(ctx.db, ctx.drivers, node.id, conductor="api", preloaded=(node, ports))
    for iface in task.driver.interfaces.values():
        if iface.validate_before_deploy:
            iface.validate(task)


def _requested_interfaces(node: Node) -> dict[str, str | None]:
    return {
        k: getattr(node, f"{k}_interface")
        for k in (
            "power",
            "management",
            "boot",
            "deploy",
            "inspect",
            "firmware",
            "bios",
            "raid",
            "console",
            "rescue",
        )
    }


def _check_version(event: states.Event, version: tuple[int, int]) -> None:
    needs = {E.CLEAN: "manual_clean", E.RESCUE: "rescue", E.UNRESCUE: "rescue", E.SERVICE: "service"}
    feature = needs.get(event)
    if feature and version < versions.FEATURES[feature]:
        raise InvalidInput(
            f"'{event.value}' needs API version {versions.fmt(versions.FEATURES[feature])} or newer; "
            "send X-OpenStack-Ironic-API-Version."
        )


def _provision_args(event: states.Event, body: ProvisionBody) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if body.configdrive is not None:
        if event not in (E.DEPLOY, E.REBUILD):
            raise InvalidInput("configdrive can only be given with target 'active' or 'rebuild'.")
        size = len(body.configdrive) if isinstance(body.configdrive, str) else len(json.dumps(body.configdrive))
        if size > MAX_CONFIGDRIVE:
            raise InvalidInput(f"configdrive is {size} bytes; at most {MAX_CONFIGDRIVE} bytes are accepted.")
        args["configdrive"] = body.configdrive
    for kind, ev in (("clean", E.CLEAN), ("service", E.SERVICE)):
        value = getattr(body, f"{kind}_steps")
        if ev == event and value is None:
            raise InvalidInput(f"'{kind}_steps' is required when target is '{ev.value}'.")
        if value is not None and ev != event:
            raise InvalidInput(f"'{kind}_steps' is only accepted with target '{ev.value}'.")
        if value is not None:
            args[f"{kind}_steps"] = value
    if body.deploy_steps is not None:
        if event not in (E.DEPLOY, E.REBUILD):
            raise InvalidInput("'deploy_steps' is only accepted with target 'active' or 'rebuild'.")
        args["deploy_steps"] = body.deploy_steps
    if event == E.RESCUE:
        if not body.rescue_password or not body.rescue_password.strip():
            raise InvalidInput("A non-empty 'rescue_password' is required to rescue a node.")
        args["rescue_password"] = body.rescue_password
    elif body.rescue_password is not None:
        raise InvalidInput("'rescue_password' is only accepted with target 'rescue'.")
    return args


def _abort_deferred(node: Node, current: states.State) -> bool:
    """Whether an abort must wait for the current step: a step that cannot be interrupted finishes
    first, and the flow then fails as aborted (the conductor checks ``abort_after``)."""
    step = node.clean_step or node.service_step or node.deploy_step
    if current not in states.WAIT_STATES or not step:
        return False
    kind = {S.CLEAN_WAIT: "clean", S.SERVICE_WAIT: "service", S.DEPLOY_WAIT: "deploy"}.get(current)
    plan = (node.driver_internal_info or {}).get(f"{kind}_steps") or []
    match = next(
        (p for p in plan if p.get("step") == step.get("step") and p.get("interface") == step.get("interface")),
        None,
    )
    return bool(match is not None and match.get("abortable") is False)


def _action_name(event: states.Event, old: states.State, new: states.State) -> str | None:
    """Which conductor action carries the flow on (None when the transition is all there is)."""
    if event == E.ABORT:
        return "abort" if (new in states.FAILURE_STATES or new == S.ACTIVE) else None
    if event == E.UNHOLD:
        return "resume"
    if new in states.ACTIVE_FLOW_STATES:
        return {
            E.MANAGE: "manage",
            E.PROVIDE: "provide",
            E.CLEAN: "clean",
            E.INSPECT: "inspect",
            E.DEPLOY: "deploy",
            E.REBUILD: "rebuild",
            E.DELETE: "delete",
            E.RESCUE: "rescue",
            E.UNRESCUE: "unrescue",
            E.ADOPT: "adopt",
            E.SERVICE: "service",
        }[event]
    return None


class PowerBody(BaseModel):
    """Body of ``PUT /v1/nodes/{id}/states/power``."""

    model_config = ConfigDict(extra="forbid")
    target: str
    timeout: int | None = None


@router.put("/v1/nodes/{ident}/states/power", status_code=202, summary="Change the power state")
def set_power_state(request: Request, ident: str, body: PowerBody) -> Response:
    """Power on/off/reboot (soft variants too), optionally with a ``timeout`` in seconds."""
    ctx = ctx_of(request)
    if body.target not in PowerState.TARGETS:
        raise InvalidInput(f"Invalid power target {body.target!r}; valid: {', '.join(sorted(PowerState.TARGETS))}.")
    if body.timeout is not None:
        if version_of(request) < versions.FEATURES["power_timeout"]:
            raise InvalidInput("The power 'timeout' needs API version 1.27 or newer.")
        if body.timeout < 1:
            raise InvalidInput(f"timeout must be a positive number of seconds, not {body.timeout}.")
    with ctx.db.write() as s:
        node = find_node(s, ident)
        if node.reservation:
            raise NodeLocked(node.uuid, node.reservation)
        if node.target_power_state:
            raise Conflict(
                f"Node {node.uuid} is already changing its power state to {node.target_power_state}; "
                "retry when it is done."
            )
        node.target_power_state = {
            PowerState.REBOOT: PowerState.ON,
            PowerState.SOFT_REBOOT: PowerState.ON,
            PowerState.SOFT_OFF: PowerState.OFF,
        }.get(body.target, body.target)
        queue.enqueue(
            ctx.db,
            s,
            node_id=node.id,
            kind="power",
            name=body.target,
            args={"timeout": body.timeout} if body.timeout else None,
            user=user_of(request),
        )
        node_uuid = node.uuid
    ctx.db.wake()
    return Response(status_code=202, headers=_location(request, ctx, node_uuid))


@router.get("/v1/nodes/{ident}/validate", summary="Validate each interface's configuration")
def validate_node(request: Request, ident: str) -> Response:
    """Per interface: ``{"result": bool, "reason": str|null}``; never touches the hardware."""
    ctx = ctx_of(request)
    with ctx.db.read() as s:
        node_id = find_node(s, ident).id
    task = TaskContext(ctx.db, ctx.drivers, node_id, conductor="api")
    out: dict[str, Any] = {}
    for kind, iface in task.driver.interfaces.items():
        try:
            iface.validate(task)
            out[kind] = {"result": True, "reason": None}
        except ValidationError as exc:
            out[kind] = {"result": False, "reason": str(exc)}
        except Exception as exc:
            out[kind] = {"result": False, "reason": f"{type(exc).__name__}: {exc}"}
    for kind in ("network", "storage"):
        out[kind] = {"result": True, "reason": None}
    return json_response(dict(sorted(out.items())))


class BootDeviceBody(BaseModel):
    """Body of ``PUT /v1/nodes/{id}/management/boot_device``."""

    model_config = ConfigDict(extra="forbid")
    boot_device: str
    persistent: bool = False


def run_sync(request: Request, ident: str, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Queue a management action and wait (bounded) for a conductor's answer."""
    result, error = _queue_and_wait(request, ident, name, args)
    if error is not None:
        # keep the error's kind across the queue, so an unreachable BMC is a 502, not a 500
        cls = error_class_for(str(result.get("reason", ""))) if result.get("error") else DriverError
        if cls is NodeLocked or not issubclass(cls, DriverError):
            cls = DriverError
        raise cls(f"{name} failed: {error}")
    return result


def _queue_and_wait(
    request: Request, ident: str, name: str, args: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str | None]:
    """Queue a management action, wait (bounded) for its end: ``(result, error text or None)``."""
    ctx = ctx_of(request)
    with ctx.db.write() as s:
        node = find_node(s, ident)
        if node.reservation:
            raise NodeLocked(node.uuid, node.reservation)
        action_id = queue.enqueue(
            ctx.db, s, node_id=node.id, kind="management", name=name, args=args, user=user_of(request)
        ).id
    ctx.db.wake()
    deadline = time.monotonic() + ctx.config.api.sync_timeout
    delay = 0.005
    while time.monotonic() < deadline:
        with ctx.db.read() as s:
            row = s.execute(select(Action.status, Action.result, Action.error).where(Action.id == action_id)).first()
        if row is not None and row.status in (queue.DONE, queue.FAILED):
            result = dict(row.result or {})
            error = row.error or result.get("error")
            return result, str(error) if error else None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise DatabaseUnavailable(
        f"No conductor answered {name} within {ctx.config.api.sync_timeout:g}s; is a conductor running "
        "(`ironworks serve` or `ironworks conductor`)?"
    )


@router.put("/v1/nodes/{ident}/management/boot_device", status_code=204, summary="Set the boot device")
def set_boot_device(request: Request, ident: str, body: BootDeviceBody) -> Response:
    """Boot from ``boot_device`` next time (or always with ``persistent``)."""
    if body.boot_device not in BootDevice.ALL:
        raise InvalidInput(f"Invalid boot device {body.boot_device!r}; valid: {', '.join(sorted(BootDevice.ALL))}.")
    run_sync(request, ident, "set_boot_device", {"boot_device": body.boot_device, "persistent": body.persistent})
    return Response(status_code=204)


@router.get("/v1/nodes/{ident}/management/boot_device", summary="Get the boot device")
def get_boot_device(request: Request, ident: str) -> Response:
    """The boot device as the BMC reports it."""
    return json_response(run_sync(request, ident, "get_boot_device"))


@router.get("/v1/nodes/{ident}/management/boot_device/supported", summary="Supported boot devices")
def get_supported_boot_devices(request: Request, ident: str) -> Response:
    """The boot devices the BMC accepts."""
    return json_response(run_sync(request, ident, "get_supported_boot_devices"))
