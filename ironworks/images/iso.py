"""Deploy ISOs and remastered user ISOs with the agent's kernel parameters (docs/iso.md).

``remaster`` copies the ISO in the kernel (``copy_file_range``; the image never passes through
Python's memory) and patches the copy in place: each boot config that gains parameters is rewritten
in the sectors it already owns and its size fixed in every directory record pointing at it (primary,
Joliet and other trees); GRUB configs inside the El Torito EFI image (FAT) are edited with mtools on
an extracted copy of that image, which goes back into the same sectors. No extent moves, so El
Torito, the isohybrid MBR and GPT stay valid byte for byte. When a config outgrows its sectors,
extra files are added, or the image carries UDF, ``xorriso`` rewrites the image instead
(``-boot_image any replay``). Loop mounts are never used.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ironworks.errors import InvalidInput
from ironworks.images import bootcfg
from ironworks.images.iso9660 import (
    PLATFORM_BIOS,
    PLATFORM_EFI,
    SECTOR,
    IsoError,
    Layout,
    Record,
    fat_size,
    read_layout,
)
from ironworks.netboot.render import kernel_params

__all__ = ["IsoError", "IsoInfo", "RemasterReport", "build_deploy_iso", "check_params", "inspect_iso", "remaster"]

#: characters GRUB's or isolinux's parsers would act on, beyond what render.kernel_params refuses
_BOOT_LINE_FORBIDDEN = {"{": "'{'", "}": "'}'", "#": "'#'"}
_ISO_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
MAX_CONFIG = 1 << 20
COPY_CHUNK = 64 << 20
_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0", "MTOOLSRC": "/dev/null"}


def check_params(params: str | Sequence[str], *, where: str) -> list[str]:
    """The kernel parameters as tokens, refused with ``IsoError`` naming ``where`` if any would break a boot line."""
    try:
        if isinstance(params, str):
            tokens = kernel_params(None, [(where, params)])
        else:
            tokens = []
            for item in params:
                tokens.extend(kernel_params(None, [(where, item)]))
    except InvalidInput as exc:
        raise IsoError(exc.message, field=where) from exc
    for token in tokens:
        bad = [shown for ch, shown in _BOOT_LINE_FORBIDDEN.items() if ch in token]
        if bad:
            name = token.partition("=")[0]
            raise IsoError(
                f"The kernel parameter {name}=... from {where} contains {', '.join(bad)}, which GRUB or isolinux "
                "would read as a block or a comment on the boot config line. Remove those characters.",
                field=where,
            )
    return tokens


@dataclass
class IsoInfo:
    """What an ISO boots: configs with boot entries, BIOS/UEFI El Torito images, volume id, byte size."""

    boot_configs: list[str]
    bios: bool
    uefi: bool
    volume_id: str
    size: int


@dataclass
class RemasterReport:
    """What ``remaster`` did: configs changed, files added, and how (in place or through xorriso)."""

    changed: list[str]
    added: list[str]
    method: Literal["in-place", "xorriso"]


@dataclass
class _Config:
    path: str  # ISO path, or "<EFI image>::<path in the FAT>"
    kind: Literal["grub", "isolinux"]
    data: bytes
    record: Record | None = None
    inherited: bytes | None = None

    def edited(self, params: Sequence[str]) -> bytes:
        if self.kind == "grub":
            return bootcfg.grub_append(self.data, params)
        return bootcfg.isolinux_append(self.data, params, inherited=self.inherited)

    def has_entry(self) -> bool:
        if self.kind == "grub":
            return bootcfg.grub_has_entry(self.data)
        return bootcfg.isolinux_has_entry(self.data)


@dataclass
class _EfiImage:
    name: str
    lba: int
    size: int
    index: int  # which EFI boot entry (xorriso may move it; the order stays)
    configs: list[_Config] = field(default_factory=list)


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        return os.pread(f.fileno(), length, offset)


def _mtools(argv: list[str], *, what: str, stdin: bytes | None = None) -> bytes:
    if shutil.which(argv[0]) is None:
        raise IsoError(f"{argv[0]} (mtools) is needed to edit the ISO's EFI image; install it: apt-get install mtools")
    proc = subprocess.run(argv, input=stdin, capture_output=True, check=False, env={**os.environ, **_MTOOLS_ENV})
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-300:]
        raise IsoError(f"Cannot {what} in the ISO's EFI image ({argv[0]}: {err}); check that it is a FAT image.")
    return proc.stdout


def _iso_configs(src: Path, layout: Layout) -> list[_Config]:
    files = layout.files()
    by_lower = {p.lower(): p for p in files}

    def load(path: str) -> bytes | None:
        rec = files[path]
        if rec.multi_extent or rec.size > MAX_CONFIG:
            return None
        return _read_at(src, rec.extent * SECTOR, rec.size)

    found: dict[str, _Config] = {}
    todo: list[tuple[str, bytes | None]] = [
        (p, None) for p in sorted(files) if posixpath.basename(p.lower()) in ("isolinux.cfg", "syslinux.cfg")
    ]
    while todo:  # isolinux configs and what they include, relative to the including file's directory
        path, inherited = todo.pop(0)
        if path in found:
            continue
        data = load(path)
        if data is None:
            continue
        found[path] = _Config(path, "isolinux", data, files[path], inherited)
        glob = bootcfg.isolinux_global_append(data)
        for name in bootcfg.isolinux_includes(data):
            for cand in (posixpath.normpath(posixpath.join(posixpath.dirname(path), name)), name.lstrip("/")):
                if cand.lower() in by_lower:
                    todo.append((by_lower[cand.lower()], glob if glob is not None else inherited))
                    break
    for path in sorted(files):
        low = path.lower()
        if path not in found and low.endswith(".cfg") and low.startswith(("boot/grub/", "efi/")):
            data = load(path)
            if data is not None:
                found[path] = _Config(path, "grub", data, files[path])
    return [found[p] for p in sorted(found)]


def _efi_images(src: Path, layout: Layout) -> list[_EfiImage]:
    images: list[_EfiImage] = []
    by_extent = {r.extent: p for p, r in layout.files().items()}
    efi_entries = [e for e in layout.boot_entries if e.platform == PLATFORM_EFI]
    for index, entry in enumerate(efi_entries):
        size = fat_size(src, entry.lba)
        if size is None or entry.lba * SECTOR + size > layout.size or any(i.lba == entry.lba for i in images):
            continue
        name = by_extent.get(entry.lba, f"[EFI boot image at block {entry.lba}]")
        img = _EfiImage(name, entry.lba, size, index)
        spec = f"{src}@@{entry.lba * SECTOR}"
        listing = _mtools(["mdir", "-/", "-b", "-i", spec, "::/"], what="list the files").decode("utf-8", "replace")
        for line in listing.splitlines():
            inner = line.strip()[3:]
            low = inner.lower()
            if low.endswith(".cfg") and low.startswith(("efi/", "boot/grub/")):
                data = _mtools(["mcopy", "-n", "-i", spec, f"::/{inner}", "-"], what=f"read {inner}")
                img.configs.append(_Config(f"{name}::{inner}", "grub", data))
        images.append(img)
    return images


def _scan(src: Path) -> tuple[Layout, list[_Config], list[_EfiImage]]:
    layout = read_layout(src)
    configs = [c for c in _iso_configs(src, layout) if c.has_entry()]
    efis = _efi_images(src, layout)
    for img in efis:
        img.configs = [c for c in img.configs if c.has_entry()]
    if not configs and not any(img.configs for img in efis):
        raise IsoError(
            f"{src.name} has no boot config with a Linux boot entry: no GRUB config (boot/grub/*.cfg, EFI/*, "
            "also in the EFI boot image) with a linux line, and no isolinux/syslinux label with a kernel. "
            "Use an ISO that boots Linux through GRUB or isolinux, or build a deploy ISO from a kernel and ramdisk.",
            field=str(src),
        )
    return layout, configs, efis


def inspect_iso(path: Path) -> IsoInfo:
    """The boot configs and El Torito images of the ISO at ``path`` (metadata and configs only are read)."""
    layout, configs, efis = _scan(path)
    names = [c.path for c in configs] + [c.path for img in efis for c in img.configs]
    return IsoInfo(
        boot_configs=names,
        bios=any(e.platform == PLATFORM_BIOS for e in layout.boot_entries),
        uefi=any(e.platform == PLATFORM_EFI for e in layout.boot_entries),
        volume_id=layout.volume_id,
        size=layout.size,
    )


def _copy_range(src_fd: int, dst_fd: int, length: int, *, src_off: int = 0, dst_off: int = 0) -> None:
    """Copy ``length`` bytes between descriptors in the kernel (copy_file_range, else sendfile)."""
    done = 0
    use_cfr = True
    while done < length:
        n = min(COPY_CHUNK, length - done)
        if use_cfr:
            try:
                got = os.copy_file_range(src_fd, dst_fd, n, src_off + done, dst_off + done)
            except OSError:
                use_cfr = False
                continue
        else:
            os.lseek(dst_fd, dst_off + done, os.SEEK_SET)
            got = os.sendfile(dst_fd, src_fd, src_off + done, n)
        if got == 0:
            raise IsoError(f"The ISO ended {length - done} bytes early while copying it; is it being written to?")
        done += got


def _check_extra(extra_files: Mapping[str, bytes]) -> dict[str, bytes]:
    out = {}
    for name, content in extra_files.items():
        clean = name.lstrip("/")
        if not _ISO_PATH.match(clean) or any(part in (".", "..") for part in clean.split("/")):
            raise IsoError(
                f"The extra file name {name!r} is not a plain ISO path: use letters, digits and '._-' in "
                "'/'-separated parts, without '.' or '..' parts (e.g. openstack/latest/network_data.json)."
            )
        if not isinstance(content, bytes):
            raise IsoError(f"The extra file {name} must be given as bytes, not {type(content).__name__}.")
        out[clean] = content
    return out


def _fits(cfg: _Config, new: bytes, layout: Layout) -> bool:
    rec = cfg.record
    if rec is None or rec.size == 0 or rec.multi_extent:
        return False
    room = -(-rec.size // SECTOR) * SECTOR
    return len(new) <= room and all(r.size == rec.size for r in layout.records_at(rec.extent))


def _edit_efi(src: Path, img: _EfiImage, params: Sequence[str], workdir: Path) -> Path | None:
    """A copy of the EFI image in ``workdir`` with its GRUB configs edited, or None if none changes."""
    changes = [(c, c.edited(params)) for c in img.configs]
    changes = [(c, new) for c, new in changes if new != c.data]
    if not changes:
        return None
    local = workdir / f"efi-{img.lba}.img"
    staged = workdir / f"efi-{img.lba}.cfg"
    try:
        with src.open("rb") as s, local.open("wb") as d:
            _copy_range(s.fileno(), d.fileno(), img.size, src_off=img.lba * SECTOR)
        for cfg, new in changes:
            staged.write_bytes(new)
            inner = cfg.path.split("::", 1)[1]
            _mtools(["mcopy", "-o", "-i", str(local), str(staged), f"::/{inner}"], what=f"write {inner} (is it full?)")
        if local.stat().st_size != img.size:
            raise IsoError(f"Editing {img.name} changed its size; the ISO was left as it was.")
    except BaseException:
        local.unlink(missing_ok=True)
        raise
    finally:
        staged.unlink(missing_ok=True)
    return local


def remaster(
    src: Path,
    dest: Path,
    params: Sequence[str],
    *,
    extra_files: Mapping[str, bytes] | None = None,
    workdir: Path,
) -> RemasterReport:
    """Write ``dest`` (mode 0600): ``src`` with ``params`` on every boot entry and ``extra_files`` added.

    ``dest`` appears complete or not at all; bad input raises ``IsoError`` before anything is written.
    """
    tokens = check_params(list(params), where="the remaster parameters")
    extras = _check_extra(extra_files or {})
    if dest.resolve() == src.resolve():
        raise IsoError(f"The remastered ISO must be a new file, not the source {src} itself.")
    if not dest.parent.is_dir():
        raise IsoError(f"The directory {dest.parent} for the remastered ISO does not exist; create it first.")
    layout, configs, efis = _scan(src)
    workdir.mkdir(parents=True, exist_ok=True)
    changes = [(c, c.edited(tokens)) for c in configs]
    changes = [(c, new) for c, new in changes if new != c.data]
    efi_edits: list[tuple[_EfiImage, Path | None]] = []
    in_place = not extras and not layout.udf and all(_fits(c, new, layout) for c, new in changes)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        for img in efis:
            efi_edits.append((img, _edit_efi(src, img, tokens, workdir)))
        if in_place:
            _patch_copy(src, tmp, layout, changes)
        else:
            _xorriso_copy(src, tmp, layout, changes, extras, workdir)
        _write_efi(tmp, efi_edits)
        os.chmod(tmp, 0o600)  # it carries the node's parameters, the agent token among them
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for _, local in efi_edits:
            if local is not None:
                local.unlink(missing_ok=True)
    changed = [c.path for c, _ in changes] + [
        c.path for img, local in efi_edits if local is not None for c in img.configs if c.edited(tokens) != c.data
    ]
    return RemasterReport(changed=changed, added=sorted(extras), method="in-place" if in_place else "xorriso")


def _patch_copy(src: Path, tmp: Path, layout: Layout, changes: list[tuple[_Config, bytes]]) -> None:
    fd_in = os.open(src, os.O_RDONLY)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fadvise(fd_in, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # as cp does: larger read-ahead
            _copy_range(fd_in, fd, layout.size)
            for cfg, new in changes:
                assert cfg.record is not None
                room = -(-cfg.record.size // SECTOR) * SECTOR
                os.pwrite(fd, new + b"\0" * (room - len(new)), cfg.record.extent * SECTOR)
                for rec in layout.records_at(cfg.record.extent):
                    os.pwrite(fd, struct.pack("<I", len(new)) + struct.pack(">I", len(new)), rec.offset + 10)
        finally:
            os.close(fd)
    finally:
        os.close(fd_in)


def _xorriso_copy(
    src: Path, tmp: Path, layout: Layout, changes: list[tuple[_Config, bytes]], extras: dict[str, bytes], workdir: Path
) -> None:
    if shutil.which("xorriso") is None:
        raise IsoError("xorriso is needed to rewrite this ISO (a config outgrew its space or files are added); "
                       "install it: apt-get install xorriso")  # fmt: skip
    staged = workdir / "remaster-files"
    shutil.rmtree(staged, ignore_errors=True)
    argv = ["xorriso", "-abort_on", "FAILURE", "-indev", str(src), "-outdev", str(tmp), "-boot_image", "any", "replay"]
    if any(t.kind == "joliet" for t in layout.trees):
        argv += ["-joliet", "on"]
    for n, (iso_path, content) in enumerate([(c.path, new) for c, new in changes] + list(extras.items())):
        local = staged / str(n)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(content)
        argv += ["-map", str(local), "/" + iso_path]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if proc.returncode != 0:
        raise IsoError(f"xorriso could not rewrite {src.name} (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")


def _write_efi(tmp: Path, efi_edits: list[tuple[_EfiImage, Path | None]]) -> None:
    """Write edited EFI images back over the image's own sectors (found again: xorriso may have moved them)."""
    if not any(local for _, local in efi_edits):
        return
    entries = [e for e in read_layout(tmp).boot_entries if e.platform == PLATFORM_EFI]
    fd = os.open(tmp, os.O_WRONLY)
    try:
        for img, local in efi_edits:
            if local is None:
                continue
            if img.index >= len(entries) or fat_size(tmp, entries[img.index].lba) != img.size:
                raise IsoError(f"The rewritten ISO lost its EFI boot image {img.name}; the source was left as it was.")
            with local.open("rb") as f:
                _copy_range(f.fileno(), fd, img.size, dst_off=entries[img.index].lba * SECTOR)
    finally:
        os.close(fd)


