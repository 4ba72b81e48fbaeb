"""The qcow2 header: parsed and judged (refused, left to ``qemu-img``, or accepted) before anything is written."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ironworks.agent.errors import ImageError

MAGIC = b"QFI\xfb"
SECTOR = 512
MAX_L1_BYTES = 32 << 20  # QEMU's QCOW_MAX_L1_SIZE
# more L2 tables than this: qemu-img (512 B clusters above 8 GiB, 4 KiB clusters above 512 GiB)
MAX_STREAM_L1 = 1 << 18
OFFSET_MASK = 0x00FFFFFFFFFFFE00
_DIRTY, _CORRUPT, _DATA_FILE, _COMPRESSION, _EXTENDED_L2 = 1, 2, 4, 8, 16
_EXT_CRYPTO, _EXT_DATA_FILE = 0x0537BE77, 0x44415441
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
_V3 = struct.Struct(">QQQII")


class Unsupported(Exception):
    """The image uses a qcow2 feature this decoder leaves to ``qemu-img``; nothing was written."""


def corrupt(what: str) -> ImageError:
    """The error for a damaged (or hostile) image: what is wrong, and how to look closer."""
    return ImageError(f"the qcow2 image is corrupt: {what}; check it with `qemu-img check`", damaged=True)


@dataclass(frozen=True)
class Header:
    """What decoding needs from a qcow2 header."""

    version: int
    cluster_bits: int
    size: int  # the virtual size in whole sectors, as QEMU reads it
    l1_offset: int
    l1_entries: int  # the entries that map the virtual size (the table may be longer)

    @property
    def cluster_size(self) -> int:
        """Bytes per cluster."""
        return 1 << self.cluster_bits

    @property
    def l2_span(self) -> int:
        """Guest bytes one L2 table maps."""
        return self.cluster_size * (self.cluster_size // 8)


def header_bytes(head: bytes) -> int | None:
    """How many leading bytes ``parse_header`` needs (the first cluster); None while fewer than 24 arrived."""
    if len(head) < 24:
        return None
    if head[:4] != MAGIC:
        raise ImageError("the image is not a qcow2 file (no QFI magic): check its disk_format")
    bits = int.from_bytes(head[20:24], "big")
    if not 9 <= bits <= 21:
        raise ImageError(f"the qcow2 image has cluster_bits {bits}: qcow2 allows 9 to 21 (512 B to 2 MiB)")
    return 1 << bits


def parse_header(head: bytes, *, device_size: int) -> Header:
    """The header of the image whose first cluster is ``head``: ImageError if refused, Unsupported for qemu-img."""
    if len(head) < _V2.size or len(head) < (header_bytes(head) or 0):
        raise ImageError(f"the qcow2 image is truncated: {len(head)} bytes, less than its first cluster")
    (_, version, backing_offset, backing_size, bits, size, crypt, l1_size, l1_offset, *_) = _V2.unpack_from(head)
    if version not in (2, 3):
        raise ImageError(f"qcow2 version {version} is not supported (versions 2 and 3 are)")
    cs = 1 << bits
    if backing_offset and backing_size:
        raise ImageError("the qcow2 image has a backing file: refusing to read another file; flatten it first")
    if crypt:
        raise ImageError("the qcow2 image is encrypted: decrypt it (qemu-img convert) before deploying it")
    incompatible, length, compression = 0, _V2.size, 0
    if version == 3:
        if len(head) < _V2.size + _V3.size:
            raise corrupt("its version 3 header is incomplete")
        incompatible, _, _, refcount_order, length = _V3.unpack_from(head, _V2.size)
        if not 104 <= length <= cs:
            raise corrupt(f"header_length {length} is outside 104..{cs}")
        if refcount_order > 6:
            raise corrupt(f"refcount_order {refcount_order} is above 6")
        compression = head[104] if length > 104 else 0
    if incompatible & _DATA_FILE:
        raise ImageError("the qcow2 image keeps its data in an external file: refusing to read another file")
    _check_extensions(head, length, cs)
    if incompatible & _CORRUPT:
        raise Unsupported("it is marked corrupt")
    if incompatible & _EXTENDED_L2:
        raise Unsupported("it has extended L2 entries (subclusters)")
    if compression or incompatible & _COMPRESSION:
        raise Unsupported(f"compression type {compression} (not zlib)")
    if incompatible & ~(_DIRTY | _CORRUPT | _DATA_FILE | _COMPRESSION | _EXTENDED_L2):
        raise Unsupported(f"incompatible features {incompatible:#x}")
    size -= size % SECTOR
    if size > device_size:
        raise ImageError(f"the image ({size} bytes) does not fit on the device ({device_size} bytes)")
    span = cs * (cs // 8)
    needed = -(-size // span)
    if l1_size < needed:
        raise corrupt(f"its L1 table has {l1_size} entries, fewer than the {needed} its size needs")
    if l1_size * 8 > MAX_L1_BYTES:
        raise corrupt(f"its L1 table has {l1_size} entries, more than QEMU's limit of {MAX_L1_BYTES // 8}")
    if needed and (l1_offset % cs or l1_offset < cs):
        raise corrupt(f"its L1 table offset {l1_offset:#x} is not a cluster after the header")
    if needed > MAX_STREAM_L1:  # keeps the table bookkeeping in tens of MB, even for a hostile image
        raise Unsupported(f"{needed} L2 tables (small clusters for the size)")
    return Header(version, bits, size, l1_offset, needed)


def _check_extensions(head: bytes, pos: int, cs: int) -> None:
    end = min(cs, len(head))
    while pos + 8 <= end:
        kind, length = struct.unpack_from(">II", head, pos)
        if kind == 0:
            return
        pos += 8
        if pos + length > end:
            raise corrupt(f"header extension {kind:#x} of {length} bytes runs past the first cluster")
        if kind == _EXT_DATA_FILE:
            raise ImageError("the qcow2 image names an external data file: refusing to read another file")
        if kind == _EXT_CRYPTO:
            raise ImageError("the qcow2 image is encrypted: decrypt it (qemu-img convert) before deploying it")
        pos += (length + 7) & ~7
