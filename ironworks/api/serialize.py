"""Resources to wire dicts, as Ironic renders them: links, ISO timestamps, masked secrets,
version-gated fields and ``?fields=`` selection.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ironworks.api import versions
from ironworks.db.models import INTERFACES
from ironworks.db.secrets import mask, needs_masking

#: Every node field of the wire format at the maximum version, in Ironic's order.
NODE_FIELDS: list[str] = [
    "allocation_uuid",
    "automated_clean",
    "bios_interface",
    "boot_interface",
    "boot_mode",
    "chassis_uuid",
    "clean_step",
    "conductor",
    "conductor_group",
    "console_enabled",
    "console_interface",
    "created_at",
    "deploy_interface",
    "deploy_step",
    "description",
    "driver",
    "driver_info",
    "driver_internal_info",
    "extra",
    "fault",
    "firmware_interface",
    "inspect_interface",
    "inspection_finished_at",
    "inspection_started_at",
    "instance_info",
    "instance_uuid",
    "last_error",
    "lessee",
    "maintenance",
    "maintenance_reason",
    "management_interface",
    "name",
    "network_data",
    "network_interface",
    "owner",
    "parent_node",
    "power_interface",
    "power_state",
    "properties",
    "protected",
    "protected_reason",
    "provision_state",
    "provision_updated_at",
    "raid_config",
    "raid_interface",
    "rescue_interface",
    "reservation",
    "resource_class",
    "retired",
    "retired_reason",
    "secure_boot",
    "service_step",
    "shard",
    "storage_interface",
    "target_power_state",
    "target_provision_state",
    "target_raid_config",
    "traits",
    "updated_at",
    "uuid",
    "vendor_interface",
]
NODE_LIST_FIELDS = ["instance_uuid", "maintenance", "name", "power_state", "provision_state", "uuid"]
NODE_STATES_FIELDS = [
    "boot_mode",
    "console_enabled",
    "last_error",
    "power_state",
    "provision_state",
    "provision_updated_at",
    "raid_config",
    "secure_boot",
    "target_power_state",
    "target_provision_state",
    "target_raid_config",
]
PORT_FIELDS = [
    "address",
    "created_at",
    "extra",
    "internal_info",
    "is_smartnic",
    "local_link_connection",
    "node_uuid",
    "physical_network",
    "portgroup_uuid",
    "pxe_enabled",
    "updated_at",
    "uuid",
]
PORT_LIST_FIELDS = ["address", "uuid"]

_MASKED_DICTS = frozenset({"driver_info", "instance_info", "driver_internal_info"})
_DATES = frozenset(
    {"created_at", "updated_at", "provision_updated_at", "inspection_started_at", "inspection_finished_at"}
)
_INTERFACE_FIELDS = frozenset(f"{k}_interface" for k in INTERFACES)
_DEFAULT_NETWORKISH = {
    "network_interface": "noop",
    "storage_interface": "noop",
    "vendor_interface": "no-vendor",
}


def iso(value: dt.datetime | None) -> str | None:
    """Naive UTC -> ``2026-11-23T16:00:00.123456+00:00``."""
    return None if value is None else value.isoformat() + "+00:00"


def links(base: str, kind: str, ident: str) -> list[dict[str, str]]:
    """Ironic's ``self`` and ``bookmark`` links."""
    return [
        {"href": f"{base}/v1/{kind}/{ident}", "rel": "self"},
        {"href": f"{base}/{kind}/{ident}", "rel": "bookmark"},
    ]


def _node_value(row: Any, name: str, ctx: NodeContext) -> Any:
    if name == "conductor":
        return ctx.conductor_of(row.uuid)
    if name in ("raid_config", "target_raid_config"):
        return {}
    if name == "allocation_uuid":
        return None
    if name in _MASKED_DICTS:
        value = getattr(row, name)
        return mask(value) if needs_masking(value) else (value or {})
    if name in _DATES:
        return iso(getattr(row, name))
    if name in _INTERFACE_FIELDS:
        value = getattr(row, name, None)
        if value is None:
            value = ctx.default_interface(row.driver, name) or _DEFAULT_NETWORKISH.get(name)
        return value
    return getattr(row, name)


class NodeContext:
    """Per-request rendering context: base URL, version, conductor ring, interface defaults."""

    def __init__(
        self,
        base: str,
        version: tuple[int, int],
        *,
        conductor_of: Callable[[str], str | None],
        default_interface: Callable[[str, str], str | None],
    ) -> None:
        self.base = base
        self.version = version
        self.conductor_of = conductor_of
        self.default_interface = default_interface


