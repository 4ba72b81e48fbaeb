"""Configuration: one object, loaded once at the entry point from a TOML file and the environment.

Precedence, lowest first: built-in defaults, the TOML file (``--config``), environment variables
``IRONWORKS_<SECTION>_<KEY>`` (e.g. ``IRONWORKS_DATABASE_URL``), then command-line flags. Nothing
below the entry point reads the environment or a global: components receive the ``Config`` (or the
section they need) as an argument.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ironworks.errors import ConfigError


@dataclass(slots=True)
class ApiConfig:
    """``[api]``: the REST API server."""

    host: str = "127.0.0.1"
    port: int = 6385
    #: ``noauth`` or ``http_basic`` (bcrypt htpasswd file, like Ironic standalone)
    auth_strategy: str = "noauth"
    htpasswd: str = ""
    #: listening beyond loopback without authentication needs this set on purpose
    allow_insecure_noauth: bool = False
    max_body_bytes: int = 1 << 20
    #: public URL used in links and ``Location`` headers; derived from the request when empty
    public_url: str = ""
    #: seconds a synchronous request (boot device get/set, validate) waits for a conductor
    sync_timeout: float = 60.0


@dataclass(slots=True)
class DatabaseConfig:
    """``[database]``: SQLite file under the state dir by default, or a PostgreSQL URL."""

    url: str = ""
    #: Fernet key (urlsafe base64); read from ``<state_dir>/secret.key`` (created) when empty
    secret_key: str = ""


@dataclass(slots=True)
class ConductorConfig:
    """``[conductor]``: workers, periodic tasks, timeouts."""

    hostname: str = field(default_factory=socket.gethostname)
    workers: int = 16
    heartbeat_interval: float = 10.0
    #: a conductor silent this long is dead: its locks are released and its work taken over
    dead_after: float = 60.0
    #: seconds between wake-up checks of the action queue when nothing wakes the conductor
    poll_interval: float = 1.0
    power_sync_interval: float = 60.0
    #: BMC reads of one power-sync pass that run at once
    power_sync_workers: int = 8
    #: consecutive failed power syncs before maintenance is set with fault "power failure"
    power_sync_max_failures: int = 3
    #: True: force the recorded power state onto the hardware; False: record what the BMC says
    force_power_state_during_sync: bool = False
    #: seconds to wait for a power change to be reported by the BMC
    power_state_change_timeout: float = 60.0
    automated_clean: bool = True
    timeout_check_interval: float = 30.0
    deploy_callback_timeout: float = 1800.0
    clean_callback_timeout: float = 1800.0
    inspect_wait_timeout: float = 1800.0
    rescue_callback_timeout: float = 1800.0
    service_callback_timeout: float = 1800.0
    #: how often an agent must heartbeat (told to it at lookup); it sends every 30-60 % of this
    agent_heartbeat_timeout: float = 300.0
    #: seconds between two polls of a running agent command
    agent_poll_interval: float = 2.0
    #: an agent that answered nothing for this long while a command runs fails the step
    agent_silence_timeout: float = 600.0
    #: boot a full erase (erase_devices) in automated cleaning, not only the metadata erase
    automated_clean_full_erase: bool = False
    enabled_hardware_types: list[str] = field(default_factory=lambda: ["fake-hardware", "redfish", "ipmi"])


@dataclass(slots=True)
class FakeConfig:
    """``[fake]``: delays of the fake hardware, ``"N"`` seconds or ``"MIN:MAX"`` random range."""

    power_delay: str = "0"
    boot_delay: str = "0"
    deploy_delay: str = "0"
    management_delay: str = "0"
    inspect_delay: str = "0"
    bios_delay: str = "0"
    raid_delay: str = "0"
    firmware_delay: str = "0"
    rescue_delay: str = "0"


@dataclass(slots=True)
class DhcpConfig:
    """``[dhcp]``: the DHCP provider for network boot, and the dnsmasq Ironworks may run itself."""

    #: ``dnsmasq`` (host and option files in hostsdir/optsdir) or ``none`` (Ironworks touches no DHCP)
    provider: str = "dnsmasq"
    #: dnsmasq's dhcp-hostsdir / dhcp-optsdir; "" = ``<state_dir>/dhcp/hostsdir.d`` / ``optsdir.d``
    hostsdir: str = ""
    optsdir: str = ""
    #: start and supervise dnsmasq from ``serve`` / ``conductor`` (off: an operator runs dnsmasq)
    manage_dnsmasq: bool = False
    #: the provisioning network's interface and dnsmasq's dhcp-range for it (managed dnsmasq only)
    interface: str = ""
    dhcp_range: str = ""
    #: MACs no node owns: ``ignore`` them, or ``discovery`` (boot the default iPXE/PXE config)
    unknown_macs: str = "ignore"
    dnsmasq_binary: str = "dnsmasq"
    #: extra dnsmasq.conf lines, appended verbatim to the generated file
    extra_options: list[str] = field(default_factory=list)
    #: IPv6 router advertisements on the interface (iPXE otherwise waits ~13 s for IPv6)
    enable_ra: bool = False


@dataclass(slots=True)
class NetbootConfig:
    """``[netboot]``: where network boot files go, how machines fetch them, loaders and templates."""

    #: TFTP root (dnsmasq serves it); "" = ``<state_dir>/tftpboot``
    tftp_root: str = ""
    #: HTTP root served at ``/boot/`` (or by an external web server); "" = ``<state_dir>/httpboot``
    http_root: str = ""
    #: URL machines fetch http_root at; "" = ``[api] public_url`` (or ``http://<host>:<port>``) + ``/boot``
    http_url: str = ""
    #: TFTP server address given to machines (DHCP option 66, next-server); "" = the host of http_url
    tftp_server: str = ""
    #: operator extras appended to every ramdisk kernel command line
    kernel_append_params: str = "console=ttyS0,115200n8"
    #: boot mode when neither capabilities nor the BMC say: ``bios`` or ``uefi``
    default_boot_mode: str = "bios"
    #: template overrides (paths of Jinja2 files); "" = the built-in template
    pxe_template: str = ""
    ipxe_template: str = ""
    grub_template: str = ""
    petitboot_template: str = ""
    #: boot loaders placed into the TFTP (and HTTP) root on first use
    pxe_bios_loader: str = "/usr/lib/PXELINUX/pxelinux.0"
    pxe_bios_modules: list[str] = field(default_factory=lambda: ["/usr/lib/syslinux/modules/bios/ldlinux.c32"])
    pxe_uefi_loader: str = "/usr/lib/grub/x86_64-efi/monolithic/grubnetx64.efi"
    ipxe_bios_loader: str = "/usr/lib/ipxe/undionly.kpxe"
    ipxe_uefi_loader: str = "/usr/lib/ipxe/snponly.efi"
    #: the API serves http_root at ``/boot/`` (read-only, no authentication: machines fetch it)
    serve_http: bool = True


@dataclass(slots=True)
class PetitbootConfig:
    """``[petitboot]``: how petitboot fetches its config and images (DHCP option 210)."""

    #: ``http`` (seed 004's default) or ``tftp``
    protocol: str = "http"


@dataclass(slots=True)
class ImagesConfig:
    """``[images]``: the image cache every boot and deploy path shares, and the disk budget (issue 6)."""

    #: master copies of downloaded images; "" = ``<state_dir>/images``
    cache_dir: str = ""
    #: size cap of the cache in bytes (masters no node uses are evicted, least recently used first); 0 = no cap
    max_cache_bytes: int = 20 << 30
    #: a master unused this many seconds is evicted; 0 = no age limit
    max_age: float = 7 * 24 * 3600.0
    #: directories ``file://`` sources (and absolute paths) may name; [] = none: local files are refused
    allowed_file_dirs: list[str] = field(default_factory=list)
    #: bytes the cache plus every per-node file (remastered ISOs, published copies) may use together;
    #: a deploy that would exceed it is refused before the node moves; 0 = no budget
    disk_budget_bytes: int = 0
    #: seconds an image download may stall (connect, or between two reads)
    download_timeout: float = 60.0
    #: attempts of a download that fails on a connection error
    download_attempts: int = 3


@dataclass(slots=True)
class VmediaConfig:
    """``[vmedia]``: virtual media boot (``redfish-virtual-media``) and ``ramdisk`` deploys of ISOs (issue 6)."""

    #: where published ISOs go: a subdirectory of ``[netboot] http_root`` served at ``<http_url>/<dir>/``
    publish_subdir: str = "vmedia"
    #: operator extras appended to the kernel command line of every deploy ISO
    kernel_append_params: str = "console=ttyS0,115200n8"
    #: Redfish virtual media device used for ISOs (``cd``)
    device: str = "cd"


@dataclass(slots=True)
class Config:
    """Everything Ironworks reads from outside, in one object."""

    state_dir: str = ""
    log_level: str = "INFO"
    api: ApiConfig = field(default_factory=ApiConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    conductor: ConductorConfig = field(default_factory=ConductorConfig)
    fake: FakeConfig = field(default_factory=FakeConfig)
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)
    netboot: NetbootConfig = field(default_factory=NetbootConfig)
    petitboot: PetitbootConfig = field(default_factory=PetitbootConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    vmedia: VmediaConfig = field(default_factory=VmediaConfig)

    @property
    def state_path(self) -> Path:
        """The state directory (SQLite file, secret key, logs)."""
        return Path(self.state_dir)

    @property
    def database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file in the state dir."""
        return self.database.url or f"sqlite:///{self.state_path / 'ironworks.sqlite'}"


