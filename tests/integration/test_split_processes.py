"""The scale-out shape: `ironworks api` and two `ironworks conductor` processes on one PostgreSQL.

Proves that intents cross processes through the database (NOTIFY wakes a conductor at once), that
the hash ring splits the nodes between live conductors, and that when a conductor is killed the
other takes over its nodes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import free_loopback_port, ironworks_executable

HEADERS = {"X-OpenStack-Ironic-API-Version": "1.87"}


class Procs:
    """Processes started by one test, stopped by PID at the end."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env, self.procs = tmp, env, []  # type: list[subprocess.Popen[bytes]]

    def start(self, name: str, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
            p = subprocess.Popen(
                [str(ironworks_executable()), *args],
                env={**self.env, **(extra or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=20)


@pytest.fixture
def procs(tmp_path: Path, pg_url: str) -> Iterator[Procs]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("IRONWORKS_", "OS_"))}
    env = {
        **base_env,
        "IRONWORKS_DATABASE_URL": pg_url,
        "IRONWORKS_STATE_DIR": str(tmp_path / "state"),
        "IRONWORKS_CONDUCTOR_HEARTBEAT_INTERVAL": "1",
        "IRONWORKS_CONDUCTOR_DEAD_AFTER": "4",
        # a long poll interval: prompt work can only come from NOTIFY wake-ups
        "IRONWORKS_CONDUCTOR_POLL_INTERVAL": "30",
        "IRONWORKS_CONDUCTOR_POWER_SYNC_INTERVAL": "3600",
    }
    p = Procs(tmp_path, env)
    try:
        yield p
    finally:
        p.stop_all()


def wait_for(check: Any, what: str, bound: float = 60) -> Any:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not reached within {bound:.0f}s: {what}")


def test_api_and_two_conductors_share_the_fleet(procs: Procs) -> None:
    exe = str(ironworks_executable())
    up = subprocess.run([exe, "db", "upgrade"], env=procs.env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    port = free_loopback_port()
    procs.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    c1 = procs.start("c1", "conductor", extra={"IRONWORKS_CONDUCTOR_HOSTNAME": "cond-1"})
    procs.start("c2", "conductor", extra={"IRONWORKS_CONDUCTOR_HOSTNAME": "cond-2"})
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as client:
        _exercise(procs, client, c1)


def _exercise(procs: Procs, client: httpx.Client, c1: subprocess.Popen[bytes]) -> None:

    def api_up() -> bool:
        try:
            return client.get("/").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(api_up, f"the API answering; log: {procs.log('api')}")
    wait_for(lambda: len(client.get("/v1/drivers").json()["drivers"][0]["hosts"]) == 2, "both conductors online")

    uuids = [client.post("/v1/nodes", json={"driver": "fake-hardware"}).json()["uuid"] for _ in range(20)]
    owners = {client.get(f"/v1/nodes/{u}").json()["conductor"] for u in uuids}
    assert owners == {"cond-1", "cond-2"}  # the ring spreads nodes over both

    for u in uuids:
        assert client.put(f"/v1/nodes/{u}/states/provision", json={"target": "manage"}).status_code == 202

    def all_in(state: str) -> bool:
        nodes = client.get("/v1/nodes?fields=uuid,provision_state&limit=100").json()["nodes"]
        return all(n["provision_state"] == state for n in nodes)

    # the conductors poll only every 30 s: reaching manageable sooner shows NOTIFY woke them
    started = time.monotonic()
    wait_for(lambda: all_in("manageable"), "all nodes manageable", bound=25)
    assert time.monotonic() - started < 25
    handled = {
        e["conductor"]
        for u in uuids
        for e in client.get(f"/v1/nodes/{u}/history").json()["history"]
        if e["event_type"] == "provision" and e["conductor"]
    }
    assert handled == {"cond-1", "cond-2"}

    # one conductor dies without saying goodbye; the survivor takes over every node
    os.kill(c1.pid, signal.SIGKILL)
    c1.wait(timeout=20)
    wait_for(lambda: client.get("/v1/drivers").json()["drivers"][0]["hosts"] == ["cond-2"], "cond-1 declared dead")
    wait_for(
        lambda: {client.get(f"/v1/nodes/{u}").json()["conductor"] for u in uuids} == {"cond-2"},
        "every node owned by cond-2",
    )
    for u in uuids:
        assert client.put(f"/v1/nodes/{u}/states/provision", json={"target": "provide"}).status_code == 202
    wait_for(lambda: all_in("available"), f"all nodes available; cond-2 log: {procs.log('c2')}", bound=40)
