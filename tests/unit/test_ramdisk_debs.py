"""Dependency closure and apt records of the ramdisk builder, from recorded apt-cache output."""

from __future__ import annotations

from pathlib import Path

import pytest

from ironworks.ramdisk import PackageError
from ironworks.ramdisk.debs import (
    SKIP_PACKAGES,
    Alternative,
    PackageInfo,
    kernel_package,
    parse_depends,
    parse_show,
    resolve,
)

DATA = Path(__file__).parent / "data" / "ramdisk"


@pytest.fixture(scope="module")
def graph() -> dict[str, list[list[Alternative]]]:
    return parse_depends((DATA / "apt-cache-depends.txt").read_text())


def test_alternatives_and_virtual_providers_are_parsed(graph: dict[str, list[list[Alternative]]]) -> None:
    # "|Depends: debconf" + "Depends: <debconf-2.0>" with its providers is one group of two choices
    first = graph["iproute2"][0]
    assert [a.name for a in first] == ["debconf", "<debconf-2.0>"]
    assert first[1].virtual and first[1].providers == ("cdebconf", "debconf")
    assert [a.name for a in graph["python3.11"][2]] == ["media-types", "mime-support"]


def test_closure_follows_depends_and_drops_installed_system_plumbing(graph: dict[str, list[list[Alternative]]]) -> None:
    names = resolve(["python3", "iproute2"], graph, skip=SKIP_PACKAGES)
    assert {"python3", "python3.11", "libpython3.11-stdlib", "libbpf1", "libc6", "libgcc-s1"} <= set(names)
    # debconf (and its virtual package's providers), mime support: nothing in a ramdisk needs them
    assert not {"debconf", "cdebconf", "media-types", "mime-support"} & set(names)
    assert names == sorted(names)


def test_without_skips_a_virtual_dependency_takes_its_first_provider(graph: dict[str, list[list[Alternative]]]) -> None:
    names = resolve(["iproute2"], graph)
    assert "debconf" in names  # the first real choice of the group
    assert "cdebconf" not in names


def test_an_unknown_root_package_is_named() -> None:
    with pytest.raises(PackageError, match=r"no-such-tool.*apt-get update"):
        resolve(["python3", "no-such-tool"], {"python3": []})


def test_apt_cache_show_records() -> None:
    infos = parse_show((DATA / "apt-cache-show.txt").read_text())
    assert set(infos) == {"python3", "libc6"}
    py = infos["python3"]
    assert py.version and py.architecture == "amd64" and len(py.sha256) == 64 and py.size > 0
    assert py.deb_name == f"python3_{py.version}_amd64.deb"


def test_an_epoch_is_escaped_like_apt_get_download() -> None:
    info = PackageInfo("qemu-utils", "1:7.2+dfsg-7", "amd64", "pool/q.deb", "0" * 64, 1)
    assert info.deb_name == "qemu-utils_1%3a7.2+dfsg-7_amd64.deb"


def test_the_kernel_package_comes_from_the_meta_package() -> None:
    text = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n"
    assert kernel_package(text) == "linux-image-6.1.0-57-amd64"
    with pytest.raises(PackageError, match="--kernel-deb"):
        kernel_package("linux-image-amd64\n")
