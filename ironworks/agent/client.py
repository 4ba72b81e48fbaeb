"""The agent's client of the Ironworks (or Ironic) API: lookup, then heartbeats.

Errors, grouped by what the agent does about them::

    AgentApiError
      ├── ApiUnreachable      network or TLS failure: retried
      ├── LookupFailed        gave up looking the node up (timeout, or the API refused the request)
      ├── AgentTokenError     no usable agent token: the agent cannot serve commands, it stops
      └── HeartbeatFailed     a heartbeat was not accepted: retried sooner
            └── HeartbeatRejected   401/403, the token was refused: logged loudly, still retried

The transport is injectable (``Transport``): tests hand the client canned answers; the default one
is urllib's.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlencode

LOG = logging.getLogger(__name__)

API_VERSION = "1.87"
API_VERSION_HEADER = "X-OpenStack-Ironic-API-Version"
#: what lookup answers for a token already handed out to an earlier agent
MASKED_TOKEN = "******"
DEFAULT_HEARTBEAT_TIMEOUT = 300.0
#: heartbeats go out at a random fraction of the heartbeat timeout, so a fleet does not beat in step
JITTER = (0.3, 0.6)
LOOKUP_BACKOFF = (1.0, 30.0)  # first delay, longest delay
HEARTBEAT_RETRY = (2.0, 30.0)
REQUEST_TIMEOUT = 30.0


class AgentApiError(Exception):
    """Talking to the Ironworks API failed."""


class ApiUnreachable(AgentApiError):
    """The API could not be reached (network, TLS, broken HTTP)."""


class LookupFailed(AgentApiError):
    """The node could not be looked up."""


class AgentTokenError(AgentApiError):
    """There is no usable agent token."""


class HeartbeatFailed(AgentApiError):
    """The API did not accept a heartbeat."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HeartbeatRejected(HeartbeatFailed):
    """The API refused the agent token (401/403)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A status and a body."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class Transport(Protocol):
    """Sends one HTTP request; raises ``ApiUnreachable`` when no HTTP answer came back."""

    def __call__(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> HttpResponse: ...


class UrllibTransport:
    """The default transport, on urllib."""

    def __init__(self, *, insecure: bool = False) -> None:
        self._context = ssl.create_default_context()
        if insecure:
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE

    def __call__(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> HttpResponse:
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._context) as resp:
                return HttpResponse(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return HttpResponse(exc.code, exc.read())
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise ApiUnreachable(f"{method} {url.split('?')[0]} failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What lookup told the agent."""

    node_uuid: str
    node: dict[str, Any]
    agent_token: str
    heartbeat_timeout: float
    config: dict[str, Any] = field(default_factory=dict)


def choose_token(offered: Any, pregenerated: str | None) -> str:
    """The agent token to use: a pre-generated one wins; "******" means it went to an earlier agent."""
    if pregenerated:
        return pregenerated
    if isinstance(offered, str) and offered and offered != MASKED_TOKEN:
        return offered
    if offered == MASKED_TOKEN:
        raise AgentTokenError(
            "lookup says this node's agent token was already handed out (to an earlier run of the agent?) and "
            "this agent has none; pass ipa-agent-token=<token> on the kernel command line, or reboot the node "
            "into the ramdisk through Ironworks so that a new token is issued"
        )
    raise AgentTokenError("lookup returned no agent token; Ironworks requires one on every heartbeat and command")


