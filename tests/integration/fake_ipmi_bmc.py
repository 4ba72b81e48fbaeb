"""A fast fake IPMI BMC: pyghmi's BMC server (what VirtualBMC builds on) with in-memory state.

It speaks IPMI 2.0 over LAN (RMCP+, cipher suite 3) on 127.0.0.1, so the real ``ipmitool`` talks to
it as it would to a machine, but power and boot flags are only variables: no VM, no libvirt.

* Power: ``chassis power on|off|cycle|reset|soft`` change the state after ``--power-delay`` seconds
  (a slow BMC, so callers must poll); ``cycle`` while off answers 0xD5 "not supported in present
  state", as the IPMI spec allows and many BMCs do.
* Boot flags (``chassis bootparam`` 5) are kept as the five raw bytes ipmitool sent, so the valid,
  persistent and EFI bits read back exactly. A power-on "boots" the machine: the boot is recorded,
  and non-persistent flags are cleared, as the spec says (the "once" semantics).
* The state is written as JSON to ``--state`` after each change, for tests to read; the process's
  stderr goes to the same path with the suffix ``.log``.

Run it as a process (the password comes from the environment, never the command line)::

    FAKE_BMC_PASSWORD=secret python -m tests.integration.fake_ipmi_bmc --user admin --state s.json

It binds a free UDP port on 127.0.0.1 and prints ``READY <port>`` when it answers. ``FakeIpmiBmc``
below starts and stops it for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
PASSWORD_ENV = "FAKE_BMC_PASSWORD"
#: IPMI completion codes the fake answers with
CC_OK = 0
CC_NOT_IN_PRESENT_STATE = 0xD5
CC_PARAM_NOT_SUPPORTED = 0x80
#: boot device selector (flags byte 2, bits 5:2) -> name, from the IPMI 2.0 spec table 28-14
SELECTORS = {0: "none", 1: "pxe", 2: "disk", 3: "safe", 4: "diag", 5: "cdrom", 6: "bios", 15: "floppy"}


def _serve(user: str, password: str, state_path: Path, power_delay: float) -> None:
    """Run the BMC until killed (child process only: pyghmi keeps global session state)."""
    from pyghmi.ipmi import bmc  # type: ignore[import-untyped]

    class Server(bmc.Bmc):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__({user: password}, port=0, address=LOOPBACK)
            # pyghmi routes session packets by ``self.port``: make it the port the kernel chose
            self.port = self.serversocket.getsockname()[1]
            self.lock = threading.Lock()
            self.power = "off"
            self.pending: tuple[str, float] | None = None
            self.flags = [0, 0, 0, 0, 0]
            self.boots: list[dict[str, Any]] = []
            self.save()

        # ---- state -----------------------------------------------------------------
        def _settle(self) -> None:
            if self.pending and time.monotonic() >= self.pending[1]:
                target, _ = self.pending
                self.pending = None
                if target == "on" and self.power == "off":
                    self._boot()
                self.power = target
                self.save()

        def _boot(self) -> None:
            valid, persistent = bool(self.flags[0] & 0x80), bool(self.flags[0] & 0x40)
            device = SELECTORS.get((self.flags[1] >> 2) & 0xF, "?") if valid else "none"
            self.boots.append({"device": device, "efi": bool(self.flags[0] & 0x20), "persistent": persistent})
            if valid and not persistent:
                self.flags[0] &= 0x7F  # once: the BMC clears the valid bit when the machine boots

        def _change(self, target: str) -> int:
            with self.lock:
                self._settle()
                self.pending = (target, time.monotonic() + power_delay)
                self._settle()
            return CC_OK

        def save(self) -> None:
            doc = {
                "power": self.power,
                "boot_flags": bytes(self.flags).hex(),
                "boot_device": SELECTORS.get((self.flags[1] >> 2) & 0xF, "?") if self.flags[0] & 0x80 else None,
                "persistent": bool(self.flags[0] & 0x40),
                "efiboot": bool(self.flags[0] & 0x20),
                "boots": self.boots,
            }
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(state_path)

        # ---- pyghmi hooks ----------------------------------------------------------
        def get_power_state(self) -> str:
            with self.lock:
                self._settle()
                return self.power

        def power_on(self) -> int:
            return self._change("on")

        def power_off(self) -> int:
            return self._change("off")

        def power_shutdown(self) -> int:
            return self._change("off")

        def power_cycle(self) -> int:
            with self.lock:
                self._settle()
                if self.power == "off":
                    return CC_NOT_IN_PRESENT_STATE
                self.power = "off"  # off at once, on again after the delay: it boots
                self.pending = ("on", time.monotonic() + power_delay)
                self._settle()
                self.save()
            return CC_OK

        def power_reset(self) -> int:
            return self.power_cycle()

        def set_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
            data = list(request["data"])
            if data[0] == 5 and len(data) >= 6:
                with self.lock:
                    self.flags = data[1:6]
                    self.save()
                session.send_ipmi_response()
            elif data[0] in (0, 3, 4):  # set-in-progress, valid-bit clearing, boot info ack
                session.send_ipmi_response()
            else:
                session.send_ipmi_response(code=CC_PARAM_NOT_SUPPORTED)

        def get_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
            if request["data"][0] == 5:
                with self.lock:
                    session.send_ipmi_response(data=[1, 5, *self.flags])
            else:
                session.send_ipmi_response(code=CC_PARAM_NOT_SUPPORTED)

    server = Server()
    print(f"READY {server.port}", flush=True)
    server.listen(timeout=30)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point of the fake BMC process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", required=True)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--power-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    _serve(args.user, os.environ.get(PASSWORD_ENV, ""), args.state, args.power_delay)


@dataclass
class FakeIpmiBmc:
    """A fake BMC process on 127.0.0.1, started by ``start()`` and stopped by ``stop()`` (by PID)."""

    user: str
    password: str
    state_path: Path
    power_delay: float = 0.0
    port: int = 0
    process: subprocess.Popen[str] | None = field(default=None, repr=False)

    def start(self, *, bound: float = 20.0) -> FakeIpmiBmc:
        """Start the process and wait until it has bound its port."""
        cmd = [sys.executable, "-m", "tests.integration.fake_ipmi_bmc", "--user", self.user]
        cmd += ["--state", str(self.state_path), "--power-delay", str(self.power_delay)]
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, PASSWORD_ENV: self.password, "PYTHONPATH": str(root)}
        with self.state_path.with_suffix(".log").open("w") as log:  # pyghmi prints tracebacks there
            self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=root)
        stdout = self.process.stdout
        assert stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(bound)
        if not line or not line[0].startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake BMC did not start within {bound} s: {line}")
        self.port = int(line[0].split()[1])
        return self

    def state(self) -> dict[str, Any]:
        """The BMC's own view: power, boot flags, boots so far."""
        data: dict[str, Any] = json.loads(self.state_path.read_text())
        return data

    def stop(self) -> None:
        """Stop the process by its PID (SIGTERM, then SIGKILL)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def running_bmc(tmp: Path, *, user: str, password: str, power_delay: float = 0.0) -> Iterator[FakeIpmiBmc]:
    """A started fake BMC, stopped when the block ends (also on failure)."""
    bmc = FakeIpmiBmc(user, password, tmp / "bmc-state.json", power_delay)
    try:
        yield bmc.start()
    finally:
        bmc.stop()


if __name__ == "__main__":
    main()
