"""The generic hardware manager: what any Linux machine can do, through the work modules beside it.

The work itself (devices, image, configdrive, erase, firmware, burnin) is imported inside each
method, so a manager can be listed and its steps served before those modules are even needed.
Every destructive call passes the context's allowed devices on: outside a ramdisk only allowlisted
devices are touched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ironworks.agent.hardware import HardwareError, HardwareManager, HardwareSupport, agent_step
from ironworks.agent.inventory import collect_inventory

LOG = logging.getLogger(__name__)

GIB = 1024**3
#: a disk smaller than this is not picked as the install disk without a root device hint
MIN_INSTALL_DISK = 4 * GIB
FIRMWARE_TIMEOUT = 1800.0
OUTPUT_LINES = 50
_SECONDS = {"description": "seconds to run (default 60)", "required": False, "type": "integer"}
_BURNIN_CPU_ARGS = {"timeout": _SECONDS}
_BURNIN_MEMORY_ARGS = {
    "timeout": _SECONDS,
    "vm_bytes": {"description": "memory to test: a size or a share (default 75%)", "required": False,
                 "type": "string"},
}  # fmt: skip
_BURNIN_DISK_ARGS = {"runtime": _SECONDS}
_BURNIN_NETWORK_ARGS = {
    "role": {"description": "reader (listens) or writer (connects to the partner)", "required": True,
             "type": "string"},
    "partner": {"description": "host name or address of the reader (writer only)", "required": False,
                "type": "string"},
    "port": {"description": "TCP port the reader listens on (default 9000)", "required": False, "type": "integer"},
    "runtime": _SECONDS,
    "timeout": {"description": "seconds to wait for the partner (default 300)", "required": False,
                "type": "integer"},
    "size": {"description": "fio size of one pass, e.g. 64m or 1g (default 1g)", "required": False,
             "type": "string"},
}  # fmt: skip
_FIRMWARE_ARGS = {
    "url": {"description": "URL of the firmware tarball (with a runme.sh)", "required": True, "type": "string"},
    "checksum": {"description": "SHA-256 of the tarball", "required": False, "type": "string"},
    "timeout": {"description": f"seconds runme.sh may run (default {FIRMWARE_TIMEOUT:g})", "required": False,
                "type": "number"},
}  # fmt: skip
_IMAGE_ARGS = {
    "image_info": {"description": "the image to write (url, checksum, disk_format ...)", "required": True,
                   "type": "object"},
    "configdrive": {"description": "config drive (base64 gzipped ISO, or a URL)", "required": False,
                    "type": "string"},
}  # fmt: skip


class GenericHardwareManager(HardwareManager):
    """Inventory, disks, erase, firmware and burn-in on any Linux machine."""

    HARDWARE_MANAGER_NAME = "generic_hardware_manager"
    HARDWARE_MANAGER_VERSION = "1.0"

    def evaluate_hardware_support(self) -> int:
        """Always GENERIC."""
        return HardwareSupport.GENERIC

    def get_inventory(self) -> dict[str, Any]:
        """The machine's inventory (disks limited to the allowed devices outside a ramdisk)."""
        return collect_inventory(root=self.ctx.root, runner=self.ctx.runner, allowlist=self.ctx.allowed_devices)

    def list_block_devices(self) -> list[dict[str, Any]]:
        """Block devices the agent may touch."""
        from ironworks.agent import devices

        return devices.list_block_devices(self.ctx.allowed_devices)

    def _candidates(self) -> list[dict[str, Any]]:
        """Writable devices; with an allowlist, its regular files too (tests write images to files)."""
        rows = [r for r in self.list_block_devices() if not _truthy(r.get("ro"))]
        listed = {os.path.realpath(_device_path(r)) for r in rows}
        for path in self.ctx.allowed_devices or ():
            if os.path.isfile(path) and os.path.realpath(path) not in listed:
                rows.append({"name": path, "path": path, "size": os.path.getsize(path), "type": "file", "ro": False})
        return rows

    def _device_paths(self) -> list[str]:
        paths = [_device_path(row) for row in self._candidates()]
        if not paths:
            raise HardwareError("no block device the agent may touch (outside a ramdisk only the allowlist counts)")
        return paths

    def get_os_install_device(self, node: dict[str, Any]) -> str:
        """The disk to install on: the one the root device hints match, else the smallest big enough."""
        rows = self._candidates()
        hints = (node.get("properties") or {}).get("root_device") or {}
        if hints:
            matching = [r for r in rows if _matches_hints(r, hints)]
            if not matching:
                raise HardwareError(f"no disk matches the root device hints {hints}")
            return _device_path(matching[0])
        if not rows:
            raise HardwareError("no disk to install on (outside a ramdisk only the allowlist counts)")
        if self.ctx.allowed_devices is not None:
            return _device_path(rows[0])  # an explicit allowlist: its first device
        big = sorted((r for r in rows if int(r.get("size") or 0) >= MIN_INSTALL_DISK), key=lambda r: int(r["size"]))
        if not big:
            raise HardwareError(f"no disk of at least {MIN_INSTALL_DISK // GIB} GiB to install on")
        return _device_path(big[0])

    @agent_step("deploy", priority=0, argsinfo=_IMAGE_ARGS)
    def write_image(
        self, *, node: dict[str, Any], ports: list[Any], image_info: dict[str, Any], configdrive: str | None = None
    ) -> dict[str, Any]:
        """Write the image (and the config drive) to the install disk, reporting bytes written."""
        from ironworks.agent import configdrive as cd
        from ironworks.agent import image

        device = self.get_os_install_device(node)

        def progress(done: int, total: int | None) -> None:
            self.ctx.progress({"done": done, "total": total, "device": device})

        result = dict(image.write_image(image_info, device, progress=progress, allowlist=self.ctx.allowed_devices))
        result["device"] = device
        if configdrive:
            result["configdrive_partition"] = cd.write_configdrive(
                device, configdrive, allowlist=self.ctx.allowed_devices
            )
        return result

    @agent_step("clean", priority=99)
    def erase_devices_metadata(self, *, node: dict[str, Any], ports: list[Any]) -> dict[str, Any]:
        """Wipe partition tables and filesystem signatures (Ironic's default automated clean)."""
        from ironworks.agent import erase

        return erase.erase_devices_metadata(self._device_paths(), allowlist=self.ctx.allowed_devices)

    # priority 10 is Ironic's default; operators who only want the metadata erase set it to 0
    @agent_step("clean", priority=10, abortable=True)
    def erase_devices(self, *, node: dict[str, Any], ports: list[Any]) -> dict[str, Any]:
        """Erase every device: NVMe format, ATA secure erase, or overwrite."""
        from ironworks.agent import erase

        return erase.erase_devices(self._device_paths(), allowlist=self.ctx.allowed_devices)

    @agent_step("clean", priority=0, argsinfo=_FIRMWARE_ARGS)
    @agent_step("service", priority=0, argsinfo=_FIRMWARE_ARGS)
    def update_firmware(
        self,
        *,
        node: dict[str, Any],
        ports: list[Any],
        url: str,
        checksum: str | None = None,
        timeout: float = FIRMWARE_TIMEOUT,
    ) -> dict[str, Any]:
        """Download a firmware tarball, verify it, run its runme.sh; its last output lines are the progress."""
        from ironworks.agent import firmware

        lines: list[str] = []

        def output(line: str) -> None:
            lines.append(line)
            del lines[:-OUTPUT_LINES]
            self.ctx.progress({"output": list(lines)})

        return firmware.update_firmware(url, checksum, timeout=float(timeout), output=output)

    @agent_step("clean", priority=0, argsinfo=_BURNIN_CPU_ARGS)
    @agent_step("service", priority=0, argsinfo=_BURNIN_CPU_ARGS)
    def burnin_cpu(self, *, node: dict[str, Any], ports: list[Any], **args: Any) -> dict[str, Any]:
        """Load every CPU for a while."""
        from ironworks.agent import burnin

        return burnin.burnin_cpu(**args)

    @agent_step("clean", priority=0, argsinfo=_BURNIN_MEMORY_ARGS)
    @agent_step("service", priority=0, argsinfo=_BURNIN_MEMORY_ARGS)
    def burnin_memory(self, *, node: dict[str, Any], ports: list[Any], **args: Any) -> dict[str, Any]:
        """Exercise memory for a while."""
        from ironworks.agent import burnin

        return burnin.burnin_memory(**args)

    @agent_step("clean", priority=0, argsinfo=_BURNIN_DISK_ARGS)
    @agent_step("service", priority=0, argsinfo=_BURNIN_DISK_ARGS)
    def burnin_disk(self, *, node: dict[str, Any], ports: list[Any], **args: Any) -> dict[str, Any]:
        """Read and write the allowed disks for a while."""
        from ironworks.agent import burnin

        return burnin.burnin_disk(self._device_paths(), allowlist=self.ctx.allowed_devices, **args)

    @agent_step("clean", priority=0, argsinfo=_BURNIN_NETWORK_ARGS)
    @agent_step("service", priority=0, argsinfo=_BURNIN_NETWORK_ARGS)
    def burnin_network(self, *, node: dict[str, Any], ports: list[Any], **args: Any) -> dict[str, Any]:
        """Stream traffic to or from a partner agent with fio's net engine (a reader and a writer)."""
        from ironworks.agent import burnin

        return burnin.burnin_network(**args)

    def sync(self) -> None:
        """Flush file system buffers."""
        self.ctx.runner(["sync"], timeout=300)

    def power_off(self) -> str:
        """Power the machine off (only in a ramdisk; elsewhere it only says so)."""
        return self._power("poweroff")

    def reboot(self) -> str:
        """Reboot the machine (only in a ramdisk; elsewhere it only says so)."""
        return self._power("reboot")

    def _power(self, verb: str) -> str:
        self.sync()
        if not self.ctx.ramdisk:
            LOG.warning("not in a ramdisk: %s skipped", verb)
            return f"{verb} skipped: not in a ramdisk"
        res = self.ctx.runner([verb, "-f"], timeout=60)
        if res.returncode != 0:
            raise HardwareError(f"{verb} failed (exit {res.returncode}): {res.stderr.strip()[:200]}")
        return f"{verb} started"

    def set_rescue_password(self, password: str, *, hashed: bool = False, user: str = "rescue") -> None:
        """Set the rescue user's password with chpasswd: in a ramdisk, or inside the agent's own
        ``--root`` tree (``chpasswd -R``), never in the host's /etc."""
        chroot = self.ctx.root.resolve() != Path("/")
        if not self.ctx.ramdisk and not chroot:
            raise HardwareError("refusing to change a password outside a ramdisk")
        if not hashed:
            # hashed here so chpasswd -e needs no PAM (absent in small ramdisks and in a chroot);
            # the password goes through stdin, never argv
            res = self.ctx.runner(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", timeout=30)
            if res.returncode != 0 or not res.stdout.strip().startswith("$"):
                raise HardwareError(f"could not hash the rescue password with openssl (exit {res.returncode})")
            password = res.stdout.strip()
        argv = ["chpasswd", "-e"]
        if chroot:
            argv += ["-R", str(self.ctx.root.resolve())]
        res = self.ctx.runner(argv, input=f"{user}:{password}\n", timeout=60)
        if res.returncode != 0:  # chpasswd's message never contains the password
            raise HardwareError(f"chpasswd failed (exit {res.returncode}): {res.stderr.strip()[:200]}")


def _device_path(row: dict[str, Any]) -> str:
    name = str(row.get("path") or row.get("name") or "")
    return name if name.startswith("/") else f"/dev/{name}"


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true")


def _matches_hints(row: dict[str, Any], hints: dict[str, Any]) -> bool:
    """Ironic's root device hints, the common ones: name, serial, wwn, model, size (GiB)."""
    for key, want in hints.items():
        if key == "name":
            ok = _device_path(row) == (want if str(want).startswith("/") else f"/dev/{want}")
        elif key == "size":
            ok = int(row.get("size") or 0) // GIB == int(want)
        elif key in ("serial", "wwn", "model"):
            ok = str(row.get(key) or "").strip().lower() == str(want).strip().lower()
        else:
            ok = True  # a hint we do not know does not exclude a disk
        if not ok:
            return False
    return True
