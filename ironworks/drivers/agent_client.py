"""The conductor's client for the agent's command API (ironic-python-agent protocol).

``POST {agent}/v1/commands/?wait=&agent_token=`` with ``{"name": "<ext>.<command>", "params": {}}``
answers ``{"id", "command_name", "command_status": RUNNING|SUCCEEDED|FAILED, "command_error",
"command_result"}``; ``GET /v1/commands/{id}`` polls one. Errors are translated here into
``AgentError``s a flow can act on: unreachable (maybe rebooting: keep waiting), busy (retry
later), token rejected, command failed.
"""

from __future__ import annotations

from typing import Any

import httpx

from ironworks.errors import DriverError


class AgentError(DriverError):
    """Talking to the agent failed."""

    reason = "agent_error"


class AgentUnreachable(AgentError):
    """The agent did not answer (it may be booting, rebooting or dead)."""

    reason = "agent_unreachable"


class AgentBusy(AgentError):
    """The agent runs another command (HTTP 409)."""

    reason = "agent_busy"


class AgentCommandFailed(AgentError):
    """The agent refused or failed a command."""

    reason = "agent_command_failed"


class AgentClient:
    """Commands for one agent, authenticated with its token. ``transport`` is injectable."""

    def __init__(
        self, url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        params = dict(kwargs.pop("params", {}))
        params["agent_token"] = self._token
        try:
            resp = self._client.request(method, f"{self.url}{path}", params=params, **kwargs)
        except httpx.TransportError as exc:
            raise AgentUnreachable(f"The agent at {self.url} did not answer: {type(exc).__name__}.") from exc
        if resp.status_code == 409:
            raise AgentBusy(f"The agent at {self.url} is busy: {_fault(resp)}")
        if resp.status_code in (401, 403):
            raise AgentCommandFailed(
                f"The agent at {self.url} rejected the token ({resp.status_code}): it was not started for "
                "this node's current flow; power the node off and retry the operation."
            )
        if resp.status_code >= 400:
            raise AgentCommandFailed(f"The agent at {self.url} refused {path} ({resp.status_code}): {_fault(resp)}")
        try:
            data: dict[str, Any] = resp.json()
        except ValueError as exc:
            raise AgentCommandFailed(f"The agent at {self.url} answered {path} with something not JSON.") from exc
        return data

    def execute(self, name: str, params: dict[str, Any] | None = None, *, wait: bool = False) -> dict[str, Any]:
        """Start command ``name`` (``extension.command``); its result (RUNNING unless ``wait``)."""
        return self._request(
            "POST",
            "/v1/commands/",
            params={"wait": "true" if wait else "false"},
            json={"name": name, "params": params or {}},
        )

    def get(self, command_id: str) -> dict[str, Any]:
        """One command's current result."""
        return self._request("GET", f"/v1/commands/{command_id}")

    def status(self) -> dict[str, Any]:
        """The agent's status document."""
        return self._request("GET", "/v1/status")

    def get_steps(self, kind: str, params: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], Any]:
        """``<kind>.get_<kind>_steps``: the steps by interface (Ironic's cache shape), and the managers' versions."""
        name = f"{kind}.get_{kind}_steps"
        result = self.execute(name, params, wait=True)
        if result.get("command_status") != "SUCCEEDED":
            raise AgentCommandFailed(f"The agent's {name} did not succeed: {command_error_message(result)}")
        answer = result.get("command_result") or {}
        per_manager = answer.get(f"{kind}_steps")  # IPA's shape: {manager: [step, ...]}
        if not isinstance(per_manager, dict):
            raise AgentCommandFailed(f"The agent's {name} answered without '{kind}_steps': {str(answer)[:300]}")
        by_interface: dict[str, list[dict[str, Any]]] = {}
        for steps in per_manager.values():
            for item in steps if isinstance(steps, list) else []:
                if isinstance(item, dict) and isinstance(item.get("step"), str):
                    by_interface.setdefault(str(item.get("interface") or "deploy"), []).append(item)
        return by_interface, answer.get("hardware_manager_version")


def _fault(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        return str(body.get("faultstring") or body.get("message") or body)[:500]
    return str(body)[:500]


def command_error_message(result: dict[str, Any]) -> str:
    """The human message of a FAILED command result."""
    err = result.get("command_error")
    if isinstance(err, dict):
        return str(err.get("message") or err.get("details") or err)
    return str(err or "no details given")
