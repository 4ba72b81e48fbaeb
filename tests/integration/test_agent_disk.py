"""The agent's disk work for real, on loop devices and files this test creates (root needed):
image writes served over loopback HTTP, config drives, erasing, burn-in.

Every destructive call passes an allowlist naming only this test's devices.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ironworks.agent import burnin, configdrive, devices, erase, image, writer
from ironworks.agent.errors import AgentError, ChecksumMismatch, DeviceNotAllowed, ImageError

MIB = 1 << 20


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files of ``root`` with Range support; ``/flaky/NAME`` breaks the first response half-way."""

    root: Path
    broken: set[str]
    ranges_seen: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.removeprefix("/flaky/").lstrip("/")
        path = self.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            self.ranges_seen.append(rng)
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = memoryview(data)[start:]
        if self.path.startswith("/flaky/") and self.path not in self.broken:
            self.broken.add(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path, _Handler]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = type("H", (_Handler,), {"root": root, "broken": set(), "ranges_seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, handler  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def make_loop(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Loop devices over sparse files in tmp_path, detached at teardown whatever happens."""
    if os.geteuid() != 0:  # a failure, not a skip: CI runs this tier as root
        pytest.fail("loop devices need root")
    made: list[str] = []

    def make(size_mib: int) -> str:
        backing = tmp_path / f"disk{len(made)}.img"
        with open(backing, "wb") as f:
            f.truncate(size_mib * MIB)
        dev = subprocess.run(
            ["losetup", "--find", "--show", "-P", str(backing)], capture_output=True, text=True, check=True
        ).stdout.strip()
        made.append(dev)
        return dev

    try:
        yield make
    finally:
        for dev in made:
            subprocess.run(["losetup", "-d", dev], check=False)


def _read(dev: str, length: int, offset: int = 0) -> bytes:
    with open(dev, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _random(size: int) -> bytes:
    return os.urandom(size)


# ---- image ----


def test_raw_image_written_byte_for_byte(make_loop: Callable[[int], str], http_root: Any) -> None:
    url, root, _ = http_root
    dev = make_loop(64)
    data = _random(20 * MIB + 12345)
    (root / "disk.raw").write_bytes(data)
    calls: list[tuple[int, int | None]] = []
    info = {
        "id": "img",
        "urls": [f"{url}/disk.raw"],
        "disk_format": "raw",
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
    }
    result = image.write_image(info, dev, progress=lambda d, t: calls.append((d, t)), allowlist=[dev])
    assert result["bytes_written"] == len(data)
    assert result["sha512"] == hashlib.sha512(data).hexdigest()
    assert _read(dev, len(data)) == data
    assert calls[-1] == (len(data), len(data))


def test_raw_image_zero_ranges_read_back_as_zeros_over_old_data(
    make_loop: Callable[[int], str], http_root: Any
) -> None:
    """Whole MiBs of zeros are zeroed (BLKZEROOUT), not written: what the disk held before must not show."""
    url, root, _ = http_root
    dev = make_loop(64)
    with open(dev, "r+b") as f:  # an earlier tenant's data everywhere
        f.write(b"\xa5" * (40 * MIB))
        os.fsync(f.fileno())
    zeros = bytes(MIB)
    # data, zeros across a chunk boundary, data ending with a zero byte, 1 MiB + a few zeros, an odd tail
    data = (
        _random(3 * MIB)
        + zeros * 9
        + _random(MIB - 1)
        + b"\0"
        + zeros
        + bytes(100)
        + _random(5 * MIB)
        + zeros * 4
        + bytes(4321)
    )
    (root / "sparse.raw").write_bytes(data)
    info = {
        "id": "img",
        "urls": [f"{url}/sparse.raw"],
        "disk_format": "raw",
        "os_hash_algo": "sha256",
        "os_hash_value": hashlib.sha256(data).hexdigest(),
    }
    result = image.write_image(info, dev, progress=lambda d, t: None, allowlist=[dev])
    assert result["bytes_written"] == len(data)
    assert _read(dev, len(data)) == data
    assert _read(dev, MIB, len(data)) == b"\xa5" * MIB  # nothing past the image was touched


def test_raw_download_resumes_with_range_after_a_broken_connection(
    make_loop: Callable[[int], str], http_root: Any
) -> None:
    url, root, handler = http_root
    dev = make_loop(64)
    data = _random(16 * MIB)
    (root / "disk.raw").write_bytes(data)
    info = {
        "id": "img",
        "urls": [f"{url}/flaky/disk.raw"],
        "disk_format": "raw",
        "checksum": hashlib.md5(data).hexdigest(),
    }
    result = image.write_image(info, dev, progress=lambda d, t: None, allowlist=[dev], retry_delay=0)
    assert result["md5"] == hashlib.md5(data).hexdigest()
    assert handler.ranges_seen and handler.ranges_seen[0] != "bytes=0-"
    assert _read(dev, len(data)) == data


def test_checksum_url_is_followed(make_loop: Callable[[int], str], http_root: Any) -> None:
    url, root, _ = http_root
    dev = make_loop(32)
    data = _random(3 * MIB)
    (root / "disk.raw").write_bytes(data)
    (root / "SHA256SUMS").write_text(f"{'0' * 64}  other.raw\n{hashlib.sha256(data).hexdigest()}  disk.raw\n")
    info = {"id": "i", "urls": [f"{url}/disk.raw"], "disk_format": "raw", "checksum": f"{url}/SHA256SUMS"}
    assert image.write_image(info, dev, progress=lambda d, t: None, allowlist=[dev])["bytes_written"] == len(data)


def _qcow2(tmp_path: Path, root: Path, data: bytes, name: str = "d.qcow2", *options: str) -> bytes:
    """``data`` as a qcow2 file served as ``name``; its bytes."""
    src = tmp_path / f"{name}.raw"
    src.write_bytes(data)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *options, src, root / name], check=True)
    return (root / name).read_bytes()


def _qcow2_info(url: str, name: str, qcow: bytes) -> dict[str, Any]:
    return {"id": "q", "urls": [f"{url}/{name}"], "disk_format": "qcow2", "os_hash_algo": "sha256",
            "os_hash_value": hashlib.sha256(qcow).hexdigest()}  # fmt: skip


def test_qcow2_image_streamed_onto_the_device(make_loop: Callable[[int], str], http_root: Any, tmp_path: Path) -> None:
    url, root, _ = http_root
    dev = make_loop(64)
    with open(dev, "wb") as f:  # old content where the image has holes must become zeros
        f.write(b"\xff" * 64 * MIB)
    data = _random(8 * MIB) + bytes(16 * MIB) + _random(MIB)
    qcow = _qcow2(tmp_path, root, data)
    seen: list[tuple[int, int | None]] = []
    spool = tmp_path / "spool"
    spool.mkdir()
    result = image.write_image(
        _qcow2_info(url, "d.qcow2", qcow), dev, progress=lambda d, t: seen.append((d, t)), allowlist=[dev],
        tmp_dir=str(spool),
    )  # fmt: skip
    assert result["bytes_written"] == len(data) and result["method"] == "stream"
    assert _read(dev, len(data)) == data
    assert _read(dev, 64 * MIB - len(data), len(data)) == b"\xff" * (64 * MIB - len(data))  # -n: beyond is kept
    assert seen[-1] == (len(qcow), len(qcow))  # progress counts the downloaded file
    assert not list(spool.iterdir())


def test_qcow2_with_its_l1_table_at_the_end_streams_through_the_spill_file(
    make_loop: Callable[[int], str], http_root: Any, tmp_path: Path
) -> None:
    url, root, _ = http_root
    dev = make_loop(80)
    qcow_path = root / "r.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow_path, "16M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 7 1M 5M", "-c", "write -P 8 12M 64k", qcow_path], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["qemu-img", "resize", "-q", qcow_path, "64M"], check=True)  # moves the L1 table to the end
    subprocess.run(["qemu-io", "-c", "write -P 9 60M 1M", qcow_path], check=True, capture_output=True)
    expected = tmp_path / "expected.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", qcow_path, expected], check=True)
    spool = tmp_path / "spool"
    spool.mkdir()
    qcow = qcow_path.read_bytes()
    result = image.write_image(_qcow2_info(url, "r.qcow2", qcow), dev, progress=lambda d, t: None, allowlist=[dev],
                               tmp_dir=str(spool))  # fmt: skip
    assert result["method"] == "stream"
    assert _read(dev, 64 * MIB) == expected.read_bytes()
    assert not list(spool.iterdir())


