"""What an ELF file needs at run time: its interpreter, DT_NEEDED libraries and RUNPATH/RPATH.

Read from the file itself (program headers and the dynamic segment), so libraries are found in the
unpacked packages and never through the host's loader (``ldd`` would run the host's ld.so and find
the host's libraries).
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH = 1, 5, 10, 15, 29


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """The dynamic-linking facts of one ELF file (empty for a static one)."""

    interpreter: str | None = None
    needed: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()


def is_elf(path: Path) -> bool:
    """Whether ``path`` is a regular file starting with the ELF magic (devices and FIFOs are never opened)."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def parse(data: bytes) -> ElfInfo:
    """The interpreter, needed libraries and run path of a 64-bit little-endian ELF image."""
    if data[:4] != ELF_MAGIC:
        raise ValueError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ValueError("only 64-bit little-endian ELF files are supported")
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 0x20)[0], *struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    interpreter = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == _PT_INTERP:
            interpreter = data[p_offset : p_offset + p_filesz].split(b"\0", 1)[0].decode()
    if dynamic is None:
        return ElfInfo(interpreter=interpreter)
    entries: list[tuple[int, int]] = []
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab_vaddr = next((v for t, v in entries if t == _DT_STRTAB), None)
    if strtab_vaddr is None:
        return ElfInfo(interpreter=interpreter)
    strtab = _file_offset(strtab_vaddr, loads)

    def string(offset: int) -> str:
        start = strtab + offset
        return data[start : data.index(b"\0", start)].decode()

    needed = tuple(string(v) for t, v in entries if t == _DT_NEEDED)
    runpath: list[str] = []
    for t, v in entries:
        if t in (_DT_RUNPATH, _DT_RPATH):
            runpath += [p for p in string(v).split(":") if p]
    return ElfInfo(interpreter=interpreter, needed=needed, runpath=tuple(runpath))


def _file_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int:
    for seg_vaddr, seg_offset, seg_size in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_size:
            return vaddr - seg_vaddr + seg_offset
    raise ValueError(f"address {vaddr:#x} is in no loaded segment")


def read(path: Path) -> ElfInfo:
    """``parse`` of the file at ``path``."""
    return parse(path.read_bytes())
