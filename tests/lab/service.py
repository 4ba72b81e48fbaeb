"""Ironworks under test, running inside the lab's namespace, and the two ways a test talks to it.

The BMC emulators listen on the namespace's own 127.0.0.1, so the conductor that drives them runs
there too: ``ironworks serve --host 127.0.0.1`` started with ``ip netns exec``. A test reaches it

* in process, through ``NetnsHttpClient``: an ``httpx.Client`` whose requests run on a thread that
  joined the namespace (see ``tests.lab.netns``); responses come back to the calling thread. Nothing
  listens in the root namespace and no relay is needed.
* as an operator would, through the real ``baremetal`` CLI run with ``ip netns exec`` and
  ``OS_AUTH_TYPE=none OS_ENDPOINT=http://127.0.0.1:PORT`` (``IronworksInLab.baremetal``).
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.lab.netns import Netns
from tests.lab.processes import LabProcess, ProcessTable, log_tail, venv_executable

API_HEADERS = {"X-OpenStack-Ironic-API-Version": "1.87"}
#: bounds, not expectations: the server answers in about a second, a CLI call in one or two
STARTUP_BOUND_S = 60.0
REQUEST_BOUND_S = 120.0
CLI_BOUND_S = 120.0


class NetnsHttpClient:
    """An HTTP client whose connections are opened inside a namespace; same methods as ``httpx.Client``."""

    def __init__(self, ns: Netns, base_url: str, *, headers: Mapping[str, str] | None = None) -> None:
        self._executor: concurrent.futures.ThreadPoolExecutor = ns.executor()
        self._client = httpx.Client(base_url=base_url, headers=dict(headers or {}), timeout=REQUEST_BOUND_S)
        self._closed = False

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request from inside the namespace."""
        return self._executor.submit(self._client.request, method, url, **kwargs).result()

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """GET."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        """POST."""
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        """PUT."""
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        """PATCH."""
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        """DELETE."""
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        """Close connections and the namespace thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._client.close).result()
        self._executor.shutdown(wait=True)


@dataclass(frozen=True)
class CliResult:
    """What a user saw from one ``baremetal`` command."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"`baremetal {' '.join(self.args)}` exited {self.returncode}\n{self.stdout}\n{self.stderr}"


class IronworksInLab:
    """One ``ironworks serve`` inside the namespace (SQLite in its state dir), its client and its CLI."""

    def __init__(
        self,
        procs: ProcessTable,
        workdir: Path,
        *,
        port: int,
        env: Mapping[str, str],
        host: str = "127.0.0.1",
        public_host: str | None = None,
    ) -> None:
        self.procs = procs
        self.workdir = workdir
        self.port = port
        self.host = host
        self.public_host = public_host
        self.extra_env = dict(env)
        self.state_dir = workdir / "state"
        self.process: LabProcess | None = None
        self.api = NetnsHttpClient(procs.ns, self.url, headers=API_HEADERS)

    @property
    def url(self) -> str:
        """Base URL, valid inside the namespace."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_url(self) -> str:
        """What the lab's VMs reach it at (``[api] public_url``): the bridge address when it listens there."""
        if self.public_host is None:
            raise RuntimeError(f"{self.name} listens on 127.0.0.1 only: start it with on_bridge=True for VMs")
        return f"http://{self.public_host}:{self.port}"

    @property
    def name(self) -> str:
        """The process's name in the lab's table (and of its log)."""
        return f"ironworks-{self.port}"

    def start(self) -> None:
        """Start the server and wait until ``GET /`` answers (bounded)."""
        argv = [
            str(venv_executable("ironworks")),
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
        ]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("IRONWORKS_", "OS_"))}
        self.process = self.procs.start(self.name, argv, env={**base, **self.extra_env})
        deadline = time.monotonic() + STARTUP_BOUND_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.process.exit_code()
            if code is not None:
                raise RuntimeError(f"ironworks serve exited with code {code}:\n{self.log_tail()}")
            try:
                resp = self.api.get("/", timeout=5.0)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    return
                last = f"GET / answered {resp.status_code}"
            time.sleep(0.1)
        raise RuntimeError(
            f"ironworks serve did not answer on {self.url} in the namespace ({last}):\n{self.log_tail()}"
        )

    def baremetal(self, *args: str) -> CliResult:
        """Run the real ``baremetal`` CLI inside the namespace against this server (no auth)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update({"OS_AUTH_TYPE": "none", "OS_ENDPOINT": self.url})
        proc = self.procs.ns.run([str(venv_executable("baremetal")), *args], env=env, timeout=CLI_BOUND_S)
        return CliResult(tuple(args), proc.returncode, proc.stdout, proc.stderr)

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's log."""
        return log_tail(self.procs.log_dir / f"{self.name}.log", lines)

    def stop(self) -> None:
        """Close the client; stop the server by its PID."""
        self.api.close()
        if self.process is not None:
            self.procs.stop(self.process, grace=20.0)
            self.process = None
