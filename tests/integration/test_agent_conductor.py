"""The conductor side of the agent protocol, against a scripted agent on loopback.

The scripted agent speaks the IPA command API (token in ``agent_token``, RUNNING then SUCCEEDED,
progress while running); the test plays the ramdisk: it looks the node up, heartbeats with the
token, and the conductor drives it. (The real agent process is exercised in test_agent_*.)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import Harness, make_config

MAC = "52:54:00:ab:cd:01"


def _step(name: str, priority: int = 0, interface: str = "deploy", **argsinfo: Any) -> dict[str, Any]:
    return {
        "step": name,
        "priority": priority,
        "interface": interface,
        "reboot_requested": False,
        "abortable": False,
        "argsinfo": argsinfo or None,
    }


URL_ARG = {"description": "tarball", "required": True, "type": "string"}
#: what the generic hardware manager reports (the scripted agent's default answer to get_<kind>_steps)
GENERIC_STEPS: dict[str, list[dict[str, Any]]] = {
    "clean": [
        _step("erase_devices_metadata", 99),
        _step("erase_devices", 10),
        _step("update_firmware", url=URL_ARG),
        _step("burnin_cpu"),
        _step("burnin_memory"),
        _step("burnin_disk"),
    ],
    "service": [_step("update_firmware", url=URL_ARG), _step("burnin_cpu")],
    "deploy": [_step("write_image")],
}
VENDOR_STEP = _step("update_vendor_firmware", version={"description": "version", "required": False, "type": "string"})


class ScriptedAgent:
    """An IPA-style command API whose commands finish after ``polls`` polls.

    ``get_<kind>_steps`` answers at once with ``steps[kind]`` (recorded in ``listings``, not in
    ``calls``, which holds the commands that do work).
    """

    def __init__(
        self, polls: int = 2, fail: set[str] | None = None, steps: dict[str, list[dict[str, Any]]] | None = None
    ) -> None:
        self.token = ""
        self.polls = polls
        self.fail = fail or set()
        self.steps = steps if steps is not None else {k: list(v) for k, v in GENERIC_STEPS.items()}
        self.commands: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.listings: list[str] = []
        self.rejected = 0
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                q = parse_qs(urlparse(self.path).query)
                if q.get("agent_token", [""])[0] != agent.token:
                    agent.rejected += 1
                    self._reply(401, {"faultstring": "bad token"})
                    return False
                return True

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                ext, _, cmd = body["name"].partition(".")
                if cmd == f"get_{ext}_steps":
                    agent.listings.append(body["name"])
                    listing = {"scripted_manager": agent.steps.get(ext, [])}
                    result = {f"{ext}_steps": listing, "hardware_manager_version": {"scripted_manager": "1.0"}}
                    self._reply(200, {"id": "x", "command_status": "SUCCEEDED", "command_result": result})
                    return
                agent.calls.append((body["name"], body["params"]))
                cid = str(uuid.uuid4())
                agent.commands[cid] = {"name": body["name"], "params": body["params"], "polls": 0}
                self._reply(200, agent.result(cid))

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                cid = urlparse(self.path).path.rsplit("/", 1)[-1]
                agent.commands[cid]["polls"] += 1
                self._reply(200, agent.result(cid))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def result(self, cid: str) -> dict[str, Any]:
        cmd = self.commands[cid]
        step = (cmd["params"].get("step") or {}).get("step", "")
        done = cmd["polls"] >= self.polls
        status = "RUNNING" if not done else ("FAILED" if step in self.fail else "SUCCEEDED")
        return {
            "id": cid,
            "command_name": cmd["name"],
            "command_status": status,
            "command_error": {"message": f"{step} broke: disk on fire"} if status == "FAILED" else None,
            "command_result": {"ok": True} if status == "SUCCEEDED" else None,
            "progress": {"done": 512 * (cmd["polls"] + 1), "total": 2048, "message": "writing image"},
        }

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def agent() -> Iterator[ScriptedAgent]:
    a = ScriptedAgent()
    yield a
    a.stop()


@pytest.fixture
def h(tmp_path: Path, db_url: str) -> Iterator[Harness]:
    harness = Harness(make_config(tmp_path, db_url=db_url, conductor={"agent_poll_interval": 0.05}))
    yield harness
    harness.close()


def settle(h: Harness, node: str, until: set[str], bound: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + bound
    while True:
        h.drain()
        n = h.node(node)
        if n["provision_state"] in until or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def boot_as_agent(h: Harness, agent: ScriptedAgent, node: str) -> None:
    """What the ramdisk does: lookup by MAC (token), then heartbeat."""
    r = h.client.get(f"/v1/lookup?addresses={MAC.upper()}")
    assert r.status_code == 200, r.text
    assert r.json()["node"]["uuid"] == node
    agent.token = r.json()["config"]["agent_token"]
    assert len(agent.token) > 20
    again = h.client.get(f"/v1/lookup?addresses={MAC}")
    assert again.json()["config"]["agent_token"] == "******"  # handed out once
    hb = {"callback_url": agent.url, "agent_token": agent.token, "agent_version": "test-1"}
    assert h.client.post(f"/v1/heartbeat/{node}", json=hb).status_code == 202


def agent_node(h: Harness) -> str:
    node = h.create_node(
        deploy_interface="agent",
        rescue_interface="agent",
        instance_info={
            "image_source": "http://images/disk.raw",
            "image_os_hash_algo": "sha256",
            "image_os_hash_value": "ab" * 32,
        },
    )
    assert h.client.post("/v1/ports", json={"address": MAC, "node_uuid": node["uuid"]}).status_code == 201
    h.provision(node["uuid"], "manage")
    return str(node["uuid"])


def test_clean_deploy_service_rescue_through_the_agent(h: Harness, agent: ScriptedAgent) -> None:
    u = agent_node(h)
    assert h.client.get(f"/v1/lookup?addresses={MAC}").status_code == 404  # manageable: no agent expected
    n = h.provision(u, "provide")
    assert n["provision_state"] == "clean wait" and n["clean_step"]["step"] == "erase_devices_metadata"
    assert n["power_state"] == "power on"  # the ramdisk was booted
    boot_as_agent(h, agent, u)
    n = settle(h, u, {"available", "clean failed"})
    assert n["provision_state"] == "available", n["last_error"]
    assert n["power_state"] == "power off"  # cleaning tore the ramdisk down
    assert [c[0] for c in agent.calls] == ["clean.execute_clean_step"]
    assert agent.calls[0][1]["step"]["step"] == "erase_devices_metadata"

    n = h.provision(u, "active")
    assert n["provision_state"] == "wait call-back"
    boot_as_agent(h, agent, u)  # a fresh boot gets a fresh token
    n = settle(h, u, {"active", "deploy failed"})
    assert n["provision_state"] == "active", n["last_error"]
    names = [c[0] for c in agent.calls]
    assert names[-1] == "standby.prepare_image"
    image_info = agent.calls[-1][1]["image_info"]
    assert image_info["urls"] == ["http://images/disk.raw"] and image_info["os_hash_algo"] == "sha256"
    history = h.client.get(f"/v1/nodes/{u}/history").json()["history"]
    assert any(e["event_type"] == "step.progress" and "writing image" in e["event"] for e in history)
    steps = [e["data"]["step"] for e in history if e["event_type"] == "step.end" and e["data"]["kind"] == "deploy"]
    assert steps == [
        "deploy.deploy",
        "deploy.write_image",
        "deploy.prepare_instance_boot",
        "deploy.tear_down_agent",
        "deploy.boot_instance",
    ]
    assert n["power_state"] == "power on"

    fw = [{"interface": "deploy", "step": "update_firmware", "args": {"url": "http://fw/update.tgz"}}]
    n = h.provision(u, "service", service_steps=fw)
    assert n["provision_state"] == "service wait"
    boot_as_agent(h, agent, u)
    n = settle(h, u, {"active", "service failed"})
    assert n["provision_state"] == "active", n["last_error"]
    assert agent.calls[-1][0] == "service.execute_service_step"
    assert agent.calls[-1][1]["step"]["args"] == {"url": "http://fw/update.tgz"}

    n = h.provision(u, "rescue", rescue_password="hunter2")
    assert n["provision_state"] == "rescue wait"
    boot_as_agent(h, agent, u)
    n = settle(h, u, {"rescue", "rescue failed"})
    assert n["provision_state"] == "rescue", n["last_error"]
    assert agent.calls[-1] == ("rescue.finalize_rescue", {"rescue_password": "hunter2"})
    assert h.provision(u, "unrescue")["provision_state"] == "active"


def test_bad_tokens_and_lookups_are_refused(h: Harness, agent: ScriptedAgent) -> None:
    u = agent_node(h)
    h.provision(u, "provide")
    r = h.client.post(f"/v1/heartbeat/{u}", json={"callback_url": agent.url, "agent_token": "guess"})
    assert r.status_code == 401 and "agent token" in r.text
    r = h.client.post(f"/v1/heartbeat/{u}", json={"callback_url": agent.url})
    assert r.status_code == 401
    r = h.client.post(f"/v1/heartbeat/{u}", json={"callback_url": "not a url", "agent_token": "x"})
    assert r.status_code == 400 and "callback_url" in r.text
    assert h.client.get("/v1/lookup?addresses=52:54:00:00:00:99").status_code == 404
    assert h.client.get("/v1/lookup?addresses=zz").status_code == 400
    assert h.client.get("/v1/lookup").status_code == 400


def test_failed_agent_step_fails_cleaning_with_its_message(h: Harness) -> None:
    agent = ScriptedAgent(fail={"update_firmware"})
    try:
        u = agent_node(h)
        steps = [{"interface": "deploy", "step": "update_firmware", "args": {"url": "http://fw/bad.tgz"}}]
        h.provision(u, "clean", clean_steps=steps)
        boot_as_agent(h, agent, u)
        n = settle(h, u, {"manageable", "clean failed"})
        assert n["provision_state"] == "clean failed"
        assert "update_firmware broke: disk on fire" in n["last_error"]
    finally:
        agent.stop()


def test_silent_agent_fails_the_deploy(tmp_path: Path) -> None:
    h = Harness(make_config(tmp_path, conductor={"agent_poll_interval": 0.05, "agent_silence_timeout": 0.5}))
    agent = ScriptedAgent(polls=1000)
    try:
        u = agent_node(h)
        with h.rt.db.write() as s:  # skip cleaning: this test is about the deploy
            from sqlalchemy import update

            from ironworks.db.models import Node

            s.execute(update(Node).values(provision_state="available"))
        h.provision(u, "active")
        boot_as_agent(h, agent, u)
        h.drain()
        agent.stop()  # the machine dies while writing the image
        n = settle(h, u, {"deploy failed"})
        assert n["provision_state"] == "deploy failed"
        assert "stopped answering" in n["last_error"] and "agent_silence_timeout" in n["last_error"]
    finally:
        h.close()


def test_a_heartbeat_handled_after_cleaning_ended_does_not_stand_in_for_the_next_boot(
    h: Harness, agent: ScriptedAgent
) -> None:
    """The agent beats right after its last command; when the conductor gets to that heartbeat only
    after cleaning tore the ramdisk down (machine off, node available), the next deploy must still
    boot the ramdisk, not talk to the agent of the finished flow (seen on the lab: a deploy hung)."""
    from sqlalchemy import select

    from ironworks.conductor import queue
    from ironworks.db.models import Node

    u = agent_node(h)
    h.provision(u, "provide")
    boot_as_agent(h, agent, u)
    n = settle(h, u, {"available", "clean failed"})
    assert n["provision_state"] == "available" and n["power_state"] == "power off", n["last_error"]
    # the heartbeat the API accepted while the node was still cleaning, handled only now
    with h.rt.db.write() as s:
        node_id = s.execute(select(Node.id).where(Node.uuid == u)).scalar_one()
        args = {"callback_url": agent.url, "agent_version": "test-1", "agent_status": None}
        queue.enqueue(h.rt.db, s, node_id=node_id, kind="agent", name="heartbeat", args=args)
    h.drain()
    calls = len(agent.calls)
    n = h.provision(u, "active")
    assert n["provision_state"] == "wait call-back" and n["power_state"] == "power on"  # booting a ramdisk
    assert len(agent.calls) == calls, agent.calls[calls:]  # nothing was sent to the torn-down agent
    events = h.client.get(f"/v1/nodes/{u}/history").json()["history"]
    assert any(e["event"].startswith("Booting the agent ramdisk for deployment") for e in events[-5:]), events[-5:]
