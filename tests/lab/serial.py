"""A VM's serial console as the lab records it (libvirt appends it to ``logs/<vm>-serial.log``).

Everything a test or the deploy benchmark learns from inside a VM comes from there: the firmware
banner (a power-on or reboot), the kernel banner, the agent's log lines, the deployed image's markers.

* ``SerialLog.wait_for(pattern, after=offset)`` waits (bounded) for a regex in the text written after
  a byte offset and returns the match, where it ended and when it was first seen;
* ``SerialRecorder`` follows the log in a thread and stamps every line with the time it appeared,
  for phase timings (``bench/e2e_deploy_bench.py``): the log itself has no wall-clock timestamps.

Firmware starts: SeaBIOS prints ``SeaBIOS (version ...)`` once per start. OVMF prints no banner on a
serial-only machine; what it does print once per start is a burst of terminal resets (clear screen,
cursor home, ``ESC[=3h``) before its first ``BdsDxe:`` line, so one burst counts as one start.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEABIOS_BANNER = re.compile(rb"SeaBIOS \(version")
#: one burst of OVMF's console resets at start-up (it repeats them a few times in a row)
OVMF_START = re.compile(rb"(?:\x1b\[2J\x1b\[01;01H)+\x1b\[=3h(?:\x1b\[2J\x1b\[01;01H|\x1b\[=3h)*")
FIRMWARE_STARTS = {"bios": SEABIOS_BANNER, "uefi": OVMF_START}
#: poll interval of waits and of the recorder; the console writes a line every few ms at most
POLL_S = 0.05


@dataclass(frozen=True)
class SerialMatch:
    """A regex found in the serial log: the match, the offset just after it, when it was first seen."""

    match: re.Match[str]
    end: int
    seen_at: float  # time.time() of the poll that first saw it (at most POLL_S late)

    @property
    def text(self) -> str:
        """The matched text."""
        return self.match.group(0)


@dataclass
class SerialLog:
    """One VM's serial log file."""

    path: Path
    firmware: str = "bios"

    def read(self, after: int = 0) -> bytes:
        """The bytes written after offset ``after`` (empty before the VM first started)."""
        try:
            with self.path.open("rb") as f:
                f.seek(after)
                return f.read()
        except FileNotFoundError:
            return b""

    def offset(self) -> int:
        """The current end of the log: pass it as ``after`` to look only at what comes next."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def text(self, after: int = 0) -> str:
        """The log after ``after`` as text (undecodable bytes replaced; firmware escapes kept)."""
        return self.read(after).decode("utf-8", errors="replace")

    def firmware_starts(self, after: int = 0) -> int:
        """How many times the VM's firmware started after offset ``after``."""
        return len(FIRMWARE_STARTS[self.firmware].findall(self.read(after)))

    def wait_for(
        self,
        pattern: str | re.Pattern[str],
        *,
        after: int = 0,
        bound: float = 120.0,
        context: Callable[[], str] | None = None,
    ) -> SerialMatch:
        """Wait until ``pattern`` (multiline regex) appears after offset ``after``; AssertionError after ``bound``.

        The error carries the last lines of the log (and ``context()``, e.g. the server's log tail).
        """
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + bound
        while True:
            data = self.read(after)
            text = data.decode("utf-8", errors="replace")
            found = regex.search(text)
            if found is not None:
                end = after + len(text[: found.end()].encode("utf-8", errors="replace"))
                return SerialMatch(found, end, time.time())
            if time.monotonic() > deadline:
                tail = "\n".join(text.splitlines()[-25:]) or "<nothing written>"
                extra = context() if context is not None else ""
                raise AssertionError(
                    f"{regex.pattern!r} did not appear on the serial console {self.path.name} within {bound:.0f} s; "
                    f"last lines:\n{tail}{extra}"
                )
            time.sleep(POLL_S)


@dataclass
class SerialRecorder:
    """Follows a serial log from ``after`` in a thread, stamping each complete line with ``time.time()``.

    Use as a context manager around the flow being timed; ``lines`` is [(seen_at, line), ...].
    """

    log: SerialLog
    after: int = 0
    lines: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> SerialRecorder:
        self._thread = threading.Thread(target=self._follow, name=f"serial-{self.log.path.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        offset, partial = self.after, b""
        while True:
            stopping = self._stop.is_set()
            chunk = self.log.read(offset)
            offset += len(chunk)
            now = time.time()
            *complete, partial = (partial + chunk).split(b"\n")
            for raw in complete:
                self.lines.append((now, raw.decode("utf-8", errors="replace").rstrip("\r")))
            if stopping:  # one last read after the stop request, so nothing written before it is lost
                if partial:
                    self.lines.append((now, partial.decode("utf-8", errors="replace")))
                return
            self._stop.wait(POLL_S)
