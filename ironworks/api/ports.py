"""``/v1/ports`` and ``/v1/nodes/{id}/ports``: a node's network interfaces by MAC address."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.responses import Response

from ironworks.api.app import base_url, ctx_of, json_response, user_of
from ironworks.api.nodes import MAX_LIMIT, find_node, is_uuid
from ironworks.api.serialize import PORT_FIELDS, PORT_LIST_FIELDS, port_to_dict
from ironworks.db.models import Node, NodeEvent, Port
from ironworks.errors import Conflict, InvalidInput, NotFound

router = APIRouter()
MAC_RE = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")
PATCHABLE = {
    "address",
    "extra",
    "local_link_connection",
    "pxe_enabled",
    "physical_network",
    "is_smartnic",
    "node_uuid",
}


def normalize_mac(value: str) -> str:
    """``AA-BB-...`` -> ``aa:bb:...``; ``InvalidInput`` when it is not a MAC address."""
    if not isinstance(value, str) or not MAC_RE.match(value):
        raise InvalidInput(f"{value!r} is not a valid MAC address (expected six hex pairs, e.g. 52:54:00:12:34:56).")
    return value.lower().replace("-", ":")


def find_port(session: Session, ident: str) -> tuple[Port, str]:
    """A port by UUID or MAC, with its node's UUID."""
    col = Port.uuid if is_uuid(ident) else Port.address
    key = ident if is_uuid(ident) else (normalize_mac(ident) if MAC_RE.match(ident) else ident)
    row = session.execute(select(Port, Node.uuid).join(Node, Node.id == Port.node_id).where(col == key)).first()
    if row is None:
        raise NotFound(f"Port {ident} could not be found.")
    return row[0], row[1]


class PortCreate(BaseModel):
    """Body of ``POST /v1/ports``."""

    model_config = ConfigDict(extra="forbid")
    address: str
    node_uuid: str
    uuid: str | None = None
    extra: dict[str, Any] | None = None
    local_link_connection: dict[str, Any] | None = None
    pxe_enabled: bool | None = None
    physical_network: str | None = None
    is_smartnic: bool | None = None
    portgroup_uuid: str | None = None


def _check_mac_free(s: Session, mac: str, exclude: int | None = None) -> None:
    stmt = select(Port.uuid).where(Port.address == mac)
    if exclude is not None:
        stmt = stmt.where(Port.id != exclude)
    other = s.execute(stmt).scalar_one_or_none()
    if other is not None:
        raise Conflict(f"A port with MAC address {mac} already exists ({other}).")


@router.post("/v1/ports", status_code=201, summary="Create a port")
def create_port(request: Request, body: PortCreate) -> Response:
    """Register a MAC address for a node."""
    ctx = ctx_of(request)
    if body.portgroup_uuid:
        raise InvalidInput("Port groups are not supported by Ironworks; omit portgroup_uuid.")
    mac = normalize_mac(body.address)
    values = body.model_dump(exclude_none=True, exclude={"node_uuid", "address", "portgroup_uuid"})
    with ctx.db.write() as s:
        node = find_node(s, body.node_uuid)
        _check_mac_free(s, mac)
        if "uuid" in values and s.execute(select(Port.id).where(Port.uuid == values["uuid"])).first():
            raise Conflict(f"A port with UUID {values['uuid']} already exists.")
        port = Port(address=mac, node_id=node.id, **values)
        s.add(port)
        s.flush()
        s.add(NodeEvent(node_id=node.id, event_type="port", event=f"Port {mac} created", user=user_of(request)))
        node_uuid = node.uuid
    base = base_url(request, ctx.config)
    return json_response(
        port_to_dict(port, node_uuid, PORT_FIELDS, base), 201, {"Location": f"{base}/v1/ports/{port.uuid}"}
    )


def _list(
    request: Request,
    *,
    node: str | None,
    address: str | None,
    detail: bool,
    limit: int | None,
    marker: str | None,
    fields: str | None,
) -> Response:
    ctx = ctx_of(request)
    names = PORT_FIELDS if detail else PORT_LIST_FIELDS
    if fields:
        wanted = [f.strip() for f in fields.split(",") if f.strip()]
        bad = [f for f in wanted if f not in PORT_FIELDS]
        if bad:
            raise InvalidInput(f"Field(s) {', '.join(bad)} are not valid; valid: {', '.join(PORT_FIELDS)}.")
        names = wanted
    page = min(limit or MAX_LIMIT, MAX_LIMIT)
    stmt = select(Port, Node.uuid).join(Node, Node.id == Port.node_id)
    with ctx.db.read() as s:
        if node:
            stmt = stmt.where(Port.node_id == find_node(s, node).id)
        if address:
            stmt = stmt.where(Port.address == normalize_mac(address))
        if marker:
            mid = s.execute(select(Port.id).where(Port.uuid == marker)).scalar_one_or_none()
            if mid is None:
                raise InvalidInput(f"Marker {marker} is not the UUID of a port.")
            stmt = stmt.where(Port.id > mid)
        rows = s.execute(stmt.order_by(Port.id).limit(page)).all()
    base = base_url(request, ctx.config)
    out: dict[str, Any] = {"ports": [port_to_dict(p, nu, names, base) for p, nu in rows]}
    if rows and len(rows) == page:
        out["next"] = f"{base}{request.url.path}?limit={page}&marker={rows[-1][0].uuid}"
    return json_response(out)


