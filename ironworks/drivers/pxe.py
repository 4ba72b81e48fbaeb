"""``pxe`` and ``ipxe`` boot interfaces: the machine network-boots the ramdisk, then its disk.

``pxe``: BIOS machines get PXELINUX over TFTP, UEFI machines GRUB (``grubnetx64.efi``); both read a
per-MAC config that points at the node's kernel and ramdisk on the TFTP root. ``ipxe``: plain PXE
firmware gets iPXE (``undionly.kpxe`` / ``snponly.efi``) over TFTP, and iPXE (also a NIC's own
iPXE ROM) gets the node's script over HTTP, which loads kernel and ramdisk over HTTP.

``prepare_ramdisk`` writes everything a boot needs (loaders, configs, per-MAC links, kernel and
ramdisk hard-linked from the image cache), then the DHCP options, then sets the next boot (once) to
the network through the management interface; when any part fails, what was written is removed and
the node's MACs are no longer answered, so nothing is left half-configured.
``prepare_instance`` replaces the ramdisk config by a local-boot one (a machine that PXE-boots
anyway boots its disk); ``clean_up_*`` remove every file and link of the node and set its MACs to
``ignore`` in DHCP. Where each file goes is described in ``ironworks.netboot.layout``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, ClassVar

from ironworks.config import Config
from ironworks.drivers.base import BootDevice, BootInterface, ManagementInterface, Task, ValidationError
from ironworks.drivers.capabilities import requested_boot_mode
from ironworks.errors import ConfigError, IronworksError
from ironworks.images.cache import ImageCache, local_path
from ironworks.netboot import layout as lay
from ironworks.netboot.dhcp import DhcpOption, DhcpProvider, dhcp_provider
from ironworks.netboot.render import kernel_params, render

LOG = logging.getLogger(__name__)
#: driver_internal_info key: what the node's boot files currently boot (``ramdisk`` or ``instance``)
STATE_KEY = "netboot"
RESCUE_STATES = ("rescuing", "rescue wait", "rescue")
PROPERTIES = {
    "deploy_kernel": "URL (http, https, file) or absolute path of the agent ramdisk's kernel. Required.",
    "deploy_ramdisk": "URL or absolute path of the agent ramdisk's initramfs. Required.",
    "deploy_kernel_checksum": "sha256:<hex> (or sha512:) the kernel must have. Optional.",
    "deploy_ramdisk_checksum": "sha256:<hex> (or sha512:) the initramfs must have. Optional.",
    "rescue_kernel": "kernel of the rescue ramdisk (default: deploy_kernel). Optional.",
    "rescue_ramdisk": "initramfs of the rescue ramdisk (default: deploy_ramdisk). Optional.",
    "kernel_append_params": "extra kernel parameters for this node's ramdisk. Optional.",
}


def boot_mode(task: Task, default: str) -> str:
    """``uefi`` or ``bios``: the requested capability, the observed mode, then ``default``."""
    mode, where = requested_boot_mode(task.node) or (default, "[netboot] default_boot_mode")
    return _check_mode(mode, where)


def _check_mode(mode: str, where: str) -> str:
    m = mode.strip().lower()
    if m not in ("bios", "uefi"):
        raise ValidationError(f"{where} is {mode!r}; network boot knows 'bios' and 'uefi'.")
    return m


class NetbootInterface(BootInterface):
    """What pxe, ipxe and petitboot share: images, rollback, clean-up, DHCP; subclasses say what to write."""

    properties: ClassVar[dict[str, str]] = PROPERTIES

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: the DHCP provider (tests may set their own); built from the config on first use
        self.dhcp: DhcpProvider | None = None
        self._cache: ImageCache | None = None

    # ---- hooks for each interface ---------------------------------------------------------
    def image_root(self, layout: lay.NetbootLayout) -> Path:
        """The root kernel and ramdisk are linked into."""
        return layout.tftp_root

    def loaders(self, mode: str) -> list[str]:
        """The boot loader files this interface places for ``mode`` (checked by ``validate``)."""
        return []

    def place_loaders(self, layout: lay.NetbootLayout, mode: str) -> None:
        """Put this interface's boot loaders into the roots."""

    def write_configs(
        self, task: Task, layout: lay.NetbootLayout, macs: list[str], *, boot: str, mode: str, params: list[str]
    ) -> None:
        """Write the node's configs and per-MAC links; ``boot`` is ``deploy`` or ``local``."""
        raise NotImplementedError

    def dhcp_options(self, task: Task, layout: lay.NetbootLayout, *, boot: str, mode: str) -> list[DhcpOption]:
        """The DHCP options the node's MACs get."""
        raise NotImplementedError

    # ---- BootInterface ----------------------------------------------------------------------
    def validate(self, task: Task) -> None:
        """A PXE-enabled port; the ramdisk's kernel and initramfs when the deploy boots one; usable URLs."""
        self._macs(task)
        layout = self._layout()
        problem = layout.unroutable_address()
        if problem:
            raise ValidationError(problem)
        for loader in self.loaders(boot_mode(task, self._config().netboot.default_boot_mode)):
            try:
                lay.check_loader(loader)
            except lay.BootFilesError as exc:
                raise ValidationError(exc.message) from exc
        deploy = "agent"
        with contextlib.suppress(Exception):  # the deploy interface may not be resolvable here
            deploy = getattr(task.interface("deploy"), "name", "agent")
        if deploy == "fake":
            return
        self._sources(task, instance=deploy == "ramdisk")  # a ramdisk deploy boots the instance's kernel

    def prepare_ramdisk(self, task: Task, *, params: dict[str, Any] | None = None) -> None:
        """Write the ramdisk boot (files, links, DHCP); on any failure remove it all again."""
        config = self._config()
        node = task.node
        extras = [
            ("[netboot] kernel_append_params", config.netboot.kernel_append_params),
            ("driver_info/kernel_append_params", node.driver_info.get("kernel_append_params") or ""),
            ("instance_info/kernel_append_params", node.instance_info.get("kernel_append_params") or ""),
        ]
        mode = self._write_boot(task, params, extras, self._sources(task), persistent=False)
        node.driver_internal_info[STATE_KEY] = "ramdisk"
        task.record(f"Network boot ({self.name}, {mode}) prepared for the ramdisk on {', '.join(self._macs(task))}")

    def _write_boot(
        self,
        task: Task,
        params: dict[str, Any] | None,
        extras: list[tuple[str, str]],
        sources: tuple[tuple[str, str | None], tuple[str, str | None]],
        *,
        persistent: bool,
    ) -> str:
        """Boot files, links and DHCP booting ``sources`` (kernel, ramdisk), then boot the network; the mode."""
        config = self._config()
        macs = self._macs(task)
        mode = boot_mode(task, config.netboot.default_boot_mode)
        layout = self._layout()
        problem = layout.unroutable_address()
        if problem:
            raise ValidationError(problem)
        node = task.node
        tokens = kernel_params(params, extras)
        (kernel_src, kernel_sum), (ramdisk_src, ramdisk_sum) = sources
        try:
            lay.remove_node(layout, node.uuid)
            self.place_loaders(layout, mode)
            cache = self._image_cache()
            node_dir = layout.node_dir(self.image_root(layout), node.uuid)
            for src, checksum, name in (
                (kernel_src, kernel_sum, "deploy_kernel"),
                (ramdisk_src, ramdisk_sum, "deploy_ramdisk"),
            ):
                master = cache.fetch(src, expected=checksum)
                cache.link_into(master, node_dir / name, on_copy=lambda m: task.record(m, severity="WARNING"))
            self.write_configs(task, layout, macs, boot="deploy", mode=mode, params=tokens)
            self._provider().update_dhcp_opts(
                node.uuid, macs, self.dhcp_options(task, layout, boot="deploy", mode=mode)
            )
            # the deploy left the boot device on disk (persistent); this one boot goes to the network
            # (a ramdisk deploy's instance boots from the network every time: persistent)
            mgmt = task.interface("management")
            if isinstance(mgmt, ManagementInterface):
                mgmt.set_boot_device(task, BootDevice.PXE, persistent=persistent)
        except BaseException as exc:
            self._remove_all(task, layout)
            if isinstance(exc, OSError):
                raise lay.BootFilesError(
                    f"Writing the network boot files of node {node.uuid} failed: {exc.strerror} ({exc.filename}). "
                    "Check that the [netboot] tftp_root and http_root are writable; nothing was left behind."
                ) from exc
            raise
        return mode

    def clean_up_ramdisk(self, task: Task) -> None:
        """Remove the ramdisk boot; a local-boot config written since (``prepare_instance``) stays."""
        if task.node.driver_internal_info.get(STATE_KEY) == "instance":
            return
        self._remove_all(task, self._layout(), strict=True)

    def prepare_instance(self, task: Task) -> None:
        """Write the local-boot config (and keep the DHCP options), so a PXE boot boots the disk.

        A ``ramdisk`` deploy's instance is ``instance_info/kernel`` + ``ramdisk``: written as the boot
        instead, booted from the network every time.
        """
        if getattr(task.interface("deploy"), "name", None) == "ramdisk":
            extras = [
                ("[netboot] kernel_append_params", self._config().netboot.kernel_append_params),
                ("instance_info/kernel_append_params", task.node.instance_info.get("kernel_append_params") or ""),
            ]
            mode = self._write_boot(task, None, extras, self._sources(task, instance=True), persistent=True)
            task.node.driver_internal_info[STATE_KEY] = "instance"
            task.record(f"Network boot ({self.name}, {mode}) prepared for the ramdisk instance")
            return
        macs = [p.address.lower() for p in task.ports if p.pxe_enabled]
        layout = self._layout()
        lay.remove_node(layout, task.node.uuid)
        if not macs:
            task.node.driver_internal_info.pop(STATE_KEY, None)
            return
        mode = boot_mode(task, self._config().netboot.default_boot_mode)
        try:
            self.place_loaders(layout, mode)
            self.write_configs(task, layout, macs, boot="local", mode=mode, params=[])
            self._provider().update_dhcp_opts(
                task.node.uuid, macs, self.dhcp_options(task, layout, boot="local", mode=mode)
            )
        except BaseException:
            self._remove_all(task, layout)
            raise
        task.node.driver_internal_info[STATE_KEY] = "instance"

    def clean_up_instance(self, task: Task) -> None:
        """Remove every boot file and link of the node; its MACs are no longer answered."""
        self._remove_all(task, self._layout(), strict=True)

    # ---- shared helpers ---------------------------------------------------------------------
    def _config(self) -> Config:
        if not isinstance(self.config, Config):
            raise ConfigError(f"The {self.name} boot interface was created without a configuration.")
        return self.config

    def _layout(self) -> lay.NetbootLayout:
        return lay.NetbootLayout.from_config(self._config())

    def _provider(self) -> DhcpProvider:
        if self.dhcp is None:
            self.dhcp = dhcp_provider(self._config())
        return self.dhcp

    def _image_cache(self) -> ImageCache:
        if self._cache is None:
            self._cache = ImageCache.from_config(self._config())
        return self._cache

    def _macs(self, task: Task) -> list[str]:
        macs = [p.address.lower() for p in task.ports if p.pxe_enabled]
        if not macs:
            raise ValidationError(
                f"Node {task.node.uuid} has no port with pxe_enabled = true, so it cannot network-boot with the "
                f"{self.name} boot interface. Create one with `baremetal port create <MAC> --node "
                f"{task.node.uuid}` (or set --pxe-enabled true on an existing port)."
            )
        return macs

    def _sources(self, task: Task, *, instance: bool = False) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
        """``((kernel, checksum), (ramdisk, checksum))`` from driver_info (rescue_* when rescuing), or for
        a ramdisk deploy's instance (``instance``) from instance_info/kernel and ramdisk."""
        info = task.node.instance_info if instance else task.node.driver_info
        where = "instance_info" if instance else "driver_info"
        rescuing = task.node.provision_state in RESCUE_STATES
        out: list[tuple[str, str | None]] = []
        for what in ("kernel", "ramdisk"):
            if instance:
                key = what
            else:
                key = f"rescue_{what}" if rescuing and info.get(f"rescue_{what}") else f"deploy_{what}"
            value = info.get(key)
            if instance and (not value or not isinstance(value, str)):
                raise ValidationError(
                    f"instance_info/{key} is missing: a ramdisk deploy with the {self.name} boot interface boots "
                    f"instance_info/kernel and ramdisk. Set it with `baremetal node set {task.node.uuid} "
                    f"--instance-info {key}=<URL>` (or use boot_iso with redfish-virtual-media)."
                )
            if not value or not isinstance(value, str):
                raise ValidationError(
                    f"driver_info/{key} is missing: the {self.name} boot interface needs the agent ramdisk's "
                    f"{what}. Set it with `baremetal node set {task.node.uuid} --driver-info {key}=<URL or path>` "
                    "(what `ironworks ramdisk build` produced)."
                )
            try:
                local = local_path(value)
                if local is not None and local.is_absolute():
                    self._image_cache().check_source(value)  # [images] allowed_file_dirs, before the node moves
            except IronworksError as exc:
                raise ValidationError(f"{where}/{key}: {exc.message}") from exc
            if local is not None and not local.is_absolute():
                raise ValidationError(f"{where}/{key} must be an absolute path or a URL, not {value!r}.")
            checksum = info.get(f"{key}_checksum")
            out.append((value, str(checksum) if checksum else None))
        return out[0], out[1]

    def _remove_all(self, task: Task, layout: lay.NetbootLayout, *, strict: bool = False) -> None:
        """Remove the node's files and links and stop answering its MACs; ``strict`` re-raises errors."""
        macs = [p.address.lower() for p in task.ports]
        try:
            lay.remove_node(layout, task.node.uuid)
            if macs:
                self._provider().clean_dhcp_opts(task.node.uuid, macs)
        except Exception as exc:
            if strict:
                raise
            LOG.warning("clean-up of node %s's network boot after a failure failed too: %s", task.node.uuid, exc)
            task.record(f"Removing the network boot files after a failure failed too: {exc}", severity="WARNING")
        task.node.driver_internal_info.pop(STATE_KEY, None)

    def _server_ip(self, layout: lay.NetbootLayout) -> list[DhcpOption]:
        """Option 66 (TFTP server name) and, when it is an address, siaddr (next-server) too."""
        import ipaddress

        opts = [DhcpOption("tftp-server", layout.tftp_server)]
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(layout.tftp_server).version == 4:
                opts.append(DhcpOption("server-ip-address", layout.tftp_server))
        return opts

    def _templates(self) -> dict[str, str]:
        nb = self._config().netboot
        return {
            "pxe_template": nb.pxe_template,
            "grub_template": nb.grub_template,
            "ipxe_template": nb.ipxe_template,
            "petitboot_template": nb.petitboot_template,
        }


