"""Where network boot files live: the TFTP and HTTP roots, per-node directories, per-MAC links, loaders.

::

    <tftp_root>/pxelinux.0, ldlinux.c32        PXELINUX (BIOS PXE), placed on first use
    <tftp_root>/grubnetx64.efi                 GRUB (UEFI PXE); its prefix is /grub
    <tftp_root>/grub/grub.cfg                  GRUB master config: loads grub/<mac>.conf
    <tftp_root>/grub/grub.cfg-01-<mac-dashes>  -> ../<uuid>/grub.cfg-01-<mac-dashes> (GRUB's own search)
    <tftp_root>/grub/<mac>.conf                -> the same file (what the master config loads)
    <tftp_root>/pxelinux.cfg/01-<mac-dashes>   -> ../<uuid>/config (PXELINUX looks it up by MAC)
    <tftp_root>/undionly.kpxe, snponly.efi     iPXE for plain PXE firmware (also in <http_root>)
    <tftp_root>/<uuid>/config                  PXELINUX or petitboot (tftp) config of the node
    <tftp_root>/<uuid>/deploy_kernel, deploy_ramdisk   hard links to the image cache
    <http_root>/boot.ipxe                      chains pxelinux.cfg/<mac-dashes> of each NIC
    <http_root>/pxelinux.cfg/<mac-dashes>      -> ../<uuid>/boot.ipxe
    <http_root>/<uuid>/boot.ipxe, config, deploy_kernel, deploy_ramdisk

All links are relative symlinks, so a root can be moved or served from another path as a whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ironworks.config import Config
from ironworks.errors import ConfigError, DriverError

#: Debian package that ships each default loader (named in the error when one is missing)
LOADER_PACKAGES = {
    "pxelinux.0": "pxelinux",
    "lpxelinux.0": "pxelinux",
    "ldlinux.c32": "syslinux-common",
    "grubnetx64.efi": "grub-efi-amd64-bin",
    "undionly.kpxe": "ipxe",
    "snponly.efi": "ipxe",
    "ipxe.efi": "ipxe",
}


class BootFilesError(DriverError):
    """Boot files could not be written or a boot loader is missing."""

    reason = "boot_files_error"


def mac_dashes(mac: str) -> str:
    """``52:54:00:ab:cd:ef`` -> ``52-54-00-ab-cd-ef`` (PXELINUX, GRUB and iPXE ``:hexhyp`` spell it so)."""
    return mac.lower().replace(":", "-")


@dataclass(frozen=True, slots=True)
class NetbootLayout:
    """The resolved ``[netboot]`` locations."""

    tftp_root: Path
    http_root: Path
    #: URL of http_root as machines reach it, without a trailing slash
    http_url: str
    #: TFTP server address machines are given
    tftp_server: str

    @classmethod
    def from_config(cls, config: Config) -> NetbootLayout:
        """Resolve defaults: roots under the state dir, URL from ``[api]``, TFTP server from the URL."""
        nb = config.netboot
        tftp_root = Path(nb.tftp_root) if nb.tftp_root else config.state_path / "tftpboot"
        http_root = Path(nb.http_root) if nb.http_root else config.state_path / "httpboot"
        if nb.http_url:
            http_url = nb.http_url.rstrip("/")
        elif config.api.public_url:
            http_url = config.api.public_url.rstrip("/") + "/boot"
        else:
            host = config.api.host
            host = f"[{host}]" if ":" in host else host
            http_url = f"http://{host}:{config.api.port}/boot"
        parts = urlsplit(http_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"[netboot] http_url {http_url!r} is not an http(s) URL with a host; set it to the URL machines "
                "fetch boot files at, e.g. http://192.168.77.1:6385/boot."
            )
        return cls(
            tftp_root=tftp_root.absolute(),
            http_root=http_root.absolute(),
            http_url=http_url,
            tftp_server=nb.tftp_server or parts.hostname,
        )

    def unroutable_address(self) -> str | None:
        """Why machines could not reach the configured URL or TFTP server (a wildcard address), or None."""
        for what, host in (("[netboot] http_url", urlsplit(self.http_url).hostname or ""), ("tftp", self.tftp_server)):
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(host).is_unspecified:
                    return (
                        f"{what} would point machines at {host}, the wildcard address the API listens on. Set "
                        "[netboot] http_url (and tftp_server) or [api] public_url to an address machines reach."
                    )
        return None

    def node_dir(self, root: Path, uuid: str) -> Path:
        """A node's directory under ``root``."""
        return root / uuid

    def pxelinux_link(self, mac: str) -> Path:
        """PXELINUX's per-MAC config name."""
        return self.tftp_root / "pxelinux.cfg" / f"01-{mac_dashes(mac)}"

    def grub_links(self, mac: str) -> list[Path]:
        """The per-MAC GRUB names: GRUB's own network search name, and the one the master config loads."""
        grub = self.tftp_root / "grub"
        return [grub / f"grub.cfg-01-{mac_dashes(mac)}", grub / f"{mac.lower()}.conf"]

    def ipxe_link(self, mac: str) -> Path:
        """The per-MAC script the main boot.ipxe chains."""
        return self.http_root / "pxelinux.cfg" / mac_dashes(mac)

    def link_dirs(self) -> list[Path]:
        """Directories that hold per-MAC links."""
        return [self.tftp_root / "pxelinux.cfg", self.tftp_root / "grub", self.http_root / "pxelinux.cfg"]

    def url_of(self, path: Path) -> str:
        """The HTTP URL of a file under http_root."""
        return f"{self.http_url}/{path.relative_to(self.http_root).as_posix()}"


