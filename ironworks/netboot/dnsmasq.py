"""The dnsmasq DHCP provider: one host file per MAC in dhcp-hostsdir, one option file per node in dhcp-optsdir.

Layout (both directories are read by dnsmasq, whether Ironworks runs it or an operator does)::

    <hostsdir>/ironworks-52-54-00-12-34-56.conf   52:54:00:12:34:56,set:node-<uuid>,set:iw-<generation>
                                                  (after clean-up: 52:54:00:12:34:56,ignore)
    <optsdir>/ironworks-node-<uuid>.conf          # Ironworks node <uuid>; MACs: 52:54:00:12:34:56
                                                  tag:node-<uuid>,tag:iw-<generation>,tag:!ipxe,option:bootfile-name,...

How dnsmasq learns of a change, measured with dnsmasq 2.90 (Debian 12) and matching its man page:

* New and changed files are read through inotify (``IN_CLOSE_WRITE``/``IN_MOVED_TO``) without a signal;
  dotfiles are skipped, so every file is written as a dotfile in the same directory and renamed into
  place: dnsmasq never reads a half-written file.
* Entries of a changed or removed file are *not* forgotten until SIGHUP or a restart; for a MAC the
  newest host entry wins, but an option line that is no longer in a file keeps being sent.
* SIGHUP with a lease of a host entry that sets a tag aborts dnsmasq 2.90 (``free(): invalid
  pointer``), so Ironworks never sends it.

Hence the generation tag: every distinct option set of a node gets its own tag ``iw-<hash>``, and
the MAC's host entry (newest wins) switches to it, so option lines of an earlier set -- still in
dnsmasq's memory -- match nobody. The generation is a hash of the options, so writing the same
options again changes no file at all. dnsmasq's memory grows by a few lines per change until its
next restart, which re-reads the directories as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ironworks.config import Config
from ironworks.errors import InvalidInput
from ironworks.netboot.dhcp import DhcpError, DhcpOption, DhcpProvider, normalize_macs, normalize_node_uuid

LOG = logging.getLogger(__name__)

#: option names dnsmasq 2.90 knows (``dnsmasq --help dhcp`` / ``--help dhcp6``)
DHCP4_OPTION_NAMES = frozenset(
    [
        "netmask",
        "time-offset",
        "router",
        "dns-server",
        "log-server",
        "lpr-server",
        "boot-file-size",
        "domain-name",
        "swap-server",
        "root-path",
        "extension-path",
        "ip-forward-enable",
        "non-local-source-routing",
        "policy-filter",
        "max-datagram-reassembly",
        "default-ttl",
        "mtu",
        "all-subnets-local",
        "router-discovery",
        "router-solicitation",
        "static-route",
        "trailer-encapsulation",
        "arp-timeout",
        "ethernet-encap",
        "tcp-ttl",
        "tcp-keepalive",
        "nis-domain",
        "nis-server",
        "ntp-server",
        "netbios-ns",
        "netbios-dd",
        "netbios-nodetype",
        "netbios-scope",
        "x-windows-fs",
        "x-windows-dm",
        "T1",
        "T2",
        "vendor-class",
        "nis+-domain",
        "nis+-server",
        "tftp-server",
        "bootfile-name",
        "mobile-ip-home",
        "smtp-server",
        "pop3-server",
        "nntp-server",
        "irc-server",
        "user-class",
        "rapid-commit",
        "client-arch",
        "client-interface-id",
        "client-machine-id",
        "posix-timezone",
        "tzdb-timezone",
        "ipv6-only",
        "domain-search",
        "sip-server",
        "classless-static-route",
        "vendor-id-encap",
        "tftp-server-address",
        "server-ip-address",
    ]
)
DHCP6_OPTION_NAMES = frozenset(
    [
        "sip-server-domain",
        "sip-server",
        "dns-server",
        "domain-search",
        "nis-server",
        "nis+-server",
        "nis-domain",
        "nis+-domain",
        "sntp-server",
        "information-refresh-time",
        "posix-timezone",
        "tzdb-timezone",
        "ntp-server",
        "bootfile-url",
        "bootfile-param",
    ]
)
#: a single DHCP option carries at most 255 bytes
MAX_VALUE_BYTES = 255
HOST_PREFIX = "ironworks-"
OPTS_PREFIX = "ironworks-node-"

_TAG = re.compile(r"^!?[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: characters that end, split or comment a dnsmasq line, or that its parser unquotes/unescapes
_BAD_VALUE_CHARS = frozenset('"\\#')


def dhcp_dirs(config: Config) -> tuple[Path, Path]:
    """``(hostsdir, optsdir)``: ``[dhcp] hostsdir``/``optsdir``, else under ``<state_dir>/dhcp``."""
    base = config.state_path / "dhcp"
    hosts = Path(config.dhcp.hostsdir) if config.dhcp.hostsdir else base / "hostsdir.d"
    opts = Path(config.dhcp.optsdir) if config.dhcp.optsdir else base / "optsdir.d"
    return hosts, opts


def node_tag(node_uuid: str) -> str:
    """The tag every MAC of a node carries."""
    return f"node-{node_uuid}"


def host_file_name(mac: str) -> str:
    """The hostsdir file of a (normalised) MAC."""
    return f"{HOST_PREFIX}{mac.replace(':', '-')}.conf"


def opts_file_name(node_uuid: str) -> str:
    """The optsdir file of a node."""
    return f"{OPTS_PREFIX}{node_uuid}.conf"


def _check_name(option: DhcpOption) -> str:
    """The option's key as dnsmasq spells it in a dhcp-option line."""
    name = str(option.name).strip()
    if option.ip_version not in (4, 6):
        raise InvalidInput(f"DHCP option {name!r} has ip_version {option.ip_version!r}; use 4 or 6.")
    v6 = option.ip_version == 6
    if name.isdigit():
        number, top = int(name), (65535 if v6 else 254)
        if not 1 <= number <= top:
            raise InvalidInput(
                f"DHCP option number {name} is out of range: DHCPv{option.ip_version} options are 1-{top}."
            )
        return f"option6:{number}" if v6 else str(number)
    known = DHCP6_OPTION_NAMES if v6 else DHCP4_OPTION_NAMES
    if name not in known:
        raise InvalidInput(
            f"DHCP option {name!r} is not an option name dnsmasq knows for DHCPv{option.ip_version}; "
            f"use its number, or one of: {', '.join(sorted(known))}."
        )
    return f"option6:{name}" if v6 else f"option:{name}"


