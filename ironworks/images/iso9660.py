"""Reading an ISO 9660 image's metadata without loading it: volume descriptors, directory trees, El Torito.

Only what remastering needs: for every directory tree (the primary one, Joliet and any other
supplementary or enhanced descriptor) the directory records with their byte offsets in the file, so a
file's size can be fixed in every record that points at its extent; Rock Ridge names (``NM``, through
``CE`` continuation areas) to name files as ``xorriso`` and Linux show them; and the El Torito boot
catalog's entries. Everything is read with ``os.pread`` of single sectors; nothing is mapped or kept
beyond the records themselves. Malformed input raises ``IsoError`` saying what was wrong.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ironworks.errors import InvalidInput

SECTOR = 2048
#: a bound on records read from one tree, so a crafted image cannot make us walk forever
MAX_RECORDS = 500_000
PLATFORM_BIOS = 0x00
PLATFORM_EFI = 0xEF


class IsoError(InvalidInput):
    """The ISO (or a parameter for it) cannot be used; the message says what to do."""

    reason = "invalid_iso"


@dataclass(frozen=True)
class Record:
    """One directory record: where it sits in the file and the extent it points at."""

    path: str
    extent: int
    size: int
    offset: int
    is_dir: bool
    multi_extent: bool = False


@dataclass
class Tree:
    """The records of one volume descriptor's directory tree."""

    kind: str  # "primary", "joliet" or "supplementary"
    rock_ridge: bool
    records: list[Record] = field(default_factory=list)


@dataclass(frozen=True)
class BootEntry:
    """One El Torito boot image: platform, first 2048-byte block, sector count in 512-byte units."""

    platform: int
    lba: int
    sectors: int
    bootable: bool


@dataclass
class Layout:
    """What remastering needs to know about an image's structure."""

    volume_id: str
    size: int
    trees: list[Tree]
    boot_entries: list[BootEntry]
    udf: bool

    def files(self) -> dict[str, Record]:
        """Files by path in the tree that names them best (Rock Ridge, else Joliet, else ISO 9660)."""
        best = next((t for t in self.trees if t.rock_ridge), None)
        best = best or next((t for t in self.trees if t.kind == "joliet"), None) or self.trees[0]
        return {r.path: r for r in best.records if not r.is_dir}

    def records_at(self, extent: int) -> list[Record]:
        """Every file record of every tree that points at ``extent``."""
        return [r for t in self.trees for r in t.records if r.extent == extent and not r.is_dir]


def _bad(path: Path, what: str) -> IsoError:
    return IsoError(
        f"{path.name} is not a usable ISO 9660 image: {what}. Give an ISO image file (for instance one made "
        "with xorriso or genisoimage), not a disk image or an archive.",
        field=str(path),
    )


class _Reader:
    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self.fd, self.size = path, fd, size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise _bad(self.path, f"it points at bytes {offset}..{offset + length} beyond its end ({self.size})")
        return os.pread(self.fd, length, offset)


