"""The image cache every boot and deploy path shares: one master copy per source, hard-linked out.

``ImageCache.from_config(config)`` is the process's cache for ``[images] cache_dir`` (default
``<state_dir>/images``); ``fetch(source, expected=)`` returns the master copy of ``source`` under
``<root>/master/<sha256 of source>`` (with a ``.json`` meta beside it), downloading it (http, https)
or copying it (``file://`` URLs and absolute paths, only inside ``[images] allowed_file_dirs``) when
it is missing or stale. ``link_into(master, dest)`` hard-links a master into a node's directory (a
copy, with a warning, across file systems).

- **Downloads** stream into a temporary file beside the master, hashed on the way (sha256, plus
  the algorithm ``expected`` names), and are renamed into place only when complete and matching, so
  a reader never sees half a file. A connection error is retried ``download_attempts`` times,
  resuming with ``Range`` when the server offers it; ``download_timeout`` bounds a stall.
- **One download per source**: a thread lock and a ``flock`` per source; whoever waited finds the
  fresh master and uses it.
- **Revalidation**: ETag and Last-Modified are kept; a fetch ``revalidate_after`` seconds (300)
  after the last check asks the origin with ``If-None-Match``/``If-Modified-Since``. 304 keeps the
  master; 200 downloads the new copy and renames it over the master, so nodes that hard-linked the
  old one keep their file. An unreachable origin keeps a cached master (warning). Local sources
  are copied again when their size or modification time changed.
- **Eviction** (after each store and from ``clean_up()``): masters a node still uses (a hard link
  exists: ``st_nlink > 1``) or used in the last ``min_idle`` seconds are never evicted; of the
  others, those unused for ``max_age`` go, then the least recently used until the masters fit
  ``max_cache_bytes``. An image bigger than the cap on its own is still stored (it is needed now),
  with a warning.
- **Disk budget** (``[images] disk_budget_bytes``): masters + per-node reservations (``reserve``)
  + downloads in flight may not exceed it; unused masters are evicted first, then the request is
  refused with ``DiskBudgetExceeded`` before anything is written.

Modules: the HTTP client is ``ironworks.images.download``, the budget's ledger
``ironworks.images.budget``, the error tree (``ImageError`` and its subclasses, each with a
``reason``; re-exported here) ``ironworks.images.errors``. URLs appear in messages without
credentials or query strings (a signed URL's query is a secret).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from ironworks.errors import InvalidInput
from ironworks.images.budget import DOWNLOAD, Ledger, Reservation
from ironworks.images.download import CHUNK, DownloadOptions, download
from ironworks.images.errors import (
    DiskBudgetExceeded,
    ImageChecksumMismatch,
    ImageDiskFull,
    ImageError,
    ImageHttpError,
    ImageSourceNotAllowed,
    ImageUnreachable,
    display,
)

LOG = logging.getLogger(__name__)

#: checksum algorithms accepted in ``expected`` (``"<algo>:<hex>"``, or bare hex of these lengths)
ALGORITHMS = {"sha256": 64, "sha512": 128}
_MASTER_NAME = re.compile(r"^[0-9a-f]{64}$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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
        f"The image source {display(source)!r} is not a URL Ironworks can fetch: use http://, https://, file:// or "
        "an absolute path."
    )


@dataclass(slots=True)
class CleanupResult:
    """What ``clean_up`` removed: master names, bytes freed, stale partial downloads."""

    evicted: list[str] = field(default_factory=list)
    freed: int = 0
    partials: int = 0


@dataclass(slots=True)
class _Entry:
    name: str
    size: int
    last_used: float
    nlink: int


# per lock file, so every ImageCache of one process shares them (flock alone orders processes)
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_SHARED: dict[tuple[Any, ...], ImageCache] = {}
_SHARED_GUARD = threading.Lock()


class ImageCache:
    """Master copies of images under ``<root>/master``, fetched once, shared, evicted when unused."""

    def __init__(
        self,
        root: Path,
        *,
        timeout: float = 60.0,
        attempts: int = 3,
        allowed_file_dirs: Sequence[str | os.PathLike[str]] = (),
        max_bytes: int = 0,
        max_age: float = 0.0,
        budget_bytes: int = 0,
        revalidate_after: float = 300.0,
        min_idle: float = 60.0,
        retry_delay: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.master_dir = self.root / "master"
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.allowed_file_dirs = [str(d) for d in allowed_file_dirs]
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.budget_bytes = budget_bytes
        self.revalidate_after = revalidate_after
        self.min_idle = min_idle
        self.retry_delay = retry_delay
        self.transport = transport
        self.clock = clock
        self._options = DownloadOptions(timeout, self.attempts, retry_delay, transport)
        self.ledger = Ledger(self.root / "budget.json")
        #: the announced size of each download in flight (by master name; its source lock is held)
        self._pending: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Any) -> ImageCache:
        """The process's shared cache for ``config``'s ``[images]`` (one lock set and budget view per root)."""
        ic = config.images
        root = Path(ic.cache_dir) if ic.cache_dir else config.state_path / "images"
        key = (
            os.path.abspath(root),
            ic.download_timeout,
            ic.download_attempts,
            tuple(ic.allowed_file_dirs),
            ic.max_cache_bytes,
            ic.max_age,
            ic.disk_budget_bytes,
        )
        with _SHARED_GUARD:
            cache = _SHARED.get(key)
            if cache is None:
                cache = _SHARED[key] = cls(
                    root,
                    timeout=ic.download_timeout,
                    attempts=ic.download_attempts,
                    allowed_file_dirs=ic.allowed_file_dirs,
                    max_bytes=ic.max_cache_bytes,
                    max_age=ic.max_age,
                    budget_bytes=ic.disk_budget_bytes,
                )
            return cache

    # ---- fetching -----------------------------------------------------------------------------
    def master_path(self, source: str) -> Path:
        """Where the master copy of ``source`` lives (whether fetched yet or not)."""
        return self.master_dir / hashlib.sha256(source.encode()).hexdigest()

    def check_source(self, source: str) -> Path | None:
        """The resolved local file of ``source`` (None for http(s)); refuses one outside allowed_file_dirs."""
        local = local_path(source)
        if local is None:
            return None
        if not local.is_absolute():
            raise InvalidInput(f"The image source {source!r} must be an absolute path or a URL.")
        real = Path(os.path.realpath(local))  # symlinks and ".." resolved before the check
        for allowed in self.allowed_file_dirs:
            base = Path(os.path.realpath(allowed))
            if real == base or real.is_relative_to(base):
                return real
        shown = f"{local} (which resolves to {real})" if real != local else str(local)
        dirs = ", ".join(self.allowed_file_dirs) or "none"
        raise ImageSourceNotAllowed(
            f"The image {shown} is a local file outside [images] allowed_file_dirs (now: {dirs}). Add its "
            "directory to [images] allowed_file_dirs (environment IRONWORKS_IMAGES_ALLOWED_FILE_DIRS, comma "
            "separated), or serve the image over HTTP(S)."
        )

    def fetch(self, source: str, *, expected: str | None = None, owner: str | None = None) -> Path:
        """The master copy of ``source``, fetched now if missing or stale, verified against ``expected``.

        ``owner`` (a node UUID) is named when the disk budget refuses the download.
        """
        want = parse_checksum(expected) if expected else None
        local = self.check_source(source)
        master = self.master_path(source)
        self.master_dir.mkdir(parents=True, exist_ok=True)
        stored = False
        with self._lock(master.name):
            meta = self._read_meta(master)
            if meta is not None and want is not None and meta.get(want[0]) not in (None, want[1]):
                # the origin may have changed since (and the caller knows the new checksum): look again
                meta = None
            if meta is None or (local is not None and meta.get("stamp") != _stamp(local, source)):
                meta = self._store(source, local, master, want=want, owner=owner, old=None)
                stored = True
            elif local is None and self.clock() - float(meta.get("checked", 0)) >= self.revalidate_after:
                new = self._revalidate(source, master, meta, want=want, owner=owner)
                stored = new is not meta
                meta = new
            if want is not None:
                algo, digest = want
                have = meta.get(algo) or _hash_file(master, algo)
                if have != digest:
                    self._discard(master)  # not trusted for anyone: the next fetch downloads again
                    raise ImageChecksumMismatch(
                        f"The image {display(source)} has {algo} {have}, not {digest} as its checksum says. "
                        "Check the checksum you gave, or replace the image at its source."
                    )
                meta[algo] = have
            meta["last_used"] = self.clock()
            self._write_meta(master, meta)
        if stored:
            self._evict(keep={master.name})
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

    # ---- budget ---------------------------------------------------------------------------------
    def reserve(self, owner: str, nbytes: int, *, what: str) -> None:
        """Record that ``owner`` needs ``nbytes`` (replacing its earlier reservation); refuse past the budget."""
        if nbytes < 0:
            raise InvalidInput(f"Cannot reserve {nbytes} bytes for {owner}: the size must not be negative.")
        with self.ledger.locked() as entries:
            if self.budget_bytes > 0:
                others = {k: r for k, r in entries.items() if k != owner}
                self._fit(others, nbytes, who=owner, what=what)
            entries[owner] = Reservation(nbytes, what, os.getpid())

    def check_fits(self, owner: str, nbytes: int, *, what: str) -> None:
        """Raise ``DiskBudgetExceeded`` as ``reserve`` would, without recording anything (a pre-check)."""
        if self.budget_bytes <= 0:
            return
        with self.ledger.locked() as entries:
            self._fit({k: r for k, r in entries.items() if k != owner}, nbytes, who=owner, what=what)

    def release(self, owner: str) -> None:
        """Drop ``owner``'s reservation (nothing happens when it has none)."""
        with self.ledger.locked() as entries:
            entries.pop(owner, None)

    def usage(self) -> dict[str, Any]:
        """``{"budget", "masters", "reserved": {owner: bytes}, "free"}``; free is the file system's when no budget."""
        entries = self.ledger.snapshot()
        masters = sum(e.size for e in self._entries())
        reserved = {k: r.nbytes for k, r in entries.items()}
        if self.budget_bytes > 0:
            free = max(0, self.budget_bytes - masters - sum(reserved.values()))
        else:
            free = _disk_free(self.root)
        return {"budget": self.budget_bytes, "masters": masters, "reserved": reserved, "free": free}

    def _fit(self, others: dict[str, Reservation], nbytes: int, *, who: str, what: str) -> None:
        """Evict unused masters until masters + ``others`` + ``nbytes`` fit the budget, or raise."""
        reserved = sum(r.nbytes for r in others.values())
        masters = sum(e.size for e in self._entries())
        if masters + reserved + nbytes <= self.budget_bytes:
            return
        self._evict(target=max(0, self.budget_bytes - reserved - nbytes), keep=set())
        masters = sum(e.size for e in self._entries())
        if masters + reserved + nbytes <= self.budget_bytes:
            return
        top = sorted(others.items(), key=lambda kv: -kv[1].nbytes)[:3]
        users = ", ".join(f"{k} {_size(r.nbytes)} ({r.what})" for k, r in top) or "no reservations"
        raise DiskBudgetExceeded(
            f"{who} needs {_size(nbytes)} for {what}, but the image disk budget of {_size(self.budget_bytes)} has "
            f"{_size(masters)} in cached images nodes still use and {_size(reserved)} reserved (most: {users}); "
            f"{_size(max(0, self.budget_bytes - masters - reserved))} is free. Wait for running deployments to "
            "finish, undeploy nodes that no longer need their images, or raise [images] disk_budget_bytes.",
            owner=who,
        )

    # ---- eviction ---------------------------------------------------------------------------------
    def clean_up(self) -> CleanupResult:
        """Evict unused masters past ``max_age`` or the size cap; remove partial downloads nobody writes."""
        result = CleanupResult()
        if self.master_dir.is_dir():
            for part in self.master_dir.glob(".*.part"):
                key = part.name[1:65]
                if _MASTER_NAME.match(key) and self._try_remove(key, [part]):
                    result.partials += 1
        for name, size in self._evict(keep=set()):
            result.evicted.append(name)
            result.freed += size
        return result

    def _entries(self) -> list[_Entry]:
        out: list[_Entry] = []
        if not self.master_dir.is_dir():
            return out
        for p in self.master_dir.iterdir():
            if not _MASTER_NAME.match(p.name):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            meta = self._read_meta(p) or {}
            out.append(_Entry(p.name, st.st_size, float(meta.get("last_used", st.st_mtime)), st.st_nlink))
        return out

    def _evict(self, *, keep: set[str], target: int | None = None) -> list[tuple[str, int]]:
        """Remove unused masters: too old, then least recently used while over ``target`` (default: the cap)."""
        if target is None:
            target = self.max_bytes if self.max_bytes > 0 else None
        now = self.clock()
        entries = sorted(self._entries(), key=lambda e: e.last_used)
        total = sum(e.size for e in entries)
        removed: list[tuple[str, int]] = []
        for e in entries:
            if e.name in keep or e.nlink > 1 or now - e.last_used < self.min_idle:
                continue
            too_old = self.max_age > 0 and now - e.last_used > self.max_age
            if not too_old and (target is None or total <= target):
                continue
            master = self.master_dir / e.name
            if self._try_remove(e.name, [master, master.with_suffix(".json")], unused=True):
                total -= e.size
                removed.append((e.name, e.size))
                LOG.info("image cache: evicted %s (%s, %s)", e.name, _size(e.size), "age" if too_old else "size cap")
        if self.max_bytes > 0 and total > self.max_bytes and target == self.max_bytes:
            LOG.warning(
                "image cache: %s of masters exceed [images] max_cache_bytes (%s); the rest is in use or just used",
                _size(total),
                _size(self.max_bytes),
            )
        return removed

    def _try_remove(self, key: str, paths: list[Path], *, unused: bool = False) -> bool:
        """Remove ``paths`` if ``key``'s lock is free now (never waits: callers may hold other locks)."""
        lock = _thread_lock(str(self.master_dir / f"{key}.lock"))
        if not lock.acquire(blocking=False):
            return False
        try:
            with open(self.master_dir / f"{key}.lock", "a+b") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                try:
                    if unused:
                        with contextlib.suppress(FileNotFoundError):
                            if (self.master_dir / key).stat().st_nlink > 1:
                                return False  # linked since we looked
                    for p in paths:
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()
                    return True
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            lock.release()

    # ---- internals -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """One fetcher per source: a thread lock around a file lock (which orders processes)."""
        path = self.master_dir / f"{key}.lock"
        with _thread_lock(str(path)), open(path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_meta(self, master: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads(master.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None
        if not master.is_file() or not isinstance(meta, dict):
            return None
        return meta

    def _write_meta(self, master: Path, meta: dict[str, Any]) -> None:
        tmp = master.with_name(f".{master.name}.{os.getpid()}.{threading.get_ident()}.json")
        tmp.write_text(json.dumps(meta, sort_keys=True))
        os.replace(tmp, master.with_suffix(".json"))

    def _discard(self, master: Path) -> None:
        for p in (master, master.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def _revalidate(
        self, source: str, master: Path, meta: dict[str, Any], *, want: tuple[str, str] | None, owner: str | None
    ) -> dict[str, Any]:
        """Ask the origin whether its copy changed; the same ``meta`` (304) or the new master's."""
        try:
            return self._store(source, None, master, want=want, owner=owner, old=meta)
        except ImageUnreachable as exc:
            LOG.warning("image cache: using the cached %s: %s", display(source), exc.message)
            return meta

    def _store(
        self,
        source: str,
        local: Path | None,
        master: Path,
        *,
        want: tuple[str, str] | None,
        owner: str | None,
        old: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Stream ``source`` into a temp file beside ``master`` and rename it over; ``old`` is returned on 304."""
        algos = ["sha256"] + ([want[0]] if want and want[0] != "sha256" else [])
        hashers = {a: hashlib.new(a) for a in algos}
        fd, tmp_name = tempfile.mkstemp(dir=self.master_dir, prefix=f".{master.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            got: dict[str, Any] | None
            try:
                with os.fdopen(fd, "wb") as out:
                    if local is not None:
                        got = self._copy_local(source, local, out, hashers, master=master, owner=owner)
                    else:
                        got = download(
                            source,
                            out,
                            hashers,
                            options=self._options,
                            admit=lambda size: self._admit(source, size, master=master, owner=owner),
                            old=old,
                        )
            except OSError as exc:  # reading the source is translated below; this is writing (or closing) the copy
                if exc.errno not in _DISK_FULL:
                    raise
                need = max(tmp.stat().st_size if tmp.exists() else 0, self._pending.get(master.name, 0))
                free = _disk_free(self.master_dir)
                raise ImageDiskFull(_disk_full_message(source, self.master_dir, need=need, free=free, exc=exc)) from exc
            if got is None:
                tmp.unlink()
                assert old is not None
                old["checked"] = self.clock()
                return old
            headers = got
            meta: dict[str, Any] = {"source": display(source), **{a: h.hexdigest() for a, h in hashers.items()}}
            if want is not None and meta[want[0]] != want[1]:
                self._discard(master)
                raise ImageChecksumMismatch(
                    f"The image {display(source)} has {want[0]} {meta[want[0]]}, not {want[1]} as its checksum "
                    "says; it was not kept. Check the checksum you gave, or replace the image at its source."
                )
            os.chmod(tmp, 0o644)
            os.replace(tmp, master)  # nodes that hard-linked the old master keep the old file
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        finally:
            self._pending.pop(master.name, None)
            if self.budget_bytes > 0:
                with self.ledger.locked() as entries:
                    entries.pop(DOWNLOAD + master.name, None)
        meta.update(headers)
        meta["size"] = master.stat().st_size
        meta["checked"] = self.clock()
        if local is not None:
            meta["stamp"] = _stamp(local, source)
        return meta

    def _admit(self, source: str, size: int | None, *, master: Path, owner: str | None) -> None:
        """Before a download of ``size`` bytes: room on the disk (evicting unused masters) and in the budget."""
        if size is None:
            return
        self._pending[master.name] = size
        if self.budget_bytes > 0:
            with self.ledger.locked() as entries:
                key = DOWNLOAD + master.name
                others = {k: r for k, r in entries.items() if k != key}
                self._fit(others, size, who=owner or "The image cache", what=f"the image {display(source)}")
                entries[key] = Reservation(size, f"downloading {display(source)}", os.getpid())
        if self.max_bytes > 0:
            self._evict(keep={master.name}, target=max(0, self.max_bytes - size))
            if size > self.max_bytes:
                LOG.warning(
                    "image cache: %s (%s) alone is bigger than [images] max_cache_bytes (%s); storing it anyway, "
                    "as it is needed now",
                    display(source),
                    _size(size),
                    _size(self.max_bytes),
                )
        free = _disk_free(self.master_dir)
        if size > free:
            self._evict(keep={master.name}, target=max(0, sum(e.size for e in self._entries()) - (size - free)))
            free = _disk_free(self.master_dir)
            if size > free:
                raise ImageDiskFull(_disk_full_message(source, self.master_dir, need=size, free=free))

    def _copy_local(
        self,
        source: str,
        local: Path,
        out: Any,
        hashers: dict[str, Any],
        *,
        master: Path,
        owner: str | None,
    ) -> dict[str, Any]:
        try:
            fh = open(local, "rb")  # noqa: SIM115 - closed below; OSError here is the source's
        except OSError as exc:
            raise ImageError(
                f"Cannot read the image {local}: {exc.strerror}. Check the path and that Ironworks may read it."
            ) from exc
        with fh:
            self._admit(source, os.fstat(fh.fileno()).st_size, master=master, owner=owner)
            while chunk := fh.read(CHUNK):
                out.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
        return {}


def _thread_lock(path: str) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(path, threading.Lock())


def _disk_free(path: Path) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def _disk_full_message(source: str, where: Path, *, need: int, free: int, exc: OSError | None = None) -> str:
    why = f" ({exc.strerror})" if exc is not None else ""
    return (
        f"The image {display(source)} does not fit in the image cache {where}{why}: it needs {_size(need)} and "
        f"{_size(free)} is free there; nothing was kept. Free space on that file system, lower [images] "
        "max_cache_bytes so unused images are evicted sooner, or set [images] cache_dir to a larger file system."
    )


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


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


#: the public names, including the errors (defined in ironworks.images.errors)
__all__ = [
    "ALGORITHMS",
    "CleanupResult",
    "DiskBudgetExceeded",
    "ImageCache",
    "ImageChecksumMismatch",
    "ImageDiskFull",
    "ImageError",
    "ImageHttpError",
    "ImageSourceNotAllowed",
    "ImageUnreachable",
    "local_path",
    "parse_checksum",
]

_display = display  # the older private name, for callers that used it
