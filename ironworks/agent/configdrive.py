"""Writing the config drive: the ``config-2`` ISO9660/vfat image cloud-init reads on first boot.

Ironic sends it as base64 of the gzipped image (or as a URL to that). It lands on the partition
already labelled ``config-2`` if the image has one, else on a new partition at the end of the disk
(GPT or MBR, through ``sfdisk``), at least 64 MiB like Ironic's.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import zlib
from typing import Any

from ironworks.agent import devices
from ironworks.agent.errors import ImageError

LABEL = "config-2"
MIN_PARTITION = 64 * devices.MIB
MAX_CONFIGDRIVE = 64 * devices.MIB  # Ironic's limit on the uncompressed image
_ALIGN = devices.MIB


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            data: bytes = resp.read(MAX_CONFIGDRIVE + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise ImageError(f"could not download the config drive from {url}: {exc}", url=url) from exc
    if len(data) > MAX_CONFIGDRIVE:
        raise ImageError(f"the config drive at {url} is larger than 64 MiB", url=url)
    return data


def decode_configdrive(configdrive: str, dest: str) -> int:
    """Write the image a config drive string stands for to the file ``dest``; return its size."""
    data = _download(configdrive) if configdrive.startswith(("http://", "https://")) else None
    if data is None or not data.startswith(b"\x1f\x8b"):
        try:
            data = base64.b64decode(data if data is not None else configdrive, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ImageError("the config drive is neither base64 nor a URL") from exc
    if data.startswith(b"\x1f\x8b"):
        size = 0
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as src, open(dest, "wb") as out:
                while block := src.read(devices.MIB):
                    size += len(block)
                    if size > MAX_CONFIGDRIVE:
                        raise ImageError("the config drive unpacks to more than 64 MiB")
                    out.write(block)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageError(f"the config drive is not a valid gzip stream: {exc}") from exc
        return size
    with open(dest, "wb") as out:  # Ironic also accepts an uncompressed image
        out.write(data)
    return len(data)


def _label(path: str) -> str:
    proc = devices.run_tool(["blkid", "-p", "-o", "value", "-s", "LABEL", path], check=False)
    return proc.stdout.strip()


def find_config_partition(device: str) -> str | None:
    """The partition of ``device`` whose file system (or GPT name) is labelled config-2."""
    for part in devices.partitions(device):
        if _label(part).lower() == LABEL:
            return part
        name = devices.run_tool(["blkid", "-p", "-o", "value", "-s", "PART_ENTRY_NAME", part], check=False)
        if name.stdout.strip().lower() == LABEL:
            return part
    return None


def plan_partition(table: dict[str, Any], size: int, device_bytes: int) -> tuple[int, int]:
    """(start, sectors) of a new partition of ``size`` bytes at the end of the free space of ``table``.

    ``table`` is ``sfdisk --json`` output; raises ImageError when the space after the last partition
    is too small or an MBR has no free primary slot.
    """
    pt = table["partitiontable"]
    sector = int(pt.get("sectorsize", 512))
    parts = pt.get("partitions", [])
    if pt["label"] == "dos" and len(parts) >= 4:
        raise ImageError("the MBR partition table has no free primary slot for the config drive")
    last_lba = int(pt["lastlba"]) if "lastlba" in pt else device_bytes // sector - 1
    used_end = max([int(p["start"]) + int(p["size"]) for p in parts] + [int(pt.get("firstlba", 2048))])
    sectors = -(-max(size, MIN_PARTITION) // _ALIGN) * (_ALIGN // sector)
    start = (last_lba + 1 - sectors) // (_ALIGN // sector) * (_ALIGN // sector)
    if start < used_end:
        raise ImageError(
            f"no room for a {sectors * sector // devices.MIB} MiB config drive partition after the last partition"
        )
    return start, last_lba + 1 - start


def _create_partition(device: str, size: int) -> str:
    label = devices.run_tool(["blkid", "-p", "-o", "value", "-s", "PTTYPE", device], check=False).stdout.strip()
    if label not in ("gpt", "dos"):
        raise ImageError(f"{device} has no partition table to add a config drive partition to", device=device)
    if label == "gpt":  # a whole-disk image put its backup GPT at the image's end, not the disk's
        devices.run_tool(["sfdisk", "--relocate", "gpt-bak-std", device])
    before = json.loads(devices.run_tool(["sfdisk", "--json", device]).stdout)
    start, sectors = plan_partition(before, size, devices.device_size(device))
    kind = "0FC63DAF-8483-4772-8E79-3D69D8477DE4" if label == "gpt" else "83"
    script = f"start={start}, size={sectors}, type={kind}\n"
    proc = _sfdisk_append(device, script)
    if proc:
        raise ImageError(f"sfdisk could not add the config drive partition to {device}: {proc}", device=device)
    after = json.loads(devices.run_tool(["sfdisk", "--json", device]).stdout)
    node = next(str(p["node"]) for p in after["partitiontable"]["partitions"] if int(p["start"]) == start)
    devices.run_tool(["partx", "-a", device], check=False)
    devices.run_tool(["partx", "-u", device], check=False)
    devices.wait_for_node(node)
    return node


def _sfdisk_append(device: str, script: str) -> str:
    proc = subprocess.run(
        ["sfdisk", "--append", "--no-reread", "--no-tell-kernel", "-q", device],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "" if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()


def write_configdrive(device: str, configdrive: str, *, allowlist: list[str] | None = None) -> str:
    """Put the config drive on ``device`` and return the partition it was written to."""
    devices.check_allowed(device, allowlist)
    with tempfile.TemporaryDirectory(prefix="configdrive-") as tmp:
        image = os.path.join(tmp, "configdrive.img")
        size = decode_configdrive(configdrive, image)
        if _label(image).lower() != LABEL:
            raise ImageError(f"the config drive image is not labelled {LABEL}: refusing to write it")
        devices.reread_partitions(device)
        part = find_config_partition(device) or _create_partition(device, size)
        devices.check_allowed(part, allowlist)
        if devices.device_size(part) < size:
            raise ImageError(f"the config drive ({size} bytes) does not fit on {part}", device=part)
        with open(image, "rb") as src, open(part, "r+b") as dst:
            shutil.copyfileobj(src, dst, devices.MIB)
            dst.flush()
            os.fsync(dst.fileno())
    return part
