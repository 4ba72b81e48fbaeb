"""The whole loop on the lab's VMs: network boot of the real agent ramdisk, deploy, boot the instance, clean.

An Ironworks runs on the lab bridge with its managed dnsmasq there (one per module); the agent
ramdisk is this tree's ``ironworks ramdisk build`` (built once, cached outside the repository, see
``tests/e2e/netboot.py``). A node for a TCG VM behind sushy-tools (Redfish) or VirtualBMC (IPMI) with
a port for the VM's MAC and ``boot_interface`` ``ipxe`` is made available (automated cleaning already
network-boots the ramdisk for the metadata erase), then deployed with the 1 GiB test image over HTTP
and a config drive. The proof is on the VM's serial console: the deployed image prints its id, the
firmware it booted on and the config drive's uuid. Undeploy cleans through the agent again and the
disk's partition table is gone.

Every wait is a bound, never an expectation; failures carry the node's timeline, the server's and
dnsmasq's logs and the VM's console.
"""

from __future__ import annotations

import os
import re
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.images import InstanceImage
from tests.e2e.netboot import (
    BOOT_BOUND_S,
    CONFIGDRIVE_LINE,
    INSTANCE_LINE,
    AgentRamdisk,
    Deployer,
    RamdiskUnavailable,
    agent_ramdisk,
    dhcp_host_entry,
    disk_head_table,
    image_instance_info,
    node_traces,
    start_netboot_ironworks,
)
from tests.lab.lab import Lab
from tests.lab.libvirt import Vm
from tests.lab.service import IronworksInLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]