def test_compressed_qcow2_download_resumes_after_a_broken_connection(
    make_loop: Callable[[int], str], http_root: Any, tmp_path: Path
) -> None:
    url, root, handler = http_root
    dev = make_loop(64)
    data = _random(4 * MIB) + b"an easily compressed line\n" * 400_000
    qcow = _qcow2(tmp_path, root, data, "c.qcow2", "-c")
    info = _qcow2_info(f"{url}/flaky", "c.qcow2", qcow)
    result = image.write_image(info, dev, progress=lambda d, t: None, allowlist=[dev], retry_delay=0)
    assert result["method"] == "stream"
    assert handler.ranges_seen and handler.ranges_seen[0] != "bytes=0-"
    assert _read(dev, len(data)) == data


def test_zstd_qcow2_falls_back_to_qemu_img(make_loop: Callable[[int], str], http_root: Any, tmp_path: Path) -> None:
    url, root, _ = http_root
    dev = make_loop(64)
    with open(dev, "wb") as f:
        f.write(b"\xff" * 32 * MIB)
    data = _random(3 * MIB) + bytes(10 * MIB) + (b"zstd " * 420_000)[: 2 * MIB]
    qcow = _qcow2(tmp_path, root, data, "z.qcow2", "-c", "-o", "compression_type=zstd")
    seen: list[tuple[int, int | None]] = []
    result = image.write_image(_qcow2_info(url, "z.qcow2", qcow), dev, progress=lambda d, t: seen.append((d, t)),
                               allowlist=[dev], tmp_dir=str(tmp_path))  # fmt: skip
    assert result["method"] == "qemu-img convert (compression type 1 (not zlib))"
    assert result["bytes_written"] == len(data)
    assert _read(dev, len(data)) == data
    assert (len(data), len(data)) in seen  # qemu-img's progress, against the virtual size
    assert not list(tmp_path.glob("image-*"))


