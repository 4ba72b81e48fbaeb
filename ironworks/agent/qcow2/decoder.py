"""The decoder: tables learned and data placed as the file's bytes go by (see the package docstring)."""

from __future__ import annotations

import heapq
import itertools
import mmap
import struct
import zlib
from array import array
from bisect import bisect_right
from typing import Any, Protocol

from ironworks.agent.errors import ImageError
from ironworks.agent.qcow2.header import OFFSET_MASK, SECTOR, Header, corrupt, header_bytes, parse_header
from ironworks.agent.qcow2.spill import Spill

ALIGN = 4096
MAX_PENDING = 8 << 20  # mapped clusters still waiting for their bytes (~25 bytes each): bounds memory
STAGE = 8 << 20  # decompressed or spilled data is gathered into aligned writes of up to this size
_COMPRESSED = 1 << 62
_ZERO = 1


class Target(Protocol):
    """Where decoded guest bytes go."""

    def write(self, data: memoryview, offset: int, *, aligned: bool) -> None:
        """Write ``data`` at guest ``offset``; ``aligned`` when its memory starts on a page."""

    def zero(self, offset: int, length: int) -> None:
        """Make ``length`` bytes at guest ``offset`` read back as zeros."""


class _Runs:
    """The data an L2 table maps, in host order: runs of contiguous clusters, or one compressed cluster."""

    __slots__ = ("guest", "host", "length", "packed")

    def __init__(self) -> None:
        self.host, self.guest, self.length = array("Q"), array("Q"), array("Q")
        self.packed = array("B")  # 1: a compressed cluster


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
        self.spill = Spill(tmp_dir)
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
        self.spill.keep(data[start - base : end - base], start)

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
        for i, (entry,) in enumerate(struct.iter_unpack(">Q", self.l1)):
            off = entry & OFFSET_MASK
            if not off:
                self._zero(i * span, min(span, hdr.size - i * span))
            elif off % cs:
                raise corrupt(f"L1 entry {i} points to an L2 table at the unaligned offset {off:#x}")
            elif off < cs or hdr.l1_offset - cs < off < hdr.l1_offset + len(self.l1):
                raise corrupt(f"L1 entry {i} points to an L2 table at {off:#x}, inside the header or the L1 table")
            else:
                tables.append((off, i))
        tables.sort()
        for (a, _), (b, _) in itertools.pairwise(tables):
            if b - a < cs:
                raise corrupt(f"two L1 entries point to the same L2 table at {a:#x}")
        self.l1 = None
        self.l2_offsets = array("Q", (t[0] for t in tables))
        self.l2_index = array("Q", (t[1] for t in tables))
        while self.l2_next < len(self.l2_offsets) and self.l2_offsets[self.l2_next] < cursor:
            # this L2 table passed before the L1 table did: it is in the spill file
            table = self.spill.read(self.l2_offsets[self.l2_next], cs, exclusive=True)
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
            off = entry & OFFSET_MASK
            if entry & _ZERO or not off:
                self._zero(guest, min(cs, size - guest))
                continue
            if off % cs:
                raise corrupt(f"the cluster at guest offset {guest:#x} has the unaligned host offset {off:#x}")
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
            raise corrupt(f"the data for guest offset {guest:#x} lies in the header or an L2 table ({off:#x})")
        if off < l1_end and off + length > hdr.l1_offset:
            raise corrupt(f"the data for guest offset {guest:#x} lies in the L1 table ({off:#x})")

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
                raise corrupt(f"host bytes at {runs.host[k + 1]:#x} are mapped twice")
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
                piece: memoryview | bytes = self.spill.read(key, n, exclusive=False)
            else:
                self.spill.require(key, key + n)
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
            raise corrupt(f"the compressed cluster for guest offset {guest:#x} does not inflate ({exc})") from exc
        if len(out) != cs:
            raise corrupt(f"the compressed cluster for guest offset {guest:#x} inflates to {len(out)} bytes")
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
                self.spill.read_into(view[:n], host)
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
            raise corrupt(f"its L1 table at {hdr.l1_offset:#x} lies beyond the end of the file ({eof} bytes)")
        if self.l2_next < len(self.l2_offsets):
            off = self.l2_offsets[self.l2_next]
            raise corrupt(f"the L2 table at {off:#x} lies beyond the end of the file ({eof} bytes)")
        while self.heap:
            entry = self.heap[0]
            runs, idx = entry[2], entry[3]
            if not runs.packed[idx]:
                raise corrupt(
                    f"the data for guest offset {runs.guest[idx] + entry[4]:#x} lies beyond the end of the file "
                    f"({eof} bytes)"
                )
            if entry[0] < eof:
                self._take_run_entry(entry, memoryview(b""), eof, eof, spill_below=eof)
            else:  # a compressed cluster's last sector may end past the file: QEMU reads zeros there
                length = runs.length[idx]
                pad = length - entry[4]
                if entry[0] + pad - eof >= SECTOR:  # more than that rounding: the file was cut short
                    raise corrupt(
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
        self.spill.close()
        if self.stage is not None:
            self.stage.close()
            self.stage = None
