"""Ironic's node capabilities (``"boot_mode:uefi,secure_boot:true"`` or a dict), read the same way everywhere."""

from __future__ import annotations

from typing import Any

from ironworks.drivers.base import NodeView


def capability(caps: Any, name: str) -> str | None:
    """The value of capability ``name`` in a capabilities string or dict, or None."""
    if isinstance(caps, dict):
        value = caps.get(name)
        return None if value is None else str(value)
    for item in str(caps or "").split(","):
        key, _, value = item.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def requested_boot_mode(node: NodeView) -> tuple[str, str] | None:
    """(boot mode, where it was set): capabilities in instance_info, properties, driver_info, then observed."""
    for where, caps in (
        ("instance_info/capabilities", node.instance_info.get("capabilities")),
        ("properties/capabilities", node.properties.get("capabilities")),
        ("driver_info/capabilities", node.driver_info.get("capabilities")),
    ):
        mode = capability(caps, "boot_mode")
        if mode:
            return mode.strip().lower(), f"the capability boot_mode in {where}"
    if node.boot_mode:
        return node.boot_mode.strip().lower(), "the node's boot_mode"
    return None