def test_qcow2_larger_than_the_device_is_refused_untouched(
    make_loop: Callable[[int], str], http_root: Any, tmp_path: Path
) -> None:
    url, root, _ = http_root
    dev = make_loop(16)
    with open(dev, "wb") as f:
        f.write(b"\x5a" * 16 * MIB)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", root / "big.qcow2", "17M"], check=True)
    qcow = (root / "big.qcow2").read_bytes()
    with pytest.raises(ImageError, match="does not fit"):
        image.write_image(_qcow2_info(url, "big.qcow2", qcow), dev, progress=lambda d, t: None, allowlist=[dev])
    assert _read(dev, 16 * MIB) == b"\x5a" * 16 * MIB


def test_corrupt_qcow2_with_a_matching_hash_fails_and_wipes(
    make_loop: Callable[[int], str], http_root: Any, tmp_path: Path
) -> None:
    url, root, _ = http_root
    dev = make_loop(32)
    qcow = bytearray(_qcow2(tmp_path, root, _random(6 * MIB)))
    l1 = int.from_bytes(qcow[40:48], "big")
    l2 = int.from_bytes(qcow[l1 : l1 + 8], "big") & 0x00FFFFFFFFFFFE00
    qcow[l2 + 8 * 50 : l2 + 8 * 51] = (1 << 63 | 1 << 40).to_bytes(8, "big")  # cluster 50 far past the end
    (root / "bad.qcow2").write_bytes(qcow)
    with pytest.raises(ImageError, match="beyond the end of the file") as err:
        image.write_image(_qcow2_info(url, "bad.qcow2", bytes(qcow)), dev, progress=lambda d, t: None,
                          allowlist=[dev])  # fmt: skip
    assert not isinstance(err.value, ChecksumMismatch)
    assert _read(dev, MIB) == bytes(MIB) and _read(dev, MIB, 31 * MIB) == bytes(MIB)


