"""``ramdisk`` deploy: a user's ISO (virtual media) or kernel + ramdisk (network boot) as the instance.

Virtual media runs against the recorded iDRAC (``redfish_fake``); ISOs are built with xorriso and
remastered for real; the image cache and its disk budget are the real ones in tmp_path. The network
boot case writes real iPXE files with the fake management interface and no DHCP server.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ironworks.drivers import ramdisk_deploy as rd
from ironworks.drivers.base import PortView, ValidationError
from ironworks.drivers.fake import FakeManagement
from ironworks.drivers.pxe import IpxeBoot
from ironworks.drivers.ramdisk_deploy import ONE_SHOT_KEY, RamdiskDeploy
from ironworks.drivers.steps import Done, Wait
from ironworks.drivers.vmedia import STATE_KEY
from ironworks.errors import IronworksError
from ironworks.netboot.dhcp import NoDhcp
from tests.unit import redfish_fake as rf
from tests.unit.test_vmedia import Lab, VmTask, make_lab
from tests.vmedia_fixtures import iso_file, make_iso

OTHER_UUID = "2c37d1c0-14a3-4e3f-bf98-d13e8e44d234"


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return make_lab(tmp_path)


def _node(lab: Lab, *, uuid: str | None = None, **instance: Any) -> tuple[VmTask, RamdiskDeploy]:
    deploy = RamdiskDeploy(lab.config)
    task = lab.task(deploy, uuid=uuid or rf.make_task().node.uuid)
    task.node.instance_info = dict(instance)
    return task, deploy


def _deploy(task: VmTask, deploy: RamdiskDeploy) -> Any:
    deploy.validate(task)
    deploy.prepare(task)
    return deploy.deploy(task)


@pytest.fixture
def user_iso(lab: Lab) -> Path:
    return make_iso(lab.src / "live.iso")


def test_boot_iso_with_params_is_remastered_inserted_and_booted_persistently(lab: Lab, user_iso: Path) -> None:
    task, deploy = _node(lab, boot_iso=str(user_iso), kernel_append_params="ip=dhcp live.token=abc")
    outcome = _deploy(task, deploy)
    assert isinstance(outcome, Done)
    [iso] = lab.published()
    assert "quiet ip=dhcp live.token=abc" in iso_file(iso, "/isolinux/isolinux.cfg", lab.tmp / "x")
    assert "quiet ip=dhcp live.token=abc" in iso_file(iso, "/boot/grub/grub.cfg", lab.tmp / "x")
    assert lab.cd["Inserted"] is True and lab.cd["Image"].endswith(iso.name)
    boot = lab.bmc.system["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideEnabled"]) == ("Cd", "Continuous")
    assert task.power == ["power off", "power on"]
    assert lab.cache().usage()["reserved"][task.node.uuid] == user_iso.stat().st_size
    assert task.node.driver_internal_info[STATE_KEY]["state"] == "instance"
    lab.boot.prepare_instance(task)  # the conductor asks again after the last deploy step: nothing changes
    assert lab.published() == [iso] and lab.bmc.count("POST", "VirtualMedia.InsertMedia") == 1


def test_boot_iso_without_params_is_a_hard_link_of_the_cached_master(lab: Lab, user_iso: Path) -> None:
    task, deploy = _node(lab, boot_iso=str(user_iso))
    assert isinstance(_deploy(task, deploy), Done)
    [iso] = lab.published()
    master = lab.cache().master_path(str(user_iso))
    assert iso.stat().st_ino == master.stat().st_ino
    assert iso.read_bytes() == user_iso.read_bytes()
    assert task.node.uuid not in lab.cache().usage()["reserved"]


def test_undeploy_powers_off_ejects_deletes_and_releases(lab: Lab, user_iso: Path) -> None:
    task, deploy = _node(lab, boot_iso=str(user_iso), kernel_append_params="ip=dhcp")
    _deploy(task, deploy)
    deploy.tear_down(task)
    assert task.power[-1] == "power off"
    assert lab.published() == [] and lab.cd["Inserted"] is False
    assert task.node.uuid not in lab.cache().usage()["reserved"]
    deploy.tear_down(task)  # idempotent


def test_one_shot_deletes_the_iso_after_the_grace_period(
    lab: Lab, user_iso: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(rd.time, "time", lambda: now[0])
    task, deploy = _node(lab, boot_iso=str(user_iso), kernel_append_params="ip=dhcp", one_shot=True, one_shot_grace=20)
    first = _deploy(task, deploy)
    assert isinstance(first, Wait) and first.poll_after == 20
    boot = lab.bmc.system["Boot"]
    assert boot["BootSourceOverrideEnabled"] == "Once"  # a reboot must not look for the deleted ISO
    now[0] += 5
    again = deploy.deploy(task)
    assert isinstance(again, Wait) and len(lab.published()) == 1
    now[0] += 20
    assert isinstance(deploy.deploy(task), Done)
    assert lab.published() == []
    assert task.node.uuid not in lab.cache().usage()["reserved"]
    assert ONE_SHOT_KEY not in task.node.driver_internal_info
    assert task.power == ["power off", "power on"]  # resumes do not boot it again
    lab.boot.prepare_instance(task)  # after the last deploy step: the deleted ISO is not published again
    assert lab.published() == [] and lab.bmc.count("POST", "VirtualMedia.InsertMedia") == 1
    deploy.tear_down(task)
    assert lab.cd["Inserted"] is False


def test_one_shot_without_grace_is_done_at_once(lab: Lab, user_iso: Path) -> None:
    task, deploy = _node(lab, boot_iso=str(user_iso), one_shot="true", one_shot_grace=0)
    assert isinstance(_deploy(task, deploy), Done)
    assert lab.published() == []


# ---- refusals: nothing published, inserted or reserved, the BMC untouched ----------------------


def _nothing_done(lab: Lab, task: VmTask) -> None:
    assert lab.published() == []
    assert task.node.uuid not in lab.cache().usage()["reserved"]
    assert lab.bmc.count("POST", "VirtualMedia.InsertMedia") == 0
    assert lab.bmc.count("POST", "ComputerSystem.Reset") == 0
    assert STATE_KEY not in task.node.driver_internal_info
    assert task.power == []


def test_not_an_iso_is_refused(lab: Lab) -> None:
    (lab.src / "fake.iso").write_bytes(os.urandom(200_000))
    task, deploy = _node(lab, boot_iso=str(lab.src / "fake.iso"), kernel_append_params="ip=dhcp")
    with pytest.raises(IronworksError, match="ISO") as err:
        _deploy(task, deploy)
    assert f"instance_info/boot_iso {lab.src / 'fake.iso'}" in str(err.value)  # not the cache's file name
    deploy.clean_up_after_failure(task)  # what the conductor runs next: the machine's power is left alone
    _nothing_done(lab, task)


def test_a_failure_after_booting_powers_off_and_removes_the_media(lab: Lab, user_iso: Path) -> None:
    task, deploy = _node(lab, boot_iso=str(user_iso), kernel_append_params="ip=dhcp", one_shot=True)
    assert isinstance(_deploy(task, deploy), Wait)  # booted, waiting to delete the one-shot ISO
    deploy.clean_up_after_failure(task)  # say the wait timed out
    assert task.power == ["power off", "power on", "power off"]
    assert lab.published() == [] and lab.cd["Inserted"] is False
    assert task.node.uuid not in lab.cache().usage()["reserved"]


def test_an_iso_without_boot_config_is_refused(lab: Lab) -> None:
    iso = make_iso(lab.src / "data.iso", boot_config=False)
    task, deploy = _node(lab, boot_iso=str(iso))
    with pytest.raises(IronworksError, match=r"(?i)boot"):
        _deploy(task, deploy)
    _nothing_done(lab, task)


def test_a_checksum_mismatch_is_refused(lab: Lab, user_iso: Path) -> None:
    task, deploy = _node(lab, boot_iso=str(user_iso), boot_iso_checksum="sha256:" + "0" * 64)
    with pytest.raises(IronworksError, match="checksum"):
        _deploy(task, deploy)
    _nothing_done(lab, task)


def test_a_matching_checksum_is_accepted(lab: Lab, user_iso: Path) -> None:
    digest = hashlib.sha256(user_iso.read_bytes()).hexdigest()
    task, deploy = _node(lab, boot_iso=str(user_iso), boot_iso_checksum=f"sha256:{digest}")
    assert isinstance(_deploy(task, deploy), Done)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web(lab: Lab) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(lab.src)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_failed_download_is_refused(lab: Lab, web: str) -> None:
    task, deploy = _node(lab, boot_iso=f"{web}/missing.iso")
    with pytest.raises(IronworksError, match="404"):
        _deploy(task, deploy)
    _nothing_done(lab, task)


def test_a_downloaded_iso_boots(lab: Lab, web: str, user_iso: Path) -> None:
    task, deploy = _node(lab, boot_iso=f"{web}/{user_iso.name}", kernel_append_params="ip=dhcp")
    assert isinstance(_deploy(task, deploy), Done)
    assert len(lab.published()) == 1


def test_the_disk_budget_refuses_a_second_remastered_copy(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    iso = make_iso(lab.src / "live.iso")
    size = iso.stat().st_size
    lab.config.images.disk_budget_bytes = size * 2 + size // 2  # the master + one node's copy
    first, deploy = _node(lab, boot_iso=str(iso), kernel_append_params="ip=dhcp")
    assert isinstance(_deploy(first, deploy), Done)
    second, deploy2 = _node(lab, uuid=OTHER_UUID, boot_iso=str(iso), kernel_append_params="ip=dhcp")
    second.node.driver_info = rf.driver_info()
    with pytest.raises(IronworksError, match="disk_budget_bytes") as err:
        _deploy(second, deploy2)
    assert err.value.reason == "disk_budget_exceeded"
    assert [p.name.startswith(first.node.uuid) for p in lab.published()] == [True]
    assert OTHER_UUID not in lab.cache().usage()["reserved"]


def test_the_precheck_refuses_what_staging_would_and_leaves_nothing(tmp_path: Path) -> None:
    """precheck_deploy (the API waits for it) checks the BMC, the ISO and the budget, and holds nothing."""
    lab = make_lab(tmp_path)
    iso = make_iso(lab.src / "live.iso")
    (lab.src / "bad.iso").write_bytes(b"\0" * 40_000)
    size = iso.stat().st_size
    lab.config.images.disk_budget_bytes = size * 2 + size // 2  # the master + one node's copy
    first, deploy = _node(lab, boot_iso=str(iso), kernel_append_params="ip=dhcp")
    assert lab.boot.needs_precheck(first)
    lab.boot.precheck_deploy(first)
    assert lab.published() == [] and lab.cache().usage()["reserved"] == {}
    assert isinstance(_deploy(first, deploy), Done)
    second, _ = _node(lab, uuid=OTHER_UUID, boot_iso=str(iso), kernel_append_params="ip=dhcp")
    with pytest.raises(IronworksError, match="disk_budget_bytes"):
        lab.boot.precheck_deploy(second)
    third, _ = _node(lab, uuid=OTHER_UUID, boot_iso=str(lab.src / "bad.iso"))
    with pytest.raises(IronworksError, match=r"instance_info/boot_iso .*no ISO 9660 volume descriptor"):
        lab.boot.precheck_deploy(third)
    assert [p.name.startswith(first.node.uuid) for p in lab.published()] == [True]
    assert OTHER_UUID not in lab.cache().usage()["reserved"]
    agent_node = lab.task(rd.RamdiskDeploy(lab.config))  # no boot_iso: nothing to check before it moves
    assert not lab.boot.needs_precheck(agent_node)


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        ({}, "boot_iso .*kernel and ramdisk"),
        ({"boot_iso": "https://x.test/a.iso", "kernel": "https://x.test/k"}, "both boot_iso and kernel"),
        ({"boot_iso": "https://x.test/a.iso", "one_shot": "maybe"}, "one_shot must be true or false"),
        ({"boot_iso": "https://x.test/a.iso", "one_shot_grace": "soon"}, "one_shot_grace"),
        ({"boot_iso": "https://x.test/a.iso", "kernel_append_params": "a}b"}, "'}'"),
        ({"boot_iso": "ftp://x.test/a.iso"}, "instance_info/boot_iso"),
    ],
)
def test_bad_instance_info_is_refused(lab: Lab, instance: dict[str, Any], message: str) -> None:
    task, deploy = _node(lab, **instance)
    with pytest.raises(ValidationError, match=message):
        deploy.validate(task)
        deploy.prepare(task)
    _nothing_done(lab, task)


def test_boot_iso_needs_virtual_media_and_kernel_ramdisk_network_boot(lab: Lab) -> None:
    task, deploy = _node(lab, boot_iso="https://x.test/a.iso")
    task.ifaces["boot"] = IpxeBoot(lab.config)
    with pytest.raises(ValidationError, match="needs the redfish-virtual-media boot interface"):
        deploy.validate(task)
    task, deploy = _node(lab, kernel="https://x.test/k", ramdisk="https://x.test/r")
    with pytest.raises(ValidationError, match="boot over pxe or ipxe"):
        deploy.validate(task)


# ---- kernel + ramdisk over the network ------------------------------------------------------------


def test_kernel_and_ramdisk_boot_over_ipxe_every_time(lab: Lab) -> None:
    (lab.src / "k").write_bytes(b"kernel" * 1000)
    (lab.src / "r").write_bytes(b"ramdisk" * 1000)
    boot = IpxeBoot(lab.config)
    boot.dhcp = NoDhcp()
    if not all(Path(p).is_file() for p in boot.loaders("bios")):
        pytest.skip("the ipxe package's loaders are not installed")
    task, deploy = _node(lab, kernel=str(lab.src / "k"), ramdisk=str(lab.src / "r"), kernel_append_params="rd.x=1")
    task.ports = [PortView("p1", "52:54:00:00:00:01", True)]
    task.ifaces.update(boot=boot, management=FakeManagement(lab.config))
    assert isinstance(_deploy(task, deploy), Done)
    http_root = Path(lab.config.netboot.http_root)
    script = (http_root / task.node.uuid / "boot.ipxe").read_text()
    assert "goto deploy" in script and "rd.x=1" in script
    assert (http_root / task.node.uuid / "deploy_kernel").read_bytes() == b"kernel" * 1000
    assert task.node.driver_internal_info["fake_boot_device"] == {"boot_device": "pxe", "persistent": True}
    deploy.tear_down(task)
    assert not (http_root / task.node.uuid).exists()
