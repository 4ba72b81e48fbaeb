"""Virtual media on the lab's VMs (issue 6): no DHCP server anywhere, every machine addressed statically.

One Ironworks runs on the lab bridge with ``[dhcp] provider = none`` (it starts no dnsmasq and writes no
DHCP options); the only DHCP client that could run is the ramdisk's, and there is no server for it. The
BMC is sushy-tools (libvirt driver): ``InsertMedia`` downloads the ISO Ironworks publishes under
``/boot/vmedia/`` into pool ``default`` and gives the domain a CD drive.

* the agent ramdisk (this tree's ``ironworks ramdisk build`` ISO, plus a ``network_data.json``) booted
  from the virtual CD by hand takes its static address before DHCP (``ironworks/agent/netconfig.py``);
* ``redfish-virtual-media`` + ``agent`` deploys the 1 GiB test image on BIOS and on UEFI with
  ``driver_info/network_data``: the deploy ISO carries the address, the agent heartbeats without DHCP,
  and the VM then boots the image from its disk (its marker on the console);
* a ``ramdisk`` deploy of a user ISO the test builds, with ``kernel_append_params``: the command line
  the booted kernel prints contains them; undeploy ejects the CD;
* a manual clean with ``update_firmware`` over virtual media: runme.sh's output is the step's result;
* a disk budget smaller than two remastered ISOs: the second ramdisk deploy is refused with a clear
  message and nothing is inserted or published for it.

Automated cleaning is off in this module's server (the network-boot tests prove it), so each flow boots
the VM only for what it tests. Every wait is a bound; failures carry the node's timeline, the server's
log and the VM's console.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.images import InstanceImage
from tests.e2e.netboot import (
    BOOT_BOUND_S,
    CONFIGDRIVE_LINE,
    INSTANCE_LINE,
    SERVER_ENV,
    AgentRamdisk,
    Deployer,
    RamdiskUnavailable,
    agent_ramdisk,
    image_instance_info,
)
from tests.e2e.test_netboot_deploy import firmware_tarball
from tests.e2e.vmedia import (
    CONSOLE,
    USER_ISO_LINE,
    VirtualCd,
    build_user_iso,
    dhcp_servers,
    iso_with_network_data,
    network_data,
    static_address,
)
from tests.lab.lab import Lab
from tests.lab.libvirt import Vm
from tests.lab.service import IronworksInLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]

#: the module's Ironworks: no DHCP at all, no automated cleaning (each test boots only what it tests)
VMEDIA_ENV = {
    **SERVER_ENV,
    "IRONWORKS_DHCP_PROVIDER": "none",
    "IRONWORKS_DHCP_MANAGE_DNSMASQ": "false",
    "IRONWORKS_CONDUCTOR_AUTOMATED_CLEAN": "false",
}
#: static host numbers on the bridge (outside the DHCP pool .100-.200), one per VM
HOSTS = {"lab-vm-0": 40, "lab-vm-1": 41, "lab-vm-uefi": 42}
STATIC_LINE = r"ironworks-init: static address on (?P<nic>\S+) \((?P<mac>[0-9a-f:]+)\): (?P<address>[^\s,]+)"


@pytest.fixture(scope="session")
def ramdisk() -> AgentRamdisk:
    """This tree's agent ramdisk (built once into the cache; a failed build fails the tests that need it)."""
    try:
        return agent_ramdisk()
    except RamdiskUnavailable as exc:
        pytest.fail(f"the agent ramdisk could not be built: {exc}", pytrace=False)


def _start(lab: Lab, env: Mapping[str, str]) -> IronworksInLab:
    try:
        return lab.start_ironworks(env, on_bridge=True)
    except RuntimeError as exc:
        pytest.fail(f"ironworks serve did not start on the lab bridge: {exc}", pytrace=False)


def server_env(ramdisk: AgentRamdisk, **extra: str) -> dict[str, str]:
    """The module's server settings; the ramdisk build is a directory file:// sources may come from."""
    return {**VMEDIA_ENV, "IRONWORKS_IMAGES_ALLOWED_FILE_DIRS": str(ramdisk.directory), **extra}


@pytest.fixture(scope="module")
def server(lab: Lab, ramdisk: AgentRamdisk) -> Iterator[IronworksInLab]:
    """One Ironworks on the bridge without DHCP for the module's flows."""
    srv = _start(lab, server_env(ramdisk))
    try:
        yield srv
    finally:
        srv.stop()
        print(f"\nironworks serve (virtual media) last log lines:\n{srv.log_tail(40)}")


@pytest.fixture
def deployer(lab: Lab, server: IronworksInLab) -> Iterator[Deployer]:
    """The module server's API; every VM off and every virtual CD empty, before and after."""
    _reset_vms(lab)
    yield Deployer(lab, server)
    _reset_vms(lab)


