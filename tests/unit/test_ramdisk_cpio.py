"""The reproducible cpio writer: member order, fixed metadata, the same bytes for the same entries."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest

from ironworks.ramdisk import cpio
from ironworks.ramdisk.cpio import CpioEntry


def _entries(tmp_path: Path) -> list[CpioEntry]:
    src = tmp_path / "big"
    src.write_bytes(b"x" * 5)
    return [
        CpioEntry("usr/bin/sh", stat.S_IFLNK | 0o777, data=b"busybox"),
        CpioEntry("usr-local", stat.S_IFDIR | 0o755),
        CpioEntry("usr", stat.S_IFDIR | 0o755),
        CpioEntry("usr/bin", stat.S_IFDIR | 0o755),
        CpioEntry("usr/bin/busybox", stat.S_IFREG | 0o755, source=src),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev_major=5, rdev_minor=1),
        CpioEntry("dev", stat.S_IFDIR | 0o755),
        CpioEntry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n"),
    ]


def _archive(entries: list[CpioEntry], mtime: int = 1700000000) -> bytes:
    buf = io.BytesIO()
    cpio.write(entries, buf, mtime=mtime)
    return buf.getvalue()


def test_a_directory_comes_before_its_contents_and_after_its_prefix_siblings(tmp_path: Path) -> None:
    names = cpio.read_names(_archive(_entries(tmp_path)))
    assert names == ["dev", "dev/console", "init", "usr", "usr/bin", "usr/bin/busybox", "usr/bin/sh", "usr-local"]


def test_input_order_does_not_change_the_bytes(tmp_path: Path) -> None:
    entries = _entries(tmp_path)
    assert _archive(entries) == _archive(list(reversed(entries)))
    assert _archive(entries) != _archive(entries, mtime=1)  # the epoch is in every header


def test_headers_carry_owner_zero_the_epoch_and_device_numbers(tmp_path: Path) -> None:
    data = _archive(_entries(tmp_path))
    pos = data.index(b"dev/console") - 110
    fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
    ino, mode, uid, gid, _nlink, mtime, size, _dmaj, _dmin, rmaj, rmin = fields[:11]
    assert ino == 2 and stat.S_ISCHR(mode) and (uid, gid, mtime, size, rmaj, rmin) == (0, 0, 1700000000, 0, 5, 1)
    assert len(data) % 4 == 0 and b"TRAILER!!!" in data[-128:]


def test_paths_that_escape_or_repeat_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="relative"):
        _archive([CpioEntry("/etc/passwd", stat.S_IFREG | 0o644)])
    with pytest.raises(ValueError, match="relative"):
        _archive([CpioEntry("a/../../etc", stat.S_IFREG | 0o644)])
    with pytest.raises(ValueError, match="duplicate"):
        _archive([CpioEntry("init", stat.S_IFREG | 0o755), CpioEntry("init", stat.S_IFREG | 0o755)])
