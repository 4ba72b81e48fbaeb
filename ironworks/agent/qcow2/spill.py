"""The spill file: bytes that passed before the table that maps them, kept at their host offsets."""

from __future__ import annotations

import os
import tempfile
from bisect import bisect_left, bisect_right
from typing import IO

from ironworks.agent.errors import ImageError
from ironworks.agent.qcow2.header import corrupt


class Spill:
    """A sparse temporary file (created on first use, so never larger than the image) and the host ranges in it."""

    def __init__(self, tmp_dir: str | None) -> None:
        self.tmp_dir = tmp_dir
        self.file: IO[bytes] | None = None
        self.starts: list[int] = []  # merged ranges: they arrive almost always in order
        self.ends: list[int] = []

    def keep(self, data: memoryview, start: int) -> None:
        """Write ``data``, the file's bytes at ``start``."""
        try:
            if self.file is None:
                self.file = tempfile.TemporaryFile(dir=self.tmp_dir, prefix="qcow2-spill-")  # noqa: SIM115 (close())
            os.pwrite(self.file.fileno(), data, start)
        except OSError as exc:
            where = self.tmp_dir or tempfile.gettempdir()
            raise ImageError(f"keeping qcow2 data in a temporary file in {where} failed: {exc.strerror}") from exc
        self._add(start, start + len(data))

    def _add(self, start: int, end: int) -> None:
        if not self.ends or self.ends[-1] <= start:  # the usual case: after everything kept so far
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
        """True when every byte of ``start..end`` was kept."""
        i = bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end

    def require(self, start: int, end: int) -> None:
        """Raise unless every byte of ``start..end`` was kept (else something else already took them)."""
        if end > start and not self.covers(start, end):
            raise corrupt(f"host bytes {start:#x}..{end:#x} are used twice (overlapping tables or data)")

    def read(self, start: int, length: int, *, exclusive: bool) -> bytes:
        """The kept bytes at ``start`` (zeros where nothing was kept, unless ``exclusive`` demands them all)."""
        if exclusive:
            self.require(start, start + length)
        if self.file is None:
            return bytes(length)
        data = os.pread(self.file.fileno(), length, start)
        return data + bytes(length - len(data))

    def read_into(self, view: memoryview, start: int) -> None:
        """Fill ``view`` with the kept bytes at ``start`` (zeros past the end)."""
        got = os.preadv(self.file.fileno(), [view], start) if self.file is not None else 0
        view[got:] = bytes(len(view) - got)

    def close(self) -> None:
        """Remove the file."""
        if self.file is not None:
            self.file.close()
            self.file = None