def _reset_vms(lab: Lab) -> None:
    for vm in lab.vms:
        lab.power_off_vm(vm)
        cd = VirtualCd(lab, vm)
        try:
            cd.eject()
            cd.boot("Pxe", enabled="Continuous")  # sushy keeps "Once" for good: leave the lab as it was
        finally:
            cd.close()


@pytest.fixture
def no_dhcp(lab: Lab) -> Iterator[None]:
    """No DHCP server runs in the namespace, before the test and after it."""
    assert dhcp_servers(lab) == [], "a DHCP server runs in the lab: these flows must work without one"
    yield
    assert dhcp_servers(lab) == []


def vmedia_node(
    d: Deployer,
    vm: Vm,
    *,
    deploy_interface: str,
    ramdisk: AgentRamdisk | None = None,
    instance_info: Mapping[str, Any] | None = None,
    static: bool = True,
    name: str,
) -> str:
    """A ``redfish`` node for ``vm`` with ``redfish-virtual-media`` boot and a port for its MAC; ``manageable``."""
    driver_info: dict[str, Any] = dict(d.lab.redfish_driver_info(vm))
    if ramdisk is not None:
        driver_info.update(deploy_kernel=str(ramdisk.kernel), deploy_ramdisk=str(ramdisk.initramfs))
    if static:
        driver_info["network_data"] = network_data(d.lab, vm, host=HOSTS[vm.name])
    body = {
        "name": name,
        "driver": "redfish",
        "boot_interface": "redfish-virtual-media",
        "deploy_interface": deploy_interface,
        "driver_info": driver_info,
        "properties": {"capabilities": f"boot_mode:{vm.firmware}"},
        "instance_info": dict(instance_info or {}),
    }
    r = d.api.post("/v1/nodes", json=body)
    assert r.status_code == 201, r.text
    uuid = str(r.json()["uuid"])
    r = d.api.post("/v1/ports", json={"address": vm.mac, "node_uuid": uuid})
    assert r.status_code == 201, r.text
    d.provision(uuid, "manage")
    d.wait(uuid, {"manageable"}, bound=120.0)
    return uuid


def published(server: IronworksInLab) -> list[str]:
    """The ISOs the server publishes for BMCs now (``<http_root>/vmedia/``)."""
    root = server.state_dir / "httpboot" / "vmedia"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def assert_static_boot(vm: Vm, text: str, lab: Lab) -> None:
    """The ramdisk on ``text`` (a console slice) took its static address and ran no DHCP client."""
    found = re.search(STATIC_LINE, text)
    assert found, f"no static address line on {vm.name}'s console:\n{text[-3000:]}"
    assert found.group("mac") == vm.mac
    assert found.group("address") == f"{static_address(lab, HOSTS[vm.name])}/24"
    assert "has a static address: no DHCP on it" in text
    assert "DHCP bound" not in text and "starting DHCP" not in text, text[-3000:]


# ---- the ramdisk on its own ---------------------------------------------------------------------------
def test_the_ramdisk_takes_its_static_address_from_the_virtual_cd(
    lab: Lab, deployer: Deployer, ramdisk: AgentRamdisk, no_dhcp: None, tmp_path: Path
) -> None:
    """The agent ISO with a network_data.json, inserted and booted by hand: address before DHCP, reachable."""
    vm = lab.vm("lab-vm-1")
    address = static_address(lab, HOSTS[vm.name])
    iso = iso_with_network_data(
        ramdisk.directory / "ironworks-agent.iso",
        network_data(lab, vm, host=HOSTS[vm.name]),
        lab.www / f"static-{secrets.token_hex(4)}.iso",
    )
    cd = VirtualCd(lab, vm)
    try:
        cd.insert(f"{lab.http_url}/{iso.name}")
        cd.boot("Cd")
        offset = vm.serial.offset()
        cd.reset("On")
        started = lab.wait_for_serial(vm, r"ironworks-init: starting the agent", after=offset, bound=BOOT_BOUND_S)
        assert_static_boot(vm, vm.serial.text(offset)[: started.match.end()], lab)  # match is relative to offset
        # the address is really on the VM's NIC: the bridge side reaches it
        lab.run(["busybox", "ping", "-c", "3", "-W", "5", address], timeout=60)  # no iputils here
        neighbours = lab.run(["ip", "neigh", "show", address])
        assert vm.mac in neighbours.lower(), neighbours
    finally:
        cd.reset("ForceOff")
        cd.eject()
        cd.close()
        iso.unlink(missing_ok=True)


