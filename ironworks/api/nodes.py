"""``/v1/nodes``: create, list, show, patch, delete, and the node's sub-resources."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session
from starlette.responses import Response

from ironworks.api import nodefields, versions
from ironworks.api.app import ApiContext, base_url, ctx_of, json_response, user_of, version_of
from ironworks.api.serialize import (
    NODE_FIELDS,
    NODE_LIST_FIELDS,
    NodeContext,
    columns_for,
    node_to_dict,
    nodes_to_dicts,
    select_fields,
)
from ironworks.db.models import Node, NodeEvent
from ironworks.errors import InvalidInput, NodeLocked, NotFound
from ironworks.states import DELETE_ALLOWED_STATES

router = APIRouter()
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
MAX_LIMIT = 1000


def is_uuid(value: str) -> bool:
    """Whether ``value`` looks like a UUID."""
    return bool(UUID_RE.match(value))


def find_node(session: Session, ident: str) -> Node:
    """A node by UUID or name; ``NotFound`` names what was asked for."""
    col = Node.uuid if is_uuid(ident) else Node.name
    node = session.execute(select(Node).where(col == ident)).scalar_one_or_none()
    if node is None:
        raise NotFound(f"Node {ident} could not be found.")
    return node


def render_ctx(request: Request, ctx: ApiContext) -> NodeContext:
    """Rendering context for this request."""
    return NodeContext(
        base_url(request, ctx.config),
        version_of(request),
        conductor_of=ctx.conductor_of,
        default_interface=ctx.default_interface,
    )


def parse_fields(fields: str | None, allowed: list[str], version: tuple[int, int]) -> list[str] | None:
    """``?fields=a,b`` checked against what the version offers."""
    if fields is None:
        return None
    if version < versions.FEATURES["fields"]:
        raise InvalidInput("The 'fields' parameter needs API version 1.8 or newer.")
    wanted = [f.strip() for f in fields.split(",") if f.strip()]
    visible = set(versions.node_fields_for(version, allowed))
    bad = [f for f in wanted if f not in visible and f != "links"]
    if bad:
        raise InvalidInput(f"Field(s) {', '.join(bad)} are not valid; valid fields: {', '.join(sorted(visible))}.")
    return [f for f in wanted if f != "links"]


# ---- create -----------------------------------------------------------------------
class NodeCreate(BaseModel):
    """Body of ``POST /v1/nodes``; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    driver: str
    uuid: str | None = None
    name: str | None = None
    driver_info: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    instance_info: dict[str, Any] | None = None
    instance_uuid: str | None = None
    extra: dict[str, Any] | None = None
    resource_class: str | None = None
    description: str | None = None
    owner: str | None = None
    lessee: str | None = None
    automated_clean: bool | None = None
    protected: bool | None = None
    protected_reason: str | None = None
    retired: bool | None = None
    retired_reason: str | None = None
    network_data: dict[str, Any] | None = None
    conductor_group: str | None = None
    shard: str | None = None
    parent_node: str | None = None
    chassis_uuid: str | None = None
    boot_interface: str | None = None
    bios_interface: str | None = None
    console_interface: str | None = None
    deploy_interface: str | None = None
    firmware_interface: str | None = None
    inspect_interface: str | None = None
    management_interface: str | None = None
    network_interface: str | None = None
    power_interface: str | None = None
    raid_interface: str | None = None
    rescue_interface: str | None = None
    storage_interface: str | None = None
    vendor_interface: str | None = None


@router.post("/v1/nodes", status_code=201, summary="Enroll a node")
def create_node(request: Request, body: NodeCreate) -> Response:
    """Create a node in ``enroll`` (``available`` for API versions before 1.11, as Ironic)."""
    ctx = ctx_of(request)
    version = version_of(request)
    values = body.model_dump(exclude_none=True)
    nodefields.check_values(values, creating=True)
    interfaces = ctx.drivers.resolve_names(
        values["driver"], {k: values.pop(f"{k}_interface", None) for k in nodefields.KINDS}
    )
    for kind, impl in interfaces.items():
        values[f"{kind}_interface"] = impl
    for key in ("network_interface", "storage_interface", "vendor_interface"):
        values.pop(key, None)
    seal = ctx.db.secrets.seal
    for key in ("driver_info", "instance_info"):
        if key in values:
            values[key] = seal(values[key])
    values["provision_state"] = "enroll" if version >= versions.FEATURES["enroll"] else "available"
    with ctx.db.write() as s:
        nodefields.check_unique(s, values)
        node = Node(**values)
        s.add(node)
        s.flush()
        s.add(
            NodeEvent(
                node_id=node.id,
                event_type="node",
                event=f"Node created with driver {node.driver}",
                user=user_of(request),
            )
        )
    rc = render_ctx(request, ctx)
    data = node_to_dict(node, select_fields(None, NODE_FIELDS, version), rc, detail_links=True)
    return json_response(data, 201, {"Location": f"{rc.base}/v1/nodes/{node.uuid}"})


