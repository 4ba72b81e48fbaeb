"""Erasing disks: metadata only (fast, for cleaning between tenants that trust each other) or the
whole device with the best method it supports: NVMe format with secure erase, ATA security erase,
else overwriting it with ``shred``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ironworks.agent import devices
from ironworks.agent.errors import AgentError

# a throwaway password: ATA security erase needs one set, and the erase clears it again
_ATA_PASSWORD = "ironworks"


def erase_devices_metadata(devices_: list[str], *, allowlist: list[str] | None = None) -> dict[str, Any]:
    """Remove every file system, RAID and partition table signature, and zero the first/last MiB."""
    for dev in devices_:
        devices.check_allowed(dev, allowlist)
    result: dict[str, Any] = {}
    for dev in devices_:
        parts = devices.partitions(dev)
        for part in parts:
            devices.check_allowed(part, allowlist)
            devices.run_tool(["wipefs", "--all", "--force", part])
        devices.run_tool(["wipefs", "--all", "--force", dev])
        devices.wipe_head_tail(dev, allowlist=allowlist)
        result[dev] = {"method": "metadata", "partitions": parts}
    return result


def nvme_secure_erase_setting(id_ctrl: dict[str, Any]) -> int | None:
    """``nvme format -s`` value from ``nvme id-ctrl -o json``: 2 (crypto erase) if supported, else 1, else None.

    FNA bit 2 says the controller supports cryptographic erase as part of a format; the Format NVM
    command itself is optional (OACS bit 1).
    """
    if not int(id_ctrl.get("oacs", 0)) & 0x2:
        return None
    return 2 if int(id_ctrl.get("fna", 0)) & 0x4 else 1


def ata_security_state(hdparm_i: str) -> dict[str, bool]:
    """The Security section of ``hdparm -I``: supported/enabled/locked/frozen/enhanced flags.

    Each flag is a line of its own, negated by a leading ``not`` (``\tnot\tfrozen``).
    """
    lines: list[list[str]] = []
    inside = False
    for line in hdparm_i.splitlines():
        if line.startswith("Security:"):
            inside = True
        elif inside and line and not line[0].isspace():
            break
        elif inside:
            lines.append(line.split())
    return {
        "supported": ["supported"] in lines,
        "enabled": ["enabled"] in lines,
        "locked": ["locked"] in lines,
        "frozen": ["frozen"] in lines,
        "enhanced": any(words[:3] == ["supported:", "enhanced", "erase"] for words in lines),
    }


def _is_readonly(dev: str) -> bool:
    if not devices.is_block(dev):
        return False
    name = Path(os.path.realpath(dev)).name
    try:
        return Path(f"/sys/class/block/{name}/ro").read_text().strip() == "1"
    except OSError:
        return False


def _transport(dev: str) -> str:
    if not devices.is_block(dev):
        return ""
    out = devices.run_tool(["lsblk", "-d", "-n", "-o", "TRAN", dev], check=False).stdout.strip()
    return out.lower()


def _try_nvme(dev: str) -> dict[str, Any] | None:
    if not Path(os.path.realpath(dev)).name.startswith("nvme"):
        return None
    proc = devices.run_tool(["nvme", "id-ctrl", "-o", "json", dev], check=False)
    if proc.returncode != 0:
        return None
    setting = nvme_secure_erase_setting(json.loads(proc.stdout))
    if setting is None:
        return None
    devices.run_tool(["nvme", "format", dev, f"--ses={setting}", "--force"], timeout=3600)
    return {"method": "nvme_format", "ses": setting}


def _try_ata(dev: str) -> dict[str, Any] | None:
    if _transport(dev) not in ("sata", "ata"):
        return None
    proc = devices.run_tool(["hdparm", "-I", dev], check=False)
    state = ata_security_state(proc.stdout)
    if proc.returncode != 0 or not state["supported"] or state["frozen"] or state["locked"] or state["enabled"]:
        return None
    devices.run_tool(["hdparm", "--user-master", "u", "--security-set-pass", _ATA_PASSWORD, dev])
    mode = "--security-erase-enhanced" if state["enhanced"] else "--security-erase"
    devices.run_tool(["hdparm", "--user-master", "u", mode, _ATA_PASSWORD, dev], timeout=6 * 3600)
    return {"method": "ata_secure_erase", "enhanced": state["enhanced"]}


def _erase_one(dev: str) -> dict[str, Any]:
    if _is_readonly(dev):
        return {"method": "skipped", "reason": "read-only"}
    for attempt in (_try_nvme, _try_ata):
        done = attempt(dev)
        if done is not None:
            return done
    devices.run_tool(["shred", "--iterations=1", "--zero", dev], timeout=24 * 3600)
    return {"method": "shred"}


def erase_devices(devices_: Sequence[str], *, allowlist: list[str] | None = None) -> dict[str, Any]:
    """Erase every device completely, in parallel; report per device which method ran.

    Every device is checked against the allowlist before any is touched. When one fails the others
    still finish, then AgentError names each failure.
    """
    for dev in devices_:
        devices.check_allowed(dev, allowlist)
    result: dict[str, Any] = {}
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, len(devices_))) as pool:
        futures = {dev: pool.submit(_erase_one, dev) for dev in devices_}
        for dev, fut in futures.items():
            try:
                result[dev] = fut.result()
            except AgentError as exc:
                failures.append(f"{dev}: {exc}")
    if failures:
        raise AgentError(f"erasing failed on {len(failures)} device(s): {'; '.join(failures)}", result=result)
    return result
