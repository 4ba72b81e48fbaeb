"""``ironworks port ...``: the network ports (MAC addresses) of nodes, used to recognise them on boot."""

from __future__ import annotations

from typing import Annotated

import typer

from ironworks.cli.client import DEFAULT_URL, ClientError, IronicClient, ServerUnreachable, is_uuid
from ironworks.cli.connection import (
    CommandFailed,
    FormatOption,
    PasswordOption,
    UrlOption,
    UsernameOption,
    connect,
    describe,
)
from ironworks.cli.output import Column, OutputFormat, print_error, print_list, print_note, print_resource

port_app = typer.Typer(help="Manage the network ports (MAC addresses) of nodes.", no_args_is_help=True)

PortArgument = Annotated[str, typer.Argument(help="Port UUID or MAC address.", show_default=False)]

LIST_COLUMNS: list[Column] = [("uuid", "UUID"), ("address", "Address")]
LONG_COLUMNS: list[Column] = [
    ("uuid", "UUID"),
    ("address", "Address"),
    ("node_uuid", "Node UUID"),
    ("pxe_enabled", "PXE Enabled"),
    ("physical_network", "Physical Network"),
    ("local_link_connection", "Local Link Connection"),
]


def _node_uuid(client: IronicClient, node: str) -> str:
    """The node's UUID; a name is looked up, since ports refer to nodes by UUID only."""
    if is_uuid(node):
        return node
    return str(client.get_node(node, fields=["uuid"])["uuid"])


@port_app.command("create")
def create(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="MAC address, e.g. 52:54:00:12:34:56.", show_default=False)],
    node: Annotated[str, typer.Option("--node", help="UUID or name of the node the port belongs to.")],
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Create a port on a node."""
    with connect(ctx, url, username, password) as client:
        print_resource(client.create_port(address, _node_uuid(client, node)), fmt)


@port_app.command("list")
def list_ports(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Option("--node", help="Only the ports of this node (UUID or name).", show_default=False),
    ] = None,
    long: Annotated[bool, typer.Option("--long", help="Fetch every field (/v1/ports/detail).")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many ports (default: all).")] = None,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """List ports."""
    with connect(ctx, url, username, password) as client:
        ports = client.list_ports(node=node, detail=long, limit=limit)
    print_list(ports, LONG_COLUMNS if long else LIST_COLUMNS, fmt)


@port_app.command("show")
def show(
    ctx: typer.Context,
    port: PortArgument,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Show a port."""
    with connect(ctx, url, username, password) as client:
        print_resource(client.get_port(port), fmt)


@port_app.command("delete")
def delete(
    ctx: typer.Context,
    ports: Annotated[list[str], typer.Argument(help="Port UUIDs or MAC addresses.", show_default=False)],
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
) -> None:
    """Delete ports; carries on past failures and exits non-zero if any."""
    failed = 0
    with connect(ctx, url, username, password) as client:
        for port in ports:
            try:
                client.delete_port(port if is_uuid(port) else str(client.get_port(port)["uuid"]))
            except ServerUnreachable:
                raise
            except ClientError as exc:
                print_error(f"Port {port} was not deleted: {describe(exc)}")
                failed += 1
            else:
                print_note(f"Deleted port {port}.")
        if failed:
            raise CommandFailed(f"{failed} of {len(ports)} ports were not deleted; see the errors above.")
