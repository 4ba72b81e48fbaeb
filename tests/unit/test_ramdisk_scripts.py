"""The ramdisk's shell scripts: /init and the udhcpc hook parse under busybox sh, and the hook configures
the lease it is given. The hook runs under the host's POSIX /bin/sh here, because busybox sh prefers
its own applets to PATH and would never call the fake ``ip`` that records the arguments."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FILES = Path(__file__).resolve().parents[2] / "ironworks" / "ramdisk" / "files"


@pytest.fixture(scope="module")
def busybox() -> str:
    path = shutil.which("busybox")
    if path is None:
        pytest.fail("busybox is missing: ./dev.sh setup installs busybox-static")
    return path


@pytest.mark.parametrize("script", ["init.sh", "udhcpc.script"])
def test_the_scripts_parse_under_busybox_sh(busybox: str, script: str) -> None:
    proc = subprocess.run([busybox, "sh", "-n", str(FILES / script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def _hook(busybox: str, tmp_path: Path, event: str, **lease: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake_ip = bin_dir / "ip"
    fake_ip.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "ip.log"}\n')
    fake_ip.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RESOLV_CONF": str(tmp_path / "resolv.conf"),
           "CONSOLE": str(tmp_path / "console"), **lease}  # fmt: skip
    proc = subprocess.run(["/bin/sh", str(FILES / "udhcpc.script"), event], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    log = tmp_path / "ip.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_lease_sets_address_routes_mtu_and_resolver(busybox: str, tmp_path: Path) -> None:
    lease = {"interface": "enp3s0", "ip": "10.1.2.3", "mask": "22", "broadcast": "10.1.3.255", "mtu": "9000",
             "router": "10.1.2.1 10.1.2.254", "dns": "10.1.2.53 10.1.2.54", "domain": "lab.example"}  # fmt: skip
    calls = _hook(busybox, tmp_path, "bound", **lease)
    assert "addr add 10.1.2.3/22 broadcast 10.1.3.255 dev enp3s0" in calls
    assert "link set enp3s0 mtu 9000" in calls
    assert calls.index("-4 addr flush dev enp3s0") < calls.index("addr add 10.1.2.3/22 broadcast 10.1.3.255 dev enp3s0")
    assert "route add default via 10.1.2.1 dev enp3s0 metric 0" in calls
    assert "route add default via 10.1.2.254 dev enp3s0 metric 1" in calls
    resolv = (tmp_path / "resolv.conf").read_text().splitlines()
    assert resolv == ["search lab.example", "nameserver 10.1.2.53", "nameserver 10.1.2.54"]
    console = (tmp_path / "console").read_text()
    assert console.strip() == "ironworks-init: DHCP bound on enp3s0: 10.1.2.3/22 router 10.1.2.1 10.1.2.254"


def test_a_lease_without_router_or_dns_leaves_routes_and_resolver_alone(busybox: str, tmp_path: Path) -> None:
    calls = _hook(busybox, tmp_path, "renew", interface="eth0", ip="192.0.2.9")
    assert calls == ["-4 addr flush dev eth0", "addr add 192.0.2.9/24 dev eth0"]
    assert not (tmp_path / "resolv.conf").exists()


def test_deconfig_drops_the_address_and_keeps_the_link_up(busybox: str, tmp_path: Path) -> None:
    assert _hook(busybox, tmp_path, "deconfig", interface="eth1") == ["-4 addr flush dev eth1", "link set eth1 up"]
