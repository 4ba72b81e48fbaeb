"""Remastering the agent's own hybrid ISO (``ironworks.ramdisk.iso.build_iso``) with the real tools.

The ISO is built from a stand-in kernel and initramfs (random bytes), then remastered with per-node
parameters. xorriso's own reports and osirrox's extraction are the judges: both El Torito images, the
isohybrid MBR and the GPT survive, the parameters are on the kernel lines of isolinux.cfg and
boot/grub/grub.cfg, and every other file is byte-identical. The ISO's GRUB EFI image is a real
grub-mkstandalone build.

The last test boots a remastered ISO built around Debian's kernel (the package the e2e tier uses,
``tests.e2e.images.kernel_deb``) and an empty initramfs on TCG, BIOS through isolinux and UEFI through
OVMF and GRUB, with no network device: the kernel prints the command line its boot loader gave it,
then panics for want of a root file system and qemu exits. The agent itself is booted from
remastered ISOs by the virtual-media tests.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from ironworks.images.iso import IsoError, build_deploy_iso, inspect_iso, remaster
from ironworks.ramdisk.iso import build_iso

BUILT_WITH = ["console=ttyS0", "ipa-api-url=http://192.0.2.10:6385"]
NODE = ["ipa-agent-token=0123456789abcdef", "ipa-global-request-id=req-1", "nomodeset"]


@pytest.fixture(scope="module")
def agent_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("agent-iso")
    (tmp / "vmlinuz").write_bytes(os.urandom(300_000))
    (tmp / "initrd").write_bytes(os.urandom(200_000))
    return build_iso(
        tmp / "vmlinuz", tmp / "initrd", BUILT_WITH, tmp / "agent.iso", workdir=tmp / "w", epoch=1_700_000_000
    )


def _report(iso: Path) -> str:
    proc = subprocess.run(
        ["xorriso", "-indev", str(iso), "-report_el_torito", "plain", "-report_system_area", "plain"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout + proc.stderr


def _boot_lines(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith(("El Torito", "MBR", "GPT", "Boot record"))]


def _tree(iso: Path, dest: Path) -> dict[str, str]:
    subprocess.run(["osirrox", "-indev", str(iso), "-extract", "/", str(dest)], check=True, capture_output=True)
    return {
        str(p.relative_to(dest)): hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.rglob("*") if p.is_file()
    }


def test_agent_iso_remastered_in_place_keeps_both_boot_images(agent_iso: Path, tmp_path: Path) -> None:
    info = inspect_iso(agent_iso)
    assert info.bios and info.uefi and info.volume_id == "IRONWORKS_AGENT"
    # the EFI image's grub.cfg only finds the ISO and loads boot/grub/grub.cfg: it has no entry to change
    assert info.boot_configs == ["boot/grub/grub.cfg", "isolinux/isolinux.cfg"]
    dest = tmp_path / "node.iso"
    report = remaster(agent_iso, dest, NODE, workdir=tmp_path / "w")
    assert report.method == "in-place"
    assert report.changed == ["boot/grub/grub.cfg", "isolinux/isolinux.cfg"]
    before, after = _report(agent_iso), _report(dest)
    assert _boot_lines(before) == _boot_lines(after)
    assert re.search(r"El Torito boot img :\s+1\s+BIOS\s+y", after) and re.search(
        r"El Torito boot img :\s+2\s+UEFI\s+y", after
    )
    assert "MBR isohybrid" in after and "GPT partition path :   2  /images/efiboot.img" in after
    old, new = _tree(agent_iso, tmp_path / "a"), _tree(dest, tmp_path / "b")
    cfgs = {"isolinux/isolinux.cfg", "boot/grub/grub.cfg"}
    assert {k: v for k, v in old.items() if k not in cfgs} == {k: v for k, v in new.items() if k not in cfgs}
    line = " ".join(BUILT_WITH + NODE)
    assert f"  append initrd=/boot/initrd.zst {line}\n" in (tmp_path / "b/isolinux/isolinux.cfg").read_text()
    assert f"  linux /boot/vmlinuz {line}\n" in (tmp_path / "b/boot/grub/grub.cfg").read_text()
    assert (tmp_path / "b/.disk/ironworks-agent").is_file()  # GRUB's marker for finding the ISO
    # isolinux's boot info table (patched into isolinux.bin by xorriso) and the image size stay as built
    assert agent_iso.stat().st_size == dest.stat().st_size


def test_network_data_goes_through_xorriso_and_keeps_bootability(agent_iso: Path, tmp_path: Path) -> None:
    dest = tmp_path / "node.iso"
    nd = b'{"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:aa:bb:cc"}]}'
    report = remaster(
        agent_iso, dest, NODE, extra_files={"openstack/latest/network_data.json": nd}, workdir=tmp_path / "w"
    )
    assert report.method == "xorriso"
    after = _report(dest)
    assert re.search(r"El Torito boot img :\s+1\s+BIOS\s+y", after) and re.search(
        r"El Torito boot img :\s+2\s+UEFI\s+y", after
    )
    assert "El Torito img opts :   1  boot-info-table isohybrid-suitable" in after
    assert "MBR isohybrid" in after and "GPT partition path :   2  /images/efiboot.img" in after
    assert "Volume id    : 'IRONWORKS_AGENT'" in after
    new = _tree(dest, tmp_path / "b")
    assert (tmp_path / "b/openstack/latest/network_data.json").read_bytes() == nd
    assert " ".join(NODE) in (tmp_path / "b/isolinux/isolinux.cfg").read_text()
    assert " ".join(NODE) in (tmp_path / "b/boot/grub/grub.cfg").read_text()
    old = _tree(agent_iso, tmp_path / "a")
    for same in ("boot/vmlinuz", "boot/initrd.zst", "images/efiboot.img", "isolinux/ldlinux.c32"):
        assert old[same] == new[same]


def test_remastering_twice_stacks_and_a_truncated_iso_is_refused(agent_iso: Path, tmp_path: Path) -> None:
    once = tmp_path / "once.iso"
    remaster(agent_iso, once, ["a=1"], workdir=tmp_path / "w")
    twice = tmp_path / "twice.iso"
    remaster(once, twice, ["b=2"], workdir=tmp_path / "w")
    _tree(twice, tmp_path / "t")
    assert "ipa-api-url=http://192.0.2.10:6385 a=1 b=2\n" in (tmp_path / "t/boot/grub/grub.cfg").read_text()
    cut = tmp_path / "cut.iso"
    with agent_iso.open("rb") as f:
        cut.write_bytes(f.read(40 * 1024))  # descriptors, but the directories point past the end
    with pytest.raises(IsoError, match="beyond its end"):
        remaster(cut, tmp_path / "x.iso", ["a=1"], workdir=tmp_path / "w")
    assert not (tmp_path / "x.iso").exists()


def test_deploy_iso_from_kernel_and_ramdisk(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(os.urandom(100_000))
    (tmp_path / "r").write_bytes(os.urandom(100_000))
    nd = {"links": [], "networks": [], "services": []}
    iso = build_deploy_iso(
        tmp_path / "k",
        tmp_path / "r",
        tmp_path / "deploy.iso",
        BUILT_WITH + NODE,
        network_data=nd,
        workdir=tmp_path / "w",
    )
    report = _report(iso)
    assert re.search(r"El Torito boot img :\s+1\s+BIOS\s+y", report) and re.search(
        r"El Torito boot img :\s+2\s+UEFI\s+y", report
    )
    tree = _tree(iso, tmp_path / "x")
    assert "openstack/latest/network_data.json" in tree
    assert " ".join(BUILT_WITH + NODE) in (tmp_path / "x/isolinux/isolinux.cfg").read_text()


# --- booting the result: a real Debian kernel prints the command line the boot loader gave it ----------

BOOT_BOUND_S = 300.0  # a bound, not an expectation: TCG reaches the kernel in ~5 s (BIOS), ~20 s (UEFI)
OVMF_CODE, OVMF_VARS = Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")


@pytest.fixture(scope="module")
def kernel_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent ISO layout around Debian's kernel and an empty initramfs (the kernel panics, then qemu exits)."""
    from tests.e2e.images import ImageBuildError, kernel_deb, unpack_kernel, write_cpio

    tmp = tmp_path_factory.mktemp("kernel-iso")
    try:
        vmlinuz, _, _ = unpack_kernel(kernel_deb(), tmp / "deb")
    except ImageBuildError as exc:
        pytest.fail(f"the Debian kernel package is needed to boot the ISO: {exc}")
    (tmp / "initrd").write_bytes(write_cpio([]))
    built = ["console=ttyS0", "panic=-1"]
    return build_iso(vmlinuz, tmp / "initrd", built, tmp / "kernel.iso", workdir=tmp / "w", epoch=1_700_000_000)


