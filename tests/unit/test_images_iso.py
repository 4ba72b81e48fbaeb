"""ISO remastering: boot config editing, parameter checks, and patched ISOs read back with xorriso/pycdlib."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
from pathlib import Path

import pycdlib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ironworks.errors import InvalidInput
from ironworks.images import bootcfg
from ironworks.images.iso import IsoError, build_deploy_iso, check_params, inspect_iso, remaster

ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
ISOHDPFX = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
PARAMS = ["ipa-api-url=http://192.0.2.1:6385", "ipa-agent-token=s3cr3t", "console=ttyS0"]
MT_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

GRUB_CFG = b"""set timeout=5
menuentry "Install" {
\tlinux /install/vmlinuz vga=788 --- quiet
\tinitrd /install/initrd.gz
}
submenu "Advanced" {
  menuentry "Rescue" {
    linuxefi /install/vmlinuz rescue/enable=true
  }
}
# linux /not/a/command
linux16 /memtest
"""
ISOLINUX_CFG = b"""default install
prompt 0
label install
  menu label ^Install
  kernel /install/vmlinuz
  append initrd=/install/initrd.gz --- quiet
label noappend
  kernel /install/vmlinuz
label hdt
  kernel hdt.c32
include txt.cfg
"""
TXT_CFG = b"label expert\r\n\tlinux /install/vmlinuz\r\n\tappend priority=low\r\n"


# --- config editing -------------------------------------------------------------------------------


def test_grub_params_go_on_every_linux_line_before_the_separator() -> None:
    out = bootcfg.grub_append(GRUB_CFG, ["a=1", "b"])
    assert b"\tlinux /install/vmlinuz vga=788 a=1 b --- quiet\n" in out
    assert b"    linuxefi /install/vmlinuz rescue/enable=true a=1 b\n" in out
    assert b"linux16 /memtest a=1 b\n" in out
    assert b"# linux /not/a/command\n" in out  # a comment is not a boot entry
    assert out.count(b"a=1") == 3


def test_isolinux_labels_get_params_and_a_label_without_append_gets_one() -> None:
    out = bootcfg.isolinux_append(ISOLINUX_CFG, ["a=1"])
    assert b"  append initrd=/install/initrd.gz a=1 --- quiet\n" in out
    assert b"label noappend\n  kernel /install/vmlinuz\n  append a=1\n" in out
    assert b"label hdt\n  kernel hdt.c32\ninclude" in out  # a COM32 module takes no kernel parameters
    assert bootcfg.isolinux_includes(ISOLINUX_CFG) == ["txt.cfg"]
    crlf = bootcfg.isolinux_append(TXT_CFG, ["a=1"])
    assert crlf == b"label expert\r\n\tlinux /install/vmlinuz\r\n\tappend priority=low a=1\r\n"


def test_isolinux_global_append_is_inherited_not_overridden() -> None:
    cfg = b"append quiet\nlabel a\n  kernel /vmlinuz\nlabel b\n  kernel /vmlinuz\n  append -\n"
    out = bootcfg.isolinux_append(cfg, ["x=1"])
    assert out == b"append quiet x=1\nlabel a\n  kernel /vmlinuz\nlabel b\n  kernel /vmlinuz\n  append x=1\n"
    child = bootcfg.isolinux_append(b"label c\n kernel /vmlinuz", ["x=1"], inherited=b"quiet")
    assert child == b"label c\n kernel /vmlinuz\n append quiet x=1"


_tricky = ["linuxfoo /x", "echo linux /x", "#linux /x", "  # linux16 /x", "initrd /linux", "  linux_x /y", "Linux /x"]
_other = st.one_of(
    st.text(alphabet="abcdefghlinux =/-_.{}\t#\"'", max_size=30).filter(
        lambda s: not re.match(r"^[ \t]*(linux|linuxefi|linux16)([ \t]|$)", s)
    ),
    st.sampled_from(_tricky),
)
_grub_boot = st.tuples(
    st.sampled_from(["", "  ", "\t"]),
    st.sampled_from(["linux", "linuxefi", "linux16"]),
    st.text(alphabet="abcxyz/=.", min_size=1, max_size=15),
    st.sampled_from(["", " --- quiet", " ---"]),
).map(lambda t: f"{t[0]}{t[1]} /{t[2]}{t[3]}")


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.one_of(_other, _grub_boot), max_size=25), crlf=st.booleans())
def test_grub_editing_changes_only_boot_lines_and_each_once(lines: list[str], crlf: bool) -> None:
    end = "\r\n" if crlf else "\n"
    src = "".join(line + end for line in lines).encode()
    out = bootcfg.grub_append(src, ["P=1", "Q"]).decode()
    got = out.split(end)[:-1] if out else []
    assert len(got) == len(lines)
    for before, after in zip(lines, got, strict=True):
        if re.match(r"^[ \t]*(linux|linuxefi|linux16)[ \t]", before):
            assert after.count("P=1 Q") == 1
            assert after.replace(" P=1 Q", "", 1) == before
            if " ---" in before:
                assert after.index("P=1") < after.index("---")
        else:
            assert after == before


_iso_other = st.sampled_from(["  menu label x", "say hi", "timeout 0", "  initrd /x", "#append no", ""])


@st.composite
def _isolinux(draw: st.DrawFn) -> tuple[list[str], int]:
    lines = draw(st.lists(_iso_other, max_size=3))
    entries = 0
    for n in range(draw(st.integers(0, 6))):
        lines.append(f"label l{n}")
        kernel = draw(st.sampled_from(["/vmlinuz", "menu.c32", None]))
        append = draw(st.sampled_from([None, "quiet", "a --- b", "-"]))
        body = []
        if kernel:
            body.append(f"  {draw(st.sampled_from(['kernel', 'LINUX']))} {kernel}")
        if append is not None:
            body.append(f" append {append}")  # one space: added lines copy the kernel line's two
        body += draw(st.lists(_iso_other, max_size=2))
        lines += draw(st.permutations(body))
        entries += kernel == "/vmlinuz"
    return lines, entries


@settings(max_examples=200, deadline=None)
@given(cfg=_isolinux())
def test_isolinux_editing_gives_every_linux_label_the_params_once(cfg: tuple[list[str], int]) -> None:
    lines, entries = cfg
    src = "".join(line + "\n" for line in lines).encode()
    out = bootcfg.isolinux_append(src, ["P=1"]).decode().split("\n")[:-1]
    assert out.count("  append P=1") + sum("P=1" in o for o in out if o != "  append P=1") == entries
    kept = [o.replace(" P=1", "", 1) if o.startswith(" append") else o for o in out if o != "  append P=1"]
    assert [k.replace(" append", " append -") if k == " append" else k for k in kept] == lines


# --- parameter checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a=b;reboot", "x=$root", "a={b}", "a#b", 'a="b"', "a\\b", "a=b\nc", "a\x07"])
def test_unsafe_params_are_refused_naming_the_source(bad: str) -> None:
    with pytest.raises(IsoError) as err:
        check_params(bad, where="instance_info/kernel_append_params")
    assert "instance_info/kernel_append_params" in str(err.value)
    assert isinstance(err.value, InvalidInput) and err.value.reason == "invalid_iso"


def test_params_split_and_secrets_not_echoed() -> None:
    assert check_params("a=1  b\tc", where="x") == ["a=1", "b", "c"]
    assert check_params(["a=1", "b"], where="x") == ["a=1", "b"]
    with pytest.raises(IsoError) as err:
        check_params(["ipa-agent-token=abc{def"], where="x")
    assert "abc" not in str(err.value)


# --- ISOs built with xorriso -----------------------------------------------------------------------


def _fat(path: Path, files: dict[str, bytes]) -> None:
    subprocess.run(["mkfs.fat", "-C", str(path), "2048"], check=True, capture_output=True)
    subprocess.run(["mmd", "-i", str(path), "::/EFI", "::/EFI/BOOT"], check=True, env=MT_ENV)
    for name, data in files.items():
        local = path.with_name("fatfile")
        local.write_bytes(data)
        subprocess.run(["mcopy", "-i", str(path), str(local), f"::/{name}"], check=True, env=MT_ENV)
        local.unlink()


def _make_iso(
    tmp: Path,
    *,
    bios: bool,
    uefi: bool,
    joliet: bool = True,
    rock_ridge: bool = True,
    hybrid: bool = False,
    big: bytes | None = None,
) -> Path:
    root = tmp / "root"
    (root / "isolinux").mkdir(parents=True)
    (root / "boot/grub").mkdir(parents=True)
    (root / "install").mkdir()
    (root / "install/vmlinuz").write_bytes(os.urandom(70_000))
    (root / "install/initrd.gz").write_bytes(os.urandom(30_000))
    (root / "README.txt").write_text("hello\n")
    argv = ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(tmp / "src.iso"), "-V", "TESTISO"]
    if rock_ridge:
        argv.append("-R")
    if joliet:
        argv.append("-J")
    if bios:
        (root / "isolinux/isolinux.bin").write_bytes(ISOLINUX_BIN.read_bytes())
        (root / "isolinux/isolinux.cfg").write_bytes(big or ISOLINUX_CFG)
        (root / "isolinux/txt.cfg").write_bytes(TXT_CFG)
        argv += ["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4",
                 "-boot-info-table"]  # fmt: skip
        if hybrid:
            argv += ["-isohybrid-mbr", str(ISOHDPFX)]
    if uefi:
        efi_cfg = b'menuentry "efi" {\n  linux /install/vmlinuz quiet\n  initrd /install/initrd.gz\n}\n'
        _fat(root / "boot/grub/efi.img", {"EFI/BOOT/BOOTX64.EFI": os.urandom(5000), "EFI/BOOT/grub.cfg": efi_cfg})
        if bios:
            argv.append("-eltorito-alt-boot")
        argv += ["-e", "boot/grub/efi.img", "-no-emul-boot"]
        if hybrid:
            argv.append("-isohybrid-gpt-basdat")
    if bios and uefi:
        (root / "boot/grub/grub.cfg").write_bytes(GRUB_CFG)
    subprocess.run([*argv, str(root)], check=True, capture_output=True)
    return tmp / "src.iso"


def _el_torito(iso: Path) -> list[str]:
    out = subprocess.run(
        ["xorriso", "-indev", str(iso), "-report_el_torito", "plain", "-report_system_area", "plain"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [
        line for line in (out.stdout + out.stderr).splitlines() if re.match(r"(El Torito|MBR|GPT|Boot record)", line)
    ]


def _extract(iso: Path, dest: Path) -> dict[str, str]:
    subprocess.run(["osirrox", "-indev", str(iso), "-extract", "/", str(dest)], check=True, capture_output=True)
    return {
        str(p.relative_to(dest)): hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.rglob("*") if p.is_file()
    }


def _fat_file(img: bytes, name: str, tmp: Path) -> bytes:
    (tmp / "x.img").write_bytes(img)
    return subprocess.run(["mcopy", "-n", "-i", str(tmp / "x.img"), f"::/{name}", "-"], check=True,
                          capture_output=True, env=MT_ENV).stdout  # fmt: skip


def _pycdlib_read(iso: Path, **path: str) -> bytes:
    cd = pycdlib.PyCdlib()
    cd.open(str(iso))
    try:
        buf = io.BytesIO()
        cd.get_file_from_iso_fp(buf, **path)
        return buf.getvalue()
    finally:
        cd.close()


@pytest.mark.parametrize(("joliet", "rock_ridge"), [(True, True), (False, True), (True, False), (False, False)])
def test_hybrid_iso_remastered_in_place(tmp_path: Path, joliet: bool, rock_ridge: bool) -> None:
    src = _make_iso(tmp_path, bios=True, uefi=True, joliet=joliet, rock_ridge=rock_ridge, hybrid=True)
    info = inspect_iso(src)
    assert info.bios and info.uefi and info.volume_id == "TESTISO"
    assert info.boot_configs == ["boot/grub/grub.cfg", "isolinux/isolinux.cfg", "isolinux/txt.cfg",
                                 "boot/grub/efi.img::EFI/BOOT/grub.cfg"]  # fmt: skip
    dest = tmp_path / "out.iso"
    report = remaster(src, dest, PARAMS, workdir=tmp_path / "work")
    assert report.method == "in-place" and sorted(report.changed) == sorted(info.boot_configs)
    assert dest.stat().st_mode & 0o777 == 0o600  # it holds the agent token
    raw_src, raw_dest = src.read_bytes(), dest.read_bytes()
    assert len(raw_src) == len(raw_dest)
    assert raw_src[:32768] == raw_dest[:32768] and raw_src[-65536:] == raw_dest[-65536:]  # MBR, GPT, descriptors
    assert _el_torito(src) == _el_torito(dest)
    before, after = _extract(src, tmp_path / "a"), _extract(dest, tmp_path / "b")
    configs = {"isolinux/isolinux.cfg", "isolinux/txt.cfg", "boot/grub/grub.cfg", "boot/grub/efi.img"}
    assert {k: v for k, v in before.items() if k not in configs} == {k: v for k, v in after.items() if k not in configs}
    line = " ".join(PARAMS)
    iso_cfg = (tmp_path / "b/isolinux/isolinux.cfg").read_bytes()
    assert iso_cfg == bootcfg.isolinux_append(ISOLINUX_CFG, PARAMS)
    assert f"append initrd=/install/initrd.gz {line} --- quiet".encode() in iso_cfg
    assert (tmp_path / "b/isolinux/txt.cfg").read_bytes() == bootcfg.isolinux_append(TXT_CFG, PARAMS)
    assert (tmp_path / "b/boot/grub/grub.cfg").read_bytes() == bootcfg.grub_append(GRUB_CFG, PARAMS)
    efi = (tmp_path / "b/boot/grub/efi.img").read_bytes()
    assert f"linux /install/vmlinuz quiet {line}".encode() in _fat_file(efi, "EFI/BOOT/grub.cfg", tmp_path)
    assert _fat_file(efi, "EFI/BOOT/BOOTX64.EFI", tmp_path) == _fat_file(
        (tmp_path / "a/boot/grub/efi.img").read_bytes(), "EFI/BOOT/BOOTX64.EFI", tmp_path
    )
    if joliet:  # the Joliet tree's record got the new size too
        assert _pycdlib_read(dest, joliet_path="/isolinux/isolinux.cfg") == iso_cfg
    assert _pycdlib_read(dest, iso_path="/ISOLINUX/ISOLINUX.CFG;1") == iso_cfg
    assert not list(tmp_path.glob(".out.iso*")) and not list((tmp_path / "work").iterdir())


def test_bios_only_and_uefi_only(tmp_path: Path) -> None:
    bios = _make_iso(tmp_path / "b", bios=True, uefi=False)
    assert inspect_iso(bios).uefi is False
    assert remaster(bios, tmp_path / "b.iso", PARAMS, workdir=tmp_path / "w").method == "in-place"
    uefi_dir = tmp_path / "u"
    uefi = _make_iso(uefi_dir, bios=False, uefi=True)
    info = inspect_iso(uefi)
    assert (info.bios, info.uefi, info.boot_configs) == (False, True, ["boot/grub/efi.img::EFI/BOOT/grub.cfg"])
    report = remaster(uefi, tmp_path / "u.iso", PARAMS, workdir=tmp_path / "w")
    assert report.changed == ["boot/grub/efi.img::EFI/BOOT/grub.cfg"]
    assert _el_torito(uefi) == _el_torito(tmp_path / "u.iso")
    efi = _pycdlib_read(tmp_path / "u.iso", rr_path="/boot/grub/efi.img")
    assert " ".join(PARAMS).encode() in _fat_file(efi, "EFI/BOOT/grub.cfg", tmp_path)


def test_config_that_does_not_fit_goes_through_xorriso(tmp_path: Path) -> None:
    big = ISOLINUX_CFG + b"#" * (4096 - len(ISOLINUX_CFG) - 1) + b"\n"  # fills its two sectors exactly
    src = _make_iso(tmp_path, bios=True, uefi=True, hybrid=True, big=big)
    dest = tmp_path / "out.iso"
    extra = {"openstack/latest/network_data.json": b'{"links": []}'}
    report = remaster(src, dest, PARAMS, extra_files=extra, workdir=tmp_path / "w")
    assert report.method == "xorriso" and report.added == ["openstack/latest/network_data.json"]
    after = _extract(dest, tmp_path / "b")
    assert (tmp_path / "b/isolinux/isolinux.cfg").read_bytes() == bootcfg.isolinux_append(big, PARAMS)
    assert (tmp_path / "b/openstack/latest/network_data.json").read_bytes() == b'{"links": []}'
    before = _extract(src, tmp_path / "a")
    same = {"install/vmlinuz", "install/initrd.gz", "README.txt"}
    assert {k: before[k] for k in same} == {k: after[k] for k in same}
    report_lines = _el_torito(dest)
    assert any("BIOS  y" in x for x in report_lines) and any("UEFI  y" in x for x in report_lines)
    assert any("MBR isohybrid" in x for x in report_lines) and any(
        x.startswith("GPT partition path") for x in report_lines
    )
    efi = (tmp_path / "b/boot/grub/efi.img").read_bytes()
    assert " ".join(PARAMS).encode() in _fat_file(efi, "EFI/BOOT/grub.cfg", tmp_path)
    assert "isolinux/isolinux.cfg" in inspect_iso(dest).boot_configs


def test_no_params_no_extra_files_is_a_copy(tmp_path: Path) -> None:
    src = _make_iso(tmp_path, bios=True, uefi=False)
    report = remaster(src, tmp_path / "out.iso", [], workdir=tmp_path / "w")
    assert report.changed == [] and (tmp_path / "out.iso").read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "fewer than"), (b"\0" * 200_000, "no ISO 9660 volume descriptor"), (os.urandom(100_000), "not a usable")],
)
def test_not_an_iso_is_refused_and_nothing_written(tmp_path: Path, content: bytes, message: str) -> None:
    src = tmp_path / "disk.img"
    src.write_bytes(content)
    with pytest.raises(IsoError, match=message) as err:
        remaster(src, tmp_path / "out.iso", PARAMS, workdir=tmp_path / "w")
    assert "Give an ISO image file" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.img"]


def test_iso_without_boot_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root/data.txt").write_text("data")
    (tmp_path / "root/isolinux.cfg").write_text("default menu.c32\nlabel x\n  kernel menu.c32\n")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(tmp_path / "d.iso"), str(tmp_path / "root")],
                   check=True, capture_output=True)  # fmt: skip
    with pytest.raises(IsoError, match="no boot config with a Linux boot entry"):
        inspect_iso(tmp_path / "d.iso")
    with pytest.raises(IsoError):
        remaster(tmp_path / "d.iso", tmp_path / "out.iso", PARAMS, workdir=tmp_path / "w")
    assert not (tmp_path / "out.iso").exists()


def test_bad_params_and_bad_extra_files_refused_before_writing(tmp_path: Path) -> None:
    src = _make_iso(tmp_path, bios=True, uefi=False)
    with pytest.raises(IsoError, match="';'"):
        remaster(src, tmp_path / "out.iso", ["a;b"], workdir=tmp_path / "w")
    with pytest.raises(IsoError, match="not a plain ISO path"):
        remaster(src, tmp_path / "out.iso", PARAMS, extra_files={"../etc/x": b""}, workdir=tmp_path / "w")
    with pytest.raises(IsoError, match="must be a new file"):
        remaster(src, src, PARAMS, workdir=tmp_path / "w")
    with pytest.raises(IsoError, match="does not exist; create it first"):
        remaster(src, tmp_path / "nodir/out.iso", PARAMS, workdir=tmp_path / "w")
    assert not (tmp_path / "out.iso").exists()


def test_build_deploy_iso_with_network_data(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz").write_bytes(os.urandom(50_000))
    (tmp_path / "initrd").write_bytes(os.urandom(20_000))
    dest = build_deploy_iso(tmp_path / "vmlinuz", tmp_path / "initrd", tmp_path / "deploy.iso", PARAMS,
                            network_data={"links": [{"id": "eth0"}]}, workdir=tmp_path / "w")  # fmt: skip
    info = inspect_iso(dest)
    assert info.bios and info.uefi
    nd = _pycdlib_read(dest, rr_path="/openstack/latest/network_data.json")
    assert b'"eth0"' in nd
    line = " ".join(PARAMS).encode()
    assert line in _pycdlib_read(dest, rr_path="/isolinux/isolinux.cfg")
    assert line in _pycdlib_read(dest, rr_path="/boot/grub/grub.cfg")
    with pytest.raises(IsoError, match="does not exist"):
        build_deploy_iso(tmp_path / "nope", tmp_path / "initrd", tmp_path / "d2.iso", PARAMS, workdir=tmp_path / "w")


@pytest.mark.parametrize("extra", [False, True], ids=["in-place", "xorriso"])
def test_efi_image_as_appended_gpt_partition(tmp_path: Path, extra: bool) -> None:
    """Ubuntu's layout: the EFI image is an appended partition, in no directory; it is edited where it lies."""
    root = tmp_path / "root"
    (root / "boot/grub").mkdir(parents=True)
    (root / "casper").mkdir()
    (root / "casper/vmlinuz").write_bytes(os.urandom(50_000))
    (root / "boot/grub/grub.cfg").write_bytes(b'menuentry "Try" {\n linux /casper/vmlinuz --- quiet splash\n}\n')
    efi_cfg = b"search --file --set=root /casper/vmlinuz\nmenuentry x {\n  linux /casper/vmlinuz\n}\n"
    _fat(tmp_path / "efi.img", {"EFI/BOOT/grub.cfg": efi_cfg})
    src = tmp_path / "src.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-o", str(src), "-append_partition", "2", "0xef",
                    str(tmp_path / "efi.img"), "-appended_part_as_gpt", "-e", "--interval:appended_partition_2:all::",
                    "-no-emul-boot", str(root)], check=True, capture_output=True)  # fmt: skip
    hidden = "[EFI boot image at block 61]"
    assert inspect_iso(src).boot_configs == ["boot/grub/grub.cfg", f"{hidden}::EFI/BOOT/grub.cfg"]
    dest = tmp_path / "out.iso"
    report = remaster(src, dest, ["a=1"], extra_files={"x.json": b"{}"} if extra else None, workdir=tmp_path / "w")
    assert report.method == ("xorriso" if extra else "in-place")
    lines = _el_torito(dest)
    assert any("UEFI  y" in x for x in lines) and any("Appended2" in x for x in lines)
    if not extra:
        assert lines == _el_torito(src)
    lba = int(next(x for x in lines if "UEFI  y" in x).split()[-1])
    fat = subprocess.run(["mcopy", "-n", "-i", f"{dest}@@{lba * 2048}", "::/EFI/BOOT/grub.cfg", "-"],
                         check=True, capture_output=True, env=MT_ENV).stdout  # fmt: skip
    assert fat == bootcfg.grub_append(efi_cfg, ["a=1"])
    assert b"linux /casper/vmlinuz a=1 --- quiet splash" in _pycdlib_read(dest, rr_path="/boot/grub/grub.cfg")


