"""The agent's endpoints: ``GET /v1/lookup``, ``POST /v1/heartbeat/{node}`` and
``POST /v1/continue_inspection`` (IPA protocol), and the inventory they leave behind
(``GET /v1/nodes/{node}/inventory``, operator credentials required like every node path).

No operator credentials on the agent's paths (the ramdisk has none): the agent proves itself with the
one-time token it received at its first lookup. Lookup only answers for nodes in a state that
expects an agent. A heartbeat is checked here and handed to the node's conductor as a queued
``agent/heartbeat`` action, so it is recorded under the node lock like any other change (never
racing a running flow). Inspection data is taken, as Ironic takes it, without a token, but only for
a node whose in-band (``agent``) inspection waits for it; it is stored here and the conductor
finishes the inspection from the stored copy (``agent/continue_inspection``).
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from ironworks import states
from ironworks.api import versions
from ironworks.api.app import ApiContext, ctx_of, json_response, version_of
from ironworks.api.auth import constant_time_equal
from ironworks.api.nodes import find_node
from ironworks.conductor import queue
from ironworks.db.models import Action, Node, NodeInventory, Port
from ironworks.db.secrets import mask
from ironworks.errors import InvalidInput, InvalidTransition, NotFound, Unauthorized

router = APIRouter()
S = states.State
#: States in which a node runs (or is about to run) the agent.
AGENT_STATES = frozenset(
    {S.DEPLOYING, S.DEPLOY_WAIT, S.CLEANING, S.CLEAN_WAIT, S.INSPECTING, S.INSPECT_WAIT}
    | {S.RESCUING, S.RESCUE_WAIT, S.SERVICING, S.SERVICE_WAIT}
)
TOKEN_KEY = "agent_secret_token"
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
URL_RE = re.compile(r"^https?://[^\s/]+(:\d+)?(/\S*)?$")
#: GET /v1/nodes/{node}/inventory appeared in Ironic's API 1.81, /v1/continue_inspection in 1.84
INVENTORY_VERSION = (1, 81)
CONTINUE_INSPECTION_VERSION = (1, 84)
#: plugin data not kept: IPA's ``logs`` is a base64 tarball of megabytes (Ironic drops it as well)
DROPPED_PLUGIN_DATA = frozenset({"logs"})


@router.get("/v1/lookup", summary="Agent: find my node by MAC addresses", tags=["agent"])
def lookup(request: Request, addresses: str = "", node_uuid: str | None = None) -> Response:
    """The node whose ports carry one of ``addresses``; the agent token on the first lookup."""
    ctx = ctx_of(request)
    macs = [a.strip().lower().replace("-", ":") for a in addresses.split(",") if a.strip()]
    bad = [m for m in macs if not MAC_RE.match(m)]
    if bad:
        raise InvalidInput(f"Invalid MAC address(es) in 'addresses': {', '.join(bad)}.")
    if not macs and not node_uuid:
        raise InvalidInput("Lookup needs 'addresses' (comma-separated MACs) or 'node_uuid'.")
    with ctx.db.write() as s:
        if node_uuid:
            node = find_node(s, node_uuid)
        else:
            ids = set(s.execute(select(Port.node_id).where(Port.address.in_(macs))).scalars())
            if len(ids) > 1:
                raise InvalidInput(f"The addresses {', '.join(macs)} belong to more than one node.")
            found = s.get(Node, ids.pop()) if ids else None
            if found is None:
                raise NotFound(f"No node has a port with any of the addresses {', '.join(macs)}.")
            node = found
        if S(node.provision_state) not in AGENT_STATES:
            raise NotFound(f"Node {node.uuid} is in state {node.provision_state!r}, which does not expect an agent.")
        body = _agent_node_body(ctx, node)
    return json_response(body)


def _agent_node_body(ctx: ApiContext, node: Node) -> dict[str, Any]:
    """Lookup's answer: the node, and the agent token if none was handed out yet (``******`` otherwise)."""
    info = dict(node.driver_internal_info or {})
    token = "******"
    if TOKEN_KEY not in info:
        token = secrets.token_urlsafe(32)
        info[TOKEN_KEY] = token
        node.driver_internal_info = ctx.db.secrets.seal(info)
    return {
        "node": {
            "uuid": node.uuid,
            "properties": node.properties or {},
            "instance_info": mask(node.instance_info),
            "driver_internal_info": mask(node.driver_internal_info),
        },
        "config": {
            "heartbeat_timeout": int(ctx.config.conductor.agent_heartbeat_timeout),
            "agent_token": token,
            "agent_token_required": True,
        },
    }


