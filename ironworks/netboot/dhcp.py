"""The DHCP provider interface: which options a node's MACs get while it network-boots.

Boot interfaces describe *what* a machine must be told (``DhcpOption``: bootfile, next server,
petitboot's 209/210 ...) and hand it to the provider that ``dhcp_provider(config)`` returns;
the provider decides *how* a DHCP server learns it. ``dnsmasq`` (``ironworks.netboot.dnsmasq``)
writes dnsmasq's host and option directories; ``none`` does nothing, for sites whose DHCP server
is configured by other means.

Well-known dnsmasq tags an option's ``tags`` may use (defined by the dnsmasq configuration that
Ironworks generates, and by the lines docs/netboot.md gives operators who run dnsmasq themselves):
``ipxe`` (the client is iPXE: user class ``iPXE`` or option 175), ``efi64`` (client-arch 7 or 9),
``efi-arm64`` (client-arch 11), ``bios`` (client-arch 0); ``!tag`` negates.
"""

from __future__ import annotations

import abc
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ironworks.config import Config
from ironworks.errors import ConfigError, DriverError, InvalidInput

LOG = logging.getLogger(__name__)

#: the tags the generated dnsmasq configuration sets (see the module docstring)
WELL_KNOWN_TAGS = ("ipxe", "efi64", "efi-arm64", "bios")
PROVIDERS = ("dnsmasq", "none")

_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


class DhcpError(DriverError):
    """The DHCP provider could not record a node's options (files not writable, server not told)."""

    reason = "dhcp_error"


@dataclass(frozen=True, slots=True)
class DhcpOption:
    """One DHCP option for a node's ports; ``tags`` narrow it further (dnsmasq tag names, "!x" negates)."""

    #: a dnsmasq option name or number: "bootfile-name" (67), "tftp-server" (66),
    #: "server-ip-address" (siaddr/next-server), "209", "210", ...
    name: str
    value: str
    tags: tuple[str, ...] = ()
    ip_version: int = 4


class DhcpProvider(abc.ABC):
    """Tells the DHCP server what a node's MACs get; every method is idempotent."""

    @abc.abstractmethod
    def update_dhcp_opts(self, node_uuid: str, macs: Sequence[str], options: Sequence[DhcpOption]) -> None:
        """Make these MACs get ``options`` (tag ``node-<uuid>`` per MAC); idempotent; replaces earlier ones.

        MACs that earlier calls gave to this node and that are not in ``macs`` stop being answered.
        Invalid input (a malformed MAC, option name, value or tag) raises ``InvalidInput`` before
        anything is written.
        """

    @abc.abstractmethod
    def clean_dhcp_opts(self, node_uuid: str, macs: Sequence[str]) -> None:
        """Stop answering these MACs for the node (dnsmasq: host entry ``<mac>,ignore``); idempotent."""


class NoDhcp(DhcpProvider):
    """``[dhcp] provider = "none"``: the site's DHCP server is configured by other means."""

    def update_dhcp_opts(self, node_uuid: str, macs: Sequence[str], options: Sequence[DhcpOption]) -> None:
        """Validate the MACs, then do nothing."""
        normalize_macs(macs)
        LOG.debug("DHCP provider 'none': not configuring %d MAC(s) of node %s", len(macs), node_uuid)

    def clean_dhcp_opts(self, node_uuid: str, macs: Sequence[str]) -> None:
        """Do nothing."""


def normalize_mac(mac: str) -> str:
    """``mac`` as lower-case colon-separated octets; ``InvalidInput`` when it is not a unicast MAC."""
    text = str(mac).strip().lower()
    if not _MAC.match(text):
        raise InvalidInput(
            f"{mac!r} is not a MAC address: expected six hexadecimal octets separated by ':' or '-', "
            "e.g. 52:54:00:12:34:56. Fix the port's address.",
            field="address",
        )
    if int(text[:2], 16) & 1:
        raise InvalidInput(
            f"MAC address {mac!r} is a multicast/broadcast address; a network card's port address is unicast.",
            field="address",
        )
    return text.replace("-", ":")


def normalize_macs(macs: Sequence[str]) -> list[str]:
    """Each MAC normalised, duplicates dropped, order kept."""
    if isinstance(macs, str):
        raise InvalidInput(f"expected a list of MAC addresses, got the single string {macs!r}", field="macs")
    return list(dict.fromkeys(normalize_mac(m) for m in macs))


def normalize_node_uuid(node_uuid: str) -> str:
    """The node's UUID in canonical form; it names a dnsmasq tag, so nothing else is accepted."""
    try:
        return str(uuid.UUID(str(node_uuid)))
    except ValueError:
        raise InvalidInput(f"{node_uuid!r} is not a node UUID.", field="node_uuid") from None


def dhcp_provider(config: Config) -> DhcpProvider:
    """The configured provider: ``[dhcp] provider = "dnsmasq"`` (default) or ``"none"`` (no-op)."""
    name = config.dhcp.provider.strip().lower()
    if name == "dnsmasq":
        from ironworks.netboot.dnsmasq import DnsmasqDhcp

        return DnsmasqDhcp(config)
    if name == "none":
        return NoDhcp()
    raise ConfigError(
        f"Configuration [dhcp] provider has the unknown value {config.dhcp.provider!r}; "
        f"choose one of: {', '.join(PROVIDERS)}."
    )
