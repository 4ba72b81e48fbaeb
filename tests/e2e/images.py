"""The deployable test disk image of the e2e tier: a raw (and qcow2) disk that boots on BIOS and UEFI.

Layout of the image (default 1 GiB, sparse, almost all zeros)::

    sector 0        syslinux's mbr.bin (boots the active partition), MBR partition table
    1 MiB - 65 MiB  partition 1: FAT32, type 0xEF (an EFI system partition), active
                      /vmlinuz /initrd.img   a Debian kernel and a busybox initramfs
                      /syslinux.cfg, ldlinux.sys, ldlinux.c32   BIOS: syslinux --install --offset
                      /EFI/BOOT/BOOTX64.EFI  UEFI: grub-mkstandalone with an embedded grub.cfg
                      /ironworks-e2e-image   the image id (GRUB finds its partition by this file)
    65 MiB - end    free: the agent adds its config-2 partition at the end of the disk

The initramfs' ``/init`` prints ``IRONWORKS-E2E-INSTANCE image=<id> firmware=<bios|uefi> kernel=<release>``
to the serial console, looks for a partition labelled ``config-2`` (iso9660 or vfat) and prints
``IRONWORKS-E2E-CONFIGDRIVE uuid=<meta_data.json uuid>`` or ``IRONWORKS-E2E-CONFIGDRIVE none``, then
powers off. Nothing is mounted on the host while building: sfdisk, mkfs.vfat and syslinux work on the
image file at an offset, mtools copies files into it, and the initramfs is written by ``write_cpio``.

Images are built once per set of inputs and cached in ``<cache>/e2e-images/<hash of inputs>/`` (never
in the repository); the kernel package is downloaded with ``apt-get download`` into ``<cache>/debs``.
"""

from __future__ import annotations

import base64
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30
DEFAULT_CACHE = Path("/var/cache/ironworks-tests")
DEFAULT_SIZE = GIB
#: partition 1 starts at 1 MiB and is 64 MiB: FAT32 needs >= 65525 clusters, the files need ~20 MiB
PART_START = MIB
PART_SIZE = 64 * MIB
KERNEL_CMDLINE = "console=ttyS0,115200n8"
MARKER_FILE = "ironworks-e2e-image"
INSTANCE_MARKER = "IRONWORKS-E2E-INSTANCE"
CONFIGDRIVE_MARKER = "IRONWORKS-E2E-CONFIGDRIVE"
# the markers' lines on the serial console; a kernel message can land right after a marker on the same
# line ("...kernel=6.1.0-57-amd64[    2.244629] tsc: ..."), so a field stops at "[" too
INSTANCE_LINE = (
    rf"{INSTANCE_MARKER} image=(?P<image>[^\s\[]+) firmware=(?P<firmware>[^\s\[]+) kernel=(?P<kernel>[^\s\[]+)"
)
CONFIGDRIVE_LINE = rf"{CONFIGDRIVE_MARKER} (?P<result>[^\r\n\[]*)"
#: insmod order (no modprobe in the initramfs): dependencies first
MODULES: tuple[str, ...] = (
    *("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk"),
    *("cdrom", "isofs", "fat", "vfat", "nls_cp437", "nls_ascii", "nls_utf8"),
)
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
TOOLS: tuple[str, ...] = (
    *("apt-get", "apt-cache", "dpkg-deb", "sfdisk", "mkfs.vfat", "mcopy", "mmd", "syslinux", "grub-mkstandalone"),
    *("qemu-img", "busybox", "genisoimage", "ldd"),
)
BUSYBOX_APPLETS: tuple[str, ...] = (
    *("sh", "mount", "umount", "insmod", "echo", "sleep", "ls", "grep", "sed", "tr", "findfs", "mkdir"),
    *("uname", "sync", "poweroff", "cat", "head", "dmesg"),
)
_BOUND_S = 600.0

