"""Network boot files: what each loader reads, the per-MAC names, bad parameters, rollback, clean-up.

The boot interfaces run against real files in a temporary TFTP/HTTP root and the real image cache;
the one faked boundary is the DHCP provider (a recorder), so each test can see what DHCP would say.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ironworks.config import Config, load_config
from ironworks.drivers.base import BootInterface, ManagementInterface, NodeView, PortView, ValidationError
from ironworks.drivers.petitboot import PetitbootBoot
from ironworks.drivers.pxe import IpxeBoot, PxeBoot
from ironworks.errors import BmcUnreachable, ConfigError, InvalidInput
from ironworks.images.cache import ImageCache, ImageChecksumMismatch, ImageError
from ironworks.netboot.dhcp import DhcpOption, DhcpProvider
from ironworks.netboot.layout import BootFilesError
from ironworks.netboot.render import kernel_params

UUID = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"
MAC = "52:54:00:12:34:56"
MAC2 = "52:54:00:ab:cd:ef"
API = "http://192.168.77.1:6385"


class RecordingDhcp(DhcpProvider):
    """Remembers what each MAC would be told; ``fail`` makes the next update raise."""

    def __init__(self) -> None:
        self.options: dict[str, list[DhcpOption]] = {}
        self.ignored: set[str] = set()
        self.fail = False

    def update_dhcp_opts(self, node_uuid: str, macs: Sequence[str], options: Sequence[DhcpOption]) -> None:
        if self.fail:
            raise OSError(28, "No space left on device", "/dhcp/optsdir.d")
        for mac in macs:
            self.options[mac] = list(options)
            self.ignored.discard(mac)

    def clean_dhcp_opts(self, node_uuid: str, macs: Sequence[str]) -> None:
        for mac in macs:
            self.options.pop(mac, None)
            self.ignored.add(mac)


class RecordingManagement(ManagementInterface):
    """Records boot device changes; ``fail`` makes them raise as an unreachable BMC would."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__(None)
        self.devices: list[tuple[str, bool]] = []
        self.fail = False

    def validate(self, task: Any) -> None:
        pass

    def get_supported_boot_devices(self, task: Any) -> list[str]:
        return ["pxe", "disk"]

    def set_boot_device(self, task: Any, device: str, *, persistent: bool = False) -> None:
        if self.fail:
            raise BmcUnreachable("The BMC did not answer.")
        self.devices.append((device, persistent))

    def get_boot_device(self, task: Any) -> dict[str, Any]:
        return {"boot_device": self.devices[-1][0] if self.devices else None, "persistent": False}


class FakeTask:
    """The node, its ports and a timeline list; deploy interface ``agent``."""

    def __init__(self, node: NodeView, ports: list[PortView]) -> None:
        self.node = node
        self.ports = ports
        self.events: list[tuple[str, str]] = []
        self.management = RecordingManagement()

    def record(self, message: str, *, severity: str = "INFO", data: dict[str, Any] | None = None) -> None:
        self.events.append((severity, message))

    def progress(self, done: float, total: float | None = None, *, message: str = "") -> None:
        pass

    def interface(self, kind: str) -> Any:
        if kind == "management":
            return self.management
        return type("Deploy", (), {"name": "agent"})()

    def set_power_state(self, state: str) -> str:
        return state


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(
        None,
        environ={},
        overrides={
            "": {"state_dir": str(tmp_path / "state")},
            "api": {"public_url": API},
            "images": {"allowed_file_dirs": [str(tmp_path)]},
        },
    )


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "ramdisk"
    d.mkdir()
    kernel, initramfs = d / "ironworks-agent.kernel", d / "ironworks-agent.initramfs"
    kernel.write_bytes(b"KERNEL" * 1000)
    initramfs.write_bytes(b"INITRD" * 2000)
    return {"kernel": kernel, "ramdisk": initramfs}


def make_task(images: dict[str, Path], *, mode: str = "bios", macs: Sequence[str] = (MAC,), **info: Any) -> FakeTask:
    driver_info = {"deploy_kernel": f"file://{images['kernel']}", "deploy_ramdisk": str(images["ramdisk"]), **info}
    node = NodeView(
        id=1,
        uuid=UUID,
        name="n1",
        driver="ipmi",
        driver_info=driver_info,
        driver_internal_info={},
        instance_info={},
        properties={"capabilities": f"boot_mode:{mode}"},
        provision_state="deploying",
        power_state="power off",
    )
    return FakeTask(node, [PortView(uuid=f"p{i}", address=m, pxe_enabled=True) for i, m in enumerate(macs)])


