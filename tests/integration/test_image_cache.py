"""The image cache against a real HTTP origin on 127.0.0.1, with real threads and real processes.

The origin (``Origin``, in this file) serves one image with an ETag and Last-Modified, answers
conditional GETs and ``Range``, and counts the requests and body bytes it sent. Processes are
``python -c`` children that use the cache on the same directory, as two conductors on one host
would (``CHILD`` below).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from ironworks.images.cache import (
    ImageCache,
    ImageChecksumMismatch,
    ImageHttpError,
    ImageUnreachable,
)

LOOPBACK = "127.0.0.1"
MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]

# one cache operation in a child process; prints {"ok": ...} or {"error": reason, "message": ...}
CHILD = r"""
import json, resource, signal, sys
from pathlib import Path
from ironworks.images.cache import ImageCache, ImageError
args = json.loads(sys.argv[1])
if args.get("fsize"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (args["fsize"], args["fsize"]))
cache = ImageCache(Path(args["root"]), budget_bytes=args.get("budget", 0), retry_delay=0.0, min_idle=0.0)
print("ready", flush=True)
try:
    if args["op"] == "fetch":
        out = str(cache.fetch(args["url"], expected=args.get("expected"), owner=args.get("owner")))
    elif args["op"] == "reserve":
        cache.reserve(args["owner"], args["nbytes"], what=args["what"])
        out = "reserved"
    else:
        cache.release(args["owner"])
        out = "released"
    print(json.dumps({"ok": out}))
except ImageError as exc:
    print(json.dumps({"error": exc.reason, "message": exc.message}))
