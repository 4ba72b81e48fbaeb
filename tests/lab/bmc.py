"""The BMC emulators of the lab, both inside its namespace on 127.0.0.1, both over its libvirtd.

* ``SushyEmulator``: sushy-tools' Redfish emulator with the libvirt driver (power, boot device,
  EthernetInterfaces, BIOS and firmware versions kept in the domain's metadata, SimpleUpdate,
  virtual media into pool ``default``), HTTP basic auth from a bcrypt htpasswd file. It only shows
  the domains listed in ``SUSHY_EMULATOR_ALLOWED_INSTANCES``, which must be UUIDs: the Systems
  collection uses the domain UUID as the identity, and a list of names hides everything.
* ``VirtualBmc``: ``vbmcd`` and one VirtualBMC (IPMI over UDP) per domain. ``vbmc`` talks to vbmcd
  over ZMQ on 127.0.0.1, so it runs in the namespace too. vbmcd forks a child per started BMC: they
  are deleted (and their children stopped) before vbmcd. A fresh config directory each time: a
  reused one makes ``vbmc add`` fail with "File exists".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import bcrypt
import httpx

from tests.lab.netns import Netns
from tests.lab.processes import LabProcess, ProcessTable, children_of, log_tail, venv_executable

#: bound for an emulator to answer after start; sushy takes about a second, vbmcd less
START_BOUND_S = 30.0


def wait_until(what: str, probe: Callable[[], bool], *, bound: float, failed: Callable[[], str | None]) -> None:
    """Poll ``probe`` every 0.1 s until it holds; raise naming ``what`` after ``bound`` s or once ``failed``."""
    deadline = time.monotonic() + bound
    while not probe():
        problem = failed()
        if problem:
            raise RuntimeError(f"{what}: {problem}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {bound:.0f} s")
        time.sleep(0.1)


class SushyEmulator:
    """One sushy-emulator process (libvirt driver) on 127.0.0.1:``port`` inside the namespace."""

    def __init__(
        self,
        procs: ProcessTable,
        workdir: Path,
        *,
        port: int,
        libvirt_uri: str,
        allowed_uuids: Iterable[str],
        username: str,
        password: str,
    ) -> None:
        self.procs = procs
        self.dir = workdir
        self.port = port
        self.libvirt_uri = libvirt_uri
        self.allowed_uuids = list(allowed_uuids)
        self.username = username
        self.password = password
        self.process: LabProcess | None = None

    @property
    def url(self) -> str:
        """Base URL, valid inside the namespace."""
        return f"http://127.0.0.1:{self.port}"

    def system_path(self, uuid: str) -> str:
        """The Redfish path of a domain's ComputerSystem."""
        return f"/redfish/v1/Systems/{uuid}"

    def start(self) -> None:
        """Write htpasswd and config, start the emulator, wait until it answers (bounded)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "state").mkdir(exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        (self.dir / "htpasswd").write_text(f"{self.username}:{hashed}\n")
        (self.dir / "emulator.conf").write_text(
            f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}\n"
            f"SUSHY_EMULATOR_LIBVIRT_URI = {self.libvirt_uri!r}\n"
            f"SUSHY_EMULATOR_ALLOWED_INSTANCES = {self.allowed_uuids!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = '{self.dir / 'htpasswd'}'\n"
            f"SUSHY_EMULATOR_STATE_DIR = '{self.dir / 'state'}'\n"
            f"SUSHY_EMULATOR_STORAGE_POOL = 'default'\n"
        )
        env = {**os.environ, "TMPDIR": str(self.dir / "tmp")}
        argv = [str(venv_executable("sushy-emulator")), "--config", str(self.dir / "emulator.conf")]
        self.process = self.procs.start(f"sushy-{self.port}", argv, env=env)
        proc = self.process
        with self.procs.ns.executor() as ex, httpx.Client(timeout=2.0, auth=(self.username, self.password)) as c:

            def answers() -> bool:
                try:
                    return ex.submit(c.get, f"{self.url}/redfish/v1/Systems").result().status_code == 200
                except httpx.TransportError:
                    return False

            def exited() -> str | None:
                code = proc.exit_code()
                return None if code is None else f"exited with code {code}"

            wait_until(f"sushy-emulator on {self.url}", answers, bound=START_BOUND_S, failed=exited)

    def stop(self) -> None:
        """Stop the emulator by its PID."""
        if self.process is not None:
            self.procs.stop(self.process)
            self.process = None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        return log_tail(self.procs.log_dir / f"sushy-{self.port}.log", lines)


class VirtualBmc:
    """vbmcd and its VirtualBMCs (IPMI on 127.0.0.1:<port> inside the namespace)."""

    def __init__(self, procs: ProcessTable, workdir: Path, *, control_port: int, libvirt_uri: str) -> None:
        self.procs = procs
        self.dir = workdir
        self.control_port = control_port
        self.libvirt_uri = libvirt_uri
        self.conf = workdir / "virtualbmc.conf"
        self.process: LabProcess | None = None
        self.bmcs: dict[str, int] = {}

    @property
    def ns(self) -> Netns:
        """The lab's namespace."""
        return self.procs.ns

    def _env(self) -> dict[str, str]:
        return {**os.environ, "VIRTUALBMC_CONFIG": str(self.conf)}

    def start(self) -> None:
        """Fresh config directory, start ``vbmcd --foreground``, wait until ``vbmc list`` answers."""
        (self.dir / "config").mkdir(parents=True, exist_ok=False)
        self.conf.write_text(
            "[default]\n"
            f"config_dir = {self.dir / 'config'}\n"
            f"pid_file = {self.dir / 'vbmcd.pid'}\n"
            f"server_port = {self.control_port}\n"
            "[log]\n"
            f"logfile = {self.procs.log_dir / 'vbmcd-internal.log'}\n"
        )
        self.process = self.procs.start("vbmcd", [str(venv_executable("vbmcd")), "--foreground"], env=self._env())
        proc = self.process

        def exited() -> str | None:
            code = proc.exit_code()
            return None if code is None else f"exited with code {code}"

        wait_until("vbmcd", lambda: self.vbmc("list", check=False) is not None, bound=START_BOUND_S, failed=exited)

    def vbmc(self, *args: str, check: bool = True) -> str | None:
        """``vbmc ARGS...`` inside the namespace: stdout, or None (``check=False``) when it failed."""
        proc = self.ns.run([str(venv_executable("vbmc")), *args], env=self._env(), timeout=60)
        if proc.returncode != 0:
            if check:
                raise RuntimeError(f"`vbmc {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}")
            return None
        return proc.stdout

    def add(self, domain: str, *, port: int, username: str, password: str) -> None:
        """Add and start a VirtualBMC for ``domain``; wait until ipmitool gets a power status (bounded)."""
        self.vbmc(
            "add",
            domain,
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
            "--username",
            username,
            "--password",
            password,
            "--libvirt-uri",
            self.libvirt_uri,
        )
        self.bmcs[domain] = port
        self.vbmc("start", domain)
        ipmi = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-U", username, "-P", password]

        def answers() -> bool:
            return self.ns.run([*ipmi, "power", "status"], timeout=30).returncode == 0

        wait_until(f"VirtualBMC of {domain} on port {port}", answers, bound=START_BOUND_S, failed=lambda: None)

    def stop(self) -> None:
        """Delete every VirtualBMC, stop vbmcd's children by PID, then vbmcd."""
        if self.process is None:
            return
        if self.procs.running(self.process):
            for domain in list(self.bmcs):
                self.vbmc("delete", domain, check=False)
            for child in children_of(self.process.pid):
                if self.ns.owns(child):
                    self.procs.stop_pid_in_namespace(child, f"vbmcd-child-{child}")
        self.bmcs.clear()
        self.procs.stop(self.process)
        self.process = None