def test_damaged_qcow2_download_is_a_checksum_mismatch(
    make_loop: Callable[[int], str], http_root: Any, tmp_path: Path
) -> None:
    """A table damaged on the way makes the decoder fail, but the hash says what happened."""
    url, root, _ = http_root
    dev = make_loop(32)
    qcow = _qcow2(tmp_path, root, _random(6 * MIB))
    damaged = bytearray(qcow)
    l1 = int.from_bytes(damaged[40:48], "big")
    damaged[l1 : l1 + 8] = (1 << 63 | 65536 + 512).to_bytes(8, "big")  # an unaligned L2 table: fails mid-stream
    (root / "d.qcow2").write_bytes(damaged)
    with pytest.raises(ChecksumMismatch):
        image.write_image(_qcow2_info(url, "d.qcow2", qcow), dev, progress=lambda d, t: None, allowlist=[dev])
    assert _read(dev, MIB) == bytes(MIB)


@pytest.mark.parametrize("punch", [True, False], ids=["punched-holes", "zeros-written"])
def test_qcow2_streamed_onto_a_regular_file(
    punch: bool, http_root: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, root, _ = http_root
    if not punch:  # a file system without hole punching: the zeros are written instead
        monkeypatch.setattr(writer, "_punch_hole", lambda fd, offset, length: False)
    target = tmp_path / "target.img"
    target.write_bytes(b"\xff" * 40 * MIB)
    data = bytes(5 * MIB) + _random(3 * MIB) + bytes(20 * MIB) + _random(MIB + 512)
    qcow = _qcow2(tmp_path, root, data)
    result = image.write_image(_qcow2_info(url, "d.qcow2", qcow), str(target), progress=lambda d, t: None,
                               allowlist=[str(target)])  # fmt: skip
    assert result["method"] == "stream"
    content = target.read_bytes()
    assert len(content) == 40 * MIB  # the file keeps its size
    assert content[: len(data)] == data and content[len(data) :] == b"\xff" * (40 * MIB - len(data))
    allocated = os.stat(target).st_blocks * 512
    assert (allocated < 30 * MIB) if punch else (allocated >= 40 * MIB)


def test_streamed_qcow2_then_a_configdrive(make_loop: Callable[[int], str], http_root: Any, tmp_path: Path) -> None:
    url, root, _ = http_root
    dev = make_loop(256)
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(96 * MIB)
    subprocess.run(["sfdisk", "-q", disk], input="label: gpt\nstart=2048, size=40MiB\n", text=True, check=True)
    payload = _random(3 * MIB)
    with open(disk, "r+b") as f:
        f.seek(MIB + 5 * MIB)
        f.write(payload)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, root / "os.qcow2"], check=True)
    qcow = (root / "os.qcow2").read_bytes()
    result = image.write_image(_qcow2_info(url, "os.qcow2", qcow), dev, progress=lambda d, t: None, allowlist=[dev])
    assert result["method"] == "stream"
    devices.reread_partitions(dev)
    part = configdrive.write_configdrive(dev, _configdrive(tmp_path, b'{"uuid": "q1"}'), allowlist=[dev])
    assert part == f"{dev}p2" and _label(part) == "config-2"
    assert _read(dev, len(payload), 6 * MIB) == payload  # the image's partition is intact
    assert _read(f"{dev}p1", len(payload), 5 * MIB) == payload