# ---- list / show ----------------------------------------------------------------------
def _filters(stmt: Select[Any], request: Request) -> Select[Any]:
    q = request.query_params
    simple = (
        "provision_state",
        "driver",
        "resource_class",
        "conductor_group",
        "fault",
        "owner",
        "lessee",
        "shard",
        "instance_uuid",
        "chassis_uuid",
        "parent_node",
    )
    for key in simple:
        if key in q:
            stmt = stmt.where(getattr(Node, key) == q[key])
    for key in ("maintenance", "retired", "protected"):
        if key in q:
            stmt = stmt.where(getattr(Node, key).is_(nodefields.parse_bool(key, q[key])))
    if "associated" in q:
        assoc = nodefields.parse_bool("associated", q["associated"])
        stmt = stmt.where(Node.instance_uuid.is_not(None) if assoc else Node.instance_uuid.is_(None))
    if "description_contains" in q:
        stmt = stmt.where(Node.description.contains(q["description_contains"]))
    if "conductor" in q:
        raise InvalidInput("Filtering by conductor is not supported; filter by conductor_group instead.")
    return stmt


def _list(
    request: Request,
    *,
    detail: bool,
    limit: int | None,
    marker: str | None,
    sort_key: str,
    sort_dir: str,
    fields: str | None,
    path: str,
) -> Response:
    ctx = ctx_of(request)
    version = version_of(request)
    if fields is not None and detail:
        raise InvalidInput("Cannot combine 'fields' with detail: ask for the fields you need.")
    requested = parse_fields(fields, NODE_FIELDS, version)
    names = select_fields(requested, NODE_FIELDS if detail else NODE_LIST_FIELDS, version)
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must be a positive integer, not {limit}.")
    page = min(limit or MAX_LIMIT, MAX_LIMIT)
    if sort_dir not in ("asc", "desc"):
        raise InvalidInput(f"sort_dir must be 'asc' or 'desc', not {sort_dir!r}.")
    sortable = {
        "id",
        "uuid",
        "name",
        "created_at",
        "updated_at",
        "provision_state",
        "provision_updated_at",
        "driver",
        "power_state",
        "maintenance",
        "resource_class",
        "conductor_group",
        "owner",
        "lessee",
    }
    if sort_key not in sortable:
        raise InvalidInput(f"Cannot sort on {sort_key!r}; sortable fields: {', '.join(sorted(sortable))}.")
    col = getattr(Node, sort_key)
    columns = columns_for(names)
    stmt = _filters(select(*[getattr(Node, c) for c in columns]), request)
    with ctx.db.read() as s:
        if marker:
            mrow = s.execute(select(Node.id, col).where(Node.uuid == marker)).first()
            if mrow is None:
                raise InvalidInput(f"Marker {marker} is not the UUID of a node.")
            mid, mval = mrow
            if sort_key == "id":
                stmt = stmt.where(Node.id > mid if sort_dir == "asc" else Node.id < mid)
            else:
                after = col > mval if sort_dir == "asc" else col < mval
                stmt = stmt.where(after | ((col == mval) & (Node.id > mid)))
        order = [col.asc() if sort_dir == "asc" else col.desc()]
        if sort_key != "id":
            order.append(Node.id.asc())
        rows = s.execute(stmt.order_by(*order).limit(page)).all()
    rc = render_ctx(request, ctx)
    items = nodes_to_dicts(rows, columns, names, rc)
    out: dict[str, Any] = {"nodes": items}
    if len(rows) == page and rows:
        params = [f"limit={page}", f"marker={rows[-1].uuid}"]
        if fields:
            params.append(f"fields={fields}")
        if sort_key != "id":
            params.append(f"sort_key={sort_key}")
        if sort_dir != "asc":
            params.append(f"sort_dir={sort_dir}")
        for k, v in request.query_params.items():
            if k not in ("limit", "marker", "fields", "sort_key", "sort_dir"):
                params.append(f"{k}={v}")
        out["next"] = f"{rc.base}{path}?{'&'.join(params)}"
    return json_response(out)


