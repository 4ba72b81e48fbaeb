"""What the virtual-media tests share: static addressing, the BMC's virtual CD, the user's ISO.

* ``network_data(lab, vm, host=...)`` -- Ironic's ``network_data.json`` giving ``vm`` a static address on
  the lab bridge (``<subnet>.<host>/24``, default route and DNS via the bridge address), as
  ``instance_info/network_data`` or ``driver_info/network_data`` takes it.
* ``VirtualCd`` -- the Redfish calls a BMC user makes for one VM's virtual CD (sushy-emulator in the
  namespace): what is inserted, insert, eject, boot override, reset.
* ``iso_with_network_data(iso, doc, out)`` -- a copy of a bootable ISO with
  ``openstack/latest/network_data.json`` added (xorriso keeps its El Torito boot images as they are).
* ``build_user_iso(kernel, out, ...)`` -- the "user's ISO" of a ``ramdisk`` deploy: a kernel and a
  busybox initramfs whose ``/init`` prints ``IRONWORKS-E2E-USER-ISO cmdline=<the kernel command line>``
  to ttyS0 and then idles, in the agent ISO's hybrid layout (isolinux + GRUB EFI).
* ``dhcp_servers(lab)`` -- every DHCP server process in the lab's namespace (none, for "no DHCP").
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ironworks.ramdisk.iso import build_iso
from tests.e2e.images import write_cpio
from tests.lab.lab import Lab
from tests.lab.libvirt import Vm
from tests.lab.service import NetnsHttpClient

USER_ISO_LINE = r"IRONWORKS-E2E-USER-ISO cmdline=(?P<cmdline>[^\r\n]*)"
#: programs that answer DHCP; none of them may run in the namespace for the no-DHCP flows
DHCP_SERVERS = frozenset({"dnsmasq", "udhcpd", "dhcpd", "kea-dhcp4"})
#: the ISOs' kernel line on the serial console (what the user ISO's boot entries start with)
CONSOLE = "console=ttyS0,115200n8"
REDFISH_BOUND_S = 60.0

USER_INIT = """#!/bin/sh
# /init of the e2e "user ISO": print the kernel command line it was booted with, then idle
export PATH=/bin
mount -t proc proc /proc
exec </dev/console >/dev/console 2>&1
echo "IRONWORKS-E2E-USER-ISO cmdline=$(cat /proc/cmdline)"
while :; do sleep 3600; done
"""


def static_address(lab: Lab, host: int) -> str:
    """``<bridge subnet>.<host>``: an address on the bridge outside the DHCP pool."""
    if lab.settings.dhcp_first <= host <= lab.settings.dhcp_last or not 1 < host < 255:
        raise ValueError(f"host {host} is in the lab's DHCP pool or not a host number")
    return f"{lab.network.subnet_prefix}.{host}"


def network_data(lab: Lab, vm: Vm, *, host: int) -> dict[str, Any]:
    """network_data.json (Ironic's format) giving ``vm``'s NIC the static ``static_address(lab, host)``/24."""
    gateway = lab.network.address
    return {
        "links": [{"id": "port0", "type": "phy", "ethernet_mac_address": vm.mac, "mtu": 1500}],
        "networks": [
            {
                "id": "lab-static",
                "type": "ipv4",
                "link": "port0",
                "ip_address": static_address(lab, host),
                "netmask": "255.255.255.0",
                "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": gateway}],
                "network_id": "lab-bridge",
            }
        ],
        "services": [{"type": "dns", "address": gateway}],
    }


class VirtualCd:
    """One VM's virtual CD and boot override through the lab's sushy-emulator (raw Redfish)."""

    def __init__(self, lab: Lab, vm: Vm) -> None:
        info = lab.redfish_driver_info(vm)
        self.lab, self.vm = lab, vm
        self.system = str(info["redfish_system_id"])
        if lab.ns is None:
            raise RuntimeError("the lab is not set up: it has no namespace")
        self.client = NetnsHttpClient(lab.ns, str(info["redfish_address"]))
        self.auth = (str(info["redfish_username"]), str(info["redfish_password"]))
        self.cd_path = self._find_cd()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        r = self.client.request(method, path, json=body, auth=self.auth)
        assert r.status_code < 300, f"Redfish {method} {path}: {r.status_code} {r.text[:500]}"
        doc: dict[str, Any] = r.json() if r.content else {}
        return doc

    def _find_cd(self) -> str:
        system = self._call("GET", self.system)
        for manager in system.get("Links", {}).get("ManagedBy", []):
            media = self._call("GET", self._call("GET", manager["@odata.id"])["VirtualMedia"]["@odata.id"])
            for member in media.get("Members", []):
                if "CD" in self._call("GET", member["@odata.id"]).get("MediaTypes", []):
                    return str(member["@odata.id"])
        raise AssertionError(f"the BMC of {self.vm.name} offers no virtual CD")

    def media(self) -> dict[str, Any]:
        """The CD resource: ``Inserted``, ``Image`` ..."""
        return self._call("GET", self.cd_path)

    def inserted(self) -> str | None:
        """The image URL inserted now (None when the drive is empty)."""
        cd = self.media()
        return str(cd.get("Image")) if cd.get("Inserted") and cd.get("Image") else None

    def insert(self, url: str) -> None:
        """InsertMedia (sushy downloads the ISO into pool ``default`` and adds a cdrom to the domain)."""
        self._call("POST", f"{self.cd_path}/Actions/VirtualMedia.InsertMedia",
                   {"Image": url, "Inserted": True, "WriteProtected": True})  # fmt: skip

    def eject(self) -> None:
        """EjectMedia, when something is inserted."""
        if self.media().get("Inserted"):
            self._call("POST", f"{self.cd_path}/Actions/VirtualMedia.EjectMedia", {})

    def boot(self, target: str, *, enabled: str = "Once") -> None:
        """The boot override (``Cd``, ``Pxe``, ``Hdd``); sushy-tools keeps ``Once`` as persistent."""
        self._call("PATCH", self.system, {"Boot": {"BootSourceOverrideTarget": target,
                                                   "BootSourceOverrideEnabled": enabled}})  # fmt: skip

    def reset(self, kind: str) -> None:
        """ComputerSystem.Reset (``On``, ``ForceOff`` ...)."""
        self._call("POST", f"{self.system}/Actions/ComputerSystem.Reset", {"ResetType": kind})

    def wait_ejected(self, *, bound: float = REDFISH_BOUND_S) -> None:
        """Wait (bounded) until the drive is empty; AssertionError naming what is still inserted."""
        deadline = time.monotonic() + bound
        while (image := self.inserted()) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{image} is still inserted in {self.vm.name}'s virtual CD after {bound:g} s")
            time.sleep(0.5)

    def close(self) -> None:
        """Close the client."""
        self.client.close()


def _xorriso(argv: list[str], what: str) -> None:
    proc = subprocess.run(["xorriso", *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"xorriso ({what}) exited {proc.returncode}: {proc.stderr.strip()[-800:]}")


def iso_with_network_data(iso: Path, doc: Mapping[str, Any], out: Path) -> Path:
    """``iso`` with ``openstack/latest/network_data.json`` = ``doc`` added, written to ``out``."""
    staged = out.with_name(out.name + ".network_data.json")
    staged.write_text(json.dumps(doc))
    out.unlink(missing_ok=True)
    try:
        _xorriso(["-indev", str(iso), "-outdev", str(out), "-boot_image", "any", "replay",
                  "-map", str(staged), "/openstack/latest/network_data.json"], "adding network_data.json")  # fmt: skip
    finally:
        staged.unlink(missing_ok=True)
    return out


def build_user_iso(kernel: Path, out: Path, *, workdir: Path, params: tuple[str, ...] = (CONSOLE,)) -> Path:
    """The user ISO of a ``ramdisk`` deploy: ``kernel`` and a busybox initramfs printing its command line."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed (busybox-static, in dev.sh)")
    d, f, ln = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFLNK | 0o777
    entries: list[tuple[str, int, bytes, int]] = [(n, d, b"", 0) for n in ("bin", "dev", "proc")]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)))
    entries.append(("bin/busybox", f, Path(busybox).read_bytes(), 0))
    entries += [(f"bin/{a}", ln, b"busybox", 0) for a in ("sh", "mount", "cat", "echo", "sleep")]
    entries.append(("init", f, USER_INIT.encode(), 0))
    initramfs = workdir / "user-initramfs.cpio"
    initramfs.write_bytes(write_cpio(entries))
    return build_iso(kernel, initramfs, params, out, workdir=workdir, epoch=0)


def dhcp_servers(lab: Lab) -> list[str]:
    """``name[pid]`` of every DHCP server process inside the lab's namespace."""
    found = []
    for pid in lab.ns.pids() if lab.ns is not None else []:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm in DHCP_SERVERS:
            found.append(f"{comm}[{pid}]")
    return found
