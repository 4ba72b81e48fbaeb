"""A dnsmasq that ``ironworks serve`` / ``conductor`` runs itself (``[dhcp] manage_dnsmasq = true``).

The supervisor writes ``<state_dir>/dnsmasq/dnsmasq.conf`` from ``[dhcp]`` (and ``[netboot]``'s TFTP
root), checks it with ``dnsmasq --test``, starts dnsmasq in the foreground with only that file,
waits until it has bound its sockets (it writes its PID file then), restarts it with a bounded
backoff when it dies, and stops it by its PID (SIGTERM, then SIGKILL) on shutdown.

Why ``--keep-in-foreground`` and not ``--no-daemon``: the man page calls ``-d`` a debugging mode
(it also copies every log line to stderr); ``-k`` runs dnsmasq as in production without forking,
so the PID we started is dnsmasq's. Why ``--user=<our user>``: dnsmasq otherwise drops to
``nobody`` after start-up, and ``nobody`` cannot read the host/option directories and the TFTP root
inside Ironworks' private state directory (measured in the lab). It keeps the identity Ironworks
already has, no more.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ironworks.config import Config
from ironworks.errors import ConfigError
from ironworks.netboot.dnsmasq import dhcp_dirs, write_atomically

LOG = logging.getLogger(__name__)

UNKNOWN_MACS = ("ignore", "discovery")
#: bounds: dnsmasq binds its sockets in milliseconds
START_BOUND_S = 10.0
STOP_GRACE_S = 5.0
TEST_BOUND_S = 30.0


class DnsmasqStartError(ConfigError):
    """dnsmasq refused the generated configuration or did not start; the message quotes dnsmasq."""

    reason = "dnsmasq_failed"


@dataclass(frozen=True)
class DnsmasqFiles:
    """Where the managed dnsmasq keeps its configuration, PID, leases and log."""

    conf: Path
    pid: Path
    leases: Path
    log: Path
    tftp_root: Path


def tftp_root(config: Config) -> Path:
    """``[netboot] tftp_root``, else ``<state_dir>/tftpboot``."""
    return Path(config.netboot.tftp_root or config.state_path / "tftpboot").absolute()


def http_url(config: Config) -> str:
    """``[netboot] http_url``, else ``[api] public_url`` or ``http://<api host>:<port>``, plus ``/boot``."""
    if config.netboot.http_url:
        return config.netboot.http_url.rstrip("/")
    if config.api.public_url:
        return config.api.public_url.rstrip("/") + "/boot"
    host = f"[{config.api.host}]" if ":" in config.api.host else config.api.host
    return f"http://{host}:{config.api.port}/boot"


def dnsmasq_files(config: Config) -> DnsmasqFiles:
    """The managed dnsmasq's files under the state directory."""
    state = config.state_path.absolute()
    run = state / "dnsmasq"
    return DnsmasqFiles(
        run / "dnsmasq.conf",
        run / "dnsmasq.pid",
        run / "dnsmasq.leases",
        state / "logs" / "dnsmasq.log",
        tftp_root(config),
    )


def check_managed_config(config: Config) -> None:
    """``ConfigError`` naming the ``[dhcp]`` key that a managed dnsmasq cannot do without."""
    d = config.dhcp
    for key, value in (("interface", d.interface), ("dhcp_range", d.dhcp_range)):
        if not value.strip():
            raise ConfigError(
                f"[dhcp] manage_dnsmasq is on but [dhcp] {key} is empty: set the provisioning network's "
                + (
                    "interface (e.g. eth1)."
                    if key == "interface"
                    else "range in dnsmasq syntax (e.g. 192.168.77.100,192.168.77.200,255.255.255.0,10m)."
                )
            )
        if any(ch in value for ch in "\n\r#") or (key == "interface" and "," in value):
            raise ConfigError(f"[dhcp] {key} = {value!r} contains characters that do not belong in it.")
    if d.unknown_macs not in UNKNOWN_MACS:
        raise ConfigError(f"[dhcp] unknown_macs = {d.unknown_macs!r}; choose one of: {', '.join(UNKNOWN_MACS)}.")
    for line in d.extra_options:
        if "\n" in line or "\r" in line:
            raise ConfigError(f"[dhcp] extra_options holds {line!r}: one dnsmasq option per list item, no newlines.")
    files, (hosts, opts) = dnsmasq_files(config), dhcp_dirs(config)
    for key, path in (
        ("state_dir", files.conf),
        ("[dhcp] hostsdir", hosts),
        ("[dhcp] optsdir", opts),
        ("[netboot] tftp_root", files.tftp_root),
    ):
        # dnsmasq.conf has no quoting for paths: these would split or comment its line
        if any(ch.isspace() or ch in '#",' for ch in str(path.absolute())):
            raise ConfigError(f"{key} {path} contains a space, '#', '\"' or ',', which dnsmasq.conf cannot hold.")
    if shutil.which(d.dnsmasq_binary) is None:
        raise ConfigError(
            f"[dhcp] dnsmasq_binary = {d.dnsmasq_binary!r} is not an executable on PATH: install dnsmasq "
            "(Debian: dnsmasq-base) or set the key to its full path."
        )