@router.get("/v1/nodes", summary="List nodes")
def list_nodes(
    request: Request,
    limit: int | None = None,
    marker: str | None = None,
    sort_key: str = "id",
    sort_dir: str = "asc",
    fields: str | None = None,
    detail: bool = False,
    provision_state: str | None = Query(None),
    maintenance: str | None = Query(None),
    driver: str | None = Query(None),
) -> Response:
    """Nodes, paginated (``limit``, ``marker``, ``next``), filtered, optionally in detail."""
    if detail and version_of(request) < versions.FEATURES["detail_param"]:
        raise InvalidInput("The 'detail' parameter needs API version 1.43 or newer; use /v1/nodes/detail.")
    return _list(
        request,
        detail=detail,
        limit=limit,
        marker=marker,
        sort_key=sort_key,
        sort_dir=sort_dir,
        fields=fields,
        path="/v1/nodes",
    )


@router.get("/v1/nodes/detail", summary="List nodes with every field")
def list_nodes_detail(
    request: Request,
    limit: int | None = None,
    marker: str | None = None,
    sort_key: str = "id",
    sort_dir: str = "asc",
    provision_state: str | None = Query(None),
    maintenance: str | None = Query(None),
    driver: str | None = Query(None),
) -> Response:
    """Nodes with every field."""
    return _list(
        request,
        detail=True,
        limit=limit,
        marker=marker,
        sort_key=sort_key,
        sort_dir=sort_dir,
        fields=None,
        path="/v1/nodes/detail",
    )


@router.get("/v1/nodes/{ident}", summary="Show a node")
def get_node(request: Request, ident: str, fields: str | None = None) -> Response:
    """One node by UUID or name."""
    ctx = ctx_of(request)
    version = version_of(request)
    requested = parse_fields(fields, NODE_FIELDS, version)
    with ctx.db.read() as s:
        node = find_node(s, ident)
    data = node_to_dict(
        node,
        select_fields(requested, NODE_FIELDS, version),
        render_ctx(request, ctx),
        detail_links=requested is None,
    )
    return json_response(data)


# ---- patch / delete ------------------------------------------------------------------
@router.patch("/v1/nodes/{ident}", summary="Update a node with an RFC 6902 JSON Patch")
def patch_node(request: Request, ident: str, patch: list[dict[str, Any]] = Body(...)) -> Response:
    """Apply a JSON Patch; read-only fields and unknown paths are refused, secrets are kept."""
    ctx = ctx_of(request)
    version = version_of(request)
    with ctx.db.write() as s:
        node = find_node(s, ident)
        if node.reservation:
            raise NodeLocked(node.uuid, node.reservation)
        changes = nodefields.apply_patch(node, patch, ctx.drivers, ctx.db.secrets)
        if changes:
            nodefields.check_unique(s, changes, exclude_id=node.id)
            for key, value in changes.items():
                setattr(node, key, value)
            s.add(
                NodeEvent(
                    node_id=node.id,
                    event_type="node",
                    user=user_of(request),
                    event=f"Node updated: {', '.join(sorted(changes))}",
                )
            )
        s.flush()
    data = node_to_dict(node, select_fields(None, NODE_FIELDS, version), render_ctx(request, ctx), detail_links=True)
    return json_response(data)


@router.delete("/v1/nodes/{ident}", status_code=204, summary="Delete a node")
def delete_node(request: Request, ident: str) -> Response:
    """Delete a node (with its ports and timeline) when its state allows it."""
    ctx = ctx_of(request)
    with ctx.db.write() as s:
        node = find_node(s, ident)
        if node.reservation:
            raise NodeLocked(node.uuid, node.reservation)
        if node.protected:
            raise InvalidInput(
                f"Node {node.uuid} is protected ({node.protected_reason or 'no reason given'}): unset protected first."
            )
        if node.provision_state not in DELETE_ALLOWED_STATES and not node.maintenance:
            allowed = ", ".join(sorted(DELETE_ALLOWED_STATES))
            raise InvalidInput(
                f"Can not delete node {node.uuid} while it is in provision state "
                f'"{node.provision_state}". Valid states: {allowed}; or set maintenance first.'
            )
        s.execute(delete(Node).where(Node.id == node.id))
    return Response(status_code=204)