@pytest.fixture(scope="module")
def small_iso(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _make_iso(tmp_path_factory.mktemp("fuzz"), bios=True, uefi=True, hybrid=True).read_bytes()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_corrupted_metadata_gives_iso_error_or_a_result_never_a_crash(
    small_iso: bytes, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    raw = bytearray(small_iso)
    # descriptors (16..19), the boot catalog and the directories sit in the first ~40 sectors: change
    # their non-zero bytes (lengths, extents, sizes, names, Rock Ridge entries), not the padding
    meta = [i for i in range(16 * 2048, 40 * 2048) if small_iso[i]]
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.sampled_from(meta))] = data.draw(
            st.sampled_from([0, 1, 0x2F, 0x80, 0xFF]) | st.integers(0, 255)
        )
    path = tmp_path_factory.mktemp("case") / "x.iso"
    path.write_bytes(bytes(raw))
    try:
        inspect_iso(path)
    except IsoError as exc:
        assert str(exc)


@pytest.mark.parametrize("udf", [False, True], ids=["iso9660", "udf-bridge"])
def test_genisoimage_iso_and_udf_bridge(tmp_path: Path, udf: bool) -> None:
    """Another producer's Rock Ridge and Joliet; UDF keeps sizes of its own, so it goes through xorriso."""
    root = tmp_path / "root"
    (root / "isolinux").mkdir(parents=True)
    (root / "isolinux/isolinux.bin").write_bytes(ISOLINUX_BIN.read_bytes())
    (root / "isolinux/isolinux.cfg").write_bytes(ISOLINUX_CFG)
    (root / "isolinux/txt.cfg").write_bytes(TXT_CFG)
    (root / "install").mkdir()
    (root / "install/vmlinuz").write_bytes(os.urandom(40_000))
    src = tmp_path / "src.iso"
    argv = ["genisoimage", "-quiet", "-R", "-J", "-V", "GENISO", "-o", str(src), "-b", "isolinux/isolinux.bin",
            "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"]  # fmt: skip
    subprocess.run([*argv, *(["-udf"] if udf else []), str(root)], check=True, capture_output=True)
    assert inspect_iso(src).boot_configs == ["isolinux/isolinux.cfg", "isolinux/txt.cfg"]
    dest = tmp_path / "out.iso"
    report = remaster(src, dest, PARAMS, workdir=tmp_path / "w")
    assert report.method == ("xorriso" if udf else "in-place")
    _extract(dest, tmp_path / "b")
    assert (tmp_path / "b/isolinux/isolinux.cfg").read_bytes() == bootcfg.isolinux_append(ISOLINUX_CFG, PARAMS)
    assert (tmp_path / "b/isolinux/txt.cfg").read_bytes() == bootcfg.isolinux_append(TXT_CFG, PARAMS)
    assert _pycdlib_read(dest, joliet_path="/isolinux/txt.cfg") == bootcfg.isolinux_append(TXT_CFG, PARAMS)
    assert any("BIOS  y" in line for line in _el_torito(dest))
