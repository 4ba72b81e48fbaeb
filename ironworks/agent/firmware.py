"""In-band firmware update: a vendor tarball with a top-level ``runme.sh`` (the utility-ramdisk
blueprint), downloaded, verified, unpacked into a fresh work dir and run there.

The tarball comes from an operator-given URL, so it is treated as hostile until proven otherwise:
every member is checked *before* anything is extracted (no absolute paths, no ``..``, no link or
symlink that resolves outside the work dir, even through other symlinks of the archive, no device
or FIFO, no duplicates, bounded total size), and extraction then also uses Python's ``data`` filter.

Checksums: ``sha256:<hex>``, ``sha512:<hex>``, or bare hex of those lengths. MD5 is accepted only
when spelled ``md5:<hex>`` (legacy vendor sites publish nothing else); a bare 32-digit hex is
refused, so a weak hash is never used by accident.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from ironworks.agent.errors import FirmwareError, UnsafeArchive

TAIL_LINES = 40
MAX_MEMBERS = 100_000
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SYMLINK_DEPTH = 40


def parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    """(algorithm, hex) for a firmware checksum string; None when no checksum was given."""
    if checksum is None or not checksum.strip():
        return None
    text = checksum.strip().lower()
    algo, _, value = text.rpartition(":")
    if not algo:
        algo = {64: "sha256", 128: "sha512"}.get(len(value), "")
        if len(value) == 32:
            raise FirmwareError("a bare 32-digit checksum looks like MD5, which is too weak; write md5:<hex> to use it")
    lengths = {"md5": 32, "sha256": 64, "sha512": 128}
    if lengths.get(algo) != len(value) or not re.fullmatch(r"[0-9a-f]+", value):
        raise FirmwareError(f"checksum {checksum!r} is not sha256:<hex>, sha512:<hex> or md5:<hex>")
    return algo, value


def _resolve(path: str, symlinks: dict[str, str], depth: int = 0) -> str | None:
    """Where ``path`` (relative to the work dir) ends up after following the archive's own symlinks;
    None when it leaves the work dir or loops."""
    if depth > _SYMLINK_DEPTH or path.startswith("/"):
        return None
    done: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        done.append(part)
        here = "/".join(done)
        if here in symlinks:
            target = symlinks[here]
            resolved = _resolve(posixpath.join(*done[:-1], target) if len(done) > 1 else target, symlinks, depth + 1)
            if resolved is None:
                return None
            done = resolved.split("/") if resolved else []
    return "/".join(done)


def check_members(members: Iterable[tarfile.TarInfo], *, max_bytes: int) -> None:
    """Raise UnsafeArchive unless extracting ``members`` stays inside an empty dir and has runme.sh."""
    seen: set[str] = set()
    symlinks: dict[str, str] = {}
    files: set[str] = set()
    total = count = 0
    has_runme = False
    members = list(members)
    for m in members:
        count += 1
        name = m.name
        norm = posixpath.normpath(name) if name else ""
        if not name or name.startswith("/") or "\\" in name or "\x00" in name:
            raise UnsafeArchive(f"member {name!r} has an absolute or odd path")
        if ".." in name.split("/"):
            raise UnsafeArchive(f"member {name!r} has a '..' component")
        parts = [p for p in name.split("/") if p]
        if "." in parts[1:]:  # a leading "./" is what `tar -C dir -czf x.tgz .` writes; others are odd
            raise UnsafeArchive(f"member {name!r} has a '.' component inside its path")
        if norm == "." and not m.isdir():
            # a file or link named "." would replace the work directory itself
            raise UnsafeArchive(f"member {name!r} is not a directory but names the archive's root")
        if norm in seen:
            raise UnsafeArchive(f"member {name!r} appears twice")
        seen.add(norm)
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()) or m.issparse():
            raise UnsafeArchive(f"member {name!r} is a device, FIFO or sparse file")
        if m.issym():
            symlinks[norm] = m.linkname
        if m.islnk() and posixpath.normpath(m.linkname) not in files:
            raise UnsafeArchive(
                f"hard link {name!r} -> {m.linkname!r} does not point to an earlier file of the archive"
            )
        if m.isfile():
            files.add(norm)
            total += m.size
        if norm == "runme.sh" and m.isfile():
            has_runme = True
    if count > MAX_MEMBERS:
        raise UnsafeArchive(f"the archive has more than {MAX_MEMBERS} members")
    if total > max_bytes:
        raise UnsafeArchive(f"the archive unpacks to {total} bytes, over the limit of {max_bytes}")
    for m in members:
        norm = posixpath.normpath(m.name)
        parent = posixpath.dirname(norm)
        if _resolve(parent, symlinks) is None:
            raise UnsafeArchive(f"member {m.name!r} would be written through a symlink leading outside")
        if m.issym() and _resolve(norm, symlinks) is None:
            raise UnsafeArchive(f"symlink {m.name!r} -> {m.linkname!r} points outside the work dir")
        if m.islnk() and (m.linkname.startswith("/") or _resolve(m.linkname, symlinks) is None):
            raise UnsafeArchive(f"hard link {m.name!r} -> {m.linkname!r} points outside the work dir")
    if not has_runme:
        raise UnsafeArchive("the archive has no top-level runme.sh")


def _download(url: str, dest: str, *, algo: str, timeout: float, max_bytes: int) -> str:
    hasher = hashlib.new(algo, usedforsecurity=algo != "md5")
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, 60)) as resp, open(dest, "wb") as out:
            while block := resp.read(1 << 20):
                size += len(block)
                if size > max_bytes:
                    raise UnsafeArchive(f"the firmware download from {url} is larger than {max_bytes} bytes", url=url)
                hasher.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError) as exc:
        raise FirmwareError(f"could not download the firmware from {url}: {exc}", url=url) from exc
    return hasher.hexdigest()


def _run(workdir: str, *, timeout: float, output: Callable[[str], None]) -> tuple[int | None, list[str]]:
    env = {"PATH": CLEAN_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "PWD": workdir}
    proc = subprocess.Popen(
        ["bash", "runme.sh"],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout kills the updater's children too
    )
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for raw in stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            output(line)

    reader = threading.Thread(target=pump, name="runme-output", daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # background leftovers of runme.sh, or all of it on timeout
        proc.wait()
        reader.join(timeout=5)
        stdout.close()
    return code, list(tail)


def update_firmware(
    url: str,
    checksum: str | None,
    *,
    timeout: float,
    output: Callable[[str], None],
    workdir_root: str | None = None,
    max_unpacked_bytes: int = 2 << 30,
) -> dict[str, Any]:
    """Download, verify, safely unpack and run a firmware tarball's runme.sh.

    Returns ``{"exit_code", "output_tail", "seconds"}``; a non-zero exit or a timeout raises
    FirmwareError carrying the last 40 lines of output. The work dir is removed in every case.
    """
    expected = parse_checksum(checksum)
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="firmware-", dir=workdir_root)
    try:
        tarball = os.path.join(workdir, "download.tar")
        algo = expected[0] if expected else "sha256"
        digest = _download(url, tarball, algo=algo, timeout=timeout, max_bytes=max_unpacked_bytes)
        if expected is None:
            output("WARNING: no checksum given for the firmware tarball; it was not verified")
        elif digest != expected[1]:
            raise FirmwareError(f"the firmware from {url} does not match its {expected[0]} checksum", url=url)
        unpack = os.path.join(workdir, "unpacked")
        os.mkdir(unpack, 0o700)
        try:
            with tarfile.open(tarball, "r:*") as tar:
                members = tar.getmembers()
                check_members(members, max_bytes=max_unpacked_bytes)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(unpack, members=members, filter="data")
                else:
                    # Python < 3.11.4 (Debian 12's 3.11.2, which the ramdisk ships) has no filters:
                    # check_members vetted every path and link; do what the data filter adds
                    for m in members:
                        m.mode &= 0o755  # no setuid/setgid/sticky, no group/other write
                        m.uid = m.gid = 0
                        m.uname = m.gname = ""
                    tar.extractall(unpack, members=members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UnsafeArchive(f"the firmware from {url} is not a readable tarball: {exc}", url=url) from exc
        os.unlink(tarball)
        code, tail = _run(unpack, timeout=timeout, output=output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(tail)
    if code is None:
        raise FirmwareError(f"runme.sh did not finish within {timeout:g} s; last output:\n{text}", output_tail=text)
    if code != 0:
        raise FirmwareError(f"runme.sh exited with {code}; last output:\n{text}", exit_code=code, output_tail=text)
    return {"exit_code": code, "output_tail": text, "seconds": round(time.monotonic() - started, 3)}
