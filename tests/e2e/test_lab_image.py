"""The deployable test image proven on its own, before any deploy: it boots from a VM's disk on BIOS and UEFI.

The image (``tests/e2e/images.py``) goes straight onto a VM's disk (``qemu-img`` on the volume while
the domain is off), the boot device is set to disk and the VM powered on through its VirtualBMC with
the real ``ipmitool``, and the marker lines the image's ``/init`` prints are read from the VM's serial
console. With a config drive added by the agent's own code (``ironworks.agent.configdrive`` on a copy
of the image attached to a loop device this test creates), the image reports the config drive's uuid.
The image powers itself off, so the VM is off again when a test ends.

The lab's network-boot side is proven here too: an Ironworks started on the bridge
(``start_ironworks(on_bridge=True)`` with ``lab.network.dhcp_env()``) runs dnsmasq on the bridge, a
VM's iPXE gets its address from it, and fetches its boot script from Ironworks at the bridge address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ironworks.agent import configdrive
from tests.e2e.images import (
    CONFIGDRIVE_LINE,
    INSTANCE_LINE,
    MODULES,
    PART_SIZE,
    PART_START,
    InstanceImage,
    configdrive_string,
    sha256_file,
)
from tests.lab.lab import Lab
from tests.lab.libvirt import LibvirtError, Vm

#: bounds, not expectations: the image reaches its marker ~15 s (BIOS) / ~20 s (UEFI) after power-on
BOOT_BOUND_S = 300.0


def ipmitool(lab: Lab, vm: Vm, *args: str) -> str:
    """``ipmitool`` against ``vm``'s VirtualBMC, inside the namespace; the password only in the environment."""
    argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(lab.ipmi_port(vm))]
    argv += ["-U", lab.settings.bmc_username, "-E", *args]
    assert lab.ns is not None
    proc = lab.ns.run(argv, env={**os.environ, "IPMI_PASSWORD": lab.settings.bmc_password}, timeout=60)
    assert proc.returncode == 0, f"`ipmitool {' '.join(args)}` for {vm.name} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def boot_from_disk(lab: Lab, vm: Vm) -> tuple[dict[str, str], str, int]:
    """Boot device disk, power on; (the instance marker's fields, the config drive result, serial offset)."""
    ipmitool(lab, vm, "chassis", "bootdev", "disk", "options=persistent")
    assert lab.libvirt.first_boot_device(vm.name) == "hd"
    offset = vm.serial.offset()
    ipmitool(lab, vm, "power", "on")
    instance = lab.wait_for_serial(vm, INSTANCE_LINE, after=offset, bound=BOOT_BOUND_S)
    drive = lab.wait_for_serial(vm, CONFIGDRIVE_LINE, after=instance.end, bound=BOOT_BOUND_S)
    # the image powers itself off (poweroff -f; the domain has <acpi/>)
    lab.wait_for_domain(vm, "shut off", bound=BOOT_BOUND_S)
    return instance.match.groupdict(), drive.match.group("result").strip(), offset


@pytest.fixture
def vms_off(lab: Lab) -> Iterator[Lab]:
    """Every VM off before and after the test."""
    for vm in lab.vms:
        lab.power_off_vm(vm)
    yield lab
    for vm in lab.vms:
        lab.power_off_vm(vm)


