"""``petitboot`` boot interface: OpenPOWER machines whose firmware bootloader is petitboot (seed 004).

Petitboot needs no network boot program: it reads a pxelinux-style config (``label``, ``kernel``,
``initrd``, ``append``) whose location DHCP gives as option 209 (the path, ``<uuid>/config``)
relative to option 210 (the prefix: ``tftp://<server>/`` or ``<http_url>/`` by ``[petitboot]
protocol``), fetches kernel and initrd from the URLs in it and kexecs them. No option 67 is sent.

After deployment there is nothing to boot over the network: petitboot boots the disk itself (it
scans local disks for a bootloader config), so ``prepare_instance`` removes the config and keeps
the node's MACs answered without boot options.
"""

from __future__ import annotations

from pathlib import Path

from ironworks.drivers.base import Task
from ironworks.drivers.pxe import STATE_KEY, NetbootInterface
from ironworks.errors import ConfigError
from ironworks.netboot import layout as lay
from ironworks.netboot.dhcp import DhcpOption
from ironworks.netboot.render import render

PROTOCOLS = ("tftp", "http")


class PetitbootBoot(NetbootInterface):
    """Petitboot config at ``<root>/<uuid>/config``, announced with DHCP options 209 and 210."""

    name = "petitboot"

    def _protocol(self) -> str:
        protocol = self._config().petitboot.protocol.strip().lower()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"[petitboot] protocol is {protocol!r}; use one of: {', '.join(PROTOCOLS)}.")
        return protocol

    def _prefix(self, layout: lay.NetbootLayout) -> str:
        """Option 210: where option 209's relative path and the config's files are found."""
        if self._protocol() == "http":
            return f"{layout.http_url}/"
        return f"tftp://{layout.tftp_server}/"

    def image_root(self, layout: lay.NetbootLayout) -> Path:
        """The TFTP or HTTP root, by ``[petitboot] protocol``."""
        return layout.http_root if self._protocol() == "http" else layout.tftp_root

    def write_configs(
        self, task: Task, layout: lay.NetbootLayout, macs: list[str], *, boot: str, mode: str, params: list[str]
    ) -> None:
        """``<root>/<uuid>/config``; option 209 names it, so no per-MAC links are needed."""
        uuid = task.node.uuid
        prefix = self._prefix(layout)
        # petitboot has no IPAPPEND: BOOTIF is written out, for the first PXE-enabled NIC
        text = render(
            "petitboot",
            self._templates(),
            uuid=uuid,
            boot=boot,
            boot_mode=mode,
            params=params,
            cmdline=" ".join(params),
            kernel=f"{prefix}{uuid}/deploy_kernel",
            ramdisk=f"{prefix}{uuid}/deploy_ramdisk",
            mac=macs[0],
            bootif=f"BOOTIF=01-{lay.mac_dashes(macs[0])}",
        )
        lay.write_text(layout.node_dir(self.image_root(layout), uuid) / "config", text)

    def dhcp_options(self, task: Task, layout: lay.NetbootLayout, *, boot: str, mode: str) -> list[DhcpOption]:
        """209 = ``<uuid>/config``, 210 = the prefix; nothing at all for local boot."""
        if boot == "local":
            return []
        return [DhcpOption("209", f"{task.node.uuid}/config"), DhcpOption("210", self._prefix(layout))]

    def prepare_instance(self, task: Task) -> None:
        """Remove the config; the MACs stay answered, without boot options, and petitboot boots the disk."""
        layout = self._layout()
        lay.remove_node(layout, task.node.uuid)
        macs = [p.address.lower() for p in task.ports if p.pxe_enabled]
        if macs:
            try:
                self._provider().update_dhcp_opts(task.node.uuid, macs, [])
            except BaseException:
                self._remove_all(task, layout)
                raise
            task.node.driver_internal_info[STATE_KEY] = "instance"
        else:
            task.node.driver_internal_info.pop(STATE_KEY, None)
