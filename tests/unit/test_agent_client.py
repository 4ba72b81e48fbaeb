"""Lookup and heartbeats against canned API answers (no network, no sleeps)."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

from ironworks.agent.client import (
    AgentTokenError,
    ApiClient,
    ApiUnreachable,
    Heartbeater,
    HeartbeatFailed,
    HeartbeatRejected,
    HttpResponse,
    LookupFailed,
)
from tests.fakes import Clock as FakeClock

API = "http://api.test:6385"
NODE = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"


def lookup_body(token: str | None = "tok-1", hb: float = 300) -> HttpResponse:
    config: dict[str, Any] = {"heartbeat_timeout": hb, "agent_token_required": True}
    if token is not None:
        config["agent_token"] = token
    node = {"uuid": NODE, "properties": {}, "instance_info": {}, "driver_internal_info": {}}
    return HttpResponse(200, json.dumps({"node": node, "config": config}).encode())


class FakeTransport:
    """Answers requests from a queue; an exception in the queue is raised."""

    def __init__(self, *answers: HttpResponse | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str, dict[str, str], bytes | None]] = []

    def __call__(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> HttpResponse:
        self.requests.append((method, url, headers, body))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(transport: FakeTransport, clock: FakeClock | None = None) -> ApiClient:
    clock = clock or FakeClock()
    return ApiClient(API + "/", transport=transport, clock=clock, sleep=clock.sleep)


def test_lookup_retries_404_and_network_errors_with_backoff() -> None:
    not_yet = HttpResponse(404, b'{"error_message": "{\\"faultstring\\": \\"Node not found\\"}"}')
    transport = FakeTransport(not_yet, ApiUnreachable("refused"), not_yet, lookup_body())
    clock = FakeClock()
    found = client(transport, clock).lookup(["52:54:00:aa:bb:cc", "52:54:00:dd:ee:ff"], timeout=60)
    assert found.node_uuid == NODE and found.agent_token == "tok-1" and found.heartbeat_timeout == 300
    assert clock.sleeps == [1.0, 2.0, 4.0]
    method, url, headers, _ = transport.requests[0]
    assert method == "GET"
    assert url == f"{API}/v1/lookup?addresses=52%3A54%3A00%3Aaa%3Abb%3Acc%2C52%3A54%3A00%3Add%3Aee%3Aff"
    assert headers["X-OpenStack-Ironic-API-Version"] == "1.87"


def test_lookup_gives_up_at_the_timeout_saying_why() -> None:
    clock = FakeClock()
    transport = FakeTransport(HttpResponse(404, b'{"error_message": "{\\"faultstring\\": \\"Node not found\\"}"}'))
    with pytest.raises(LookupFailed, match=r"within 10 s \(last answer: HTTP 404: Node not found\)"):
        client(transport, clock).lookup(["52:54:00:aa:bb:cc"], timeout=10)
    assert sum(clock.sleeps) == pytest.approx(10)


def test_lookup_bad_request_is_not_retried() -> None:
    transport = FakeTransport(HttpResponse(400, b'{"error_message": "bad addresses"}'))
    with pytest.raises(LookupFailed, match="refused the lookup request: bad addresses"):
        client(transport).lookup(["x"], timeout=60)
    assert len(transport.requests) == 1


def test_token_choice() -> None:
    assert (
        client(FakeTransport(lookup_body("******"))).lookup(["m"], timeout=1, pregenerated_token="pre").agent_token
        == "pre"
    )
    assert (
        client(FakeTransport(lookup_body("new"))).lookup(["m"], timeout=1, pregenerated_token="pre").agent_token
        == "pre"
    )
    with pytest.raises(AgentTokenError, match=r"already handed out.*ipa-agent-token"):
        client(FakeTransport(lookup_body("******"))).lookup(["m"], timeout=1)
    with pytest.raises(AgentTokenError, match="no agent token"):
        client(FakeTransport(lookup_body(None))).lookup(["m"], timeout=1)


def test_heartbeat_timeout_override_and_validation() -> None:
    assert (
        client(FakeTransport(lookup_body(hb=120))).lookup(["m"], timeout=1, heartbeat_timeout=30).heartbeat_timeout
        == 30
    )
    with pytest.raises(LookupFailed, match="invalid heartbeat_timeout"):
        client(FakeTransport(lookup_body(hb=-5))).lookup(["m"], timeout=1)
    with pytest.raises(LookupFailed, match=r"without node\.uuid"):
        client(FakeTransport(HttpResponse(200, b"{}"))).lookup(["m"], timeout=1)


def test_heartbeat_request_and_errors() -> None:
    transport = FakeTransport(HttpResponse(202, b""))
    api = client(transport)
    api.heartbeat(NODE, "http://10.0.0.5:9999", "tok", "0.1.0", "start")
    method, url, headers, body = transport.requests[0]
    assert (method, url) == ("POST", f"{API}/v1/heartbeat/{NODE}")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body or b"") == {
        "callback_url": "http://10.0.0.5:9999",
        "agent_token": "tok",
        "agent_version": "0.1.0",
        "agent_status": "start",
    }
    transport.answers = [HttpResponse(401, b'{"error_message": "{\\"faultstring\\": \\"Unknown token\\"}"}')]
    with pytest.raises(HeartbeatRejected, match="HTTP 401: Unknown token"):
        api.heartbeat(NODE, "u", "bad", "0.1.0")
    transport.answers = [HttpResponse(409, b"")]
    with pytest.raises(HeartbeatFailed) as info:
        api.heartbeat(NODE, "u", "tok", "0.1.0")
    assert info.value.status == 409 and not isinstance(info.value, HeartbeatRejected)


def beater(transport: FakeTransport, rand_values: list[float]) -> Heartbeater:
    calls: list[tuple[float, float]] = []

    def rand(lo: float, hi: float) -> float:
        calls.append((lo, hi))
        return lo + (hi - lo) * rand_values[len(calls) - 1 if len(calls) <= len(rand_values) else -1]

    hb = Heartbeater(
        client(transport), node_uuid=NODE, callback_url="http://a:1", token="t", heartbeat_timeout=100,
        agent_version="0.1.0", rand=rand,
    )  # fmt: skip
    hb.rand_calls = calls  # type: ignore[attr-defined]
    return hb


def test_heartbeat_interval_is_a_jittered_fraction_of_the_timeout() -> None:
    hb = beater(FakeTransport(HttpResponse(202, b"")), [0.0, 1.0, 0.5])
    assert [hb.beat(), hb.beat(), hb.beat()] == [pytest.approx(30), pytest.approx(60), pytest.approx(45)]
    assert hb.rand_calls == [(0.3, 0.6)] * 3  # type: ignore[attr-defined]
    assert hb.beats == 3


def test_failed_heartbeats_retry_sooner_and_a_refused_token_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    transport = FakeTransport(
        HttpResponse(401, b""), HttpResponse(503, b""), ApiUnreachable("down"), HttpResponse(403, b""),
        HttpResponse(500, b""), HttpResponse(500, b""), HttpResponse(202, b""),
    )  # fmt: skip
    hb = beater(transport, [0.5])  # regular interval 45 s
    with caplog.at_level(logging.WARNING):
        delays = [hb.beat() for _ in range(7)]
    assert delays == pytest.approx([2, 4, 8, 16, 30, 30, 45])  # doubling, capped at 30 s and at the regular interval
    refused = [r for r in caplog.records if "REFUSED THIS AGENT'S TOKEN" in r.getMessage()]
    assert len(refused) == 2 and all(r.levelno == logging.ERROR for r in refused)
    assert hb.beats == 1


def test_heartbeat_thread_beats_at_once_and_again_when_forced() -> None:
    seen = threading.Semaphore(0)

    class Counting(FakeTransport):
        def __call__(self, method: str, url: str, **kw: Any) -> HttpResponse:
            answer = super().__call__(method, url, **kw)
            seen.release()
            return answer

    hb = beater(Counting(HttpResponse(202, b"")), [0.5])  # next regular beat in 45 s
    hb.start()
    try:
        assert seen.acquire(timeout=10)  # the first heartbeat goes out at start
        hb.force()
        assert seen.acquire(timeout=10)  # and a forced one without waiting 45 s
    finally:
        hb.stop()
    assert hb.beats == 2
