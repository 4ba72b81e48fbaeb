"""The boundary to ``ipmitool``: command lines, the password, retries, and what its errors mean.

Nothing above this module sees ipmitool's argv or stderr. ``IpmitoolClient`` runs one ipmitool
command per call through an injectable ``Runner`` (``run_subprocess`` by default) and returns its
stdout or raises a ``Bmc*`` error of ``ironworks.errors``.

The password never appears on the command line, which every user of the host can read
(``ps``, ``/proc/<pid>/cmdline``): it goes in the environment variable ``IPMI_PASSWORD`` and
ipmitool is given ``-E``. A process's environment is readable only by its owner and root, and
unlike ``-f <file>`` nothing is left on disk if the conductor dies mid-call. ``-E`` is always
given (an empty password is an empty variable): without a password option ipmitool prompts on
its terminal, so stdin is also closed.

ipmitool runs with ``-v``: without it, a wrong password and a BMC that does not answer both end in
the same line, "Error: Unable to establish IPMI v2 / RMCP+ session"; with it, ipmitool says which
step failed. The extra chatter ``-v`` adds (``_NOISE``) is dropped before classification.

Errors, classified from stderr by ``classify`` (one ordered table, ``_RULES``)::

    ipmitool says (ipmitool 1.8.19, stderr with -v)          ironworks.errors   retried
    RAKP 2 HMAC is invalid / unauthorized name / invalid    BmcAuthFailed      no
      role / Invalid user name / privilege level ...
    no response from RAKP 1 message (unknown user, quirk)   BmcAuthFailed      no
    insufficient resources for session / Node busy / ...    BmcRequestFailed   yes
    Address lookup ... failed                               BmcUnreachable     yes
    Get Auth Capabilities error / ... command failed /      BmcUnreachable     yes
      Unable to establish ... session; no exit in time
    Invalid command / Unsupported parameter / not supported BmcUnsupported     no
    anything else                                           BmcRequestFailed   no

Retries use tenacity with exponential backoff, bounded in attempts and in total time
(``RetryPolicy``), on top of ipmitool's own ``-R``/``-N`` per-message retries.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import tenacity

from ironworks.errors import BmcAuthFailed, BmcError, BmcRequestFailed, BmcUnreachable, BmcUnsupported, DriverError

PASSWORD_ENV = "IPMI_PASSWORD"
PRIV_LEVELS = ("ADMINISTRATOR", "OPERATOR", "USER", "CALLBACK")


class Runner(Protocol):
    """Runs a command: ``argv``, variables ``env`` added to the conductor's environment, a time bound.

    Returns ``(exit code, stdout, stderr)``; raises ``subprocess.TimeoutExpired`` past ``timeout``
    and ``FileNotFoundError`` when the program is missing.
    """

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> tuple[int, str, str]: ...


def run_subprocess(argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> tuple[int, str, str]:
    """The default ``Runner``: a child process with no terminal, killed after ``timeout`` seconds."""
    done = subprocess.run(
        list(argv),
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,  # ipmitool prompts for a missing password; never let it wait
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@dataclass(frozen=True, slots=True)
class Bridging:
    """Where to bridge requests behind the BMC (``transit_*`` only for dual bridging)."""

    target_channel: int
    target_address: int
    transit_channel: int | None = None
    transit_address: int | None = None


@dataclass(frozen=True, slots=True)
class IpmiTarget:
    """Where a BMC is and how to open a session with it."""

    address: str
    port: int = 623
    username: str = ""
    password: str = field(default="", repr=False)
    priv_level: str = "ADMINISTRATOR"
    protocol_version: str = "2.0"
    bridging: Bridging | None = None

    @property
    def label(self) -> str:
        """``address:port`` as operators write it (IPv6 in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try a BMC: ``attempts`` runs, backoff doubling from ``first_wait``, all within ``total``.

    ``lan_timeout`` and ``lan_retries`` are ipmitool's ``-N`` and ``-R`` (per message); every run
    is also killed after ``command_timeout`` seconds or when ``total`` is spent.
    """

    attempts: int = 3
    first_wait: float = 0.5
    max_wait: float = 2.0
    total: float = 18.0
    command_timeout: float = 10.0
    lan_timeout: int = 1
    lan_retries: int = 1
    sleep: Callable[[float], None] = time.sleep


# ---- what ipmitool's stderr means ---------------------------------------------------------------
_AUTH, _BUSY, _UNREACHABLE, _UNSUPPORTED, _STATE = "auth", "busy", "unreachable", "unsupported", "state"
_CHECK_CREDENTIALS = "check driver_info ipmi_username/ipmi_password"
_CHECK_PRIV = "check driver_info ipmi_priv_level (and the user's privilege on the BMC)"
_CHECK_ADDRESS = (
    "check driver_info ipmi_address and ipmi_port, that IPMI over LAN is enabled on the BMC and that "
    "its UDP port is reachable from this conductor"
)
#: (pattern, kind, what to check); the first match wins, so specific causes come before generic ones
_RULES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), kind, hint)
    for p, kind, hint in (
        (r"RAKP 2 HMAC is invalid|RAKP 4 message has invalid integrity", _AUTH, _CHECK_CREDENTIALS),
        (r"unauthorized name|invalid name length|Invalid user name|NULL user name", _AUTH, _CHECK_CREDENTIALS),
        # Quirk: pyghmi, and so VirtualBMC, answers Open Session but silently drops RAKP 1 for an
        # unknown user name, where real BMCs answer "unauthorized name". The BMC did answer. (ipmitool
        # then goes on to a "Set Session Privilege Level ... failed" without a reason: not a privilege
        # problem, hence this rule first.)
        (r"no response from RAKP 1 message", _AUTH, "check driver_info ipmi_username (the BMC ignored it)"),
        (
            r"invalid role|unauthorized role|Privilege Level to \w+ failed:|Insufficient privilege"
            r"|privilege level exceeds",
            _AUTH,
            _CHECK_PRIV,
        ),
        (r"Authentication type .* not supported|No supported authtypes", _AUTH, _CHECK_CREDENTIALS),
        (
            r"insufficient resources for session|No session slot|Node busy|BMC initialization in progress"
            r"|Out of space|: Timeout",
            _BUSY,
            "the BMC is busy or out of sessions; retry later, or reset the BMC if it persists",
        ),
        (r"Address lookup for .* failed", _UNREACHABLE, "check driver_info ipmi_address (name not resolved)"),
        (r"This BMC does not support IPMI v2", _UNSUPPORTED, "set driver_info ipmi_protocol_version to 1.5"),
        (r"not supported in present state", _STATE, "check the machine's current state"),
        (r"Invalid command|Unsupported parameter|not supported", _UNSUPPORTED, "this BMC does not offer it"),
        (
            r"Get Auth Capabilities|Get Channel Authentication Capabilities|Get Session Challenge command failed$"
            r"|Activate Session command failed|no response from RAKP 3|Could not open socket|Unable to establish",
            _UNREACHABLE,
            _CHECK_ADDRESS,
        ),
    )
)
_ERROR_CLASS: dict[str, type[BmcError]] = {
    _AUTH: BmcAuthFailed,
    _BUSY: BmcRequestFailed,
    _UNREACHABLE: BmcUnreachable,
    _UNSUPPORTED: BmcUnsupported,
    _STATE: BmcRequestFailed,
}
_RETRYABLE = frozenset({_BUSY, _UNREACHABLE})
#: lines ``-v`` adds to every run; they say nothing about a failure
_NOISE = re.compile(
    r"^(Loading IANA PEN Registry|Using best available cipher suite|Running Get VSO Capabilities"
    r"|Discovered IPMB address|RAW REQ|RAW RSP|(\s*[0-9a-f]{2})+\s*$)",
    re.IGNORECASE,
)


def diagnostic_lines(stderr: str) -> list[str]:
    """ipmitool's stderr without ``-v`` chatter and prompts, one message a line."""
    out: list[str] = []
    after_vso_probe = False
    for raw in stderr.splitlines():
        line = raw.strip().removeprefix("Password:").strip().lstrip("> ").strip()
        # the "Get VSO Capabilities" probe fails on most BMCs, harmlessly, on every run
        vso_echo = after_vso_probe and line.startswith("Invalid completion code received")
        after_vso_probe = line.startswith("Running Get VSO Capabilities")
        if line and not vso_echo and not _NOISE.match(line):
            out.append(line)
    return out


def classify(stderr: str) -> tuple[str, str] | None:
    """``(kind, what to check)`` for ipmitool's stderr, or None when no rule matches."""
    lines = diagnostic_lines(stderr)
    for pattern, kind, hint in _RULES:
        if any(pattern.search(line) for line in lines):
            return kind, hint
    return None


# ---- the client ----------------------------------------------------------------------------------
class IpmitoolClient:
    """Runs ipmitool commands against one BMC; every method returns plain values or raises ``Bmc*``."""

    def __init__(
        self,
        target: IpmiTarget,
        *,
        runner: Runner = run_subprocess,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        binary: str = "ipmitool",
    ) -> None:
        self.target = target
        self.runner = runner
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.binary = binary

    def argv(self, command: Sequence[str]) -> list[str]:
        """The full command line for ``command`` (e.g. ``["power", "status"]``); no secret in it."""
        t, p = self.target, self.retry
        argv = [self.binary, "-v", "-I", "lan" if t.protocol_version == "1.5" else "lanplus"]
        argv += ["-H", t.address, "-p", str(t.port), "-U", t.username, "-E", "-L", t.priv_level]
        b = t.bridging
        if b is not None:
            argv += ["-b", str(b.target_channel), "-t", hex(b.target_address)]
            if b.transit_channel is not None and b.transit_address is not None:
                argv += ["-B", str(b.transit_channel), "-T", hex(b.transit_address)]
        return [*argv, "-R", str(p.lan_retries), "-N", str(p.lan_timeout), *command]

    def run(self, *command: str) -> str:
        """Run ``command`` (retrying what may pass on its own); its stdout, or a ``Bmc*`` error."""
        p = self.retry
        deadline = self.clock() + p.total

        def wait(state: tenacity.RetryCallState) -> float:
            backoff = min(p.max_wait, p.first_wait * 2.0 ** (state.attempt_number - 1))
            return max(0.0, min(backoff, deadline - self.clock()))

        retrying = tenacity.Retrying(
            stop=lambda state: state.attempt_number >= p.attempts or self.clock() >= deadline,
            wait=wait,
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, BmcError) and bool(e.context.get("retryable"))),
            sleep=p.sleep,
            reraise=True,
        )
        return retrying(self._run_once, list(command), deadline)

    def _run_once(self, command: list[str], deadline: float) -> str:
        op = " ".join(command)
        timeout = max(0.1, min(self.retry.command_timeout, deadline - self.clock()))
        try:
            rc, out, err = self.runner(self.argv(command), {PASSWORD_ENV: self.target.password}, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BmcUnreachable(
                f"IPMI BMC {self.target.label} did not finish '{op}' within {timeout:.0f} s: {_CHECK_ADDRESS}.",
                bmc=self.target.label,
                retryable=True,
            ) from None
        except FileNotFoundError:
            raise DriverError(
                f"Cannot run '{self.binary}' for '{op}' on BMC {self.target.label}: it is not installed on this "
                "conductor (install the ipmitool package)."
            ) from None
        if rc == 0:
            return out
        raise self._error(op, rc, err)

    def _error(self, op: str, rc: int, stderr: str) -> BmcError:
        lines = list(dict.fromkeys(diagnostic_lines(stderr)))  # ipmitool repeats a line per retry
        detail = "; ".join(lines)[-300:] or f"exit code {rc}, no message"
        if self.target.password:
            detail = detail.replace(self.target.password, "***")
        kind, hint = classify(stderr) or ("", "see the BMC's logs")
        cls = _ERROR_CLASS.get(kind, BmcRequestFailed)
        what = {
            _AUTH: "rejected the credentials for",
            _UNREACHABLE: "could not be reached for",
            _UNSUPPORTED: "does not support",
            _BUSY: "is busy and refused",
        }.get(kind, "failed")
        return cls(
            f"IPMI BMC {self.target.label} {what} '{op}' (ipmitool: {detail}): {hint}.",
            bmc=self.target.label,
            operation=op,
            retryable=kind in _RETRYABLE,
        )

    # ---- operations ----------------------------------------------------------------------------
    def power_status(self) -> str:
        """``on`` or ``off`` (``chassis power status``)."""
        out = self.run("power", "status")
        m = re.search(r"Chassis Power is (on|off)", out)
        if m is None:
            raise BmcRequestFailed(
                f"IPMI BMC {self.target.label} answered 'power status' with {out.strip()[:200]!r}, "
                "not 'Chassis Power is on|off'.",
                bmc=self.target.label,
            )
        return m.group(1)

    def power(self, action: str) -> None:
        """``chassis power <action>``: ``on``, ``off``, ``soft``, ``cycle`` or ``reset``."""
        if action not in ("on", "off", "soft", "cycle", "reset"):
            raise ValueError(f"unknown ipmitool power action {action!r}")
        self.run("power", action)

    def set_boot_device(self, device: str, *, persistent: bool, efiboot: bool) -> None:
        """``chassis bootdev <device> [options=persistent][,efiboot]``."""
        options = [o for o, on in (("persistent", persistent), ("efiboot", efiboot)) if on]
        self.run("chassis", "bootdev", device, *([f"options={','.join(options)}"] if options else []))

    def boot_flags(self) -> BootFlags:
        """The boot flags (``chassis bootparam get 5``)."""
        out = self.run("chassis", "bootparam", "get", "5")
        try:
            return parse_boot_flags(out)
        except ValueError as exc:
            raise BmcRequestFailed(f"IPMI BMC {self.target.label}: {exc}", bmc=self.target.label) from None

    def disable_boot_flag_timeout(self) -> None:
        """Tell the BMC not to clear the boot flags 60 s after they are set (boot parameter 3)."""
        self.run("raw", "0x00", "0x08", "0x03", "0x08")


# ---- boot flags ----------------------------------------------------------------------------------
#: boot device selector (boot flags byte 2, bits 5:2; IPMI 2.0 table 28-14) -> Ironic's name
_SELECTORS = {1: "pxe", 2: "disk", 3: "safe", 5: "cdrom", 6: "bios"}


@dataclass(frozen=True, slots=True)
class BootFlags:
    """Boot parameter 5 as the BMC holds it; ``device`` None when there is no override ipmitool can name."""

    valid: bool
    persistent: bool
    efiboot: bool
    device: str | None
    selector: int


def parse_boot_flags(stdout: str) -> BootFlags:
    """Decode ``chassis bootparam get 5`` from its raw data line (``Boot parameter data: e004000000``).

    The raw bytes are decoded instead of the prose below them, whose wording differs between
    ipmitool versions.
    """
    m = re.search(r"Boot parameter data:\s*([0-9a-fA-F]{10})", stdout)
    if m is None:
        raise ValueError(f"no 'Boot parameter data' in the 'chassis bootparam get 5' output {stdout[:200]!r}")
    data = bytes.fromhex(m.group(1))
    selector = (data[1] >> 2) & 0x0F
    valid = bool(data[0] & 0x80)
    return BootFlags(
        valid=valid,
        persistent=bool(data[0] & 0x40),
        efiboot=bool(data[0] & 0x20),
        device=_SELECTORS.get(selector) if valid else None,
        selector=selector,
    )
