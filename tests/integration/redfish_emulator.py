"""A Redfish BMC on loopback: sushy-tools' ``sushy-emulator`` with its fake driver (no libvirt).

``start_emulator(workdir)`` writes a config file (fake systems with NICs and a disk, HTTP basic
auth from a bcrypt htpasswd file, state under ``workdir``), starts the emulator as a subprocess on
a free 127.0.0.1 port, waits until it answers and returns a ``RedfishEmulator``; ``stop()`` ends it
by its PID and ``start()`` brings it back on the same port with the same state (the fake driver
keeps its systems in a SQLite file in the state directory).

The stock fake driver has no BIOS and no firmware versions (its ``get_bios``/``get_versions`` raise
NotSupported). ``extended=True`` runs the same emulator with ``ExtendedFakeDriver`` below, which
adds both the way sushy-tools' libvirt driver keeps them, so that BIOS steps and SimpleUpdate go
through the emulator's real HTTP surface; BIOS changes wait for the next power-on or restart, as on
real machines. Power changes land 1-11 s after the request (the fake driver's own random delay).

Run as a script (``python redfish_emulator.py --config FILE``) it is the extended emulator.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx

LOOPBACK = "127.0.0.1"
STARTUP_BOUND_S = 30.0
STOP_GRACE_S = 10.0
DEFAULT_BIOS = {"BootMode": "Uefi", "ProcTurboMode": "Enabled", "QuietBoot": "true", "NumCores": "10"}
DISK_BYTES = 899_527_000_000  # 837 GiB


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def fake_system(name: str, macs: list[str], *, power_state: str = "Off") -> dict[str, Any]:
    """One system of the fake driver (``SUSHY_EMULATOR_FAKE_SYSTEMS`` entry)."""
    return {
        "uuid": str(uuid.uuid4()),
        "name": name,
        "power_state": power_state,
        "external_notifier": False,
        "nics": [{"mac": mac} for mac in macs],
    }


@dataclass
class RedfishEmulator:
    """One sushy-emulator process (restartable on the same port and state)."""

    workdir: Path
    port: int
    username: str
    password: str
    systems: list[dict[str, Any]]
    extended: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The BMC's base URL (what ``redfish_address`` holds)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The emulator's process id while it runs."""
        return self.process.pid if self.process else None

    @property
    def log_path(self) -> Path:
        """Where the emulator's stdout and stderr go."""
        return self.workdir / "emulator.log"

    def system_path(self, index: int = 0) -> str:
        """``/redfish/v1/Systems/<uuid>`` of system ``index``."""
        return f"/redfish/v1/Systems/{self.systems[index]['uuid']}"

    def driver_info(self, index: int | None = None, **override: Any) -> dict[str, Any]:
        """Ironic-style driver_info for the emulated BMC (system ``index`` or the only one)."""
        info: dict[str, Any] = {
            "redfish_address": self.url,
            "redfish_username": self.username,
            "redfish_password": self.password,
        }
        if index is not None:
            info["redfish_system_id"] = self.system_path(index)
        info.update(override)
        return info

    def write_config(self) -> Path:
        """The emulator's config file (Python, read by Flask's from_pyfile)."""
        htpasswd = self.workdir / "htpasswd"
        digest = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{self.username}:{digest}\n")
        storage = {
            s["uuid"]: [{"Id": "1", "Name": "Local Storage Controller", "StorageControllers": [], "Drives": ["d0"]}]
            for s in self.systems
        }
        drives = {
            (s["uuid"], "1"): [{"Id": "d0", "Name": "Disk 0", "CapacityBytes": DISK_BYTES, "Protocol": "SATA"}]
            for s in self.systems
        }
        config = self.workdir / "emulator.conf"
        config.write_text(
            f"SUSHY_EMULATOR_LISTEN_IP = {LOOPBACK!r}\n"
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}\n"
            "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {self.systems!r}\n"
            f"SUSHY_EMULATOR_STATE_DIR = {str(self.workdir / 'state')!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
            f"SUSHY_EMULATOR_STORAGE = {storage!r}\n"
            f"SUSHY_EMULATOR_DRIVES = {drives!r}\n"
        )
        return config

    def start(self) -> RedfishEmulator:
        """Start (or restart) the emulator and wait until its service root answers."""
        if self.process is not None and self.process.poll() is None:
            return self
        config = self.write_config()
        if self.extended:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--config", str(config)]
        else:
            cmd = [str(Path(sys.executable).with_name("sushy-emulator")), "--config", str(config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUSHY_", "OS_"))}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + STARTUP_BOUND_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sushy-emulator exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/redfish/v1/", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sushy-emulator did not answer within {STARTUP_BOUND_S:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after a grace period; the port stays ours for ``start()``."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_GRACE_S)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the emulator's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc.strerror}>"


def start_emulator(
    workdir: Path,
    *,
    systems: list[dict[str, Any]] | None = None,
    username: str = "admin",
    password: str = "Redfish-Secret-1",
    extended: bool = False,
) -> RedfishEmulator:
    """Start an emulator in ``workdir`` (one system with two NICs unless ``systems`` says otherwise)."""
    workdir.mkdir(parents=True, exist_ok=True)
    systems = systems or [fake_system("node-0", ["52:54:00:aa:00:01", "52:54:00:aa:00:02"])]
    emu = RedfishEmulator(workdir, free_loopback_port(), username, password, systems, extended)
    return emu.start()


def _extended_driver() -> type:
    """sushy-tools' fake driver plus BIOS settings and firmware versions (for ``extended=True``)."""
    from sushy_tools.emulator.resources.systems.fakedriver import FakeDriver

    class ExtendedFakeDriver(FakeDriver):  # type: ignore[misc]
        def get_bios(self, identity: str) -> dict[str, Any]:
            return dict(self._get(identity).get("bios") or DEFAULT_BIOS)

        def set_bios(self, identity: str, attributes: dict[str, Any]) -> None:
            system = self._get(identity)
            self._update(system, pending_bios={**(system.get("pending_bios") or {}), **attributes})

        def reset_bios(self, identity: str) -> None:
            self._update(identity, pending_bios=dict(DEFAULT_BIOS), reset_bios=True)

        def set_power_state(self, identity: str, state: str) -> None:
            system = self._get(identity)
            if ("On" in state or "Restart" in state) and (system.get("pending_bios") or system.get("reset_bios")):
                base = {} if system.get("reset_bios") else (system.get("bios") or DEFAULT_BIOS)
                self._update(system, bios={**base, **system["pending_bios"]}, pending_bios=None, reset_bios=False)
            super().set_power_state(identity, state)

        def get_versions(self, identity: str) -> dict[str, str]:
            return dict(self._get(identity).get("versions") or {"BiosVersion": "1.0.0"})

        def set_versions(self, identity: str, versions: dict[str, str]) -> None:
            self._update(identity, versions=versions)

    return ExtendedFakeDriver


if __name__ == "__main__":
    from sushy_tools.emulator import main as emulator_main
    from sushy_tools.emulator.resources.systems import fakedriver

    fakedriver.FakeDriver = _extended_driver()
    sys.exit(emulator_main.main())
