"""The ipmi hardware type end to end: the real ipmitool against a fake BMC on 127.0.0.1, driven
through the real API with an in-process conductor (SQLite).

The fake BMC (``fake_ipmi_bmc``) keeps its own power state and boot flags, so every change made
through the API is checked twice: read back through the API, and in the BMC's own state. Every
ipmitool command line the driver runs is recorded, to show the password never reaches one.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ironworks.bmc.ipmitool import RetryPolicy, run_subprocess
from ironworks.drivers.ipmi import IpmiManagement, IpmiPower
from tests.conftest import Harness, make_config
from tests.integration.fake_ipmi_bmc import FakeIpmiBmc, running_bmc

USER = "admin"
PASSWORD = "Pa55-w0rd-kept"
WRONG = "wrong-password"
SECRETS = (PASSWORD, WRONG)
#: two runs 0.1 s apart: enough to see retries, short enough for an unreachable BMC (~2 s a run)
RETRY = RetryPolicy(attempts=2, first_wait=0.1, max_wait=0.1, total=10.0)

pytestmark = pytest.mark.skipif(shutil.which("ipmitool") is None, reason="needs ipmitool (./dev.sh setup installs it)")


class RecordingRunner:
    """Runs the real ipmitool and keeps every command line and environment it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.lock = threading.Lock()

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> tuple[int, str, str]:
        with self.lock:
            self.calls.append((list(argv), dict(env)))
        return run_subprocess(argv, env, timeout=timeout)

    def commands(self) -> list[str]:
        return [" ".join(argv[argv.index("-N") + 2 :]) for argv, _ in self.calls]


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[FakeIpmiBmc]:
    """A fake BMC whose power changes take 0.3 s, so the driver has to poll."""
    with running_bmc(tmp_path, user=USER, password=PASSWORD, power_delay=0.3) as b:
        yield b


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
def harness(tmp_path: Path, runner: RecordingRunner) -> Iterator[Harness]:
    """API + conductor with ipmi enabled; the ipmitool interfaces run through ``runner``."""
    h = Harness(make_config(tmp_path, conductor={"enabled_hardware_types": ["fake-hardware", "ipmi"]}))
    for kind in ("power", "management"):
        iface = h.rt.drivers.interface(kind, "ipmitool")
        assert isinstance(iface, IpmiPower | IpmiManagement)
        iface.runner, iface.retry, iface.poll_interval = runner, RETRY, 0.05
    try:
        yield h
    finally:
        h.close()
        # the point of -E: whatever ran, the password was in the environment and never in argv
        assert runner.calls, "no ipmitool ran"
        for argv, env in runner.calls:
            assert argv[0] == "ipmitool" and "-E" in argv
            assert env["IPMI_PASSWORD"] in SECRETS
            assert not any(secret in arg for secret in SECRETS for arg in argv), argv


def enroll(h: Harness, bmc: FakeIpmiBmc, **info: Any) -> str:
    driver_info = {
        "ipmi_address": "127.0.0.1",
        "ipmi_port": bmc.port,
        "ipmi_username": USER,
        "ipmi_password": PASSWORD,
        **info,
    }
    node = h.create_node(driver="ipmi", name="ipmi-0", driver_info=driver_info)
    assert node["power_interface"] == "ipmitool" and node["management_interface"] == "ipmitool"
    uuid: str = node["uuid"]
    return uuid


def set_power(h: Harness, uuid: str, target: str) -> dict[str, Any]:
    r = h.client.put(f"/v1/nodes/{uuid}/states/power", json={"target": target, "timeout": 20})
    assert r.status_code == 202, r.text
    h.drain()
    return h.node(uuid)


def put_boot_device(h: Harness, uuid: str, device: str, *, persistent: bool = False) -> int:
    body = {"boot_device": device, "persistent": persistent}
    status: int = h.client.put(f"/v1/nodes/{uuid}/management/boot_device", json=body).status_code
    return status


