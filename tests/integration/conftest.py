"""Integration fixtures: the real ``ironworks serve`` as a subprocess on a free loopback port.

``ironworks_server`` is a factory: each call starts one server with a fresh state directory (SQLite
inside it) and optional extra environment (``IRONWORKS_<SECTION>_<KEY>``), waits until ``GET /``
answers, and returns an ``IronworksServer``. Every server a test started is stopped by its PID at
teardown (SIGTERM, then SIGKILL after a bound), also when the test fails. The server only ever binds
127.0.0.1; its stdout and stderr go to ``server.log`` beside the state directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import pytest

LOOPBACK = "127.0.0.1"
#: bounds, not expectations: a healthy server answers in about a second
STARTUP_BOUND_S = 60.0
STOP_GRACE_S = 20.0
#: the free-port probe races with other processes; a lost race is retried on a new port
START_ATTEMPTS = 3


def ironworks_executable() -> Path:
    """The venv's ``ironworks`` console script (next to the running interpreter)."""
    exe = Path(sys.executable).with_name("ironworks")
    if not exe.is_file():
        pytest.fail(f"the ironworks console script is missing at {exe}; install the project into this venv")
    return exe


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _clean_environ() -> dict[str, str]:
    """This process's environment without Ironworks or OpenStack settings that could leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("IRONWORKS_", "OS_"))}


@dataclass
class IronworksServer:
    """One running ``ironworks serve``."""

    url: str
    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc.strerror}>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM by PID, SIGKILL if it is still running after ``grace`` seconds; the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=grace)
        return self.process.returncode


class ServerFactory(Protocol):
    """What the ``ironworks_server`` fixture returns."""

    def __call__(self, *, env: Mapping[str, str] | None = None) -> IronworksServer: ...


def _port_lost(server: IronworksServer) -> bool:
    tail = server.log_tail(20).lower()
    return "address already in use" in tail or f"errno {errno.EADDRINUSE}" in tail


def _wait_until_answering(server: IronworksServer, *, bound: float) -> str | None:
    """None once ``GET /`` answers 200; otherwise why it did not."""
    deadline = time.monotonic() + bound
    last = "no answer yet"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            code = server.process.poll()
            if code is not None:
                return f"the server exited with code {code} before answering"
            try:
                resp = client.get(f"{server.url}/")
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    return None
                last = f"GET / answered {resp.status_code}: {resp.text[:200]}"
            time.sleep(0.1)
    return f"GET {server.url}/ did not answer within {bound:.0f} s (last: {last})"


def start_server(base_dir: Path, *, env: Mapping[str, str] | None = None) -> IronworksServer:
    """Start ``ironworks serve`` with its state under ``base_dir``; fail the test if it never answers."""
    exe = ironworks_executable()
    base_dir.mkdir(parents=True, exist_ok=True)
    # the tests' images live under pytest's base temp: let ``file://`` deploy kernels/ramdisks come from there
    allowed = {"IRONWORKS_IMAGES_ALLOWED_FILE_DIRS": str(base_dir.parent)}
    environ = {**_clean_environ(), **allowed, **(env or {})}
    for attempt in range(1, START_ATTEMPTS + 1):
        state_dir = base_dir / f"state-{attempt}"
        log_path = base_dir / f"server-{attempt}.log"
        port = free_loopback_port()
        cmd = [str(exe), "serve", "--host", LOOPBACK, "--port", str(port), "--state-dir", str(state_dir)]
        with log_path.open("wb") as log:
            # a new session keeps the terminal's Ctrl-C away; teardown signals the PID itself
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
                start_new_session=True,
            )
        server = IronworksServer(
            url=f"http://{LOOPBACK}:{port}", state_dir=state_dir, log_path=log_path, process=process
        )
        problem = _wait_until_answering(server, bound=STARTUP_BOUND_S)
        if problem is None:
            return server
        server.stop()
        if attempt < START_ATTEMPTS and _port_lost(server):
            continue
        pytest.fail(
            f"ironworks serve did not come up: {problem}.\ncommand: {' '.join(cmd)}\n"
            f"extra environment: {dict(env or {})}\n"
            f"log {log_path} (last lines):\n{server.log_tail()}",
            pytrace=False,
        )
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture
def ironworks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """A factory of running ``ironworks serve`` processes, all stopped when the test ends."""
    started: list[IronworksServer] = []

    def start(*, env: Mapping[str, str] | None = None) -> IronworksServer:
        server = start_server(tmp_path_factory.mktemp("ironworks"), env=env)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            code = server.stop()
            # captured output: pytest shows it only when the test failed
            print(f"ironworks serve pid {server.pid} exited with {code}; log {server.log_path}:")
            print(server.log_tail(60))