def default_state_dir(environ: dict[str, str] | None = None) -> str:
    """``$IRONWORKS_STATE_DIR``, else ``$XDG_STATE_HOME/ironworks``, else ``~/.local/state/ironworks``."""
    env = os.environ if environ is None else environ
    if env.get("IRONWORKS_STATE_DIR"):
        return env["IRONWORKS_STATE_DIR"]
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "ironworks")


_SECTIONS = {
    "api": ApiConfig,
    "database": DatabaseConfig,
    "conductor": ConductorConfig,
    "fake": FakeConfig,
    "dhcp": DhcpConfig,
    "netboot": NetbootConfig,
    "petitboot": PetitbootConfig,
    "images": ImagesConfig,
    "vmedia": VmediaConfig,
}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    tname = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if tname == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tname == "int":
            return int(value)
        if tname == "float":
            return float(value)
        if tname.startswith("list"):
            if isinstance(value, list):
                return [str(v) for v in value]
            return [v.strip() for v in str(value).split(",") if v.strip()]
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"Configuration {where} has an invalid value {value!r}: expected {tname}.") from None


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"Unknown configuration key {where}.{key}; known keys: {', '.join(sorted(fields))}.")
        setattr(obj, key, _coerce(value, fields[key].type, f"{where}.{key}"))


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """Build the ``Config`` from defaults, the TOML file, the environment and ``overrides``."""
    env = dict(os.environ if environ is None else environ)
    cfg = Config()
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"Configuration file {path} does not exist.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Configuration file {path} is not valid TOML: {exc}.") from None
        for key, value in data.items():
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"Configuration section [{key}] in {path} must be a table.")
                _apply(getattr(cfg, key), value, key)
            elif key in ("state_dir", "log_level"):
                setattr(cfg, key, str(value))
            else:
                raise ConfigError(f"Unknown configuration key {key!r} in {path}.")
    for section in _SECTIONS:
        prefix = f"IRONWORKS_{section.upper()}_"
        vals = {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
        if vals:
            _apply(getattr(cfg, section), vals, section)
    if env.get("IRONWORKS_LOG_LEVEL"):
        cfg.log_level = env["IRONWORKS_LOG_LEVEL"]
    for section, vals in (overrides or {}).items():
        if section == "":
            for k, v in vals.items():
                setattr(cfg, k, v)
        else:
            _apply(getattr(cfg, section), {k: v for k, v in vals.items() if v is not None}, section)
    if not cfg.state_dir:
        cfg.state_dir = default_state_dir(env)
    return cfg