class ApiClient:
    """Lookup and heartbeat calls against ``api_url``."""

    def __init__(
        self,
        api_url: str,
        *,
        transport: Transport | None = None,
        insecure: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._transport = transport or UrllibTransport(insecure=insecure)
        self._clock = clock
        self._sleep = sleep

    def _headers(self) -> dict[str, str]:
        return {API_VERSION_HEADER: API_VERSION, "Accept": "application/json", "Content-Type": "application/json"}

    def lookup_once(self, addresses: Sequence[str], node_uuid: str | None = None) -> HttpResponse:
        """One ``GET /v1/lookup`` call."""
        query = {"addresses": ",".join(addresses)}
        if node_uuid:
            query["node_uuid"] = node_uuid
        url = f"{self.api_url}/v1/lookup?{urlencode(query)}"
        return self._transport("GET", url, headers=self._headers(), body=None, timeout=REQUEST_TIMEOUT)

    def lookup(
        self,
        addresses: Sequence[str],
        node_uuid: str | None = None,
        *,
        timeout: float,
        pregenerated_token: str | None = None,
        heartbeat_timeout: float | None = None,
    ) -> LookupResult:
        """Look the node up by MAC addresses, retrying with backoff for ``timeout`` seconds.

        A 404 means the API does not know (or does not expect) this machine yet: keep trying.
        """
        if not addresses and not node_uuid:
            raise LookupFailed("no MAC address to look the node up with (no network interface found)")
        deadline = self._clock() + timeout
        delay, longest = LOOKUP_BACKOFF
        last = "no answer yet"
        while True:
            try:
                resp = self.lookup_once(addresses, node_uuid)
            except ApiUnreachable as exc:
                last = str(exc)
            else:
                if resp.status == 200:
                    return self._lookup_result(resp, pregenerated_token, heartbeat_timeout)
                if resp.status == 400:
                    raise LookupFailed(f"the API refused the lookup request: {_fault(resp)}")
                last = f"HTTP {resp.status}: {_fault(resp)}"
                if resp.status in (401, 403):
                    LOG.error("lookup is not allowed (%s); check the API's auth settings; retrying", last)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise LookupFailed(
                    f"no node found for MAC addresses {', '.join(addresses) or '-'} within {timeout:g} s "
                    f"(last answer: {last}); enroll the node with these ports, or raise ipa-lookup-timeout"
                )
            LOG.info("lookup not answered yet (%s); retrying in %.0f s", last, min(delay, remaining))
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, longest)

    def _lookup_result(
        self, resp: HttpResponse, pregenerated: str | None, heartbeat_timeout: float | None
    ) -> LookupResult:
        doc = resp.json()
        node = doc.get("node") if isinstance(doc, dict) else None
        config = doc.get("config") if isinstance(doc, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get("uuid"), str) or not isinstance(config, dict):
            raise LookupFailed(f"lookup answered 200 without node.uuid and config: {resp.body[:200]!r}")
        hb = heartbeat_timeout or config.get("heartbeat_timeout") or DEFAULT_HEARTBEAT_TIMEOUT
        if not isinstance(hb, int | float) or isinstance(hb, bool) or hb <= 0:
            raise LookupFailed(f"lookup returned an invalid heartbeat_timeout {hb!r}")
        token = choose_token(config.get("agent_token"), pregenerated)
        return LookupResult(node["uuid"], node, token, float(hb), config)

    def heartbeat(
        self, node_uuid: str, callback_url: str, token: str, agent_version: str, agent_status: str = "start"
    ) -> None:
        """One ``POST /v1/heartbeat/{node}``; anything but 202 raises ``HeartbeatFailed``."""
        body = {
            "callback_url": callback_url,
            "agent_token": token,
            "agent_version": agent_version,
            "agent_status": agent_status,
        }
        url = f"{self.api_url}/v1/heartbeat/{quote(node_uuid, safe='')}"
        resp = self._transport(
            "POST", url, headers=self._headers(), body=json.dumps(body).encode(), timeout=REQUEST_TIMEOUT
        )
        if resp.status == 202:
            return
        message = f"heartbeat for node {node_uuid} got HTTP {resp.status}: {_fault(resp)}"
        if resp.status in (401, 403):
            raise HeartbeatRejected(message, status=resp.status)
        raise HeartbeatFailed(message, status=resp.status)


def _fault(resp: HttpResponse) -> str:
    """The error text of an Ironic-style error body (``error_message`` holds JSON with ``faultstring``)."""
    doc = resp.json()
    if isinstance(doc, dict):
        msg = doc.get("error_message", doc.get("faultstring"))
        if isinstance(msg, str):
            inner = HttpResponse(resp.status, msg.encode()).json()
            if isinstance(inner, dict) and isinstance(inner.get("faultstring"), str):
                return str(inner["faultstring"])
            return msg
    return resp.body[:200].decode("utf-8", "replace") or "(empty body)"


class Heartbeater:
    """Heartbeats in a thread at a jittered fraction of the heartbeat timeout, retrying errors sooner.

    A refused token (401/403) is logged as an error and retried: the conductor may be restarting.
    Nothing a heartbeat meets stops the agent. ``force()`` beats at once (after a command ends, so the
    conductor moves on without waiting a whole interval).
    """

    def __init__(
        self,
        client: ApiClient,
        *,
        node_uuid: str,
        callback_url: str,
        token: str,
        heartbeat_timeout: float,
        agent_version: str,
        status: Callable[[], str] = lambda: "start",
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.client = client
        self.node_uuid = node_uuid
        self.callback_url = callback_url
        self.token = token
        self.heartbeat_timeout = heartbeat_timeout
        self.agent_version = agent_version
        self._status = status
        self._rand = rand
        self._failures = 0
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def interval(self) -> float:
        """The delay before the next regular heartbeat."""
        return max(1.0, self.heartbeat_timeout * self._rand(*JITTER))

    def beat(self) -> float:
        """Send one heartbeat; return the delay before the next one."""
        try:
            self.client.heartbeat(self.node_uuid, self.callback_url, self.token, self.agent_version, self._status())
        except HeartbeatRejected as exc:
            LOG.error("THE CONDUCTOR REFUSED THIS AGENT'S TOKEN: %s; retrying (it may be restarting)", exc)
        except AgentApiError as exc:
            LOG.warning("%s; retrying", exc)
        except Exception:  # a heartbeat must never end the agent
            LOG.exception("unexpected error while heartbeating; retrying")
        else:
            self._failures = 0
            self.beats += 1
            return self.interval()
        self._failures += 1
        first, longest = HEARTBEAT_RETRY
        backoff: float = first * 2.0 ** (self._failures - 1)
        return min(backoff, longest, self.interval())

    def force(self) -> None:
        """Heartbeat now instead of at the next interval."""
        self._wake.set()

    def run(self) -> None:
        """Heartbeat until ``stop()``."""
        while not self._stopped.is_set():
            delay = self.beat()
            self._wake.wait(delay)
            self._wake.clear()

    def start(self) -> None:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, *, join: bool = True) -> None:
        """Stop heartbeating (waits for the thread a short while unless ``join`` is False)."""
        self._stopped.set()
        self._wake.set()
        if join and self._thread is not None:
            self._thread.join(timeout=REQUEST_TIMEOUT + 5)
