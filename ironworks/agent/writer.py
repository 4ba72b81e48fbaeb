"""Writing an image onto a disk: page-aligned blocks with ``O_DIRECT``, the rest through the page cache,
and ranges that must read back as zeros by the cheapest means the target offers.

``O_DIRECT`` writes (like ``dd oflag=direct``) fill no page cache and leave no writeback storm for the
final fsync. They need the memory, the offset and the length aligned to the logical block size; a
write that is not (clusters smaller than 4 KiB, a short tail) goes through an ordinary descriptor of
the same device, and the kernel keeps the two coherent.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
from collections.abc import Callable

from ironworks.agent import devices
from ironworks.agent.errors import ImageError

ALIGN = 4096  # O_DIRECT alignment of offsets, lengths and memory: the largest logical block size
BLKZEROOUT = 0x127F  # _IO(0x12, 127): the kernel zeroes a range (WRITE ZEROES, or it writes zero pages)
_FALLOC_PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01
_ZERO_CHUNK = 8 << 20
#: raw images are checked for all-zero runs at this granularity; such runs are zeroed, not written
ZERO_GRAIN = 1 << 20
_ZERO_GRAIN_BYTES = bytes(ZERO_GRAIN)
# an ioctl or fallocate the device or file system does not offer: write zeros instead
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS})


def _open_target(device: str) -> int:
    # O_EXCL on a block device fails with EBUSY while it (or a partition) is mounted.
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_EXCL if devices.is_block(device) else 0)
    try:
        return os.open(device, flags)
    except OSError as exc:
        raise ImageError(f"cannot open {device} for writing: {exc.strerror}", device=device) from exc


def _open_direct(device: str) -> int | None:
    """A second, ``O_DIRECT`` descriptor (None where the file system refuses it, e.g. tmpfs).

    Opened after the ``O_EXCL`` one, without ``O_EXCL``: the exclusive claim is already ours.
    """
    try:
        return os.open(device, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError:
        return None


def _pwrite_all(fd: int, data: memoryview, offset: int) -> int:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
    return done


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """fallocate(PUNCH_HOLE | KEEP_SIZE) on a regular file; False where the file system cannot."""
    try:
        import ctypes  # only regular files (tests, images on a file system) need it

        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    except (ImportError, OSError, AttributeError):
        return False
    if fallocate(fd, _FALLOC_PUNCH_HOLE_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err))


class DeviceWriter:
    """An open device (or file) an image is written onto; ``on_write`` runs before every change."""

    def __init__(self, device: str, *, on_write: Callable[[], None]) -> None:
        self.device = device
        self.size = devices.device_size(device)
        self.block = devices.is_block(device)
        self.on_write = on_write
        self.fd = _open_target(device)
        self.direct = _open_direct(device)
        self._zeros: mmap.mmap | None = None

    def _check(self, offset: int, length: int) -> None:
        if offset + length > self.size:
            raise ImageError(f"the image is larger than {self.device} ({self.size} bytes)", device=self.device)

    def write(self, data: memoryview, offset: int, *, aligned: bool = True) -> None:
        """Write ``data`` at ``offset``; ``aligned`` says the memory of ``data`` starts on a page."""
        self.on_write()
        self._check(offset, len(data))
        try:
            done = 0
            dfd = self.direct
            if dfd is not None and aligned and offset % ALIGN == 0 and len(data) >= ALIGN:
                whole = len(data) - len(data) % ALIGN
                try:
                    done = _pwrite_all(dfd, data[:whole], offset)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self.direct = None  # this file system takes no O_DIRECT writes after all
                    os.close(dfd)
            if done < len(data):
                _pwrite_all(self.fd, data[done:], offset + done)
        except OSError as exc:
            raise ImageError(f"writing to {self.device} failed: {exc.strerror}", device=self.device) from exc

    def write_sparse(self, data: memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` like ``write``, but zero (``zero``) its whole all-zero MiBs.

        Most raw images are mostly zeros (a small file system in a large disk image). BLKZEROOUT
        lets the device (or, on a virtual disk, the hypervisor) make a range read back as zeros
        without moving the bytes, where it can; where it cannot, the kernel writes zero pages, which
        costs what writing them would have. Either way the range reads back as zeros: nothing that was
        on the disk before shows through. Checking a MiB costs one copy and one ``memcmp``; a MiB
        whose first or last byte is not zero (almost all data) is not copied at all.
        """
        n = len(data)
        start = 0  # beginning of the run not yet handled
        zero_from = -1  # beginning of the current run of zero grains, or -1
        pos = 0
        while pos + ZERO_GRAIN <= n:
            block = data[pos : pos + ZERO_GRAIN]
            is_zero = block[0] == 0 and block[-1] == 0 and bytes(block) == _ZERO_GRAIN_BYTES
            if is_zero and zero_from < 0:
                if pos > start:
                    self.write(data[start:pos], offset + start)
                zero_from = pos
            elif not is_zero and zero_from >= 0:
                self.zero(offset + zero_from, pos - zero_from)
                zero_from, start = -1, pos
            pos += ZERO_GRAIN
        if zero_from >= 0:
            self.zero(offset + zero_from, pos - zero_from)
            start = pos
        if start < n:
            self.write(data[start:], offset + start)

    def zero(self, offset: int, length: int) -> None:
        """Make ``length`` bytes at ``offset`` read back as zeros: BLKZEROOUT, a punched hole, or zeros."""
        if length <= 0:
            return
        self.on_write()
        self._check(offset, length)
        try:
            if self.block:
                try:
                    fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("=QQ", offset, length))
                    return
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
            elif _punch_hole(self.fd, offset, length):
                return
            self._write_zeros(offset, length)
        except OSError as exc:
            raise ImageError(
                f"zeroing {length} bytes of {self.device} failed: {exc.strerror}", device=self.device
            ) from exc

    def _write_zeros(self, offset: int, length: int) -> None:
        if self._zeros is None:
            self._zeros = mmap.mmap(-1, _ZERO_CHUNK)  # page-aligned zeros, for O_DIRECT
        with memoryview(self._zeros) as zeros:
            end = offset + length
            while offset < end:
                n = min(_ZERO_CHUNK, end - offset)
                self.write(zeros[:n], offset)
                offset += n

    def sync(self) -> None:
        """Flush everything written to the device."""
        try:
            if self.direct is not None:
                os.fsync(self.direct)
            os.fsync(self.fd)
        except OSError as exc:
            raise ImageError(f"flushing {self.device} failed: {exc.strerror}", device=self.device) from exc

    def close(self) -> None:
        """Close both descriptors."""
        if self.direct is not None:
            os.close(self.direct)
            self.direct = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._zeros is not None:
            self._zeros.close()
            self._zeros = None