def _boot(iso: Path, tmp: Path, *, uefi: bool) -> str:
    log = tmp / "serial.log"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "768", "-display", "none", "-nic", "none", "-no-reboot",
            "-serial", f"file:{log}", "-cdrom", str(iso)]  # fmt: skip
    if uefi:
        vars_ = tmp / "OVMF_VARS.fd"
        vars_.write_bytes(OVMF_VARS.read_bytes())
        argv += ["-M", "q35", "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={vars_}"]  # fmt: skip
    else:
        argv += ["-boot", "d"]
    with (tmp / "qemu.log").open("wb") as qemu_log:
        proc = subprocess.Popen(argv, stdout=qemu_log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=BOOT_BOUND_S)  # panic=-1 reboots at once and -no-reboot ends qemu
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return log.read_text(errors="replace") + (tmp / "qemu.log").read_text(errors="replace")


@pytest.mark.parametrize("uefi", [False, True], ids=["bios-isolinux", "uefi-grub"])
def test_remastered_iso_boots_the_kernel_with_the_params(kernel_iso: Path, tmp_path: Path, uefi: bool) -> None:
    dest = tmp_path / "node.iso"
    assert remaster(kernel_iso, dest, NODE, workdir=tmp_path / "w").method == "in-place"
    text = _boot(dest, tmp_path, uefi=uefi)
    cmdline = re.search(r"Kernel command line: (.*)", text)
    assert cmdline, f"the kernel did not start or print its command line:\n{text[-3000:]}"
    assert cmdline.group(1).split()[-len(NODE) :] == NODE
    assert "console=ttyS0" in cmdline.group(1).split()
