"""Writing an instance image onto a disk, as Ironic's ``image_info`` describes it.

An image streams from HTTP straight onto the device in three overlapping stages (the calling thread
reads the body into a buffer, a second thread hashes it, a third writes it with ``O_DIRECT``), through
a small fixed pool of page-aligned buffers, so memory stays a few tens of MiB whatever the image size.
A raw image is written as it comes, except that whole MiBs of zeros are zeroed on the device
(BLKZEROOUT) instead of written; a qcow2 image is decoded on the way (``ironworks.agent.qcow2``)
and only its data lands on the disk, the rest of the device up to the image's virtual size is zeroed.
A qcow2 image using a feature the decoder leaves to ``qemu-img`` (zstd compression, subclusters, ...)
is downloaded (and hashed) to a temporary file instead and converted with ``qemu-img`` once its hash
matched.

The hash covers exactly the downloaded bytes and is checked when the download ends. A download that
breaks is retried a bounded number of times, resuming with ``Range`` when the server honours it. If
anything fails after the first byte reached the device (a hash mismatch included), the first and last
MiB are wiped so the disk can never boot a half-written or tampered image.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import mmap
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import IO, Any

from ironworks.agent import devices, qcow2
from ironworks.agent.errors import ChecksumMismatch, ImageError
from ironworks.agent.writer import ALIGN, DeviceWriter

LOG = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]
Sink = Callable[[memoryview, int], None]

CHUNK = 8 << 20  # a multiple of ALIGN: every chunk but a short last one is O_DIRECT-aligned
BUFFERS = 4
assert CHUNK % ALIGN == 0
HASH_ALGOS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
_HEX_LENGTHS = {32: "md5", 40: "sha1", 56: "sha224", 64: "sha256", 96: "sha384", 128: "sha512"}
_CHECKSUM_FILE_LIMIT = 1 << 20
# qemu-img parses an untrusted header; these are the limits Ironic runs `qemu-img info` under.
_QEMU_INFO_LIMITS = ["prlimit", "--as=1073741824", "--cpu=30", "--"]
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class _Transient(Exception):
    """A download problem worth another attempt (connection reset, short body, 5xx)."""


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def parse_checksum_file(text: str, image_name: str) -> str | None:
    """The hash for ``image_name`` in a ``sha256sum``/BSD-style checksum file (or its only hash)."""
    found: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        bsd = re.fullmatch(r"\w+ \((.+)\) = ([0-9a-fA-F]+)", line)
        if bsd:
            found.append((bsd.group(2), bsd.group(1)))
            continue
        parts = line.split(None, 1)
        if parts and re.fullmatch(r"[0-9a-fA-F]{32,128}", parts[0]):
            found.append((parts[0], parts[1].lstrip("*").strip() if len(parts) > 1 else ""))
    for value, name in found:
        if name and os.path.basename(name) == image_name:
            return value.lower()
    return found[0][0].lower() if len(found) == 1 else None


def expected_hash(image_info: dict[str, Any], *, fetch_text: Callable[[str], str] | None = None) -> tuple[str, str]:
    """(algorithm, lowercase hex) the image must hash to: os_hash_* first, then the legacy checksum."""
    algo, value = image_info.get("os_hash_algo"), image_info.get("os_hash_value")
    if algo and value:
        if algo not in HASH_ALGOS:
            raise ImageError(f"image {image_info.get('id')}: unsupported os_hash_algo {algo!r}", algo=algo)
        return str(algo), str(value).strip().lower()
    legacy = image_info.get("checksum") or image_info.get("image_checksum")
    if not legacy:
        raise ImageError(f"image {image_info.get('id')} has no os_hash_value or checksum: refusing to write it")
    legacy = str(legacy).strip()
    if _is_url(legacy):
        text = (fetch_text or _fetch_text)(legacy)
        name = os.path.basename(str(image_info["urls"][0]).split("?")[0])
        found = parse_checksum_file(text, name)
        if found is None:
            raise ImageError(f"checksum file {legacy} has no hash for {name}", url=legacy)
        legacy = found
    algo = _HEX_LENGTHS.get(len(legacy))
    if algo is None or not re.fullmatch(r"[0-9a-fA-F]+", legacy):
        raise ImageError(f"image {image_info.get('id')}: checksum {legacy!r} is not a hex digest")
    return algo, legacy.lower()


def _fetch_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            data: bytes = resp.read(_CHECKSUM_FILE_LIMIT + 1)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise ImageError(f"could not download checksum file {url}: {exc}", url=url) from exc
    if len(data) > _CHECKSUM_FILE_LIMIT:
        raise ImageError(f"checksum file {url} is larger than 1 MiB", url=url)
    return data.decode("utf-8", "replace")


class _Pipeline:
    """Hashes, then writes, chunks on two threads of their own, handing each buffer back once written.

    The reading thread fills a buffer and queues it with the hash object it belongs to; the hashing
    thread feeds it to that hash (``hashlib`` releases the GIL for large updates, so this overlaps the
    socket reads) and passes it on to the writing thread, which hands it back to the pool. Three
    stages run at once and a chunk is never copied. The buffers are anonymous mmaps: page-aligned, as
    ``O_DIRECT`` needs them.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(BUFFERS):
            self.free.put(mmap.mmap(-1, CHUNK))
        self.to_hash: queue.Queue[tuple[Any, mmap.mmap, int, int] | None] = queue.Queue()
        self.to_write: queue.Queue[tuple[mmap.mmap, int, int] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.threads = [
            threading.Thread(target=self._hash, name="image-hasher", daemon=True),
            threading.Thread(target=self._write, name="image-writer", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _hash(self) -> None:
        while (item := self.to_hash.get()) is not None:
            hasher, buf, n, offset = item
            if self.error is None:
                try:
                    with memoryview(buf) as view:
                        hasher.update(view[:n])
                except BaseException as exc:  # re-raised on the reading thread
                    self.error = exc
            self.to_write.put((buf, n, offset))
        self.to_write.put(None)

    def _write(self) -> None:
        while (item := self.to_write.get()) is not None:
            buf, n, offset = item
            if self.error is None:
                try:
                    with memoryview(buf) as view:
                        self.sink(view[:n], offset)
                except BaseException as exc:  # re-raised on the reading thread
                    self.error = exc
            self.free.put(buf)

    def buffer(self) -> mmap.mmap:
        self.check()
        return self.free.get()

    def put(self, hasher: Any, buf: mmap.mmap, n: int, offset: int) -> None:
        self.to_hash.put((hasher, buf, n, offset))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        """Wait until every queued chunk is hashed and written (the pool is full again)."""
        bufs = [self.free.get() for _ in range(BUFFERS)]
        for b in bufs:
            self.free.put(b)
        self.check()

    def close(self) -> None:
        self.to_hash.put(None)
        for thread in self.threads:
            thread.join()


def _fill(resp: http.client.HTTPResponse, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = resp.readinto(view[got:])  # straight from the socket into the buffer: no copy
        if not n:
            break
        got += n
    return got


def _total_from(resp: http.client.HTTPResponse, offset: int) -> int | None:
    if resp.status == 206:
        m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != offset:
            return -1
        return None if m.group(2) == "*" else int(m.group(2))
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch(
    urls: Sequence[str],
    sink: Sink,
    *,
    algo: str,
    progress: Progress,
    attempts: int = 3,
    retry_delay: float = 1.0,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Stream the body of the first URL that works into ``sink``; return (bytes, hex digest)."""
    if not urls:
        raise ImageError("the image has no URL to download it from")
    hasher, offset, errors = hashlib.new(algo), 0, []
    opener = urllib.request.build_opener()
    pipe = _Pipeline(sink)
    try:
        for attempt in range(attempts):
            if attempt:
                time.sleep(retry_delay * attempt)
            url = urls[attempt % len(urls)]
            req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
            try:
                with opener.open(req, timeout=timeout) as resp:
                    total = _total_from(resp, offset)
                    if resp.status != 206 or total == -1:
                        hasher, offset = hashlib.new(algo), 0  # no (usable) resume: start over
                        total = _total_from(resp, 0) if resp.status == 200 else None
                    while True:
                        buf = pipe.buffer()
                        try:
                            # after a resume mid-chunk, a short chunk brings offsets back onto CHUNK
                            # boundaries, so the sink can keep writing aligned blocks (O_DIRECT)
                            with memoryview(buf) as view:
                                n = _fill(resp, view[: CHUNK - offset % CHUNK])
                        except BaseException:
                            pipe.free.put(buf)
                            raise
                        if not n:
                            pipe.free.put(buf)
                            break
                        pipe.put(hasher, buf, n, offset)
                        offset += n
                        progress(offset, total)
                    pipe.drain()
                    if total is not None and offset != total:
                        raise _Transient(f"body ended after {offset} of {total} bytes")
                    return offset, hasher.hexdigest()
            except urllib.error.HTTPError as exc:
                errors.append(f"{url}: HTTP {exc.code} {exc.reason}")
                if exc.code == 416:
                    hasher, offset = hashlib.new(algo), 0
            except (_Transient, urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                pipe.drain()  # what was read so far is on the device: a resume continues after it
                errors.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
    finally:
        pipe.close()
    raise ImageError(f"could not download the image after {attempts} attempts: {'; '.join(errors)}", url=urls[0])


def _write_raw(
    urls: Sequence[str], device: str, algo: str, progress: Progress, mark: Callable[[], None], opts: dict[str, Any]
) -> tuple[int, str]:
    writer = DeviceWriter(device, on_write=mark)
    try:
        written, digest = fetch(urls, writer.write_sparse, algo=algo, progress=progress, **opts)
        writer.sync()
    finally:
        writer.close()
    return written, digest


def qcow2_info(path: str) -> dict[str, Any]:
    """``qemu-img info`` of a downloaded qcow2, refusing backing and external data files."""
    out = devices.run_tool([*_QEMU_INFO_LIMITS, "qemu-img", "info", "--output=json", "-f", "qcow2", path]).stdout
    info: dict[str, Any] = json.loads(out)
    data = info.get("format-specific", {}).get("data", {})
    if info.get("backing-filename") or info.get("full-backing-filename") or data.get("data-file"):
        raise ImageError("the qcow2 image refers to a backing or data file: refusing to read another file")
    return info


def _convert(path: str, device: str, virtual_size: int, progress: Progress) -> None:
    cache = "none" if devices.is_block(device) else "writeback"  # O_DIRECT onto disks, like dd oflag=direct
    argv = ["qemu-img", "convert", "-p", "-n", "-f", "qcow2", "-O", "raw", "-t", cache, "-W", path, device]
    tail = b""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        while block := os.read(proc.stdout.fileno(), 4096):
            tail = (tail + block)[-4000:]
            for m in _PERCENT.finditer(block):
                progress(int(float(m.group(1)) / 100 * virtual_size), virtual_size)
    if proc.wait() != 0:
        msg = tail.decode("utf-8", "replace").replace("\r", "\n").strip()[-1500:]
        raise ImageError(f"qemu-img convert onto {device} failed: {msg}", device=device)


class _Qcow2Sink:
    """Feeds the download to the streaming decoder, or spools it to a file once the decoder declines it."""

    def __init__(self, writer: DeviceWriter, tmp_dir: str | None) -> None:
        self.decoder = qcow2.Decoder(writer, device_size=writer.size, tmp_dir=tmp_dir)
        self.tmp_dir = tmp_dir
        self.spool: IO[bytes] | None = None
        self.declined = ""
        self.failure: ImageError | None = None

    def __call__(self, chunk: memoryview, offset: int) -> None:
        if self.failure is not None:
            return  # the download goes on: its hash tells a damaged download from a damaged image
        if self.spool is None:
            try:
                self.decoder.feed(chunk, offset)
                return
            except qcow2.Unsupported as exc:
                self.declined = str(exc)
                LOG.info("the qcow2 image cannot be streamed (%s): downloading it for qemu-img convert", exc)
                try:
                    self.spool = tempfile.NamedTemporaryFile(dir=self.tmp_dir, prefix="image-", suffix=".qcow2")  # noqa: SIM115
                except OSError as err:  # not a download problem: no retry
                    raise ImageError(f"no temporary file for the qcow2 image for qemu-img: {err}") from err
                self._spool(memoryview(self.decoder.head), 0)  # what the decoder took of it so far
            except ImageError as exc:
                if not (self.decoder.started and exc.context.get("damaged")):
                    raise  # a refused header (nothing written), or the disk or temporary directory failed
                self.failure = exc
                return
        self._spool(chunk, offset)

    def _spool(self, chunk: memoryview, offset: int) -> None:
        assert self.spool is not None
        try:
            os.pwrite(self.spool.fileno(), chunk, offset)
        except OSError as exc:
            where = self.tmp_dir or tempfile.gettempdir()
            raise ImageError(f"could not keep the qcow2 image in {where} for qemu-img: {exc.strerror}") from exc

    def close(self) -> None:
        self.decoder.close()
        if self.spool is not None:
            self.spool.close()


def _write_qcow2(
    urls: Sequence[str],
    device: str,
    algo: str,
    verify: Callable[[str], None],
    progress: Progress,
    mark: Callable[[], None],
    tmp_dir: str | None,
    opts: dict[str, Any],
) -> tuple[int, str, str]:
    writer = DeviceWriter(device, on_write=mark)
    sink = _Qcow2Sink(writer, tmp_dir)
    try:
        try:
            _, digest = fetch(urls, sink, algo=algo, progress=progress, **opts)
            verify(digest)
            if sink.failure is not None:
                raise sink.failure
            if sink.spool is None:
                virtual = sink.decoder.finish()
                writer.sync()
                return virtual, digest, "stream"
        finally:
            writer.close()  # qemu-img opens the device itself
        info = qcow2_info(sink.spool.name)
        virtual = int(info["virtual-size"])
        if virtual > devices.device_size(device):
            raise ImageError(f"the image ({virtual} bytes) does not fit on {device}", device=device)
        mark()
        _convert(sink.spool.name, device, virtual, progress)
    finally:
        sink.close()
    return virtual, digest, f"qemu-img convert ({sink.declined})"


def write_image(
    image_info: dict[str, Any],
    device: str,
    *,
    progress: Progress,
    allowlist: list[str] | None = None,
    tmp_dir: str | None = None,
    attempts: int = 3,
    retry_delay: float = 1.0,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Write the image onto ``device`` and verify its hash; return bytes written, digest, seconds, method.

    ``progress(done, total)`` is called per chunk downloaded, against the image file's size (and, for
    a qcow2 that ``qemu-img`` converts, per percent converted, against the virtual size). On any
    failure after writing began, the device's first and last MiB are zeroed; a hash mismatch raises
    ChecksumMismatch. ``bytes_written`` is the virtual size for qcow2; ``method`` says how it was
    written (``stream``, or ``qemu-img convert (<why>)``).
    """
    devices.check_allowed(device, allowlist)
    started = time.monotonic()
    fmt = image_info.get("disk_format") or "raw"
    if fmt not in ("raw", "qcow2"):
        raise ImageError(f"image {image_info.get('id')}: disk_format {fmt!r} is not supported (raw, qcow2)")
    algo, expected = expected_hash(image_info)
    urls = [str(u) for u in image_info.get("urls") or []]
    opts: dict[str, Any] = {"attempts": attempts, "retry_delay": retry_delay, "timeout": timeout}
    wrote: list[bool] = []

    def mark() -> None:
        if not wrote:
            wrote.append(True)

    def verify(digest: str) -> None:
        if digest != expected:
            raise ChecksumMismatch(
                f"image {image_info.get('id')} hashes to {algo} {digest}, expected {expected}: {device} was wiped",
                device=device,
            )

    try:
        if fmt == "raw":
            written, digest = _write_raw(urls, device, algo, progress, mark, opts)
            verify(digest)
            method = "stream"
        else:
            written, digest, method = _write_qcow2(urls, device, algo, verify, progress, mark, tmp_dir, opts)
    except BaseException as exc:
        # a mismatch wipes even an untouched disk: it must not look deployed with an older image either
        if wrote or isinstance(exc, ChecksumMismatch):
            devices.wipe_head_tail(device, allowlist=allowlist)
        raise
    seconds = round(time.monotonic() - started, 3)
    return {"bytes_written": written, algo: digest, "seconds": seconds, "method": method}
