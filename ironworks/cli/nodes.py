"""``ironworks node ...``: enroll, list, show, change and delete nodes; maintenance, validation, history.

State changes (``deploy``, ``clean``, ``power on`` ...) live in :mod:`ironworks.cli.node_states` and are
merged into :data:`node_app` here.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ironworks.cli.client import DEFAULT_URL, ClientError, ServerUnreachable
from ironworks.cli.connection import (
    CommandFailed,
    FormatOption,
    PasswordOption,
    UrlOption,
    UsernameOption,
    connect,
    describe,
)
from ironworks.cli.node_fields import (
    BiosInterface,
    BootInterface,
    ConsoleInterface,
    DeployInterface,
    DriverInfoKeys,
    DriverInfoOption,
    ExtraKeys,
    ExtraOption,
    FirmwareInterface,
    InspectInterface,
    InstanceInfoKeys,
    InstanceInfoOption,
    ManagementInterface,
    NameOption,
    PowerInterface,
    PropertyKeys,
    PropertyOption,
    RaidInterface,
    RescueInterface,
    ResourceClassOption,
    create_body,
    interfaces,
    set_patch,
    unset_patch,
)
from ironworks.cli.node_states import NodeArgument, states_app
from ironworks.cli.output import (
    Column,
    OutputFormat,
    print_error,
    print_json,
    print_list,
    print_note,
    print_resource,
)

node_app = typer.Typer(help="Manage bare-metal nodes.", no_args_is_help=True)
node_app.add_typer(states_app)
maintenance_app = typer.Typer(help="Put a node in or out of maintenance mode.", no_args_is_help=True)
node_app.add_typer(maintenance_app, name="maintenance")

LIST_COLUMNS: list[Column] = [
    ("uuid", "UUID"),
    ("name", "Name"),
    ("instance_uuid", "Instance UUID"),
    ("power_state", "Power State"),
    ("provision_state", "Provisioning State"),
    ("maintenance", "Maintenance"),
]
LONG_COLUMNS: list[Column] = [
    ("uuid", "UUID"),
    ("name", "Name"),
    ("driver", "Driver"),
    ("resource_class", "Resource Class"),
    ("power_state", "Power State"),
    ("provision_state", "Provisioning State"),
    ("target_provision_state", "Target Provisioning State"),
    ("maintenance", "Maintenance"),
    ("maintenance_reason", "Maintenance Reason"),
    ("last_error", "Last Error"),
]


@node_app.command("create")
def create(
    ctx: typer.Context,
    driver: Annotated[str, typer.Option("--driver", help="Hardware type, e.g. redfish, ipmi, fake-hardware.")],
    name: NameOption = None,
    resource_class: ResourceClassOption = None,
    driver_info: DriverInfoOption = None,
    prop: PropertyOption = None,
    instance_info: InstanceInfoOption = None,
    extra: ExtraOption = None,
    boot_interface: BootInterface = None,
    deploy_interface: DeployInterface = None,
    power_interface: PowerInterface = None,
    management_interface: ManagementInterface = None,
    inspect_interface: InspectInterface = None,
    console_interface: ConsoleInterface = None,
    rescue_interface: RescueInterface = None,
    raid_interface: RaidInterface = None,
    bios_interface: BiosInterface = None,
    firmware_interface: FirmwareInterface = None,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Enroll a node."""
    top = {"driver": driver, "name": name, "resource_class": resource_class} | interfaces(
        boot=boot_interface,
        deploy=deploy_interface,
        power=power_interface,
        management=management_interface,
        inspect=inspect_interface,
        console=console_interface,
        rescue=rescue_interface,
        raid=raid_interface,
        bios=bios_interface,
        firmware=firmware_interface,
    )
    assignments = {
        "driver_info": driver_info,
        "properties": prop,
        "instance_info": instance_info,
        "extra": extra,
    }
    body = create_body(top, assignments)
    with connect(ctx, url, username, password) as client:
        print_resource(client.create_node(body), fmt)


