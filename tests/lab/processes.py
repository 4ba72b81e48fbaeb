"""Long-running lab processes: started inside the namespace, recorded by PID, stopped by that PID only.

Every process gets a log file (stdout and stderr) and a PID file under the lab's work directory.
Stopping is SIGTERM, a bounded wait, then SIGKILL, and a PID is only ever signalled while it is
certainly ours: an unreaped child of this process (its PID cannot be reused before we reap it), or a
live process inside the namespace this lab created (daemons known from their own PID file, such as
virtlogd, and the children vbmcd forks).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.netns import Netns

#: bound for a process to exit after SIGTERM, then after SIGKILL
STOP_GRACE_S = 10.0


def venv_executable(name: str) -> Path:
    """A console script installed next to the running interpreter (the project's venv)."""
    exe = Path(sys.executable).with_name(name)
    if not exe.is_file():
        raise FileNotFoundError(f"{exe} is missing: install the test extra (`pip install -e '.[test]'`)")
    return exe


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or why it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc.strerror}>"
    return "\n".join(text.splitlines()[-lines:]) or f"<{path} is empty>"


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class LabProcess:
    """One process the lab started (``popen``) or adopted from a PID file (``popen`` is None)."""

    name: str
    pid: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def exit_code(self) -> int | None:
        """The exit code of a process we started once it has exited; None while it runs (or when adopted)."""
        return self.popen.poll() if self.popen is not None else None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        return log_tail(self.log_path, lines)


class ProcessTable:
    """The processes of one lab, in start order."""

    def __init__(self, ns: Netns, *, pid_dir: Path, log_dir: Path) -> None:
        self.ns = ns
        self.pid_dir = pid_dir
        self.log_dir = log_dir
        self.processes: list[LabProcess] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> LabProcess:
        """Start ``argv`` inside the namespace, its output in ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                self.ns.command(argv),
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # its own session: a Ctrl-C on the test run reaches pytest, whose teardown stops it
                start_new_session=True,
            )
        proc = LabProcess(name, popen.pid, log_path, popen)
        (self.pid_dir / f"{name}.pid").write_text(f"{popen.pid}\n")
        self.processes.append(proc)
        return proc

    def adopt(self, name: str, pid_file: Path, log_path: Path, *, bound: float = 10.0) -> LabProcess:
        """Record a daemon that wrote ``pid_file`` itself (waits for the file, bounded)."""
        deadline = time.monotonic() + bound
        while True:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().split()[0])
                if self.ns.owns(pid):
                    proc = LabProcess(name, pid, log_path)
                    self.processes.append(proc)
                    return proc
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not write a PID file of a live process at {pid_file} in {bound:.0f} s")
            time.sleep(0.1)

    def running(self, proc: LabProcess) -> bool:
        """Whether ``proc`` still runs (and is certainly the process we started)."""
        if proc.popen is not None:
            return proc.popen.poll() is None
        return self.ns.owns(proc.pid)

    def stop(self, proc: LabProcess, *, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM ``proc`` by PID, SIGKILL after ``grace`` seconds; forget it."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.running(proc):
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            self._wait(proc, grace)
        if proc.popen is not None and proc.popen.poll() is None:
            raise RuntimeError(f"{proc.name} (pid {proc.pid}) survived SIGKILL")
        with contextlib.suppress(ValueError):
            self.processes.remove(proc)
        (self.pid_dir / f"{proc.name}.pid").unlink(missing_ok=True)

    def _wait(self, proc: LabProcess, grace: float) -> None:
        if proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=grace)
            return
        deadline = time.monotonic() + grace
        while self.ns.owns(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop_pid_in_namespace(self, pid: int, name: str) -> None:
        """Stop a process known only by PID (a daemon's child, a leftover) if it lives in our namespace."""
        self.stop(LabProcess(name, pid, self.log_dir / f"{name}.log"))

    def stop_all(self) -> None:
        """Stop every recorded process, newest first."""
        for proc in reversed(list(self.processes)):
            self.stop(proc)
