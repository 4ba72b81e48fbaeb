"""What the machine has, in ironic-python-agent's inventory shape.

``collect_inventory`` returns ``{"cpu", "memory", "disks", "interfaces", "system_vendor",
"bmc_address", "bmc_v6address", "bmc_mac", "boot", "hostname"}``. Every /proc and /sys path is read
under ``root`` and every external program goes through ``runner``, so tests use fake trees and
recorded output. A missing program or permission (dmidecode, ipmitool outside a ramdisk) leaves the
field empty instead of failing: a partial inventory still lets the conductor find the node.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from ironworks.agent import Runner, run_command

LOG = logging.getLogger(__name__)

LSBLK_COLUMNS = "NAME,SIZE,ROTA,SERIAL,WWN,TYPE,RO,MODEL,TRAN"
#: what the ramdisk counts as an installable disk (allowlisted devices count whatever their type)
DISK_TYPES = frozenset({"disk"})
IPMI_DEVICES = ("dev/ipmi0", "dev/ipmi/0", "dev/ipmidev/0")
DMI_FIELDS = {
    "manufacturer": ("system-manufacturer", "sys_vendor"),
    "product_name": ("system-product-name", "product_name"),
    "serial_number": ("system-serial-number", "product_serial"),
}
FIRMWARE_FIELDS = {"vendor": "bios-vendor", "version": "bios-version", "build_date": "bios-release-date"}
NO_MAC = "00:00:00:00:00:00"


def _run(runner: Runner, argv: list[str], *, timeout: float = 30.0) -> str | None:
    """stdout of a successful run, or None when the program is missing, fails or hangs."""
    try:
        res = runner(argv, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        LOG.debug("%s unavailable: %s", argv[0], exc)
        return None
    if res.returncode != 0:
        LOG.debug("%s exited %d: %s", " ".join(argv), res.returncode, res.stderr.strip()[:200])
        return None
    return res.stdout


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_info(root: Path, *, machine: str | None = None) -> dict[str, Any]:
    """CPU count, model, frequency, flags and architecture from ``/proc/cpuinfo``."""
    text = _read(root / "proc/cpuinfo") or ""
    count = 0
    model = frequency = None
    flags: list[str] = []
    sockets: set[str] = set()
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            count += 1
        elif key in ("model name", "cpu model", "Model") and model is None:
            model = value
        elif key == "cpu MHz" and frequency is None:
            frequency = value
        elif key in ("flags", "Features") and not flags:
            flags = value.split()
        elif key == "physical id":
            sockets.add(value)
    return {
        "model_name": model,
        "frequency": frequency,
        "count": count or os.cpu_count() or 1,
        "architecture": machine or platform.machine(),
        "flags": flags,
        "socket_count": len(sockets) or 1,
    }


def memory_info(root: Path) -> dict[str, Any]:
    """Total memory in bytes (and MiB) from ``/proc/meminfo``."""
    total = 0
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            total = int(parts[1]) * (1024 if len(parts) > 2 and parts[2].lower() == "kb" else 1)
            break
    return {"total": total, "physical_mb": total // (1024 * 1024)}


def _as_bool(value: Any) -> bool:
    return value in (True, 1, "1", "true")


def parse_lsblk(output: str) -> list[dict[str, Any]]:
    """Disk rows of ``lsblk -J -b -d -p -o NAME,SIZE,ROTA,SERIAL,WWN,TYPE,RO,MODEL,TRAN`` output."""
    try:
        rows = json.loads(output).get("blockdevices", [])
    except (ValueError, AttributeError):
        LOG.warning("lsblk printed something that is not its JSON output; no disks listed")
        return []
    disks = []
    for row in rows:
        name = row.get("name") or ""
        disks.append(
            {
                "name": name if name.startswith("/") else f"/dev/{name}",
                "model": (row.get("model") or "").strip() or None,
                "size": int(row.get("size") or 0),
                "rotational": _as_bool(row.get("rota")),
                "wwn": row.get("wwn") or None,
                "serial": (row.get("serial") or "").strip() or None,
                "vendor": None,
                "hctl": None,
                "by_path": None,
                "type": row.get("type"),
                "read_only": _as_bool(row.get("ro")),
                "tran": row.get("tran"),
            }
        )
    return disks


def disk_info(runner: Runner, allowlist: list[str] | None) -> list[dict[str, Any]]:
    """Installable disks; outside a ramdisk only the allowlisted ones (image files included)."""
    out = _run(runner, ["lsblk", "-J", "-b", "-d", "-p", "-o", LSBLK_COLUMNS])
    disks = parse_lsblk(out) if out else []
    if allowlist is None:
        return [d for d in disks if d["type"] in DISK_TYPES]
    allowed = {os.path.realpath(p): p for p in allowlist}
    picked = [d for d in disks if os.path.realpath(d["name"]) in allowed]
    seen = {os.path.realpath(d["name"]) for d in picked}
    for real, path in allowed.items():  # image files stand in for disks in tests
        if real not in seen and os.path.isfile(real):
            picked.append({"name": path, "model": None, "size": os.path.getsize(real), "rotational": False,
                           "wwn": None, "serial": None, "vendor": None, "hctl": None, "by_path": None,
                           "type": "file", "read_only": False, "tran": None})  # fmt: skip
    return picked


def _addresses(runner: Runner) -> dict[str, dict[str, str | None]]:
    """First IPv4 and IPv6 address per interface, from ``ip -j addr`` (empty when ip is missing)."""
    out = _run(runner, ["ip", "-j", "addr", "show"])
    found: dict[str, dict[str, str | None]] = {}
    try:
        rows = json.loads(out) if out else []
    except ValueError:
        return found
    for row in rows:
        entry = found.setdefault(row.get("ifname", ""), {"ipv4": None, "ipv6": None})
        for addr in row.get("addr_info", []):
            fam = "ipv4" if addr.get("family") == "inet" else "ipv6" if addr.get("family") == "inet6" else None
            if fam and entry[fam] is None and addr.get("scope") != "link":
                entry[fam] = addr.get("local")
    return found


def interface_info(root: Path, runner: Runner) -> list[dict[str, Any]]:
    """NICs from ``/sys/class/net``: physical ones (with a ``device``), else every non-loopback one."""
    base = root / "sys/class/net"
    try:
        names = sorted(p.name for p in base.iterdir())
    except OSError:
        return []
    addrs = _addresses(runner)
    nics = []
    for name in names:
        d = base / name
        mac = (_read(d / "address") or "").lower()
        if name == "lo" or not mac or mac == NO_MAC:
            continue
        driver = os.path.basename(os.readlink(d / "device/driver")) if (d / "device/driver").is_symlink() else None
        ip = addrs.get(name, {})
        nics.append(
            {
                "name": name,
                "mac_address": mac,
                "ipv4_address": ip.get("ipv4"),
                "ipv6_address": ip.get("ipv6"),
                "has_carrier": _read(d / "carrier") == "1",
                "driver": driver,
                "speed_mbps": _int_or_none(_read(d / "speed")),
                "physical": (d / "device").exists(),
                "lldp": None,
                "vendor": _read(d / "device/vendor"),
                "product": _read(d / "device/device"),
                "client_id": None,
                "biosdevname": None,
                "pxe_enabled": None,
            }
        )
    physical = [n for n in nics if n["physical"]]
    return physical or nics


def _int_or_none(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def _dmi(runner: Runner, keyword: str) -> str | None:
    out = _run(runner, ["dmidecode", "-s", keyword], timeout=15)
    lines = [ln.strip() for ln in (out or "").splitlines() if ln.strip() and not ln.startswith("#")]
    return lines[0] if lines else None


def system_info(root: Path, runner: Runner) -> dict[str, Any]:
    """Vendor, product and serial from dmidecode, else from ``/sys/class/dmi/id`` (serial needs root)."""
    dmi = root / "sys/class/dmi/id"
    info: dict[str, Any] = {
        field: _dmi(runner, keyword) or _read(dmi / sysfs) for field, (keyword, sysfs) in DMI_FIELDS.items()
    }
    info["firmware"] = {field: _dmi(runner, keyword) for field, keyword in FIRMWARE_FIELDS.items()}
    return info


def parse_ipmitool_lan(output: str) -> dict[str, str | None]:
    """BMC IPv4 and MAC address from ``ipmitool lan print``; 0.0.0.0 counts as none."""
    found: dict[str, str | None] = {"bmc_address": None, "bmc_mac": None}
    for line in output.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "IP Address" and value not in ("", "0.0.0.0"):
            found["bmc_address"] = value
        elif key == "MAC Address" and value and value != NO_MAC:
            found["bmc_mac"] = value.lower()
    return found


def bmc_info(root: Path, runner: Runner) -> dict[str, str | None]:
    """The BMC's address, when the machine has an IPMI device and ipmitool."""
    if not any((root / dev).exists() for dev in IPMI_DEVICES):
        return {"bmc_address": None, "bmc_mac": None}
    return parse_ipmitool_lan(_run(runner, ["ipmitool", "lan", "print"], timeout=30) or "")


def boot_info(root: Path) -> dict[str, Any]:
    """UEFI when ``/sys/firmware/efi`` exists, else BIOS."""
    return {"current_boot_mode": "uefi" if (root / "sys/firmware/efi").is_dir() else "bios", "pxe_interface": None}


def collect_inventory(
    *, root: Path = Path("/"), runner: Runner = run_command, allowlist: list[str] | None = None
) -> dict[str, Any]:
    """The whole inventory (``allowlist`` None: a ramdisk, every disk counts)."""
    bmc = bmc_info(root, runner)
    return {
        "cpu": cpu_info(root),
        "memory": memory_info(root),
        "disks": disk_info(runner, allowlist),
        "interfaces": interface_info(root, runner),
        "system_vendor": system_info(root, runner),
        "bmc_address": bmc["bmc_address"],
        "bmc_v6address": None,
        "bmc_mac": bmc["bmc_mac"],
        "boot": boot_info(root),
        "hostname": socket.gethostname(),
    }


def mac_addresses(root: Path = Path("/"), runner: Runner = run_command) -> list[str]:
    """MAC addresses to look the node up with."""
    return [nic["mac_address"] for nic in interface_info(root, runner)]
