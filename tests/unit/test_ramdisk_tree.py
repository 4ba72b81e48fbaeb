"""The ramdisk tree: merged /usr paths, symlink chains from packages, ELF needs, missing libraries."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from ironworks.ramdisk import RamdiskBuildError, elf
from ironworks.ramdisk.rootfs import add_overlay
from ironworks.ramdisk.tree import Staging, Tree, add_libraries, canonical


def test_paths_are_merged_usr() -> None:
    assert canonical("/lib/x86_64-linux-gnu/libc.so.6") == "usr/lib/x86_64-linux-gnu/libc.so.6"
    assert canonical("sbin/modprobe") == "usr/sbin/modprobe"
    assert canonical("usr/lib/../bin/x") == "usr/bin/x"
    assert canonical("etc/passwd") == "etc/passwd"


def test_elf_needs_are_read_from_the_file_itself() -> None:
    info = elf.read(Path(os.path.realpath(sys.executable)))
    assert "libc.so.6" in info.needed
    assert info.interpreter is not None and info.interpreter.endswith("ld-linux-x86-64.so.2")
    with pytest.raises(ValueError, match="not an ELF"):
        elf.parse(b"#!/bin/sh\n" + b"\0" * 64)


def test_a_symlink_chain_across_packages_brings_its_target(tmp_path: Path) -> None:
    a, b = tmp_path / "pkg-a", tmp_path / "pkg-b"
    (a / "usr/bin").mkdir(parents=True)
    (b / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (b / "lib/x86_64-linux-gnu/libz.so.1.2").write_bytes(b"lib")
    os.symlink("libz.so.1.2", b / "lib/x86_64-linux-gnu/libz.so.1")
    os.symlink("/lib/x86_64-linux-gnu/libz.so.1", a / "usr/bin/z")
    staging = Staging([("a", a), ("b", b)])
    assert staging.resolve("usr/bin/z") == "usr/lib/x86_64-linux-gnu/libz.so.1.2"
    tree = Tree()
    tree.take(staging, "usr/bin/z")
    assert set(tree.nodes) >= {
        "usr/bin/z",
        "usr/lib/x86_64-linux-gnu/libz.so.1",
        "usr/lib/x86_64-linux-gnu/libz.so.1.2",
    }
    assert tree.nodes["usr/lib/x86_64-linux-gnu/libz.so.1.2"].package == "b"
    assert "usr/lib" in tree.nodes  # parent directories are made


def test_a_library_no_package_ships_is_named(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "usr/bin").mkdir(parents=True)
    shutil.copyfile(os.path.realpath(sys.executable), pkg / "usr/bin/python3")
    staging = Staging([("python3-minimal", pkg)])
    tree = Tree()
    tree.take(staging, "usr/bin/python3")
    with pytest.raises(RamdiskBuildError, match=r"usr/bin/python3 needs .*ld-linux.*--extra-package"):
        add_libraries(tree, staging, extra=())


def test_an_overlay_lands_at_the_same_paths_and_replaces(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "usr/local/bin").mkdir(parents=True)
    (overlay / "usr/local/bin/vendor-flash").write_text("#!/bin/sh\n")
    (overlay / "usr/local/bin/vendor-flash").chmod(0o755)
    os.symlink("vendor-flash", overlay / "usr/local/bin/vflash")
    tree = Tree()
    tree.file("usr/local/bin/vendor-flash", b"old")
    assert add_overlay(tree, overlay) == 2
    node = tree.nodes["usr/local/bin/vendor-flash"]
    assert node.source == overlay / "usr/local/bin/vendor-flash" and node.mode & 0o777 == 0o755
    assert tree.nodes["usr/local/bin/vflash"].target == "vendor-flash"
    with pytest.raises(RamdiskBuildError, match="not a directory"):
        add_overlay(tree, tmp_path / "missing")
