"""Step declaration, ordering and argument checks; the hash ring; fake delays."""

from __future__ import annotations

from collections import Counter

import pytest

from ironworks.conductor import steps as stepslib
from ironworks.conductor.ring import HashRing
from ironworks.drivers.fake import parse_delay
from ironworks.drivers.registry import DriverFactory
from ironworks.drivers.steps import StepInfo, check_args, step, steps_of
from ironworks.errors import InvalidInput


@pytest.fixture
def driver() -> object:
    return DriverFactory(["fake-hardware"]).driver_for("fake-hardware", {})


def test_step_decorator_stacks_kinds() -> None:
    class Iface:
        @step("clean", priority=5, abortable=True)
        @step("service", priority=0)
        def go(self) -> None: ...

    assert [(i.kind, i.priority, i.abortable) for i in steps_of(Iface, "clean")] == [("clean", 5, True)]
    assert [i.kind for i in steps_of(Iface, "service")] == ["service"]
    with pytest.raises(ValueError):
        step("dance")


def test_automated_steps_ordered_by_priority_then_interface(driver: object) -> None:
    auto = stepslib.automated_steps(driver, "clean")  # type: ignore[arg-type]
    assert [(s["interface"], s["step"]) for s in auto] == [("deploy", "erase_devices_metadata")]
    everything = stepslib.available_steps(driver, "clean")  # type: ignore[arg-type]
    prios = [s["priority"] for s in everything]
    assert prios == sorted(prios, reverse=True)
    # equal priorities: deploy before bios before raid (Ironic's interface order)
    zero = [s["interface"] for s in everything if s["priority"] == 0]
    assert zero.index("deploy") < zero.index("bios") < zero.index("raid")


def test_validate_requested_reports_every_problem(driver: object) -> None:
    with pytest.raises(InvalidInput) as exc:
        stepslib.validate_requested(
            driver,  # type: ignore[arg-type]
            "clean",
            [
                {"interface": "deploy", "step": "nope"},
                {"interface": "bios", "step": "apply_configuration", "args": {"settings": "x"}},
                {"interface": "power", "step": "power_on", "extra": 1},
            ],
        )
    msg = str(exc.value)
    assert "deploy.nope is not supported" in msg and "must be of type array" in msg and "unknown keys: extra" in msg
    ok = stepslib.validate_requested(driver, "clean", [{"interface": "power", "step": "reboot"}])  # type: ignore[arg-type]
    assert ok[0]["step"] == "reboot"
    with pytest.raises(InvalidInput, match="non-empty list"):
        stepslib.validate_requested(driver, "clean", [])  # type: ignore[arg-type]


def test_check_args_types() -> None:
    info = StepInfo("clean", "s", 0, argsinfo={"n": {"type": "integer", "required": True}})
    assert check_args(info, {"n": 3}) == []
    assert "must be of type integer" in check_args(info, {"n": True})[0]
    assert "requires argument 'n'" in check_args(info, {})[0]


def test_hash_ring_spreads_and_moves_little() -> None:
    nodes = [f"node-{i}" for i in range(3000)]
    ring3 = HashRing(["a", "b", "c"])
    owners = Counter(ring3.owner(n) for n in nodes)
    assert set(owners) == {"a", "b", "c"} and min(owners.values()) > 600
    ring2 = HashRing(["a", "b"])
    moved = [n for n in nodes if ring3.owner(n) != "c" and ring2.owner(n) != ring3.owner(n)]
    assert moved == []  # only c's nodes move when c leaves
    assert HashRing([]).owner("x") is None


def test_parse_delay() -> None:
    assert parse_delay("2") == (2.0, 2.0)
    assert parse_delay("1:5") == (1.0, 5.0)
    with pytest.raises(ValueError):
        parse_delay("5:1")