"""


class Origin:
    """An image server on 127.0.0.1: ETag / Last-Modified, 304, Range; counts requests and bytes."""

    def __init__(self, body: bytes, *, etag: bool = True) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes_sent = 0
        self.use_etag = etag
        self.gate = threading.Event()
        self.gate.set()
        self.first_request = threading.Event()
        self.put(body)
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with origin.lock:
                    origin.requests += 1
                    body, etag, modified = origin.body, origin.etag, origin.modified
                origin.first_request.set()
                origin.gate.wait(30)
                if self.path != "/image.img":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                fresh = (
                    self.headers.get("If-None-Match") == etag
                    if origin.use_etag
                    else self.headers.get("If-Modified-Since") == modified
                )
                if fresh:
                    self.send_response(304)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                if origin.use_etag:
                    self.send_header("ETag", etag)
                self.send_header("Last-Modified", modified)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                view = memoryview(body)
                for i in range(0, len(body), MIB):
                    self.wfile.write(view[i : i + MIB])
                    with origin.lock:
                        origin.bytes_sent += len(view[i : i + MIB])

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/image.img"

    def put(self, body: bytes) -> None:
        """Publish a new copy: a new ETag and Last-Modified."""
        with self.lock:
            self.body = body
            self.etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
            self.modified = formatdate(usegmt=True) + f" v{hashlib.sha256(body).hexdigest()[:4]}"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def body() -> bytes:
    return os.urandom(4 * MIB)


@pytest.fixture
def origin(body: bytes) -> Iterator[Origin]:
    o = Origin(body)
    try:
        yield o
    finally:
        o.close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def child(args: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    doc: dict[str, Any] = json.loads(out.splitlines()[-1])
    return doc


def leftovers(root: Path) -> list[str]:
    master = root / "master"
    return sorted(p.name for p in master.iterdir() if p.name.endswith((".part", ".tmp"))) if master.exists() else []


def test_ten_threads_share_one_download(tmp_path: Path, origin: Origin, body: bytes) -> None:
    cache = ImageCache(tmp_path / "images", retry_delay=0.0)
    origin.gate.clear()  # hold the first response until every thread asked
    got: list[bytes] = []
    errors: list[BaseException] = []

    def deploy(n: int) -> None:
        try:
            master = cache.fetch(origin.url, expected=sha256(body))
            cache.link_into(master, tmp_path / "nodes" / f"node-{n}" / "image")
            got.append((tmp_path / "nodes" / f"node-{n}" / "image").read_bytes())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=deploy, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    assert origin.first_request.wait(30)
    origin.gate.set()
    for t in threads:
        t.join(60)
    assert errors == [] and got == [body] * 10
    assert (origin.requests, origin.bytes_sent) == (1, len(body))
    assert cache.master_path(origin.url).stat().st_nlink == 11  # the master and ten node links: one copy on disk


def test_two_processes_share_one_download(tmp_path: Path, origin: Origin, body: bytes) -> None:
    origin.gate.clear()
    args = {"op": "fetch", "root": str(tmp_path / "images"), "url": origin.url, "expected": sha256(body)}
    procs = [child(args) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    assert origin.first_request.wait(60)
    origin.gate.set()
    results = [result(p) for p in procs]
    assert [r.get("ok") for r in results] == [str(ImageCache(tmp_path / "images").master_path(origin.url))] * 2
    assert (origin.requests, origin.bytes_sent) == (1, len(body))


def test_a_changed_origin_is_downloaded_again_and_old_links_stay_valid(
    tmp_path: Path, origin: Origin, body: bytes
) -> None:
    cache = ImageCache(tmp_path / "images", revalidate_after=0.0, retry_delay=0.0)
    old_link = tmp_path / "nodes" / "node-1" / "image"
    cache.link_into(cache.fetch(origin.url), old_link)
    cache.fetch(origin.url)  # revalidated: 304
    assert (origin.requests, origin.bytes_sent) == (2, len(body))
    new = os.urandom(3 * MIB)
    origin.put(new)
    assert cache.fetch(origin.url, expected=sha256(new)).read_bytes() == new
    assert (origin.requests, origin.bytes_sent) == (3, len(body) + len(new))
    assert old_link.read_bytes() == body  # the node that booted the old copy still has it
    cache.link_into(cache.fetch(origin.url), tmp_path / "nodes" / "node-2" / "image")
    assert (tmp_path / "nodes" / "node-2" / "image").read_bytes() == new and origin.bytes_sent == len(body) + len(new)


def test_last_modified_alone_revalidates(tmp_path: Path, body: bytes) -> None:
    origin = Origin(body, etag=False)
    try:
        cache = ImageCache(tmp_path / "images", revalidate_after=0.0, retry_delay=0.0)
        cache.fetch(origin.url)
        cache.fetch(origin.url)
        assert (origin.requests, origin.bytes_sent) == (2, len(body))
    finally:
        origin.close()


def test_bad_checksum_and_404_are_clear_and_leave_nothing(tmp_path: Path, origin: Origin, body: bytes) -> None:
    root = tmp_path / "images"
    cache = ImageCache(root, retry_delay=0.0)
    with pytest.raises(ImageChecksumMismatch, match=r"has sha256 [0-9a-f]{64}, not 1111"):
        cache.fetch(origin.url, expected="sha256:" + "1" * 64)
    assert not cache.master_path(origin.url).exists() and leftovers(root) == []
    assert cache.fetch(origin.url, expected=sha256(body)).read_bytes() == body  # downloaded again
    assert origin.requests == 2
    with pytest.raises(ImageHttpError, match=r"answered HTTP 404 Not Found") as exc:
        cache.fetch(origin.url.replace("image.img", "nothing.img"))
    assert exc.value.status == 404 and leftovers(root) == []


def test_an_origin_that_hangs_up_is_tried_download_attempts_times(tmp_path: Path) -> None:
    connections = 0
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def hang_up() -> None:
        nonlocal connections
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            connections += 1
            conn.close()

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    try:
        url = f"http://{LOOPBACK}:{listener.getsockname()[1]}/k?X-Signature=s3cret"
        cache = ImageCache(tmp_path / "images", attempts=3, retry_delay=0.0)
        with pytest.raises(ImageUnreachable, match=r"after 3 attempt\(s\)") as exc:
            cache.fetch(url)
        assert connections == 3 and "s3cret" not in exc.value.message
    finally:
        stop.set()
        t.join(5)
        listener.close()
    with contextlib.closing(socket.socket()) as s:
        s.bind((LOOPBACK, 0))
        closed = s.getsockname()[1]  # nothing listens there once the socket is closed
    with pytest.raises(ImageUnreachable, match="ConnectError"):
        ImageCache(tmp_path / "images", attempts=2, retry_delay=0.0).fetch(f"http://{LOOPBACK}:{closed}/k")


def test_a_file_size_limit_in_a_child_is_a_clear_disk_full_error(tmp_path: Path, origin: Origin) -> None:
    root = tmp_path / "images"
    r = result(child({"op": "fetch", "root": str(root), "url": origin.url, "fsize": MIB}))
    assert r["error"] == "image_disk_full", r
    assert "File too large" in r["message"] and "needs 4.0 MiB" in r["message"] and "[images] cache_dir" in r["message"]
    assert leftovers(root) == [] and not ImageCache(root).master_path(origin.url).exists()


def test_the_budget_holds_across_processes(tmp_path: Path, origin: Origin) -> None:
    root, budget = str(tmp_path / "images"), 10 * MIB
    reserve = {"op": "reserve", "root": root, "budget": budget, "nbytes": 7 * MIB, "what": "a remastered ISO"}
    procs = [child({**reserve, "owner": f"node-{n}"}) for n in range(2)]
    results = sorted((result(p) for p in procs), key=lambda r: "error" in r)
    assert results[0] == {"ok": "reserved"}  # exactly one fits
    assert results[1]["error"] == "disk_budget_exceeded"
    assert "needs 7.0 MiB" in results[1]["message"] and "reserved" in results[1]["message"]
    winner = next(o for o, r in ImageCache(Path(root)).usage()["reserved"].items())
    # the download of a 4 MiB master does not fit next to the 7 MiB reservation either
    r = result(child({"op": "fetch", "root": root, "budget": budget, "url": origin.url, "owner": "node-9"}))
    assert r["error"] == "disk_budget_exceeded" and r["message"].startswith("node-9 needs 4.0 MiB"), r
    assert leftovers(Path(root)) == [] and not ImageCache(Path(root)).master_path(origin.url).exists()
    assert result(child({"op": "release", "root": root, "owner": winner})) == {"ok": "released"}
    loser = "node-1" if winner == "node-0" else "node-0"
    assert result(child({**reserve, "owner": loser})) == {"ok": "reserved"}
    assert ImageCache(Path(root)).usage()["reserved"] == {loser: 7 * MIB}