@pytest.fixture(scope="session")
def ramdisk() -> AgentRamdisk:
    """This tree's agent ramdisk (built once into the cache; a failed build fails the tests that need it)."""
    try:
        return agent_ramdisk()
    except RamdiskUnavailable as exc:
        pytest.fail(f"the agent ramdisk could not be built: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def server(lab: Lab) -> Iterator[IronworksInLab]:
    """One Ironworks on the bridge (dnsmasq on it) for the module's deploys."""
    try:
        srv = start_netboot_ironworks(lab)
    except RuntimeError as exc:
        pytest.fail(f"ironworks serve did not start on the lab bridge: {exc}", pytrace=False)
    try:
        yield srv
    finally:
        srv.stop()
        print(f"\nironworks serve on the bridge, last log lines:\n{srv.log_tail(40)}")


@pytest.fixture
def deployer(lab: Lab, server: IronworksInLab) -> Iterator[Deployer]:
    """The API of the module's server; every VM off, before and after, and the test's nodes deleted."""
    for vm in lab.vms:
        lab.power_off_vm(vm)
    yield Deployer(lab, server)
    for vm in lab.vms:
        lab.power_off_vm(vm)


def assert_nothing_left(server: IronworksInLab, uuid: str, mac: str) -> None:
    """No boot file, link or DHCP option of the node is left, and dnsmasq ignores its MAC.

    Polled (bounded): an abort's or a failure's clean-up may finish just after the state change.
    """
    deadline = time.monotonic() + 60
    while (node_traces(server, uuid, mac) or dhcp_host_entry(server, mac) != f"{mac},ignore\n") and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert node_traces(server, uuid, mac) == []
    assert dhcp_host_entry(server, mac) == f"{mac},ignore\n"


def deploy_and_prove(d: Deployer, vm: Vm, uuid: str, image: InstanceImage) -> str:
    """Deploy with a JSON config drive of a fresh uuid; the instance's markers on the console; that uuid."""
    drive_uuid = str(uuidlib.uuid4())
    offset = vm.serial.offset()
    d.provision(uuid, "active", configdrive={"meta_data": {"uuid": drive_uuid, "hostname": "e2e-netboot"}})
    n = d.wait(uuid, {"active", "deploy failed"}, vm=vm)
    assert n["provision_state"] == "active", d.explain(uuid, vm)
    assert n["last_error"] is None
    lab = d.lab
    marker = lab.wait_for_serial(vm, INSTANCE_LINE, after=offset, bound=BOOT_BOUND_S)
    assert marker.match.group("image") == image.image_id
    assert marker.match.group("firmware") == vm.firmware
    drive = lab.wait_for_serial(vm, CONFIGDRIVE_LINE, after=marker.end, bound=60)
    assert re.fullmatch(rf"uuid={drive_uuid} device=/dev/vda\d", drive.match.group("result").strip()), drive.text
    # before the instance: the VM network-booted the ramdisk, whose agent reached the conductor
    before = vm.serial.text(offset)[: marker.match.start()]
    assert "ironworks-init: starting the agent" in before, before[-3000:]
    events = d.history(uuid)
    steps = [e["data"]["step"] for e in events if e["event_type"] == "step.end"]
    assert steps[-4:] == [
        "deploy.write_image",
        "deploy.prepare_instance_boot",
        "deploy.tear_down_agent",
        "deploy.boot_instance",
    ], steps
    return drive_uuid


def undeploy_and_check_clean(d: Deployer, vm: Vm, uuid: str, tmp_path: Path) -> None:
    """Undeploy: automated cleaning network-boots the ramdisk again, erases metadata; the table is gone."""
    lab = d.lab
    lab.wait_for_domain(vm, "shut off", bound=BOOT_BOUND_S)  # the test image powers itself off
    assert disk_head_table(lab, vm, tmp_path), "the deployed disk should have a partition table"
    offset, seen = vm.serial.offset(), len(d.history(uuid))
    d.provision(uuid, "deleted")
    n = d.wait(uuid, {"available", "clean failed"}, vm=vm)
    assert n["provision_state"] == "available", d.explain(uuid, vm)
    assert "ironworks-init: starting the agent" in vm.serial.text(offset), vm.serial.text(offset)[-3000:]
    clean_steps = [e["data"]["step"] for e in d.history(uuid)[seen:] if e["event_type"] == "step.end"]
    assert "deploy.erase_devices_metadata" in clean_steps, clean_steps
    lab.wait_for_domain(vm, "shut off", bound=120)
    assert disk_head_table(lab, vm, tmp_path) == "", "the partition table survived cleaning"
    # nothing is left configured for the node: no boot file names it, dnsmasq ignores its MAC
    assert_nothing_left(d.server, uuid, vm.mac)


@pytest.mark.parametrize("driver", ["redfish", "ipmi"])
def test_ipxe_bios_deploy_boots_the_instance_then_undeploy_cleans(
    driver: str, deployer: Deployer, ramdisk: AgentRamdisk, instance_image: InstanceImage, tmp_path: Path
) -> None:
    lab = deployer.lab
    vm = lab.vms_with("bios")[0 if driver == "redfish" else 1]
    lab.blank_disk(vm)
    uuid = deployer.create_node(
        vm, driver=driver, ramdisk=ramdisk, instance_info=image_instance_info(lab, instance_image)
    )
    try:
        deployer.available(uuid, vm)
        deploy_and_prove(deployer, vm, uuid, instance_image)
        undeploy_and_check_clean(deployer, vm, uuid, tmp_path)
    finally:
        deployer.delete_node(uuid)


def test_uefi_ipxe_deploy_boots_the_instance_on_ovmf(
    deployer: Deployer, ramdisk: AgentRamdisk, instance_image: InstanceImage
) -> None:
    lab = deployer.lab
    vm = lab.vms_with("uefi")[0]
    lab.blank_disk(vm)
    uuid = deployer.create_node(
        vm, driver="redfish", ramdisk=ramdisk, instance_info=image_instance_info(lab, instance_image)
    )
    try:
        offset = vm.serial.offset()
        deployer.available(uuid, vm)
        # OVMF's own PXE client fetched snponly.efi over TFTP from the managed dnsmasq, which then ran iPXE
        log = (deployer.server.state_dir / "logs" / "dnsmasq.log").read_text()
        assert re.search(r"sent \S+/snponly\.efi to ", log), log[-3000:]
        assert "ironworks-init: started (kernel" in vm.serial.text(offset)
        assert "firmware uefi" in vm.serial.text(offset), vm.serial.text(offset)[-3000:]
        deploy_and_prove(deployer, vm, uuid, instance_image)  # the marker says firmware=uefi
    finally:
        deployer.delete_node(uuid)


RUNME = """#!/bin/bash
set -e
vendor=$(cat /sys/class/dmi/id/sys_vendor)
echo "IRONWORKS-E2E-FIRMWARE run=$RUN_ID vendor=$vendor in $PWD" > flashed.txt
cat flashed.txt
cat flashed.txt > /dev/console || true
"""


def firmware_tarball(directory: Path, run_id: str) -> Path:
    """A firmware tarball whose runme.sh says where it ran (the VM's DMI vendor) on stdout and the console."""
    import io
    import tarfile

    path = directory / f"firmware-{run_id}.tgz"
    data = RUNME.replace("$RUN_ID", run_id).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("runme.sh")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return path


def test_manual_clean_runs_update_firmware_inside_the_vm(deployer: Deployer, ramdisk: AgentRamdisk) -> None:
    import hashlib

    lab = deployer.lab
    vm = lab.vms_with("bios")[1]
    run_id = uuidlib.uuid4().hex[:12]
    tarball = firmware_tarball(lab.www, run_id)
    uuid = deployer.create_node(vm, driver="ipmi", ramdisk=ramdisk, name=f"{vm.name}-firmware")
    try:
        offset, seen = vm.serial.offset(), len(deployer.history(uuid))
        step = {
            "interface": "deploy",
            "step": "update_firmware",
            "args": {
                "url": f"{lab.http_url}/{tarball.name}",
                "checksum": "sha256:" + hashlib.sha256(tarball.read_bytes()).hexdigest(),
            },
        }
        deployer.provision(uuid, "clean", clean_steps=[step])
        n = deployer.wait(uuid, {"manageable", "clean failed"}, vm=vm)
        assert n["provision_state"] == "manageable", deployer.explain(uuid, vm)
        line = f"IRONWORKS-E2E-FIRMWARE run={run_id} vendor=QEMU in /"
        # runme.sh ran inside the VM (its DMI vendor is QEMU's), printed to the VM's console ...
        assert line in vm.serial.text(offset), vm.serial.text(offset)[-3000:]
        # ... and its output is the step's result in the node's timeline
        results = [e for e in deployer.history(uuid)[seen:] if e["event_type"] == "agent.result"]
        assert results and line in results[-1]["event"], results
        assert results[-1]["data"]["result"]["exit_code"] == 0
        lab.wait_for_domain(vm, "shut off", bound=120)  # the conductor powers the machine off after cleaning
    finally:
        deployer.delete_node(uuid)


@pytest.fixture
def dhcp_client(lab: Lab, tmp_path: Path) -> Iterator[Callable[[str], dict[str, str] | None]]:
    """A DHCP client on the lab bridge (busybox udhcpc on a veth in the lab's namespace), any MAC.

    It asks for options 66, 67, 209 and 210 like a petitboot firmware; the lease's options come back
    as udhcpc exports them (``pxeconffile`` = 209, ``pxepathprefix`` = 210, ``bootfile`` = 67).
    """
    from tests.integration.test_dnsmasq_dhcp import DUMP_SCRIPT

    assert lab.ns is not None
    ns = lab.ns
    (tmp_path / "dump.sh").write_text(DUMP_SCRIPT)
    (tmp_path / "dump.sh").chmod(0o755)
    ns.ip("link", "add", "iwpb0", "type", "veth", "peer", "name", "iwpb1")
    try:
        ns.ip("link", "set", "iwpb0", "master", lab.network.bridge)
        ns.ip("link", "set", "iwpb0", "up")
        runs = 0

        def request(mac: str) -> dict[str, str] | None:
            nonlocal runs
            runs += 1
            ns.ip("link", "set", "iwpb1", "down")
            ns.ip("link", "set", "iwpb1", "address", mac)
            ns.ip("link", "set", "iwpb1", "up")
            dump = tmp_path / f"lease-{runs}.env"
            argv = ["udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "2", "-i", "iwpb1", "-s", str(tmp_path / "dump.sh")]
            argv += ["-O", "66", "-O", "67", "-O", "209", "-O", "210"]
            done = ns.run(argv, env={**os.environ, "IW_DHCP_DUMP": str(dump)}, timeout=60)
            if not dump.exists():
                assert done.returncode != 0, f"udhcpc exited 0 without a lease: {done.stdout}{done.stderr}"
                return None
            return dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)

        yield request
    finally:
        ns.ip("link", "del", "iwpb0")


def fetch(lab: Lab, url: str, local: Path) -> bytes:
    """Fetch ``url`` as petitboot would, from inside the lab's namespace: busybox tftp or busybox wget."""
    assert lab.ns is not None
    if url.startswith("tftp://"):
        host, _, remote = url[len("tftp://") :].partition("/")
        argv = ["busybox", "tftp", "-b", "1468", "-g", "-r", remote, "-l", str(local), host]
    else:
        argv = ["busybox", "wget", "-q", "-O", str(local), url]
    done = lab.ns.run(argv, timeout=120)
    assert done.returncode == 0, f"{argv[1]} {url}: {done.stderr}"
    return local.read_bytes()


def test_petitboot_gets_209_and_210_from_dnsmasq_and_its_config_from_there(
    deployer: Deployer,
    ramdisk: AgentRamdisk,
    dhcp_client: Callable[[str], dict[str, str] | None],
    tmp_path: Path,
) -> None:
    lab, server = deployer.lab, deployer.server
    vm = lab.vms[0]
    mac = vm.mac[:-2] + "e9"  # a petitboot machine on the bridge that is no VM: fake power, a real DHCP client
    uuid = deployer.create_node(
        vm, mac=mac, driver="fake-hardware", boot_interface="petitboot", ramdisk=ramdisk, name="petitboot-e2e"
    )
    try:
        deployer.provision(uuid, "provide")  # automated cleaning prepares the ramdisk, then waits for the agent
        n = deployer.wait(uuid, {"clean wait", "clean failed"}, bound=120, settled=False)
        assert n["provision_state"] == "clean wait", deployer.explain(uuid)
        lease = dhcp_client(mac)
        assert lease is not None, deployer.explain(uuid)
        # [petitboot] protocol: http (the default) or tftp
        http = server.extra_env.get("IRONWORKS_PETITBOOT_PROTOCOL", "http") == "http"
        prefix = f"{server.public_url}/boot/" if http else f"tftp://{lab.network.address}/"
        assert lease["pxeconffile"] == f"{uuid}/config"
        assert lease["pxepathprefix"] == prefix
        assert "bootfile" not in lease and "opt67" not in lease, lease  # petitboot must get no option 67
        config = fetch(lab, prefix + lease["pxeconffile"], tmp_path / "config").decode()
        assert f"kernel {prefix}{uuid}/deploy_kernel\n" in config, config
        assert f"initrd {prefix}{uuid}/deploy_ramdisk\n" in config, config
        append = next(line for line in config.splitlines() if line.strip().startswith("append "))
        params = append.split()[1:]
        assert f"ipa-api-url={server.public_url}" in params, append
        assert f"BOOTIF=01-{mac.replace(':', '-')}" in params and "console=ttyS0,115200n8" in params, append
        # and the kernel it names is the one the node's driver_info gave, byte for byte
        kernel = fetch(lab, f"{prefix}{uuid}/deploy_kernel", tmp_path / "kernel")
        assert kernel == ramdisk.kernel.read_bytes()
        if not http:  # dnsmasq's TFTP server sent it
            log = (server.state_dir / "logs" / "dnsmasq.log").read_text()
            assert re.search(rf"sent \S+/{uuid}/config to ", log), log[-2000:]
        deployer.provision(uuid, "abort")
        deployer.wait(uuid, {"clean failed"}, bound=120)
        assert_nothing_left(server, uuid, mac)
        assert dhcp_client(mac) is None  # dnsmasq no longer answers it
    finally:
        deployer.delete_node(uuid)


def validation(d: Deployer, uuid: str) -> dict[str, dict[str, object]]:
    """``GET /v1/nodes/{uuid}/validate``."""
    r = d.api.get(f"/v1/nodes/{uuid}/validate")
    assert r.status_code == 200, r.text
    doc: dict[str, dict[str, object]] = r.json()
    return doc


def test_a_node_that_cannot_network_boot_is_refused_before_its_machine_is_touched(
    deployer: Deployer, ramdisk: AgentRamdisk
) -> None:
    lab = deployer.lab
    vm = lab.vms_with("bios")[0]
    offset = vm.serial.offset()
    no_port = deployer.create_node(vm, driver="redfish", ramdisk=ramdisk, port=False, name="e2e-no-port")
    no_kernel = deployer.create_node(
        vm, driver="redfish", ramdisk=ramdisk, driver_info={"deploy_kernel": None}, name="e2e-no-kernel"
    )
    try:
        reason = validation(deployer, no_port)["boot"]
        assert reason["result"] is False
        assert f"Node {no_port} has no port with pxe_enabled = true" in str(reason["reason"]), reason
        reason = validation(deployer, no_kernel)["boot"]
        assert reason["result"] is False
        assert "driver_info/deploy_kernel is missing" in str(reason["reason"]), reason
        for uuid, why in (
            (no_port, "has no port with pxe_enabled"),
            (no_kernel, "driver_info/deploy_kernel is missing"),
        ):
            deployer.provision(uuid, "provide")  # cleaning needs the ramdisk: refused with the same words
            n = deployer.wait(uuid, {"available", "clean failed"}, bound=120)
            assert n["provision_state"] == "clean failed" and why in str(n["last_error"]), n
        # the VM behind the BMC was never powered on: its console stayed silent
        assert lab.domain_state(vm) == "shut off" and vm.serial.offset() == offset
        r = deployer.api.post("/v1/nodes", json={"driver": "redfish", "boot_interface": "floppy"})
        assert r.status_code == 400, r.text
        assert "floppy" in r.text and "ipxe" in r.text, r.text  # names the wrong one and what there is
    finally:
        deployer.delete_node(no_port)
        deployer.delete_node(no_kernel)


def test_an_unreachable_image_fails_the_deploy_and_leaves_nothing_configured(
    deployer: Deployer, ramdisk: AgentRamdisk, instance_image: InstanceImage
) -> None:
    lab = deployer.lab
    vm = lab.vms_with("bios")[1]
    lab.blank_disk(vm)
    missing = f"{lab.http_url}/no-such-image-{uuidlib.uuid4().hex[:8]}.raw"
    info = {**image_instance_info(lab, instance_image), "image_source": missing}
    uuid = deployer.create_node(vm, driver="ipmi", ramdisk=ramdisk, instance_info=info, name="e2e-bad-image")
    try:
        deployer.available(uuid, vm)
        deployer.provision(uuid, "active")
        n = deployer.wait(uuid, {"active", "deploy failed"}, vm=vm)
        assert n["provision_state"] == "deploy failed", deployer.explain(uuid, vm)
        # the agent in the VM tried it: the error names the URL and what the server said
        assert missing in str(n["last_error"]) and "404" in str(n["last_error"]), n["last_error"]
        lab.wait_for_domain(vm, "shut off", bound=120)  # the failed deploy powered the machine off
        assert_nothing_left(deployer.server, uuid, vm.mac)
    finally:
        deployer.delete_node(uuid)
