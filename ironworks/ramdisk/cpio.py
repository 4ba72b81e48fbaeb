"""A reproducible newc ("070701") cpio writer: what the kernel unpacks as an initramfs.

The same entries always give the same bytes: entries are written in sorted path order (a directory
before what it holds), inode numbers count up from 1, every mtime is the given epoch, owner and
group are 0, and nothing of the build machine (its inode numbers, devices, umask) leaks in.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class CpioEntry:
    """One archive member: ``mode`` carries the type bits; ``data`` or ``source`` the file contents."""

    path: str
    mode: int
    data: bytes = b""
    source: Path | None = None
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def size(self) -> int:
        """Bytes of content (a symlink's content is its target)."""
        if self.source is not None:
            return self.source.stat().st_size
        return len(self.data)


def sort_key(path: str) -> tuple[str, ...]:
    """Sort by path components, so ``a/b`` comes right after ``a`` and before ``a-b``."""
    return tuple(path.split("/"))


def ordered(entries: Iterable[CpioEntry]) -> list[CpioEntry]:
    """Entries in archive order; raises ValueError on a duplicate path or a path that is not relative."""
    by_path: dict[str, CpioEntry] = {}
    for e in entries:
        if not e.path or e.path.startswith("/") or ".." in e.path.split("/"):
            raise ValueError(f"cpio member path must be relative and inside the archive: {e.path!r}")
        if e.path in by_path:
            raise ValueError(f"duplicate cpio member {e.path!r}")
        by_path[e.path] = e
    return [by_path[p] for p in sorted(by_path, key=sort_key)]


def _header(entry: CpioEntry, ino: int, size: int, mtime: int) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, size, 0, 0, entry.rdev_major, entry.rdev_minor, len(name), 0)
    head = b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + name
    return head + b"\0" * (-len(head) % 4)


def chunks(entries: Iterable[CpioEntry], *, mtime: int) -> Iterator[bytes]:
    """The archive as a stream of byte chunks (entries are ordered here)."""
    for ino, entry in enumerate(ordered(entries), start=1):
        size = entry.size if stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode) else 0
        yield _header(entry, ino, size, mtime)
        written = 0
        if entry.source is not None:
            with entry.source.open("rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    written += len(block)
                    yield block
        elif size:
            written = len(entry.data)
            yield entry.data
        if written != size:
            raise ValueError(f"{entry.path}: {entry.source} changed size while it was archived")
        yield b"\0" * (-size % 4)
    trailer = CpioEntry(TRAILER, 0)
    yield _header(trailer, 0, 0, 0)


def write(entries: Iterable[CpioEntry], out: IO[bytes], *, mtime: int) -> int:
    """Write the archive to ``out``; returns the number of bytes written."""
    total = 0
    for block in chunks(entries, mtime=mtime):
        out.write(block)
        total += len(block)
    return total


def read_names(data: bytes) -> list[str]:
    """Member names of a newc archive, in order (for tests and ``ironworks ramdisk`` checks)."""
    names: list[str] = []
    pos = 0
    while pos + 110 <= len(data):
        if data[pos : pos + 6] != b"070701":
            raise ValueError(f"not a newc cpio header at offset {pos}")
        size = int(data[pos + 54 : pos + 62], 16)
        namesize = int(data[pos + 94 : pos + 102], 16)
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        if name == TRAILER:
            break
        names.append(name)
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)
    return names
