"""What the virtual media tests share: user ISOs built with the real xorriso, and reading files back out.

``make_iso`` builds a small BIOS-bootable ISO (isolinux) with a GRUB config too, the way
distribution ISOs carry both; ``iso_file`` extracts one file with ``xorriso -osirrox`` (no mount).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
ISOLINUX_CFG = "default live\nprompt 0\nlabel live\n  kernel /live/vmlinuz\n  append initrd=/live/initrd quiet\n"
GRUB_CFG = 'menuentry "live" {\n  linux /live/vmlinuz quiet\n  initrd /live/initrd\n}\n'


def make_iso(dest: Path, *, boot_config: bool = True, volume: str = "USERISO") -> Path:
    """A user ISO at ``dest``: isolinux (BIOS El Torito) + grub.cfg, kernel and initrd stand-ins."""
    root = dest.with_name(dest.name + ".root")
    (root / "live").mkdir(parents=True)
    (root / "live/vmlinuz").write_bytes(os.urandom(60_000))
    (root / "live/initrd").write_bytes(os.urandom(30_000))
    argv = ["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", volume, "-o", str(dest)]
    if boot_config:
        (root / "isolinux").mkdir()
        (root / "boot/grub").mkdir(parents=True)
        (root / "isolinux/isolinux.bin").write_bytes(ISOLINUX_BIN.read_bytes())
        (root / "isolinux/isolinux.cfg").write_text(ISOLINUX_CFG)
        (root / "boot/grub/grub.cfg").write_text(GRUB_CFG)
        argv += ["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4"]
        argv.append("-boot-info-table")
    else:
        (root / "README.txt").write_text("data only, nothing boots\n")
    subprocess.run([*argv, str(root)], check=True, capture_output=True)
    return dest


def iso_file(iso: Path, path: str, workdir: Path) -> str:
    """The text of ``path`` inside ``iso`` (extracted with xorriso)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / path.strip("/").replace("/", "_")
    out.unlink(missing_ok=True)
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", path, str(out)], check=True, capture_output=True
    )
    return out.read_text()