INIT = """#!/bin/sh
# /init of the Ironworks e2e instance image: say which image booted how, report the config drive, power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in @MODULES@; do insmod /lib/modules/$m.ko 2>/dev/null; done
fw=bios
[ -d /sys/firmware/efi ] && fw=uefi
echo "@INSTANCE@ image=@ID@ firmware=$fw kernel=$(uname -r)"
# the disk's partitions are known once virtio_blk has probed it (bounded: 10 s)
i=0
while [ $i -lt 100 ] && ! ls /sys/block | grep -q '^vd'; do sleep 0.1; i=$((i + 1)); done
dev=$(findfs LABEL=config-2 2>/dev/null)
if [ -z "$dev" ]; then
    echo "@CONFIGDRIVE@ none"
else
    mkdir -p /mnt
    if mount -o ro -t iso9660 "$dev" /mnt 2>/dev/null || mount -o ro -t vfat "$dev" /mnt 2>/dev/null; then
        meta=/mnt/openstack/latest/meta_data.json
        uuid=$(tr -d '\\n' < "$meta" | sed -n 's/.*"uuid"[[:space:]]*:[[:space:]]*"\\([^"]*\\)".*/\\1/p')
        echo "@CONFIGDRIVE@ uuid=${uuid:-<no uuid in meta_data.json>} device=$dev"
        umount /mnt
    else
        echo "@CONFIGDRIVE@ error=cannot-mount device=$dev"
    fi
fi
sync
poweroff -f
"""

SYSLINUX_CFG = f"""SERIAL 0 115200
DEFAULT instance
PROMPT 0
TIMEOUT 0
LABEL instance
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND {KERNEL_CMDLINE}
"""

GRUB_CFG = f"""set timeout=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
search --no-floppy --file --set=root /{MARKER_FILE}
echo "GRUB: booting the Ironworks e2e instance image from $root"
linux /vmlinuz {KERNEL_CMDLINE}
initrd /initrd.img
boot
"""
GRUB_MODULES = "part_msdos fat search search_fs_file linux normal serial terminal echo configfile boot test"


class ImageBuildError(RuntimeError):
    """A step of building the test image failed; the message names the step and the tool's output."""


@dataclass(frozen=True)
class InstanceImage:
    """A built test image: the raw and qcow2 files, their sha256, and what went into them."""

    image_id: str
    directory: Path
    raw: Path
    qcow2: Path
    raw_sha256: str
    qcow2_sha256: str
    size: int
    kernel_version: str
    kernel_package: str
    #: byte offset where the free space after the boot partition starts
    free_from: int

    @classmethod
    def load(cls, directory: Path) -> InstanceImage:
        """Read a cached image's manifest."""
        data = json.loads((directory / "manifest.json").read_text())
        return cls(
            **{**data, "directory": directory, "raw": directory / data["raw"], "qcow2": directory / data["qcow2"]}
        )


def _run(step: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=_BOUND_S,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{step}: {argv[0]} is not installed (`./dev.sh setup` installs it)") from exc
    if proc.returncode != 0:
        raise ImageBuildError(f"{step}: `{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def sha256_file(path: Path) -> str:
    """sha256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # one builder at a time per cache (two test sessions, or xdist workers, may start together)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- the kernel ------------------------------------------------------------------------------------
def kernel_deb(cache: Path = DEFAULT_CACHE) -> Path:
    """The Debian kernel package linux-image-amd64 depends on, downloaded once into ``<cache>/debs``."""
    out = _run("finding the kernel package", ["apt-cache", "depends", "linux-image-amd64"])
    names = [ln.split()[-1] for ln in out.splitlines() if ln.strip().startswith("Depends: linux-image-")]
    if not names:
        raise ImageBuildError("linux-image-amd64 depends on no linux-image-* package: run `apt-get update`")
    debs = cache / "debs"
    with _locked(cache / "debs.lock"):
        found = sorted(debs.glob(f"{names[0]}_*.deb"))
        if not found:
            debs.mkdir(parents=True, exist_ok=True)
            _run(f"downloading {names[0]}", ["apt-get", "download", "-q", names[0]], cwd=debs)
            found = sorted(debs.glob(f"{names[0]}_*.deb"))
        if not found:
            raise ImageBuildError(f"apt-get download {names[0]} left no .deb in {debs}")
        return found[-1]


def unpack_kernel(deb: Path, dest: Path) -> tuple[Path, Path, str]:
    """Unpack ``deb`` into ``dest``: (vmlinuz, modules directory, kernel release)."""
    _run("unpacking the kernel package", ["dpkg-deb", "-x", str(deb), str(dest)])
    releases = sorted((dest / "lib" / "modules").iterdir())
    if not releases:
        raise ImageBuildError(f"{deb.name} has no /lib/modules/<release>")
    release = releases[0].name
    return dest / "boot" / f"vmlinuz-{release}", releases[0], release


# ---- the initramfs ---------------------------------------------------------------------------------
def write_cpio(entries: Sequence[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive of (path, mode, data, rdev) entries, owned by root, mtime 0 (reproducible).

    Written here rather than with ``cpio`` so the archive can hold ``/dev/console`` (the kernel opens it
    for init's output before anything could mount devtmpfs) without a mknod on the host.
    """
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], start=1):
        path = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(path), 0)
        out.write(b"070701" + b"".join(f"{v:08x}".encode() for v in fields))
        out.write(path)
        pad()
        out.write(data)
        pad()
    return out.getvalue()