def _check_value(option: DhcpOption) -> str:
    value = str(option.value)
    where = f"The value {value!r} of DHCP option {option.name!r}"
    if not value:
        raise InvalidInput(f"DHCP option {option.name!r} has an empty value.")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise InvalidInput(f"{where} contains whitespace or a control character, which would break its dnsmasq line.")
    bad = sorted(set(value) & _BAD_VALUE_CHARS)
    if bad:
        raise InvalidInput(f"{where} contains {' '.join(bad)}, which dnsmasq would read as a quote, escape or comment.")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise InvalidInput(f"{where} is longer than the {MAX_VALUE_BYTES} bytes one DHCP option can carry.")
    return value


def _check_tags(option: DhcpOption) -> list[str]:
    if isinstance(option.tags, str):
        raise InvalidInput(
            f"DHCP option {option.name!r}: tags must be a list of tag names, not the string {option.tags!r}."
        )
    for tag in option.tags:
        if not _TAG.match(str(tag)):
            raise InvalidInput(
                f"DHCP option {option.name!r} has the tag {tag!r}: a tag is letters, digits and '_.+-', "
                "optionally preceded by '!' to negate it."
            )
    return [str(t) for t in option.tags]


def render_option_bodies(options: Sequence[DhcpOption]) -> list[str]:
    """Each option as the part of its line after the node's tags: ``[tag:X,...]<key>,<value>``."""
    bodies = []
    for option in options:
        key, value, tags = _check_name(option), _check_value(option), _check_tags(option)
        bodies.append(",".join([*(f"tag:{t}" for t in tags), key, value]))
    return bodies


def generation_tag(node_uuid: str, bodies: Sequence[str]) -> str:
    """A tag naming this exact option set of this node (the same options give the same tag)."""
    digest = hashlib.sha256("\n".join([node_uuid, *bodies]).encode()).hexdigest()
    return f"iw-{digest[:12]}"


