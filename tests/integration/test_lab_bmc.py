"""The ``redfish`` and ``ipmi`` hardware types against real BMC emulators driving real (TCG) VMs.

Ironworks runs inside the lab's network namespace (``tests/lab``) with sushy-emulator (libvirt
driver) and VirtualBMC beside it. Every power change is checked on the VM itself (libvirt's domain
state; for a reboot, the firmware banner appearing again on the serial console), boot devices in the
domain definition, BIOS attributes and firmware versions in the metadata sushy-tools keeps in the
domain, and inspected ports against the VM's real MAC. ``lab-vm-0`` sits behind the Redfish nodes,
``lab-vm-1`` behind the IPMI nodes; each test starts with both VMs off.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab.fixtures import lab_fixture, lab_ironworks_fixture  # noqa: F401
from tests.lab.lab import Lab
from tests.lab.libvirt import Vm
from tests.lab.service import CliResult, IronworksInLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

#: bounds, not expectations: a power change lands in about a second, a BIOS apply (reboot, then the
#: driver's 10 s poll) or a firmware update (5 s poll) in well under a minute on TCG
STATE_BOUND_S = 120.0
#: a sushy-emulator started (and stopped) by one test, beside the lab's own
SPARE_SUSHY_PORT = 18001


# ---- helpers -------------------------------------------------------------------------------------
class Client:
    """The API of the Ironworks under test, with failure messages that carry its log and the lab's."""

    def __init__(self, lab: Lab, server: IronworksInLab) -> None:
        self.lab = lab
        self.server = server

    def context(self) -> str:
        """Log tails for a failure message."""
        return f"\n--- ironworks serve (last lines) ---\n{self.server.log_tail(40)}{self.lab.diagnostics()}"

    def call(self, method: str, path: str, expect: int, body: Any = None) -> Any:
        """One request; fails the test unless it answers ``expect``. The JSON body, if any."""
        resp = self.server.api.request(method, path, json=body)
        if resp.status_code != expect:
            pytest.fail(
                f"{method} {path} {body!r} answered {resp.status_code}, expected {expect}: {resp.text}{self.context()}",
                pytrace=False,
            )
        return resp.json() if resp.content else None

    def node(self, ident: str) -> dict[str, Any]:
        """GET /v1/nodes/{ident}."""
        data: dict[str, Any] = self.call("GET", f"/v1/nodes/{ident}", 200)
        return data

    def wait(self, ident: str, what: str, accept: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll the node until ``accept`` holds (bounded by ``STATE_BOUND_S``)."""
        deadline = time.monotonic() + STATE_BOUND_S
        node = self.node(ident)
        while not accept(node):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"node {ident}: {what} did not happen within {STATE_BOUND_S:.0f} s; "
                    f"provision_state={node['provision_state']!r} target={node['target_provision_state']!r} "
                    f"power_state={node['power_state']!r} last_error={node['last_error']!r}{self.context()}",
                    pytrace=False,
                )
            time.sleep(0.25)
            node = self.node(ident)
        return node

    def provision(self, ident: str, target: str, **body: Any) -> dict[str, Any]:
        """Request a provision change and wait until nothing is pending; the node."""
        self.call("PUT", f"/v1/nodes/{ident}/states/provision", 202, {"target": target, **body})
        return self.wait(ident, f"provision {target!r}", lambda n: n["target_provision_state"] is None)

    def power(self, ident: str, target: str) -> dict[str, Any]:
        """Request a power change and wait until nothing is pending; the node."""
        self.call("PUT", f"/v1/nodes/{ident}/states/power", 202, {"target": target})
        return self.wait(ident, f"power {target!r}", lambda n: n["target_power_state"] is None)

    def create(self, name: str, driver: str, driver_info: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """POST /v1/nodes; the node."""
        body = {"name": name, "driver": driver, "driver_info": driver_info, **fields}
        data: dict[str, Any] = self.call("POST", "/v1/nodes", 201, body)
        return data

    def delete(self, ident: str) -> None:
        """DELETE /v1/nodes/{ident} (from enroll or manageable)."""
        self.server.api.delete(f"/v1/nodes/{ident}")


def unique(prefix: str) -> str:
    """A node name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_settled(node: dict[str, Any], provision_state: str, client: Client) -> None:
    """The node is in ``provision_state`` with no error."""
    assert (node["provision_state"], node["last_error"]) == (provision_state, None), (
        f"node {node['name']}: provision_state={node['provision_state']!r} last_error={node['last_error']!r}"
        f"{client.context()}"
    )


def assert_power(client: Client, lab: Lab, node: dict[str, Any], vm: Vm, target: str) -> None:
    """Power the node to ``target`` through the API; the API and the VM itself must agree."""
    expected_api, expected_vm = {"power on": ("power on", "running"), "power off": ("power off", "shut off")}[target]
    after = client.power(node["uuid"], target)
    assert (after["power_state"], after["last_error"]) == (expected_api, None), client.context()
    lab.wait_for_domain(vm, expected_vm)


def assert_reboot(client: Client, lab: Lab, node: dict[str, Any], vm: Vm) -> None:
    """Reboot through the API; the VM's firmware must start again and the VM keep running."""
    # the VM was just powered on: under load its firmware may take a moment to print its first banner
    starts = lab.wait_for_firmware_start(vm, 0)
    after = client.power(node["uuid"], "rebooting")
    assert (after["power_state"], after["last_error"]) == ("power on", None), client.context()
    lab.wait_for_firmware_start(vm, starts)
    lab.wait_for_domain(vm, "running")


def check_boot_device(client: Client, lab: Lab, node: dict[str, Any], vm: Vm) -> None:
    """Set persistent boot devices; the API reads them back and the domain definition boots from them.

    The VM is off, as before a deploy: VirtualBMC reads the boot device from a running domain's live
    definition, which only takes the new one at the next power-on.
    """
    assert lab.domain_state(vm) == "shut off"
    path = f"/v1/nodes/{node['uuid']}/management/boot_device"
    for device, libvirt_dev in (("disk", "hd"), ("pxe", "network")):
        client.call("PUT", path, 204, {"boot_device": device, "persistent": True})
        got = client.call("GET", path, 200)
        assert got["boot_device"] == device, got
        assert lab.libvirt.first_boot_device(vm.name) == libvirt_dev


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def client(lab: Lab, lab_ironworks: IronworksInLab) -> Iterator[Client]:
    """The API client; both VMs are off before and after each test."""
    for vm in lab.vms:
        lab.power_off_vm(vm)
    yield Client(lab, lab_ironworks)
    for vm in lab.vms:
        lab.power_off_vm(vm)


@pytest.fixture
def redfish_vm(lab: Lab) -> Vm:
    """The VM behind the Redfish nodes."""
    return lab.vms[0]


@pytest.fixture
def ipmi_vm(lab: Lab) -> Vm:
    """The VM behind the IPMI nodes."""
    return lab.vms[1]


@contextlib.contextmanager
def enrolled(client: Client, prefix: str, driver: str, info: dict[str, Any], **fields: Any) -> Iterator[dict[str, Any]]:
    """A new node in ``enroll``, deleted afterwards (its ports with it)."""
    node = client.create(unique(prefix), driver, info, **fields)
    try:
        yield node
    finally:
        client.delete(node["uuid"])


@pytest.fixture
def redfish_node(client: Client, lab: Lab, redfish_vm: Vm) -> Iterator[dict[str, Any]]:
    """A ``redfish`` node for the Redfish VM with every Redfish interface, managed."""
    fields = {"inspect_interface": "redfish", "bios_interface": "redfish", "firmware_interface": "redfish"}
    with enrolled(client, "rf", "redfish", lab.redfish_driver_info(redfish_vm), **fields) as node:
        managed = client.provision(node["uuid"], "manage")
        assert_settled(managed, "manageable", client)
        assert managed["power_state"] == "power off", managed
        yield managed


@pytest.fixture
def ipmi_node(client: Client, lab: Lab, ipmi_vm: Vm) -> Iterator[dict[str, Any]]:
    """An ``ipmi`` node for the IPMI VM, managed."""
    with enrolled(client, "ipmi", "ipmi", lab.ipmi_driver_info(ipmi_vm)) as node:
        managed = client.provision(node["uuid"], "manage")
        assert_settled(managed, "manageable", client)
        assert managed["power_state"] == "power off", managed
        yield managed


# ---- Redfish -------------------------------------------------------------------------------------
def test_redfish_power_is_seen_on_the_vm(
    client: Client, lab: Lab, redfish_node: dict[str, Any], redfish_vm: Vm
) -> None:
    assert_power(client, lab, redfish_node, redfish_vm, "power on")
    assert_reboot(client, lab, redfish_node, redfish_vm)
    assert_power(client, lab, redfish_node, redfish_vm, "power off")


def test_redfish_boot_device_reaches_the_domain(
    client: Client,
    lab: Lab,
    redfish_node: dict[str, Any],
    redfish_vm: Vm,
) -> None:
    check_boot_device(client, lab, redfish_node, redfish_vm)


def test_redfish_inspection_finds_the_vm(
    client: Client, lab: Lab, redfish_node: dict[str, Any], redfish_vm: Vm
) -> None:
    node = client.provision(redfish_node["uuid"], "inspect")
    assert_settled(node, "manageable", client)
    ports = client.call("GET", f"/v1/nodes/{node['uuid']}/ports", 200)["ports"]
    assert [p["address"] for p in ports] == [redfish_vm.mac]
    props = node["properties"]
    assert (props.get("cpus"), props.get("memory_mb"), props.get("cpu_arch")) == (
        1,
        lab.settings.memory_mib,
        "x86_64",
    ), props
    # Ironic's convention: the largest disk in GiB, minus one
    assert props.get("local_gb") == lab.settings.disk_gib - 1, props
    bios = {s["name"]: s["value"] for s in client.call("GET", f"/v1/nodes/{node['uuid']}/bios", 200)["bios"]}
    assert bios == lab.libvirt.sushy_metadata(redfish_vm.name, "attributes"), bios


def test_redfish_bios_setting_applied_by_clean_step(
    client: Client,
    lab: Lab,
    redfish_node: dict[str, Any],
    redfish_vm: Vm,
) -> None:
    uid = redfish_node["uuid"]
    client.provision(uid, "inspect")  # fills the BIOS cache
    bios = {s["name"]: s["value"] for s in client.call("GET", f"/v1/nodes/{uid}/bios", 200)["bios"]}
    assert bios.get("ProcTurboMode") in ("Enabled", "Disabled"), bios
    wanted = "Disabled" if bios["ProcTurboMode"] == "Enabled" else "Enabled"
    step = {
        "interface": "bios",
        "step": "apply_configuration",
        "args": {"settings": [{"name": "ProcTurboMode", "value": wanted}]},
    }
    node = client.provision(uid, "clean", clean_steps=[step])
    assert_settled(node, "manageable", client)
    assert client.call("GET", f"/v1/nodes/{uid}/bios/ProcTurboMode", 200)["ProcTurboMode"]["value"] == wanted
    assert lab.libvirt.sushy_metadata(redfish_vm.name, "attributes")["ProcTurboMode"] == wanted
    # the step rebooted (here: powered on) the machine to apply the setting
    assert lab.domain_state(redfish_vm) == "running"


def test_redfish_firmware_update_through_simple_update(
    client: Client,
    lab: Lab,
    redfish_node: dict[str, Any],
    redfish_vm: Vm,
) -> None:
    uid = redfish_node["uuid"]
    client.provision(uid, "inspect")  # fills the firmware cache
    before = {c["component"]: c for c in client.call("GET", f"/v1/nodes/{uid}/firmware", 200)["firmware"]}
    assert "bios" in before, before
    old = before["bios"]["current_version"]
    major, minor, *rest = old.split(".")
    # sushy-tools' libvirt driver does not download the image; it bumps the minor version of the BIOS
    expected = ".".join([major, str(int(minor) + 1), *rest])
    image = lab.www / "bios-update.bin"
    image.write_bytes(b"\x00" * 4096)
    step = {
        "interface": "firmware",
        "step": "update",
        "args": {"settings": [{"component": "bios", "url": f"{lab.http_url}/{image.name}"}]},
    }
    node = client.provision(uid, "clean", clean_steps=[step])
    assert_settled(node, "manageable", client)
    after = {c["component"]: c for c in client.call("GET", f"/v1/nodes/{uid}/firmware", 200)["firmware"]}
    assert (after["bios"]["initial_version"], after["bios"]["current_version"]) == (old, expected), after
    assert lab.libvirt.sushy_metadata(redfish_vm.name, "versions")["BiosVersion"] == expected


def test_redfish_wrong_password_leaves_the_node_in_enroll(client: Client, lab: Lab, redfish_vm: Vm) -> None:
    info = {**lab.redfish_driver_info(redfish_vm), "redfish_password": "not-the-password"}
    with enrolled(client, "rf-badpw", "redfish", info) as node:
        after = client.provision(node["uuid"], "manage")
        assert after["provision_state"] == "enroll", after
        assert re.search(r"credential|password|401|unauthori[sz]ed|authenticat", after["last_error"] or "", re.I), (
            after["last_error"]
        )
        assert "not-the-password" not in after["last_error"]
    assert lab.domain_state(redfish_vm) == "shut off"


def test_redfish_stopped_emulator_is_reported_unreachable(client: Client, lab: Lab, redfish_vm: Vm) -> None:
    spare = lab.start_sushy(SPARE_SUSHY_PORT)
    with enrolled(client, "rf-gone", "redfish", lab.redfish_driver_info(redfish_vm, sushy=spare)) as node:
        assert_settled(client.provision(node["uuid"], "manage"), "manageable", client)
        spare.stop()
        after = client.power(node["uuid"], "power on")
        assert after["power_state"] == "power off", after
        error = after["last_error"] or ""
        assert re.search(r"unreachable|could not (be )?reach|connection refused|not answer", error, re.I), error
        assert f"127.0.0.1:{SPARE_SUSHY_PORT}" in error, error
        # a synchronous request says so too, as a gateway error rather than an internal one
        resp = client.server.api.get(f"/v1/nodes/{node['uuid']}/management/boot_device")
        assert resp.status_code == 502 and "unreachable" in resp.text, resp.text
    assert lab.domain_state(redfish_vm) == "shut off"


# ---- IPMI ------------------------------------------------------------------------------------------
def test_ipmi_power_is_seen_on_the_vm(client: Client, lab: Lab, ipmi_node: dict[str, Any], ipmi_vm: Vm) -> None:
    assert_power(client, lab, ipmi_node, ipmi_vm, "power on")
    assert_reboot(client, lab, ipmi_node, ipmi_vm)
    assert_power(client, lab, ipmi_node, ipmi_vm, "power off")


def test_ipmi_boot_device_reaches_the_domain(client: Client, lab: Lab, ipmi_node: dict[str, Any], ipmi_vm: Vm) -> None:
    check_boot_device(client, lab, ipmi_node, ipmi_vm)


def test_ipmi_wrong_password_leaves_the_node_in_enroll(client: Client, lab: Lab, ipmi_vm: Vm) -> None:
    info = {**lab.ipmi_driver_info(ipmi_vm), "ipmi_password": "not-the-password"}
    with enrolled(client, "ipmi-badpw", "ipmi", info) as node:
        after = client.provision(node["uuid"], "manage")
        assert after["provision_state"] == "enroll", after
        assert re.search(r"credential|password|unauthori[sz]ed|authenticat", after["last_error"] or "", re.I), after[
            "last_error"
        ]
        assert "not-the-password" not in after["last_error"]
    assert lab.domain_state(ipmi_vm) == "shut off"


# ---- the real baremetal CLI ------------------------------------------------------------------------
def cli(server: IronworksInLab, *args: str) -> CliResult:
    """``baremetal ARGS...`` inside the namespace; fails the test unless it exits 0."""
    result = server.baremetal(*args)
    if result.returncode != 0:
        pytest.fail(f"{result}\n--- ironworks serve ---\n{server.log_tail(40)}", pytrace=False)
    return result


@pytest.mark.parametrize("kind", ["redfish", "ipmi"])
def test_baremetal_cli_power_and_boot_device(
    kind: str,
    client: Client,
    lab: Lab,
    lab_ironworks: IronworksInLab,
    request: pytest.FixtureRequest,
) -> None:
    node: dict[str, Any] = request.getfixturevalue(f"{kind}_node")
    vm: Vm = request.getfixturevalue(f"{kind}_vm")
    name = node["name"]
    # boot device first, while the VM is off, as a deploy does: VirtualBMC answers a boot device
    # query from the running domain's live definition, which only changes at the next power-on
    cli(lab_ironworks, "node", "boot", "device", "set", name, "disk", "--persistent")
    shown = cli(lab_ironworks, "node", "boot", "device", "show", name, "-f", "json")
    assert json.loads(shown.stdout)["boot_device"] == "disk", shown
    assert lab.libvirt.first_boot_device(vm.name) == "hd"
    cli(lab_ironworks, "node", "boot", "device", "set", name, "pxe", "--persistent")
    assert lab.libvirt.first_boot_device(vm.name) == "network"

    cli(lab_ironworks, "node", "power", "on", name)
    client.wait(name, "power on", lambda n: n["target_power_state"] is None)
    lab.wait_for_domain(vm, "running")
    shown = cli(lab_ironworks, "node", "show", name, "-f", "json", "-c", "power_state", "-c", "last_error")
    assert json.loads(shown.stdout) == {"power_state": "power on", "last_error": None}, shown

    cli(lab_ironworks, "node", "power", "off", name)
    client.wait(name, "power off", lambda n: n["target_power_state"] is None)
    lab.wait_for_domain(vm, "shut off")
    after = client.node(name)
    assert (after["power_state"], after["last_error"]) == ("power off", None), after["last_error"]
