"""The server under test: an ``ironworks serve`` started for one run, or a URL given by the operator.

Either way the benchmark gets a base URL and, when it knows the server's process, its resident
memory (``VmRSS`` of the process and its descendants, read from ``/proc``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

#: Environment of the started server: no periodic power sync (nothing to sync on fake hardware and it
#: would take node locks in the middle of a measurement), and quiet logs.
SERVER_ENV = {"IRONWORKS_CONDUCTOR_POWER_SYNC_INTERVAL": "3600", "IRONWORKS_LOG_LEVEL": "WARNING"}


class ServerError(Exception):
    """The server under test did not start, or died."""


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` and its descendants in MiB; ``None`` when the process is gone."""
    total_kib = 0
    found = False
    for p in (pid, *_descendants(pid)):
        kib = _vmrss_kib(p)
        if kib is not None:
            total_kib += kib
            found = True
    return total_kib / 1024 if found else None


def _vmrss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                # the command name may hold spaces and ')': the ppid is the 2nd field after the last ')'
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class IronworksServer:
    """``ironworks serve`` on a free loopback port with a fresh state dir, stopped by PID on exit."""

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.start_timeout = start_timeout
        self.url = ""
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> IronworksServer:
        exe = Path(sys.executable).parent / "ironworks"
        if not exe.exists():
            raise ServerError(f"{exe} does not exist: install Ironworks in this venv (pip install -e .).")
        self._tmp = Path(tempfile.mkdtemp(prefix="ironworks-bench-"))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # inherited IRONWORKS_* settings (a database URL, a config file) would make the run not fresh
        env = {k: v for k, v in os.environ.items() if not k.startswith("IRONWORKS_")} | SERVER_ENV
        log = open(self._tmp / "server.log", "wb")
        try:
            self._proc = subprocess.Popen(
                [
                    str(exe),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--state-dir",
                    str(self._tmp / "state"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self.pid = self._proc.pid
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise ServerError(self._exited())
                try:
                    if client.get(f"{self.url}/").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"ironworks serve did not answer GET / in {self.start_timeout:.0f} s:\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def _exited(self) -> str:
        assert self._proc is not None
        return f"ironworks serve exited with status {self._proc.returncode}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote."""
        if self._tmp is None or not (self._tmp / "server.log").exists():
            return "(no server log)"
        text = (self._tmp / "server.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(server log is empty)"

    def check_alive(self) -> None:
        """``ServerError`` with the log tail when the server has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise ServerError(self._exited())

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class ExternalServer:
    """A server the operator runs (Ironworks or Ironic) at ``url``; RSS only when its ``pid`` is given."""

    def __init__(self, url: str, pid: int | None) -> None:
        self.url = url.rstrip("/")
        self.pid = pid

    def __enter__(self) -> ExternalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def check_alive(self) -> None:
        """Nothing to check: the operator owns the process."""
