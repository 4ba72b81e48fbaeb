"""The agent's command API on loopback: token, busy, unknown commands, bad params, results, progress."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ironworks.agent.commands import Extension, command
from ironworks.agent.errors import AgentError
from ironworks.agent.server import AgentServer, CommandExecutor

TOKEN = "s3cret-token"


class Gate(Extension):
    """Test commands: one that blocks until released, reporting progress; typed ones; failing ones."""

    name = "test"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.executor: CommandExecutor | None = None

    @command()
    def slow(self) -> dict[str, Any]:
        assert self.executor is not None
        self.executor.report_progress({"done": 1, "total": 2})
        self.release.wait(30)
        return {"slow": "done"}

    @command(sync=True)
    def echo(self, text: str, times: int = 1, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"text": text * times, "extra": extra}

    @command()
    def broken(self) -> dict[str, Any]:
        raise AgentError("the disk is on fire", device="/dev/sdz")

    @command()
    def plain(self) -> str:
        return "not a dict"


@pytest.fixture
def agent() -> Iterator[tuple[AgentServer, Gate]]:
    gate = Gate()
    executor = CommandExecutor([gate])
    gate.executor = executor
    server = AgentServer(executor, token=TOKEN, host="127.0.0.1", port=0, wait_timeout=10)
    server.start()
    try:
        yield server, gate
    finally:
        gate.release.set()
        server.stop()


def call(
    server: AgentServer, method: str, path: str, body: Any = None, *, token: str | None = TOKEN, header: bool = False
) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{server.port}{path}"
    headers = {"Content-Type": "application/json"}
    if token is not None and header:
        headers["X-Agent-Token"] = token
    elif token is not None:
        url += ("&" if "?" in url else "?") + f"agent_token={token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_status_needs_no_token(agent: tuple[AgentServer, Gate]) -> None:
    status, doc = call(agent[0], "GET", "/v1/status", token=None)
    assert status == 200 and set(doc) == {"started_at", "version"}


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x"])
def test_commands_need_the_token(agent: tuple[AgentServer, Gate], token: str | None) -> None:
    for method, path, body in [("GET", "/v1/commands/", None), ("POST", "/v1/commands/", {"name": "test.echo"})]:
        status, doc = call(agent[0], method, path, body, token=token)
        assert status == 401 and "agent_token" in doc["faultstring"]


def test_token_in_query_or_header(agent: tuple[AgentServer, Gate]) -> None:
    body = {"name": "test.echo", "params": {"text": "ab", "times": 2}}
    for header in (False, True):
        status, doc = call(agent[0], "POST", "/v1/commands/?wait=true", body, header=header)
        assert status == 200
        assert doc["command_status"] == "SUCCEEDED" and doc["command_result"] == {"text": "abab", "extra": None}
        assert doc["command_name"] == "test.echo" and doc["command_error"] is None


def test_unknown_command_lists_the_known_ones(agent: tuple[AgentServer, Gate]) -> None:
    status, doc = call(agent[0], "POST", "/v1/commands/", {"name": "test.nope", "params": {}})
    assert status == 400
    assert (
        "unknown command 'test.nope'" in doc["faultstring"] and "test.echo, test.plain, test.slow" in doc["faultstring"]
    )


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({}, "missing parameter 'text'"),
        ({"text": "a", "colour": "red"}, "unknown parameter 'colour'"),
        ({"text": 5}, "parameter 'text' must be str, got int"),
        ({"text": "a", "times": True}, "parameter 'times' must be int, got bool"),
        ({"text": "a", "extra": []}, "parameter 'extra' must be"),
        ("text", "params must be a JSON object"),
    ],
)
def test_bad_params_are_named(agent: tuple[AgentServer, Gate], params: Any, says: str) -> None:
    status, doc = call(agent[0], "POST", "/v1/commands/?wait=true", {"name": "test.echo", "params": params})
    assert status == 400 and says in doc["faultstring"]


def test_one_command_at_a_time_with_progress(agent: tuple[AgentServer, Gate]) -> None:
    server, gate = agent
    status, running = call(server, "POST", "/v1/commands/?wait=false", {"name": "test.slow", "params": {}})
    assert status == 200 and running["command_status"] == "RUNNING"
    status, doc = call(server, "POST", "/v1/commands/?wait=true", {"name": "test.echo", "params": {"text": "x"}})
    assert status == 409
    assert "busy running test.slow" in doc["faultstring"] and "agent is busy" in doc["faultstring"].lower()
    for _ in range(100):  # the command reports progress from its thread
        status, doc = call(server, "GET", f"/v1/commands/{running['id']}")
        if doc["progress"]:
            break
        threading.Event().wait(0.05)
    assert doc["command_status"] == "RUNNING" and doc["progress"] == {"done": 1, "total": 2}
    gate.release.set()
    assert server.executor.get(running["id"]).done.wait(10)
    status, doc = call(server, "GET", f"/v1/commands/{running['id']}")
    assert doc["command_status"] == "SUCCEEDED" and doc["command_result"] == {"slow": "done"}
    status, doc = call(server, "POST", "/v1/commands?wait=true", {"name": "test.echo", "params": {"text": "x"}})
    assert status == 200 and doc["command_status"] == "SUCCEEDED"
    status, listing = call(server, "GET", "/v1/commands/")
    assert [c["command_name"] for c in listing["commands"]] == ["test.slow", "test.echo"]


def test_failures_and_non_dict_results(agent: tuple[AgentServer, Gate]) -> None:
    status, doc = call(agent[0], "POST", "/v1/commands/?wait=true", {"name": "test.broken"})
    assert status == 200 and doc["command_status"] == "FAILED" and doc["command_result"] is None
    assert doc["command_error"] == {
        "type": "AgentError",
        "message": "the disk is on fire",
        "details": {"reason": "agent_error", "device": "/dev/sdz"},
    }
    status, doc = call(agent[0], "POST", "/v1/commands/?wait=true", {"name": "test.plain"})
    assert doc["command_result"] == {"result": "not a dict"}


def test_unknown_command_id_and_paths(agent: tuple[AgentServer, Gate]) -> None:
    assert call(agent[0], "GET", "/v1/commands/nope")[0] == 404
    assert call(agent[0], "GET", "/v2/things")[0] == 404
    status, doc = call(agent[0], "POST", "/v1/commands/", ["not", "an", "object"])
    assert status == 400 and "JSON object" in doc["faultstring"]


def test_history_is_bounded() -> None:
    gate = Gate()
    executor = CommandExecutor([gate], max_history=2)
    for _ in range(3):
        result, _sync = executor.submit("test.echo", {"text": "x"})
        assert result.done.wait(10)
    assert len(executor.list()) == 2