@pytest.fixture
def make_loop(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Attach files this test made to loop devices (with partitions); detached at teardown whatever happens."""
    if os.geteuid() != 0:  # a failure, not a skip: CI runs this tier as root
        pytest.fail("loop devices need root")
    made: list[str] = []

    def attach(backing: Path) -> str:
        assert backing.is_relative_to(tmp_path), "only files this test created go on a loop device"
        dev = subprocess.run(
            ["losetup", "--find", "--show", "-P", str(backing)], capture_output=True, text=True, check=True
        ).stdout.strip()
        made.append(dev)
        return dev

    try:
        yield attach
    finally:
        for dev in made:  # a test may have detached it already
            subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)


# ---- the image itself (no VM) ------------------------------------------------------------------------
def test_image_layout_leaves_the_disk_end_free(instance_image: InstanceImage) -> None:
    assert instance_image.raw.stat().st_size == instance_image.size == 1 << 30
    out = subprocess.run(["sfdisk", "--json", str(instance_image.raw)], capture_output=True, check=True).stdout
    table = json.loads(out)
    parts = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "dos"
    assert [(p["start"] * 512, p["size"] * 512, p["type"], p.get("bootable")) for p in parts] == [
        (PART_START, PART_SIZE, "ef", True)
    ]
    # everything after the boot partition is free: the agent's config drive goes at the end
    assert instance_image.free_from == PART_START + PART_SIZE < instance_image.size - 64 * (1 << 20)
    # syslinux's MBR boot code, then the partition table and the boot signature
    with instance_image.raw.open("rb") as f:
        head = f.read(512)
    assert head[:440] == Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
    assert head[510:] == b"\x55\xaa"


def test_raw_and_qcow2_hold_the_same_disk_and_their_sha256(instance_image: InstanceImage) -> None:
    assert sha256_file(instance_image.raw) == instance_image.raw_sha256
    assert sha256_file(instance_image.qcow2) == instance_image.qcow2_sha256
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", str(instance_image.qcow2)], capture_output=True).stdout
    )
    assert (info["format"], info["virtual-size"]) == ("qcow2", instance_image.size)
    # mostly zeros: the qcow2 is a small fraction of the disk it describes
    assert instance_image.qcow2.stat().st_size < instance_image.size // 10
    same = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(instance_image.raw), str(instance_image.qcow2)],
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0, same.stdout + same.stderr


def test_boot_partition_holds_both_boot_loaders_and_an_initramfs_that_can_print(
    instance_image: InstanceImage, tmp_path: Path
) -> None:
    part = f"{instance_image.raw}@@{PART_START}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-/", "-a", "-b", "-i", part, "::/"], capture_output=True, text=True, env=env)
    names = {line.strip().lower() for line in listing.stdout.splitlines()}
    bios = ("::/syslinux.cfg", "::/ldlinux.sys", "::/ldlinux.c32")
    for wanted in ("::/vmlinuz", "::/initrd.img", *bios, "::/efi/boot/bootx64.efi"):
        assert wanted in names, listing.stdout
    subprocess.run(["mcopy", "-i", part, "::/initrd.img", str(tmp_path / "initrd.img")], check=True, env=env)
    cpio = subprocess.run(
        f"zcat {tmp_path / 'initrd.img'} | cpio -itv --quiet", shell=True, capture_output=True, text=True, check=True
    ).stdout
    entries = {line.split()[-1]: line for line in cpio.splitlines()}
    # the kernel opens /dev/console for init's output before anything could mount devtmpfs
    assert entries["dev/console"].startswith("crw"), cpio
    assert entries["init"].startswith("-rwx") and entries["bin/busybox"].startswith("-rwx")
    assert {f"lib/modules/{m}.ko" for m in MODULES} <= set(entries), cpio


# ---- booting it on the lab's VMs -----------------------------------------------------------------------
@pytest.mark.lab
@pytest.mark.timeout(900)
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_image_boots_from_the_vm_disk(firmware: str, vms_off: Lab, instance_image: InstanceImage) -> None:
    lab = vms_off
    vm = lab.vms_with(firmware)[0]
    lab.write_disk_image(vm, instance_image.qcow2, image_format="qcow2")
    marker, drive, offset = boot_from_disk(lab, vm)
    assert marker == {
        "image": instance_image.image_id,
        "firmware": firmware,
        "kernel": instance_image.kernel_version,
    }, vm.serial.text(offset)[-3000:]
    assert drive == "none"
    # it was one power-on, seen as one start of this VM's firmware (SeaBIOS banner / OVMF start-up)
    assert vm.serial.firmware_starts(offset) == 1, vm.serial.text(offset)[:2000]


@pytest.mark.lab
@pytest.mark.timeout(900)
def test_image_reports_the_config_drive_the_agent_wrote(
    vms_off: Lab, instance_image: InstanceImage, make_loop: Callable[[Path], str], tmp_path: Path
) -> None:
    lab = vms_off
    vm = lab.vms_with("bios")[0]
    copy = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(instance_image.raw), str(copy)], check=True)
    node_uuid = str(uuid.uuid4())
    dev = make_loop(copy)
    part = configdrive.write_configdrive(
        dev, configdrive_string({"uuid": node_uuid, "hostname": "e2e"}, tmp_path), allowlist=[dev]
    )
    assert part == f"{dev}p2"
    subprocess.run(["losetup", "-d", dev], check=True)  # detached before qemu-img reads the file
    lab.write_disk_image(vm, copy, image_format="raw")
    marker, drive, _ = boot_from_disk(lab, vm)
    assert marker["image"] == instance_image.image_id
    assert drive == f"uuid={node_uuid} device=/dev/vda2"


@pytest.mark.lab
@pytest.mark.timeout(600)
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_a_vm_gets_dhcp_from_ironworks_on_the_bridge_and_reaches_its_api(firmware: str, vms_off: Lab) -> None:
    lab = vms_off
    vm = lab.vms_with(firmware)[0]
    # unknown MACs get the default (discovery) boot: no node is needed for the VM to be answered
    tftp_root = lab.workdir / f"tftpboot-{firmware}"
    tftp_root.mkdir()
    # the UEFI VM has no iPXE ROM: OVMF's PXE fetches snponly.efi over TFTP, which then runs iPXE
    shutil.copy("/usr/lib/ipxe/snponly.efi", tftp_root)
    env = {
        **lab.network.dhcp_env(),
        "IRONWORKS_DHCP_UNKNOWN_MACS": "discovery",
        "IRONWORKS_NETBOOT_TFTP_ROOT": str(tftp_root),
    }
    server = lab.start_ironworks(env, on_bridge=True)
    try:
        # the API at the bridge address, from inside the namespace (where the VMs are), with links to it
        root = server.api.get(f"{server.public_url}/v1")
        assert root.status_code == 200, root.text
        assert root.json()["links"][0]["href"].startswith(server.public_url), root.json()["links"]
        ipmitool(lab, vm, "chassis", "bootdev", "pxe", "options=persistent")
        offset = vm.serial.offset()
        ipmitool(lab, vm, "power", "on")
        prefix = re.escape(lab.network.subnet_prefix)
        lease = lab.wait_for_serial(vm, rf"net0: ({prefix}\.\d+)/255\.255\.255\.0", after=offset, bound=BOOT_BOUND_S)
        first, last = lab.settings.dhcp_first, lab.settings.dhcp_last
        assert first <= int(lease.match.group(1).rsplit(".", 1)[1]) <= last, lease.text
        # iPXE fetches the default script over HTTP from Ironworks itself, at the bridge address
        script = rf"{re.escape(server.public_url)}/boot/default\.ipxe"
        lab.wait_for_serial(vm, script, after=lease.end, bound=BOOT_BOUND_S)
        log = (server.state_dir / "logs" / "dnsmasq.log").read_text()
        ack = rf"DHCPACK\({lab.network.bridge}\) {re.escape(lease.match.group(1))} {vm.mac}"
        assert re.search(ack, log), log[-3000:]
        if firmware == "uefi":
            sent = rf"sent {re.escape(str(tftp_root))}/snponly\.efi to {re.escape(lease.match.group(1))}"
            assert re.search(sent, log), log[-3000:]
        # the bridge's router advertisements reached iPXE: it configured an address in the lab's IPv6 prefix
        v6 = re.escape(lab.network.ipv6_address.rsplit("::", 1)[0])
        lab.wait_for_serial(vm, rf"net0: {v6}:[0-9a-f:]+/64", after=offset, bound=10)
    finally:
        lab.power_off_vm(vm)
        server.stop()


@pytest.mark.lab
@pytest.mark.timeout(600)
def test_the_uefi_vm_is_uefi_to_its_bmc_and_its_resets_are_counted(vms_off: Lab) -> None:
    lab = vms_off
    vm = lab.vms_with("uefi")[0]
    assert lab.libvirt.xml(vm.name).find("./os/loader") is not None
    auth = (lab.settings.bmc_username, lab.settings.bmc_password)
    assert lab.ns is not None and lab.sushy is not None
    url = lab.sushy.url + lab.sushy.system_path(vm.uuid)
    with lab.ns.executor() as ex, httpx.Client(auth=auth, timeout=30) as client:
        boot = ex.submit(client.get, url).result().json()["Boot"]
        assert boot["BootSourceOverrideMode"] == "UEFI", boot
    # with no DHCP server OVMF's PXE client waits; a reset restarts the firmware, counted once
    ipmitool(lab, vm, "chassis", "bootdev", "pxe", "options=persistent")
    offset = vm.serial.offset()
    ipmitool(lab, vm, "power", "on")
    lab.wait_for_serial(vm, r">>Start PXE over IPv4", after=offset, bound=BOOT_BOUND_S)
    assert vm.serial.firmware_starts(offset) == 1, vm.serial.text(offset)
    before = vm.firmware_starts()
    ipmitool(lab, vm, "power", "reset")
    lab.wait_for_firmware_start(vm, before)
    assert vm.serial.firmware_starts(offset) == 2, vm.serial.text(offset)


@pytest.mark.lab
def test_an_image_larger_than_the_vm_disk_is_refused(vms_off: Lab, tmp_path: Path) -> None:
    lab = vms_off
    vm = lab.vms[0]
    big = tmp_path / "big.raw"
    # as large as the disk: no room left for the config drive a deploy adds at the end
    with big.open("wb") as f:
        f.truncate(lab.settings.disk_gib << 30)
    with pytest.raises(LibvirtError, match=r"does not fit on the 4 GiB disk of .* config drive .*LabSettings.disk_gib"):
        lab.write_disk_image(vm, big, image_format="raw")