def test_qcow2_with_a_backing_file_is_refused(make_loop: Callable[[int], str], http_root: Any, tmp_path: Path) -> None:
    url, root, _ = http_root
    dev = make_loop(32)
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"host secret" * 1000)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", secret, root / "b.qcow2"], check=True,
                   capture_output=True)  # fmt: skip
    qcow = (root / "b.qcow2").read_bytes()
    info = {"id": "b", "urls": [f"{url}/b.qcow2"], "disk_format": "qcow2", "checksum": hashlib.sha256(qcow).hexdigest()}
    with pytest.raises(ImageError, match="backing"):
        image.write_image(info, dev, progress=lambda d, t: None, allowlist=[dev], tmp_dir=str(tmp_path))
    assert b"host secret" not in _read(dev, MIB)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_checksum_mismatch_wipes_the_device(
    fmt: str, make_loop: Callable[[int], str], http_root: Any, tmp_path: Path
) -> None:
    url, root, _ = http_root
    dev = make_loop(32)
    with open(dev, "r+b") as f:  # an earlier deployment: a partition table at both ends
        f.write(b"\xaa" * MIB)
        f.seek(31 * MIB)
        f.write(b"\xbb" * MIB)
    data = _random(4 * MIB)
    (root / "d.raw").write_bytes(data)
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", "-f", "raw", root / "d.raw", root / "d.img"], check=True)
    else:
        shutil.copy(root / "d.raw", root / "d.img")
    info = {
        "id": "x",
        "urls": [f"{url}/d.img"],
        "disk_format": fmt,
        "os_hash_algo": "sha256",
        "os_hash_value": "0" * 64,
    }
    with pytest.raises(ChecksumMismatch) as err:
        image.write_image(info, dev, progress=lambda d, t: None, allowlist=[dev], tmp_dir=str(tmp_path))
    assert err.value.reason == "checksum_mismatch"
    assert _read(dev, MIB) == bytes(MIB)
    assert _read(dev, MIB, 31 * MIB) == bytes(MIB)


def test_unreachable_url_fails_after_bounded_retries(make_loop: Callable[[int], str], tmp_path: Path) -> None:
    dev = make_loop(8)
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/gone.raw"
    info = {"id": "u", "urls": [url], "disk_format": "raw", "checksum": "a" * 64}
    with pytest.raises(ImageError, match="after 3 attempts") as err:
        image.write_image(info, dev, progress=lambda d, t: None, allowlist=[dev], retry_delay=0.01)
    assert url in str(err.value)


def test_image_refused_for_devices_off_the_allowlist(make_loop: Callable[[int], str]) -> None:
    dev = make_loop(8)
    info = {"id": "u", "urls": ["http://127.0.0.1:9/x"], "disk_format": "raw", "checksum": "a" * 64}
    for target, allow in (("/dev/sda", [dev]), (dev, []), (dev, ["/dev/loop-other"])):
        with pytest.raises(DeviceNotAllowed):
            image.write_image(info, target, progress=lambda d, t: None, allowlist=allow)


# ---- config drive ----


def _configdrive(tmp_path: Path, payload: bytes) -> str:
    src = tmp_path / f"cd-{hashlib.md5(payload).hexdigest()}"
    (src / "openstack" / "latest").mkdir(parents=True)
    (src / "openstack" / "latest" / "meta_data.json").write_bytes(payload)
    iso = src.with_suffix(".iso")
    subprocess.run(["genisoimage", "-quiet", "-V", "config-2", "-J", "-r", "-o", iso, src], check=True)
    return base64.b64encode(gzip.compress(iso.read_bytes())).decode()


def _label(dev: str) -> str:
    return subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "LABEL", dev], capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.parametrize("table", ["gpt", "dos"])
def test_configdrive_gets_a_new_partition_at_the_end(
    table: str, make_loop: Callable[[int], str], tmp_path: Path
) -> None:
    dev = make_loop(256)
    subprocess.run(["sfdisk", "-q", dev], input=f"label: {table}\nsize=100MiB\n", text=True, check=True)
    subprocess.run(["partx", "-u", dev], check=False)
    part = configdrive.write_configdrive(dev, _configdrive(tmp_path, b'{"uuid": "n1"}'), allowlist=[dev])
    assert part == f"{dev}p2"
    assert _label(part) == "config-2"
    start = int(Path(f"/sys/class/block/{Path(part).name}/start").read_text())
    size = int(Path(f"/sys/class/block/{Path(part).name}/size").read_text())
    assert size * 512 >= 64 * MIB
    assert (start + size) * 512 > 250 * MIB  # it sits at the end of the disk
    # a second deployment finds and reuses it
    again = configdrive.write_configdrive(dev, _configdrive(tmp_path, b'{"uuid": "n2"}'), allowlist=[dev])
    assert again == part
    assert len(devices.partitions(dev)) == 2


