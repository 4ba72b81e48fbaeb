"""Rescue in the built ramdisk on TCG: ``rescue.finalize_rescue`` through the agent's API, then logins.

The ramdisk boots inside a network namespace this test creates (test_ramdisk_build's ``lab``: taps,
dnsmasq there). A small lookup/heartbeat API written here answers the agent from inside the same
namespace; the test sends ``rescue.finalize_rescue`` to the agent's command API, then logs in as
``rescue`` with OpenSSH's ``ssh`` (sshd in the ramdisk) (password through ``SSH_ASKPASS``) and on the serial console (a
unix socket of qemu's), and checks that a wrong password and root are refused. Every wait is
bounded; qemu and dnsmasq are stopped by their PIDs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.test_ramdisk_build import (  # noqa: F401  (fixtures)
    BOOT_BOUND_S,
    BUILD_BOUND_S,
    MAC_VIRTIO,
    Built,
    Lab,
    _wait_for,
    built,
    lab,
)

NODE = "7d2c9a52-4f60-4c7e-9a51-3c0f3b6a4e11"
TOKEN = "rescue-test-agent-token-0123456789"
PASSWORD = "Rescue-pw-4711"
API_HOST, API_PORT = "10.99.0.1", 6385
SSH_BOUND_S = 120.0
pytestmark = pytest.mark.timeout(BUILD_BOUND_S + 900)


@dataclass
class FakeApi:
    """What the ramdisk's agent asked of the API."""

    lookups: int = 0
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    beat: threading.Condition = field(default_factory=threading.Condition)

    def wait_heartbeat(self) -> dict[str, Any]:
        """The first heartbeat (bounded)."""
        with self.beat:
            if not self.beat.wait_for(lambda: bool(self.heartbeats), timeout=BOOT_BOUND_S):
                pytest.fail(f"no heartbeat within {BOOT_BOUND_S:g} s ({self.lookups} lookups)")
            return self.heartbeats[0]


