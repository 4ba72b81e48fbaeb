"""DHCP for network boot against the real dnsmasq that ``ironworks serve`` supervises, in a private namespace.

The test creates a network namespace with two veth pairs, both ends of each inside it
(``srv0``/``cli0`` 192.168.213.0/24 and ``srv1``/``cli1`` 192.168.214.0/24; nothing in the root
namespace). ``ironworks serve`` runs inside it with ``[dhcp] manage_dnsmasq`` on ``srv0``; the DHCP
client is busybox ``udhcpc`` on ``cli0`` (its MAC set per case), requesting options 66, 67, 209 and
210, sending client-arch (93) and user class (77) or option 175 like PXE ROMs and iPXE do, and a
script that dumps what it received. The test writes the node's options through the provider
exactly as a boot interface does (``DnsmasqDhcp`` on the server's state directory) and waits until
dnsmasq's log says it read the files, so each case sees what the running dnsmasq serves.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ironworks.config import load_config
from ironworks.netboot.dhcp import DhcpOption
from ironworks.netboot.dnsmasq import DnsmasqDhcp
from tests.lab.netns import Netns
from tests.lab.processes import ProcessTable, log_tail, venv_executable
from tests.lab.service import IronworksInLab

NET0, NET1 = "192.168.213", "192.168.214"
NODE_A = "1be26c0b-03f2-4d2d-ae87-c02d7f33c123"
NODE_B = "8f5c1a8e-7a61-4c37-9d71-8a1f2b3c4d5e"
NODE_C = "0a8a0b8c-1d2e-4f30-9142-535465768798"
BIOS, EFI64 = 0, 7
#: bounds, not expectations: dnsmasq reads a changed file within milliseconds
LOG_BOUND_S = 20.0
RESTART_BOUND_S = 30.0
DUMP_SCRIPT = '#!/bin/sh\n[ "$1" = bound ] && env > "$IW_DHCP_DUMP"\nexit 0\n'


@dataclass
class DhcpLab:
    """The namespace, the server supervising dnsmasq on srv0, and the provider on its state directory."""

    ns: Netns
    workdir: Path
    procs: ProcessTable
    server: IronworksInLab
    provider: DnsmasqDhcp
    runs: int = 0

    @property
    def dnsmasq_log(self) -> Path:
        """dnsmasq's own log (``log-facility``) under the server's state directory."""
        return self.server.state_dir / "logs" / "dnsmasq.log"

    @property
    def dnsmasq_pid(self) -> int:
        """The PID the supervised dnsmasq wrote, checked to be a live process in our namespace."""
        pid = int((self.server.state_dir / "dnsmasq" / "dnsmasq.pid").read_text().split()[0])
        assert self.ns.owns(pid), f"dnsmasq pid {pid} is not a live process in {self.ns.name}"
        return pid

    def log_offset(self) -> int:
        """Where dnsmasq's log ends now."""
        return self.dnsmasq_log.stat().st_size if self.dnsmasq_log.exists() else 0

    def wait_for_log(self, text: str, since: int, *, log: Path | None = None) -> None:
        """Wait (bounded) until dnsmasq's log has ``text`` after offset ``since``."""
        path = log or self.dnsmasq_log
        deadline = time.monotonic() + LOG_BOUND_S
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text(errors="replace")[since:]:
                return
            time.sleep(0.05)
        pytest.fail(f"dnsmasq did not log {text!r} in {LOG_BOUND_S:.0f} s:\n{log_tail(path, 40)}")

    def update(self, node: str, mac: str, options: list[DhcpOption]) -> None:
        """Give ``mac`` the node's options and wait until the running dnsmasq has read its host file."""
        since = self.log_offset()
        self.provider.update_dhcp_opts(node, [mac], options)
        self.wait_for_log(f"read {self.provider.hostsdir}/ironworks-{mac.replace(':', '-')}.conf", since)

    def clean(self, node: str, mac: str) -> None:
        """Clean the node's DHCP entries and wait until dnsmasq has read the ignore entry."""
        since = self.log_offset()
        self.provider.clean_dhcp_opts(node, [mac])
        self.wait_for_log(f"read {self.provider.hostsdir}/ironworks-{mac.replace(':', '-')}.conf", since)

    def request(
        self, mac: str, *, arch: int | None = None, ipxe: str = "", iface: str = "cli0", tries: int = 3
    ) -> dict[str, str] | None:
        """One DHCP exchange from ``mac``: the options of the lease, or None when no server answered."""
        self.ns.ip("link", "set", iface, "address", mac)
        self.runs += 1
        dump = self.workdir / f"lease-{self.runs}.env"
        argv = [shutil.which("udhcpc") or "udhcpc", "-f", "-q", "-n", "-t", str(tries), "-T", "1", "-i", iface]
        argv += ["-s", str(self.workdir / "dump.sh"), "-O", "66", "-O", "67", "-O", "209", "-O", "210"]
        if arch is not None:
            argv += ["-x", f"0x5d:{arch:04x}"]  # client-arch, as a PXE ROM sends it
        if ipxe == "user-class":
            argv += ["-x", "0x4d:" + b"iPXE".hex()]  # iPXE's user class (77)
        elif ipxe == "option-175":
            argv += ["-x", "0xaf:b10101"]  # iPXE's encapsulated options (175)
        done = self.ns.run(argv, env={**os.environ, "IW_DHCP_DUMP": str(dump)}, timeout=60)
        if not dump.exists():
            assert done.returncode != 0, f"udhcpc exited 0 without a lease: {done.stdout}{done.stderr}"
            return None
        return dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)


