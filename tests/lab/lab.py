"""``Lab``: one network namespace with libvirt TCG VMs on a bridge and a Redfish and an IPMI BMC for each.

Everything that sends or receives a packet runs inside the namespace ``iw-<random>`` the lab creates:
the bridge (``192.168.<x>.1/24``, no uplink, nothing routed out), libvirtd and its qemu guests, an
HTTP server on the bridge address (files a BMC or a VM downloads), sushy-emulator and VirtualBMC on
the namespace's 127.0.0.1, and the Ironworks under test (``start_ironworks``). Nothing listens in the
root namespace; the root namespace only reaches libvirtd through its socket file.

For network boot (issue 5) the lab offers what the e2e tests build on: BIOS and UEFI VMs
(``LabSettings.uefi_vm_names``); the bridge and a free DHCP range on it for the dnsmasq Ironworks
supervises (``lab.network``); Ironworks on the bridge address, so a VM's agent reaches it
(``start_ironworks(on_bridge=True)``); disk images put straight onto a VM's disk
(``write_disk_image``); the serial console to wait on (``wait_for_serial``, ``tests.lab.serial``).

``setup()`` runs named steps; a failure raises ``LabSetupError`` naming the step and carrying the tails
of the logs that explain it. ``teardown()`` always runs to the end: domains and pool removed, BMCs
deleted, every recorded PID stopped (never by name), leftovers in the namespace stopped by PID, the
namespace deleted, the work directory removed (kept when ``keep_workdir``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from tests.lab.bmc import SushyEmulator, VirtualBmc, wait_until
from tests.lab.libvirt import Libvirt, Vm
from tests.lab.netns import Netns
from tests.lab.network import LabNetwork
from tests.lab.processes import LabProcess, ProcessTable, log_tail, venv_executable
from tests.lab.serial import SerialMatch
from tests.lab.service import IronworksInLab

BRIDGE = "iwbr0"
#: from the Debian packages in dev.sh's SYSTEM_PACKAGES, and the venv's test extra
SYSTEM_PROGRAMS = ("ip", "mount", "virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "ipmitool")
VENV_PROGRAMS = ("sushy-emulator", "vbmcd", "vbmc", "ironworks", "baremetal")
#: bound for libvirtd to answer: its QEMU capability probe takes ~8 s on these machines
LIBVIRTD_BOUND_S = 90.0
#: bound for a domain to reach a requested state once a BMC has acted
DOMAIN_STATE_BOUND_S = 60.0


@dataclass(frozen=True)
class LabSettings:
    """Names, ports and credentials. Ports are on the namespace's own loopback, so they cannot clash."""

    vm_names: tuple[str, ...] = ("lab-vm-0", "lab-vm-1", "lab-vm-uefi")
    #: the VMs (of ``vm_names``) that are UEFI (q35 + OVMF); the others are BIOS (pc + SeaBIOS)
    uefi_vm_names: tuple[str, ...] = ("lab-vm-uefi",)
    #: sushy-tools reports whole GiB (MemorySummary.TotalSystemMemoryGiB): less than 1024 reads as 0
    memory_mib: int = 1024
    #: an empty, sparse qcow2 disk in pool 'default': room for the 1 GiB test image and a config drive
    disk_gib: int = 4
    #: the iPXE option ROM on a BIOS VM's NIC: what a PXE boot needs; a VM without boot media sits in it
    nic_rom: bool = True
    #: on a UEFI VM's NIC: off, so OVMF's own PXE runs (OVMF PXE -> TFTP snponly.efi -> iPXE, as measured)
    uefi_nic_rom: bool = False
    #: last octets of the bridge subnet's DHCP pool (the bridge is .1, nothing else is assigned)
    dhcp_first: int = 100
    dhcp_last: int = 200
    dhcp_lease: str = "10m"
    bmc_username: str = "lab-admin"
    bmc_password: str = "lab-Pa55word"
    sushy_port: int = 18000
    vbmcd_port: int = 15891
    vbmc_base_port: int = 16230
    http_port: int = 18080
    ironworks_base_port: int = 16385
    ironworks_env: Mapping[str, str] = field(
        default_factory=lambda: {"IRONWORKS_CONDUCTOR_ENABLED_HARDWARE_TYPES": "fake-hardware,redfish,ipmi"}
    )


