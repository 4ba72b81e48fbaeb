"""The ``redfish`` driver through the real API and conductor (in process) against sushy-tools' emulator.

The emulator runs its fake driver (no libvirt) as a subprocess on loopback: power changes land 1-11 s
after the request, so every power request here waits for the BMC as it would for a real one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ironworks.bmc.redfish import RedfishClient, RetryPolicy
from ironworks.drivers.redfish_steps import RedfishBios, RedfishFirmware
from tests.conftest import Harness, make_config
from tests.integration.redfish_emulator import DISK_BYTES, RedfishEmulator, start_emulator

WAIT_STATES = {"clean wait", "inspect wait", "service wait", "deploy wait", "rescue wait"}


@pytest.fixture
def redfish_emulator(tmp_path: Path) -> Iterator[RedfishEmulator]:
    """sushy-emulator with the stock fake driver: one system, two NICs, one 837 GiB disk."""
    emu = start_emulator(tmp_path / "bmc")
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def redfish_emulator_extended(tmp_path: Path) -> Iterator[RedfishEmulator]:
    """The same emulator with BIOS settings and firmware versions (``ExtendedFakeDriver``)."""
    emu = start_emulator(tmp_path / "bmc", extended=True)
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def rf_harness(tmp_path: Path) -> Iterator[Harness]:
    """API + conductor with the redfish hardware type; BMC retries and step polls kept short."""
    config = make_config(
        tmp_path,
        conductor={"enabled_hardware_types": ["fake-hardware", "redfish"], "power_sync_max_failures": 2},
    )
    h = Harness(config)
    client = RedfishClient(retry=RetryPolicy(attempts=2, first_wait=0.05, total=5, connect_timeout=2))
    for kind in ("power", "management", "inspect", "bios", "firmware"):
        iface: Any = h.rt.drivers.interface(kind, "redfish")
        iface.client = client
    bios = h.rt.drivers.interface("bios", "redfish")
    fw = h.rt.drivers.interface("firmware", "redfish")
    assert isinstance(bios, RedfishBios) and isinstance(fw, RedfishFirmware)
    bios.poll_interval, fw.poll_interval = 1.0, 0.5
    try:
        yield h
    finally:
        h.close()


def settle(h: Harness, uuid: str, *, timeout: float = 90.0) -> dict[str, Any]:
    """Run the conductor (timers included) until the node leaves its wait states."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h.drain()
        node = h.node(uuid)
        if node["provision_state"] not in WAIT_STATES and node["target_provision_state"] is None:
            return node
        time.sleep(0.2)
    raise AssertionError(f"node {uuid} is still {h.node(uuid)['provision_state']} after {timeout:g}s")


def redfish_node(h: Harness, emu: RedfishEmulator, **info: Any) -> str:
    node = h.create_node(driver="redfish", driver_info=emu.driver_info(**info))
    return str(node["uuid"])


def bmc_power(emu: RedfishEmulator) -> str:
    """The power state as the emulator itself reports it."""
    r = httpx.get(f"{emu.url}{emu.system_path()}", auth=(emu.username, emu.password), timeout=5)
    return str(r.json()["PowerState"])


def set_power(h: Harness, uuid: str, target: str) -> dict[str, Any]:
    r = h.client.put(f"/v1/nodes/{uuid}/states/power", json={"target": target})
    assert r.status_code == 202, r.text
    h.drain()
    return h.node(uuid)


def test_manage_power_and_boot_device(rf_harness: Harness, redfish_emulator: RedfishEmulator) -> None:
    h, emu = rf_harness, redfish_emulator
    props = h.client.get("/v1/drivers/redfish/properties").json()
    assert "redfish_address" in props and "redfish_verify_ca" in props
    u = redfish_node(h, emu)
    checks = h.client.get(f"/v1/nodes/{u}/validate").json()
    assert all(checks[k]["result"] for k in ("power", "management", "inspect", "bios", "firmware"))
    node = h.provision(u, "manage")
    assert (node["provision_state"], node["power_state"], node["last_error"]) == ("manageable", "power off", None)
    assert h.node(u)["driver_info"]["redfish_password"] == "******"

    sequence = [("power on", "On"), ("soft rebooting", "On"), ("power off", "Off"), ("rebooting", "On")]
    for target, expected in [*sequence, ("soft power off", "Off")]:  # "rebooting" a node that is off powers it on
        node = set_power(h, u, target)
        assert node["last_error"] is None, node["last_error"]
        assert node["power_state"] == f"power {expected.lower()}" and bmc_power(emu) == expected

    with h.conductor_running():
        c = h.client
        assert c.get(f"/v1/nodes/{u}/management/boot_device/supported").json() == {
            "supported_boot_devices": ["pxe", "disk", "cdrom"]  # the emulator lists no BiosSetup
        }
        assert (
            c.put(f"/v1/nodes/{u}/management/boot_device", json={"boot_device": "pxe", "persistent": True}).status_code
            == 204
        )
        assert c.get(f"/v1/nodes/{u}/management/boot_device").json() == {"boot_device": "pxe", "persistent": True}
        assert c.put(f"/v1/nodes/{u}/management/boot_device", json={"boot_device": "cdrom"}).status_code == 204
        # the fake driver ignores BootSourceOverrideEnabled and always reports Continuous
        assert c.get(f"/v1/nodes/{u}/management/boot_device").json()["boot_device"] == "cdrom"
        bad = c.put(f"/v1/nodes/{u}/management/boot_device", json={"boot_device": "bios"})
        assert bad.status_code >= 400 and "does not offer" in bad.text


