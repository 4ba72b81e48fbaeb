"""AgentConfig: read once at start from the kernel command line and flags (flags win).

Kernel command line keys (``key=value``; ``ipa_api_url`` is read as ``ipa-api-url``)::

    ipa-api-url=http://10.0.0.1:6385     required: the Ironworks (or Ironic) API
    ipa-agent-token=TOKEN                a pre-generated agent token (wins over the one lookup returns)
    ipa-advertise-host=10.0.0.5          address the conductor calls back (default: the route to the API)
    ipa-advertise-port=9999              port the conductor calls back
    ipa-listen-host=0.0.0.0              address the agent API listens on
    ipa-listen-port=9999                 port it listens on (default: the advertise port)
    ipa-lookup-timeout=300               seconds to keep looking the node up
    ipa-heartbeat-timeout=300            overrides the heartbeat timeout lookup returns
    ipa-insecure=1                       do not verify the API's TLS certificate
    ironworks-device-allowlist=/dev/loop5,/tmp/disk.img
                                         the only block devices the agent may touch (tests, hosts)

Devices: in a ramdisk the agent may touch every disk of the machine. Anywhere else (a host, a test
run) it touches only the allowlisted devices, never powers the machine off and never changes a
password, so pointing it at a developer's machine cannot hurt it.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORT = 9999
DEFAULT_LOOKUP_TIMEOUT = 300.0
#: root filesystem types of an initramfs (the utility ramdisk)
RAMDISK_FS_TYPES = frozenset({"rootfs", "tmpfs", "ramfs"})

#: key → help; the same names serve as kernel command line keys and as ``--flags``
KEYS: dict[str, str] = {
    "ipa-api-url": "URL of the Ironworks API (required)",
    "ipa-agent-token": "pre-generated agent token",
    "ipa-advertise-host": "address the conductor calls the agent back on",
    "ipa-advertise-port": f"port the conductor calls the agent back on (default {DEFAULT_PORT})",
    "ipa-listen-host": "address the agent API listens on (default 0.0.0.0)",
    "ipa-listen-port": "port the agent API listens on (default: the advertise port)",
    "ipa-lookup-timeout": f"seconds to keep trying the lookup (default {DEFAULT_LOOKUP_TIMEOUT:g})",
    "ipa-heartbeat-timeout": "heartbeat timeout in seconds, overriding the one lookup returns",
    "ipa-insecure": "do not verify the API's TLS certificate (1/0)",
    "ironworks-device-allowlist": "comma-separated block devices or image files the agent may touch",
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class AgentConfigError(ValueError):
    """A setting is missing or invalid; the message names it and says what is expected."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent is told at start."""

    api_url: str
    agent_token: str | None = None
    advertise_host: str | None = None
    advertise_port: int = DEFAULT_PORT
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT
    heartbeat_timeout: float | None = None
    insecure: bool = False
    device_allowlist: tuple[str, ...] | None = None
    #: True only in a ramdisk and without an allowlist: the agent may then touch the whole machine
    ramdisk: bool = False
    #: where /proc and /sys are (tests point it at a fake tree)
    root: Path = Path("/")

    @property
    def allowed_devices(self) -> list[str] | None:
        """Devices the agent may touch: None means every device (ramdisk only); [] means none."""
        if self.device_allowlist is not None:
            return list(self.device_allowlist)
        return None if self.ramdisk else []