def _veth(ns: Netns, server_end: str, client_end: str, net: str) -> None:
    ns.ip("link", "add", server_end, "type", "veth", "peer", "name", client_end)
    ns.ip("addr", "add", f"{net}.1/24", "dev", server_end)
    ns.ip("link", "set", server_end, "up")
    ns.ip("link", "set", client_end, "up")


def _dhcp_env(iface: str, net: str, **extra: str) -> dict[str, str]:
    env = {
        "IRONWORKS_DHCP_MANAGE_DNSMASQ": "true",
        "IRONWORKS_DHCP_INTERFACE": iface,
        "IRONWORKS_DHCP_DHCP_RANGE": f"{net}.100,{net}.200,255.255.255.0,10m",
        # no ICMP probe before each new address: it only adds ~3 s to every first lease here
        "IRONWORKS_DHCP_EXTRA_OPTIONS": "no-ping",
    }
    env.update({f"IRONWORKS_DHCP_{k.upper()}": v for k, v in extra.items()})
    return env


@pytest.fixture(scope="module")
def lab() -> Iterator[DhcpLab]:
    """A namespace with two veth pairs and ``ironworks serve`` supervising dnsmasq on srv0."""
    if os.geteuid() != 0:
        pytest.fail("these tests need root (a network namespace, a DHCP server); CI runs them as root", pytrace=False)
    for tool in ("udhcpc", "busybox", "dnsmasq"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: ./dev.sh setup installs it", pytrace=False)
    workdir = Path(tempfile.mkdtemp(prefix="iw-dhcp-"))
    ns = Netns.create(f"iw-dhcp-{secrets.token_hex(3)}")
    procs = ProcessTable(ns, pid_dir=workdir, log_dir=workdir)
    server = None
    try:
        _veth(ns, "srv0", "cli0", NET0)
        _veth(ns, "srv1", "cli1", NET1)
        ns.ip("addr", "add", "fd00:214::1/64", "dev", "srv1", "nodad")  # a prefix to advertise
        (workdir / "dump.sh").write_text(DUMP_SCRIPT)
        (workdir / "dump.sh").chmod(0o755)
        server = IronworksInLab(procs, workdir / "a", port=6385, env=_dhcp_env("srv0", NET0))
        server.start()
        cfg = load_config(None, environ={}, overrides={"": {"state_dir": str(server.state_dir)}})
        yield DhcpLab(ns, workdir, procs, server, DnsmasqDhcp(cfg))
    finally:
        if server is not None:
            server.stop()
        procs.stop_all()
        for pid in ns.pids():  # a dnsmasq that outlived its server would be a bug: stop it anyway
            procs.stop_pid_in_namespace(pid, f"leftover-{pid}")
        ns.delete()
        shutil.rmtree(workdir, ignore_errors=True)


def test_pxe_bios_gets_bootfile_and_next_server(lab: DhcpLab) -> None:
    mac = "52:54:00:13:00:01"
    lab.update(
        NODE_A,
        mac,
        [
            DhcpOption("bootfile-name", "pxelinux.0", tags=("!ipxe",)),
            DhcpOption("server-ip-address", f"{NET0}.5"),
        ],
    )
    lease = lab.request(mac, arch=BIOS)
    assert lease is not None, log_tail(lab.dnsmasq_log)
    assert lease["bootfile"] == "pxelinux.0"
    assert lease["siaddr"] == f"{NET0}.5"
    assert lease["ip"].startswith(f"{NET0}.")


def test_ipxe_chain_loader_first_then_the_script_url(lab: DhcpLab) -> None:
    mac = "52:54:00:13:00:02"
    script = f"http://{NET0}.1:6385/boot/{NODE_B}/boot.ipxe"
    lab.update(
        NODE_B,
        mac,
        [
            DhcpOption("bootfile-name", "undionly.kpxe", tags=("!ipxe", "bios")),
            DhcpOption("bootfile-name", "snponly.efi", tags=("!ipxe", "efi64")),
            DhcpOption("bootfile-name", script, tags=("ipxe",)),
        ],
    )
    bios, uefi = lab.request(mac, arch=BIOS), lab.request(mac, arch=EFI64)
    by_user_class, by_175 = lab.request(mac, arch=BIOS, ipxe="user-class"), lab.request(mac, ipxe="option-175")
    assert bios is not None and bios["bootfile"] == "undionly.kpxe"
    assert uefi is not None and uefi["bootfile"] == "snponly.efi"
    assert by_user_class is not None and by_user_class["bootfile"] == script
    assert by_175 is not None and by_175["bootfile"] == script


@pytest.mark.parametrize("prefix", ["/srv/ironworks/tftpboot/", f"http://{NET0}.1:6385/boot/"])
def test_petitboot_gets_209_and_210_and_no_bootfile(lab: DhcpLab, prefix: str) -> None:
    mac = "52:54:00:13:00:03"
    # the MAC first gets a bootfile, as a pxe boot would give it: it must not survive the change
    lab.update(NODE_C, mac, [DhcpOption("bootfile-name", "pxelinux.0")])
    before = lab.request(mac)
    assert before is not None and before["bootfile"] == "pxelinux.0"
    lab.update(NODE_C, mac, [DhcpOption("209", f"{NODE_C}/config"), DhcpOption("210", prefix)])
    lease = lab.request(mac)
    assert lease is not None, log_tail(lab.dnsmasq_log)
    assert lease["pxeconffile"] == f"{NODE_C}/config"
    assert lease["pxepathprefix"] == prefix
    assert "bootfile" not in lease and "opt67" not in lease


def test_changes_reach_the_running_dnsmasq_without_a_restart(lab: DhcpLab) -> None:
    mac = "52:54:00:13:00:04"
    pid = lab.dnsmasq_pid
    lab.update(NODE_A, mac, [DhcpOption("bootfile-name", "first.efi")])
    first = lab.request(mac)
    lab.update(NODE_A, mac, [DhcpOption("bootfile-name", "second.efi")])
    second = lab.request(mac)
    assert first is not None and first["bootfile"] == "first.efi"
    assert second is not None and second["bootfile"] == "second.efi"
    assert lab.dnsmasq_pid == pid


def test_cleaned_up_mac_gets_no_answer(lab: DhcpLab) -> None:
    mac = "52:54:00:13:00:05"
    lab.update(NODE_B, mac, [DhcpOption("bootfile-name", "pxelinux.0")])
    assert lab.request(mac) is not None
    lab.clean(NODE_B, mac)
    since = lab.log_offset()
    assert lab.request(mac, tries=2) is None
    lab.wait_for_log(f"{mac} ignored", since)


def test_unknown_mac_is_ignored(lab: DhcpLab) -> None:
    mac = "52:54:00:13:00:99"
    since = lab.log_offset()
    assert lab.request(mac, arch=BIOS, tries=2) is None
    lab.wait_for_log(f"{mac} ignored", since)


def test_tftp_serves_the_tftp_root(lab: DhcpLab) -> None:
    root = lab.server.state_dir / "tftpboot"
    payload = secrets.token_bytes(70_000)  # more than one hundred 512-byte TFTP blocks
    (root / "probe.bin").write_bytes(payload)
    got = lab.workdir / "probe.got"
    done = lab.ns.run(["busybox", "tftp", "-g", "-r", "probe.bin", "-l", str(got), f"{NET0}.1"], timeout=60)
    assert done.returncode == 0, done.stderr
    assert got.read_bytes() == payload


def test_unknown_macs_discovery_boots_the_default_and_known_macs_keep_their_own(lab: DhcpLab) -> None:
    server = IronworksInLab(
        lab.procs, lab.workdir / "b", port=6386, env=_dhcp_env("srv1", NET1, unknown_macs="discovery", enable_ra="true")
    )
    server.start()
    try:
        log = server.state_dir / "logs" / "dnsmasq.log"
        lab.wait_for_log("router advertisement on fd00:214::", 0, log=log)
        provider = DnsmasqDhcp(load_config(None, environ={}, overrides={"": {"state_dir": str(server.state_dir)}}))
        unknown = "52:54:00:14:00:01"
        bios = lab.request(unknown, arch=BIOS, iface="cli1")
        uefi = lab.request(unknown, arch=EFI64, iface="cli1")
        chained = lab.request(unknown, ipxe="user-class", iface="cli1")
        assert bios is not None and bios["bootfile"] == "undionly.kpxe"
        assert uefi is not None and uefi["bootfile"] == "snponly.efi"
        assert chained is not None and chained["bootfile"] == "http://127.0.0.1:6386/boot/default.ipxe"
        known = "52:54:00:14:00:02"
        since = log.stat().st_size
        provider.update_dhcp_opts(NODE_C, [known], [DhcpOption("209", f"{NODE_C}/config")])
        lab.wait_for_log(f"read {provider.hostsdir}/ironworks-52-54-00-14-00-02.conf", since, log=log)
        lease = lab.request(known, arch=BIOS, iface="cli1")
        assert lease is not None and lease["pxeconffile"] == f"{NODE_C}/config" and "bootfile" not in lease
    finally:
        server.stop()


def test_a_separate_conductor_runs_dnsmasq_and_stops_it(lab: DhcpLab) -> None:
    state = lab.workdir / "c"
    exe = str(venv_executable("ironworks"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("IRONWORKS_")}
    env = {**base, **_dhcp_env("srv1", NET1)}
    upgraded = lab.ns.run([exe, "db", "upgrade", "--state-dir", str(state)], env=env, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    conductor = lab.procs.start("conductor", [exe, "conductor", "--state-dir", str(state)], env=env)
    try:
        pid_file = state / "dnsmasq" / "dnsmasq.pid"
        deadline = time.monotonic() + LOG_BOUND_S
        while not pid_file.exists() and conductor.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_file.exists(), conductor.log_tail()
        dnsmasq = int(pid_file.read_text().split()[0])
        mac = "52:54:00:14:00:03"
        provider = DnsmasqDhcp(load_config(None, environ={}, overrides={"": {"state_dir": str(state)}}))
        provider.update_dhcp_opts(NODE_A, [mac], [DhcpOption("bootfile-name", "from-conductor.efi")])
        lab.wait_for_log(
            f"read {provider.hostsdir}/ironworks-52-54-00-14-00-03.conf", 0, log=state / "logs" / "dnsmasq.log"
        )
        lease = lab.request(mac, iface="cli1")
        assert lease is not None and lease["bootfile"] == "from-conductor.efi"
    finally:
        lab.procs.stop(conductor)  # SIGTERM by PID
    assert conductor.exit_code() == 0, conductor.log_tail()
    assert not lab.ns.owns(dnsmasq)


def test_serve_fails_clearly_when_dnsmasq_cannot_start(lab: DhcpLab) -> None:
    state = lab.workdir / "bad"
    argv = [str(venv_executable("ironworks")), "serve", "--port", "6390", "--state-dir", str(state)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("IRONWORKS_")}
    done = lab.ns.run(argv, env={**base, **_dhcp_env("nosuch0", NET0)}, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "unknown interface nosuch0" in done.stderr
    assert "[dhcp] interface" in done.stderr
    assert not (state / "dnsmasq" / "dnsmasq.pid").exists()


def test_killed_dnsmasq_is_restarted_and_stopped_with_serve(lab: DhcpLab) -> None:
    mac = "52:54:00:13:00:06"
    lab.update(NODE_A, mac, [DhcpOption("bootfile-name", "again.kpxe")])
    old = lab.dnsmasq_pid
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + RESTART_BOUND_S
    new = old
    while time.monotonic() < deadline and new == old:
        time.sleep(0.1)
        try:
            new = lab.dnsmasq_pid
        except (OSError, ValueError, IndexError, AssertionError):
            continue
    assert new != old, f"dnsmasq was not restarted:\n{lab.server.log_tail()}"
    assert "restarting it in" in lab.server.log_tail(200)
    lease = lab.request(mac)
    assert lease is not None and lease["bootfile"] == "again.kpxe"
    lab.server.stop()  # SIGTERM to serve, by its PID
    assert not lab.ns.owns(new), f"dnsmasq {new} outlived serve:\n{lab.server.log_tail()}"
    assert lab.ns.pids() == []
