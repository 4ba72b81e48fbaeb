"""The agent's endpoints: ``GET /v1/lookup`` and ``POST /v1/heartbeat/{node}`` (IPA protocol).

No operator credentials here (the ramdisk has none): the agent proves itself with the one-time token
it received at its first lookup. Lookup only answers for nodes in a state that expects an agent.
A heartbeat is checked here and handed to the node's conductor as a queued ``agent/heartbeat``
action, so it is recorded under the node lock like any other change (never racing a running flow).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from starlette.responses import Response

from ironworks import states
from ironworks.api.app import ctx_of, json_response
from ironworks.api.auth import constant_time_equal
from ironworks.api.nodes import find_node
from ironworks.conductor import queue
from ironworks.db.models import Action, Node, Port
from ironworks.db.secrets import mask
from ironworks.errors import InvalidInput, NotFound, Unauthorized

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
        info = dict(node.driver_internal_info or {})
        token = "******"
        if TOKEN_KEY not in info:
            token = secrets.token_urlsafe(32)
            info[TOKEN_KEY] = token
            node.driver_internal_info = ctx.db.secrets.seal(info)
        body: dict[str, Any] = {
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
    return json_response(body)


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
