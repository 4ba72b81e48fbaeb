"""Ten concurrent deploys of one image through the image cache: bytes fetched from the origin.

An origin HTTP server on 127.0.0.1 serves a random image of ``--size-mib`` (sendfile, ETag,
Last-Modified, 304 on a matching ``If-None-Match``) and counts the requests and body bytes it sent.
Each run starts from an empty cache; ``--deploys`` (10) "deploys" each ``fetch`` the image through
the cache and hard-link it into a per-node directory, all at once:

* ``threads``    one ``ImageCache`` in this process, one thread per deploy (a conductor's workers);
* ``processes``  one process per deploy, each with its own ``ImageCache`` on the same directory (the
                 cross-process ``flock`` path: several conductors on one host).

Round 2 publishes a new copy at the origin (new ETag) and, after the revalidation interval (the
caches' clock is moved past ``revalidate_after``), deploys again. Target: bytes from the origin =
exactly 1.00x the image in each round. Also reported: requests to the origin, wall time of the N
deploys next to one plain ``curl -o`` download of the image from the same origin in the same run,
and the disk the masters and node links take.

    .venv/bin/python bench/image_cache_bench.py [--size-mib 256] [--deploys 10] [--runs 3]
                                                [--mode threads|processes|both] [--json out.json]

Medians over the runs; it judges nothing and exits 1 only when a deploy fails or gets wrong bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ironworks.images.cache import ImageCache  # noqa: E402

MIB = 1 << 20


class Origin:
    """The image server: one file, sendfile bodies, ETag/Last-Modified/304; counts what it sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.requests = self.bytes_sent = self.not_modified = 0
        self.republish()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with origin.lock:
                    origin.requests += 1
                    etag, modified = origin.etag, origin.modified
                if self.headers.get("If-None-Match") == etag:
                    with origin.lock:
                        origin.not_modified += 1
                    self.send_response(304)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with open(origin.path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    self.send_response(200)
                    self.send_header("ETag", etag)
                    self.send_header("Last-Modified", modified)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    self.wfile.flush()
                    offset = 0
                    while offset < size:
                        sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, size - offset)
                        if not sent:
                            break
                        offset += sent
                        with origin.lock:
                            origin.bytes_sent += sent

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/image.img"

    def republish(self) -> None:
        """A new ETag for the file as it is now."""
        st = self.path.stat()
        with self.lock:
            self.etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            self.modified = formatdate(st.st_mtime, usegmt=True)

    def counters(self) -> tuple[int, int, int]:
        with self.lock:
            return self.requests, self.bytes_sent, self.not_modified

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_random(path: Path, size: int) -> str:
    """A random file of ``size`` bytes; its sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return "sha256:" + h.hexdigest()


def deploy(cache: ImageCache, url: str, expected: str, node_dir: Path) -> int:
    """One deploy's share: the image from the cache, hard-linked into the node's directory; its inode."""
    master = cache.fetch(url, expected=expected, owner=node_dir.name)
    cache.link_into(master, node_dir / "image")
    return (node_dir / "image").stat().st_ino


def _process_deploy(root: str, url: str, expected: str, node_dir: str, offset: float, start: Any, conn: Any) -> None:
    try:
        cache = ImageCache(Path(root), clock=lambda: time.time() + offset)
        conn.send(("ready", 0))
        start.wait()
        conn.send(("ok", deploy(cache, url, expected, Path(node_dir))))
    except Exception as exc:  # sent to the parent, which reports it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def one_round(
    mode: str, root: Path, nodes: Path, url: str, expected: str, n: int, offset: float
) -> tuple[list[int], float]:
    """``n`` concurrent deploys; the node files' inodes and the wall time from the start signal. Raises on failure."""
    if mode == "threads":
        cache = ImageCache(root, clock=lambda: time.time() + offset)
        inodes: list[int] = []
        errors: list[str] = []
        barrier = threading.Barrier(n)

        def run(i: int) -> None:
            try:
                barrier.wait()
                inodes.append(deploy(cache, url, expected, nodes / f"node-{i}"))
            except Exception as exc:  # reported below
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(errors[0])
        return inodes, time.perf_counter() - t0
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    pipes, procs = [], []
    for i in range(n):
        parent, child = ctx.Pipe()
        p = ctx.Process(
            target=_process_deploy, args=(str(root), url, expected, str(nodes / f"node-{i}"), offset, start, child)
        )
        p.start()
        pipes.append(parent)
        procs.append(p)
    for pipe in pipes:  # every interpreter is up and has its cache: time the deploys, not the imports
        if pipe.recv()[0] != "ready":
            raise RuntimeError("a deploy process failed to start")
    t0 = time.perf_counter()
    start.set()
    answers = [pipe.recv() for pipe in pipes]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    bad = [msg for status, msg in answers if status != "ok"]
    if bad:
        raise RuntimeError(bad[0])
    return [int(msg) for _, msg in answers], wall