# ---- agent deploys ------------------------------------------------------------------------------------
@pytest.mark.parametrize("vm_name", ["lab-vm-0", "lab-vm-uefi"])
def test_agent_deploy_over_virtual_media_boots_the_image_from_disk(
    deployer: Deployer, ramdisk: AgentRamdisk, instance_image: InstanceImage, no_dhcp: None, vm_name: str
) -> None:
    lab = deployer.lab
    vm = lab.vm(vm_name)
    lab.blank_disk(vm)
    uuid = vmedia_node(
        deployer,
        vm,
        deploy_interface="agent",
        ramdisk=ramdisk,
        instance_info=image_instance_info(lab, instance_image),
        name=f"{vm.name}-vmedia-agent",
    )
    cd = VirtualCd(lab, vm)
    try:
        deployer.provision(uuid, "provide")
        deployer.wait(uuid, {"available"}, bound=120.0)  # no automated cleaning in this module
        drive_uuid = str(uuidlib.uuid4())
        offset = vm.serial.offset()
        deployer.provision(uuid, "active", configdrive={"meta_data": {"uuid": drive_uuid, "hostname": "e2e-vmedia"}})
        n = deployer.wait(uuid, {"active", "deploy failed"}, vm=vm)
        assert n["provision_state"] == "active", deployer.explain(uuid, vm)
        marker = lab.wait_for_serial(vm, INSTANCE_LINE, after=offset, bound=BOOT_BOUND_S)
        assert marker.match.group("image") == instance_image.image_id
        assert marker.match.group("firmware") == vm.firmware
        drive = lab.wait_for_serial(vm, CONFIGDRIVE_LINE, after=marker.end, bound=60)
        assert re.fullmatch(rf"uuid={drive_uuid} device=/dev/vda\d", drive.match.group("result").strip()), drive.text
        # before the image: the deploy ISO's ramdisk, addressed from its network_data.json, ran the agent
        before = vm.serial.text(offset)[: marker.match.start()]
        assert f"firmware {vm.firmware}" in before, before[-3000:]
        assert_static_boot(vm, before, lab)
        assert "ironworks-init: starting the agent" in before
        steps = [e["data"]["step"] for e in deployer.history(uuid) if e["event_type"] == "step.end"]
        assert steps[-4:] == [
            "deploy.write_image",
            "deploy.prepare_instance_boot",
            "deploy.tear_down_agent",
            "deploy.boot_instance",
        ], steps
        # the image booted from the disk: the deploy ISO is out of the CD and no longer published
        assert cd.inserted() is None
        assert published(deployer.server) == []
        assert lab.libvirt.first_boot_device(vm.name) == "hd"
        lab.wait_for_domain(vm, "shut off", bound=BOOT_BOUND_S)  # the test image powers itself off
        deployer.provision(uuid, "deleted")
        deployer.wait(uuid, {"available"}, vm=vm)
        assert cd.inserted() is None and published(deployer.server) == []
    finally:
        cd.close()
        deployer.delete_node(uuid)


# ---- the ramdisk deploy of a user ISO -----------------------------------------------------------------
@pytest.fixture(scope="module")
def user_iso(lab: Lab, ramdisk: AgentRamdisk, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's ISO (the agent build's kernel, an initramfs printing its command line), in the lab's web root."""
    work = tmp_path_factory.mktemp("user-iso")
    return build_user_iso(ramdisk.kernel, lab.www / "user-e2e.iso", workdir=work)


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def ramdisk_instance_info(lab: Lab, iso: Path, params: str) -> dict[str, str]:
    """``instance_info`` of a ramdisk deploy of ``iso`` (from the lab's web server) with ``params`` injected."""
    return {"boot_iso": f"{lab.http_url}/{iso.name}", "boot_iso_checksum": _sha256(iso), "kernel_append_params": params}


def test_ramdisk_deploy_boots_the_user_iso_with_the_injected_parameters(
    deployer: Deployer, user_iso: Path, no_dhcp: None
) -> None:
    lab = deployer.lab
    vm = lab.vm("lab-vm-1")
    run = secrets.token_hex(4)
    params = f"ironworks.e2e_run={run} quiet-not=really"
    uuid = vmedia_node(
        deployer,
        vm,
        deploy_interface="ramdisk",
        instance_info=ramdisk_instance_info(lab, user_iso, params),
        static=False,
        name=f"{vm.name}-vmedia-ramdisk",
    )
    cd = VirtualCd(lab, vm)
    try:
        deployer.provision(uuid, "provide")
        deployer.wait(uuid, {"available"}, bound=120.0)
        offset = vm.serial.offset()
        deployer.provision(uuid, "active")
        n = deployer.wait(uuid, {"active", "deploy failed"}, vm=vm)
        assert n["provision_state"] == "active", deployer.explain(uuid, vm)
        assert cd.inserted() is not None, "the user's ISO should be in the virtual CD while the node is active"
        line = lab.wait_for_serial(vm, USER_ISO_LINE, after=offset, bound=BOOT_BOUND_S)
        cmdline = line.match.group("cmdline").split()
        # the ISO's own parameters and the injected ones, as the booted kernel saw them
        assert CONSOLE in cmdline, cmdline
        assert f"ironworks.e2e_run={run}" in cmdline and "quiet-not=really" in cmdline, cmdline
        assert len(published(deployer.server)) == 1
        deployer.provision(uuid, "deleted")
        deployer.wait(uuid, {"available"}, vm=vm)
        cd.wait_ejected()
        assert published(deployer.server) == []
    finally:
        cd.close()
        deployer.delete_node(uuid)


