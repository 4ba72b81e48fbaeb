"""A node's sub-resources that need no conductor: states, maintenance, history, BIOS, firmware."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from starlette.responses import Response

from ironworks.api import versions
from ironworks.api.app import base_url, ctx_of, json_response, user_of, version_of
from ironworks.api.nodes import MAX_LIMIT, find_node, render_ctx
from ironworks.api.serialize import NODE_STATES_FIELDS, event_to_dict, iso, node_to_dict
from ironworks.conductor import queue
from ironworks.db.models import BiosSetting, FirmwareComponent, NodeEvent
from ironworks.errors import InvalidInput, NotFound

router = APIRouter()


@router.get("/v1/nodes/{ident}/states", summary="A node's power and provision states")
def get_states(request: Request, ident: str) -> Response:
    """Power, provision and RAID states."""
    ctx = ctx_of(request)
    with ctx.db.read() as s:
        node = find_node(s, ident)
    rc = render_ctx(request, ctx)
    data = node_to_dict(node, versions.node_fields_for(rc.version, NODE_STATES_FIELDS), rc)
    data.pop("links", None)
    return json_response(data)


class MaintenanceBody(BaseModel):
    """Body of ``PUT /v1/nodes/{id}/maintenance``."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = None


@router.put("/v1/nodes/{ident}/maintenance", status_code=202, summary="Set maintenance")
def set_maintenance(request: Request, ident: str, body: MaintenanceBody | None = None) -> Response:
    """Take the node out of service (a flag, not a state)."""
    return _maintenance(request, ident, True, body.reason if body else None)


@router.delete("/v1/nodes/{ident}/maintenance", status_code=202, summary="Unset maintenance")
def unset_maintenance(request: Request, ident: str) -> Response:
    """Put the node back in service; clears the reason and the fault."""
    return _maintenance(request, ident, False, None)


def _maintenance(request: Request, ident: str, on: bool, reason: str | None) -> Response:
    ctx = ctx_of(request)
    with ctx.db.write() as s:
        node = find_node(s, ident)
        node.maintenance = on
        node.maintenance_reason = reason if on else None
        if not on:
            node.fault = None
        msg = f"Maintenance set: {reason or 'no reason given'}" if on else "Maintenance unset"
        s.add(NodeEvent(node_id=node.id, event_type="maintenance", event=msg, user=user_of(request)))
        # a flow paused for maintenance carries on now, not at its next periodic re-check
        resume = not on and bool((node.driver_internal_info or {}).get("maintenance_paused"))
        if resume:
            queue.enqueue(ctx.db, s, node_id=node.id, kind="provision", name="resume", user=user_of(request))
    if resume:
        ctx.db.wake()
    return Response(status_code=202)


@router.get("/v1/nodes/{ident}/history", summary="The node's timeline")
def get_history(
    request: Request, ident: str, limit: int | None = None, marker: str | None = None, detail: bool = False
) -> Response:
    """Timeline entries, oldest first: transitions, steps (with timings), power, maintenance."""
    ctx = ctx_of(request)
    if version_of(request) < versions.FEATURES["history"]:
        raise NotFound("Node history needs API version 1.78 or newer.")
    with ctx.db.read() as s:
        node = find_node(s, ident)
        stmt = select(NodeEvent).where(NodeEvent.node_id == node.id)
        if marker:
            mid = s.execute(select(NodeEvent.id).where(NodeEvent.uuid == marker)).scalar_one_or_none()
            if mid is None:
                raise InvalidInput(f"Marker {marker} is not an event of node {node.uuid}.")
            stmt = stmt.where(NodeEvent.id > mid)
        rows = s.execute(stmt.order_by(NodeEvent.id).limit(min(limit or MAX_LIMIT, MAX_LIMIT))).scalars().all()
    return json_response({"history": [event_to_dict(r) for r in rows]})


@router.get("/v1/nodes/{ident}/history/{event_uuid}", summary="One timeline entry")
def get_history_event(request: Request, ident: str, event_uuid: str) -> Response:
    """One entry of the timeline."""
    ctx = ctx_of(request)
    with ctx.db.read() as s:
        node = find_node(s, ident)
        row = s.execute(
            select(NodeEvent).where(NodeEvent.node_id == node.id, NodeEvent.uuid == event_uuid)
        ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"Event {event_uuid} of node {ident} could not be found.")
    return json_response(event_to_dict(row))


@router.get("/v1/nodes/{ident}/bios", summary="Cached BIOS settings")
def get_bios(request: Request, ident: str) -> Response:
    """BIOS settings as last read from the BMC."""
    ctx = ctx_of(request)
    base = base_url(request, ctx.config)
    with ctx.db.read() as s:
        node = find_node(s, ident)
        rows = s.execute(select(BiosSetting).where(BiosSetting.node_id == node.id).order_by(BiosSetting.name)).scalars()
        out = [_bios(r, node.uuid, base) for r in rows]
    return json_response({"bios": out})


@router.get("/v1/nodes/{ident}/bios/{name}", summary="One cached BIOS setting")
def get_bios_setting(request: Request, ident: str, name: str) -> Response:
    """One BIOS setting."""
    ctx = ctx_of(request)
    with ctx.db.read() as s:
        node = find_node(s, ident)
        row = s.execute(
            select(BiosSetting).where(BiosSetting.node_id == node.id, BiosSetting.name == name)
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"BIOS setting {name} of node {ident} could not be found.")
        return json_response({name: _bios(row, node.uuid, base_url(request, ctx.config))})


def _bios(r: BiosSetting, node_uuid: str, base: str) -> dict[str, Any]:
    return {
        "name": r.name,
        "value": r.value,
        "attribute_type": r.attribute_type,
        "allowable_values": r.allowable_values,
        "lower_bound": r.lower_bound,
        "upper_bound": r.upper_bound,
        "min_length": r.min_length,
        "max_length": r.max_length,
        "read_only": r.read_only,
        "reset_required": r.reset_required,
        "unique": r.unique,
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
        "links": [{"href": f"{base}/v1/nodes/{node_uuid}/bios/{r.name}", "rel": "self"}],
    }


@router.get("/v1/nodes/{ident}/firmware", summary="Firmware components")
def get_firmware(request: Request, ident: str) -> Response:
    """Firmware components with initial, current and last flashed versions."""
    ctx = ctx_of(request)
    if version_of(request) < versions.FEATURES["firmware"]:
        raise NotFound("Firmware components need API version 1.86 or newer.")
    with ctx.db.read() as s:
        node = find_node(s, ident)
        rows = s.execute(
            select(FirmwareComponent).where(FirmwareComponent.node_id == node.id).order_by(FirmwareComponent.component)
        ).scalars()
        out = [
            {
                "component": r.component,
                "initial_version": r.initial_version,
                "current_version": r.current_version,
                "last_version_flashed": r.last_version_flashed,
                "created_at": iso(r.created_at),
                "updated_at": iso(r.updated_at),
            }
            for r in rows
        ]
    return json_response({"firmware": out})
