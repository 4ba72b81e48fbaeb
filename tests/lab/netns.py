"""A network namespace made by the lab: create it, run commands and in-process clients inside it, delete it.

Two ways in, both bounded to this one namespace:

* a subprocess: ``ip netns exec NS argv...`` (``command()``, ``run()``); ``ip`` execs the command, so
  the PID a caller records is the command itself. It also gets a private mount namespace, which the
  libvirtd wrapper relies on for its bind mounts.
* an in-process client: ``executor()`` returns a one-thread pool whose thread has joined the namespace
  with ``setns(2)``. A network namespace is a per-thread attribute, so sockets that thread opens live
  in the lab while every other thread of the test process (pytest's included) stays in the root
  namespace. This is how tests reach services listening on the namespace's own 127.0.0.1.

The namespace's identity (the inode of its ``/run/netns`` handle) is recorded at creation, so
``owns(pid)`` can tell our processes from a PID that was reused, and ``delete()`` refuses to remove a
namespace of the same name that someone else created.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

#: from <sched.h>; Python 3.11 has no os.setns
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
#: bound for one ``ip`` call; they take milliseconds
IP_BOUND_S = 30.0

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """Creating, entering or deleting the lab's namespace failed."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_BOUND_S, stdin=subprocess.DEVNULL, check=False
    )
    if proc.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from ``/proc`` (``Z`` for a zombie), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name in parentheses may contain spaces: the state follows the last ')'
    return stat.rsplit(")", 1)[1].split()[0]


class Netns:
    """One network namespace this lab created (``create()``), identified by name and inode."""

    def __init__(self, name: str, inode: int) -> None:
        self.name = name
        self.inode = inode

    @classmethod
    def create(cls, name: str) -> Netns:
        """``ip netns add NAME`` and bring its loopback up; fails if the name is taken."""
        if (NETNS_DIR / name).exists():
            raise NetnsError(f"network namespace {name} already exists; the lab only uses namespaces it creates")
        _ip("netns", "add", name)
        ns = cls(name, (NETNS_DIR / name).stat().st_ino)
        try:
            _ip("-n", name, "link", "set", "lo", "up")
        except NetnsError:
            ns.delete()
            raise
        return ns

    @property
    def identity(self) -> str:
        """What ``readlink /proc/PID/ns/net`` prints for a process inside this namespace."""
        return f"net:[{self.inode}]"

    def exists(self) -> bool:
        """Whether ``/run/netns/NAME`` still names this very namespace."""
        try:
            return (NETNS_DIR / self.name).stat().st_ino == self.inode
        except OSError:
            return False

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is a live (non-zombie) process inside this namespace."""
        try:
            inside = os.readlink(f"/proc/{pid}/ns/net") == self.identity
        except OSError:
            return False
        return inside and process_state(pid) not in (None, "Z")

    def pids(self) -> list[int]:
        """Every live process inside the namespace."""
        if not self.exists():
            return []
        out = _ip("netns", "pids", self.name).stdout.split()
        return [int(p) for p in out if self.owns(int(p))]

    def ip(self, *args: str) -> None:
        """``ip -n NAME ARGS...`` (configure links and addresses inside the namespace)."""
        _ip("-n", self.name, *args)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace to completion (bounded); never raises on a non-zero exit."""
        return subprocess.run(
            self.command(argv),
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def enter_current_thread(self) -> None:
        """Move the calling thread (only it) into the namespace."""
        fd = os.open(NETNS_DIR / self.name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_ino != self.inode:
                raise NetnsError(f"/run/netns/{self.name} is no longer the namespace this lab created")
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NetnsError(f"setns into {self.name} failed: {os.strerror(err)}")
        finally:
            os.close(fd)

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """A one-thread pool living inside the namespace; what it runs opens its sockets there."""
        return concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"netns-{self.name}", initializer=self.enter_current_thread
        )

    def delete(self) -> None:
        """``ip netns del NAME``, only if the name still refers to the namespace created here."""
        if self.exists():
            _ip("netns", "del", self.name)
