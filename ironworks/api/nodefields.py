"""Node field rules: types, read-only fields, uniqueness, and RFC 6902 JSON Patch application."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
import jsonpointer
from sqlalchemy import select
from sqlalchemy.orm import Session

from ironworks.db.models import INTERFACES, Node
from ironworks.db.secrets import MASK, SecretBox, is_secret_key
from ironworks.drivers.base import INTERFACE_KINDS
from ironworks.drivers.registry import DriverFactory
from ironworks.errors import Conflict, InvalidInput
from ironworks.states import UPDATE_ALLOWED_STATES

KINDS = tuple(INTERFACE_KINDS)
NAME_RE = re.compile(r"^[a-zA-Z0-9\-._~]+$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

DICT_FIELDS = frozenset({"driver_info", "properties", "instance_info", "extra", "network_data"})
BOOL_FIELDS = frozenset({"automated_clean", "protected", "retired"})
STR_FIELDS = frozenset(
    {
        "name",
        "driver",
        "instance_uuid",
        "resource_class",
        "description",
        "owner",
        "lessee",
        "protected_reason",
        "retired_reason",
        "conductor_group",
        "shard",
        "parent_node",
        "chassis_uuid",
    }
    | {f"{k}_interface" for k in INTERFACES}
)
PATCHABLE = DICT_FIELDS | BOOL_FIELDS | STR_FIELDS
READ_ONLY = frozenset(
    {
        "uuid",
        "id",
        "provision_state",
        "target_provision_state",
        "power_state",
        "target_power_state",
        "provision_updated_at",
        "reservation",
        "created_at",
        "updated_at",
        "driver_internal_info",
        "last_error",
        "clean_step",
        "deploy_step",
        "service_step",
        "maintenance",
        "maintenance_reason",
        "fault",
        "console_enabled",
        "inspection_started_at",
        "inspection_finished_at",
        "conductor",
        "allocation_uuid",
        "boot_mode",
        "secure_boot",
        "traits",
        "raid_config",
        "target_raid_config",
        "links",
        "ports",
        "portgroups",
        "states",
        "volume",
        "disable_power_off",
    }
)
_HINTS = {
    "maintenance": "use PUT/DELETE /v1/nodes/{node}/maintenance",
    "provision_state": "use PUT /v1/nodes/{node}/states/provision",
    "power_state": "use PUT /v1/nodes/{node}/states/power",
}


def parse_bool(name: str, value: str) -> bool:
    """A boolean query parameter."""
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise InvalidInput(f"Query parameter {name} must be true or false, not {value!r}.")


def check_values(values: dict[str, Any], *, creating: bool = False) -> None:
    """Type and format checks of node fields; every problem in one message."""
    problems = []
    for key, value in values.items():
        if value is None:
            continue
        if key in DICT_FIELDS and not isinstance(value, dict):
            problems.append(f"{key} must be an object")
        elif key in BOOL_FIELDS and not isinstance(value, bool):
            problems.append(f"{key} must be true or false")
        elif key in STR_FIELDS and not isinstance(value, str):
            problems.append(f"{key} must be a string")
    name = values.get("name")
    if isinstance(name, str) and (not NAME_RE.match(name) or UUID_RE.match(name) or len(name) > 255):
        problems.append(f"name {name!r} is not valid: use letters, digits and - . _ ~ (at most 255, not a UUID)")
    for key in ("uuid", "instance_uuid", "chassis_uuid"):
        val = values.get(key)
        if isinstance(val, str) and not UUID_RE.match(val):
            problems.append(f"{key} {val!r} is not a UUID")
    if creating and not values.get("driver"):
        problems.append("driver is required")
    if problems:
        raise InvalidInput("Invalid node: " + "; ".join(problems) + ".")


def check_unique(session: Session, values: dict[str, Any], *, exclude_id: int | None = None) -> None:
    """``Conflict`` when the name, UUID or instance UUID is already taken."""
    for key, label in (("name", "name"), ("uuid", "UUID"), ("instance_uuid", "instance UUID")):
        val = values.get(key)
        if not val:
            continue
        stmt = select(Node.uuid).where(getattr(Node, key) == val)
        if exclude_id is not None:
            stmt = stmt.where(Node.id != exclude_id)
        other = session.execute(stmt).scalar_one_or_none()
        if other is not None:
            raise Conflict(f"A node with {label} {val} already exists ({other}); choose another {label}.")


def _restore_masked(new: Any, old: Any) -> Any:
    """Keep stored secrets where a client sent back the ``******`` mask it was shown."""
    if not isinstance(new, dict):
        return new
    old = old if isinstance(old, dict) else {}
    out = {}
    for k, v in new.items():
        if v == MASK and is_secret_key(k) and k in old:
            out[k] = old[k]
        else:
            out[k] = _restore_masked(v, old.get(k))
    return out


def apply_patch(node: Node, patch: Any, drivers: DriverFactory, secrets: SecretBox) -> dict[str, Any]:
    """The column changes a JSON Patch makes to ``node``; nothing is written here."""
    if not isinstance(patch, list) or not all(isinstance(op, dict) for op in patch):
        raise InvalidInput("The body must be a JSON Patch: a list of {op, path, value} objects (RFC 6902).")
    for n, op in enumerate(patch):
        path = op.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidInput(f"Patch operation {n} has an invalid path {path!r}: it must start with '/'.")
        if op.get("op") not in ("add", "replace", "remove", "test", "move", "copy"):
            raise InvalidInput(f"Patch operation {n} has an invalid op {op.get('op')!r}.")
        frm = op.get("from")
        if op.get("op") in ("move", "copy") and (not isinstance(frm, str) or not frm.startswith("/")):
            raise InvalidInput(f"Patch operation {n} ({op.get('op')}) needs a 'from' path starting with '/'.")
        for p in (path, frm if op.get("op") in ("move", "copy") else None):
            if not isinstance(p, str):
                continue
            top = p.split("/")[1]
            if top in READ_ONLY:
                hint = _HINTS.get(top)
                raise InvalidInput(f"'/{top}' is a read-only attribute" + (f"; {hint}." if hint else "."))
            if top not in PATCHABLE:
                raise InvalidInput(f"Cannot patch {p}: node has no attribute {top!r}.")
    doc = {f: copy.deepcopy(getattr(node, f)) for f in PATCHABLE}
    for f in DICT_FIELDS:
        doc[f] = doc[f] or {}
    try:
        result = jsonpatch.apply_patch(doc, patch)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise InvalidInput(f"The patch could not be applied: {exc}.") from None
    for f in PATCHABLE:
        result.setdefault(f, {} if f in DICT_FIELDS else None)
    unknown = set(result) - PATCHABLE
    if unknown:
        raise InvalidInput(f"Cannot add attribute(s) {', '.join(sorted(unknown))} to a node.")
    if not result.get("driver"):
        raise InvalidInput("driver cannot be removed: a node needs a driver.")
    for f in DICT_FIELDS:
        if result[f] is None:
            result[f] = {}
    check_values(result)
    for f in ("driver_info", "instance_info"):
        result[f] = secrets.seal(_restore_masked(result[f], doc[f]))
    changes = {
        f: v
        for f, v in result.items()
        if v != getattr(node, f) and not (f in DICT_FIELDS and not v and not getattr(node, f))
    }
    iface_changes = {k for k in changes if k.endswith("_interface")}
    if "driver" in changes or iface_changes:
        if node.provision_state not in UPDATE_ALLOWED_STATES and not node.maintenance:
            raise InvalidInput(
                f"Cannot change the driver or interfaces of node {node.uuid} in provision state "
                f"{node.provision_state!r}; move it to manageable (or set maintenance) first."
            )
        requested: dict[str, str | None] = {}
        for kind in KINDS:
            key = f"{kind}_interface"
            # a driver change resets interfaces the patch does not name to the new driver's defaults
            keep = key in changes or "driver" not in changes
            requested[kind] = result[key] if keep else None
        resolved = drivers.resolve_names(result["driver"], requested)
        for kind, impl in resolved.items():
            if getattr(node, f"{kind}_interface") != impl:
                changes[f"{kind}_interface"] = impl
    return changes
