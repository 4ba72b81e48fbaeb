"""Planning with the steps the agent reports: API validation against the cache, and replanning once
the agent lists its steps (verification, priorities, operator overrides). No database, no agent."""

from __future__ import annotations

from typing import Any

import pytest

from ironworks.conductor import steps as stepslib
from ironworks.drivers.registry import Driver, DriverFactory
from ironworks.errors import InvalidInput


def _step(name: str, priority: int = 0, **argsinfo: Any) -> dict[str, Any]:
    return {"step": name, "priority": priority, "interface": "deploy", "abortable": False, "argsinfo": argsinfo or None}


VERSION = {"description": "version", "required": True, "type": "string"}
REPORTED = [_step("erase_devices_metadata", 99), _step("erase_devices", 10), _step("vendor_fw", 0, version=VERSION)]


@pytest.fixture
def agent_driver() -> Driver:
    return DriverFactory(["fake-hardware"]).driver_for("fake-hardware", {"deploy": "agent"})


@pytest.fixture
def fake_driver() -> Driver:
    return DriverFactory(["fake-hardware"]).driver_for("fake-hardware", {})


def test_cache_shape_is_ironics() -> None:
    info = {"agent_cached_clean_steps": {"deploy": REPORTED[:1], "raid": [dict(REPORTED[1], interface="raid")]}}
    assert [s["step"] for s in stepslib.cached_agent_steps(info, "clean") or []] == [
        "erase_devices_metadata",
        "erase_devices",
    ]
    assert stepslib.cached_agent_steps(info, "service") is None  # never asked: not the same as "offers none"
    assert stepslib.cached_agent_steps({"agent_cached_service_steps": {}}, "service") == []


def test_api_accepts_unknown_deploy_steps_only_while_the_agent_was_never_asked(
    agent_driver: Driver, fake_driver: Driver
) -> None:
    vendor = [{"interface": "deploy", "step": "vendor_fw", "args": {"anything": 1}}]
    out = stepslib.validate_requested(agent_driver, "clean", vendor, reported=None)
    assert out[0]["step"] == "vendor_fw" and out[0]["args"] == {"anything": 1}  # checked later, by replan
    with pytest.raises(InvalidInput, match=r"deploy\.vendor_fw is not supported"):
        stepslib.validate_requested(fake_driver, "clean", vendor, reported=None)
    with pytest.raises(InvalidInput, match="takes: version") as exc:
        stepslib.validate_requested(agent_driver, "clean", vendor, reported=REPORTED)
    assert "requires argument 'version'" in str(exc.value)
    with pytest.raises(InvalidInput, match="as it last reported") as exc:
        stepslib.validate_requested(agent_driver, "clean", [{"interface": "deploy", "step": "vendor_fx"}], reported=[])
    good = stepslib.validate_requested(
        agent_driver,
        "clean",
        [{"interface": "deploy", "step": "vendor_fw", "args": {"version": "2"}}],
        reported=REPORTED,
    )
    assert good[0]["argsinfo"] == {"version": VERSION}


def test_replan_verifies_remaining_agent_steps_and_keeps_ours(agent_driver: Driver) -> None:
    plan = [
        stepslib.step_dict("power", stepslib.RESERVED["reboot"]),
        stepslib.step_dict("deploy", stepslib.reported_info("clean", _step("vendor_fw")), {"version": "1"}),
        stepslib.step_dict("deploy", stepslib.reported_info("clean", _step("vendor_typo"))),
    ]
    with pytest.raises(stepslib.StepsRejected) as exc:
        stepslib.replan(agent_driver, "clean", plan, 0, REPORTED, automated=False)
    msg = exc.value.message
    assert "deploy.vendor_typo is not offered" in msg and "deploy.vendor_fw" in msg and "vendor_fw is not" not in msg
    ok = stepslib.replan(agent_driver, "clean", plan[:2], 0, REPORTED, automated=False)
    assert [s["step"] for s in ok] == ["reboot", "vendor_fw"]  # a manual plan keeps its order
    bad_args = [dict(plan[1], args={"version": 3})]
    with pytest.raises(stepslib.StepsRejected, match="must be of type string"):
        stepslib.replan(agent_driver, "clean", bad_args, 0, REPORTED, automated=False)


def test_replan_honours_agent_priorities_in_automated_cleaning(agent_driver: Driver) -> None:
    plan = stepslib.automated_steps(agent_driver, "clean")
    assert [s["step"] for s in plan] == ["erase_devices_metadata"]
    reported = [*REPORTED, _step("vendor_scrub", 50), _step("burnin_memory", 5)]
    new = stepslib.replan(agent_driver, "clean", plan, 0, reported, automated=True, overrides={"erase_devices": 0})
    assert [(s["step"], s["priority"]) for s in new] == [
        ("erase_devices_metadata", 99),  # started: stays first
        ("vendor_scrub", 50),
        ("burnin_memory", 5),  # ours, manual by default, automated by the agent
    ]
    full = stepslib.replan(agent_driver, "clean", plan, 0, reported, automated=True, overrides={"erase_devices": 10})
    assert ("erase_devices", 10) in [(s["step"], s["priority"]) for s in full]
    done = stepslib.replan(agent_driver, "clean", [*plan, *new[1:2]], 1, reported, automated=True)
    assert [s["step"] for s in done].count("vendor_scrub") == 1  # nothing added twice


def test_conductor_side_deploy_steps_are_never_taken_over(agent_driver: Driver) -> None:
    plan = stepslib.merge_deploy_steps(agent_driver, [])
    reported = [_step("write_image", 95), _step("vendor_bios_tune", 70)]
    new = stepslib.replan(agent_driver, "deploy", plan, 0, reported, automated=True)
    assert [(s["step"], s["priority"]) for s in new] == [
        ("deploy", 100),
        ("write_image", 80),  # ours, at our priority
        ("vendor_bios_tune", 70),
        ("prepare_instance_boot", 60),
        ("tear_down_agent", 40),
        ("boot_instance", 20),
    ]
