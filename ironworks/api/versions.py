"""API microversions: what a request asked for, and what each field needs.

Requests name a version in ``X-OpenStack-Ironic-API-Version`` (``1.N`` or ``latest``); without it
the minimum is assumed, as Ironic does. Every response says the minimum, the maximum and the
version used. ``MAX_VERSION`` is the highest version whose behaviour Ironworks implements for the
resources it serves (1.87: provision verb ``service`` and the ``service_step`` field).
"""

from __future__ import annotations

from ironworks.errors import InvalidInput, NotAcceptable

MIN_VERSION = (1, 1)
MAX_VERSION = (1, 87)
HEADER = "x-openstack-ironic-api-version"


def fmt(v: tuple[int, int]) -> str:
    """``(1, 87)`` -> ``"1.87"``."""
    return f"{v[0]}.{v[1]}"


def parse(value: str | None) -> tuple[int, int]:
    """The version a request asked for; ``NotAcceptable`` outside the supported range."""
    if value is None or value == "":
        return MIN_VERSION
    value = value.strip()
    if value.lower() == "latest":
        return MAX_VERSION
    try:
        major_s, minor_s = value.split(".")
        version = (int(major_s), int(minor_s))
    except ValueError:
        raise InvalidInput(
            f"Invalid value for {HEADER}: {value!r}; use MAJOR.MINOR such as 1.{MAX_VERSION[1]}, or 'latest'."
        ) from None
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise NotAcceptable(
            f"Version {value} was requested but the minor version is not supported by this service. "
            f"The supported version range is: [{fmt(MIN_VERSION)}, {fmt(MAX_VERSION)}]."
        )
    return version


#: Node fields and the version that introduced them (absent below it); others exist since 1.1.
NODE_FIELD_VERSIONS: dict[str, tuple[int, int]] = {
    "driver_internal_info": (1, 3),
    "name": (1, 5),
    "inspection_started_at": (1, 6),
    "inspection_finished_at": (1, 6),
    "clean_step": (1, 7),
    "raid_config": (1, 12),
    "target_raid_config": (1, 12),
    "network_interface": (1, 20),
    "resource_class": (1, 21),
    "boot_interface": (1, 31),
    "console_interface": (1, 31),
    "deploy_interface": (1, 31),
    "inspect_interface": (1, 31),
    "management_interface": (1, 31),
    "power_interface": (1, 31),
    "raid_interface": (1, 31),
    "vendor_interface": (1, 31),
    "storage_interface": (1, 33),
    "traits": (1, 37),
    "rescue_interface": (1, 38),
    "bios_interface": (1, 40),
    "fault": (1, 42),
    "deploy_step": (1, 44),
    "conductor_group": (1, 46),
    "automated_clean": (1, 47),
    "protected": (1, 48),
    "protected_reason": (1, 48),
    "conductor": (1, 49),
    "owner": (1, 50),
    "description": (1, 51),
    "allocation_uuid": (1, 52),
    "retired": (1, 61),
    "retired_reason": (1, 61),
    "lessee": (1, 65),
    "network_data": (1, 66),
    "boot_mode": (1, 75),
    "secure_boot": (1, 75),
    "shard": (1, 82),
    "parent_node": (1, 83),
    "firmware_interface": (1, 86),
    "service_step": (1, 87),
}

#: Features and the version that introduced them.
FEATURES: dict[str, tuple[int, int]] = {
    "fields": (1, 8),
    "enroll": (1, 11),
    "manual_clean": (1, 15),
    "power_timeout": (1, 27),
    "rescue": (1, 38),
    "detail_param": (1, 43),
    "configdrive_dict": (1, 56),
    "deploy_steps": (1, 69),
    "history": (1, 78),
    "firmware": (1, 86),
    "service": (1, 87),
}


def node_fields_for(version: tuple[int, int], fields: list[str]) -> list[str]:
    """The subset of ``fields`` visible at ``version``."""
    return [f for f in fields if NODE_FIELD_VERSIONS.get(f, (1, 1)) <= version]
