"""Inventory from a fake /proc + /sys tree and recorded lsblk, ip, dmidecode and ipmitool output."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from ironworks.agent import RunResult
from ironworks.agent.inventory import collect_inventory, mac_addresses, parse_ipmitool_lan

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
cpu MHz\t\t: 2100.000
physical id\t: 0
flags\t\t: fpu vme sse2 avx2

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 1
"""
LSBLK = {
    "blockdevices": [
        {"name": "/dev/sda", "size": 480103981056, "rota": False, "serial": "S4XXNA0 ", "wwn": "0x5002538e",
         "type": "disk", "ro": False, "model": "SAMSUNG MZ7LH480 ", "tran": "sata"},
        {"name": "/dev/sr0", "size": 1073741312, "rota": True, "serial": None, "wwn": None, "type": "rom",
         "ro": False, "model": "Virtual CDROM", "tran": "usb"},
        {"name": "/dev/loop5", "size": "104857600", "rota": "0", "serial": None, "wwn": None, "type": "loop",
         "ro": "0", "model": None, "tran": None},
    ]
}  # fmt: skip
IP_ADDR = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "scope": "host"}]},
    {"ifname": "eno1", "addr_info": [
        {"family": "inet6", "local": "fe80::1", "scope": "link"},
        {"family": "inet", "local": "192.0.2.10", "scope": "global"},
    ]},
]  # fmt: skip
IPMITOOL_LAN = """Set in Progress         : Set Complete
IP Address Source       : Static Address
IP Address              : 192.0.2.200
Subnet Mask             : 255.255.255.0
MAC Address             : 3C:EC:EF:00:11:22
"""
DMIDECODE = {
    "system-manufacturer": "# SMBIOS entry point at 0x000f0000\nDell Inc.\n",
    "system-product-name": "PowerEdge R640\n",
    "system-serial-number": "ABC1234\n",
    "bios-vendor": "Dell Inc.\n",
    "bios-version": "2.19.1\n",
    "bios-release-date": "06/06/2023\n",
}


def fake_runner(*, dmidecode: bool = True):  # type: ignore[no-untyped-def]
    calls: list[list[str]] = []

    def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0) -> RunResult:
        calls.append(list(argv))
        if argv[0] == "lsblk":
            return RunResult(0, json.dumps(LSBLK))
        if argv[0] == "ip":
            return RunResult(0, json.dumps(IP_ADDR))
        if argv[0] == "ipmitool":
            return RunResult(0, IPMITOOL_LAN)
        if argv[0] == "dmidecode":
            if not dmidecode:
                raise FileNotFoundError("dmidecode")
            return RunResult(0, DMIDECODE[argv[2]])
        raise AssertionError(f"unexpected command {argv}")

    run.calls = calls  # type: ignore[attr-defined]
    return run


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(CPUINFO)
    (tmp_path / "proc/meminfo").write_text("MemTotal:       16318480 kB\nMemFree:         1000 kB\n")
    net = tmp_path / "sys/class/net"
    for name, mac, carrier in [("lo", "00:00:00:00:00:00", "1"), ("eno1", "3C:EC:EF:AA:BB:01", "1"),
                               ("eno2", "3c:ec:ef:aa:bb:02", "0"), ("veth9", "ee:00:00:00:00:09", "1")]:  # fmt: skip
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
        (net / name / "carrier").write_text(carrier + "\n")
    drivers = tmp_path / "sys/bus/pci/drivers/ixgbe"
    drivers.mkdir(parents=True)
    for name in ("eno1", "eno2"):
        (net / name / "device").mkdir()
        os.symlink(drivers, net / name / "device/driver")
    (net / "eno1/speed").write_text("10000\n")
    (tmp_path / "sys/firmware/efi").mkdir(parents=True)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/ipmi0").write_text("")
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("QEMU\n")
    (dmi / "product_name").write_text("Standard PC (Q35 + ICH9, 2009)\n")
    return tmp_path


def test_inventory_in_a_ramdisk(tree: Path) -> None:
    inv = collect_inventory(root=tree, runner=fake_runner(), allowlist=None)
    assert inv["cpu"] == {
        "model_name": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz",
        "frequency": "2100.000",
        "count": 2,
        "architecture": inv["cpu"]["architecture"],
        "flags": ["fpu", "vme", "sse2", "avx2"],
        "socket_count": 2,
    }
    assert inv["memory"] == {"total": 16318480 * 1024, "physical_mb": 15936}
    assert [(d["name"], d["size"], d["rotational"], d["serial"], d["model"]) for d in inv["disks"]] == [
        ("/dev/sda", 480103981056, False, "S4XXNA0", "SAMSUNG MZ7LH480")
    ]  # no cdrom, no loop device
    nics = {n["name"]: n for n in inv["interfaces"]}
    assert set(nics) == {"eno1", "eno2"}  # lo and the virtual veth are left out
    assert nics["eno1"]["mac_address"] == "3c:ec:ef:aa:bb:01" and nics["eno1"]["has_carrier"] is True
    assert nics["eno1"]["driver"] == "ixgbe" and nics["eno1"]["speed_mbps"] == 10000
    assert nics["eno1"]["ipv4_address"] == "192.0.2.10" and nics["eno1"]["ipv6_address"] is None
    assert nics["eno2"]["has_carrier"] is False
    assert inv["system_vendor"] == {
        "manufacturer": "Dell Inc.",
        "product_name": "PowerEdge R640",
        "serial_number": "ABC1234",
        "firmware": {"vendor": "Dell Inc.", "version": "2.19.1", "build_date": "06/06/2023"},
    }
    assert (inv["bmc_address"], inv["bmc_mac"]) == ("192.0.2.200", "3c:ec:ef:00:11:22")
    assert inv["boot"]["current_boot_mode"] == "uefi"


def test_inventory_outside_a_ramdisk_tolerates_missing_tools(tree: Path) -> None:
    image = tree / "disk.img"
    image.write_bytes(b"\0" * 8192)
    (tree / "dev/ipmi0").unlink()
    runner = fake_runner(dmidecode=False)
    inv = collect_inventory(root=tree, runner=runner, allowlist=["/dev/loop5", str(image)])
    assert [(d["name"], d["size"], d["type"]) for d in inv["disks"]] == [
        ("/dev/loop5", 104857600, "loop"),
        (str(image), 8192, "file"),
    ]
    assert inv["system_vendor"]["manufacturer"] == "QEMU"  # from /sys when dmidecode is missing
    assert inv["system_vendor"]["serial_number"] is None
    assert inv["bmc_address"] is None and not any(c[0] == "ipmitool" for c in runner.calls)


def test_bios_boot_and_virtual_only_nics(tree: Path) -> None:
    (tree / "sys/firmware/efi").rmdir()
    for name in ("eno1", "eno2"):
        (tree / f"sys/class/net/{name}/device/driver").unlink()
        (tree / f"sys/class/net/{name}/device").rmdir()
    inv = collect_inventory(root=tree, runner=fake_runner())
    assert inv["boot"]["current_boot_mode"] == "bios"
    # a container or VM without physical NICs still looks itself up with what it has
    assert mac_addresses(tree, fake_runner()) == ["3c:ec:ef:aa:bb:01", "3c:ec:ef:aa:bb:02", "ee:00:00:00:00:09"]


def test_ipmitool_without_an_address() -> None:
    assert parse_ipmitool_lan("IP Address              : 0.0.0.0\nMAC Address : 00:00:00:00:00:00\n") == {
        "bmc_address": None,
        "bmc_mac": None,
    }