class PxeBoot(NetbootInterface):
    """PXELINUX (BIOS) or GRUB (UEFI) over TFTP."""

    name = "pxe"

    def loaders(self, mode: str) -> list[str]:
        """pxelinux.0 + its modules (BIOS) or the GRUB network image (UEFI)."""
        nb = self._config().netboot
        return [nb.pxe_bios_loader, *nb.pxe_bios_modules] if mode == "bios" else [nb.pxe_uefi_loader]

    def place_loaders(self, layout: lay.NetbootLayout, mode: str) -> None:
        """The loaders into the TFTP root, and for GRUB its master config."""
        for loader in self.loaders(mode):
            lay.place_loader(loader, layout.tftp_root)
        if mode == "uefi":
            lay.write_text(layout.tftp_root / "grub" / "grub.cfg", render("grub_master", {}))

    def write_configs(
        self, task: Task, layout: lay.NetbootLayout, macs: list[str], *, boot: str, mode: str, params: list[str]
    ) -> None:
        """One PXELINUX config per node (BIOS) or one GRUB config per MAC (UEFI: BOOTIF is literal there)."""
        uuid = task.node.uuid
        node_dir = layout.node_dir(layout.tftp_root, uuid)
        ctx = {
            "uuid": uuid,
            "boot": boot,
            "boot_mode": mode,
            "params": params,
            "cmdline": " ".join(params),
        }
        if mode == "bios":
            config = node_dir / "config"
            kernel, ramdisk = f"{uuid}/deploy_kernel", f"{uuid}/deploy_ramdisk"
            lay.write_text(config, render("pxelinux", self._templates(), kernel=kernel, ramdisk=ramdisk, **ctx))
            for mac in macs:
                lay.link(config, layout.pxelinux_link(mac))
            return
        for mac in macs:
            config = node_dir / f"grub.cfg-01-{lay.mac_dashes(mac)}"
            text = render(
                "grub",
                self._templates(),
                kernel=f"/{uuid}/deploy_kernel",
                ramdisk=f"/{uuid}/deploy_ramdisk",
                mac=mac,
                bootif=f"BOOTIF=01-{lay.mac_dashes(mac)}",
                **ctx,
            )
            lay.write_text(config, text)
            for name in layout.grub_links(mac):
                lay.link(config, name)

    def dhcp_options(self, task: Task, layout: lay.NetbootLayout, *, boot: str, mode: str) -> list[DhcpOption]:
        """Bootfile pxelinux.0 (BIOS) or the GRUB image (UEFI), and the TFTP server."""
        nb = self._config().netboot
        loader = nb.pxe_bios_loader if mode == "bios" else nb.pxe_uefi_loader
        return [DhcpOption("bootfile-name", Path(loader).name), *self._server_ip(layout)]