@router.get("/v1/ports", summary="List ports")
def list_ports(
    request: Request,
    node: str | None = None,
    node_uuid: str | None = None,
    address: str | None = None,
    detail: bool = False,
    limit: int | None = None,
    marker: str | None = None,
    fields: str | None = None,
) -> Response:
    """Ports, optionally of one node or with one MAC address."""
    return _list(
        request,
        node=node or node_uuid,
        address=address,
        detail=detail,
        limit=limit,
        marker=marker,
        fields=fields,
    )


@router.get("/v1/ports/detail", summary="List ports with every field")
def list_ports_detail(
    request: Request,
    node: str | None = None,
    node_uuid: str | None = None,
    address: str | None = None,
    limit: int | None = None,
    marker: str | None = None,
) -> Response:
    """Ports with every field."""
    return _list(request, node=node or node_uuid, address=address, detail=True, limit=limit, marker=marker, fields=None)


@router.get("/v1/nodes/{ident}/ports", summary="List a node's ports")
def node_ports(
    request: Request,
    ident: str,
    limit: int | None = None,
    marker: str | None = None,
    fields: str | None = None,
    detail: bool = False,
) -> Response:
    """The ports of one node."""
    return _list(request, node=ident, address=None, detail=detail, limit=limit, marker=marker, fields=fields)


@router.get("/v1/nodes/{ident}/ports/detail", summary="List a node's ports with every field")
def node_ports_detail(request: Request, ident: str, limit: int | None = None, marker: str | None = None) -> Response:
    """The ports of one node, every field."""
    return _list(request, node=ident, address=None, detail=True, limit=limit, marker=marker, fields=None)


@router.get("/v1/ports/{ident}", summary="Show a port")
def get_port(request: Request, ident: str, fields: str | None = None) -> Response:
    """One port by UUID or MAC address."""
    ctx = ctx_of(request)
    with ctx.db.read() as s:
        port, node_uuid = find_port(s, ident)
    names = [f.strip() for f in fields.split(",")] if fields else PORT_FIELDS
    return json_response(port_to_dict(port, node_uuid, names, base_url(request, ctx.config)))


@router.patch("/v1/ports/{ident}", summary="Update a port with a JSON Patch")
def patch_port(request: Request, ident: str, patch: list[dict[str, Any]] = Body(...)) -> Response:
    """Change a port's MAC, node or attributes."""
    import jsonpatch
    import jsonpointer

    ctx = ctx_of(request)
    with ctx.db.write() as s:
        port, node_uuid = find_port(s, ident)
        doc = {
            "address": port.address,
            "extra": dict(port.extra or {}),
            "node_uuid": node_uuid,
            "local_link_connection": dict(port.local_link_connection or {}),
            "pxe_enabled": port.pxe_enabled,
            "physical_network": port.physical_network,
            "is_smartnic": port.is_smartnic,
        }
        for op in patch:
            if not isinstance(op, dict) or not str(op.get("path", "")).startswith("/"):
                raise InvalidInput("The body must be a JSON Patch: a list of {op, path, value}; paths start with '/'.")
            top = str(op["path"]).split("/")[1]
            if top not in PATCHABLE:
                raise InvalidInput(f"Cannot patch port attribute {top!r}; patchable: {', '.join(sorted(PATCHABLE))}.")
        try:
            new = jsonpatch.apply_patch(doc, patch)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise InvalidInput(f"The patch could not be applied: {exc}.") from None
        mac = normalize_mac(new.get("address") or "")
        if mac != port.address:
            _check_mac_free(s, mac, exclude=port.id)
            port.address = mac
        if new.get("node_uuid") != node_uuid:
            target = find_node(s, str(new.get("node_uuid")))
            port.node_id, node_uuid = target.id, target.uuid
        for key in ("extra", "local_link_connection"):
            if not isinstance(new.get(key) or {}, dict):
                raise InvalidInput(f"{key} must be an object.")
            setattr(port, key, new.get(key) or {})
        if not isinstance(new.get("pxe_enabled", True), bool):
            raise InvalidInput("pxe_enabled must be true or false.")
        port.pxe_enabled = bool(new.get("pxe_enabled", True))
        port.physical_network = new.get("physical_network")
        port.is_smartnic = bool(new.get("is_smartnic", False))
        s.flush()
    return json_response(port_to_dict(port, node_uuid, PORT_FIELDS, base_url(request, ctx.config)))


@router.delete("/v1/ports/{ident}", status_code=204, summary="Delete a port")
def delete_port(request: Request, ident: str) -> Response:
    """Forget a port."""
    ctx = ctx_of(request)
    with ctx.db.write() as s:
        port, _ = find_port(s, ident)
        s.execute(delete(Port).where(Port.id == port.id))
        s.add(
            NodeEvent(
                node_id=port.node_id,
                event_type="port",
                event=f"Port {port.address} deleted",
                user=user_of(request),
            )
        )
    return Response(status_code=204)