class HeartbeatBody(BaseModel):
    """Body of ``POST /v1/heartbeat/{node}``."""

    model_config = ConfigDict(extra="ignore")  # agents send more than we use (agent_verify_ca ...)
    callback_url: str
    agent_token: str | None = None
    agent_version: str | None = None
    agent_status: str | None = None


@router.post("/v1/heartbeat/{ident}", status_code=202, summary="Agent: I am alive at callback_url", tags=["agent"])
def heartbeat(request: Request, ident: str, body: HeartbeatBody) -> Response:
    """Check the token and queue the heartbeat for the node's conductor."""
    ctx = ctx_of(request)
    if not URL_RE.match(body.callback_url):
        raise InvalidInput(f"callback_url {body.callback_url!r} is not an http(s) URL.")
    with ctx.db.write() as s:
        node = find_node(s, ident)
        stored = ctx.db.secrets.reveal(node.driver_internal_info or {}).get(TOKEN_KEY)
        if not stored or not body.agent_token or not constant_time_equal(str(stored), body.agent_token):
            raise Unauthorized(f"Invalid or missing agent token for node {node.uuid}.")
        if S(node.provision_state) not in AGENT_STATES:
            raise NotFound(f"Node {node.uuid} is in state {node.provision_state!r}, which does not expect an agent.")
        pending = s.execute(
            select(Action.id).where(Action.node_id == node.id, Action.kind == "agent", Action.status == queue.PENDING)
        ).first()
        if pending is None:
            queue.enqueue(
                ctx.db,
                s,
                node_id=node.id,
                kind="agent",
                name="heartbeat",
                args={
                    "callback_url": body.callback_url,
                    "agent_version": body.agent_version,
                    "agent_status": body.agent_status,
                },
            )
    ctx.db.wake()
    return Response(status_code=202)


class InspectionData(BaseModel):
    """Body of ``POST /v1/continue_inspection``: ``inventory`` and any plugin data beside it."""

    model_config = ConfigDict(extra="allow")
    inventory: dict[str, Any]


@router.post(
    "/v1/continue_inspection", status_code=202, summary="Agent: the inventory of an inspected node", tags=["agent"]
)
def continue_inspection(request: Request, body: InspectionData, node_uuid: str | None = None) -> Response:
    """Store the inventory of the node it identifies (MACs, BMC address) and finish its inspection."""
    ctx = ctx_of(request)
    version = version_of(request)
    # like Ironic: 1.84 or newer, or no version at all (what ironic-inspector's callers send)
    compat = version == versions.MIN_VERSION
    if (not compat and version < CONTINUE_INSPECTION_VERSION) or (node_uuid and version < CONTINUE_INSPECTION_VERSION):
        raise NotFound(
            f"POST /v1/continue_inspection needs API version {versions.fmt(CONTINUE_INSPECTION_VERSION)} or newer "
            f"(node_uuid too); this request asked for {versions.fmt(version)}."
        )
    inventory = body.inventory
    macs, bmc = _lookup_keys(inventory)
    if not macs and not bmc and not node_uuid:
        raise InvalidInput(
            "The inventory identifies no node: it has no valid interfaces[].mac_address and no bmc_address; "
            "pass ?node_uuid= or send the NICs' MAC addresses."
        )
    plugin_data = {k: v for k, v in (body.model_extra or {}).items() if k not in DROPPED_PLUGIN_DATA}
    with ctx.db.write() as s:
        node = _inspected_node(s, macs, bmc, node_uuid)
        if S(node.provision_state) != S.INSPECT_WAIT:
            raise InvalidTransition(
                f"Node {node.uuid} is in state {node.provision_state!r}: inspection data is only taken while an "
                "in-band inspection waits for it (state 'inspect wait'). Start one with target 'inspect'."
            )
        iface = node.inspect_interface or ctx.default_interface(node.driver, "inspect_interface")
        if iface != "agent":
            raise InvalidInput(
                f"Node {node.uuid} is inspected by its {iface!r} inspect interface; inspection data from a ramdisk "
                "is only taken for inspect_interface 'agent'."
            )
        row = s.execute(select(NodeInventory).where(NodeInventory.node_id == node.id)).scalar_one_or_none()
        if row is None:
            s.add(NodeInventory(node_id=node.id, inventory=inventory, plugin_data=plugin_data))
        else:
            row.inventory, row.plugin_data = inventory, plugin_data
        queue.enqueue(ctx.db, s, node_id=node.id, kind="agent", name="continue_inspection", args={})
        answer: dict[str, Any] = {"uuid": node.uuid}
        if not compat:
            answer |= _agent_node_body(ctx, node)
    ctx.db.wake()
    return json_response(answer, status=202)