def build_deploy_iso(
    kernel: Path,
    ramdisk: Path,
    dest: Path,
    params: Sequence[str],
    *,
    network_data: Mapping[str, Any] | None = None,
    workdir: Path,
) -> Path:
    """A hybrid (BIOS isolinux + UEFI GRUB) deploy ISO booting ``kernel``/``ramdisk`` with ``params``.

    ``network_data`` goes to /openstack/latest/network_data.json, where the ramdisk's /init reads it.
    """
    from ironworks.ramdisk.iso import build_iso

    tokens = check_params(list(params), where="the deploy ISO parameters")
    for what, path in (("kernel", kernel), ("ramdisk", ramdisk)):
        if not path.is_file():
            raise IsoError(f"The {what} {path} for the deploy ISO does not exist; build the ramdisk first.")
    extras: dict[str, bytes] = {}
    if network_data is not None:
        try:
            extras["openstack/latest/network_data.json"] = json.dumps(network_data, indent=2).encode()
        except (TypeError, ValueError) as exc:
            raise IsoError(f"network_data cannot be written as JSON ({exc}); give plain JSON values.") from exc
    workdir.mkdir(parents=True, exist_ok=True)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    base = workdir / "deploy-base.iso"
    build_iso(kernel, ramdisk, tokens, base, workdir=workdir, epoch=epoch)
    try:
        if extras:
            remaster(base, dest, [], extra_files=extras, workdir=workdir)
        else:
            base.replace(dest)
    finally:
        base.unlink(missing_ok=True)
    return dest
