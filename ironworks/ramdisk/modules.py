"""Kernel modules: which of the kernel package's modules go into the ramdisk, and depmod for them.

A chosen list of drivers (virtual and common server NICs and storage, file systems the agent
mounts, IPMI) plus everything they depend on, read from the kernel's own ``modules.dep``; then
``depmod -b`` over just that subset, so ``modprobe`` and modalias loading work in the ramdisk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ironworks.ramdisk import RamdiskBuildError

#: drivers a utility ramdisk commonly needs; a name this kernel lacks is reported, not fatal
DEFAULT_MODULES: tuple[str, ...] = (
    # virtual machines
    "virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "virtio_console", "virtio_rng",
    # server NICs
    # (bnx2x, qede and others that cannot work without non-free firmware files are left out)
    "e1000", "e1000e", "igb", "igc", "ixgbe", "ixgbevf", "i40e", "iavf", "ice", "bnxt_en", "tg3",
    "mlx5_core", "r8169", "vmxnet3", "8021q",
    # storage: NVMe, SATA/SAS, USB (virtual media), SCSI disks and CD-ROMs
    "nvme", "ahci", "ata_piix", "sd_mod", "sr_mod", "sg", "megaraid_sas", "mpt3sas", "hpsa", "smartpqi",
    "aacraid", "xhci_pci", "ehci_pci", "usb_storage", "uas", "usbhid", "hid_generic",
    # file systems and loop devices (config drive, ISO, firmware media)
    "isofs", "vfat", "nls_cp437", "nls_iso8859_1", "nls_utf8", "ext4", "loop", "efivarfs",
    # in-band IPMI for ipmitool
    "ipmi_si", "ipmi_devintf", "ipmi_ssif",
)  # fmt: skip
SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str) -> str:
    """``kernel/drivers/net/virtio_net.ko`` -> ``virtio_net`` (dashes read as underscores, like modprobe)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``modules.dep`` -> module name -> (its path, the paths it depends on)."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            found[module_name(path.strip())] = (path.strip(), tuple(deps.split()))
    return found


def parse_builtin(text: str) -> set[str]:
    """Names of the modules built into the kernel (``modules.builtin``)."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


@dataclass(frozen=True, slots=True)
class Selection:
    """The module files to ship, and what was asked for but is not there."""

    paths: tuple[str, ...]
    builtin: tuple[str, ...]
    missing: tuple[str, ...]


def select(wanted: Iterable[str], dep: Mapping[str, tuple[str, tuple[str, ...]]], builtin: set[str]) -> Selection:
    """The wanted modules plus their dependencies (sorted paths); built-in ones need no file."""
    paths: set[str] = set()
    missing: list[str] = []
    inside: list[str] = []
    for raw in wanted:
        name = raw.replace("-", "_")
        if name in dep:
            path, deps = dep[name]
            paths.add(path)
            paths.update(deps)  # modules.dep already lists the whole closure
        elif name in builtin:
            inside.append(name)
        else:
            missing.append(name)
    return Selection(tuple(sorted(paths)), tuple(sorted(set(inside))), tuple(sorted(set(missing))))


def _depmod(base: Path, kver: str) -> None:
    depmod = shutil.which("depmod") or shutil.which("depmod", path="/usr/sbin:/sbin")
    if depmod is None:
        raise RamdiskBuildError("depmod is not installed on this machine; install it with: apt-get install kmod")
    proc = subprocess.run([depmod, "-b", str(base), kver], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RamdiskBuildError(f"depmod -b {base} {kver} failed: {proc.stderr.strip()[-400:]}")


def kernel_version(kernel_root: Path) -> str:
    """The one kernel version under ``<kernel_root>/lib/modules``."""
    versions = sorted(p.name for p in (kernel_root / "lib/modules").glob("*") if p.is_dir())
    if len(versions) != 1:
        raise RamdiskBuildError(
            f"expected one kernel under {kernel_root}/lib/modules, found {versions or 'none'}; "
            "is the --kernel-deb a linux-image-* package?"
        )
    return versions[0]


def stage_modules(kernel_root: Path, kver: str, wanted: Sequence[str], into: Path) -> tuple[Path, Selection]:
    """Copy the selected modules and the kernel's module lists under ``into/lib/modules/<kver>``, run depmod.

    The kernel's full ``modules.dep`` is made once beside the unpacked kernel (depmod writes there only).
    """
    src = kernel_root / "lib/modules" / kver
    if not (src / "modules.dep").is_file():
        _depmod(kernel_root, kver)
    dep = parse_modules_dep((src / "modules.dep").read_text())
    builtin = parse_builtin((src / "modules.builtin").read_text()) if (src / "modules.builtin").is_file() else set()
    chosen = select(wanted, dep, builtin)
    dest = into / "lib/modules" / kver
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel in chosen.paths:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)
    keep = set(chosen.paths)
    for name in ("modules.builtin", "modules.builtin.modinfo"):
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    if (src / "modules.order").is_file():
        order = [ln for ln in (src / "modules.order").read_text().splitlines() if ln.strip() in keep]
        (dest / "modules.order").write_text("".join(f"{ln}\n" for ln in order))
    _depmod(into, kver)
    os.utime(dest, (0, 0))
    return dest, chosen