def read_layout(path: Path) -> Layout:
    """The volume descriptors, directory trees and El Torito entries of the image at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise IsoError(f"Cannot open the ISO {path}: {exc.strerror}. Check the path.", field=str(path)) from exc
    try:
        size = os.fstat(fd).st_size
        if size < 17 * SECTOR:
            raise _bad(path, f"it has {size} bytes, fewer than an ISO's system area and first descriptor")
        return _read(_Reader(path, fd, size))
    finally:
        os.close(fd)


def _read(rd: _Reader) -> Layout:
    trees: list[Tree] = []
    boot: list[BootEntry] = []
    volume_id = ""
    udf = False
    lba = 16
    while True:
        vd = rd.read(lba * SECTOR, SECTOR)
        if vd[1:6] != b"CD001":
            if lba == 16:
                raise _bad(rd.path, "there is no ISO 9660 volume descriptor at sector 16")
            raise _bad(rd.path, f"its volume descriptors stop at sector {lba} without a terminator")
        kind = vd[0]
        if kind == 255:
            break
        if kind == 1 or kind == 2:
            if struct.unpack_from("<H", vd, 128)[0] != SECTOR:
                raise _bad(rd.path, "its logical block size is not 2048 bytes")
            joliet = kind == 2 and any(esc in vd[88:120] for esc in (b"%/@", b"%/C", b"%/E"))
            if kind == 1 and not trees:
                volume_id = vd[40:72].decode("ascii", "replace").rstrip(" \0")
            trees.append(_walk(rd, vd[156:190], "primary" if kind == 1 else "joliet" if joliet else "supplementary"))
        elif kind == 0 and vd[7:30] == b"EL TORITO SPECIFICATION":
            boot = _boot_catalog(rd, struct.unpack_from("<I", vd, 71)[0])
        lba += 1
        if lba > 16 + 64:
            raise _bad(rd.path, "it has more than 64 volume descriptors")
    if not trees or trees[0].kind != "primary":
        raise _bad(rd.path, "it has no primary volume descriptor")
    # UDF bridge images (Windows installers) keep file sizes in UDF file entries too
    for n in range(lba + 1, lba + 8):
        if (n + 1) * SECTOR <= rd.size and rd.read(n * SECTOR + 1, 5) in (b"NSR02", b"NSR03"):
            udf = True
    return Layout(volume_id=volume_id, size=rd.size, trees=trees, boot_entries=boot, udf=udf)


def _walk(rd: _Reader, root: bytes, kind: str) -> Tree:
    """All records below the root directory record ``root`` (breadth first, each directory once)."""
    root_extent, root_size = struct.unpack_from("<I", root, 2)[0], struct.unpack_from("<I", root, 10)[0]
    first = rd.read(root_extent * SECTOR, SECTOR)
    skip = _susp_skip(first) if kind == "primary" else None
    tree = Tree(kind=kind, rock_ridge=skip is not None)
    seen = {root_extent}
    todo = [("", root_extent, root_size)]
    while todo:
        parent, extent, length = todo.pop(0)
        for rec in _records(rd, extent, length, parent, kind, skip):
            if len(tree.records) >= MAX_RECORDS:
                raise _bad(rd.path, f"it has more than {MAX_RECORDS} files")
            tree.records.append(rec)
            if rec.is_dir and rec.extent not in seen:
                seen.add(rec.extent)
                todo.append((rec.path, rec.extent, rec.size))
    return tree


def _susp_skip(first_sector: bytes) -> int | None:
    """Rock Ridge's SUSP ``SP`` entry in the root's ``.`` record: its skip length, or None without SUSP."""
    length = first_sector[0]
    su = first_sector[34:length]  # "." has a one-byte identifier: 33 + 1, no padding byte
    if len(su) >= 7 and su[0:2] == b"SP" and su[4:6] == b"\xbe\xef":
        return su[6]
    return None


def _records(rd: _Reader, extent: int, length: int, parent: str, kind: str, skip: int | None) -> list[Record]:
    """The records of one directory, read a sector at a time (records never cross a sector)."""
    out: list[Record] = []
    for first in range(extent * SECTOR, extent * SECTOR + length, SECTOR):
        data = rd.read(first, SECTOR)
        pos = 0
        while pos < SECTOR and data[pos]:  # a zero length byte: the rest of the sector is padding
            n = data[pos]
            if n < 34 or pos + n > SECTOR or 33 + data[pos + 32] > n:
                raise _bad(rd.path, f"a directory record at byte {first + pos} is malformed")
            rec = data[pos : pos + n]
            fi_len = rec[32]
            ident = rec[33 : 33 + fi_len]
            if ident not in (b"\0", b"\1"):
                name = _name(rd, rec, ident, fi_len, kind, skip)
                if not name or "/" in name or name in (".", ".."):
                    raise _bad(rd.path, f"the directory record at byte {first + pos} has the name {name!r}")
                flags = rec[25]
                out.append(
                    Record(
                        path=f"{parent}/{name}" if parent else name,
                        extent=struct.unpack_from("<I", rec, 2)[0],
                        size=struct.unpack_from("<I", rec, 10)[0],
                        offset=first + pos,
                        is_dir=bool(flags & 0x02),
                        multi_extent=bool(flags & 0x80),
                    )
                )
            pos += n
    return out


def _name(rd: _Reader, rec: bytes, ident: bytes, fi_len: int, kind: str, skip: int | None) -> str:
    name = ident.decode("utf-16-be", "replace") if kind == "joliet" else ident.decode("latin-1")
    if skip is not None:
        su_start = 33 + fi_len + (1 - fi_len % 2) + skip
        rr = _rr_name(rd, rec[su_start:])
        if rr is not None:
            return rr
    name = name.split(";")[0]
    if name.endswith(".") and kind != "joliet":
        name = name[:-1]
    return name.lower() if kind == "primary" else name


def _rr_name(rd: _Reader, su: bytes) -> str | None:
    """The Rock Ridge ``NM`` name in a system use area (following ``CE`` continuations), if any."""
    parts: list[bytes] = []
    found = False
    hops = 0
    while True:
        pos, ce = 0, None
        while pos + 4 <= len(su):
            sig, ln = su[pos : pos + 2], su[pos + 2]
            if ln < 4 or pos + ln > len(su):
                break
            if sig == b"NM":
                found = True
                if not su[pos + 4] & 0x06:  # CURRENT/PARENT flags: not a name
                    parts.append(su[pos + 5 : pos + ln])
            elif sig == b"CE" and ln >= 28:
                ce = (
                    struct.unpack_from("<I", su, pos + 4)[0],
                    struct.unpack_from("<I", su, pos + 12)[0],
                    struct.unpack_from("<I", su, pos + 20)[0],
                )
            elif sig == b"ST":
                break
            pos += ln
        if ce is None or hops >= 8:
            break
        hops += 1
        block, off, length = ce
        su = rd.read(block * SECTOR + off, min(length, SECTOR))
    return b"".join(parts).decode("utf-8", "surrogateescape") if found and parts else None


def _boot_catalog(rd: _Reader, lba: int) -> list[BootEntry]:
    cat = rd.read(lba * SECTOR, SECTOR)
    if cat[0] != 1 or cat[30:32] != b"\x55\xaa":
        raise _bad(rd.path, "its El Torito boot catalog has no valid validation entry")
    entries = [_entry(cat[32:64], cat[1])]
    pos = 64
    while pos + 32 <= len(cat) and cat[pos] in (0x90, 0x91):
        platform, count = cat[pos + 1], struct.unpack_from("<H", cat, pos + 2)[0]
        last = cat[pos] == 0x91
        pos += 32
        while count and pos + 32 <= len(cat):
            if cat[pos] != 0x44:  # extension entries continue the previous entry
                entries.append(_entry(cat[pos : pos + 32], platform))
                count -= 1
            pos += 32
        if last:
            break
    return entries


def _entry(raw: bytes, platform: int) -> BootEntry:
    return BootEntry(
        platform=platform,
        lba=struct.unpack_from("<I", raw, 8)[0],
        sectors=struct.unpack_from("<H", raw, 6)[0],
        bootable=raw[0] == 0x88,
    )


def fat_size(path: Path, lba: int) -> int | None:
    """The byte size of the FAT file system at block ``lba`` (an EFI boot image), or None if it is not FAT."""
    with path.open("rb") as f:
        f.seek(lba * SECTOR)
        bpb = f.read(512)
    if len(bpb) < 512 or bpb[510:512] != b"\x55\xaa":
        return None
    bps: int = struct.unpack_from("<H", bpb, 11)[0]
    total: int = struct.unpack_from("<H", bpb, 19)[0] or struct.unpack_from("<I", bpb, 32)[0]
    if bps not in (512, 1024, 2048, 4096) or total == 0:
        return None
    return bps * total