class IpxeBoot(NetbootInterface):
    """iPXE: chain-loaded over TFTP (or the NIC's own ROM), then scripts, kernel and ramdisk over HTTP."""

    name = "ipxe"

    def image_root(self, layout: lay.NetbootLayout) -> Path:
        """Kernel and ramdisk are fetched over HTTP."""
        return layout.http_root

    def loaders(self, mode: str) -> list[str]:
        """undionly.kpxe and snponly.efi (both: the firmware's mode may differ from the node's record)."""
        nb = self._config().netboot
        return [nb.ipxe_bios_loader, nb.ipxe_uefi_loader]

    def place_loaders(self, layout: lay.NetbootLayout, mode: str) -> None:
        """The iPXE binaries on both roots, and the main boot.ipxe."""
        for loader in self.loaders(mode):
            for root in (layout.tftp_root, layout.http_root):
                lay.place_loader(loader, root)
        lay.write_text(layout.http_root / "boot.ipxe", render("ipxe_main", {}, http_url=layout.http_url))

    def write_configs(
        self, task: Task, layout: lay.NetbootLayout, macs: list[str], *, boot: str, mode: str, params: list[str]
    ) -> None:
        """``<http_root>/<uuid>/boot.ipxe`` and ``pxelinux.cfg/<mac>`` links to it."""
        uuid = task.node.uuid
        node_dir = layout.node_dir(layout.http_root, uuid)
        script = node_dir / "boot.ipxe"
        text = render(
            "ipxe",
            self._templates(),
            uuid=uuid,
            boot=boot,
            boot_mode=mode,
            params=params,
            cmdline=" ".join(params),
            kernel=layout.url_of(node_dir / "deploy_kernel"),
            ramdisk=layout.url_of(node_dir / "deploy_ramdisk"),
        )
        lay.write_text(script, text)
        for mac in macs:
            lay.link(script, layout.ipxe_link(mac))

    def dhcp_options(self, task: Task, layout: lay.NetbootLayout, *, boot: str, mode: str) -> list[DhcpOption]:
        """Plain PXE gets the iPXE binary for the architecture it reports; iPXE gets the node's script URL.

        The binary follows the firmware's client-arch (tag ``efi64``), not the node's recorded boot
        mode, so a node whose mode is unknown or wrong still reaches its script; the three tag sets
        exclude each other, so no dnsmasq precedence rule decides which line a client gets.
        """
        nb = self._config().netboot
        script = layout.url_of(layout.node_dir(layout.http_root, task.node.uuid) / "boot.ipxe")
        return [
            DhcpOption("bootfile-name", Path(nb.ipxe_uefi_loader).name, tags=("!ipxe", "efi64")),
            DhcpOption("bootfile-name", Path(nb.ipxe_bios_loader).name, tags=("!ipxe", "!efi64")),
            DhcpOption("bootfile-name", script, tags=("ipxe",)),
            *self._server_ip(layout),
        ]