def _lookup_keys(inventory: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Valid MAC addresses (normalized; others ignored, as Ironic does) and BMC addresses of an inventory."""
    interfaces = inventory.get("interfaces")
    if not isinstance(interfaces, list) or not interfaces:
        raise InvalidInput("inventory.interfaces must be a non-empty list of NICs, each with a mac_address.")
    macs = []
    for nic in interfaces:
        if not isinstance(nic, dict) or not isinstance(nic.get("mac_address"), str):
            raise InvalidInput(f"Every entry of inventory.interfaces needs a mac_address string; got {nic!r:.100}.")
        mac = nic["mac_address"].strip().lower().replace("-", ":")
        if MAC_RE.match(mac) and mac not in macs:
            macs.append(mac)
    bmc = []
    for key in ("bmc_address", "bmc_v6address"):
        value = inventory.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"inventory.{key} must be a string, got {type(value).__name__}.")
        if value and value not in ("0.0.0.0", "::", "::/0"):
            bmc.append(value.strip().lower())
    return macs, bmc


def _inspected_node(s: Session, macs: list[str], bmc: list[str], node_uuid: str | None) -> Node:
    """The node by UUID, else by its ports' MACs, else (waiting nodes only) by the host of its BMC address."""
    if node_uuid:
        return find_node(s, node_uuid)
    ids = set(s.execute(select(Port.node_id).where(Port.address.in_(macs))).scalars()) if macs else set()
    if len(ids) > 1:
        raise InvalidInput(f"The MAC addresses {', '.join(macs)} belong to more than one node.")
    if ids:
        node = s.get(Node, ids.pop())
        if node is not None:
            return node
    waiting = s.execute(select(Node).where(Node.provision_state == S.INSPECT_WAIT.value)).scalars().all()
    found = [n for n in waiting if bmc and _bmc_hosts(n.driver_info or {}) & set(bmc)]
    if len(found) > 1:
        raise InvalidInput(f"The BMC address {', '.join(bmc)} belongs to more than one node waiting for inspection.")
    if not found:
        raise NotFound(
            f"No node has a port with any of the MAC addresses {', '.join(macs) or '-'}, and no node waiting for "
            f"inspection has the BMC address {', '.join(bmc) or '-'}. Create a port, or set the node's BMC address."
        )
    return found[0]


def _bmc_hosts(driver_info: dict[str, Any]) -> set[str]:
    """Hosts named by ``*_address`` keys of driver_info (``redfish_address`` URLs included)."""
    hosts = set()
    for key, value in driver_info.items():
        if not key.endswith("_address") or not isinstance(value, str) or not value:
            continue
        host = urlsplit(value if "://" in value else f"//{value}").hostname
        if host:
            hosts.add(host.lower())
    return hosts


@router.get("/v1/nodes/{ident}/inventory", summary="The inventory in-band inspection stored", tags=["nodes"])
def node_inventory(request: Request, ident: str) -> Response:
    """``{"inventory": {...}, "plugin_data": {...}}`` of the node's last in-band inspection."""
    ctx = ctx_of(request)
    version = version_of(request)
    if version < INVENTORY_VERSION:
        raise NotFound(
            f"GET /v1/nodes/{{node}}/inventory needs API version {versions.fmt(INVENTORY_VERSION)} or newer; "
            f"this request asked for {versions.fmt(version)}."
        )
    with ctx.db.read() as s:
        node = find_node(s, ident)
        row = s.execute(select(NodeInventory).where(NodeInventory.node_id == node.id)).scalar_one_or_none()
        if row is None:
            raise NotFound(
                f"Node {node.uuid} has no stored inventory: inspect it in-band (inspect_interface 'agent', "
                "then target 'inspect')."
            )
        body = {"inventory": row.inventory or {}, "plugin_data": row.plugin_data or {}}
    return json_response(body)
