"""The disk budget's ledger: bytes reserved per owner, in one JSON file shared by threads and processes.

The image cache (``ironworks.images.cache``) decides; this module only stores. Each entry is
``owner -> {"bytes", "what", "pid"}``: a node UUID for per-node files (remastered ISOs, which are
not hard links into the cache), or ``download:<master>`` for a download in flight, whose size counts
before its bytes land. Every read-modify-write runs under ``flock`` on ``<ledger>.lock``, so two
conductors on one host see one budget. In-flight entries of processes that died are dropped when
read (their partial files are gone or will be cleaned); node reservations stay until released.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: prefix of the ledger entries of downloads in flight
DOWNLOAD = "download:"


@dataclass(slots=True)
class Reservation:
    """``nbytes`` that ``owner`` needs for ``what``; ``pid`` is the process that asked."""

    nbytes: int
    what: str
    pid: int


class Ledger:
    """Reservations in ``path`` (JSON), changed only inside ``locked()``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Reservation]]:
        """The reservations, exclusively; changes made to the dict are written back on a clean exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a separate open() per call is a separate open file description, so flock also excludes threads
        with open(self.lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                entries = self._read()
                before = dict(entries)
                yield entries
                if entries != before:
                    self._write(entries)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def snapshot(self) -> dict[str, Reservation]:
        """The reservations now (a copy)."""
        with self.locked() as entries:
            return dict(entries)

    def _read(self) -> dict[str, Reservation]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # a torn or foreign file: start over rather than refuse every deploy
        out: dict[str, Reservation] = {}
        if not isinstance(raw, dict):
            return out
        for owner, value in raw.items():
            try:
                res = Reservation(int(value["bytes"]), str(value.get("what", "")), int(value.get("pid", 0)))
            except (TypeError, KeyError, ValueError):
                continue
            if owner.startswith(DOWNLOAD) and not _alive(res.pid):
                continue
            out[str(owner)] = res
        return out

    def _write(self, entries: dict[str, Reservation]) -> None:
        data = {k: {"bytes": r.nbytes, "what": r.what, "pid": r.pid} for k, r in sorted(entries.items())}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
