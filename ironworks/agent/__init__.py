"""The Ironworks agent: the program in the utility ramdisk (standard library only).

It looks its node up by MAC address, heartbeats to the conductor with its agent token, serves the
IPA-compatible command API (``POST /v1/commands/``) and runs hardware managers::

    config.py     AgentConfig from the kernel command line and flags
    client.py     lookup and heartbeat against the Ironworks (or Ironic) API
    server.py     the agent's own HTTP API (token on every command, one command at a time)
    commands.py   extensions and their commands (standby, clean, deploy, service, log, rescue, system)
    hardware.py   hardware managers (entry points), step dispatch, the generic manager
    inventory.py  what the machine has (CPUs, memory, disks, NICs, system, BMC, boot mode)

The ramdisk stays small: nothing here may import a third-party package or the rest of Ironworks
(only this package's modules and the standard library).

This module holds the one seam every module shares: running an external program.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ironworks import __version__ as AGENT_VERSION

__all__ = ["AGENT_VERSION", "RunResult", "Runner", "run_command"]


@dataclass(frozen=True, slots=True)
class RunResult:
    """What an external program did."""

    returncode: int
    stdout: str
    stderr: str = ""


class Runner(Protocol):
    """Runs an external program; raises ``FileNotFoundError`` when it is not installed."""

    def __call__(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0) -> RunResult: ...


def run_command(argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0) -> RunResult:
    """Run ``argv`` (never through a shell) and capture its output as text."""
    proc = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False, errors="replace"
    )
    return RunResult(proc.returncode, proc.stdout, proc.stderr)
