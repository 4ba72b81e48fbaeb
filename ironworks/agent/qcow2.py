"""Streaming qcow2 -> raw: the image's bytes are decoded in file order, as they arrive over HTTP.

qcow2 (QEMU's ``docs/interop/qcow2.txt``) maps guest clusters to host clusters through two levels of
tables: the header names the L1 table, each L1 entry an L2 table, each L2 entry a data cluster, a
deflate-compressed cluster, or "zeros". The decoder learns the map while the file goes by: once the L1
table has passed it knows where the L2 tables are, once an L2 table has passed it knows where the data
it maps lies, and data whose place is known is written to its guest offset as it arrives. Guest ranges
the tables leave unallocated or mark as zeros are zeroed on the target (``qemu-img convert -n`` does
the same), so the device reads back exactly what ``qemu-img convert -O raw`` would produce.

Bytes that pass before the table that maps them (an L1 table moved to the end of the file by a
resize, an L2 table copied on write after a snapshot) are spilled to a sparse temporary file at their
host offset, so the spill never exceeds the image, and are written out when their table arrives.
Once every L2 table has been read, bytes nothing maps (refcounts, snapshots, freed clusters) are
dropped instead.

Features the decoder leaves to ``qemu-img`` (zstd compression, extended L2 entries, an image marked
corrupt, unknown incompatible features) raise :class:`Unsupported` from the header, before anything
is written. What Ironworks never reads (backing files, external data files, encryption) and malformed
or hostile images raise ImageError. Standard library only: it runs in the ramdisk.
"""

from __future__ import annotations

import heapq
import itertools
import mmap
import os
import struct
import tempfile
import zlib
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any, Protocol

from ironworks.agent.errors import ImageError

MAGIC = b"QFI\xfb"
SECTOR = 512
ALIGN = 4096
MAX_L1_BYTES = 32 << 20  # QEMU's QCOW_MAX_L1_SIZE
MAX_PENDING = 8 << 20  # mapped clusters still waiting for their bytes (~25 bytes each): bounds memory
STAGE = 8 << 20  # decompressed or spilled data is gathered into aligned writes of up to this size
_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_COMPRESSED = 1 << 62
_ZERO = 1
_DIRTY, _CORRUPT, _DATA_FILE, _COMPRESSION, _EXTENDED_L2 = 1, 2, 4, 8, 16
_EXT_CRYPTO, _EXT_DATA_FILE = 0x0537BE77, 0x44415441
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
_V3 = struct.Struct(">QQQII")


class Unsupported(Exception):
    """The image uses a qcow2 feature this decoder leaves to ``qemu-img``; nothing was written."""


class Target(Protocol):
    """Where decoded guest bytes go."""

    def write(self, data: memoryview, offset: int, *, aligned: bool) -> None:
        """Write ``data`` at guest ``offset``; ``aligned`` when its memory starts on a page."""

    def zero(self, offset: int, length: int) -> None:
        """Make ``length`` bytes at guest ``offset`` read back as zeros."""


def _corrupt(what: str) -> ImageError:
    return ImageError(f"the qcow2 image is corrupt: {what}; check it with `qemu-img check`")


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
            raise _corrupt("its version 3 header is incomplete")
        incompatible, _, _, refcount_order, length = _V3.unpack_from(head, _V2.size)
        if not 104 <= length <= cs:
            raise _corrupt(f"header_length {length} is outside 104..{cs}")
        if refcount_order > 6:
            raise _corrupt(f"refcount_order {refcount_order} is above 6")
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
        raise _corrupt(f"its L1 table has {l1_size} entries, fewer than the {needed} its size needs")
    if l1_size * 8 > MAX_L1_BYTES:
        raise _corrupt(f"its L1 table has {l1_size} entries, more than QEMU's limit of {MAX_L1_BYTES // 8}")
    if needed and (l1_offset % cs or l1_offset < cs):
        raise _corrupt(f"its L1 table offset {l1_offset:#x} is not a cluster after the header")
    return Header(version, bits, size, l1_offset, needed)


