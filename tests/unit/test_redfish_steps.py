"""Redfish BIOS and firmware steps against the recorded BMC: caches, and state kept across Wait calls."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from ironworks.drivers.redfish_steps import RedfishBios, RedfishFirmware
from ironworks.drivers.steps import Done, Failed, Wait, steps_of
from ironworks.errors import BmcUnreachable
from tests.fakes import Clock
from tests.unit.redfish_fake import BIOS, SYSTEM, FakeBmc, client, make_task, task_body

BIOS_URL, BMC_URL = "http://images.example.test/bios-1.8.2.exe", "https://images.example.test/idrac-7.00.exe"


@pytest.fixture
def bmc() -> FakeBmc:
    return FakeBmc(power_lands_after=1)


def bios_of(bmc: FakeBmc, clock: Clock) -> RedfishBios:
    bios = RedfishBios()
    bios.client, bios.wall_clock = client(bmc), clock
    return bios


def firmware_of(bmc: FakeBmc, clock: Clock) -> RedfishFirmware:
    fw = RedfishFirmware()
    fw.client, fw.wall_clock = client(bmc), clock
    return fw


def posts(bmc: FakeBmc) -> list[tuple[str, Any]]:
    return [(p.rsplit("/", 1)[-1], b) for m, p, b in bmc.requests if m == "POST"]


# ---- BIOS -------------------------------------------------------------------------------------
def test_bios_settings_are_cached_as_strings(bmc: FakeBmc) -> None:
    settings = bios_of(bmc, Clock()).cache_bios_settings(make_task())
    assert {"name": "ProcCStates", "value": "true"} in settings and {"name": "PwrPerfSwitch", "value": "3"} in settings
    assert [s["name"] for s in settings] == sorted(s["name"] for s in settings)


def test_a_bmc_without_bios_caches_nothing(bmc: FakeBmc) -> None:
    del bmc.system["Bios"]
    assert bios_of(bmc, Clock()).cache_bios_settings(make_task()) == []


def test_apply_configuration_stages_reboots_then_checks(bmc: FakeBmc) -> None:
    bios, task = bios_of(bmc, Clock()), make_task()
    settings = [{"name": "ProcVirtualization", "value": "Disabled"}, {"name": "PwrPerfSwitch", "value": 2}]
    first = bios.apply_configuration(task, settings)
    assert isinstance(first, Wait) and first.poll_after == bios.poll_interval
    assert (
        "PATCH",
        BIOS + "/Settings",
        {"Attributes": {"ProcVirtualization": "Disabled", "PwrPerfSwitch": 2}},
    ) in bmc.requests
    assert posts(bmc) == [("ComputerSystem.Reset", {"ResetType": "ForceRestart"})]  # the node was on
    assert task.node.driver_internal_info["redfish_bios"]["args"]["step"] == "apply_configuration"
    assert bios.apply_configuration(task, settings) == Done()
    assert "redfish_bios" not in task.node.driver_internal_info
    assert bmc.resources[BIOS]["Attributes"]["ProcVirtualization"] == "Disabled"
    assert len(posts(bmc)) == 1  # no second reboot


def test_apply_configuration_that_does_not_take_fails_after_the_limit(bmc: FakeBmc) -> None:
    clock = Clock()
    bios, task = bios_of(bmc, clock), make_task()
    bmc.system["PowerState"] = "Off"
    settings = [{"name": "MemTest", "value": "Enabled"}]
    assert isinstance(bios.apply_configuration(task, settings), Wait)
    assert posts(bmc) == [("ComputerSystem.Reset", {"ResetType": "On"})]  # off: powered on, not restarted
    bmc.resources[BIOS]["Attributes"]["MemTest"] = "Disabled"  # the BIOS refused it
    assert isinstance(bios.apply_configuration(task, settings), Wait)
    clock.now += bios.bios_apply_timeout
    outcome = bios.apply_configuration(task, settings)
    assert isinstance(outcome, Failed) and outcome.reason == "bios_not_applied"
    assert "MemTest still differ after the reboot (the BMC reports MemTest='Disabled')" in outcome.message
    assert "redfish_bios" not in task.node.driver_internal_info


def test_apply_configuration_rejects_malformed_settings(bmc: FakeBmc) -> None:
    outcome = bios_of(bmc, Clock()).apply_configuration(make_task(), [{"name": "X"}])
    assert isinstance(outcome, Failed) and outcome.reason == "invalid_settings"
    assert bmc.requests == []


def test_factory_reset_then_reboot(bmc: FakeBmc) -> None:
    bios, task = bios_of(bmc, Clock()), make_task()
    assert isinstance(bios.factory_reset(task), Wait)
    assert [p for p, _ in posts(bmc)] == ["Bios.ResetBios", "ComputerSystem.Reset"]
    assert bios.factory_reset(task) == Done()
    assert bmc.resources[BIOS]["Attributes"]["SysProfile"] == "Default"


def test_bios_and_firmware_steps_are_manual_clean_and_service_steps() -> None:
    for iface, names in ((RedfishBios, {"apply_configuration", "factory_reset"}), (RedfishFirmware, {"update"})):
        for kind in ("clean", "service"):
            infos = steps_of(iface, kind)
            assert {i.name for i in infos} == names and all(i.priority == 0 and not i.abortable for i in infos)


# ---- firmware ---------------------------------------------------------------------------------
def test_firmware_components_from_the_inventory(bmc: FakeBmc) -> None:
    comps = firmware_of(bmc, Clock()).cache_firmware_components(make_task())
    assert comps == [
        {"component": "Installed-108255-22.31.6__NIC.Integrated.1-1-1", "current_version": "22.31.6"},
        {"component": "bios", "current_version": "1.7.5"},
        {"component": "bmc", "current_version": "6.10.30.00"},
    ]


def test_firmware_components_without_an_inventory(bmc: FakeBmc) -> None:
    del bmc.resources["/redfish/v1/UpdateService/FirmwareInventory"]
    comps = firmware_of(bmc, Clock()).cache_firmware_components(make_task())
    assert comps == [
        {"component": "bios", "current_version": "1.7.5"},
        {"component": "bmc", "current_version": "6.10.30.00"},
    ]


def test_firmware_update_runs_component_after_component_across_wait_calls(bmc: FakeBmc) -> None:
    clock = Clock()
    fw, task = firmware_of(bmc, clock), make_task()
    settings = [{"component": "bios", "url": BIOS_URL, "wait": 30}, {"component": "bmc", "url": BMC_URL}]
    bmc.task_script = [(202, task_body("Running", "OK", 40)), (200, task_body("Completed"))]

    def step() -> Any:
        return fw.update(task, settings)

    assert step() == Wait(poll_after=5.0, reason="updating bios")
    assert posts(bmc)[-1] == (
        "UpdateService.SimpleUpdate",
        {"ImageURI": BIOS_URL, "TransferProtocol": "HTTP", "Targets": [SYSTEM]},
    )
    state = task.node.driver_internal_info["redfish_firmware"]
    assert state["monitor"] == "/redfish/v1/TaskService/Tasks/JID_001" and state["index"] == 0
    assert step() == Wait(poll_after=5.0, reason="bios: Running 40%")
    assert step() == Wait(poll_after=30.0, reason="letting bios settle for 30s")  # done; honour "wait"
    clock.now += 10
    assert step() == Wait(poll_after=20.0, reason="letting bios settle")
    clock.now += 20
    bmc.task_script = [(200, task_body("Completed"))]
    assert step() == Wait(poll_after=5.0, reason="updating bmc")
    assert posts(bmc)[-1][1]["Targets"] == ["/redfish/v1/Managers/iDRAC.Embedded.1"]
    assert posts(bmc)[-1][1]["TransferProtocol"] == "HTTPS"
    assert step() == Done()
    assert "redfish_firmware" not in task.node.driver_internal_info
    assert bmc.count("POST", "SimpleUpdate") == 2
    assert [m for _, m in task.records if "finished" in m] == [
        f"Firmware update of bios from {BIOS_URL} finished",
        f"Firmware update of bmc from {BMC_URL} finished",
    ]
    assert task.progresses[-1] == (2, 2, "firmware updated")


def test_firmware_update_failure_carries_the_bmc_message(bmc: FakeBmc) -> None:
    fw, task = firmware_of(bmc, Clock()), make_task()
    bmc.task_script = [(200, task_body("Exception", "Critical", 30, "Unable to verify the update package signature."))]
    settings = [{"component": "bios", "url": BIOS_URL}]
    assert isinstance(fw.update(task, settings), Wait)
    outcome = fw.update(task, settings)
    assert outcome == Failed(
        "firmware_update_failed",
        f"The BMC reports the firmware update of bios from {BIOS_URL} Exception: "
        "Unable to verify the update package signature.",
    )
    assert "redfish_firmware" not in task.node.driver_internal_info


def test_a_bmc_flashing_itself_may_stop_answering_for_a_while(bmc: FakeBmc) -> None:
    clock = Clock()
    fw, task = firmware_of(bmc, clock), make_task()
    settings = [{"component": "bmc", "url": BMC_URL}]
    assert isinstance(fw.update(task, settings), Wait)
    refused = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    bmc.fail("GET", "JID_001", refused, times=3)
    outcome = fw.update(task, settings)
    assert isinstance(outcome, Wait) and "does not answer while updating" in outcome.reason
    clock.now += fw.update_timeout + 1
    bmc.fail("GET", "JID_001", refused, times=3)
    with pytest.raises(BmcUnreachable):
        fw.update(task, settings)
    assert "redfish_firmware" not in task.node.driver_internal_info  # a new run starts afresh


def test_firmware_update_settings_are_checked_before_anything_is_flashed(bmc: FakeBmc) -> None:
    bad = [{"component": "bios", "url": "ftp://x/bios.bin", "wait": -1}, {"url": BIOS_URL, "when": "now"}]
    outcome = firmware_of(bmc, Clock()).update(make_task(), bad)
    assert isinstance(outcome, Failed) and outcome.reason == "invalid_settings"
    for part in ("item 0 needs an http(s) url", "item 0 wait must be", "item 1 needs a component", "unknown keys when"):
        assert part in outcome.message
    assert bmc.requests == []


def test_only_the_same_run_with_the_same_arguments_resumes(bmc: FakeBmc) -> None:
    fw, task = firmware_of(bmc, Clock()), make_task()
    settings = [{"component": "bios", "url": BIOS_URL}]
    task.node.driver_internal_info["step_started_at"] = 1.0
    assert isinstance(fw.update(task, settings), Wait)
    bmc.task_script = [(202, task_body("Running", "OK", 10))]
    assert fw.update(task, settings) == Wait(poll_after=5.0, reason="bios: Running 10%")  # resumed: polled
    task.node.driver_internal_info["step_started_at"] = 2.0  # the flow died; a new clean runs the step
    assert fw.update(task, settings) == Wait(poll_after=5.0, reason="updating bios")
    other = [{"component": "bios", "url": BIOS_URL + "?v=2"}]
    assert fw.update(task, other) == Wait(poll_after=5.0, reason="updating bios")
    assert bmc.count("POST", "SimpleUpdate") == 3 and bmc.count("GET", "JID_001") == 1

    bios = bios_of(bmc, Clock())
    assert isinstance(bios.factory_reset(task), Wait)
    assert isinstance(bios.apply_configuration(task, [{"name": "MemTest", "value": "Enabled"}]), Wait)
    assert bmc.count("POST", "Bios.ResetBios") == 1 and bmc.count("PATCH", "/Bios/Settings") == 1