class LabSetupError(RuntimeError):
    """A setup step failed; the message names it and ends with the relevant log tails."""

    def __init__(self, step: str, cause: BaseException, logs: Mapping[str, str]) -> None:
        tails = "".join(f"\n--- {name} (last lines) ---\n{text}" for name, text in logs.items())
        super().__init__(f"lab setup failed at step {step!r}: {type(cause).__name__}: {cause}{tails}")
        self.step = step


class LabTeardownError(RuntimeError):
    """Teardown finished but could not remove everything; the message lists what is left."""


class Lab:
    """The virtual lab; ``setup()`` it, use it, ``teardown()`` it (also after a failure)."""

    def __init__(self, workdir: Path, settings: LabSettings | None = None, *, keep_workdir: bool = False) -> None:
        self.settings = settings or LabSettings()
        self.workdir = workdir
        self.keep_workdir = keep_workdir
        token = secrets.token_bytes(3)
        self.ns_name = f"iw-{token.hex()}"
        s = self.settings
        self.network = LabNetwork(BRIDGE, f"192.168.{100 + token[0] % 100}", s.dhcp_first, s.dhcp_last, s.dhcp_lease)
        self.host_ip = self.network.address
        self.log_dir = workdir / "logs"
        self.pid_dir = workdir / "pids"
        self.www = workdir / "www"
        self.libvirt = Libvirt(workdir / "libvirt")
        self.vms = [
            Vm(
                name=name,
                uuid=str(uuid.uuid4()),
                mac=f"52:54:00:{token[1]:02x}:{token[2]:02x}:{i + 1:02x}",
                serial_log=self.log_dir / f"{name}-serial.log",
                firmware="uefi" if name in self.settings.uefi_vm_names else "bios",
            )
            for i, name in enumerate(self.settings.vm_names)
        ]
        unknown = set(self.settings.uefi_vm_names) - set(self.settings.vm_names)
        if unknown:
            raise ValueError(f"uefi_vm_names {sorted(unknown)} are not in vm_names {list(self.settings.vm_names)}")
        self.timings: dict[str, float] = {}
        self.ns: Netns | None = None
        self.procs: ProcessTable | None = None
        self.sushy: SushyEmulator | None = None
        self.vbmc: VirtualBmc | None = None
        self._extra_sushy: list[SushyEmulator] = []
        self._servers: list[IronworksInLab] = []
        self._libvirtd: LabProcess | None = None

    # ---- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Build the whole lab (about 10 s, most of it libvirtd's capability probe)."""
        t0 = time.monotonic()
        for d in (self.log_dir, self.pid_dir, self.www):
            d.mkdir(parents=True, exist_ok=True)
        with self._step("preflight: programs", []):
            missing = [p for p in SYSTEM_PROGRAMS if shutil.which(p) is None]
            for script in VENV_PROGRAMS:
                try:
                    venv_executable(script)
                except FileNotFoundError:
                    missing.append(script)
            if missing:
                raise FileNotFoundError(
                    f"missing {', '.join(missing)}: `./dev.sh setup` installs the Debian packages and the test extra"
                )
        with self._step("network namespace and bridge", []):
            self.ns = Netns.create(self.ns_name)
            (self.pid_dir / "netns.id").write_text(self.ns.identity + "\n")
            self.procs = ProcessTable(self.ns, pid_dir=self.pid_dir, log_dir=self.log_dir)
            self.ns.ip("link", "add", BRIDGE, "type", "bridge")
            self.ns.ip("addr", "add", f"{self.host_ip}/24", "dev", BRIDGE)
            self.ns.ip("addr", "add", f"{self.network.ipv6_address}/64", "dev", BRIDGE, "nodad")
            self.ns.ip("link", "set", BRIDGE, "up")
        with self._step("libvirtd", [self.log_dir / "libvirtd.log", self.libvirt.state_dir / "log" / "virtlogd.out"]):
            self._start_libvirtd()
        with self._step("storage pool 'default'", [self.log_dir / "libvirtd.log"]):
            self.libvirt.define_pool("default")
        with self._step("virtual machines", [self.log_dir / "libvirtd.log"]):
            for vm in self.vms:
                self.libvirt.define(
                    vm,
                    bridge=BRIDGE,
                    memory_mib=self.settings.memory_mib,
                    disk_gib=self.settings.disk_gib,
                    nic_rom=self.settings.uefi_nic_rom if vm.firmware == "uefi" else self.settings.nic_rom,
                )
        with self._step("HTTP server", [self.log_dir / "http.log"]):
            self._start_http()
        with self._step("sushy-emulator", [self.log_dir / f"sushy-{self.settings.sushy_port}.log"]):
            self.sushy = self.start_sushy(self.settings.sushy_port)
        with self._step("VirtualBMC", [self.log_dir / "vbmcd.log", self.log_dir / "vbmcd-internal.log"]):
            self._start_vbmc()
        self.timings["total"] = time.monotonic() - t0

    @contextlib.contextmanager
    def _step(self, name: str, logs: Sequence[Path]) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        except Exception as exc:
            raise LabSetupError(name, exc, {str(p): log_tail(p) for p in logs}) from exc
        self.timings[name] = time.monotonic() - t

    def _start_libvirtd(self) -> None:
        procs = self._procs()
        self.libvirt.write_config()
        self._libvirtd = procs.start("libvirtd", self.libvirt.wrapper_argv(self.pid_dir))
        proc = self._libvirtd

        def exited() -> str | None:
            code = proc.exit_code()
            return None if code is None else f"libvirtd (or its wrapper) exited with code {code}"

        wait_until("libvirtd", self.libvirt.answers, bound=LIBVIRTD_BOUND_S, failed=exited)
        procs.adopt("virtlogd", self.pid_dir / "virtlogd.pid", self.libvirt.state_dir / "log" / "virtlogd.out")

    def _start_http(self) -> None:
        procs = self._procs()
        argv = [sys.executable, "-m", "http.server", str(self.settings.http_port), "--bind", self.host_ip]
        proc = procs.start("http", [*argv, "--directory", str(self.www)])
        (self.www / "lab.txt").write_text("ironworks lab\n")
        with self._ns().executor() as ex, httpx.Client(timeout=2.0) as client:

            def answers() -> bool:
                try:
                    return ex.submit(client.get, f"{self.http_url}/lab.txt").result().status_code == 200
                except httpx.TransportError:
                    return False

            def exited() -> str | None:
                code = proc.exit_code()
                return None if code is None else f"exited with code {code}"

            wait_until(f"HTTP server on {self.http_url}", answers, bound=30.0, failed=exited)

    def _start_vbmc(self) -> None:
        self.vbmc = VirtualBmc(
            self._procs(), self.workdir / "vbmc", control_port=self.settings.vbmcd_port, libvirt_uri=self.libvirt.uri
        )
        self.vbmc.start()
        for vm in self.vms:
            self.vbmc.add(
                vm.name,
                port=self.ipmi_port(vm),
                username=self.settings.bmc_username,
                password=self.settings.bmc_password,
            )

    # ---- what tests use ----------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """The lab's HTTP server (serving ``www``), reachable inside the namespace and from its VMs."""
        return f"http://{self.host_ip}:{self.settings.http_port}"

    def vm(self, name: str) -> Vm:
        """The VM called ``name``."""
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(f"the lab has no VM {name!r}; it has {', '.join(v.name for v in self.vms)}")

    def vms_with(self, firmware: str) -> list[Vm]:
        """The lab's ``bios`` or ``uefi`` VMs."""
        return [vm for vm in self.vms if vm.firmware == firmware]

    def ipmi_port(self, vm: Vm) -> int:
        """The UDP port of ``vm``'s VirtualBMC on the namespace's 127.0.0.1."""
        return self.settings.vbmc_base_port + self.vms.index(vm)

    def redfish_driver_info(self, vm: Vm, *, sushy: SushyEmulator | None = None) -> dict[str, str | bool]:
        """``driver_info`` of a ``redfish`` node for ``vm`` behind ``sushy`` (default: the lab's)."""
        emulator = sushy or self._sushy()
        return {
            "redfish_address": emulator.url,
            "redfish_system_id": emulator.system_path(vm.uuid),
            "redfish_username": self.settings.bmc_username,
            "redfish_password": self.settings.bmc_password,
            "redfish_verify_ca": False,
        }

    def ipmi_driver_info(self, vm: Vm) -> dict[str, str | int]:
        """``driver_info`` of an ``ipmi`` node for ``vm``."""
        return {
            "ipmi_address": "127.0.0.1",
            "ipmi_port": self.ipmi_port(vm),
            "ipmi_username": self.settings.bmc_username,
            "ipmi_password": self.settings.bmc_password,
        }

    def domain_state(self, vm: Vm) -> str:
        """What libvirt says about the VM itself: ``running``, ``shut off`` ..."""
        return self.libvirt.state(vm.name)

    def wait_for_domain(self, vm: Vm, state: str, *, bound: float = DOMAIN_STATE_BOUND_S) -> None:
        """Wait until libvirt reports ``state`` for ``vm``; AssertionError with the last state after ``bound``."""
        deadline = time.monotonic() + bound
        seen = self.domain_state(vm)
        while seen != state:
            if time.monotonic() > deadline:
                raise AssertionError(f"domain {vm.name} is {seen!r}, not {state!r}, after {bound:.0f} s")
            time.sleep(0.2)
            seen = self.domain_state(vm)

    def wait_for_firmware_start(self, vm: Vm, after: int, *, bound: float = DOMAIN_STATE_BOUND_S) -> int:
        """Wait until ``vm``'s firmware has started more than ``after`` times (serial log); the new count."""
        deadline = time.monotonic() + bound
        while (count := vm.firmware_starts()) <= after:
            if time.monotonic() > deadline:
                raise AssertionError(f"the firmware of {vm.name} did not start again within {bound:.0f} s")
            time.sleep(0.2)
        return count

    def wait_for_serial(self, vm: Vm, pattern: str, *, after: int, bound: float = DOMAIN_STATE_BOUND_S) -> SerialMatch:
        """Wait (bounded) for ``pattern`` on ``vm``'s serial console after byte ``after`` (``vm.serial.offset()``).

        The match, where it ended (the next ``after``) and when it was first seen; an AssertionError with
        the console's and the lab's log tails when it does not appear.
        """
        return vm.serial.wait_for(pattern, after=after, bound=bound, context=self.diagnostics)

    def write_disk_image(self, vm: Vm, image: Path, *, image_format: str) -> None:
        """Put a disk image (``raw`` or ``qcow2``) onto the shut-off ``vm``'s disk, which keeps ``disk_gib``."""
        self.libvirt.replace_disk(vm, image, image_format=image_format, disk_gib=self.settings.disk_gib)

    def blank_disk(self, vm: Vm) -> None:
        """Give the shut-off ``vm`` an empty disk again (before a deploy writes one)."""
        self.libvirt.blank_disk(vm, disk_gib=self.settings.disk_gib)

    def power_off_vm(self, vm: Vm) -> None:
        """Force the domain off directly through libvirt (resetting a VM between tests)."""
        if self.domain_state(vm) != "shut off":
            self.libvirt.virsh("destroy", vm.name)

    def start_sushy(self, port: int) -> SushyEmulator:
        """Start a sushy-emulator for all the lab's VMs on 127.0.0.1:``port`` (stopped at teardown)."""
        emulator = SushyEmulator(
            self._procs(),
            self.workdir / f"sushy-{port}",
            port=port,
            libvirt_uri=self.libvirt.uri,
            allowed_uuids=[vm.uuid for vm in self.vms],
            username=self.settings.bmc_username,
            password=self.settings.bmc_password,
        )
        if self.sushy is not None:
            self._extra_sushy.append(emulator)
        emulator.start()
        return emulator

    def start_ironworks(self, env: Mapping[str, str] | None = None, *, on_bridge: bool = False) -> IronworksInLab:
        """``ironworks serve`` inside the namespace with ``settings.ironworks_env`` plus ``env``.

        ``on_bridge``: listen on every address of the namespace, so VMs (their agents, iPXE fetching
        boot files) reach it at ``http://<bridge address>:<port>``, which becomes ``[api] public_url``.
        That is without authentication (``allow_insecure_noauth``), and safe here: the namespace has
        only its loopback and the bridge, which has no uplink and no route out, so the only peers are
        the lab's own VMs and processes.
        """
        port = self.settings.ironworks_base_port + len(self._servers)
        extra: dict[str, str] = {}
        if on_bridge:
            extra = {
                "IRONWORKS_API_ALLOW_INSECURE_NOAUTH": "true",
                "IRONWORKS_API_PUBLIC_URL": self.network.url(port),
            }
        server = IronworksInLab(
            self._procs(),
            self.workdir / f"ironworks-{port}",
            port=port,
            env={**self.settings.ironworks_env, **extra, **(env or {})},
            host="0.0.0.0" if on_bridge else "127.0.0.1",
            public_host=self.host_ip if on_bridge else None,
        )
        self._servers.append(server)
        server.start()
        return server

    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> str:
        """Run a command inside the namespace; its stdout (RuntimeError with stderr on failure)."""
        proc = self._ns().run(argv, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` exited {proc.returncode} in {self.ns_name}: {proc.stderr.strip()}")
        return proc.stdout

    def diagnostics(self, *, lines: int = 25) -> str:
        """Log tails of the BMC emulators, libvirtd and the VMs' serial ports, for failure messages."""
        names = ["libvirtd.log", f"sushy-{self.settings.sushy_port}.log", "vbmcd.log", "vbmcd-internal.log"]
        paths = [self.log_dir / n for n in names] + [vm.serial_log for vm in self.vms]
        return "".join(f"\n--- {p.name} ---\n{log_tail(p, lines)}" for p in paths)

    # ---- teardown ----------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Remove everything the lab made; raise ``LabTeardownError`` at the end if something stayed."""
        t0 = time.monotonic()
        problems: list[str] = []

        def attempt(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as exc:
                problems.append(f"{what}: {type(exc).__name__}: {exc}")

        for server in reversed(self._servers):
            attempt(f"stopping {server.name}", server.stop)
        for emulator in self._extra_sushy:
            attempt(f"stopping sushy-emulator on port {emulator.port}", emulator.stop)
        if self.vbmc is not None:
            attempt("stopping VirtualBMC", self.vbmc.stop)
        if self.sushy is not None:
            attempt("stopping sushy-emulator", self.sushy.stop)
        libvirtd, procs = self._libvirtd, self.procs
        if libvirtd is not None and procs is not None and procs.running(libvirtd):
            # while libvirtd still runs: it destroys the qemu processes it started
            attempt("removing domains and pools", lambda: problems.extend(self.libvirt.remove_everything()))
            attempt("stopping libvirtd", lambda: procs.stop(libvirtd))
        if self.procs is not None:
            attempt("stopping recorded processes", self.procs.stop_all)
        if self.ns is not None and self.procs is not None:
            # never this process: its threads may sit in the namespace, its main thread does not
            for pid in (p for p in self.ns.pids() if p != os.getpid()):
                attempt(f"stopping leftover pid {pid}", partial(self._procs().stop_pid_in_namespace, pid, "leftover"))
            attempt(f"deleting namespace {self.ns_name}", self.ns.delete)
            if self.ns.exists():
                problems.append(f"namespace {self.ns_name} still exists")
        if not self.keep_workdir:
            attempt(f"removing {self.workdir}", lambda: shutil.rmtree(self.workdir))
        self.timings["teardown"] = time.monotonic() - t0
        if problems:
            raise LabTeardownError("lab teardown left things behind:\n" + "\n".join(problems))

    # ---- internals -----------------------------------------------------------------------------------
    def _ns(self) -> Netns:
        if self.ns is None:
            raise RuntimeError("the lab is not set up")
        return self.ns

    def _procs(self) -> ProcessTable:
        if self.procs is None:
            raise RuntimeError("the lab is not set up")
        return self.procs

    def _sushy(self) -> SushyEmulator:
        if self.sushy is None:
            raise RuntimeError("the lab is not set up")
        return self.sushy