def _serve(api: FakeApi) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _json(self, status: int, doc: Any) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if urlsplit(self.path).path != "/v1/lookup":
                self._json(404, {})
                return
            api.lookups += 1
            node = {"uuid": NODE, "properties": {}, "instance_info": {}, "driver_internal_info": {}}
            self._json(200, {"node": node, "config": {"heartbeat_timeout": 60, "agent_token": TOKEN}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with api.beat:
                api.heartbeats.append(body)
                api.beat.notify_all()
            self._json(202, {})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((API_HOST, API_PORT), Handler)
    httpd.daemon_threads = True
    return httpd


@dataclass
class Rescue:
    """The booted ramdisk: its console, its serial socket, the agent's URL, the namespace's executor."""

    lab: Lab
    qemu: subprocess.Popen[bytes]
    console: Path
    serial: Path
    api: FakeApi
    netns: ThreadPoolExecutor
    agent_url: str = ""

    def command(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """POST a command to the agent from inside the namespace and wait for its result."""

        def post() -> dict[str, Any]:
            req = urllib.request.Request(
                f"{self.agent_url}/v1/commands/?wait=true&agent_token={TOKEN}",
                data=json.dumps({"name": name, "params": params}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=120) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
                return doc

        return self.netns.submit(post).result(timeout=180)

    def ssh(self, user: str, password: str, command: str) -> subprocess.CompletedProcess[str]:
        """OpenSSH's client from inside the namespace; the password comes from an askpass script."""
        askpass = self.lab.workdir / "askpass.sh"
        if not askpass.exists():
            askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$IW_TEST_PASSWORD"\n')
            askpass.chmod(stat.S_IRWXU)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSH_ASKPASS": str(askpass),
               "SSH_ASKPASS_REQUIRE": "force", "IW_TEST_PASSWORD": password}  # fmt: skip
        host = urlsplit(self.agent_url).hostname or ""
        argv = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
                "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
                "-l", user, host, command]  # fmt: skip
        return self.lab.ns.run(argv, env=env, timeout=SSH_BOUND_S)


def _qemu(console: Path, serial: Path, append: str, kernel: Path, initramfs: Path) -> list[str]:
    return [
        "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "1024", "-smp", "1",
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-chardev", f"socket,id=con0,path={serial},server=on,wait=off,logfile={console}", "-serial", "chardev:con0",
        "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC_VIRTIO}",
        "-kernel", str(kernel), "-initrd", str(initramfs), "-append", append,
    ]  # fmt: skip


@pytest.fixture
def rescue(built: Built, lab: Lab) -> Iterator[Rescue]:  # noqa: F811
    if shutil.which("ssh") is None:
        pytest.fail("ssh is missing: ./dev.sh setup installs openssh-client")
    api = FakeApi()
    netns = lab.ns.executor()
    httpd = netns.submit(_serve, api).result(timeout=30)  # its socket is opened inside the namespace
    server = threading.Thread(target=httpd.serve_forever, daemon=True)
    server.start()
    console, serial = lab.workdir / "console.log", lab.workdir / "serial.sock"
    append = (f"console=tty0 console=ttyS0,115200 ipa-api-url=http://{API_HOST}:{API_PORT} "
              "ipa-heartbeat-timeout=60")  # fmt: skip
    qemu = lab.start(_qemu(console, serial, append, built.kernel, built.initramfs), lab.workdir / "qemu.log")
    try:
        yield Rescue(lab, qemu, console, serial, api, netns)
    finally:
        httpd.shutdown()
        httpd.server_close()
        netns.shutdown(wait=True)


class SerialConsole:
    """The guest's ttyS0 through qemu's unix socket: type lines, read until a pattern shows."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2)
        self.sock.connect(str(path))
        self.seen = ""

    def type(self, line: str) -> None:
        """Send ``line`` and a carriage return, as a terminal would."""
        self.sock.sendall(line.encode() + b"\r")

    def expect(self, pattern: str, bound: float = SSH_BOUND_S) -> str:
        """Everything read since the last match, once ``pattern`` shows (bounded)."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            match = re.search(pattern, self.seen)
            if match:
                before, self.seen = self.seen[: match.end()], self.seen[match.end() :]
                return before
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if not data:
                break
            self.seen += data.decode(errors="replace")
        pytest.fail(f"{pattern!r} did not show on the serial console; last output:\n{self.seen[-2000:]}")

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def test_finalize_rescue_opens_ssh_and_console_logins_for_rescue_only(rescue: Rescue) -> None:
    beat = rescue.api.wait_heartbeat()
    rescue.agent_url = str(beat["callback_url"]).rstrip("/")
    assert re.match(r"http://10\.99\.0\.\d+:9999$", rescue.agent_url), beat

    before = rescue.ssh("rescue", PASSWORD, "true")  # nothing listens for logins yet
    assert before.returncode == 255 and "refused" in before.stderr, before.stderr
    assert " login:" not in rescue.console.read_text(errors="replace")

    result = rescue.command("rescue.finalize_rescue", {"rescue_password": PASSWORD})
    assert result["command_status"] == "SUCCEEDED", result
    text = _wait_for(rescue.console, rescue.qemu, r"ironworks-init: SSH server on port 22")
    assert "ironworks-init: the rescue password is set: opening logins for user rescue" in text
    assert "ironworks-init: login prompt on ttyS0" in text and "ironworks-init: login prompt on tty1" in text
    assert re.search(r"ironworks-init: SSH server on port 22 .*: ssh rescue@10\.99\.0\.\d+", text), text[-2000:]
    assert PASSWORD not in text  # the password is never echoed

    deadline = time.monotonic() + SSH_BOUND_S  # dropbear starts in the background: bounded retries
    while True:
        ok = rescue.ssh("rescue", PASSWORD, "id; echo shell-$((6 * 7)); ps")
        if ok.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert ok.returncode == 0, ok.stderr
    assert "uid=1000(rescue) gid=1000(rescue)" in ok.stdout and "shell-42" in ok.stdout, ok.stdout
    assert re.search(r"getty -L 115200 ttyS0", ok.stdout) and re.search(r"getty -L 115200 tty1", ok.stdout)

    wrong = rescue.ssh("rescue", PASSWORD + "x", "echo should-not-run")
    assert wrong.returncode == 255 and "should-not-run" not in wrong.stdout
    assert "Permission denied" in wrong.stderr, wrong.stderr
    root = rescue.ssh("root", PASSWORD, "echo should-not-run")
    assert root.returncode == 255 and "should-not-run" not in root.stdout
    assert "Permission denied" in root.stderr, root.stderr

    serial = SerialConsole(rescue.serial)
    try:
        serial.type("")
        serial.expect(r"ironworks-ramdisk login: ")
        serial.type("root")
        serial.expect(r"Password: ")
        serial.type(PASSWORD)
        # root's shadow entry is "*" (no password): busybox login refuses it ("bad salt") and the prompt returns
        refused = serial.expect(r"ironworks-ramdisk login: ")
        assert re.search(r"bad salt|Login incorrect", refused) and "#" not in refused, refused
        serial.type("rescue")
        serial.expect(r"Password: ")
        serial.type(PASSWORD)
        serial.type("id; echo console-$((6 * 7))")
        out = serial.expect(r"console-42")
        assert "uid=1000(rescue)" in out, out
    finally:
        serial.close()