def test_configdrive_refused_off_the_allowlist(make_loop: Callable[[int], str], tmp_path: Path) -> None:
    dev = make_loop(8)
    with pytest.raises(DeviceNotAllowed):
        configdrive.write_configdrive("/dev/sda", _configdrive(tmp_path, b"{}"), allowlist=[dev])


# ---- erase ----


def test_erase_metadata_removes_tables_and_signatures(make_loop: Callable[[int], str]) -> None:
    dev = make_loop(64)
    subprocess.run(["sfdisk", "-q", dev], input="label: gpt\nsize=20MiB\n", text=True, check=True)
    subprocess.run(["partx", "-u", dev], check=False)
    devices.wait_for_node(f"{dev}p1")
    subprocess.run(["mkfs.vfat", "-n", "DATA", f"{dev}p1"], check=True, capture_output=True)
    result = erase.erase_devices_metadata([dev], allowlist=[dev])
    assert result[dev]["partitions"] == [f"{dev}p1"]
    probe = subprocess.run(["blkid", "-p", dev], capture_output=True, text=True)
    assert probe.returncode == 2, probe.stdout  # nothing found
    assert _read(dev, MIB) == bytes(MIB) and _read(dev, MIB, 63 * MIB) == bytes(MIB)


def test_full_erase_leaves_zeros(make_loop: Callable[[int], str], tmp_path: Path) -> None:
    dev = make_loop(16)
    with open(dev, "wb") as f:
        f.write(_random(16 * MIB))
    plain = tmp_path / "plain.img"
    plain.write_bytes(_random(3 * MIB))
    result = erase.erase_devices([dev, str(plain)], allowlist=[dev, str(plain)])
    assert result == {dev: {"method": "shred"}, str(plain): {"method": "shred"}}
    assert _read(dev, 16 * MIB) == bytes(16 * MIB)
    assert plain.read_bytes() == bytes(3 * MIB)


def test_erase_checks_every_device_before_touching_any(make_loop: Callable[[int], str]) -> None:
    dev = make_loop(8)
    with open(dev, "wb") as f:
        f.write(b"\x01" * MIB)
    with pytest.raises(DeviceNotAllowed):
        erase.erase_devices([dev, "/dev/sda"], allowlist=[dev])
    with pytest.raises(DeviceNotAllowed):
        erase.erase_devices_metadata([dev, "/dev/nvme0n1"], allowlist=[dev])
    assert _read(dev, MIB) == b"\x01" * MIB


def test_list_block_devices_with_allowlist_shows_only_those(make_loop: Callable[[int], str]) -> None:
    dev = make_loop(8)
    rows = devices.list_block_devices([dev])
    assert [r["path"] for r in rows] == [dev]
    assert rows[0]["size"] == 8 * MIB and rows[0]["type"] == "loop" and rows[0]["ro"] is False


# ---- burn-in ----


def test_burnin_cpu_and_memory_quick_runs() -> None:
    cpu = burnin.burnin_cpu(timeout=2)
    mem = burnin.burnin_memory(timeout=2, vm_bytes="32M")
    assert cpu["bogo_ops"] > 0 and mem["bogo_ops"] > 0


def test_burnin_disk_on_a_loop_device(make_loop: Callable[[int], str]) -> None:
    dev = make_loop(32)
    result = burnin.burnin_disk([dev], runtime=2, allowlist=[dev])
    assert result[dev]["error"] == 0 and result[dev]["write_iops"] > 0
    with pytest.raises(DeviceNotAllowed):
        burnin.burnin_disk(["/dev/sda"], runtime=1, allowlist=[dev])


def test_burnin_failure_carries_the_output_tail(make_loop: Callable[[int], str]) -> None:
    with pytest.raises(AgentError, match="memory burn-in"):
        burnin.burnin_memory(timeout=1, vm_bytes="not-a-size")