def select_fields(requested: list[str] | None, default: list[str], version: tuple[int, int]) -> list[str]:
    """The fields to render: ``?fields=`` (checked by the caller) or the default, gated by version."""
    return versions.node_fields_for(version, requested if requested is not None else default)


#: Node fields that are not columns (constant or computed).
VIRTUAL_NODE_FIELDS = frozenset({"conductor", "raid_config", "target_raid_config", "allocation_uuid"})


def columns_for(fields: Iterable[str]) -> list[str]:
    """The node columns needed to render ``fields`` (plus what links and defaults need)."""
    cols = [f for f in fields if f not in VIRTUAL_NODE_FIELDS]
    return list(dict.fromkeys([*cols, "uuid", "driver"]))


def nodes_to_dicts(
    rows: Sequence[Any], columns: list[str], fields: list[str], ctx: NodeContext
) -> list[dict[str, Any]]:
    """Many nodes on the wire, fast: ``rows`` are tuples of ``columns`` (from ``columns_for``).

    Listing 1,000 nodes in detail renders 61,000 values; plain columns are copied with one C-level
    ``itemgetter`` per row and only the few fields that need work (timestamps, masking, defaults,
    the owning conductor) are touched one by one.
    """
    pos = {c: i for i, c in enumerate(columns)}
    plain = [f for f in fields if f in pos and f not in _MASKED_DICTS and f not in _DATES]
    getter = operator.itemgetter(*[pos[f] for f in plain]) if plain else None
    dates = [(f, pos[f]) for f in fields if f in _DATES]
    masked = [(f, pos[f]) for f in fields if f in _MASKED_DICTS]
    ifaces = [f for f in plain if f in _INTERFACE_FIELDS]
    constants: dict[str, Any] = {
        f: ({} if f.endswith("raid_config") else None) for f in fields if f in VIRTUAL_NODE_FIELDS
    }
    with_conductor = "conductor" in fields
    uuid_i, driver_i = pos["uuid"], pos["driver"]
    base = f"{ctx.base}/v1/nodes/"
    bookmark = f"{ctx.base}/nodes/"
    out = []
    for r in rows:
        values = getter(r) if getter is not None else ()
        d = dict(zip(plain, values if len(plain) > 1 else (values,), strict=True)) if plain else {}
        for f, i in dates:
            v = r[i]
            d[f] = None if v is None else v.isoformat() + "+00:00"
        for f, i in masked:
            v = r[i]
            d[f] = mask(v) if needs_masking(v) else (v or {})
        for f in ifaces:
            if d[f] is None:
                d[f] = ctx.default_interface(r[driver_i], f) or _DEFAULT_NETWORKISH.get(f)
        if constants:
            d.update(constants)
        uuid = r[uuid_i]
        if with_conductor:
            d["conductor"] = ctx.conductor_of(uuid)
        d["links"] = [{"href": base + uuid, "rel": "self"}, {"href": bookmark + uuid, "rel": "bookmark"}]
        out.append(d)
    return out


def node_to_dict(row: Any, fields: Iterable[str], ctx: NodeContext, *, detail_links: bool = False) -> dict[str, Any]:
    """One node on the wire."""
    out = {name: _node_value(row, name, ctx) for name in fields}
    out["links"] = links(ctx.base, "nodes", row.uuid)
    if detail_links:
        for sub in ("ports", "portgroups", "states", "volume"):
            out[sub] = links(ctx.base, "nodes", f"{row.uuid}/{sub}")
    return out


def port_to_dict(row: Any, node_uuid: str, fields: Iterable[str], base: str) -> dict[str, Any]:
    """One port on the wire (``row`` has port columns)."""
    out: dict[str, Any] = {}
    for name in fields:
        if name == "node_uuid":
            out[name] = node_uuid
        elif name in ("created_at", "updated_at"):
            out[name] = iso(getattr(row, name))
        elif name == "portgroup_uuid":
            out[name] = None
        else:
            out[name] = getattr(row, name)
    out["links"] = links(base, "ports", row.uuid)
    return out


def event_to_dict(row: Any) -> dict[str, Any]:
    """One timeline entry (Ironic's history shape plus ``data``)."""
    return {
        "uuid": row.uuid,
        "created_at": iso(row.created_at),
        "severity": row.severity,
        "event": row.event,
        "event_type": row.event_type,
        "conductor": row.conductor,
        "user": row.user,
        "data": row.data,
    }
