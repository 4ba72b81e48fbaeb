"""Capabilities are read one way for every interface: string or dict, instance_info first."""

from __future__ import annotations

from ironworks.drivers.base import NodeView
from ironworks.drivers.capabilities import capability, requested_boot_mode


def node(**fields: object) -> NodeView:
    base: dict[str, object] = {
        "id": 1,
        "uuid": "u",
        "name": None,
        "driver": "ipmi",
        "driver_info": {},
        "driver_internal_info": {},
        "instance_info": {},
        "properties": {},
        "provision_state": "available",
        "power_state": None,
    }
    base.update(fields)
    return NodeView(**base)  # type: ignore[arg-type]


def test_capability_from_a_string_or_a_dict() -> None:
    assert capability("boot_mode:uefi, secure_boot:true", "secure_boot") == "true"
    assert capability({"boot_mode": "bios"}, "boot_mode") == "bios"
    assert capability("boot_mode:uefi", "secure_boot") is None
    assert capability(None, "boot_mode") is None


def test_the_requested_boot_mode_wins_over_the_observed_one_and_says_where_it_came_from() -> None:
    n = node(
        instance_info={"capabilities": {"boot_mode": "UEFI"}},
        properties={"capabilities": "boot_mode:bios"},
        boot_mode="bios",
    )
    assert requested_boot_mode(n) == ("uefi", "the capability boot_mode in instance_info/capabilities")
    n = node(properties={"capabilities": "cpu_vt:true,boot_mode:bios"}, boot_mode="uefi")
    assert requested_boot_mode(n) == ("bios", "the capability boot_mode in properties/capabilities")
    assert requested_boot_mode(node(boot_mode="UEFI")) == ("uefi", "the node's boot_mode")
    assert requested_boot_mode(node()) is None
