"""A small typed client for the Ironic-compatible Bare Metal API v1, as the ``ironworks`` CLI uses it.

It imports nothing from the server: the CLI stays light and talks to Ironworks (or Ironic) only
over HTTP. Errors, grouped by what a caller can do about them::

    ClientError              the API refused or failed a request; ``status`` is the HTTP status
     └── ServerUnreachable   no HTTP answer at all (refused, unknown host, timed out); ``status`` is None

Every httpx error is translated here, so nothing above this module sees httpx exceptions.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

#: The microversion every request asks for (Ironic 2023.2 "Bobcat" level: node history, service).
API_VERSION = "1.87"
VERSION_HEADER = "X-OpenStack-Ironic-API-Version"
DEFAULT_URL = "http://127.0.0.1:6385"
DEFAULT_TIMEOUT = 30.0

Json = dict[str, Any]


class ClientError(Exception):
    """The API answered a request with an error, or could not be reached."""

    def __init__(self, status: int | None, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.method = method
        self.path = path


class ServerUnreachable(ClientError):
    """No HTTP answer came back: the server is down, unreachable, or too slow."""


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID (as opposed to a name or a MAC address)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class IronicClient:
    """Typed calls to ``/v1/nodes`` and ``/v1/ports``; one instance per command, then ``close()``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=httpx.BasicAuth(username, password or "") if username else None,
            headers={VERSION_HEADER: API_VERSION, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- nodes --------------------------------------------------------------------------------------

    def list_nodes(
        self,
        *,
        detail: bool = False,
        limit: int | None = None,
        provision_state: str | None = None,
        maintenance: bool | None = None,
        driver: str | None = None,
    ) -> list[Json]:
        """Nodes matching the filters; all pages unless ``limit`` is given."""
        params: dict[str, str] = {}
        if provision_state is not None:
            params["provision_state"] = provision_state
        if maintenance is not None:
            params["maintenance"] = "true" if maintenance else "false"
        if driver is not None:
            params["driver"] = driver
        path = "/v1/nodes/detail" if detail else "/v1/nodes"
        return self._collect(path, "nodes", params, limit=limit)

    def get_node(self, node: str, *, fields: Sequence[str] = ()) -> Json:
        """One node by UUID or name, optionally only some ``fields``."""
        params = {"fields": ",".join(fields)} if fields else None
        return self._json("GET", _node_path(node), params=params)

    def create_node(self, body: Mapping[str, Any]) -> Json:
        """Enroll a node; ``body`` holds at least ``driver``."""
        return self._json("POST", "/v1/nodes", payload=body)

    def update_node(self, node: str, patch: Sequence[Mapping[str, Any]]) -> Json:
        """Apply an RFC 6902 JSON Patch to a node and return the updated node."""
        return self._json("PATCH", _node_path(node), payload=patch)

    def delete_node(self, node: str) -> None:
        """Delete a node."""
        self._request("DELETE", _node_path(node))

    def set_provision_state(
        self,
        node: str,
        target: str,
        *,
        configdrive: str | Json | None = None,
        clean_steps: list[Any] | None = None,
        deploy_steps: list[Any] | None = None,
        service_steps: list[Any] | None = None,
        rescue_password: str | None = None,
    ) -> None:
        """Ask for a provision state change (``target`` is an API verb such as ``active``)."""
        optional = {
            "configdrive": configdrive,
            "clean_steps": clean_steps,
            "deploy_steps": deploy_steps,
            "service_steps": service_steps,
            "rescue_password": rescue_password,
        }
        body: Json = {"target": target} | {k: v for k, v in optional.items() if v is not None}
        self._request("PUT", f"{_node_path(node)}/states/provision", payload=body)

    def set_power_state(self, node: str, target: str, *, timeout: int | None = None) -> None:
        """Ask for a power state change (``power on``, ``soft power off``, ``rebooting`` ...)."""
        body: Json = {"target": target}
        if timeout is not None:
            body["timeout"] = timeout
        self._request("PUT", f"{_node_path(node)}/states/power", payload=body)

    def set_maintenance(self, node: str, *, reason: str | None = None) -> None:
        """Put a node in maintenance mode."""
        body: Json = {"reason": reason} if reason is not None else {}
        self._request("PUT", f"{_node_path(node)}/maintenance", payload=body)

    def clear_maintenance(self, node: str) -> None:
        """Take a node out of maintenance mode."""
        self._request("DELETE", f"{_node_path(node)}/maintenance")

    def validate_node(self, node: str) -> Json:
        """Per-interface validation: ``{"power": {"result": bool, "reason": str | None}, ...}``."""
        return self._json("GET", f"{_node_path(node)}/validate")

    def node_history(self, node: str) -> list[Json]:
        """The node's event history, oldest first."""
        return _items(self._json("GET", f"{_node_path(node)}/history"), "history")

    # -- ports --------------------------------------------------------------------------------------

    def list_ports(self, *, node: str | None = None, detail: bool = False, limit: int | None = None) -> list[Json]:
        """Ports, optionally only those of ``node``; all pages unless ``limit`` is given."""
        params = {"node": node} if node is not None else {}
        return self._collect("/v1/ports/detail" if detail else "/v1/ports", "ports", params, limit=limit)

    def get_port(self, port: str) -> Json:
        """One port by UUID, or by MAC address when ``port`` is not a UUID."""
        if is_uuid(port):
            return self._json("GET", f"/v1/ports/{quote(port, safe='')}")
        found = _items(self._json("GET", "/v1/ports/detail", params={"address": port}), "ports")
        if not found:
            raise ClientError(
                404,
                f"No port has the UUID or MAC address {port!r}. List ports with `ironworks port list`.",
                method="GET",
                path="/v1/ports/detail",
            )
        return found[0]

    def create_port(self, address: str, node_uuid: str) -> Json:
        """Create a port (a NIC's MAC address) on a node."""
        return self._json("POST", "/v1/ports", payload={"address": address, "node_uuid": node_uuid})

    def delete_port(self, port_uuid: str) -> None:
        """Delete a port by UUID."""
        self._request("DELETE", f"/v1/ports/{quote(port_uuid, safe='')}")

    # -- plumbing -----------------------------------------------------------------------------------

    def _collect(self, path: str, key: str, params: dict[str, str], *, limit: int | None) -> list[Json]:
        if limit is not None:
            return _items(self._json("GET", path, params=params | {"limit": str(limit)}), key)
        items: list[Json] = []
        while True:
            page = self._json("GET", path, params=params)
            items.extend(_items(page, key))
            next_link = page.get("next")
            if not next_link:
                return items
            # Only the query of the `next` link is reused: its host may be the server's own view of
            # itself (behind a proxy it differs from the URL the operator gave us).
            next_params = params | dict(parse_qsl(urlsplit(str(next_link)).query))
            if next_params == params:
                raise ClientError(
                    200,
                    f"GET {path} returned a `next` link that points at the same page; stopping. "
                    "Retry with --limit to fetch one page.",
                    method="GET",
                    path=path,
                )
            params = next_params

    def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        payload: object = None,
    ) -> Json:
        response = self._request(method, path, params=params, payload=payload)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ClientError(
                response.status_code,
                f"{method} {path} answered something that is not a JSON object; "
                f"is {self.base_url} an Ironworks or Ironic API endpoint?",
                method=method,
                path=path,
            )
        return body

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        payload: object = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, params=params, json=payload)
        except httpx.TimeoutException as exc:
            raise ServerUnreachable(
                None,
                f"The API at {self.base_url} did not answer {method} {path} within {self.timeout:g} s. "
                "Check that the server is healthy, then retry.",
                method=method,
                path=path,
            ) from exc
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                None,
                f"Cannot connect to the API at {self.base_url} ({exc}). Start the server with "
                "`ironworks serve`, or point --url (or IRONWORKS_URL) at a running one.",
                method=method,
                path=path,
            ) from exc
        if response.is_error:
            raise ClientError(response.status_code, _fault(response), method=method, path=path)
        return response


def _node_path(node: str) -> str:
    return f"/v1/nodes/{quote(node, safe='')}"


def _items(page: Json, key: str) -> list[Json]:
    items = page.get(key)
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict)]


def _fault(response: httpx.Response) -> str:
    """The ``faultstring`` of an Ironic error body, or the best text the response offers."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and "error_message" in body:
        inner: object = body["error_message"]
        # Ironic double-encodes: error_message is a JSON *string* holding faultcode/faultstring.
        if isinstance(inner, str):
            text = inner
            try:
                inner = json.loads(text)
            except ValueError:
                return text
        if isinstance(inner, dict) and inner.get("faultstring"):
            return str(inner["faultstring"])
        return str(inner)
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return response.text.strip() or response.reason_phrase