def render_conf(config: Config) -> list[tuple[str, str]]:
    """The generated dnsmasq.conf as ``(line, config key it comes from)`` pairs."""
    d, files = config.dhcp, dnsmasq_files(config)
    hosts, opts = dhcp_dirs(config)
    iface = d.interface.strip()
    lines: list[tuple[str, str]] = [
        ("# Generated by Ironworks at every start from [dhcp]; edits are lost (use [dhcp] extra_options).", ""),
        ("port=0", ""),  # DHCP and TFTP only: no DNS server on the provisioning network
        (f"interface={iface}", "[dhcp] interface"),
        ("bind-interfaces", "[dhcp] interface"),
        (f"dhcp-range={d.dhcp_range.strip()}", "[dhcp] dhcp_range"),
        (f"dhcp-leasefile={files.leases}", ""),
        (f"dhcp-hostsdir={hosts.absolute()}", "[dhcp] hostsdir"),
        (f"dhcp-optsdir={opts.absolute()}", "[dhcp] optsdir"),
        ("enable-tftp", ""),
        (f"tftp-root={files.tftp_root}", "[netboot] tftp_root"),
        # the well-known tags boot interfaces' options may use (ironworks.netboot.dhcp)
        ("dhcp-match=set:ipxe,175", ""),
        ("dhcp-userclass=set:ipxe,iPXE", ""),
        ("dhcp-match=set:efi64,option:client-arch,7", ""),
        ("dhcp-match=set:efi64,option:client-arch,9", ""),
        ("dhcp-match=set:efi-arm64,option:client-arch,11", ""),
        ("dhcp-match=set:bios,option:client-arch,0", ""),
    ]
    if d.unknown_macs == "ignore":
        lines.append(("dhcp-ignore=tag:!known", "[dhcp] unknown_macs"))
    else:
        # the loaders' names in the TFTP root, and the default script, as [netboot]'s layout has them
        bios = Path(config.netboot.ipxe_bios_loader).name
        uefi = Path(config.netboot.ipxe_uefi_loader).name
        for tags, value in (
            ("tag:!ipxe,tag:bios", bios),
            ("tag:!ipxe,tag:efi64", uefi),
            ("tag:ipxe", f"{http_url(config)}/default.ipxe"),
        ):
            lines.append((f"dhcp-option=tag:!known,{tags},option:bootfile-name,{value}", "[dhcp] unknown_macs"))
    if d.enable_ra:
        lines.append(("enable-ra", "[dhcp] enable_ra"))
        lines.append((f"dhcp-range=::,constructor:{iface},ra-only", "[dhcp] enable_ra"))
    lines.append(("log-dhcp", ""))
    lines.append((f"log-facility={files.log}", ""))
    lines.extend((line.strip(), "[dhcp] extra_options") for line in d.extra_options if line.strip())
    return lines


def explain(message: str, lines: list[tuple[str, str]]) -> str:
    """Name the configuration key behind dnsmasq's error message."""
    match = re.search(r"at line (\d+) of ", message)
    key = ""
    if match and 0 < int(match.group(1)) <= len(lines):
        key = lines[int(match.group(1)) - 1][1]
    elif "interface" in message:
        key = "[dhcp] interface"
    elif "dhcp-range" in message or "address range" in message:
        key = "[dhcp] dhcp_range"
    elif "tftp" in message.lower():
        key = "[netboot] tftp_root"
    elif "Address already in use" in message:
        return f"{message} (another DHCP server already listens on [dhcp] interface: stop it or use another interface)"
    return f"{message} (check {key})" if key else message


def _command(config: Config, files: DnsmasqFiles, *extra: str) -> list[str]:
    user = pwd.getpwuid(os.geteuid()).pw_name
    return [
        config.dhcp.dnsmasq_binary,
        *extra,
        f"--user={user}",
        f"--pid-file={files.pid}",
        f"--conf-file={files.conf}",
    ]


