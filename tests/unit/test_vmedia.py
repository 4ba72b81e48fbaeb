"""``redfish-virtual-media`` boot: the agent ramdisk's ISO built, published, inserted and taken down.

The BMC is the recorded iDRAC (``redfish_fake.FakeBmc``, virtual media on its manager); the ISOs
are real (built with xorriso, remastered by ``ironworks.images.iso``), the image cache and its disk
budget are the real ones in a temporary directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ironworks.config import Config
from ironworks.drivers.agent import AgentDeploy
from ironworks.drivers.base import Interface, NodeView
from ironworks.drivers.base import ValidationError as DriverValidationError
from ironworks.drivers.redfish import RedfishManagement
from ironworks.drivers.vmedia import DEVICES_KEY, STATE_KEY, TOKEN_KEY, VirtualMediaBoot
from ironworks.errors import BmcRequestFailed
from ironworks.images.cache import ImageCache
from tests.unit import redfish_fake as rf
from tests.vmedia_fixtures import iso_file, make_iso

CD = "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD"
HTTP_URL = "http://127.0.0.1:6385/boot"


@dataclass
class VmTask(rf.FakeTask):
    """A task whose other interfaces are real ones (or the ones a test gives)."""

    ifaces: dict[str, Interface] = field(default_factory=dict)
    power: list[str] = field(default_factory=list)

    def interface(self, kind: str) -> Interface:
        return self.ifaces[kind]

    def set_power_state(self, state: str) -> str:
        self.power.append(state)
        self.node.power_state = state
        return state


@dataclass
class Lab:
    """One fake BMC, a config in tmp_path, and interfaces wired to them."""

    tmp: Path
    config: Config
    bmc: rf.FakeBmc
    boot: VirtualMediaBoot
    mgmt: RedfishManagement
    src: Path

    @property
    def publish_dir(self) -> Path:
        return Path(self.config.netboot.http_root) / "vmedia"

    def published(self) -> list[Path]:
        return sorted(self.publish_dir.glob("*")) if self.publish_dir.is_dir() else []

    def task(self, deploy: Interface, *, uuid: str = rf.make_task().node.uuid, **info: Any) -> VmTask:
        node = NodeView(
            id=1,
            uuid=uuid,
            name="r650-1",
            driver="redfish",
            driver_info=rf.driver_info(**info),
            driver_internal_info={},
            instance_info={},
            properties={},
            provision_state="deploying",
            power_state="power off",
        )
        return VmTask(node, ifaces={"boot": self.boot, "management": self.mgmt, "deploy": deploy})

    @property
    def cd(self) -> dict[str, Any]:
        return self.bmc.resources[CD]

    def cache(self) -> ImageCache:
        return ImageCache.from_config(self.config)


def make_lab(tmp_path: Path, *, budget: int = 0) -> Lab:
    config = Config(state_dir=str(tmp_path / "state"))
    config.netboot.http_root = str(tmp_path / "http")
    config.netboot.http_url = HTTP_URL
    src = tmp_path / "src"
    src.mkdir()
    config.images.allowed_file_dirs = [str(src)]
    config.images.disk_budget_bytes = budget
    bmc = rf.FakeBmc()
    client = rf.client(bmc)
    boot, mgmt = VirtualMediaBoot(config), RedfishManagement(config)
    boot.client = mgmt.client = client
    return Lab(tmp_path, config, bmc, boot, mgmt, src)


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return make_lab(tmp_path)


def _kernel_ramdisk(lab: Lab) -> dict[str, str]:
    (lab.src / "agent.kernel").write_bytes(os.urandom(40_000))
    (lab.src / "agent.initramfs").write_bytes(os.urandom(20_000))
    return {"deploy_kernel": str(lab.src / "agent.kernel"), "deploy_ramdisk": str(lab.src / "agent.initramfs")}


def _everything_said(task: VmTask, *errors: BaseException) -> str:
    return " ".join([m for _, m in task.records] + [str(e) for e in errors] + [json.dumps(task.node.driver_info)])


# ---- prepare_ramdisk ----------------------------------------------------------------------------


def test_deploy_iso_is_remastered_published_inserted_and_booted_once(lab: Lab) -> None:
    make_iso(lab.src / "agent.iso")
    task = lab.task(AgentDeploy(lab.config), deploy_iso=str(lab.src / "agent.iso"), kernel_append_params="ipa-debug=1")
    lab.boot.validate(task)
    lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})

    [iso] = lab.published()
    token = task.node.driver_internal_info[TOKEN_KEY]
    assert iso.name.startswith(task.node.uuid + "-") and len(iso.name) > len(task.node.uuid) + 30
    assert iso.stat().st_mode & 0o077 == 0  # the token inside is for the serving process only
    assert lab.cd["Inserted"] is True and lab.cd["Image"] == f"{HTTP_URL}/vmedia/{iso.name}"
    boot = lab.bmc.system["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideEnabled"]) == ("Cd", "Once")
    line = f"ipa-api-url=http://127.0.0.1:6385 ipa-agent-token={token} console=ttyS0,115200n8 ipa-debug=1"
    for cfg in ("/isolinux/isolinux.cfg", "/boot/grub/grub.cfg"):
        assert line in iso_file(iso, cfg, lab.tmp / "x"), cfg
    assert lab.cache().usage()["reserved"].get(task.node.uuid, 0) > 0
    said = _everything_said(task)
    assert token not in said and iso.name.split("-", 5)[-1] not in said
    assert f"{task.node.uuid}-******.iso" in said
    assert task.node.driver_internal_info[DEVICES_KEY] == ["cd", "usb"]


def test_kernel_and_ramdisk_become_a_deploy_iso_with_network_data(lab: Lab) -> None:
    network = {"links": [{"id": "eth0", "ethernet_mac_address": "52:54:00:12:34:56"}], "networks": []}
    task = lab.task(AgentDeploy(lab.config), network_data=network, **_kernel_ramdisk(lab))
    lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    [iso] = lab.published()
    assert iso.stat().st_mode & 0o077 == 0
    assert json.loads(iso_file(iso, "/openstack/latest/network_data.json", lab.tmp / "x")) == network
    assert f"ipa-agent-token={task.node.driver_internal_info[TOKEN_KEY]}" in iso_file(
        iso, "/isolinux/isolinux.cfg", lab.tmp / "x"
    )


def test_clean_up_ramdisk_ejects_deletes_and_releases_and_is_idempotent(lab: Lab) -> None:
    task = lab.task(AgentDeploy(lab.config), **_kernel_ramdisk(lab))
    lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    lab.boot.clean_up_ramdisk(task)
    lab.boot.clean_up_ramdisk(task)
    assert lab.published() == []
    assert lab.cd["Inserted"] is False
    assert task.node.uuid not in lab.cache().usage()["reserved"]
    assert STATE_KEY not in task.node.driver_internal_info


def test_prepare_instance_for_the_agent_deploy_ejects_and_boots_the_disk(lab: Lab) -> None:
    task = lab.task(AgentDeploy(lab.config), **_kernel_ramdisk(lab))
    lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    lab.boot.prepare_instance(task)
    assert lab.published() == [] and lab.cd["Inserted"] is False
    boot = lab.bmc.system["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideEnabled"]) == ("Hdd", "Continuous")
    assert task.node.uuid not in lab.cache().usage()["reserved"]


def test_a_second_prepare_replaces_the_first_iso(lab: Lab) -> None:
    task = lab.task(AgentDeploy(lab.config), **_kernel_ramdisk(lab))
    lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    first = task.node.driver_internal_info[TOKEN_KEY]
    lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    [iso] = lab.published()
    assert task.node.driver_internal_info[TOKEN_KEY] != first
    assert lab.cd["Image"].endswith(iso.name)


def test_rescue_boots_the_rescue_iso(lab: Lab) -> None:
    make_iso(lab.src / "rescue.iso", volume="RESCUE")
    task = lab.task(AgentDeploy(lab.config), rescue_iso=str(lab.src / "rescue.iso"), **_kernel_ramdisk(lab))
    task.node.provision_state = "rescuing"
    lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    [iso] = lab.published()
    assert "menuentry" in iso_file(iso, "/boot/grub/grub.cfg", lab.tmp / "x")  # the user ISO, remastered


# ---- failures leave nothing behind ------------------------------------------------------------


def test_insert_failure_rolls_everything_back_without_naming_the_secret(lab: Lab) -> None:
    task = lab.task(AgentDeploy(lab.config), **_kernel_ramdisk(lab))
    lab.bmc.fail("POST", "VirtualMedia.InsertMedia", 400)
    with pytest.raises(BmcRequestFailed) as err:
        lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    assert lab.published() == []
    assert lab.cd["Inserted"] is False
    assert task.node.uuid not in lab.cache().usage()["reserved"]
    assert TOKEN_KEY not in task.node.driver_internal_info and STATE_KEY not in task.node.driver_internal_info
    assert "******" in str(err.value) and "/vmedia/" in str(err.value)
    assert not list((lab.config.state_path / "vmedia-work").iterdir())


def test_set_boot_failure_ejects_what_was_inserted(lab: Lab) -> None:
    task = lab.task(AgentDeploy(lab.config), **_kernel_ramdisk(lab))
    lab.bmc.fail("PATCH", "System.Embedded.1", 400)
    with pytest.raises(BmcRequestFailed):
        lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    assert lab.cd["Inserted"] is False and lab.published() == []


def test_a_bmc_without_virtual_media_is_refused_and_then_refused_by_validate(lab: Lab) -> None:
    coll = lab.bmc.resources["/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia"]
    coll["Members"], coll["Members@odata.count"] = [], 0
    task = lab.task(AgentDeploy(lab.config), **_kernel_ramdisk(lab))
    with pytest.raises(DriverValidationError, match=r"offers no virtual cd device .*offers: none.*--boot-interface"):
        lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    assert lab.published() == [] and TOKEN_KEY not in task.node.driver_internal_info
    assert lab.bmc.count("POST", "VirtualMedia.InsertMedia") == 0
    with pytest.raises(DriverValidationError, match="offers no virtual cd"):
        lab.boot.validate(task)


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"kernel_append_params": "quiet a{b"}, "'{'"),
        ({"kernel_append_params": "quiet\nrd.break"}, "line break"),
        ({"kernel_append_params": 'x="a b'}, "would break the boot config"),
    ],
)
def test_parameters_that_would_break_a_boot_line_are_refused_before_anything(
    lab: Lab, info: dict[str, Any], message: str
) -> None:
    task = lab.task(AgentDeploy(lab.config), **_kernel_ramdisk(lab), **info)
    with pytest.raises(DriverValidationError, match=message):
        lab.boot.validate(task)
    with pytest.raises(DriverValidationError, match=message):
        lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    assert lab.published() == [] and lab.bmc.count("POST", "VirtualMedia.InsertMedia") == 0


def test_validate_names_what_is_missing(lab: Lab) -> None:
    task = lab.task(AgentDeploy(lab.config))
    with pytest.raises(DriverValidationError, match=r"deploy_iso.*deploy_kernel"):
        lab.boot.validate(task)
    task = lab.task(AgentDeploy(lab.config), deploy_iso="ftp://example.test/a.iso")
    with pytest.raises(DriverValidationError, match="driver_info/deploy_iso"):
        lab.boot.validate(task)
    task = lab.task(AgentDeploy(lab.config), deploy_iso="/etc/agent.iso")
    with pytest.raises(DriverValidationError, match="allowed_file_dirs"):
        lab.boot.validate(task)
    task = lab.task(AgentDeploy(lab.config), deploy_iso="https://images.test/a.iso", deploy_iso_checksum="md5:1")
    with pytest.raises(DriverValidationError, match="deploy_iso_checksum"):
        lab.boot.validate(task)
    task = lab.task(AgentDeploy(lab.config), redfish_address="")
    with pytest.raises(DriverValidationError, match="redfish_address"):
        lab.boot.validate(task)


def test_a_bad_deploy_iso_leaves_nothing_inserted(lab: Lab) -> None:
    (lab.src / "agent.iso").write_bytes(os.urandom(100_000))
    task = lab.task(AgentDeploy(lab.config), deploy_iso=str(lab.src / "agent.iso"))
    with pytest.raises(Exception, match="ISO"):
        lab.boot.prepare_ramdisk(task, params={"ipa-api-url": "http://127.0.0.1:6385"})
    assert lab.published() == [] and lab.cd["Inserted"] is False
    assert task.node.uuid not in lab.cache().usage()["reserved"]