@node_app.command("list")
def list_nodes(
    ctx: typer.Context,
    provision_state: Annotated[str | None, typer.Option("--provision-state", show_default=False)] = None,
    maintenance: Annotated[
        bool | None,
        typer.Option("--maintenance/--no-maintenance", help="Only nodes in (or not in) maintenance."),
    ] = None,
    driver: Annotated[str | None, typer.Option("--driver", show_default=False)] = None,
    long: Annotated[bool, typer.Option("--long", help="Fetch every field (/v1/nodes/detail).")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many nodes (default: all).")] = None,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """List nodes."""
    with connect(ctx, url, username, password) as client:
        nodes = client.list_nodes(
            detail=long, limit=limit, provision_state=provision_state, maintenance=maintenance, driver=driver
        )
    print_list(nodes, LONG_COLUMNS if long else LIST_COLUMNS, fmt)


@node_app.command("show")
def show(
    ctx: typer.Context,
    node: NodeArgument,
    fields: Annotated[
        str | None, typer.Option("--fields", help="Only these fields, comma-separated.", show_default=False)
    ] = None,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Show a node."""
    wanted = [field.strip() for field in (fields or "").split(",") if field.strip()]
    with connect(ctx, url, username, password) as client:
        print_resource(client.get_node(node, fields=wanted), fmt)


@node_app.command("set")
def set_fields(
    ctx: typer.Context,
    node: NodeArgument,
    name: NameOption = None,
    driver: Annotated[str | None, typer.Option("--driver", show_default=False)] = None,
    resource_class: ResourceClassOption = None,
    driver_info: DriverInfoOption = None,
    prop: PropertyOption = None,
    instance_info: InstanceInfoOption = None,
    extra: ExtraOption = None,
    boot_interface: BootInterface = None,
    deploy_interface: DeployInterface = None,
    power_interface: PowerInterface = None,
    management_interface: ManagementInterface = None,
    inspect_interface: InspectInterface = None,
    console_interface: ConsoleInterface = None,
    rescue_interface: RescueInterface = None,
    raid_interface: RaidInterface = None,
    bios_interface: BiosInterface = None,
    firmware_interface: FirmwareInterface = None,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Change fields of a node (a JSON Patch of "add" operations)."""
    top = {"name": name, "driver": driver, "resource_class": resource_class} | interfaces(
        boot=boot_interface,
        deploy=deploy_interface,
        power=power_interface,
        management=management_interface,
        inspect=inspect_interface,
        console=console_interface,
        rescue=rescue_interface,
        raid=raid_interface,
        bios=bios_interface,
        firmware=firmware_interface,
    )
    assignments = {
        "driver_info": driver_info,
        "properties": prop,
        "instance_info": instance_info,
        "extra": extra,
    }
    patch = set_patch(top, assignments)
    if not patch:
        raise typer.BadParameter("nothing to set; pass --name, --driver-info KEY=VALUE or another field option.")
    with connect(ctx, url, username, password) as client:
        print_resource(client.update_node(node, patch), fmt)


@node_app.command("unset")
def unset_fields(
    ctx: typer.Context,
    node: NodeArgument,
    name: Annotated[bool, typer.Option("--name", help="Remove the node's name.")] = False,
    resource_class: Annotated[bool, typer.Option("--resource-class", help="Remove the resource class.")] = False,
    driver_info: DriverInfoKeys = None,
    prop: PropertyKeys = None,
    instance_info: InstanceInfoKeys = None,
    extra: ExtraKeys = None,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Remove fields of a node (a JSON Patch of "remove" operations)."""
    keys = {"driver_info": driver_info, "properties": prop, "instance_info": instance_info, "extra": extra}
    patch = unset_patch({"name": name, "resource_class": resource_class}, keys)
    if not patch:
        raise typer.BadParameter("nothing to unset; pass --name, --driver-info KEY or another field option.")
    with connect(ctx, url, username, password) as client:
        print_resource(client.update_node(node, patch), fmt)


@node_app.command("delete")
def delete(
    ctx: typer.Context,
    nodes: Annotated[list[str], typer.Argument(help="Node UUIDs or names.", show_default=False)],
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
) -> None:
    """Delete nodes; carries on past failures and exits non-zero if any."""
    failed = 0
    with connect(ctx, url, username, password) as client:
        for node in nodes:
            try:
                client.delete_node(node)
            except ServerUnreachable:
                raise
            except ClientError as exc:
                print_error(f"Node {node} was not deleted: {describe(exc)}")
                failed += 1
            else:
                print_note(f"Deleted node {node}.")
        if failed:
            raise CommandFailed(f"{failed} of {len(nodes)} nodes were not deleted; see the errors above.")


@maintenance_app.command("set")
def maintenance_set(
    ctx: typer.Context,
    node: NodeArgument,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for other operators.")] = None,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
) -> None:
    """Put a node in maintenance mode: the conductor leaves it alone."""
    with connect(ctx, url, username, password) as client:
        client.set_maintenance(node, reason=reason)
    print_note(f"Node {node} is in maintenance mode.")


@maintenance_app.command("unset")
def maintenance_unset(
    ctx: typer.Context,
    node: NodeArgument,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
) -> None:
    """Take a node out of maintenance mode."""
    with connect(ctx, url, username, password) as client:
        client.clear_maintenance(node)
    print_note(f"Node {node} is out of maintenance mode.")


@node_app.command("validate")
def validate(
    ctx: typer.Context,
    node: NodeArgument,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Check that each of a node's interfaces has what it needs."""
    with connect(ctx, url, username, password) as client:
        results = client.validate_node(node)
    if fmt is OutputFormat.JSON:
        print_json(results)
        return
    rows = [
        {"interface": kind, "result": r.get("result"), "reason": r.get("reason")}
        for kind, r in sorted(results.items())
        if isinstance(r, dict)
    ]
    print_list(rows, [("interface", "Interface"), ("result", "Result"), ("reason", "Reason")], fmt)


@node_app.command("history")
def history(
    ctx: typer.Context,
    node: NodeArgument,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Show a node's history: state changes, steps run, errors."""
    with connect(ctx, url, username, password) as client:
        events = client.node_history(node)
    if fmt is OutputFormat.JSON:
        print_json(events)
        return
    columns: list[Column] = [("created_at", "Time"), ("severity", "Severity"), ("event_type", "Type")]
    columns += [("event", "Event")]
    # Ironworks records the step and its duration in "data"; Ironic does not, so show them when present.
    rows = [event | _step_fields(event.get("data")) for event in events]
    if any("step" in row for row in rows):
        columns.append(("step", "Step"))
    if any("duration" in row for row in rows):
        columns.append(("duration", "Duration"))
    columns += [("conductor", "Conductor"), ("user", "User")]
    print_list(rows, columns, fmt)


def _step_fields(data: object) -> dict[str, str]:
    if not isinstance(data, dict):
        return {}
    fields: dict[str, str] = {}
    step = data.get("step")
    if isinstance(step, dict) and step.get("step"):
        fields["step"] = f"{step['interface']}.{step['step']}" if step.get("interface") else str(step["step"])
    elif step:
        fields["step"] = str(step)
    if isinstance(data.get("duration_s"), int | float):
        fields["duration"] = f"{data['duration_s']:.1f} s"
    return fields