def test_manage_power_and_boot_device(harness: Harness, bmc: FakeIpmiBmc, runner: RecordingRunner) -> None:
    h = harness
    props = h.client.get("/v1/drivers/ipmi/properties").json()
    assert "ipmi_address" in props and "ipmi_bridging" in props
    u = enroll(h, bmc)
    assert h.client.get(f"/v1/nodes/{u}/validate").json()["power"] == {"result": True, "reason": None}

    node = h.provision(u, "manage")
    assert node["provision_state"] == "manageable" and node["last_error"] is None
    assert node["power_state"] == "power off"

    node = set_power(h, u, "power on")
    assert node["power_state"] == "power on" and node["last_error"] is None
    assert bmc.state()["power"] == "on"
    after_on = runner.commands()[runner.commands().index("power on") + 1 :]
    assert after_on.count("power status") >= 2, "the change takes 0.3 s: the driver must have polled"

    assert set_power(h, u, "power off")["power_state"] == "power off"
    assert bmc.state()["power"] == "off"
    assert set_power(h, u, "rebooting")["power_state"] == "power on"  # from off: power on
    assert set_power(h, u, "rebooting")["power_state"] == "power on"  # from on: off, then on
    assert runner.commands().count("power cycle") == 0
    assert len(bmc.state()["boots"]) == 3  # one per power-on
    assert set_power(h, u, "soft power off")["power_state"] == "power off"
    assert bmc.state()["power"] == "off"

    c = h.client
    with h.conductor_running():
        assert put_boot_device(h, u, "pxe", persistent=True) == 204
        assert c.get(f"/v1/nodes/{u}/management/boot_device").json() == {"boot_device": "pxe", "persistent": True}
        state = bmc.state()
        assert (state["boot_device"], state["persistent"], state["efiboot"]) == ("pxe", True, False)

        assert put_boot_device(h, u, "cdrom") == 204
        assert c.get(f"/v1/nodes/{u}/management/boot_device").json() == {"boot_device": "cdrom", "persistent": False}
    assert set_power(h, u, "power on")["power_state"] == "power on"
    assert bmc.state()["boots"][-1] == {"device": "cdrom", "efi": False, "persistent": False}
    with h.conductor_running():
        # a one-time device is used once: the BMC cleared it when the machine booted
        assert c.get(f"/v1/nodes/{u}/management/boot_device").json() == {"boot_device": None, "persistent": False}

        patch = [{"op": "add", "path": "/properties/capabilities", "value": "boot_mode:uefi"}]
        assert c.patch(f"/v1/nodes/{u}", json=patch).status_code == 200
        assert put_boot_device(h, u, "disk", persistent=True) == 204
        state = bmc.state()
        assert (state["boot_device"], state["persistent"], state["efiboot"]) == ("disk", True, True)
    assert "raw 0x00 0x08 0x03 0x08" in runner.commands()


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"ipmi_password": WRONG}, "check driver_info ipmi_username/ipmi_password"),
        ({"ipmi_username": "nobody"}, "check driver_info ipmi_username"),  # pyghmi ignores unknown users
    ],
)
def test_wrong_credentials_fail_manage_back_to_enroll(
    harness: Harness, bmc: FakeIpmiBmc, runner: RecordingRunner, info: dict[str, str], expected: str
) -> None:
    u = enroll(harness, bmc, **info)
    node = harness.provision(u, "manage")
    assert node["provision_state"] == "enroll"
    error = node["last_error"]
    assert f"IPMI BMC 127.0.0.1:{bmc.port} rejected the credentials for 'power status'" in error
    assert expected in error
    assert WRONG not in error and PASSWORD not in error and "Traceback" not in error
    assert len(runner.calls) == 1, "a rejected password is not retried (it could lock the account)"


def test_stopped_bmc_is_reported_unreachable(harness: Harness, bmc: FakeIpmiBmc, runner: RecordingRunner) -> None:
    u = enroll(harness, bmc)
    assert harness.provision(u, "manage")["provision_state"] == "manageable"
    bmc.stop()
    before = len(runner.calls)

    node = set_power(harness, u, "power on")
    error = node["last_error"]
    assert error.startswith("Failed to change power state to 'power on': ")
    assert f"IPMI BMC 127.0.0.1:{bmc.port} could not be reached for 'power status'" in error
    assert "check driver_info ipmi_address and ipmi_port" in error and PASSWORD not in error
    assert node["power_state"] == "power off" and node["provision_state"] == "manageable"
    assert len(runner.calls) - before == RETRY.attempts, "an unanswered call is retried"

    with harness.conductor_running():
        r = harness.client.get(f"/v1/nodes/{u}/management/boot_device")
    assert r.status_code >= 500 and "could not be reached for 'chassis bootparam get 5'" in r.text
