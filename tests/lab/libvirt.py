"""libvirtd inside the lab's namespace with private state, a storage pool, and TCG virtual machines.

libvirtd runs as root with hard-coded state paths, so ``libvirtd-in-ns.sh`` bind-mounts the lab's
``libvirt/{etc,run,lib,cache,log}`` over them in the private mount namespace ``ip netns exec`` gives
it; the host's libvirt directories and any host libvirtd are untouched. Everyone else (``virsh`` from
the root namespace, sushy-emulator, VirtualBMC) connects through the socket file:
``qemu:///system?socket=<lab>/libvirt/run/libvirt-sock``.

Domains are ``type='qemu'`` (TCG: KVM does not work on these machines) with ``<acpi/>`` (without it
a guest power-off only halts), firmware output on the serial port (``<bios useserial='yes'/>`` and no
video) and the serial port appended to a file, so a test can watch the firmware start.

A VM is BIOS (``pc``, SeaBIOS) or UEFI (``q35``, OVMF from the ``ovmf`` package: the read-only code
image, and a private copy of the variable store per VM that libvirt makes from the template at the
first start and removes with ``undefine --nvram``). A UEFI VM's NIC has no iPXE option ROM by default
(``<rom enabled='no'/>``), so OVMF's own PXE client runs, as on a real UEFI server.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from tests.lab.serial import SerialLog

#: what a ``virsh`` call may take; they answer in milliseconds once libvirtd is up
VIRSH_BOUND_S = 60.0
GIB = 1 << 30
#: what a deploy adds after the image: the agent's config-2 partition (at least 64 MiB) at the disk's end
CONFIG_DRIVE_ROOM = 64 << 20
#: printed by SeaBIOS each time the machine starts: power-on, reset and reboot alike
FIRMWARE_BANNER = b"SeaBIOS (version"
#: the ovmf package's 4 MiB images (the 2 MiB ones lack room for a variable store of this size)
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
FIRMWARES = ("bios", "uefi")

LIBVIRTD_CONF = """\
unix_sock_group = "root"
unix_sock_ro_perms = "0770"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr"
"""
# ip netns exec remounts /sys, so there are no cgroups to use; qemu runs as root with no sandboxing
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "logd"
"""
VIRTLOGD_CONF = 'log_outputs = "3:stderr"\n'
WRAPPER = Path(__file__).with_name("libvirtd-in-ns.sh")

DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>{firmware}
    <boot dev='network'/>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <interface type='bridge'>
      <source bridge='{bridge}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>{rom}
    </interface>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='{pool}' volume='{volume}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='{serial_log}' append='on'/>
      <target port='0'/>
    </serial>
    <video><model type='none'/></video>
  </devices>
</domain>
"""


class LibvirtError(RuntimeError):
    """A ``virsh`` call failed."""


def _tool(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise LibvirtError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Vm:
    """A virtual machine of the lab: libvirt domain ``name`` with one NIC on the lab's bridge."""

    name: str
    uuid: str
    #: the MAC of its one NIC (on the lab bridge): the address of the node's port
    mac: str
    serial_log: Path
    #: ``bios`` (pc + SeaBIOS) or ``uefi`` (q35 + OVMF)
    firmware: str = "bios"

    def __post_init__(self) -> None:
        if self.firmware not in FIRMWARES:
            raise ValueError(f"VM {self.name}: firmware {self.firmware!r} is not one of {', '.join(FIRMWARES)}")

    @property
    def volume(self) -> str:
        """The name of its disk's volume in the storage pool."""
        return f"{self.name}.qcow2"

    @property
    def serial(self) -> SerialLog:
        """Its serial console log (wait for text in it, count firmware starts)."""
        return SerialLog(self.serial_log, self.firmware)

    def domain_xml(self, *, bridge: str, memory_mib: int, nic_rom: bool, pool: str, nvram: Path | None = None) -> str:
        """The libvirt domain definition (``nvram``: where a UEFI VM's variable store lives)."""
        rom = "" if nic_rom else "\n      <rom enabled='no'/>"
        if self.firmware == "uefi":
            if nvram is None:
                raise ValueError(f"VM {self.name} is UEFI: its domain needs an nvram path")
            firmware = (
                f"\n    <loader readonly='yes' type='pflash'>{OVMF_CODE}</loader>"
                f"\n    <nvram template='{OVMF_VARS}'>{nvram}</nvram>"
            )
        else:
            firmware = "\n    <bios useserial='yes'/>"
        return DOMAIN_XML.format(
            name=self.name,
            uuid=self.uuid,
            machine="q35" if self.firmware == "uefi" else "pc",
            firmware=firmware,
            memory_mib=memory_mib,
            bridge=bridge,
            mac=self.mac,
            rom=rom,
            pool=pool,
            volume=self.volume,
            serial_log=self.serial_log,
        )

    def firmware_starts(self) -> int:
        """How many times the machine's firmware has started so far (from its serial log)."""
        return self.serial.firmware_starts()


