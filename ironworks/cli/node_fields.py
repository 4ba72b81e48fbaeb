"""How the field options of ``node create``, ``node set`` and ``node unset`` become request bodies.

``--driver-info KEY=VALUE`` and its siblings fill the node's dict fields; a value that parses as JSON
(``623``, ``true``, ``{"a": 1}``) is sent as that JSON value, anything else as text. ``set`` and
``unset`` send RFC 6902 JSON Patches (``add`` and ``remove`` operations).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from ironworks.cli.client import Json

#: A dict field of a node -> the repeatable option that fills it.
DICT_FIELD_OPTIONS = {
    "driver_info": "--driver-info",
    "properties": "--property",
    "instance_info": "--instance-info",
    "extra": "--extra",
}


def _assignments(flag: str, what: str) -> Any:
    return typer.Option(flag, metavar="KEY=VALUE", help=f"Set a key of {what}; repeatable. JSON values are parsed.")


def _keys(flag: str, what: str) -> Any:
    return typer.Option(flag, metavar="KEY", help=f"Remove a key from {what}; repeatable.", show_default=False)


def _interface(kind: str) -> Any:
    return typer.Option(f"--{kind}-interface", help=f"The {kind} interface to use.", show_default=False)


DriverInfoOption = Annotated[list[str] | None, _assignments("--driver-info", "driver_info (BMC access)")]
PropertyOption = Annotated[list[str] | None, _assignments("--property", "properties")]
InstanceInfoOption = Annotated[list[str] | None, _assignments("--instance-info", "instance_info")]
ExtraOption = Annotated[list[str] | None, _assignments("--extra", "extra")]
DriverInfoKeys = Annotated[list[str] | None, _keys("--driver-info", "driver_info")]
PropertyKeys = Annotated[list[str] | None, _keys("--property", "properties")]
InstanceInfoKeys = Annotated[list[str] | None, _keys("--instance-info", "instance_info")]
ExtraKeys = Annotated[list[str] | None, _keys("--extra", "extra")]
NameOption = Annotated[str | None, typer.Option("--name", help="A unique name.", show_default=False)]
ResourceClassOption = Annotated[str | None, typer.Option("--resource-class", show_default=False)]
BootInterface = Annotated[str | None, _interface("boot")]
DeployInterface = Annotated[str | None, _interface("deploy")]
PowerInterface = Annotated[str | None, _interface("power")]
ManagementInterface = Annotated[str | None, _interface("management")]
InspectInterface = Annotated[str | None, _interface("inspect")]
ConsoleInterface = Annotated[str | None, _interface("console")]
RescueInterface = Annotated[str | None, _interface("rescue")]
RaidInterface = Annotated[str | None, _interface("raid")]
BiosInterface = Annotated[str | None, _interface("bios")]
FirmwareInterface = Annotated[str | None, _interface("firmware")]


def interfaces(**names: str | None) -> dict[str, str | None]:
    """``boot="pxe"`` -> ``{"boot_interface": "pxe"}``, one entry per interface kind."""
    return {f"{kind}_interface": name for kind, name in names.items()}


def parse_value(text: str) -> Any:
    """``623`` -> 623, ``true`` -> True, ``{"a": 1}`` -> a dict; text that is not JSON stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items: list[str] | None, option: str) -> dict[str, Any]:
    """``["k=v", ...]`` from a repeatable option -> ``{"k": parsed v}``."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"{item!r} is not KEY=VALUE; write it like {option} ipmi_address=192.0.2.10.",
                param_hint=option,
            )
        result[key] = parse_value(value)
    return result


def json_pointer(*parts: str) -> str:
    """An RFC 6901 JSON Pointer to ``parts``, each escaped so a key may hold "/" or "~"."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def create_body(top: Mapping[str, str | None], assignments: Mapping[str, list[str] | None]) -> Json:
    """The ``POST /v1/nodes`` body: the top-level fields given, and the dict fields filled."""
    body: Json = {field: value for field, value in top.items() if value is not None}
    for field, items in assignments.items():
        if items:
            body[field] = parse_assignments(items, DICT_FIELD_OPTIONS[field])
    return body


def set_patch(top: Mapping[str, str | None], assignments: Mapping[str, list[str] | None]) -> list[Json]:
    """``add`` operations (add replaces an existing member) for every field and key given."""
    patch: list[Json] = [
        {"op": "add", "path": json_pointer(field), "value": value} for field, value in top.items() if value is not None
    ]
    for field, items in assignments.items():
        for key, value in parse_assignments(items, DICT_FIELD_OPTIONS[field]).items():
            patch.append({"op": "add", "path": json_pointer(field, key), "value": value})
    return patch


def unset_patch(flags: Mapping[str, bool], keys: Mapping[str, list[str] | None]) -> list[Json]:
    """``remove`` operations for every top-level field flagged and every dict key given."""
    patch: list[Json] = [{"op": "remove", "path": json_pointer(field)} for field, wanted in flags.items() if wanted]
    for field, names in keys.items():
        patch.extend({"op": "remove", "path": json_pointer(field, name)} for name in names or [])
    return patch