def test_inspection_creates_ports_from_the_bmc(rf_harness: Harness, redfish_emulator: RedfishEmulator) -> None:
    h, emu = rf_harness, redfish_emulator
    u = redfish_node(h, emu, index=0)  # by system path this time
    h.provision(u, "manage")
    node = settle(h, h.provision(u, "inspect")["uuid"])
    assert node["provision_state"] == "manageable" and node["last_error"] is None
    assert node["properties"]["local_gb"] == DISK_BYTES // (1 << 30) - 1
    assert node["properties"]["capabilities"] == "boot_mode:uefi"
    ports = h.client.get(f"/v1/nodes/{u}/ports").json()["ports"]
    assert sorted(p["address"] for p in ports) == sorted(n["mac"] for n in emu.systems[0]["nics"])
    # the stock fake driver has no BIOS and no firmware inventory: only the manager's version is known
    assert h.client.get(f"/v1/nodes/{u}/bios").json() == {"bios": []}
    fw = h.client.get(f"/v1/nodes/{u}/firmware").json()["firmware"]
    assert [(f["component"], f["current_version"]) for f in fw] == [("bmc", "1.00")]


def test_bios_and_firmware_steps(rf_harness: Harness, redfish_emulator_extended: RedfishEmulator) -> None:
    h, emu = rf_harness, redfish_emulator_extended
    u = redfish_node(h, emu)
    h.provision(u, "manage")
    settle(h, h.provision(u, "inspect")["uuid"])
    bios = {b["name"]: b["value"] for b in h.client.get(f"/v1/nodes/{u}/bios").json()["bios"]}
    assert bios["ProcTurboMode"] == "Enabled"

    steps = [
        {
            "interface": "bios",
            "step": "apply_configuration",
            "args": {"settings": [{"name": "ProcTurboMode", "value": "Disabled"}]},
        }
    ]
    node = settle(h, h.provision(u, "clean", clean_steps=steps)["uuid"])
    assert (node["provision_state"], node["last_error"]) == ("manageable", None)
    bios = {b["name"]: b["value"] for b in h.client.get(f"/v1/nodes/{u}/bios").json()["bios"]}
    assert bios["ProcTurboMode"] == "Disabled" and bmc_power(emu) in ("On", "Off")

    url = f"http://127.0.0.1:{emu.port}/never-fetched/bios-1.1.0.bin"  # the emulator does not download it
    steps = [
        {
            "interface": "firmware",
            "step": "update",
            "args": {"settings": [{"component": "bios", "url": url, "wait": 1}]},
        }
    ]
    node = settle(h, h.provision(u, "clean", clean_steps=steps)["uuid"])
    assert (node["provision_state"], node["last_error"]) == ("manageable", None)
    fw = {f["component"]: f for f in h.client.get(f"/v1/nodes/{u}/firmware").json()["firmware"]}
    assert (fw["bios"]["initial_version"], fw["bios"]["current_version"]) == ("1.0.0", "1.1.0")
    assert fw["bios"]["last_version_flashed"] == "1.1.0"


def test_wrong_password_fails_manage_back_to_enroll(rf_harness: Harness, redfish_emulator: RedfishEmulator) -> None:
    h, emu = rf_harness, redfish_emulator
    u = redfish_node(h, emu, redfish_password="not-the-password")
    node = h.provision(u, "manage")
    assert node["provision_state"] == "enroll"
    assert emu.url in node["last_error"] and "credentials" in node["last_error"]
    assert "redfish_username/redfish_password" in node["last_error"] and "not-the-password" not in node["last_error"]


def test_unreachable_bmc_and_power_sync_maintenance(rf_harness: Harness, redfish_emulator: RedfishEmulator) -> None:
    h, emu = rf_harness, redfish_emulator
    u = redfish_node(h, emu)
    other = redfish_node(h, emu)
    assert h.provision(u, "manage")["provision_state"] == "manageable"
    emu.stop()
    node = set_power(h, u, "power on")
    assert "unreachable (connection refused)" in node["last_error"] and emu.url in node["last_error"]
    node = h.provision(other, "manage")
    assert node["provision_state"] == "enroll" and "unreachable" in node["last_error"]

    h.conductor.sync_power_states()
    assert h.node(u)["maintenance"] is False  # one failure is not yet a fault
    h.conductor.sync_power_states()
    node = h.node(u)
    assert node["maintenance"] is True and node["fault"] == "power failure"
    assert "unreachable" in node["maintenance_reason"] and "redfish_address" in node["maintenance_reason"]

    emu.start()
    h.conductor.sync_power_states()
    node = h.node(u)
    assert node["maintenance"] is False and node["fault"] is None and node["power_state"] == "power off"