# ---- writing and removing -------------------------------------------------------------------------


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (a machine may be fetching it right now)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def link(target: Path, name: Path) -> None:
    """Make ``name`` a relative symlink to ``target`` (replacing whatever ``name`` was)."""
    name.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(target, name.parent)
    tmp = name.with_name(f".{name.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(rel, tmp)
    os.replace(tmp, name)


def remove_node(layout: NetbootLayout, uuid: str) -> list[Path]:
    """Remove the node's directories and every per-MAC link that points into them; what was removed."""
    removed: list[Path] = []
    for link_dir in layout.link_dirs():
        if not link_dir.is_dir():
            continue
        for entry in link_dir.iterdir():
            try:
                target = os.readlink(entry)
            except OSError:  # not a link, or renamed away by another node's writer meanwhile
                continue
            if uuid in Path(target).parts:
                entry.unlink(missing_ok=True)
                removed.append(entry)
    for root in (layout.tftp_root, layout.http_root):
        node_dir = layout.node_dir(root, uuid)
        if node_dir.exists() or node_dir.is_symlink():
            shutil.rmtree(node_dir, ignore_errors=False)
            removed.append(node_dir)
    return removed


# ---- boot loaders --------------------------------------------------------------------------------

_placed: set[tuple[str, str, int, int]] = set()
_placed_lock = threading.Lock()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_loader(source: str) -> os.stat_result:
    """The loader file's stat; ``BootFilesError`` naming the Debian package when it is missing."""
    src = Path(source)
    try:
        return src.stat()
    except OSError:
        package = LOADER_PACKAGES.get(src.name)
        hint = f"install the Debian package {package} (apt-get install {package})" if package else "install it"
        raise BootFilesError(
            f"The boot loader {src} does not exist: {hint}, or point the [netboot] setting for it at the file."
        ) from None


def place_loader(source: str, dest_dir: Path, *, name: str | None = None) -> Path:
    """Copy boot loader ``source`` into ``dest_dir`` unless an identical copy is there; the copy's path."""
    src = Path(source)
    dest = dest_dir / (name or src.name)
    st = check_loader(source)
    key = (str(src), str(dest), st.st_size, st.st_mtime_ns)
    with _placed_lock:
        if key in _placed and dest.is_file():
            return dest
        try:
            if not (dest.is_file() and dest.stat().st_size == st.st_size and _digest(dest) == _digest(src)):
                dest_dir.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
        except OSError as exc:
            raise BootFilesError(f"Cannot place the boot loader {src} into {dest_dir}: {exc.strerror}.") from exc
        _placed.add(key)
    return dest