class Libvirt:
    """The lab's libvirtd, reached through its socket under ``state_dir/run``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.socket = state_dir / "run" / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.socket}"
        self.pool_dir = state_dir / "pool"

    def write_config(self) -> None:
        """Private ``/etc/libvirt`` contents: no auth on the socket, qemu as root without cgroups."""
        for sub in ("etc", "run", "lib", "cache", "log", "pool", "nvram"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (self.state_dir / "etc" / "qemu.conf").write_text(QEMU_CONF)
        (self.state_dir / "etc" / "virtlogd.conf").write_text(VIRTLOGD_CONF)

    def wrapper_argv(self, pid_dir: Path) -> list[str]:
        """The command that, run inside the namespace, mounts the state and becomes libvirtd."""
        return ["sh", str(WRAPPER), str(self.state_dir), str(pid_dir)]

    def virsh(self, *args: str, check: bool = True, timeout: float = VIRSH_BOUND_S) -> str:
        """``virsh -c URI ARGS...`` (from the root namespace: the socket is a file); its stdout."""
        proc = subprocess.run(
            ["virsh", "-q", "-c", self.uri, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LibvirtError(f"`virsh {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def answers(self) -> bool:
        """Whether libvirtd accepts connections yet."""
        try:
            self.virsh("version", timeout=10)
        except (LibvirtError, subprocess.TimeoutExpired):
            return False
        return True

    def define_pool(self, name: str = "default") -> None:
        """A directory storage pool (sushy-tools uploads virtual media into pool ``default``)."""
        self.virsh("pool-define-as", name, "dir", "--target", str(self.pool_dir))
        self.virsh("pool-start", name)

    def define(
        self,
        vm: Vm,
        *,
        bridge: str,
        memory_mib: int = 256,
        disk_gib: int = 4,
        nic_rom: bool = True,
        pool: str = "default",
    ) -> None:
        """Create the VM's (empty, sparse) disk in ``pool`` and define (not start) its domain.

        A real machine has a disk, and sushy-tools needs one: it answers a boot device of Hdd with
        "Target libvirt device Hdd does not exist" when the domain has none.
        """
        self.virsh("vol-create-as", pool, vm.volume, f"{disk_gib}G", "--format", "qcow2")
        if vm.firmware == "uefi" and not OVMF_CODE.is_file():
            raise FileNotFoundError(f"{OVMF_CODE} is missing: the UEFI VM {vm.name} needs the ovmf package")
        xml_path = self.state_dir / f"{vm.name}.xml"
        xml = vm.domain_xml(bridge=bridge, memory_mib=memory_mib, nic_rom=nic_rom, pool=pool, nvram=self.nvram(vm))
        xml_path.write_text(xml)
        self.virsh("define", str(xml_path))

    def nvram(self, vm: Vm) -> Path:
        """Where a UEFI VM's private copy of the OVMF variable store lives."""
        return self.state_dir / "nvram" / f"{vm.name}_VARS.fd"

    def volume_path(self, vm: Vm, pool: str = "default") -> Path:
        """The file behind the VM's disk volume."""
        return Path(self.virsh("vol-path", "--pool", pool, vm.volume).strip())

    def replace_disk(self, vm: Vm, image: Path, *, image_format: str, disk_gib: int, pool: str = "default") -> None:
        """Make the (shut off) VM's disk a ``disk_gib`` GiB qcow2 holding ``image`` at its start.

        ``qemu-img convert`` writes the volume file while the domain is off (a running qemu holds it);
        the virtual size then grows to ``disk_gib`` so the disk has room after the image, where the
        agent puts a config drive. Raises LibvirtError when the domain runs or the image and 64 MiB for
        a config drive do not fit.
        """
        if self.state(vm.name) != "shut off":
            raise LibvirtError(f"{vm.name} is {self.state(vm.name)}: its disk can only be replaced while it is off")
        info = json.loads(_tool(["qemu-img", "info", "--output=json", "-f", image_format, str(image)]))
        if int(info["virtual-size"]) + CONFIG_DRIVE_ROOM > disk_gib * GIB:
            raise LibvirtError(
                f"{image} ({int(info['virtual-size']) / GIB:.2f} GiB) does not fit on the {disk_gib} GiB disk of "
                f"{vm.name} with room for a config drive after it: raise LabSettings.disk_gib"
            )
        target = self.volume_path(vm, pool)
        staging = target.with_name(f".{target.name}.new")
        try:
            _tool(["qemu-img", "convert", "-f", image_format, "-O", "qcow2", str(image), str(staging)])
            _tool(["qemu-img", "resize", "-f", "qcow2", str(staging), f"{disk_gib}G"])
            staging.replace(target)
        finally:
            staging.unlink(missing_ok=True)
        self.virsh("pool-refresh", pool)

    def blank_disk(self, vm: Vm, *, disk_gib: int, pool: str = "default") -> None:
        """Give the (shut off) VM an empty ``disk_gib`` GiB qcow2 disk again."""
        if self.state(vm.name) != "shut off":
            raise LibvirtError(f"{vm.name} is {self.state(vm.name)}: its disk can only be replaced while it is off")
        self.virsh("vol-delete", "--pool", pool, vm.volume)
        self.virsh("vol-create-as", pool, vm.volume, f"{disk_gib}G", "--format", "qcow2")

    def domains(self) -> list[str]:
        """Names of every defined domain."""
        return [n for n in self.virsh("list", "--all", "--name").split() if n]

    def state(self, name: str) -> str:
        """The domain state as virsh prints it: ``running``, ``shut off``, ``paused`` ..."""
        return self.virsh("domstate", name).strip()

    def domain_id(self, name: str) -> int | None:
        """The id of the running domain (a new one each time its qemu process starts), None when off."""
        out = self.virsh("domid", name).strip()
        return int(out) if out.isdigit() else None

    def xml(self, name: str) -> ET.Element:
        """The domain's current (persistent) definition."""
        return ET.fromstring(self.virsh("dumpxml", "--inactive", name))

    def first_boot_device(self, name: str) -> str | None:
        """What the domain boots from first: ``network``, ``hd``, ``cdrom`` or ``fd`` (None: nothing set).

        libvirt has two exclusive ways to say it, and the emulators use both: VirtualBMC writes
        ``<os><boot dev=...>``; sushy-tools gives devices a ``<boot order=...>``.
        """
        tree = self.xml(name)
        os_boot = tree.findall("./os/boot")
        if os_boot:
            return os_boot[0].get("dev")
        ordered = []
        for dev in tree.findall("./devices/*"):
            boot = dev.find("boot")
            if boot is not None and boot.get("order", "").isdigit():
                kind = (
                    "network"
                    if dev.tag == "interface"
                    else {"disk": "hd"}.get(dev.get("device", ""), dev.get("device"))
                )
                ordered.append((int(boot.get("order", "0")), kind))
        return min(ordered)[1] if ordered else None

    def sushy_metadata(self, name: str, kind: str) -> dict[str, str]:
        """sushy-tools' emulated BIOS ``attributes`` or firmware ``versions`` kept in the domain's metadata."""
        ns = {"sushy": "http://openstack.org/xmlns/libvirt/sushy"}
        found = self.xml(name).findall(f"./metadata/sushy:bios/sushy:{kind}/*", ns)
        return {e.get("name", ""): e.get("value", "") for e in found}

    def remove_everything(self) -> list[str]:
        """Destroy and undefine every domain and pool; what went wrong (teardown goes on regardless)."""
        problems = []
        for name in self.domains():
            if self.state(name) != "shut off":
                self.virsh("destroy", name, check=False)
            try:
                self.virsh("undefine", name, "--nvram")
            except LibvirtError:
                try:
                    self.virsh("undefine", name)
                except LibvirtError as exc:
                    problems.append(str(exc))
        for pool in self.virsh("pool-list", "--all", "--name").split():
            self.virsh("pool-destroy", pool, check=False)
            try:
                self.virsh("pool-undefine", pool)
            except LibvirtError as exc:
                problems.append(str(exc))
        return problems