def build_initramfs(image_id: str, modules_dir: Path) -> bytes:
    """The gzipped busybox initramfs whose /init prints the markers."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise ImageBuildError("busybox is not installed (busybox-static, in dev.sh)")
    # the initramfs has no libc: a dynamically linked busybox would end in "No working init found"
    if subprocess.run(["ldd", busybox], capture_output=True, check=False).returncode == 0:
        raise ImageBuildError(f"{busybox} is dynamically linked: install busybox-static")
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755
    entries: list[tuple[str, int, bytes, int]] = [(n, d, b"", 0) for n in ("bin", "dev", "proc", "sys", "mnt", "lib")]
    entries += [("lib/modules", d, b"", 0), ("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1))]
    entries.append(("bin/busybox", f, Path(busybox).read_bytes(), 0))
    entries += [(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox", 0) for a in BUSYBOX_APPLETS]
    for mod in MODULES:
        found = sorted(modules_dir.rglob(f"{mod}.ko"))
        if not found:
            raise ImageBuildError(f"kernel module {mod}.ko is not in {modules_dir}")
        entries.append((f"lib/modules/{mod}.ko", stat.S_IFREG | 0o644, found[0].read_bytes(), 0))
    init = INIT.replace("@MODULES@", " ".join(MODULES)).replace("@ID@", image_id)
    init = init.replace("@INSTANCE@", INSTANCE_MARKER).replace("@CONFIGDRIVE@", CONFIGDRIVE_MARKER)
    entries.append(("init", f, init.encode(), 0))
    return gzip.compress(write_cpio(entries), compresslevel=6, mtime=0)


# ---- the disk image --------------------------------------------------------------------------------
def _inputs_key(image_id: str, size: int, deb: Path) -> str:
    # this file's text stands for the layout, /init and boot configs: editing it builds a new image
    digest = hashlib.sha256()
    for part in (image_id, str(size), deb.name, str(deb.stat().st_size), Path(__file__).read_text()):
        digest.update(part.encode() + b"\0")
    busybox = shutil.which("busybox")
    digest.update(sha256_file(Path(busybox)).encode() if busybox else b"-")
    packages = ["syslinux", "syslinux-common", "grub-common", "grub-efi-amd64-bin", "dosfstools", "mtools"]
    versions = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *packages], capture_output=True, text=True, check=False
    )
    digest.update(versions.stdout.encode())
    return digest.hexdigest()[:16]


def build_instance_image(
    *, image_id: str = "e2e-instance", size: int = DEFAULT_SIZE, cache: Path = DEFAULT_CACHE, deb: Path | None = None
) -> InstanceImage:
    """Build (or find in the cache) the test image ``image_id`` of ``size`` bytes; raw, qcow2, sha256."""
    if size < PART_START + PART_SIZE + 80 * MIB:
        raise ValueError(f"image size {size} is too small: the boot partition ends at 65 MiB, then 80 MiB are free")
    if not image_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"image id {image_id!r} must be letters, digits, '-' and '_' (it is echoed by a shell)")
    missing = [t for t in TOOLS if shutil.which(t) is None] + ([str(MBR_BIN)] if not MBR_BIN.exists() else [])
    if missing:
        raise ImageBuildError(f"missing {', '.join(missing)}: `./dev.sh setup` installs them")
    if deb is not None and not deb.is_file():
        raise ImageBuildError(f"the kernel package {deb} does not exist (IRONWORKS_E2E_KERNEL_DEB?)")
    deb = deb or kernel_deb(cache)
    root = cache / "e2e-images"
    final = root / _inputs_key(image_id, size, deb)
    with _locked(root / ".lock"):
        if (final / "manifest.json").exists():
            return InstanceImage.load(final)
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        work.chmod(0o755)
        try:
            _build(work, image_id, size, deb)
            work.rename(final)  # complete or absent: a half-built image is never found in the cache
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return InstanceImage.load(final)


def _build(work: Path, image_id: str, size: int, deb: Path) -> None:
    vmlinuz, modules_dir, release = unpack_kernel(deb, work / "kernel")
    files = work / "files"
    (files / "EFI" / "BOOT").mkdir(parents=True)
    shutil.copy(vmlinuz, files / "vmlinuz")
    (files / "initrd.img").write_bytes(build_initramfs(image_id, modules_dir))
    (files / "syslinux.cfg").write_text(SYSLINUX_CFG)
    (files / MARKER_FILE).write_text(image_id + "\n")
    (work / "grub.cfg").write_text(GRUB_CFG)
    _run(
        "building the UEFI boot loader",
        ["grub-mkstandalone", "-O", "x86_64-efi", f"--modules={GRUB_MODULES}", f"--install-modules={GRUB_MODULES}",
         "--locales=", "--fonts=", "--themes=", "-o", str(files / "EFI" / "BOOT" / "BOOTX64.EFI"),
         f"boot/grub/grub.cfg={work / 'grub.cfg'}"],
    )  # fmt: skip
    raw = work / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(size)
    sector = 512
    table = f"label: dos\nstart={PART_START // sector}, size={PART_SIZE // sector}, type=ef, bootable\n"
    proc = subprocess.run(["sfdisk", "-q", str(raw)], input=table, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(f"partitioning the image: sfdisk exited {proc.returncode}: {proc.stderr.strip()}")
    # 512-byte clusters: FAT32 needs >= 65525 of them; hidden sectors = the partition start, for syslinux
    first = str(PART_START // sector)
    _run(
        "making the FAT32 file system",
        ["mkfs.vfat", "-F", "32", "-s", "1", "-h", first, "-n", "IWE2E", f"--offset={first}", str(raw),
         str(PART_SIZE // 1024)],
    )  # fmt: skip
    target = f"{raw}@@{PART_START}"
    mtools = {"MTOOLS_SKIP_CHECK": "1"}
    _run("making /EFI/BOOT", ["mmd", "-i", target, "::/EFI", "::/EFI/BOOT"], env=mtools)
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        rel = path.relative_to(files).as_posix()
        _run(f"copying {rel} into the image", ["mcopy", "-i", target, str(path), f"::/{rel}"], env=mtools)
    _run("installing syslinux", ["syslinux", "--install", "--offset", str(PART_START), str(raw)], env=mtools)
    with raw.open("r+b") as f:
        f.write(MBR_BIN.read_bytes()[:440])  # boot code only: the partition table starts at byte 446
    qcow2 = work / "disk.qcow2"
    _run("converting to qcow2", ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)])
    image = InstanceImage(
        image_id=image_id,
        directory=work,
        raw=raw,
        qcow2=qcow2,
        raw_sha256=sha256_file(raw),
        qcow2_sha256=sha256_file(qcow2),
        size=size,
        kernel_version=release,
        kernel_package=deb.name,
        free_from=PART_START + PART_SIZE,
    )
    manifest = {**asdict(image), "raw": raw.name, "qcow2": qcow2.name}
    manifest.pop("directory")
    shutil.rmtree(work / "kernel")
    shutil.rmtree(files)
    (work / "grub.cfg").unlink()
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


# ---- config drives ---------------------------------------------------------------------------------
def configdrive_iso(meta_data: Mapping[str, object], workdir: Path) -> Path:
    """A config-2 ISO (genisoimage, like Ironic's tools) holding ``openstack/latest/meta_data.json``."""
    src = workdir / "configdrive-src"
    (src / "openstack" / "latest").mkdir(parents=True, exist_ok=True)
    (src / "openstack" / "latest" / "meta_data.json").write_text(json.dumps(dict(meta_data)))
    iso = workdir / "configdrive.iso"
    _run(
        "building the config drive",
        ["genisoimage", "-quiet", "-o", str(iso), "-ldots", "-allow-lowercase", "-allow-multidot", "-l",
         "-J", "-r", "-V", "config-2", str(src)],
    )  # fmt: skip
    return iso


def configdrive_string(meta_data: Mapping[str, object], workdir: Path) -> str:
    """The config drive as the deploy API takes it: base64 of the gzipped config-2 ISO."""
    return base64.b64encode(gzip.compress(configdrive_iso(meta_data, workdir).read_bytes())).decode()