def write_atomically(path: Path, text: str) -> bool:
    """Replace ``path`` by ``text`` through a dotfile and a rename; False when it already held ``text``."""
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return False
    # a dotfile: dnsmasq's inotify handler and directory scan skip names starting with '.'
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


class DnsmasqDhcp(DhcpProvider):
    """Writes dnsmasq's dhcp-hostsdir and dhcp-optsdir; dnsmasq picks the files up through inotify."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hostsdir, self.optsdir = dhcp_dirs(config)

    def update_dhcp_opts(self, node_uuid: str, macs: Sequence[str], options: Sequence[DhcpOption]) -> None:
        """Make these MACs get ``options`` (tag ``node-<uuid>`` per MAC); idempotent; replaces earlier ones."""
        node = normalize_node_uuid(node_uuid)
        wanted = normalize_macs(macs)
        bodies = render_option_bodies(options)
        if not wanted:
            raise InvalidInput(f"Node {node} has no MAC address to configure DHCP for: add a PXE-enabled port.")
        gen = generation_tag(node, bodies)
        previous = self._recorded_macs(node)
        head = f"tag:{node_tag(node)},tag:{gen}"
        text = f"# Ironworks node {node}; MACs: {' '.join(wanted)}\n" + "".join(f"{head},{b}\n" for b in bodies)
        with self._io_errors(f"writing the DHCP options of node {node}"):
            self._ensure_dirs()
            # options first: a MAC switched to the new generation must find its options already there
            changed = write_atomically(self.optsdir / opts_file_name(node), text)
            for mac in wanted:
                changed |= write_atomically(
                    self.hostsdir / host_file_name(mac), f"{mac},set:{node_tag(node)},set:{gen}\n"
                )
            for mac in previous:
                if mac not in wanted:
                    changed |= self._ignore(mac, node)
        if changed:
            LOG.info("DHCP for node %s: %d option(s) for %s (%s)", node, len(bodies), ", ".join(wanted), gen)

    def clean_dhcp_opts(self, node_uuid: str, macs: Sequence[str]) -> None:
        """Stop answering these MACs for the node (host entry ``<mac>,ignore``); idempotent."""
        node = normalize_node_uuid(node_uuid)
        given = normalize_macs(macs)
        with self._io_errors(f"removing the DHCP options of node {node}"):
            every = list(dict.fromkeys([*given, *self._recorded_macs(node)]))
            self._ensure_dirs()
            ignored = [mac for mac in every if self._ignore(mac, node)]
            opts = self.optsdir / opts_file_name(node)
            removed = opts.exists()
            opts.unlink(missing_ok=True)
        if ignored or removed:
            LOG.info("DHCP for node %s cleaned up: %s now ignored", node, ", ".join(ignored) or "no MAC")

    def _ignore(self, mac: str, node: str) -> bool:
        """Write ``<mac>,ignore`` unless another node owns the MAC now; True when the file changed."""
        path = self.hostsdir / host_file_name(mac)
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = ""
        fields = current.strip().split(",")
        if len(fields) > 1 and fields[1].startswith("set:node-") and fields[1] != f"set:{node_tag(node)}":
            LOG.debug("DHCP: %s belongs to %s now; not ignoring it for node %s", mac, fields[1][4:], node)
            return False
        return write_atomically(path, f"{mac},ignore\n")

    def _recorded_macs(self, node: str) -> list[str]:
        """The MACs the node's option file says it was given (its first line)."""
        try:
            first = (self.optsdir / opts_file_name(node)).read_text().split("\n", 1)[0]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise DhcpError(f"Cannot read {self.optsdir / opts_file_name(node)}: {exc.strerror}.") from exc
        _, sep, rest = first.partition("MACs:")
        return _valid_macs(rest.split()) if sep else []

    def _ensure_dirs(self) -> None:
        for d in (self.hostsdir, self.optsdir):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _io_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise DhcpError(
                f"DHCP: {doing} failed: {exc.filename or ''}: {exc.strerror}. Check that [dhcp] hostsdir "
                f"({self.hostsdir}) and optsdir ({self.optsdir}) are writable directories."
            ) from exc


def _valid_macs(words: Iterable[str]) -> list[str]:
    """The words that are MACs (a hand-edited file must not stop a clean-up)."""
    found = []
    for word in words:
        with contextlib.suppress(InvalidInput):
            found.extend(normalize_macs([word]))
    return found
