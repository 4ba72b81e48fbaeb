"""``ironworks ramdisk build`` for real: Debian packages -> kernel, initramfs, ISO; then boot them on TCG.

The build runs once per set of builder inputs (the sources of ``ironworks/ramdisk`` and the agent,
and the build options) into /var/cache/ironworks-tests/ramdisk/builds/<key>, so later runs and CI
reuse it; the download cache sits beside it. ``IRONWORKS_TEST_RAMDISK_BUILD=DIR`` points the tests
at an existing build made with the same options (``--iso`` and the kernel parameters below).

Every VM runs inside a network namespace this test creates: its NICs are taps there (one with a
dnsmasq DHCP server inside the namespace, one with nothing), so no packet leaves the namespace.
Every qemu and dnsmasq is stopped by its PID.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab.netns import Netns

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("IRONWORKS_TEST_RAMDISK_CACHE", "/var/cache/ironworks-tests/ramdisk"))
API_URL = "http://127.0.0.1:9/"  # nothing listens there: the agent's lookup must fail to connect
ISO_PARAMS = ("console=ttyS0", f"ipa-api-url={API_URL}")
BUILD_BOUND_S = 1800.0
BOOT_BOUND_S = 300.0  # bounds, not expectations: a TCG boot to the agent takes 30-60 s
MAC_VIRTIO, MAC_E1000 = "52:54:00:1a:00:01", "52:54:00:1a:00:02"
TOOLS = ("qemu-img", "sgdisk", "sfdisk", "lsblk", "blkid", "wipefs", "hdparm", "nvme", "stress-ng", "fio",
         "ipmitool", "dmidecode", "mkfs.vfat", "shred", "tar", "gzip", "sha256sum", "bash", "udhcpc",
         "modprobe", "sshd", "getty", "login")  # fmt: skip
pytestmark = pytest.mark.timeout(BUILD_BOUND_S + 600)


def _ironworks() -> Path:
    exe = REPO / ".venv/bin/ironworks"
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: run ./dev.sh setup")
    return exe


def _inputs_key(args: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(args).encode())
    for base in ("ironworks/ramdisk", "ironworks/agent"):
        for path in sorted((REPO / base).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update((REPO / "ironworks/__init__.py").read_bytes())
    return digest.hexdigest()[:16]


def _build(output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(_ironworks()), "ramdisk", "build", "--output", str(output), "--cache", str(CACHE), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_BOUND_S, check=False)


@dataclass
class Built:
    """One build's output directory and manifest."""

    out: Path
    manifest: dict[str, object]
    reused: bool

    @property
    def kernel(self) -> Path:
        return self.out / "ironworks-agent.kernel"

    @property
    def initramfs(self) -> Path:
        return self.out / "ironworks-agent.initramfs"

    @property
    def iso(self) -> Path:
        return self.out / "ironworks-agent.iso"


def prune_builds(builds: Path, *, keep: Path) -> None:
    """Remove every finished build but ``keep`` (only the newest is kept), and the half-done builds of
    processes that are gone; another process's build in progress (``<key>.tmp-<pid>``) is left alone."""
    for old in builds.glob("*"):
        if old == keep:
            continue
        _, sep, pid = old.name.partition(".tmp-")
        if sep and pid.isdigit() and Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="session")
