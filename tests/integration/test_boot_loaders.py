"""The real boot loaders read the files the pxe and ipxe boot interfaces write, and boot the kernel.

QEMU (TCG) network-boots the node's files with its user-mode network stack, whose built-in DHCP
and TFTP server hand out the boot file. QEMU runs in a network namespace of its own (``unshare -n``)
with only a loopback device, so not one packet reaches a real network; for iPXE a small HTTP server
in that namespace serves the HTTP root, which the guest reaches as 10.0.2.2. The ramdisk is junk:
the kernel's "Kernel command line:" on the serial console is what proves the loader found the
node's config by its MAC, loaded the kernel and passed the parameters. The DHCP options are checked
in test_boot_interfaces.py (the files dnsmasq reads) and against a running dnsmasq in
test_dnsmasq_dhcp.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ironworks.config import load_config
from ironworks.drivers.base import NodeView, PortView
from ironworks.drivers.pxe import IpxeBoot, PxeBoot
from ironworks.netboot.dhcp import NoDhcp
from tests.e2e.images import kernel_deb, unpack_kernel

GUEST_MAC = "52:54:00:12:34:56"
GUEST_API = "http://10.0.2.2:18080"
BOOT_BOUND_S = 240.0
OVMF_CODE, OVMF_VARS = Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@pytest.fixture(scope="module")
def real_kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's kernel (the package linux-image-amd64 depends on), downloaded once into the test cache."""
    for tool in ("qemu-system-x86_64", "unshare", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: ./dev.sh setup installs it", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("booting the loaders needs root (a private network namespace); CI runs as root", pytrace=False)
    vmlinuz, _, _ = unpack_kernel(kernel_deb(), tmp_path_factory.mktemp("kernel"))
    return vmlinuz


def guest_boot(
    workdir: Path, *, qemu: list[str], http_dir: Path | None = None, until: str = "Kernel command line:"
) -> str:
    """Run QEMU in a private network namespace until the serial console shows ``until``; the serial text."""
    serial = workdir / "serial.log"
    serial.unlink(missing_ok=True)
    script = ["set -e", "ip link set lo up"]
    if http_dir is not None:
        log = workdir / "http.log"
        script.append(f"python3 -m http.server --bind 127.0.0.1 18080 --directory {http_dir} >{log} 2>&1 &")
    script.append("exec " + " ".join([*qemu, "-serial", f"file:{serial}", "-display", "none", "-no-reboot"]))
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c", "\n".join(script)], start_new_session=True)
    text = ""
    try:
        deadline = time.monotonic() + BOOT_BOUND_S
        while time.monotonic() < deadline and proc.poll() is None:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if until in text:
                break
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the session started above: unshare, sh, qemu, http.server
        proc.wait(timeout=30)
    return text


def render_for_guest(tmp_path: Path, kernel: Path, cls: str, mode: str, *, local: bool = False) -> Path:
    """Write the node's boot files for the guest's MAC with the real interface; the state dir."""
    state = tmp_path / "state"
    (tmp_path / "junk.initrd").write_bytes(b"\0" * 4096)
    config = load_config(
        None,
        environ={},
        overrides={
            "": {"state_dir": str(state)},
            "api": {"public_url": GUEST_API},
            "images": {"allowed_file_dirs": [str(tmp_path), str(kernel.parent)]},
        },
    )
    boot: Any = {"pxe": PxeBoot, "ipxe": IpxeBoot}[cls](config)
    boot.dhcp = NoDhcp()  # the guest's DHCP is QEMU's; the options are checked by the tests above
    node = NodeView(
        1, GUEST_UUID, None, "fake-hardware",
        {"deploy_kernel": str(kernel), "deploy_ramdisk": str(tmp_path / "junk.initrd")}, {}, {},
        {"capabilities": f"boot_mode:{mode}"}, "deploying", "power off",
    )  # fmt: skip
    task = _GuestTask(node, [PortView("p0", GUEST_MAC, True)])
    if local:
        boot.prepare_instance(task)
    else:
        boot.prepare_ramdisk(task, params={"ipa-api-url": GUEST_API})
    return state


GUEST_UUID = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"


class _GuestTask:
    def __init__(self, node: Any, ports: list[Any]) -> None:
        self.node, self.ports = node, ports

    def record(self, message: str, *, severity: str = "INFO", data: Any = None) -> None:
        pass

    def interface(self, kind: str) -> Any:
        return None


def _uefi(tmp_path: Path) -> list[str]:
    shutil.copy(OVMF_VARS, tmp_path / "vars.fd")
    return [
        "-machine", "q35", "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,file={tmp_path / 'vars.fd'}",
    ]  # fmt: skip


def test_pxelinux_bios_boots_the_kernel_with_the_parameters(tmp_path: Path, real_kernel: Path) -> None:
    tftp = render_for_guest(tmp_path, real_kernel, "pxe", "bios") / "tftpboot"
    text = guest_boot(tmp_path, qemu=[
        "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "512", "-boot", "n",
        "-netdev", f"user,id=n0,tftp={tftp},bootfile=pxelinux.0",
        "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}",
    ])  # fmt: skip
    assert (
        f"Kernel command line: BOOT_IMAGE={GUEST_UUID}/deploy_kernel initrd={GUEST_UUID}/deploy_ramdisk "
        f"ipa-api-url={GUEST_API} console=ttyS0,115200n8 BOOTIF=01-52-54-00-12-34-56"
    ) in text, text[-3000:]


def test_grub_uefi_finds_the_mac_config_and_boots_the_kernel(tmp_path: Path, real_kernel: Path) -> None:
    tftp = render_for_guest(tmp_path, real_kernel, "pxe", "uefi") / "tftpboot"
    text = guest_boot(tmp_path, qemu=[
        "qemu-system-x86_64", *_uefi(tmp_path), "-accel", "tcg", "-m", "768",
        "-netdev", f"user,id=n0,tftp={tftp},bootfile=grubnetx64.efi",
        "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC},romfile=",  # OVMF's own PXE, no iPXE ROM
    ])  # fmt: skip
    assert "Booting `deploy'" in text, text[-3000:]
    assert (
        f"Kernel command line: BOOT_IMAGE=/{GUEST_UUID}/deploy_kernel ipa-api-url={GUEST_API} "
        "console=ttyS0,115200n8 BOOTIF=01-52-54-00-12-34-56"
    ) in text, text[-3000:]


def test_ipxe_main_script_chains_the_mac_script_over_http(tmp_path: Path, real_kernel: Path) -> None:
    state = render_for_guest(tmp_path, real_kernel, "ipxe", "bios")
    www = tmp_path / "www"
    www.mkdir()
    (www / "boot").symlink_to(state / "httpboot")
    text = guest_boot(tmp_path, http_dir=www, qemu=[
        "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "512", "-boot", "n",
        "-netdev", f"user,id=n0,bootfile={GUEST_API}/boot/boot.ipxe",  # the NIC's iPXE ROM fetches it
        "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}",
    ])  # fmt: skip
    fetched = (tmp_path / "http.log").read_text()  # the ROM's own messages go to the screen, not the serial port
    for path in ("boot.ipxe", "pxelinux.cfg/52-54-00-12-34-56", f"{GUEST_UUID}/deploy_kernel"):
        assert f'"GET /boot/{path} HTTP/1.1" 200' in fetched, fetched
    assert (
        f"Kernel command line: initrd=deploy_ramdisk ipa-api-url={GUEST_API} console=ttyS0,115200n8 "
        "BOOTIF=01-52-54-00-12-34-56"
    ) in text, text[-3000:]


def test_grub_local_boot_chain_loads_the_disks_efi_loader(tmp_path: Path, real_kernel: Path) -> None:
    """After deployment GRUB boots the disk's removable-media loader (here iPXE's, as a marker)."""
    tftp = render_for_guest(tmp_path, real_kernel, "pxe", "uefi", local=True) / "tftpboot"
    esp = tmp_path / "esp.img"
    with esp.open("wb") as f:
        f.truncate(40 << 20)
    subprocess.run(["mkfs.fat", "-F", "32", str(esp)], check=True, capture_output=True)
    subprocess.run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], check=True)
    subprocess.run(["mcopy", "-i", str(esp), "/usr/lib/ipxe/ipxe.efi", "::/EFI/BOOT/BOOTX64.EFI"], check=True)
    text = guest_boot(tmp_path, until="iPXE initialising devices", qemu=[
        "qemu-system-x86_64", *_uefi(tmp_path), "-accel", "tcg", "-m", "768",
        "-netdev", f"user,id=n0,tftp={tftp},bootfile=grubnetx64.efi",
        "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC},romfile=,bootindex=1",
        "-drive", f"if=none,id=d0,format=raw,file={esp}", "-device", "virtio-blk-pci,drive=d0,bootindex=2",
    ])  # fmt: skip
    assert "Booting `local'" in text and "iPXE initialising devices" in text, text[-3000:]
