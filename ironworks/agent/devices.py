"""Block devices: listing, the allowlist guard every destructive operation calls first, and the small
device primitives (size, partitions, wiping partition tables) the work modules share.

The guard is the one thing standing between a bug and a wiped host disk. Outside a ramdisk (a
developer's machine, CI) nothing is writable unless it is on an explicit allowlist; inside the
ramdisk the agent owns the machine and every device is fair game unless an allowlist narrows it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ironworks.agent.errors import AgentError, DeviceNotAllowed

MIB = 1 << 20
RAMDISK_FSTYPES = frozenset({"rootfs", "tmpfs", "ramfs"})
LSBLK_COLUMNS = "NAME,PATH,SIZE,ROTA,SERIAL,WWN,TYPE,RO,MODEL,TRAN"
# BMC virtual media shows up as a (usually USB) disk or cdrom; writing an image there is never wanted.
_VIRTUAL_MEDIA = re.compile(r"virtual\s*(media|cd|dvd|floppy|disk)|vmedia|ide\s*cdrom", re.IGNORECASE)


def in_ramdisk(*, mounts: str = "/proc/mounts") -> bool:
    """True when the visible root file system is a ramdisk (rootfs/tmpfs/ramfs).

    Only the root file system type is trusted: ``/proc/1/comm`` is ``init`` or ``systemd`` on a
    ramdisk and on a host alike, and containers have overlay roots, so both read as "not a ramdisk".
    """
    fstype = ""
    try:
        with open(mounts, encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[1] == "/":
                    fstype = fields[2]  # the last "/" entry is the one on top
    except OSError:
        return False
    return fstype in RAMDISK_FSTYPES


def _real(path: str) -> str:
    return os.path.realpath(path)


def parent_disk(path: str) -> str | None:
    """The whole-disk device a partition belongs to (``/dev/loop0`` for ``/dev/loop0p1``), else None."""
    real = _real(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    sysdir = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    if not (sysdir / "partition").exists():
        return None
    return "/dev/" + sysdir.resolve().parent.name


def check_allowed(path: str, allowlist: Sequence[str] | None) -> None:
    """Raise DeviceNotAllowed unless ``path`` may be written to.

    With an allowlist, ``path`` (symlinks resolved) must be on it, or be a partition of a disk on
    it. Without one, writing is allowed only when the agent runs in a ramdisk.
    """
    if allowlist is None:
        if in_ramdisk():
            return
        raise DeviceNotAllowed(
            f"refusing to write to {path}: the agent is not running in a ramdisk and no device allowlist was "
            "given; pass an allowlist naming the test devices",
            device=path,
        )
    real = _real(path)
    allowed = {_real(p) for p in allowlist}
    if real in allowed:
        return
    disk = parent_disk(real)
    if disk is not None and _real(disk) in allowed:
        return
    raise DeviceNotAllowed(
        f"refusing to write to {path}: it is not on the device allowlist ({', '.join(sorted(allowlist)) or 'empty'})",
        device=path,
    )


def run_tool(argv: Sequence[str], *, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a system tool, stdin closed, text output; a missing tool or failure becomes AgentError."""
    try:
        proc = subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise AgentError(f"{argv[0]} is not installed in the ramdisk", tool=argv[0]) from exc
    except subprocess.TimeoutExpired as exc:
        raise AgentError(f"{' '.join(argv)} did not finish within {timeout:g} s", tool=argv[0]) from exc
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise AgentError(f"{' '.join(argv)} failed with exit code {proc.returncode}: {tail}", tool=argv[0])
    return proc


def _row(dev: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": dev.get("name"),
        "path": dev.get("path"),
        "size": int(dev.get("size") or 0),
        "rotational": bool(dev.get("rota")),
        "serial": dev.get("serial"),
        "wwn": dev.get("wwn"),
        "type": dev.get("type"),
        "ro": bool(dev.get("ro")),
        "model": (dev.get("model") or "").strip() or None,
        "tran": dev.get("tran"),
    }


def filter_block_devices(lsblk: dict[str, Any], allowlist: Sequence[str] | None) -> list[dict[str, Any]]:
    """Rows of ``lsblk -J -b`` output that are writable whole disks (and on the allowlist, if any)."""
    allowed = None if allowlist is None else {_real(p) for p in allowlist}
    rows = []
    for dev in lsblk.get("blockdevices", []):
        row = _row(dev)
        if row["type"] not in ("disk", "loop") or row["ro"] or row["size"] == 0:
            continue
        if _VIRTUAL_MEDIA.search(row["model"] or ""):
            continue
        if allowed is not None and _real(str(row["path"])) not in allowed:
            continue
        if allowed is None and row["type"] == "loop":
            continue  # a loop device is only a target when a test names it
        rows.append(row)
    return rows


def list_block_devices(allowlist: list[str] | None) -> list[dict[str, Any]]:
    """Writable whole disks (no cdroms, virtual media or read-only devices), as lsblk rows."""
    out = run_tool(["lsblk", "-J", "-b", "-d", "-o", LSBLK_COLUMNS]).stdout
    return filter_block_devices(json.loads(out), allowlist)


def device_size(path: str) -> int:
    """Size in bytes of a block device or regular file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def is_block(path: str) -> bool:
    """True for a block device node."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def partitions(path: str) -> list[str]:
    """Partition nodes of a whole disk, in partition order (empty for files and partition-less disks)."""
    if not is_block(path):
        return []
    st = os.stat(_real(path))
    sysdir = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}").resolve()
    parts = [(int((d / "partition").read_text()), d.name) for d in sysdir.iterdir() if (d / "partition").exists()]
    return [f"/dev/{name}" for _, name in sorted(parts)]


def wipe_head_tail(path: str, *, allowlist: Sequence[str] | None, length: int = MIB) -> None:
    """Zero the first and last ``length`` bytes: MBR, primary and backup GPT no longer exist."""
    check_allowed(path, allowlist)
    size = device_size(path)
    zeros = bytes(min(length, size))
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, zeros, 0)
        if size > len(zeros):
            os.pwrite(fd, zeros, size - len(zeros))
        os.fsync(fd)
    finally:
        os.close(fd)
    reread_partitions(path)


def reread_partitions(path: str) -> None:
    """Make the kernel see the current partition table (best effort: files and busy disks are skipped)."""
    if is_block(path) and parent_disk(path) is None:
        run_tool(["partx", "-u", path], check=False)
        if not partitions(path):  # partx -u keeps stale entries when the table is gone
            run_tool(["partx", "-d", path], check=False)


def wait_for_node(path: str, *, timeout: float = 10.0) -> None:
    """Wait until a (partition) device node exists."""
    deadline = time.monotonic() + timeout
    while not is_block(path):
        if time.monotonic() > deadline:
            raise AgentError(f"device node {path} did not appear within {timeout:g} s", device=path)
        time.sleep(0.05)
