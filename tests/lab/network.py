"""The lab's network as the network-boot tests see it: the bridge, its address, a free DHCP pool.

The bridge lives inside the lab's namespace and has no uplink: its ``/24`` holds only the bridge
address (``.1``), the lab's VMs and whatever DHCP hands them, so any pool in it is free for the
dnsmasq that Ironworks supervises (``[dhcp] manage_dnsmasq``). The bridge also has an IPv6 ULA
(``fd00:<x>::1/64``), only so that dnsmasq can send router advertisements (``[dhcp] enable_ra``):
without them iPXE waits ~13 s for IPv6 autoconfiguration before it does anything.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabNetwork:
    """The bridge ``bridge`` with ``<subnet_prefix>.1/24``, and the pool ``.dhcp_first``-``.dhcp_last``."""

    bridge: str
    subnet_prefix: str
    dhcp_first: int = 100
    dhcp_last: int = 200
    dhcp_lease: str = "10m"

    @property
    def address(self) -> str:
        """The bridge's address: what VMs reach the host side at (HTTP server, Ironworks, dnsmasq)."""
        return f"{self.subnet_prefix}.1"

    @property
    def ipv6_address(self) -> str:
        """The bridge's IPv6 ULA (``/64``): dnsmasq's router advertisements are built from it."""
        return f"fd00:{self.subnet_prefix.rsplit('.', 1)[1]}::1"

    @property
    def dhcp_range(self) -> str:
        """The free DHCP pool on the bridge subnet, in dnsmasq's ``--dhcp-range`` syntax."""
        first, last = f"{self.subnet_prefix}.{self.dhcp_first}", f"{self.subnet_prefix}.{self.dhcp_last}"
        return f"{first},{last},255.255.255.0,{self.dhcp_lease}"

    def dhcp_env(self) -> dict[str, str]:
        """``[dhcp]`` settings (environment form) for an Ironworks that runs dnsmasq on the bridge.

        Router advertisements are on: without them iPXE waits ~13 s for IPv6 autoconfiguration.
        """
        return {
            "IRONWORKS_DHCP_PROVIDER": "dnsmasq",
            "IRONWORKS_DHCP_MANAGE_DNSMASQ": "true",
            "IRONWORKS_DHCP_INTERFACE": self.bridge,
            "IRONWORKS_DHCP_DHCP_RANGE": self.dhcp_range,
            "IRONWORKS_DHCP_ENABLE_RA": "true",
        }

    def url(self, port: int) -> str:
        """``http://<bridge address>:<port>``: a service on the bridge, as a VM reaches it."""
        return f"http://{self.address}:{port}"