def make(cls: type[BootInterface], config: Config) -> tuple[Any, RecordingDhcp]:
    iface: Any = cls(config)
    dhcp = RecordingDhcp()
    iface.dhcp = dhcp
    return iface, dhcp


def roots(config: Config) -> tuple[Path, Path]:
    state = Path(config.state_dir)
    return state / "tftpboot", state / "httpboot"


def all_files(*dirs: Path) -> set[str]:
    out = set()
    for d in dirs:
        if d.exists():
            out |= {str(p.relative_to(d.parent)) for p in d.rglob("*")}
    return out


PARAMS = {"ipa-api-url": API}


# ---- kernel parameters --------------------------------------------------------------------------


def test_kernel_params_order_and_sources() -> None:
    tokens = kernel_params(
        {"ipa-api-url": API, "ipa-agent-token": None},
        [("[netboot] kernel_append_params", "console=ttyS0,115200n8"), ("driver_info/kernel_append_params", "a=1 b")],
    )
    assert tokens == [f"ipa-api-url={API}", "console=ttyS0,115200n8", "a=1", "b"]


@pytest.mark.parametrize("bad", ["a\nb", 'x="y"', "x='y'", "x=$y", "x=a;reboot", "x=a|b", "x=\\n"])
def test_kernel_params_refuse_what_breaks_a_config_line(bad: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        kernel_params({}, [("driver_info/kernel_append_params", bad)])
    assert "driver_info/kernel_append_params" in exc.value.message


def test_a_bad_token_value_is_not_echoed() -> None:
    with pytest.raises(InvalidInput) as exc:
        kernel_params({"ipa-agent-token": "s3cr$t"}, [])
    assert "s3cr" not in exc.value.message and "ipa-agent-token" in exc.value.message


# ---- pxe (BIOS: PXELINUX) ------------------------------------------------------------------------


def test_pxe_bios_writes_pxelinux_config_links_and_options(config: Config, images: dict[str, Path]) -> None:
    boot, dhcp = make(PxeBoot, config)
    task = make_task(images, macs=(MAC, MAC2), kernel_append_params="nomodeset")
    boot.prepare_ramdisk(task, params=PARAMS)
    tftp, _ = roots(config)
    cfg = (tftp / UUID / "config").read_text()
    assert "default deploy" in cfg
    assert f"kernel {UUID}/deploy_kernel" in cfg
    assert f"append initrd={UUID}/deploy_ramdisk ipa-api-url={API} console=ttyS0,115200n8 nomodeset" in cfg
    assert "ipappend 2" in cfg and "localboot 0" in cfg
    for mac in (MAC, MAC2):
        name = tftp / "pxelinux.cfg" / f"01-{mac.replace(':', '-')}"
        assert os.readlink(name) == f"../{UUID}/config"
        assert name.read_text() == cfg
        assert dhcp.options[mac] == [
            DhcpOption("bootfile-name", "pxelinux.0"),
            DhcpOption("tftp-server", "192.168.77.1"),
            DhcpOption("server-ip-address", "192.168.77.1"),
        ]
    assert (tftp / "pxelinux.0").read_bytes() == Path("/usr/lib/PXELINUX/pxelinux.0").read_bytes()
    assert (tftp / "ldlinux.c32").is_file()
    master = ImageCache(Path(config.state_dir) / "images").master_path(f"file://{images['kernel']}")
    assert (tftp / UUID / "deploy_kernel").stat().st_ino == master.stat().st_ino
    assert (tftp / UUID / "deploy_ramdisk").read_bytes() == images["ramdisk"].read_bytes()
    assert task.node.driver_internal_info["netboot"] == "ramdisk"
    assert task.management.devices == [("pxe", False)]  # the next boot, once, from the network


def test_pxe_local_boot_survives_ramdisk_clean_up_and_clean_up_instance_removes_all(
    config: Config, images: dict[str, Path]
) -> None:
    boot, dhcp = make(PxeBoot, config)
    task = make_task(images)
    boot.prepare_ramdisk(task, params=PARAMS)
    boot.prepare_instance(task)  # the deploy step order: instance boot first, then the agent torn down
    boot.clean_up_ramdisk(task)
    tftp, http = roots(config)
    cfg = (tftp / "pxelinux.cfg" / "01-52-54-00-12-34-56").read_text()
    assert "default local" in cfg and "localboot 0" in cfg and "deploy_kernel" not in cfg
    assert not (tftp / UUID / "deploy_kernel").exists()
    assert dhcp.options[MAC][0] == DhcpOption("bootfile-name", "pxelinux.0")
    boot.clean_up_instance(task)
    left = {f for f in all_files(tftp, http) if UUID in f or "01-52" in f}
    assert left == set()
    assert MAC in dhcp.ignored and MAC not in dhcp.options
    boot.clean_up_instance(task)  # idempotent


# ---- pxe (UEFI: GRUB) ----------------------------------------------------------------------------


def test_pxe_uefi_writes_grub_per_mac_with_literal_bootif(config: Config, images: dict[str, Path]) -> None:
    boot, dhcp = make(PxeBoot, config)
    task = make_task(images, mode="uefi", macs=(MAC, MAC2))
    boot.prepare_ramdisk(task, params=PARAMS)
    tftp, _ = roots(config)
    for mac in (MAC, MAC2):
        dashes = mac.replace(":", "-")
        own = tftp / UUID / f"grub.cfg-01-{dashes}"
        text = own.read_text()
        assert f"linux /{UUID}/deploy_kernel 'ipa-api-url={API}' 'console=ttyS0,115200n8' 'BOOTIF=01-{dashes}'" in text
        assert f"initrd /{UUID}/deploy_ramdisk" in text
        assert "set default=deploy" in text
        assert os.readlink(tftp / "grub" / f"grub.cfg-01-{dashes}") == f"../{UUID}/grub.cfg-01-{dashes}"
        assert (tftp / "grub" / f"{mac}.conf").read_text() == text
    master = (tftp / "grub" / "grub.cfg").read_text()
    assert "configfile $prefix/${net_default_mac}.conf" in master
    assert (tftp / "grubnetx64.efi").is_file()
    assert dhcp.options[MAC][0] == DhcpOption("bootfile-name", "grubnetx64.efi")
    boot.prepare_instance(task)
    local = (tftp / "grub" / f"{MAC}.conf").read_text()
    assert "set default=local" in local and "chainloader /EFI/BOOT/BOOTX64.EFI" in local and "exit" in local
    assert "linux " not in local


# ---- ipxe ------------------------------------------------------------------------------------------


def test_ipxe_script_links_and_chain_options(config: Config, images: dict[str, Path]) -> None:
    boot, dhcp = make(IpxeBoot, config)
    task = make_task(images, mode="uefi")
    boot.prepare_ramdisk(task, params={"ipa-api-url": API, "ipa-agent-token": "tok123"})
    tftp, http = roots(config)
    script = (http / UUID / "boot.ipxe").read_text()
    assert script.startswith("#!ipxe\n")
    assert (
        f"kernel --name deploy_kernel {API}/boot/{UUID}/deploy_kernel initrd=deploy_ramdisk "
        f"ipa-api-url={API} ipa-agent-token=tok123 console=ttyS0,115200n8 BOOTIF=01-${{netX/mac:hexhyp}}"
    ) in script
    assert f"initrd --name deploy_ramdisk {API}/boot/{UUID}/deploy_ramdisk" in script
    assert os.readlink(http / "pxelinux.cfg" / "52-54-00-12-34-56") == f"../{UUID}/boot.ipxe"
    main = (http / "boot.ipxe").read_text()
    assert f"chain --autofree {API}/boot/pxelinux.cfg/${{net${{netid}}/mac:hexhyp}}" in main
    for root in (tftp, http):
        assert (root / "snponly.efi").is_file() and (root / "undionly.kpxe").is_file()
    assert dhcp.options[MAC] == [
        DhcpOption("bootfile-name", "snponly.efi", tags=("!ipxe", "efi64")),
        DhcpOption("bootfile-name", "undionly.kpxe", tags=("!ipxe", "!efi64")),
        DhcpOption("bootfile-name", f"{API}/boot/{UUID}/boot.ipxe", tags=("ipxe",)),
        DhcpOption("tftp-server", "192.168.77.1"),
        DhcpOption("server-ip-address", "192.168.77.1"),
    ]
    assert (http / UUID / "deploy_kernel").stat().st_nlink >= 2  # a hard link of the master


@pytest.mark.parametrize(("mode", "line"), [("bios", "sanboot --no-describe --drive 0x80 || exit"), ("uefi", "exit")])
def test_ipxe_local_boot(config: Config, images: dict[str, Path], mode: str, line: str) -> None:
    boot, _ = make(IpxeBoot, config)
    task = make_task(images, mode=mode)
    boot.prepare_instance(task)
    script = (roots(config)[1] / UUID / "boot.ipxe").read_text()
    assert "goto local" in script and line in script and "kernel" not in script


# ---- petitboot ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["tftp", "http"])
def test_petitboot_config_and_options_209_210(config: Config, images: dict[str, Path], protocol: str) -> None:
    config.petitboot.protocol = protocol
    boot, dhcp = make(PetitbootBoot, config)
    task = make_task(images)
    boot.prepare_ramdisk(task, params=PARAMS)
    tftp, http = roots(config)
    root, prefix = (tftp, "tftp://192.168.77.1/") if protocol == "tftp" else (http, f"{API}/boot/")
    cfg = (root / UUID / "config").read_text()
    assert "default deploy\n\nlabel deploy\n" in cfg
    assert f"kernel {prefix}{UUID}/deploy_kernel\n" in cfg
    assert f"initrd {prefix}{UUID}/deploy_ramdisk\n" in cfg
    assert f"append ipa-api-url={API} console=ttyS0,115200n8 BOOTIF=01-52-54-00-12-34-56\n" in cfg
    assert (root / UUID / "deploy_kernel").is_file()
    opts = dhcp.options[MAC]
    assert opts == [DhcpOption("209", f"{UUID}/config"), DhcpOption("210", prefix)]
    assert not any(o.name == "bootfile-name" for o in opts)  # petitboot needs no boot program
    boot.prepare_instance(task)
    assert not (root / UUID).exists() and dhcp.options[MAC] == []
    boot.clean_up_instance(task)
    assert MAC in dhcp.ignored


# ---- bad input, rollback -------------------------------------------------------------------------


def test_validate_names_what_is_missing(config: Config, images: dict[str, Path]) -> None:
    boot, _ = make(IpxeBoot, config)
    task = make_task(images)
    task.ports = []
    with pytest.raises(ValidationError, match="no port with pxe_enabled"):
        boot.validate(task)
    task = make_task(images)
    del task.node.driver_info["deploy_ramdisk"]
    with pytest.raises(ValidationError, match=r"driver_info/deploy_ramdisk is missing.*--driver-info deploy_ramdisk="):
        boot.validate(task)
    config.api.public_url = ""
    config.api.host = "0.0.0.0"
    with pytest.raises(ValidationError, match="wildcard"):
        make(IpxeBoot, config)[0].validate(make_task(images))


def test_dhcp_failure_leaves_nothing_behind(config: Config, images: dict[str, Path]) -> None:
    boot, dhcp = make(IpxeBoot, config)
    task = make_task(images)
    dhcp.fail = True
    with pytest.raises(BootFilesError, match="nothing was left behind"):
        boot.prepare_ramdisk(task, params=PARAMS)
    tftp, http = roots(config)
    assert {f for f in all_files(tftp, http) if UUID in f or "52-54" in f} == set()
    assert MAC in dhcp.ignored
    assert "netboot" not in task.node.driver_internal_info


def test_unreadable_image_and_bad_checksum_fail_cleanly(config: Config, images: dict[str, Path]) -> None:
    boot, dhcp = make(PxeBoot, config)
    task = make_task(images)
    task.node.driver_info["deploy_kernel"] = str(images["kernel"].with_name("nonexistent-kernel"))
    with pytest.raises(ImageError, match="nonexistent-kernel"):
        boot.prepare_ramdisk(task, params=PARAMS)
    assert MAC in dhcp.ignored and dhcp.options == {}
    task = make_task(images, deploy_ramdisk_checksum="sha256:" + "0" * 64)
    with pytest.raises(ImageChecksumMismatch, match="not 0000"):
        boot.prepare_ramdisk(task, params=PARAMS)
    assert not (roots(config)[0] / UUID).exists()
    right = hashlib.sha256(images["ramdisk"].read_bytes()).hexdigest()
    task = make_task(images, deploy_ramdisk_checksum=f"sha256:{right}")
    boot.prepare_ramdisk(task, params=PARAMS)
    assert (roots(config)[0] / UUID / "deploy_ramdisk").is_file()


def test_bad_kernel_params_refused_before_anything_is_written(config: Config, images: dict[str, Path]) -> None:
    boot, dhcp = make(PxeBoot, config)
    task = make_task(images, kernel_append_params="quiet\ninitrd=evil")
    with pytest.raises(InvalidInput, match="line break"):
        boot.prepare_ramdisk(task, params=PARAMS)
    assert not roots(config)[0].exists() and dhcp.options == {}


def test_missing_loader_names_the_debian_package(config: Config, images: dict[str, Path]) -> None:
    config.netboot.pxe_bios_loader = "/nonexistent/pxelinux.0"
    boot, _ = make(PxeBoot, config)
    with pytest.raises(BootFilesError, match="apt-get install pxelinux"):
        boot.prepare_ramdisk(make_task(images), params=PARAMS)


def test_operator_template_override(config: Config, images: dict[str, Path], tmp_path: Path) -> None:
    tpl = tmp_path / "my.ipxe"
    tpl.write_text("#!ipxe\n# site {{ uuid }}\nkernel {{ kernel }} {{ cmdline }}\ninitrd {{ ramdisk }}\nboot\n")
    config.netboot.ipxe_template = str(tpl)
    boot, _ = make(IpxeBoot, config)
    boot.prepare_ramdisk(make_task(images), params=PARAMS)
    assert f"# site {UUID}\n" in (roots(config)[1] / UUID / "boot.ipxe").read_text()
    tpl.write_text("{{ no_such_variable }}")
    with pytest.raises(ConfigError, match="unknown variable"):
        boot.prepare_ramdisk(make_task(images), params=PARAMS)


def test_validate_refuses_a_local_image_outside_the_allowed_dirs(config: Config, images: dict[str, Path]) -> None:
    boot, _ = make(PxeBoot, config)
    task = make_task(images)
    task.node.driver_info["deploy_ramdisk"] = str(images["ramdisk"].parent / ".." / ".." / "elsewhere" / "initrd")
    with pytest.raises(ValidationError, match=r"driver_info/deploy_ramdisk: .*outside \[images\] allowed_file_dirs"):
        boot.validate(task)


def test_validate_checks_the_loader_files(config: Config, images: dict[str, Path]) -> None:
    config.netboot.ipxe_uefi_loader = "/nonexistent/snponly.efi"
    boot, _ = make(IpxeBoot, config)
    with pytest.raises(
        ValidationError, match=r"/nonexistent/snponly.efi does not exist: install the Debian package ipxe"
    ):
        boot.validate(make_task(images))


def test_images_on_another_file_system_are_copied_with_a_warning(
    config: Config, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_cross_device_links(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_cross_device_links)
    boot, _ = make(PxeBoot, config)
    task = make_task(images)
    boot.prepare_ramdisk(task, params=PARAMS)
    assert (roots(config)[0] / UUID / "deploy_kernel").read_bytes() == images["kernel"].read_bytes()
    warnings = [m for s, m in task.events if s == "WARNING"]
    assert len(warnings) == 2 and "different file systems" in warnings[0]


def test_a_bmc_that_cannot_set_the_boot_device_leaves_nothing_behind(config: Config, images: dict[str, Path]) -> None:
    boot, dhcp = make(IpxeBoot, config)
    task = make_task(images)
    task.management.fail = True
    with pytest.raises(BmcUnreachable):
        boot.prepare_ramdisk(task, params=PARAMS)
    tftp, http = roots(config)
    assert {f for f in all_files(tftp, http) if UUID in f or "52-54" in f} == set()
    assert MAC in dhcp.ignored and dhcp.options == {}
