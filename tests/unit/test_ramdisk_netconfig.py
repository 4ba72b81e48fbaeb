"""Static addressing in the ramdisk (``ironworks.agent.netconfig``): network_data.json found on a CD,
turned into ``ip`` commands for the NICs whose MAC it names, and every problem left to DHCP.

The boundary faked is the command runner (``mount``, ``blkid``, ``ip``): a "mount" copies a directory
that stands for the CD's contents onto the mount point, so the module reads a real file."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ironworks.agent import netconfig

MAC0, MAC1 = "52:54:00:aa:00:01", "52:54:00:aa:00:02"


def network_data(mac: str = MAC0, **net: Any) -> dict[str, Any]:
    """Ironic's network_data.json for one static IPv4 network on ``mac``."""
    network = {
        "id": "net0",
        "type": "ipv4",
        "link": "port0",
        "ip_address": "192.168.7.20",
        "netmask": "255.255.255.0",
        "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.168.7.1"}],
        **net,
    }
    return {
        "links": [{"id": "port0", "type": "phy", "ethernet_mac_address": mac.upper(), "mtu": 1450}],
        "networks": [network],
        "services": [{"type": "dns", "address": "192.168.7.53"}],
    }


class FakeMachine:
    """/dev with sr0, /sys/class/net with two NICs, a CD whose files are ``cd``; records every command."""

    def __init__(self, tmp: Path, *, ip_fails: str = "") -> None:
        self.dev, self.net, self.cd, self.run = tmp / "dev", tmp / "net", tmp / "cd", tmp / "run"
        self.run.mkdir()
        self.resolv = tmp / "resolv.conf"
        self.dev.mkdir()
        (self.dev / "sr0").touch()
        for name, mac in (("ens3", MAC0), ("ens4", MAC1)):
            (self.net / name / "device").mkdir(parents=True)
            (self.net / name / "address").write_text(mac + "\n")
        (self.net / "lo").mkdir()
        (self.net / "lo" / "address").write_text("00:00:00:00:00:00\n")
        self.calls: list[list[str]] = []
        self.mounted: list[Path] = []
        self.ip_fails = ip_fails

    def write(self, content: str | bytes) -> None:
        path = self.cd / netconfig.NETWORK_DATA
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        rc, out = 0, ""
        if argv[0] == "blkid":
            rc = 2  # no labelled device: the CD is found as /dev/sr0
        elif argv[0] == "mount":
            assert argv[1:3] == ["-o", "ro"], "the CD must be mounted read-only"
            fstype, device, target = argv[4:7]
            if device != str(self.dev / "sr0") or not self.cd.exists() or fstype != "iso9660":
                rc = 32
            else:
                shutil.copytree(self.cd, target, dirs_exist_ok=True)
                self.mounted.append(Path(target))
        elif argv[0] == "umount":
            point = Path(argv[1])
            shutil.rmtree(point)
            point.mkdir()
            self.mounted.remove(point)
        elif argv[0] == "ip" and self.ip_fails and self.ip_fails in " ".join(argv):
            rc = 2
        return subprocess.CompletedProcess(argv, rc, out, "RTNETLINK answers: File exists" if rc == 2 else "")

    def ip_calls(self) -> list[str]:
        return [" ".join(c[1:]) for c in self.calls if c[0] == "ip"]

    def configure(self, **kwargs: Any) -> list[str]:
        return netconfig.configure(
            **kwargs,runner=self, dev=self.dev, sys_class_net=self.net, resolv_conf=self.resolv,
                                   mount_under=self.run)  # fmt: skip


@pytest.fixture
def machine(tmp_path: Path) -> FakeMachine:
    return FakeMachine(tmp_path)


def test_a_static_network_configures_its_nic_and_only_that_one(
    machine: FakeMachine, capsys: pytest.CaptureFixture[str]
) -> None:
    machine.write(json.dumps(network_data()))
    assert machine.configure() == ["ens3"]
    assert machine.ip_calls() == [
        "link set ens3 up",
        "link set ens3 mtu 1450",
        "addr add 192.168.7.20/24 dev ens3",
        "-4 route add default via 192.168.7.1 dev ens3",
    ]
    assert machine.resolv.read_text() == "nameserver 192.168.7.53\n"
    assert machine.mounted == [], "the CD must be unmounted again"
    assert list(machine.run.iterdir()) == [], "and its mount point removed"
    err = capsys.readouterr().err
    assert "ironworks-init: static address on ens3 (52:54:00:aa:00:01): 192.168.7.20/24" in err
    assert "routes default via 192.168.7.1" in err


