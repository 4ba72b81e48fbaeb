"""A download cache for boot images (kernels, ramdisks): one master copy per source, hard-linked out.

``ImageCache(root).fetch(source)`` returns the master copy of ``source`` under
``<root>/master/<sha256 of source>``, downloading (http, https) or copying (``file://`` URLs and
absolute local paths) it the first time. A download streams into a temporary file beside the
master, is hashed on the way and renamed into place only when complete (and matching ``expected``),
so a reader never sees half a file. A lock file per source makes concurrent preparers, threads or
processes, share one download. ``link_into(master, dest)`` hard-links a master into a node's boot
directory; when the two are on different file systems it copies instead and says so.

Not yet (issue 6): a size cap, LRU eviction, ETag revalidation. A master is kept until removed;
a local source is copied again when its size or modification time changed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from ironworks.errors import DriverError, InvalidInput

CHUNK = 1 << 20
#: checksum algorithms accepted in ``expected`` (``"<algo>:<hex>"``, or bare hex of these lengths)
ALGORITHMS = {"sha256": 64, "sha512": 128}


class ImageError(DriverError):
    """An image could not be fetched into the cache."""

    reason = "image_unavailable"


class ImageChecksumMismatch(ImageError):
    """The fetched image does not have the checksum it was given."""

    reason = "image_checksum_mismatch"


def parse_checksum(expected: str) -> tuple[str, str]:
    """``"sha256:<hex>"`` / ``"sha512:<hex>"`` / bare hex -> ``(algorithm, hex)``; ``InvalidInput`` otherwise."""
    text = expected.strip().lower()
    algo, sep, digest = text.partition(":")
    if not sep:
        digest = text
        algo = next((a for a, n in ALGORITHMS.items() if n == len(text)), "")
    if algo not in ALGORITHMS or len(digest) != ALGORITHMS[algo] or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidInput(
            f"The checksum {expected!r} is not understood: give sha256:<64 hex digits> or sha512:<128 hex digits>."
        )
    return algo, digest


def local_path(source: str) -> Path | None:
    """The file a ``file://`` URL or absolute path names; None for http(s)."""
    if source.startswith("/"):
        return Path(source)
    parts = urlsplit(source)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"The file URL {source!r} names host {parts.netloc!r}; only local files are supported.")
        return Path(unquote(parts.path))
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    raise InvalidInput(
        f"The image source {source!r} is not a URL Ironworks can fetch: use http://, https://, file:// or an "
        "absolute path."
    )


class ImageCache:
    """Master copies of images under ``<root>/master``, fetched once and shared."""

    def __init__(self, root: Path, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.root = Path(root)
        self.master_dir = self.root / "master"
        self.timeout = timeout
        self.transport = transport
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ---- public API ----------------------------------------------------------------------
    def master_path(self, source: str) -> Path:
        """Where the master copy of ``source`` lives (whether fetched yet or not)."""
        return self.master_dir / hashlib.sha256(source.encode()).hexdigest()

    def fetch(self, source: str, *, expected: str | None = None) -> Path:
        """The master copy of ``source``, fetched now if missing or stale; verified against ``expected``."""
        want = parse_checksum(expected) if expected else None
        local = local_path(source)
        master = self.master_path(source)
        self.master_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(master.name):
            meta = self._read_meta(master)
            if meta is None or (local is not None and meta.get("stamp") != _stamp(local, source)):
                meta = self._store(source, local, master)
            if want is not None:
                algo, digest = want
                have = meta.get(algo) or _hash_file(master, algo)
                if have != digest:
                    # a master that does not match is not trusted for anyone: fetch it again next time
                    self._discard(master)
                    raise ImageChecksumMismatch(
                        f"The image {_display(source)} has {algo} {have}, not {digest} as its checksum says. "
                        "Check the checksum you gave, or replace the image at its source."
                    )
        return master

    def link_into(self, path: Path, dest: Path, *, on_copy: Callable[[str], None] | None = None) -> None:
        """Make ``dest`` the same file as ``path`` (hard link); copy if they are on different file systems."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise ImageError(f"Cannot link {path} to {dest}: {exc.strerror}.") from exc
            shutil.copyfile(path, tmp)
            if on_copy is not None:
                on_copy(
                    f"{dest} is a copy, not a hard link, of the cached image {path}: they are on different file "
                    "systems. Put the image cache and the boot roots on one file system to save the space."
                )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)

    # ---- internals -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """One fetcher per source: a thread lock (flock is per process) around a file lock (per host)."""
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock, open(self.master_dir / f"{key}.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_meta(self, master: Path) -> dict[str, str] | None:
        try:
            meta = json.loads(master.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None
        if not master.is_file() or not isinstance(meta, dict):
            return None
        return {str(k): str(v) for k, v in meta.items()}

    def _discard(self, master: Path) -> None:
        for p in (master, master.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def _store(self, source: str, local: Path | None, master: Path) -> dict[str, str]:
        hashers = {algo: hashlib.new(algo) for algo in ALGORITHMS}
        fd, tmp_name = tempfile.mkstemp(dir=self.master_dir, prefix=f".{master.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._read(source, local):
                    out.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
            os.chmod(tmp, 0o644)
            os.replace(tmp, master)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        meta = {"source": _display(source), **{a: h.hexdigest() for a, h in hashers.items()}}
        if local is not None:
            meta["stamp"] = _stamp(local, source)
        master.with_suffix(".json").write_text(json.dumps(meta))
        return meta

    def _read(self, source: str, local: Path | None) -> Iterator[bytes]:
        if local is not None:
            try:
                with open(local, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        yield chunk
            except OSError as exc:
                raise ImageError(
                    f"Cannot read the image {local}: {exc.strerror}. Check the path and that Ironworks may read it."
                ) from exc
            return
        try:
            with (
                httpx.Client(timeout=self.timeout, transport=self.transport, follow_redirects=True) as client,
                client.stream("GET", source) as resp,
            ):
                if resp.status_code != 200:
                    raise ImageError(
                        f"Downloading the image {_display(source)} failed: the server answered HTTP "
                        f"{resp.status_code}. Check the URL."
                    )
                yield from resp.iter_bytes(CHUNK)
        except httpx.HTTPError as exc:
            raise ImageError(
                f"Downloading the image {_display(source)} failed: {type(exc).__name__}: {exc}. Check that the URL "
                "is reachable from the conductor."
            ) from exc


def _stamp(local: Path, source: str) -> str:
    try:
        st = local.stat()
    except OSError as exc:
        raise ImageError(f"The image {source} cannot be read: {exc.strerror}. Check the path.") from exc
    return f"{st.st_size}:{st.st_mtime_ns}"


def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _display(source: str) -> str:
    """The source without credentials or query (a signed URL's query can be a secret)."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    return source