def one_run(mode: str, size: int, n: int, work: Path) -> dict[str, Any]:
    image = work / "origin" / "image.img"
    image.parent.mkdir(parents=True)
    expected = write_random(image, size)
    origin = Origin(image)
    out: dict[str, Any] = {}
    try:
        # the reference: one plain download of the image to a file (what a single deploy costs at least)
        t0 = time.perf_counter()
        subprocess.run(["curl", "-sf", "-o", str(work / "curl.out"), origin.url], check=True)
        out["curl_s"] = time.perf_counter() - t0
        os.unlink(work / "curl.out")
        with origin.lock:
            origin.requests = origin.bytes_sent = 0
        root, nodes = work / "cache", work / "nodes"
        for rnd in (1, 2):
            if rnd == 2:
                # a new copy at the origin, and the caches' clocks past the revalidation interval
                expected = write_random(image.with_suffix(".new"), size)
                os.replace(image.with_suffix(".new"), image)
                origin.republish()
            offset = 0.0 if rnd == 1 else ImageCache(root).revalidate_after + 1
            req0, sent0, nm0 = origin.counters()
            inodes, wall = one_round(mode, root, nodes / f"round-{rnd}", origin.url, expected, n, offset)
            req, sent, nm = origin.counters()
            if len(set(inodes)) != 1 or len(inodes) != n:
                raise RuntimeError(f"round {rnd}: the {n} node files are {len(set(inodes))} different files")
            master = ImageCache(root).master_path(origin.url)
            if hashlib.sha256(master.read_bytes()).hexdigest() != expected.split(":")[1]:
                raise RuntimeError(f"round {rnd}: the master does not have the origin's bytes")
            out[f"round{rnd}"] = {
                "bytes_ratio": (sent - sent0) / size,
                "requests": req - req0,
                "not_modified": nm - nm0,
                "wall_s": wall,
                "links": master.stat().st_nlink - 1,
            }
        # disk taken by the cache and the node dirs: distinct inodes only
        seen: dict[int, int] = {}
        for p in [*work.joinpath("cache").rglob("*"), *work.joinpath("nodes").rglob("*")]:
            if p.is_file():
                st = p.stat()
                seen[st.st_ino] = st.st_blocks * 512
        out["disk_ratio"] = sum(seen.values()) / size
    finally:
        origin.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--deploys", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mode", choices=["threads", "processes", "both"], default="both")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    size = args.size_mib * MIB
    modes = ["threads", "processes"] if args.mode == "both" else [args.mode]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        for r in range(args.runs):
            for mode in modes:
                with tempfile.TemporaryDirectory(prefix="ironworks-cache-bench-") as tmp:
                    runs[mode].append(one_run(mode, size, args.deploys, Path(tmp)))
                print(f"run {r + 1}/{args.runs} {mode}: {json.dumps(runs[mode][-1])}", file=sys.stderr)
    except Exception as exc:
        print(f"image cache bench broke: {exc}", file=sys.stderr)
        return 1
    print(
        f"\n{args.deploys} concurrent deploys of one {args.size_mib} MiB image, {args.runs} runs, medians "
        "(round 2: the origin's copy changed)\n"
    )
    print("| mode | round | origin bytes / image | requests (304s) | wall | one curl download | node links |")
    print("|---|---|---|---|---|---|---|")
    summary: dict[str, Any] = {"size_mib": args.size_mib, "deploys": args.deploys, "runs": runs, "medians": {}}
    for mode in modes:
        summary["medians"][mode] = {}
        for rnd in ("round1", "round2"):
            vals = [run[rnd] for run in runs[mode]]
            med = {k: statistics.median(v[k] for v in vals) for k in vals[0]}
            med["curl_s"] = statistics.median(run["curl_s"] for run in runs[mode])
            summary["medians"][mode][rnd] = med
            print(
                f"| {mode} | {rnd[-1]} | {med['bytes_ratio']:.2f}x | {med['requests']:.0f} ({med['not_modified']:.0f})"
                f" | {med['wall_s']:.2f} s | {med['curl_s']:.2f} s | {med['links']:.0f} |"
            )
    for mode in modes:
        disk = statistics.median(run["disk_ratio"] for run in runs[mode])
        summary["medians"][mode]["disk_ratio"] = disk
        print(f"\n{mode}: disk used by the cache and all node files after both rounds: {disk:.2f}x the image")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
