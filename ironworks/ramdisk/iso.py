"""The hybrid ISO for virtual media: BIOS through isolinux, UEFI through a standalone GRUB.

Layout on the ISO (stable: issue 6 remasters these files per node)::

    boot/vmlinuz, boot/initrd.zst    the kernel and initramfs both entries boot (8.3 names for isolinux)
    isolinux/isolinux.cfg            BIOS boot configuration (kernel line with the kernel parameters)
    boot/grub/grub.cfg               UEFI boot configuration (same kernel parameters)
    images/efiboot.img               El Torito EFI image (FAT): EFI/BOOT/BOOTX64.EFI and EFI/BOOT/grub.cfg,
                                     which only finds the ISO and loads boot/grub/grub.cfg from it
    .disk/ironworks-agent            the marker GRUB searches for to find the ISO (keep it when remastering)

so changing the kernel parameters means editing the two text files, never the EFI image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ironworks.ramdisk import HostToolMissing, RamdiskBuildError
from ironworks.ramdisk.debs import require_tool

ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
ISOHDPFX = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
GRUB_EFI_DIR = Path("/usr/lib/grub/x86_64-efi")
GRUB_MODULES = (
    "part_gpt part_msdos iso9660 fat search search_fs_file search_label configfile linux normal serial terminal "
    "echo test"
)
VOLUME_ID = "IRONWORKS_AGENT"
MARKER = ".disk/ironworks-agent"
#: the EFI image's own grub.cfg and GRUB's embedded one: find the ISO by its marker (not by grub.cfg,
#: which GRUB's memdisk holds too, nor by a kernel path an installed disk may share), load its grub.cfg
REDIRECT_CFG = (
    f"search --no-floppy --file --set=root /{MARKER}\nset prefix=($root)/boot/grub\n"
    "configfile ($root)/boot/grub/grub.cfg\n"
)


def isolinux_cfg(params: str) -> str:
    """isolinux.cfg booting the ramdisk straight away (serial console too)."""
    return (
        "serial 0 115200\ndefault ironworks\nprompt 0\ntimeout 0\n"
        f"label ironworks\n  kernel /boot/vmlinuz\n  append initrd=/boot/initrd.zst {params}\n"
    )


def grub_cfg(params: str) -> str:
    """grub.cfg booting the ramdisk straight away (serial console too)."""
    return (
        "set timeout=0\nserial --unit=0 --speed=115200\nterminal_input serial console\n"
        "terminal_output serial console\n"
        f'menuentry "Ironworks agent ramdisk" {{\n  linux /boot/vmlinuz {params}\n  initrd /boot/initrd.zst\n}}\n'
    )


def check_tools() -> None:
    """Raise HostToolMissing naming the Debian package of any ISO tool this machine lacks."""
    for tool, package in (("xorriso", "xorriso"), ("mcopy", "mtools"), ("mmd", "mtools"),
                          ("mkfs.fat", "dosfstools"), ("grub-mkstandalone", "grub-common")):  # fmt: skip
        require_tool(tool, package)
    for path, package in ((ISOLINUX_BIN, "isolinux"), (ISOHDPFX, "isolinux"), (LDLINUX, "syslinux-common"),
                          (GRUB_EFI_DIR / "linux.mod", "grub-efi-amd64-bin")):  # fmt: skip
        if not path.is_file():
            raise HostToolMissing(f"{path} is missing; install it with: apt-get install {package}", tool=str(path))


def _run(argv: Sequence[str], what: str, env: dict[str, str]) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RamdiskBuildError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def build_iso(kernel: Path, initramfs: Path, params: Sequence[str], out: Path, *, workdir: Path, epoch: int) -> Path:
    """Write the hybrid ISO to ``out``; ``params`` go on both boot entries' kernel lines."""
    check_tools()
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    line = " ".join(params)
    root = workdir / "iso"
    if root.exists():
        shutil.rmtree(root)
    for d in ("boot/grub", "isolinux", "images", ".disk"):
        (root / d).mkdir(parents=True)
    (root / MARKER).write_text("Ironworks agent ramdisk ISO\n")
    shutil.copyfile(kernel, root / "boot/vmlinuz")
    shutil.copyfile(initramfs, root / "boot/initrd.zst")
    shutil.copyfile(ISOLINUX_BIN, root / "isolinux/isolinux.bin")
    shutil.copyfile(LDLINUX, root / "isolinux/ldlinux.c32")
    (root / "isolinux/isolinux.cfg").write_text(isolinux_cfg(line))
    (root / "boot/grub/grub.cfg").write_text(grub_cfg(line))
    embed = workdir / "grub-embed.cfg"
    embed.write_text(REDIRECT_CFG)
    efi = workdir / "BOOTX64.EFI"
    _run(
        ["grub-mkstandalone", "-O", "x86_64-efi", "-d", str(GRUB_EFI_DIR), f"--modules={GRUB_MODULES}",
         "--locales=", "--fonts=", "--themes=", "-o", str(efi), f"boot/grub/grub.cfg={embed}"],
        "grub-mkstandalone", env,
    )  # fmt: skip
    img = root / "images/efiboot.img"
    kib = (efi.stat().st_size // 1024) + 512  # FAT overhead and the small grub.cfg
    _run(["mkfs.fat", "-C", "--invariant", "-n", "EFIBOOT", str(img), str(kib)], "mkfs.fat", env)
    efi_cfg = workdir / "grub.cfg"
    efi_cfg.write_text(REDIRECT_CFG)
    _run(["mmd", "-i", str(img), "::/EFI", "::/EFI/BOOT"], "mmd", env)
    _run(["mcopy", "-m", "-i", str(img), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], "mcopy", env)
    _run(["mcopy", "-m", "-i", str(img), str(efi_cfg), "::/EFI/BOOT/grub.cfg"], "mcopy", env)
    for path in sorted(root.rglob("*")):
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    tmp = out.with_name(out.name + ".tmp")
    _run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(tmp), "-R", "-J", "-V", VOLUME_ID,
         "-isohybrid-mbr", str(ISOHDPFX), "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
         "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
         "-eltorito-alt-boot", "-e", "images/efiboot.img", "-no-emul-boot", "-isohybrid-gpt-basdat", str(root)],
        "xorriso", env,
    )  # fmt: skip
    tmp.replace(out)
    shutil.rmtree(root, ignore_errors=True)
    return out