def built() -> Built:
    """The build of this tree's builder and agent (reused from the cache when its inputs are unchanged)."""
    given = os.environ.get("IRONWORKS_TEST_RAMDISK_BUILD")  # a developer's build of the same options
    if given:
        return Built(Path(given), json.loads((Path(given) / "manifest.json").read_text()), True)
    args = ["--iso", *(f"--kernel-param={p}" for p in ISO_PARAMS)]
    out = CACHE / "builds" / _inputs_key(args)
    if not (out / "manifest.json").is_file():
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.monotonic()
        proc = _build(tmp, *args)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.fail(f"ironworks ramdisk build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        (tmp / "build-output.txt").write_text(f"{proc.stdout}\nwall time {time.monotonic() - started:.1f} s\n")
        prune_builds(CACHE / "builds", keep=tmp)
        tmp.rename(out)
        reused = False
    else:
        reused = True
    return Built(out, json.loads((out / "manifest.json").read_text()), reused)


def _members(initramfs: Path) -> list[str]:
    """``zstd -dc | cpio -t``: the member names as the real cpio reads them."""
    with subprocess.Popen(["zstd", "-dc", str(initramfs)], stdout=subprocess.PIPE) as unzstd:
        listing = subprocess.run(
            ["cpio", "-t", "--quiet"], stdin=unzstd.stdout, capture_output=True, text=True, timeout=300
        )
    assert unzstd.returncode == 0 and listing.returncode == 0, listing.stderr
    return listing.stdout.splitlines()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_build_writes_kernel_initramfs_iso_and_a_manifest_naming_the_tools(built: Built) -> None:
    m = built.manifest
    for key, path in (("kernel", built.kernel), ("initramfs", built.initramfs), ("iso", built.iso)):
        info = m[key]
        assert isinstance(info, dict)
        assert path.is_file() and info["size"] == path.stat().st_size and info["sha256"] == _sha256(path)
    initramfs = m["initramfs"]
    assert isinstance(initramfs, dict) and initramfs["size"] <= 60 * 1000 * 1000, "over the 60 MB target"
    assert built.initramfs.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    tools = m["tools"]
    assert isinstance(tools, dict) and all(tools.get(t) for t in TOOLS), tools
    names = {p["name"] for p in m["packages"]}  # type: ignore[attr-defined]
    assert {"python3.11-minimal", "qemu-utils", "gdisk", "nvme-cli", "stress-ng", "fio", "ipmitool"} <= names
    assert not {"debconf", "perl-base", "dpkg"} & names  # installed-system plumbing stays out


def test_the_initramfs_holds_the_agent_each_tool_and_working_module_lists(built: Built) -> None:
    members = set(_members(built.initramfs))
    assert {
        "init",
        "usr/share/udhcpc/default.script",
        "dev/console",
        "bin",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/ssh/sshd_config",  # rescue logins
    } <= members
    assert not any(m.startswith("etc/ssh/ssh_host_") for m in members)  # host keys are made at boot, never shipped
    site = "usr/lib/python3/dist-packages/ironworks"
    assert {f"{site}/__init__.py", f"{site}/agent/__main__.py", f"{site}/agent/main.py"} <= members
    others = [
        m
        for m in members
        if m.startswith(f"{site}/")
        and not m.startswith(f"{site}/agent")
        and m.rsplit("/", 1)[-1].split(".")[0] not in ("__init__", "__pycache__")
    ]
    assert not others, "only the agent of Ironworks goes into the ramdisk"
    tools = built.manifest["tools"]
    assert isinstance(tools, dict)
    for tool in TOOLS:
        assert str(tools[tool]).lstrip("/") in members, tool
    kver = built.manifest["kernel"]["release"]  # type: ignore[index]
    assert {f"usr/lib/modules/{kver}/modules.dep", f"usr/lib/modules/{kver}/modules.alias"} <= members
    assert any(m.endswith("/virtio_net.ko") for m in members) and any(m.endswith("/nvme.ko") for m in members)
    assert "usr/lib/x86_64-linux-gnu/libgcc_s.so.1" in members  # dlopen()ed by pthread_exit
    assert not any("/test/" in m or "/idlelib/" in m or m.startswith("usr/share/doc/") for m in members)


def test_building_again_gives_the_same_bytes(built: Built, tmp_path: Path) -> None:
    """Two more builds from the same inputs: byte-identical initramfs files, and the same archive as the
    cached build. They use zstd -3 instead of -19 to spare CI some 4 minutes; the archive (the cpio)
    is compared across all three, and zstd at one level is deterministic for the same input."""
    outs = []
    for name in ("a", "b"):
        proc = _build(tmp_path / name, "--compression-level", "3")
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(tmp_path / name / "ironworks-agent.initramfs")
    assert outs[0].read_bytes() == outs[1].read_bytes()
    raw = [
        subprocess.run(["zstd", "-dc", str(p)], capture_output=True, check=True).stdout
        for p in (outs[0], built.initramfs)
    ]
    assert hashlib.sha256(raw[0]).digest() == hashlib.sha256(raw[1]).digest()
    assert (tmp_path / "a/ironworks-agent.kernel").read_bytes() == built.kernel.read_bytes()


def test_a_package_apt_does_not_know_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    proc = _build(tmp_path / "out", "--extra-package", "no-such-package-ironworks")
    assert proc.returncode == 1
    assert "no-such-package-ironworks" in proc.stderr and "apt-get update" in proc.stderr
    assert not any((tmp_path / "out").glob("ironworks-agent.*"))
    proc = _build(tmp_path / "out", "--kernel-deb", str(tmp_path / "missing.deb"))
    assert proc.returncode == 1 and "--kernel-deb" in proc.stderr and "missing.deb" in proc.stderr


# ---- booting on TCG --------------------------------------------------------------------------------


@dataclass
class Lab:
    """A namespace with two taps (tap0 has DHCP from dnsmasq), and the processes started in it."""

    ns: Netns
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the namespace (``ip netns exec`` execs it: the PID is the program's own)."""
        with log.open("ab") as f:
            proc = subprocess.Popen(self.ns.command(argv), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM each process by its PID, SIGKILL after a bound, and reap it."""
        for proc in reversed(self.procs):
            if proc.poll() is None and self.ns.owns(proc.pid):
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    ns = Netns.create(f"iw-rd-{uuid.uuid4().hex[:8]}")
    lab = Lab(ns, tmp_path)
    try:
        for tap in ("tap0", "tap1"):
            ns.ip("tuntap", "add", "dev", tap, "mode", "tap")
            ns.ip("link", "set", tap, "up")
        ns.ip("addr", "add", "10.99.0.1/24", "dev", "tap0")
        lab.start(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=tap0",
                   "--bind-interfaces", "--dhcp-range=10.99.0.50,10.99.0.99,255.255.255.0,5m", "--user=root",
                   f"--dhcp-leasefile={tmp_path / 'leases'}", "--pid-file=", "--log-dhcp"],
                  tmp_path / "dnsmasq.log")  # fmt: skip
        yield lab
    finally:
        lab.stop_all()
        ns.delete()


def _qemu(log: Path, *boot: str, machine: str = "pc") -> list[str]:
    return [
        "qemu-system-x86_64", "-machine", f"{machine},accel=tcg", "-m", "1024", "-smp", "1",
        "-display", "none", "-monitor", "none", "-serial", f"file:{log}", "-no-reboot",
        "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC_VIRTIO}",
        "-netdev", "tap,id=n1,ifname=tap1,script=no,downscript=no", "-device", f"e1000,netdev=n1,mac={MAC_E1000}",
        *boot,
    ]  # fmt: skip


def _wait_for(log: Path, proc: subprocess.Popen[bytes], pattern: str) -> str:
    """The console text once ``pattern`` appears in it (bounded; fails with the console's tail)."""
    deadline = time.monotonic() + BOOT_BOUND_S
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if re.search(pattern, text):
            return text
        if proc.poll() is not None:
            break
        time.sleep(1)
    pytest.fail(f"{pattern!r} did not appear on the console (qemu exit {proc.poll()}):\n{text[-4000:]}")


def _assert_agent_started_and_tried_its_lookup(text: str, firmware: str) -> None:
    assert re.search(rf"ironworks-init: started \(kernel \S+, firmware {firmware}", text), text[-3000:]
    loaded = re.search(r"ironworks-init: modules loaded: (.*)", text)
    assert loaded and {"virtio_net", "e1000"} <= set(loaded.group(1).split()), text[-3000:]
    for mac in (MAC_VIRTIO, MAC_E1000):  # every NIC, whatever its name
        assert re.search(rf"ironworks-init: interface \S+ \({mac}\) up, starting DHCP", text)
    assert re.search(r"ironworks-init: starting the agent \(run 1, uptime [\d.]+s\)", text)
    lookup = re.search(r"looking up the node at http://127\.0\.0\.1:9 with MAC addresses (.*)", text)
    assert lookup and {MAC_VIRTIO, MAC_E1000} <= set(lookup.group(1).replace(",", " ").split())
    assert re.search(r"lookup not answered yet \(.*[Cc]onnection refused", text), text[-3000:]


def test_the_kernel_and_initramfs_boot_to_the_agent(built: Built, lab: Lab) -> None:
    log = lab.workdir / "console.log"
    append = f"console=ttyS0 ipa-api-url={API_URL} ironworks-modules=loop"
    proc = lab.start(_qemu(log, "-kernel", str(built.kernel), "-initrd", str(built.initramfs), "-append", append),
                     lab.workdir / "qemu.log")  # fmt: skip
    text = _wait_for(log, proc, r"lookup not answered yet")
    _assert_agent_started_and_tried_its_lookup(text, "bios")
    bound = re.search(r"ironworks-init: DHCP bound on (\S+): (10\.99\.0\.\d+)/24", text)
    assert bound, "the NIC with a DHCP server in reach got no address:\n" + text[-3000:]
    assert re.search(r"ironworks-init: network up after \d+s: \S+ 10\.99\.0\.\d+/24", text)


def test_the_iso_boots_on_bios(built: Built, lab: Lab) -> None:
    log = lab.workdir / "console.log"
    proc = lab.start(_qemu(log, "-cdrom", str(built.iso), "-boot", "d"), lab.workdir / "qemu.log")
    text = _wait_for(log, proc, r"lookup not answered yet")
    _assert_agent_started_and_tried_its_lookup(text, "bios")
    assert f"agent option ipa-api-url={API_URL}" in text  # the kernel parameters baked into isolinux.cfg


def test_the_iso_boots_on_uefi(built: Built, lab: Lab) -> None:
    code, vars_ = Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")
    assert code.is_file() and vars_.is_file(), "OVMF is missing: ./dev.sh setup installs ovmf"
    my_vars = lab.workdir / "OVMF_VARS.fd"
    shutil.copyfile(vars_, my_vars)
    log = lab.workdir / "console.log"
    boot = ["-drive", f"if=pflash,format=raw,readonly=on,file={code}", "-drive", f"if=pflash,format=raw,file={my_vars}",
            "-cdrom", str(built.iso)]  # fmt: skip
    proc = lab.start(_qemu(log, *boot, machine="q35"), lab.workdir / "qemu.log")
    text = _wait_for(log, proc, r"lookup not answered yet")
    _assert_agent_started_and_tried_its_lookup(text, "uefi")
    assert f"agent option ipa-api-url={API_URL}" in text  # the same parameters, from boot/grub/grub.cfg
