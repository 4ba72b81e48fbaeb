"""The agent as a real process on loopback, against a minimal fake lookup/heartbeat API written here.

Checks the protocol end to end: lookup (retried while the API does not know the node yet) → heartbeat
with the token → the command API with that token (401 without it, 409 while busy), inventory, clean
steps, and an image written to an allowlisted file while the conductor watches its progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.conftest import LOOPBACK, free_loopback_port

NODE = "6a1f8b4e-1c0d-4a7b-9e57-3c1f0b2d9a11"
TOKEN = "agent-token-0123456789abcdef"
IMAGE = bytes(range(256)) * 4096 * 24  # 24 MiB: the agent reports progress per 8 MiB chunk
BOUND_S = 30.0  # bounds, not expectations


@dataclass
class FakeApi:
    """Lookup (404 on the first call), heartbeats recorded, and an image whose second half waits."""

    lookups: list[dict[str, list[str]]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    release_image: threading.Event = field(default_factory=threading.Event)
    beat: threading.Condition = field(default_factory=threading.Condition)
    port: int = 0

    def wait_heartbeats(self, count: int) -> list[dict[str, Any]]:
        with self.beat:
            assert self.beat.wait_for(lambda: len(self.heartbeats) >= count, BOUND_S), "no heartbeat in time"
            return list(self.heartbeats)


def serve_fake_api(api: FakeApi) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _json(self, status: int, doc: Any) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/v1/lookup":
                api.lookups.append(parse_qs(url.query))
                assert self.headers["X-OpenStack-Ironic-API-Version"] == "1.87"
                if len(api.lookups) == 1:
                    self._json(404, {"error_message": json.dumps({"faultstring": "Node not found"})})
                    return
                node = {"uuid": NODE, "properties": {}, "instance_info": {}, "driver_internal_info": {}}
                config = {"heartbeat_timeout": 300, "agent_token": TOKEN, "agent_token_required": True}
                self._json(200, {"node": node, "config": config})
            elif url.path == "/images/disk.raw":
                self.send_response(200)
                self.send_header("Content-Length", str(len(IMAGE)))
                self.end_headers()
                half = 5 * len(IMAGE) // 8  # more than one chunk before the pause
                self.wfile.write(IMAGE[:half])
                self.wfile.flush()
                api.release_image.wait(BOUND_S)
                self.wfile.write(IMAGE[half:])
            else:
                self._json(404, {})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != f"/v1/heartbeat/{NODE}":
                self._json(404, {})
                return
            with api.beat:
                api.heartbeats.append(body)
                api.beat.notify_all()
            self._json(202, {}) if body.get("agent_token") == TOKEN else self._json(401, {})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    httpd.daemon_threads = True
    api.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return httpd


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN) -> tuple[int, Any]:
        url = f"http://{LOOPBACK}:{self.port}{path}"
        if token is not None:
            url += ("&" if "?" in url else "?") + f"agent_token={token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=BOUND_S) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def command(self, name: str, params: dict[str, Any], *, wait: bool = True) -> dict[str, Any]:
        status, doc = self.call(
            "POST", f"/v1/commands/?wait={'true' if wait else 'false'}", {"name": name, "params": params}
        )
        assert status == 200, (status, doc)
        return dict(doc)


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    httpd = serve_fake_api(api)
    try:
        yield api
    finally:
        api.release_image.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def agent(fake_api: FakeApi, tmp_path: Path) -> Iterator[Agent]:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (2 * len(IMAGE)))
    port = free_loopback_port()
    log = tmp_path / "agent.log"
    argv = [
        sys.executable, "-m", "ironworks.agent",
        "--cmdline-file", os.devnull,
        "--ipa-api-url", f"http://{LOOPBACK}:{fake_api.port}",
        "--ipa-listen-host", LOOPBACK, "--ipa-advertise-host", LOOPBACK, "--ipa-advertise-port", str(port),
        "--ipa-lookup-timeout", str(BOUND_S),
        "--ironworks-device-allowlist", str(disk),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IRONWORKS_", "IPA_"))}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield Agent(proc, port, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(BOUND_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_lookup_heartbeat_and_commands(agent: Agent, fake_api: FakeApi, tmp_path: Path) -> None:
    beats = fake_api.wait_heartbeats(1)
    assert beats[0] == {
        "callback_url": f"http://{LOOPBACK}:{agent.port}",
        "agent_token": TOKEN,
        "agent_version": beats[0]["agent_version"],
        "agent_status": "start",
    }
    assert len(fake_api.lookups) == 2 and fake_api.lookups[1]["addresses"][0]  # the 404 was retried

    assert agent.call("GET", "/v1/status", token=None)[0] == 200
    for token in (None, "wrong-token"):
        status, doc = agent.call("GET", "/v1/commands/", token=token)
        assert status == 401 and "agent_token" in doc["faultstring"]
        status, _ = agent.call("POST", "/v1/commands/", {"name": "system.inventory", "params": {}}, token=token)
        assert status == 401

    disk = str(tmp_path / "disk.img")
    inventory = agent.command("system.inventory", {})
    assert inventory["command_status"] == "SUCCEEDED", inventory
    assert [d["name"] for d in inventory["command_result"]["inventory"]["disks"]] == [disk]
    assert inventory["command_result"]["inventory"]["cpu"]["count"] >= 1

    node = {"uuid": NODE, "properties": {}}
    steps = agent.command("clean.get_clean_steps", {"node": node, "ports": []})
    assert steps["command_status"] == "SUCCEEDED"
    generic = {s["step"]: s["priority"] for s in steps["command_result"]["clean_steps"]["generic_hardware_manager"]}
    assert generic["erase_devices_metadata"] == 99 and generic["erase_devices"] == 10
    assert "generic_hardware_manager" in steps["command_result"]["hardware_manager_version"]

    status, doc = agent.call("POST", "/v1/commands/", {"name": "clean.get_clean_steps", "params": {"node": node}})
    assert status == 400 and "missing parameter 'ports'" in doc["faultstring"]

    beats_before = len(fake_api.heartbeats)
    image_info = {
        "id": "img-1",
        "urls": [f"http://{LOOPBACK}:{fake_api.port}/images/disk.raw"],
        "disk_format": "raw",
        "os_hash_algo": "sha256",
        "os_hash_value": hashlib.sha256(IMAGE).hexdigest(),
    }
    running = agent.command("standby.prepare_image", {"image_info": image_info}, wait=False)
    assert running["command_status"] == "RUNNING"
    status, doc = agent.call("POST", "/v1/commands/?wait=true", {"name": "system.inventory", "params": {}})
    assert status == 409 and "busy running standby.prepare_image" in doc["faultstring"]
    deadline = time.monotonic() + BOUND_S
    while True:  # the conductor sees bytes written while the image downloads
        _, doc = agent.call("GET", f"/v1/commands/{running['id']}")
        if doc["progress"].get("done") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert doc["command_status"] == "RUNNING" and 0 < doc["progress"]["done"] <= len(IMAGE)
    fake_api.release_image.set()
    while doc["command_status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
        _, doc = agent.call("GET", f"/v1/commands/{running['id']}")
    assert doc["command_status"] == "SUCCEEDED", doc
    assert doc["command_result"]["device"] == disk
    assert (tmp_path / "disk.img").read_bytes()[: len(IMAGE)] == IMAGE
    fake_api.wait_heartbeats(beats_before + 1)  # a finished command is announced without waiting an interval

    _, listing = agent.call("GET", "/v1/commands/")
    assert [c["command_name"] for c in listing["commands"]] == [
        "system.inventory",
        "clean.get_clean_steps",
        "standby.prepare_image",
    ]
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(BOUND_S) == 0, agent.log.read_text()