# ---- a manual clean over virtual media ------------------------------------------------------------------
def test_manual_clean_runs_update_firmware_over_virtual_media(
    deployer: Deployer, ramdisk: AgentRamdisk, no_dhcp: None
) -> None:
    lab = deployer.lab
    vm = lab.vm("lab-vm-1")
    run_id = uuidlib.uuid4().hex[:12]
    tarball = firmware_tarball(lab.www, run_id)
    uuid = vmedia_node(deployer, vm, deploy_interface="agent", ramdisk=ramdisk, name=f"{vm.name}-vmedia-firmware")
    cd = VirtualCd(lab, vm)
    try:
        offset, seen = vm.serial.offset(), len(deployer.history(uuid))
        step = {
            "interface": "deploy",
            "step": "update_firmware",
            "args": {"url": f"{lab.http_url}/{tarball.name}", "checksum": _sha256(tarball)},
        }
        deployer.provision(uuid, "clean", clean_steps=[step])
        n = deployer.wait(uuid, {"manageable", "clean failed"}, vm=vm)
        assert n["provision_state"] == "manageable", deployer.explain(uuid, vm)
        console = vm.serial.text(offset)
        assert_static_boot(vm, console, lab)
        line = f"IRONWORKS-E2E-FIRMWARE run={run_id} vendor=QEMU in /"
        assert line in console, console[-3000:]
        results = [e for e in deployer.history(uuid)[seen:] if e["event_type"] == "agent.result"]
        assert results and line in results[-1]["event"], results
        assert results[-1]["data"]["result"]["exit_code"] == 0
        lab.wait_for_domain(vm, "shut off", bound=120)  # powered off after cleaning ...
        cd.wait_ejected()  # ... the deploy ISO ejected and no longer published
        assert published(deployer.server) == []
    finally:
        cd.close()
        deployer.delete_node(uuid)
        tarball.unlink(missing_ok=True)


# ---- the disk budget ----------------------------------------------------------------------------------
def test_a_full_budget_refuses_the_second_ramdisk_deploy(
    lab: Lab, ramdisk: AgentRamdisk, user_iso: Path, no_dhcp: None
) -> None:
    """Budget for the cached ISO and one remastered copy, not two: the second deploy is refused cleanly."""
    size = user_iso.stat().st_size
    _reset_vms(lab)
    srv = _start(lab, server_env(ramdisk, IRONWORKS_IMAGES_DISK_BUDGET_BYTES=str(int(size * 2.5))))
    d = Deployer(lab, srv)
    first_vm, second_vm = lab.vm("lab-vm-0"), lab.vm("lab-vm-1")
    uuids: list[str] = []
    cds = [VirtualCd(lab, first_vm), VirtualCd(lab, second_vm)]
    try:
        for vm in (first_vm, second_vm):
            info = ramdisk_instance_info(lab, user_iso, f"ironworks.e2e_budget={vm.name}")
            uuids.append(
                vmedia_node(
                    d, vm, deploy_interface="ramdisk", instance_info=info, static=False, name=f"{vm.name}-budget"
                )
            )
            d.provision(uuids[-1], "provide")
            d.wait(uuids[-1], {"available"}, bound=120.0)
        d.provision(uuids[0], "active")
        n = d.wait(uuids[0], {"active", "deploy failed"}, vm=first_vm)
        assert n["provision_state"] == "active", d.explain(uuids[0], first_vm)
        assert len(published(srv)) == 1
        # a conductor checks the ISO against the budget while the request waits: 400, the node stays put
        r = d.api.put(f"/v1/nodes/{uuids[1]}/states/provision", json={"target": "active"})
        assert r.status_code == 400, r.text
        error = r.text
        print(f"\nthe refusal: {error}")
        assert "disk budget" in error and "raise [images] disk_budget_bytes" in error, error
        assert d.node(uuids[1])["provision_state"] == "available"
        # nothing half-done for the refused node: the first node's ISO is the only one published,
        # the second VM's CD is empty and the VM was never powered on
        assert len(published(srv)) == 1
        assert cds[1].inserted() is None
        assert lab.domain_state(second_vm) == "shut off"
        assert cds[0].inserted() is not None
    finally:
        for uuid in uuids:
            d.delete_node(uuid)
        for cd in cds:
            cd.close()
        srv.stop()
        _reset_vms(lab)
