"""Kernel module selection from a recorded modules.dep."""

from __future__ import annotations

from pathlib import Path

from ironworks.ramdisk.modules import module_name, parse_builtin, parse_modules_dep, select

DEP = parse_modules_dep((Path(__file__).parent / "data" / "ramdisk" / "modules.dep").read_text())


def test_names_are_read_like_modprobe() -> None:
    assert module_name("kernel/drivers/nvme/host/nvme-core.ko") == "nvme_core"
    assert module_name("kernel/lib/crc64-rocksoft.ko.xz") == "crc64_rocksoft"


def test_a_module_comes_with_everything_it_depends_on() -> None:
    chosen = select(["virtio_net", "nvme"], DEP, set())
    assert "kernel/drivers/net/virtio_net.ko" in chosen.paths
    assert {"kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko", "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/nvme/host/nvme-core.ko", "kernel/block/t10-pi.ko"} <= set(chosen.paths)  # fmt: skip
    assert chosen.paths == tuple(sorted(chosen.paths))
    assert not chosen.missing


def test_builtin_and_missing_modules_are_reported_not_shipped() -> None:
    chosen = select(
        ["virtio_pci", "no_such_driver", "e1000e"], DEP, parse_builtin("kernel/drivers/virtio/virtio_pci.ko\n")
    )
    assert chosen.builtin == ("virtio_pci",)
    assert chosen.missing == ("no_such_driver",)
    assert chosen.paths == ("kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",)


def test_dashes_in_a_request_match_underscored_names() -> None:
    assert "kernel/drivers/nvme/host/nvme-core.ko" in select(["nvme-core"], DEP, set()).paths