def parse_cmdline(text: str) -> dict[str, str]:
    """The ``ipa-*`` and ``ironworks-*`` keys of a kernel command line (a bare key reads as "1")."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise AgentConfigError(f"cannot parse the kernel command line: {exc}") from exc
    found: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.replace("_", "-")
        if key.startswith(("ipa-", "ironworks-")):
            found[key] = value if sep else "1"
    return found


def in_ramdisk(root: Path = Path("/")) -> bool:
    """Whether / is an initramfs (rootfs, tmpfs or ramfs), read from ``<root>/proc/mounts``."""
    try:
        lines = (root / "proc/mounts").read_text().splitlines()
    except OSError:
        return False
    fs_type = ""
    for line in lines:  # the last mount on / is the one in effect
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "/":
            fs_type = parts[2]
    return fs_type in RAMDISK_FS_TYPES


def build_config(values: Mapping[str, str], *, root: Path = Path("/"), ramdisk: bool | None = None) -> AgentConfig:
    """Check ``values`` (keys of ``KEYS``) and make an AgentConfig; ``ramdisk`` None means detect it."""
    api_url = values.get("ipa-api-url", "").strip().rstrip("/")
    if not api_url:
        raise AgentConfigError("ipa-api-url is required: pass ipa-api-url=http://<api-host>:6385 on the command line")
    parts = urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AgentConfigError(f"ipa-api-url must be an http(s) URL with a host, got {api_url!r}")
    advertise_port = _port(values, "ipa-advertise-port", DEFAULT_PORT)
    allowlist: tuple[str, ...] | None = None
    if "ironworks-device-allowlist" in values:
        allowlist = tuple(d.strip() for d in values["ironworks-device-allowlist"].split(",") if d.strip())
        bad = [d for d in allowlist if not d.startswith("/")]
        if bad:
            raise AgentConfigError(f"ironworks-device-allowlist takes absolute paths, got {', '.join(bad)}")
    detected = in_ramdisk(root) if ramdisk is None else ramdisk
    return AgentConfig(
        api_url=api_url,
        agent_token=values.get("ipa-agent-token") or None,
        advertise_host=values.get("ipa-advertise-host") or None,
        advertise_port=advertise_port,
        listen_host=values.get("ipa-listen-host") or "0.0.0.0",
        listen_port=_port(values, "ipa-listen-port", advertise_port),
        lookup_timeout=_seconds(values, "ipa-lookup-timeout") or DEFAULT_LOOKUP_TIMEOUT,
        heartbeat_timeout=_seconds(values, "ipa-heartbeat-timeout"),
        insecure=_bool(values, "ipa-insecure"),
        device_allowlist=allowlist,
        ramdisk=detected and allowlist is None,
        root=root,
    )


def load_config(argv: Sequence[str] | None = None, *, cmdline_path: Path = Path("/proc/cmdline")) -> AgentConfig:
    """Read the kernel command line at ``cmdline_path`` (if readable), then flags from ``argv``."""
    parser = argparse.ArgumentParser(prog="ironworks agent", description="The Ironworks utility-ramdisk agent.")
    for key, help_ in KEYS.items():
        parser.add_argument(f"--{key}", dest=key, default=None, help=help_)
    parser.add_argument("--cmdline-file", type=Path, default=cmdline_path, help="kernel command line to read")
    parser.add_argument("--root", type=Path, default=Path("/"), help="where /proc and /sys are (tests)")
    args = vars(parser.parse_args(argv))
    values: dict[str, str] = {}
    cmdline_file: Path = args.pop("cmdline_file")
    root: Path = args.pop("root")
    with contextlib.suppress(OSError):  # not on Linux, or no /proc: flags alone must do
        values.update(parse_cmdline(cmdline_file.read_text()))
    values.update({k: v for k, v in args.items() if v is not None})
    return build_config(values, root=root)


def _port(values: Mapping[str, str], key: str, default: int) -> int:
    raw = values.get(key)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise AgentConfigError(f"{key} must be a port number (1-65535), got {raw!r}") from None
    if not 0 < port < 65536:
        raise AgentConfigError(f"{key} must be a port number (1-65535), got {port}")
    return port


def _seconds(values: Mapping[str, str], key: str) -> float | None:
    raw = values.get(key)
    if raw is None or raw == "":
        return None
    try:
        secs = float(raw)
    except ValueError:
        raise AgentConfigError(f"{key} must be a number of seconds, got {raw!r}") from None
    if not secs > 0:
        raise AgentConfigError(f"{key} must be more than 0 seconds, got {raw!r}")
    return secs


def _bool(values: Mapping[str, str], key: str) -> bool:
    raw = values.get(key, "0").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise AgentConfigError(f"{key} must be 1 or 0 (true/false), got {raw!r}")
