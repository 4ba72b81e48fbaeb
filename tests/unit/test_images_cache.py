"""The image cache: one download per source, checksums, retries, revalidation, eviction, the disk budget.

The origin is faked at one boundary, the httpx transport (``httpx.MockTransport``); files, hard
links, locks and the budget ledger are real, under ``tmp_path``. A clock is injected so ages and
revalidation are tested without sleeping. The integration tier (tests/integration/test_image_cache.py)
does the same against a real HTTP server and real processes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ironworks.config import load_config
from ironworks.errors import InvalidInput
from ironworks.images.cache import (
    DiskBudgetExceeded,
    ImageCache,
    ImageChecksumMismatch,
    ImageDiskFull,
    ImageHttpError,
    ImageSourceNotAllowed,
    ImageUnreachable,
)

URL = "http://files.example/agent.initramfs"


class Clock:
    """A settable clock for ages and revalidation."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Origin:
    """A fake origin: files by path, ETags, conditional GETs and Range; records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.requests: list[httpx.Request] = []
        self.fail: Callable[[httpx.Request], httpx.Response | None] = lambda r: None

    def put(self, path: str, body: bytes, etag: str | None = None) -> None:
        self.files[path] = body
        self.etags[path] = etag or f'"{hashlib.sha256(body).hexdigest()[:12]}"'

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failed = self.fail(request)
        if failed is not None:
            return failed
        body = self.files.get(request.url.path)
        if body is None:
            return httpx.Response(404)
        etag = self.etags[request.url.path]
        headers = {"ETag": etag, "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT", "Accept-Ranges": "bytes"}
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304, headers=headers)
        rng = request.headers.get("range")
        if rng and request.headers.get("if-range", etag) == etag:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            return httpx.Response(206, content=body[start:], headers=headers)
        return httpx.Response(200, content=body, headers=headers)

    def gets(self) -> int:
        return len(self.requests)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def origin() -> Origin:
    o = Origin()
    o.put("/agent.initramfs", b"ramdisk-bytes" * 100)
    return o


def make_cache(tmp_path: Path, origin: Origin | None = None, clock: Clock | None = None, **kw: Any) -> ImageCache:
    opts: dict[str, Any] = {"retry_delay": 0.0, "min_idle": 0.0, "allowed_file_dirs": [str(tmp_path / "files")]}
    opts.update(kw)
    return ImageCache(
        tmp_path / "images",
        transport=httpx.MockTransport(origin) if origin is not None else None,
        clock=clock or Clock(),
        **opts,
    )


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers(cache: ImageCache) -> list[str]:
    """Partial downloads and temporary metas left in the cache."""
    return sorted(p.name for p in cache.master_dir.iterdir() if p.name.endswith((".part", ".tmp")))


# ---- downloads -------------------------------------------------------------------------------


def test_ten_concurrent_fetches_share_one_download(tmp_path: Path, origin: Origin) -> None:
    gate = threading.Event()
    slow = Origin()
    slow.files, slow.etags = origin.files, origin.etags

    def handler(request: httpx.Request) -> httpx.Response:
        gate.wait(5)
        return slow(request)

    cache = ImageCache(tmp_path / "images", transport=httpx.MockTransport(handler), retry_delay=0.0)
    body = origin.files["/agent.initramfs"]
    results: list[bytes] = []

    def fetch() -> None:
        results.append(cache.fetch(URL, expected=sha256(body)).read_bytes())

    threads = [threading.Thread(target=fetch) for _ in range(10)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert results == [body] * 10
    assert slow.gets() == 1  # the nine waiters found the fresh master
    assert leftovers(cache) == []


def test_a_failed_download_names_the_url_without_its_credentials(tmp_path: Path, origin: Origin) -> None:
    cache = make_cache(tmp_path, origin)
    with pytest.raises(ImageHttpError) as exc:
        cache.fetch("http://user:pa55@files.example/missing?sig=abc")
    assert exc.value.status == 404 and exc.value.reason == "image_http_error"
    assert "HTTP 404" in exc.value.message and "http://files.example/missing" in exc.value.message
    assert "pa55" not in exc.value.message and "sig=abc" not in exc.value.message
    assert leftovers(cache) == [] and not cache.master_path("http://user:pa55@files.example/missing?sig=abc").exists()


def test_a_checksum_mismatch_keeps_nothing_and_the_next_fetch_downloads_again(tmp_path: Path, origin: Origin) -> None:
    cache = make_cache(tmp_path, origin)
    body = origin.files["/agent.initramfs"]
    with pytest.raises(ImageChecksumMismatch, match="not 0000") as exc:
        cache.fetch(URL, expected="sha256:" + "0" * 64)
    assert exc.value.reason == "image_checksum_mismatch"
    assert not cache.master_path(URL).exists() and leftovers(cache) == []
    assert cache.fetch(URL, expected=sha256(body)).read_bytes() == body
    assert origin.gets() == 2


def test_a_sha512_checksum_is_verified_while_streaming(tmp_path: Path, origin: Origin) -> None:
    cache = make_cache(tmp_path, origin)
    body = origin.files["/agent.initramfs"]
    good = "sha512:" + hashlib.sha512(body).hexdigest()
    assert cache.fetch(URL, expected=good).read_bytes() == body
    with pytest.raises(ImageChecksumMismatch):
        cache.fetch(URL, expected="sha512:" + "1" * 128)  # fetched again (the origin may have changed), still wrong


def test_an_unreachable_origin_is_tried_download_attempts_times(tmp_path: Path) -> None:
    tries: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        tries.append(str(request.url))
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    cache = ImageCache(tmp_path / "images", transport=httpx.MockTransport(refuse), attempts=4, retry_delay=0.0)
    with pytest.raises(ImageUnreachable, match=r"after 4 attempt\(s\): ConnectError") as exc:
        cache.fetch("http://u:secret@files.example/k?token=t0k")
    assert len(tries) == 4
    assert "secret" not in exc.value.message and "t0k" not in exc.value.message
    assert "download_attempts" in exc.value.message and leftovers(cache) == []


def test_a_busy_origin_is_retried_and_a_cut_download_resumes_with_range(tmp_path: Path, origin: Origin) -> None:
    body = os.urandom(3 << 20)
    origin.put("/big.img", body)
    seen: list[str | None] = []

    class CutStream(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield body[: 1 << 20]
            raise httpx.ReadError("connection reset")

    def fail(request: httpx.Request) -> httpx.Response | None:
        seen.append(request.headers.get("range"))
        if len(seen) == 1:
            return httpx.Response(503)
        if len(seen) == 2:
            headers = {"ETag": origin.etags["/big.img"], "Accept-Ranges": "bytes", "Content-Length": str(len(body))}
            return httpx.Response(200, stream=CutStream(), headers=headers)
        return None

    origin.fail = fail
    cache = make_cache(tmp_path, origin, attempts=3)
    master = cache.fetch("http://files.example/big.img", expected=sha256(body))
    assert master.read_bytes() == body
    assert seen == [None, None, f"bytes={1 << 20}-"]  # only the missing part was fetched again


def test_a_full_disk_removes_the_partial_file_and_says_what_to_do(
    tmp_path: Path, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin.put("/big.img", b"x" * (3 << 20))
    real_fdopen = os.fdopen

    class FullDisk:
        """A file that takes 1 MiB, then fails as a full file system does."""

        def __init__(self, f: Any) -> None:
            self.f, self.left = f, 1 << 20

        def write(self, data: bytes) -> int:
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return int(self.f.write(data))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def fdopen(fd: int, mode: str = "r", *a: Any, **kw: Any) -> Any:
        f = real_fdopen(fd, mode, *a, **kw)
        return FullDisk(f) if "w" in mode else f

    cache = make_cache(tmp_path, origin)
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(ImageDiskFull) as exc:
        cache.fetch("http://files.example/big.img")
    msg = exc.value.message
    assert exc.value.reason == "image_disk_full"
    assert "No space left on device" in msg and "needs 3.0 MiB" in msg and "is free there" in msg
    assert "[images] cache_dir" in msg and "nothing was kept" in msg
    assert leftovers(cache) == [] and not cache.master_path("http://files.example/big.img").exists()


def test_an_image_bigger_than_the_free_space_is_refused_before_downloading(
    tmp_path: Path, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ironworks.images.cache as mod

    monkeypatch.setattr(mod, "_disk_free", lambda path: 1000)
    cache = make_cache(tmp_path, origin)
    with pytest.raises(ImageDiskFull, match=r"needs 1.3 KiB and 1000 bytes is free"):
        cache.fetch(URL)
    assert leftovers(cache) == [] and not cache.master_path(URL).exists()


# ---- local files -----------------------------------------------------------------------------


def test_local_files_are_copied_once_and_again_when_they_change(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    src = tmp_path / "files" / "k"
    src.write_bytes(b"one")
    cache = make_cache(tmp_path)
    first = cache.fetch(str(src))
    ino = first.stat().st_ino
    assert cache.fetch(f"file://{src}").read_bytes() == b"one"
    assert cache.fetch(str(src)).stat().st_ino == ino  # not copied again
    src.write_bytes(b"two!")
    assert cache.fetch(str(src)).read_bytes() == b"two!"
    with pytest.raises(InvalidInput, match="ftp://"):
        cache.fetch("ftp://example.invalid/k")


def test_local_files_outside_the_allowed_dirs_are_refused(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "files", tmp_path / "secret"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "k").write_bytes(b"kernel")
    (outside / "shadow").write_bytes(b"root:x")
    (allowed / "link").symlink_to(outside / "shadow")
    cache = make_cache(tmp_path)
    assert cache.fetch(f"file://{allowed}/k").read_bytes() == b"kernel"
    for source in (str(outside / "shadow"), f"file://{allowed}/../secret/shadow", str(allowed / "link")):
        with pytest.raises(ImageSourceNotAllowed, match=r"outside \[images\] allowed_file_dirs") as exc:
            cache.fetch(source)
        assert "IRONWORKS_IMAGES_ALLOWED_FILE_DIRS" in exc.value.message
    with pytest.raises(ImageSourceNotAllowed, match="resolves to"):
        cache.fetch(str(allowed / "link"))
    nothing = ImageCache(tmp_path / "other")  # the default: no local files at all
    with pytest.raises(ImageSourceNotAllowed, match=r"\(now: none\)"):
        nothing.fetch(str(allowed / "k"))
    assert [p for p in cache.master_dir.iterdir() if p.name.endswith(".json")] == [
        cache.master_path(f"file://{allowed}/k").with_suffix(".json")
    ]


# ---- revalidation ----------------------------------------------------------------------------


def test_revalidation_keeps_the_master_on_304_and_replaces_it_when_the_origin_changed(
    tmp_path: Path, origin: Origin, clock: Clock
) -> None:
    cache = make_cache(tmp_path, origin, clock, revalidate_after=300.0)
    old_body = origin.files["/agent.initramfs"]
    master = cache.fetch(URL)
    node_copy = tmp_path / "tftp" / "node-1" / "deploy_ramdisk"
    cache.link_into(master, node_copy)
    clock.now += 10
    cache.fetch(URL)
    assert origin.gets() == 1  # fresh: not asked again
    clock.now += 300
    assert cache.fetch(URL).stat().st_ino == master.stat().st_ino
    assert origin.gets() == 2 and origin.requests[-1].headers["if-none-match"] == origin.etags["/agent.initramfs"]
    assert origin.requests[-1].headers["if-modified-since"] == "Tue, 01 Dec 2026 10:00:00 GMT"
    new_body = b"new-ramdisk" * 50
    origin.put("/agent.initramfs", new_body)
    clock.now += 300
    assert cache.fetch(URL, expected=sha256(new_body)).read_bytes() == new_body
    assert node_copy.read_bytes() == old_body  # the node's hard link still holds the image it booted
    assert origin.gets() == 3


def test_an_unreachable_origin_keeps_a_cached_master(tmp_path: Path, origin: Origin, clock: Clock) -> None:
    cache = make_cache(tmp_path, origin, clock)
    body = cache.fetch(URL).read_bytes()

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    origin.fail = down
    clock.now += 3600
    assert cache.fetch(URL, expected=sha256(body)).read_bytes() == body


# ---- eviction --------------------------------------------------------------------------------


def test_the_least_recently_used_unused_master_is_evicted_first(tmp_path: Path, origin: Origin, clock: Clock) -> None:
    for name in "abcd":
        origin.put(f"/{name}", name.encode() * 100)
    cache = make_cache(tmp_path, origin, clock, max_bytes=350)
    url = {n: f"http://files.example/{n}" for n in "abcd"}
    for n in "abc":
        cache.fetch(url[n])
        clock.now += 1
    cache.link_into(cache.master_path(url["a"]), tmp_path / "node" / "a")  # a node uses a
    cache.fetch(url["b"])  # b is now the most recently used
    clock.now += 1
    cache.fetch(url["d"])  # 400 > 350: c (least recently used, not linked) goes
    assert {n for n in "abcd" if cache.master_path(url[n]).exists()} == {"a", "b", "d"}
    (tmp_path / "node" / "a").unlink()  # the node let go of a
    clock.now += 1
    origin.put("/e", b"e" * 100)
    cache.fetch("http://files.example/e")
    assert {n for n in "abcde" if cache.master_path(f"http://files.example/{n}").exists()} == {"b", "d", "e"}


def test_old_unused_masters_are_removed_by_clean_up(tmp_path: Path, origin: Origin, clock: Clock) -> None:
    origin.put("/old", b"o" * 10)
    origin.put("/kept", b"k" * 10)
    cache = make_cache(tmp_path, origin, clock, max_age=3600.0)
    old, kept = cache.fetch("http://files.example/old"), cache.fetch("http://files.example/kept")
    cache.link_into(kept, tmp_path / "node" / "kept")
    (cache.master_dir / f".{old.name}.abc.part").write_bytes(b"crashed")  # a download a dead process left
    clock.now += 1800
    first = cache.clean_up()
    assert first.evicted == [] and first.partials == 1  # not old enough yet; the partial nobody writes goes
    clock.now += 3600
    result = cache.clean_up()
    assert result.evicted == [old.name] and result.freed == 10
    assert not old.exists() and kept.exists() and leftovers(cache) == []
    assert cache.fetch("http://files.example/old").read_bytes() == b"o" * 10  # simply fetched again


def test_an_image_bigger_than_the_cap_is_stored_with_a_warning(
    tmp_path: Path, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(tmp_path, origin, max_bytes=100)
    with caplog.at_level(logging.WARNING, logger="ironworks.images.cache"):
        assert cache.fetch(URL).is_file()
    assert any("bigger than [images] max_cache_bytes" in r.getMessage() for r in caplog.records)


def test_a_just_used_master_is_not_evicted_under_its_reader(tmp_path: Path, origin: Origin, clock: Clock) -> None:
    origin.put("/a", b"a" * 100)
    origin.put("/b", b"b" * 100)
    cache = make_cache(tmp_path, origin, clock, max_bytes=150, min_idle=60.0)
    a = cache.fetch("http://files.example/a")
    clock.now += 5
    cache.fetch("http://files.example/b")
    assert a.exists()  # used 5 s ago: the caller may be about to link or read it
    clock.now += 120
    cache.clean_up()
    assert not a.exists()


# ---- the disk budget ---------------------------------------------------------------------------


def test_reservations_fit_the_budget_or_are_refused_with_what_to_do(tmp_path: Path, origin: Origin) -> None:
    cache = make_cache(tmp_path, origin, budget_bytes=10_000)
    cache.fetch(URL)  # 1300 bytes of masters
    cache.link_into(cache.master_path(URL), tmp_path / "node" / "r")
    cache.reserve("node-a", 5000, what="a remastered ISO")
    cache.reserve("node-b", 3000, what="a remastered ISO")
    with pytest.raises(DiskBudgetExceeded) as exc:
        cache.reserve("node-c", 2000, what="a remastered ISO")
    msg = exc.value.message
    assert exc.value.reason == "disk_budget_exceeded"
    assert msg.startswith("node-c needs 2.0 KiB for a remastered ISO") and "9.8 KiB" in msg
    assert "node-a 4.9 KiB" in msg.split("most:")[1] and "[images] disk_budget_bytes" in msg
    assert cache.usage() == {
        "budget": 10_000,
        "masters": 1300,
        "reserved": {"node-a": 5000, "node-b": 3000},
        "free": 700,
    }
    cache.reserve("node-a", 1000, what="a smaller ISO")  # replaces node-a's reservation
    cache.reserve("node-c", 2000, what="a remastered ISO")
    cache.release("node-b")
    cache.release("node-b")  # idempotent
    assert cache.usage()["reserved"] == {"node-a": 1000, "node-c": 2000}
    with pytest.raises(InvalidInput):
        cache.reserve("node-d", -1, what="nothing")


def test_check_fits_refuses_like_reserve_but_records_nothing(tmp_path: Path, origin: Origin) -> None:
    """The deploy pre-check asks the budget without holding it: nothing is reserved either way."""
    cache = make_cache(tmp_path, origin, budget_bytes=10_000)
    cache.reserve("node-a", 6000, what="a remastered ISO")
    cache.check_fits("node-b", 4000, what="a remastered ISO")
    with pytest.raises(DiskBudgetExceeded, match=r"node-b needs 4\.9 KiB"):
        cache.check_fits("node-b", 5000, what="a remastered ISO")
    cache.check_fits("node-a", 9000, what="a bigger ISO")  # its own reservation would be replaced
    assert cache.usage()["reserved"] == {"node-a": 6000}


def test_the_budget_evicts_unused_masters_before_refusing(tmp_path: Path, origin: Origin) -> None:
    cache = make_cache(tmp_path, origin, budget_bytes=2000)
    master = cache.fetch(URL)  # 1300 bytes, no node uses it
    cache.reserve("node-a", 1500, what="an ISO")
    assert not master.exists() and cache.usage()["masters"] == 0


def test_a_download_that_cannot_fit_the_budget_is_refused_before_it_starts(tmp_path: Path, origin: Origin) -> None:
    cache = make_cache(tmp_path, origin, budget_bytes=2000)
    cache.reserve("node-a", 1000, what="an ISO")
    with pytest.raises(DiskBudgetExceeded, match=r"^node-b needs 1.3 KiB for the image http://files.example/agent"):
        cache.fetch(URL, owner="node-b")
    assert not cache.master_path(URL).exists() and leftovers(cache) == []
    assert cache.usage()["reserved"] == {"node-a": 1000}  # the refused download holds nothing
    cache.release("node-a")
    assert cache.fetch(URL, owner="node-b").is_file()
    assert cache.usage() == {"budget": 2000, "masters": 1300, "reserved": {}, "free": 700}


def test_without_a_budget_nothing_is_refused_and_free_is_the_disks(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    cache.reserve("node-a", 1 << 50, what="a huge ISO")
    usage = cache.usage()
    assert usage["budget"] == 0 and usage["reserved"] == {"node-a": 1 << 50} and usage["free"] > 0


# ---- configuration -----------------------------------------------------------------------------


def test_from_config_shares_one_cache_per_root_and_uses_the_images_section(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        environ={"IRONWORKS_IMAGES_ALLOWED_FILE_DIRS": f"{tmp_path}/a, {tmp_path}/b"},
        overrides={"": {"state_dir": str(tmp_path / "state")}, "images": {"disk_budget_bytes": 5}},
    )
    cache = ImageCache.from_config(cfg)
    assert cache is ImageCache.from_config(cfg)
    assert cache.root == tmp_path / "state" / "images"
    assert cache.allowed_file_dirs == [f"{tmp_path}/a", f"{tmp_path}/b"] and cache.budget_bytes == 5
    cfg.images.cache_dir = str(tmp_path / "cache")
    assert ImageCache.from_config(cfg).root == tmp_path / "cache"