def _ours(pid: int, files: DnsmasqFiles) -> bool:
    """Whether ``pid`` is a live dnsmasq started with our configuration file."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and f"--conf-file={files.conf}".encode() in argv


def _signal_and_wait(pid: int, files: DnsmasqFiles, popen: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, a bounded wait, then SIGKILL; only while ``pid`` is still our dnsmasq."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = popen.poll() is None if popen is not None else _ours(pid, files)
        if not alive:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            if (popen.poll() is not None) if popen is not None else not _ours(pid, files):
                return
            time.sleep(0.05)


class DnsmasqSupervisor:
    """Runs one dnsmasq for ``[dhcp] interface``, restarts it when it dies, stops it by PID."""

    def __init__(
        self, config: Config, *, backoff_initial: float = 0.5, backoff_max: float = 30.0, stable_after: float = 60.0
    ) -> None:
        self.config = config
        self.files = dnsmasq_files(config)
        self.backoff_initial, self.backoff_max, self.stable_after = backoff_initial, backoff_max, stable_after
        self.restarts = 0
        self._lines: list[tuple[str, str]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The running dnsmasq's PID."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Write and check the configuration, start dnsmasq, and supervise it; ``DnsmasqStartError`` if it fails."""
        check_managed_config(self.config)
        self._lines = render_conf(self.config)
        hosts, opts = dhcp_dirs(self.config)
        for d in (self.files.conf.parent, self.files.log.parent, hosts, opts, self.files.tftp_root):
            d.mkdir(parents=True, exist_ok=True)
        write_atomically(self.files.conf, "".join(f"{line}\n" for line, _ in self._lines))
        self._stop_leftover()
        self._test()
        with self._lock:
            self._launch()
        self._watcher = threading.Thread(target=self._watch, name="dnsmasq-supervisor", daemon=True)
        self._watcher.start()
        LOG.info(
            "dnsmasq (pid %s) serves DHCP and TFTP on %s; log: %s", self.pid, self.config.dhcp.interface, self.files.log
        )

    def stop(self) -> None:
        """Stop dnsmasq by its PID (SIGTERM, then SIGKILL) and the supervision; idempotent."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _signal_and_wait(proc.pid, self.files, proc)
        if self._watcher is not None:
            self._watcher.join(timeout=STOP_GRACE_S * 3)
        self.files.pid.unlink(missing_ok=True)

    def _test(self) -> None:
        try:
            done = subprocess.run(
                _command(self.config, self.files, "--test"),
                capture_output=True,
                text=True,
                timeout=TEST_BOUND_S,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DnsmasqStartError(f"Running `{self.config.dhcp.dnsmasq_binary} --test` failed: {exc}.") from exc
        if done.returncode != 0:
            said = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
            raise DnsmasqStartError(
                f"dnsmasq rejects the configuration generated in {self.files.conf}: {explain(said, self._lines)}."
            )

    def _stop_leftover(self) -> None:
        """A dnsmasq left by an Ironworks that was killed holds the DHCP port: stop it, by its recorded PID."""
        try:
            pid = int(self.files.pid.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if _ours(pid, self.files):
            LOG.warning("stopping dnsmasq pid %d left running by an earlier Ironworks with %s", pid, self.files.conf)
            _signal_and_wait(pid, self.files, None)

    def _launch(self) -> None:
        """Start dnsmasq and wait until it wrote its PID file (sockets bound); caller holds the lock."""
        self.files.pid.unlink(missing_ok=True)
        self._stderr.clear()
        try:
            proc = subprocess.Popen(
                _command(self.config, self.files, "--keep-in-foreground"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                # its own session: a Ctrl-C in the terminal reaches Ironworks, which then stops dnsmasq
                start_new_session=True,
            )
        except OSError as exc:
            raise DnsmasqStartError(f"Starting {self.config.dhcp.dnsmasq_binary} failed: {exc}.") from exc
        reader = threading.Thread(target=self._read_stderr, args=(proc.stderr,), name="dnsmasq-stderr", daemon=True)
        reader.start()
        self._proc, self._started_at = proc, time.monotonic()
        deadline = time.monotonic() + START_BOUND_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                reader.join(timeout=2.0)
                said = " ".join(" ".join(self._stderr).split()) or "no message"
                raise DnsmasqStartError(
                    f"dnsmasq exited with code {proc.returncode} at start: {explain(said, self._lines)}. "
                    f"Its log: {self.files.log}."
                )
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(self.files.pid.read_text().split()[0]) == proc.pid:
                    return
            time.sleep(0.05)
        _signal_and_wait(proc.pid, self.files, proc)
        raise DnsmasqStartError(f"dnsmasq did not finish starting in {START_BOUND_S:.0f} s; see {self.files.log}.")

    def _read_stderr(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with stream:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self._stderr.append(line)
                    LOG.warning("dnsmasq: %s", line)

    def _watch(self) -> None:
        """Restart dnsmasq when it exits, waiting ``backoff_initial`` doubling up to ``backoff_max``."""
        delay = self.backoff_initial
        while True:
            proc = self._proc
            if proc is not None:
                code = proc.wait()
                if self._stopping.is_set():
                    return
                if time.monotonic() - self._started_at >= self.stable_after:
                    delay = self.backoff_initial
                said = " ".join(self._stderr)
                LOG.error(
                    "dnsmasq (pid %d) exited with code %s%s; restarting it in %.1f s",
                    proc.pid,
                    code,
                    f": {said}" if said else "",
                    delay,
                )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.backoff_max)
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._launch()
                except DnsmasqStartError as exc:
                    self._proc = None
                    LOG.error("restarting dnsmasq failed: %s Next attempt in %.1f s.", exc, delay)
                    continue
            self.restarts += 1
            LOG.warning("dnsmasq restarted (pid %s, restart %d)", self.pid, self.restarts)