def test_cidr_addresses_more_routes_ipv6_and_network_dns(machine: FakeMachine) -> None:
    doc = network_data(
        MAC1,
        ip_address="10.0.0.5/16",
        netmask=None,
        routes=[{"network": "172.16.0.0", "netmask": "255.240.0.0", "gateway": "10.0.0.254"}],
        dns_nameservers=["10.0.0.53"],
    )
    doc["networks"].append({"id": "net6", "type": "ipv6", "link": "port0", "ip_address": "fd00:1::5",
                            "netmask": "ffff:ffff:ffff:ffff::",
                            "routes": [{"network": "::", "netmask": "::", "gateway": "fd00:1::1"}]})  # fmt: skip
    machine.write(json.dumps(doc))
    assert machine.configure() == ["ens4"]
    calls = machine.ip_calls()
    assert "addr add 10.0.0.5/16 dev ens4" in calls
    assert "addr add fd00:1::5/64 dev ens4" in calls
    assert "-4 route add 172.16.0.0/12 via 10.0.0.254 dev ens4" in calls
    assert "-6 route add default via fd00:1::1 dev ens4" in calls
    assert machine.resolv.read_text() == "nameserver 10.0.0.53\nnameserver 192.168.7.53\n"


def test_dhcp_networks_and_unknown_macs_are_left_to_dhcp(
    machine: FakeMachine, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = network_data("52:54:00:ff:ff:ff")
    doc["links"].append({"id": "port1", "type": "phy", "ethernet_mac_address": MAC0})
    doc["networks"].append({"id": "net1", "type": "ipv4_dhcp", "link": "port1"})
    machine.write(json.dumps(doc))
    assert machine.configure() == []
    assert machine.ip_calls() == []
    assert not machine.resolv.exists()
    err = capsys.readouterr().err
    assert "no NIC here has MAC 52:54:00:ff:ff:ff" in err
    assert "no static network for a NIC of this machine: DHCP on every interface" in err


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"{not json", "is not usable (Expecting property name"),
        (b"\xff\xfe", "is not usable ("),
        (b"[]", "must be a JSON object"),
        (json.dumps(network_data(ip_address="192.168.7.300")).encode(), "is not an address with a prefix"),
        (json.dumps(network_data(netmask=None)).encode(), "needs a netmask"),
        (json.dumps(network_data(routes=[{"network": "0.0.0.0"}])).encode(), "a route needs 'network' and 'gateway'"),
    ],
)
def test_bad_network_data_is_said_and_nothing_is_configured(
    machine: FakeMachine, capsys: pytest.CaptureFixture[str], content: bytes, said: str
) -> None:
    machine.write(content)
    assert machine.configure() == []
    assert machine.ip_calls() == []
    err = capsys.readouterr().err
    assert f"{netconfig.NETWORK_DATA} is not usable" in err and said in err
    assert "DHCP on every interface" in err
    assert machine.mounted == []


def test_no_cd_means_dhcp_everywhere(machine: FakeMachine, capsys: pytest.CaptureFixture[str]) -> None:
    assert machine.configure() == []  # sr0 does not mount: no medium
    assert machine.ip_calls() == []
    assert "no openstack/latest/network_data.json on a config drive or CD: DHCP on every interface" in (
        capsys.readouterr().err
    )


def test_a_failed_ip_command_flushes_the_nic_and_leaves_it_to_dhcp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = FakeMachine(tmp_path, ip_fails="route add")
    machine.write(json.dumps(network_data()))
    assert machine.configure() == []
    assert machine.ip_calls()[-1] == "addr flush dev ens3"
    assert not machine.resolv.exists()
    err = capsys.readouterr().err
    assert "static addressing of ens3 (52:54:00:aa:00:01) failed, DHCP instead" in err
    assert "RTNETLINK answers: File exists" in err


def test_it_refuses_to_run_outside_a_ramdisk(capsys: pytest.CaptureFixture[str]) -> None:
    # the test host's / is a real file system: nothing may be mounted or configured here
    assert netconfig.main([]) == 2
    assert "runs only in the ramdisk; nothing done" in capsys.readouterr().err


def test_a_late_cd_is_waited_for_when_asked(machine: FakeMachine, capsys: pytest.CaptureFixture[str]) -> None:
    """A USB virtual CD appears after /init started: with a wait, netconfig polls until it is there."""
    machine.write(json.dumps(network_data()))
    (machine.dev / "sr0").unlink()
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            (machine.dev / "sr0").touch()

    assert machine.configure(wait=10.0, sleep=sleep) == ["ens3"]
    assert len(naps) == 3
    assert "waited 1.5 s for a CD or config drive:" in capsys.readouterr().err


def test_without_a_wait_a_missing_cd_is_not_waited_for(machine: FakeMachine) -> None:
    (machine.dev / "sr0").unlink()
    naps: list[float] = []
    assert machine.configure(sleep=naps.append) == []
    assert naps == []


@pytest.mark.parametrize(
    ("cmdline", "seconds"),
    [
        ("console=ttyS0 ironworks-netconfig-wait=15 ipa-api-url=http://x", 15.0),
        ("ironworks_netconfig_wait=2.5", 2.5),
        ("console=ttyS0", 0.0),
        ("ironworks-netconfig-wait=soon", 0.0),
        ("ironworks-netconfig-wait=9999", 0.0),
    ],
)
def test_the_wait_comes_from_the_kernel_command_line(cmdline: str, seconds: float) -> None:
    assert netconfig.wait_seconds(cmdline) == seconds