def _check_extensions(head: bytes, pos: int, cs: int) -> None:
    end = min(cs, len(head))
    while pos + 8 <= end:
        kind, length = struct.unpack_from(">II", head, pos)
        if kind == 0:
            return
        pos += 8
        if pos + length > end:
            raise _corrupt(f"header extension {kind:#x} of {length} bytes runs past the first cluster")
        if kind == _EXT_DATA_FILE:
            raise ImageError("the qcow2 image names an external data file: refusing to read another file")
        if kind == _EXT_CRYPTO:
            raise ImageError("the qcow2 image is encrypted: decrypt it (qemu-img convert) before deploying it")
        pos += (length + 7) & ~7


class _Runs:
    """The data an L2 table maps, in host order: runs of contiguous clusters, or one compressed cluster."""

    __slots__ = ("guest", "host", "length", "packed")

    def __init__(self) -> None:
        self.host, self.guest, self.length = array("Q"), array("Q"), array("Q")
        self.packed = array("B")  # 1: a compressed cluster


class _Spilled:
    """Host ranges written to the spill file, merged (they arrive almost always in order)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        if not self.ends or self.ends[-1] <= start:  # the usual case: after everything spilled so far
            if self.ends and self.ends[-1] == start:
                self.ends[-1] = end
            else:
                self.starts.append(start)
                self.ends.append(end)
            return
        i, j = bisect_left(self.ends, start), bisect_right(self.starts, end)  # [i, j) touch the new range
        if i < j:
            start, end = min(start, self.starts[i]), max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def covers(self, start: int, end: int) -> bool:
        i = bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end


class Decoder:
    """Decodes a qcow2 file fed in order (``feed``) onto a Target; ``finish`` once the file ended."""

    def __init__(self, target: Target, *, device_size: int, tmp_dir: str | None = None) -> None:
        self.target, self.device_size, self.tmp_dir = target, device_size, tmp_dir
        self.header: Header | None = None
        self.head = bytearray()  # the first cluster, kept until the header is parsed
        self.fed = 0  # bytes of the file decoded so far
        self.l1: bytearray | None = None
        self.l1_got = 0
        self.l2_offsets, self.l2_index = array("Q"), array("Q")  # host order
        self.l2_next, self.l2_got = 0, 0
        self.l2_buf = bytearray()
        self.heap: list[list[Any]] = []  # [next host byte, seq, _Runs, run index, bytes done, buffer]
        self.seq = self.pending = 0
        self.spill: Any = None
        self.spilled = _Spilled()
        self.zero_start = self.zero_end = 0
        self.stage: mmap.mmap | None = None
        self.stage_guest = self.stage_len = 0

    @property
    def started(self) -> bool:
        """True once the header was accepted (after that, the target may have been written)."""
        return self.header is not None

    @property
    def complete(self) -> bool:
        """True once every table is known: bytes nothing maps can be dropped."""
        return self.header is not None and self.l1 is None and self.l2_next == len(self.l2_offsets)

    # ---- input ----

    def feed(self, data: memoryview, offset: int) -> None:
        """Decode the file's bytes at ``offset`` (a retried download may repeat bytes already fed)."""
        if offset > self.fed:
            raise ImageError(f"qcow2 bytes from {offset} arrived before bytes {self.fed}..{offset}")
        end = offset + len(data)
        if end <= self.fed:
            return
        if self.header is None:
            while self.header is None and self.fed < end:
                need = header_bytes(bytes(self.head[:24])) or 24  # 24 bytes say how long the first cluster is
                take = min(need - len(self.head), end - self.fed)
                self.head += data[self.fed - offset : self.fed - offset + take]
                self.fed += take
                if header_bytes(bytes(self.head[:24])) == len(self.head):
                    self._start(parse_header(bytes(self.head), device_size=self.device_size))
            if self.header is None:
                return
        self._consume(data, offset, self.fed)

    def _start(self, header: Header) -> None:
        self.header = header
        self.head = bytearray()
        if header.l1_entries:
            self.l1 = bytearray(header.l1_entries * 8)

    def _consume(self, data: memoryview, base: int, cursor: int) -> None:
        end = base + len(data)
        while True:
            key, which = end, 0
            if self.l1 is not None:
                assert self.header is not None
                key, which = min((key, which), (self.header.l1_offset + self.l1_got, 1))
            if self.l2_next < len(self.l2_offsets):
                key, which = min((key, which), (self.l2_offsets[self.l2_next] + self.l2_got, 2))
            if self.heap and self.heap[0][0] < key:
                key, which = self.heap[0][0], 3
            if key >= end or not which:
                break
            if key > cursor:
                self._gap(data, base, cursor, key)
                cursor = key
            if which == 1:
                cursor = max(cursor, self._take_l1(data, base, end))
            elif which == 2:
                cursor = max(cursor, self._take_l2(data, base, end))
            else:
                cursor = max(cursor, self._take_run(data, base, end))
        if cursor < end:
            self._gap(data, base, cursor, end)
        self.fed = end

    def _gap(self, data: memoryview, base: int, start: int, end: int, *, keep: bool = False) -> None:
        """Spill bytes nothing claimed yet (unless every table is known and ``keep`` is not asked for)."""
        if (self.complete and not keep) or start >= end:
            return
        try:
            if self.spill is None:
                self.spill = tempfile.TemporaryFile(dir=self.tmp_dir, prefix="qcow2-spill-")  # noqa: SIM115 (closed in close())
            os.pwrite(self.spill.fileno(), data[start - base : end - base], start)
        except OSError as exc:
            raise ImageError(f"spilling qcow2 data to {self.tmp_dir or tempfile.gettempdir()} failed: {exc}") from exc
        self.spilled.add(start, end)

    def _read_spill(self, start: int, length: int, *, exclusive: bool) -> bytes:
        if exclusive and length and not self.spilled.covers(start, start + length):
            raise _corrupt(f"host bytes {start:#x}..{start + length:#x} are used twice (overlapping tables or data)")
        if self.spill is None:
            return bytes(length)
        data = os.pread(self.spill.fileno(), length, start)
        return data + bytes(length - len(data))

    # ---- tables ----

    def _take_l1(self, data: memoryview, base: int, end: int) -> int:
        assert self.header is not None and self.l1 is not None
        key = self.header.l1_offset + self.l1_got
        n = min(len(self.l1) - self.l1_got, end - key)
        self.l1[self.l1_got : self.l1_got + n] = data[key - base : key - base + n]
        self.l1_got += n
        if self.l1_got == len(self.l1):
            self._parse_l1(key + n)
        return key + n

    def _parse_l1(self, cursor: int) -> None:
        hdr = self.header
        assert hdr is not None and self.l1 is not None
        cs, span = hdr.cluster_size, hdr.l2_span
        tables: list[tuple[int, int]] = []
        for i, entry in enumerate(struct.unpack(f">{hdr.l1_entries}Q", self.l1)):
            off = entry & _OFFSET_MASK
            if not off:
                self._zero(i * span, min(span, hdr.size - i * span))
            elif off % cs:
                raise _corrupt(f"L1 entry {i} points to an L2 table at the unaligned offset {off:#x}")
            elif off < cs or hdr.l1_offset - cs < off < hdr.l1_offset + len(self.l1):
                raise _corrupt(f"L1 entry {i} points to an L2 table at {off:#x}, inside the header or the L1 table")
            else:
                tables.append((off, i))
        tables.sort()
        for (a, _), (b, _) in itertools.pairwise(tables):
            if b - a < cs:
                raise _corrupt(f"two L1 entries point to the same L2 table at {a:#x}")
        self.l1 = None
        self.l2_offsets = array("Q", (t[0] for t in tables))
        self.l2_index = array("Q", (t[1] for t in tables))
        while self.l2_next < len(self.l2_offsets) and self.l2_offsets[self.l2_next] < cursor:
            # this L2 table passed before the L1 table did: it is in the spill file
            table = self._read_spill(self.l2_offsets[self.l2_next], cs, exclusive=True)
            self.l2_next += 1
            self._parse_l2(table, self.l2_index[self.l2_next - 1], cursor)

    def _take_l2(self, data: memoryview, base: int, end: int) -> int:
        assert self.header is not None
        cs = self.header.cluster_size
        key = self.l2_offsets[self.l2_next] + self.l2_got
        n = min(cs - self.l2_got, end - key)
        if not self.l2_got:
            self.l2_buf = bytearray(cs)
        self.l2_buf[self.l2_got : self.l2_got + n] = data[key - base : key - base + n]
        self.l2_got += n
        if self.l2_got == cs:
            self.l2_got = 0
            self.l2_next += 1
            self._parse_l2(bytes(self.l2_buf), self.l2_index[self.l2_next - 1], key + n)
        return key + n

    def _parse_l2(self, table: bytes, index: int, cursor: int) -> None:
        hdr = self.header
        assert hdr is not None
        cs, bits, size = hdr.cluster_size, hdr.cluster_bits, hdr.size
        shift = 62 - (bits - 8)
        omask, smask = (1 << shift) - 1, (1 << (bits - 8)) - 1
        base = index * hdr.l2_span
        count = min(cs // 8, -(-(size - base) // cs))
        runs = _Runs()
        for j, entry in enumerate(struct.unpack_from(f">{count}Q", table)):
            guest = base + j * cs
            if entry & _COMPRESSED:
                off = entry & omask
                length = (((entry >> shift) & smask) + 1) * SECTOR - off % SECTOR
                self._check_data(off, length, guest)
                runs.host.append(off)
                runs.guest.append(guest)
                runs.length.append(length)
                runs.packed.append(1)
                continue
            off = entry & _OFFSET_MASK
            if entry & _ZERO or not off:
                self._zero(guest, min(cs, size - guest))
                continue
            if off % cs:
                raise _corrupt(f"the cluster at guest offset {guest:#x} has the unaligned host offset {off:#x}")
            length = min(cs, size - guest)
            self._check_data(off, length, guest)
            n = len(runs.host) - 1
            follows = n >= 0 and not runs.packed[n] and runs.host[n] + runs.length[n] == off
            if follows and runs.guest[n] + runs.length[n] == guest:
                runs.length[n] += length  # the next cluster on both sides: one longer run
                continue
            runs.host.append(off)
            runs.guest.append(guest)
            runs.length.append(length)
            runs.packed.append(0)
        self._register(runs, cursor)

    def _check_data(self, off: int, length: int, guest: int) -> None:
        hdr = self.header
        assert hdr is not None
        cs = hdr.cluster_size
        i = bisect_right(self.l2_offsets, off - cs)
        l1_end = hdr.l1_offset + hdr.l1_entries * 8
        if off < cs or (i < len(self.l2_offsets) and self.l2_offsets[i] < off + length):
            raise _corrupt(f"the data for guest offset {guest:#x} lies in the header or an L2 table ({off:#x})")
        if off < l1_end and off + length > hdr.l1_offset:
            raise _corrupt(f"the data for guest offset {guest:#x} lies in the L1 table ({off:#x})")

    def _register(self, runs: _Runs, cursor: int) -> None:
        if not runs.host:
            return
        order = sorted(range(len(runs.host)), key=runs.host.__getitem__)
        if order != list(range(len(order))):
            for name in runs.__slots__:
                old = getattr(runs, name)
                setattr(runs, name, array(old.typecode, (old[k] for k in order)))
        for k in range(len(runs.host) - 1):
            if runs.host[k] + runs.length[k] > runs.host[k + 1] and not (runs.packed[k] and runs.packed[k + 1]):
                raise _corrupt(f"host bytes at {runs.host[k + 1]:#x} are mapped twice")
        self.pending += len(runs.host)
        if self.pending > MAX_PENDING:
            raise ImageError(
                f"the qcow2 image maps more than {MAX_PENDING} clusters ahead of their data: too fragmented to "
                "stream; rewrite it with `qemu-img convert -O qcow2` first"
            )
        entry: list[Any] = [runs.host[0], self._next_seq(), runs, 0, 0, None]
        # runs (or their beginnings) that passed before this table did are in the spill file
        while entry[3] < len(runs.host) and entry[0] < cursor:
            self._take_run_entry(entry, memoryview(b""), cursor, cursor, spill_below=cursor)
        if entry[3] < len(runs.host):
            heapq.heappush(self.heap, entry)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # ---- data ----

    def _take_run(self, data: memoryview, base: int, end: int) -> int:
        entry = self.heap[0]
        reached = self._take_run_entry(entry, data, base, end, spill_below=base)
        if entry[3] < len(entry[2].host):
            heapq.heapreplace(self.heap, entry)
        else:
            heapq.heappop(self.heap)
        return reached

    def _take_run_entry(self, entry: list[Any], data: memoryview, base: int, end: int, *, spill_below: int) -> int:
        """Give the entry's current run its next bytes (from the spill below ``spill_below``); the end reached."""
        key, _, runs, idx, done, buf = entry
        host, guest, length, packed = runs.host[idx], runs.guest[idx], runs.length[idx], runs.packed[idx]
        stop = host + length
        if key < spill_below:
            n = min(stop, spill_below) - key
            if packed:
                piece: memoryview | bytes = self._read_spill(key, n, exclusive=False)
            else:
                if not self.spilled.covers(key, key + n):
                    self._read_spill(key, n, exclusive=True)  # raises
                self._emit_spilled(guest + done, key, n)
                piece = b""
        else:
            n = min(stop, end) - key
            piece = data[key - base : key - base + n]
            if not packed:
                self.target.write(piece, guest + done, aligned=(key - base) % ALIGN == 0)
        if packed:
            if buf is None:
                buf = entry[5] = bytearray(length)
            buf[done : done + n] = piece
        done += n
        entry[0], entry[4] = key + n, done
        if done == length:
            if packed:
                self._inflate(buf, guest, host, runs, idx)
            self.pending -= 1
            entry[3] = idx = idx + 1
            entry[4], entry[5] = 0, None
            if idx < len(runs.host):
                entry[0] = runs.host[idx]
        reached: int = key + n
        return reached

    def _inflate(self, buf: bytearray, guest: int, host: int, runs: _Runs, idx: int) -> None:
        assert self.header is not None
        cs = self.header.cluster_size
        inflater = zlib.decompressobj(-12)  # QEMU writes raw deflate with a 4 KiB window
        try:
            out = inflater.decompress(buf, cs)
        except zlib.error as exc:
            raise _corrupt(f"the compressed cluster for guest offset {guest:#x} does not inflate ({exc})") from exc
        if len(out) != cs:
            raise _corrupt(f"the compressed cluster for guest offset {guest:#x} inflates to {len(out)} bytes")
        tail = len(inflater.unused_data if inflater.eof else inflater.unconsumed_tail)
        nxt = idx + 1
        shared = nxt < len(runs.host) and runs.host[nxt] < host + len(buf)
        if tail and (shared or not self.complete):
            # the last sector may also hold the start of another compressed cluster, perhaps one whose
            # L2 table has not arrived yet: keep those bytes where a late reader finds them
            self._gap(memoryview(buf), host, host + len(buf) - tail, host + len(buf), keep=True)
        self._emit(guest, memoryview(out)[: min(cs, self.header.size - guest)])

    def _emit(self, guest: int, data: memoryview) -> None:
        """Gather decoded data into aligned writes."""
        if self.stage is None:
            self.stage = mmap.mmap(-1, STAGE)
        if self.stage_len and (guest != self.stage_guest + self.stage_len or self.stage_len + len(data) > STAGE):
            self._flush_stage()
        if not self.stage_len:
            self.stage_guest = guest
        self.stage[self.stage_len : self.stage_len + len(data)] = data
        self.stage_len += len(data)

    def _emit_spilled(self, guest: int, host: int, length: int) -> None:
        self._flush_stage()
        if self.stage is None:
            self.stage = mmap.mmap(-1, STAGE)
        with memoryview(self.stage) as view:
            while length:
                n = min(length, STAGE)
                got = os.preadv(self.spill.fileno(), [view[:n]], host) if self.spill is not None else 0
                view[got:n] = bytes(n - got)
                self.target.write(view[:n], guest, aligned=True)
                guest, host, length = guest + n, host + n, length - n

    def _flush_stage(self) -> None:
        if self.stage is not None and self.stage_len:
            with memoryview(self.stage) as view:
                self.target.write(view[: self.stage_len], self.stage_guest, aligned=True)
            self.stage_len = 0

    def _zero(self, guest: int, length: int) -> None:
        if length <= 0:
            return
        if guest != self.zero_end or self.zero_end == self.zero_start:
            self._flush_zero()
            self.zero_start = guest
        self.zero_end = guest + length

    def _flush_zero(self) -> None:
        if self.zero_end > self.zero_start:
            self.target.zero(self.zero_start, self.zero_end - self.zero_start)
        self.zero_start = self.zero_end = 0

    # ---- end ----

    def finish(self) -> int:
        """Check that everything the tables map arrived and write the rest out; return the virtual size."""
        hdr, eof = self.header, self.fed
        if hdr is None:
            raise ImageError(f"the qcow2 image is truncated: {eof} bytes, less than its header cluster")
        if self.l1 is not None:
            raise _corrupt(f"its L1 table at {hdr.l1_offset:#x} lies beyond the end of the file ({eof} bytes)")
        if self.l2_next < len(self.l2_offsets):
            off = self.l2_offsets[self.l2_next]
            raise _corrupt(f"the L2 table at {off:#x} lies beyond the end of the file ({eof} bytes)")
        while self.heap:
            entry = self.heap[0]
            runs, idx = entry[2], entry[3]
            if not runs.packed[idx]:
                raise _corrupt(
                    f"the data for guest offset {runs.guest[idx] + entry[4]:#x} lies beyond the end of the file "
                    f"({eof} bytes)"
                )
            if entry[0] < eof:
                self._take_run_entry(entry, memoryview(b""), eof, eof, spill_below=eof)
            else:  # a compressed cluster's last sector may end past the file: QEMU reads zeros there
                length = runs.length[idx]
                pad = length - entry[4]
                if entry[0] + pad - eof >= SECTOR:  # more than that rounding: the file was cut short
                    raise _corrupt(
                        f"the compressed cluster for guest offset {runs.guest[idx]:#x} lies beyond the end of the "
                        f"file ({eof} bytes)"
                    )
                self._take_run_entry(entry, memoryview(bytes(pad)), entry[0], entry[0] + pad, spill_below=0)
            if entry[3] < len(runs.host):
                heapq.heapreplace(self.heap, entry)
            else:
                heapq.heappop(self.heap)
        self._flush_stage()
        self._flush_zero()
        return hdr.size

    def close(self) -> None:
        """Remove the spill file and free the buffers."""
        if self.spill is not None:
            self.spill.close()
            self.spill = None
        if self.stage is not None:
            self.stage.close()
            self.stage = None
