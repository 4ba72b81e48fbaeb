"""``ironworks node <verb>`` and ``ironworks node power ...``: ask a node to change state, optionally wait.

Provision verbs map onto ``PUT /v1/nodes/{node}/states/provision`` targets (``deploy`` is
``active``, ``undeploy`` is ``deleted``), power verbs onto ``PUT /v1/nodes/{node}/states/power``.
The commands are merged into ``node_app`` by :mod:`ironworks.cli.nodes`.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Annotated

import typer

from ironworks.cli.client import DEFAULT_URL, Json
from ironworks.cli.connection import (
    FormatOption,
    PasswordOption,
    UrlOption,
    UsernameOption,
    connect,
    seams_of,
)
from ironworks.cli.output import OutputFormat, print_note, print_resource
from ironworks.cli.waiting import power_watch, provision_watch, wait_for

states_app = typer.Typer()
power_app = typer.Typer(help="Power a node on, off, or reboot it.", no_args_is_help=True)
states_app.add_typer(power_app, name="power")

DEFAULT_WAIT_TIMEOUT = 1800

#: CLI verb -> the ``target`` of ``PUT /v1/nodes/{node}/states/provision``.
TARGETS = {
    "manage": "manage",
    "provide": "provide",
    "inspect": "inspect",
    "deploy": "active",
    "rebuild": "rebuild",
    "undeploy": "deleted",
    "clean": "clean",
    "service": "service",
    "rescue": "rescue",
    "unrescue": "unrescue",
    "abort": "abort",
}

NodeArgument = Annotated[str, typer.Argument(help="Node UUID or name.", show_default=False)]
WaitOption = Annotated[bool, typer.Option("--wait", help="Wait until the node settles, showing progress on stderr.")]
TimeoutOption = Annotated[
    int,
    typer.Option(
        "--timeout",
        min=0,
        help="With --wait: stop waiting after this many seconds (the operation goes on on the server).",
    ),
]
ConfigDriveOption = Annotated[
    str | None,
    typer.Option(
        "--config-drive",
        help="A JSON object (inline or in a file) to build the config drive from, a config drive "
        "file (ISO), or a gzipped, base64-encoded config drive or its URL.",
        show_default=False,
    ),
]
DeployStepsOption = Annotated[
    str | None,
    typer.Option("--deploy-steps", help="Extra deploy steps: a JSON list, or @FILE.", show_default=False),
]


def parse_steps(value: str, option: str) -> list[Json]:
    """A JSON list of step objects, given inline or as ``@FILE``."""
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {value[1:]!r}: {exc.strerror}.", param_hint=option) from exc
    example = '\'[{"interface": "deploy", "step": "erase_devices_metadata"}]\''
    try:
        steps = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"not valid JSON ({exc}). Pass a JSON list such as {example}, or @FILE.", param_hint=option
        ) from exc
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise typer.BadParameter(f"must be a JSON list of step objects, such as {example}.", param_hint=option)
    return steps


def parse_config_drive(value: str) -> str | Json:
    """What ``configdrive`` carries: a dict for a JSON object, else the (encoded) config drive."""
    path = _existing_path(value)
    if path is not None and path.is_dir():
        raise typer.BadParameter(
            f"{value!r} is a directory; building a config drive from one is not supported. Pass a JSON "
            "file with meta_data, user_data and network_data instead.",
            param_hint="--config-drive",
        )
    if path is None:
        data = value.encode()
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {value!r}: {exc.strerror}.", param_hint="--config-drive") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # A raw image (ISO 9660 or VFAT): the API wants it gzipped and base64-encoded.
        return base64.b64encode(gzip.compress(data)).decode("ascii")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()
    return parsed if isinstance(parsed, dict) else text.strip()


def _existing_path(value: str) -> Path | None:
    try:
        path = Path(value)
        return path if path.exists() else None
    except (OSError, ValueError):  # a base64 config drive is far longer than a file name may be
        return None


def _provision(
    ctx: typer.Context,
    verb: str,
    node: str,
    *,
    wait: bool,
    timeout: int,
    conn: tuple[str, str | None, str | None],
    fmt: OutputFormat,
    configdrive: str | Json | None = None,
    clean_steps: list[Json] | None = None,
    deploy_steps: list[Json] | None = None,
    service_steps: list[Json] | None = None,
    rescue_password: str | None = None,
) -> None:
    with connect(ctx, *conn) as client:
        client.set_provision_state(
            node,
            TARGETS[verb],
            configdrive=configdrive,
            clean_steps=clean_steps,
            deploy_steps=deploy_steps,
            service_steps=service_steps,
            rescue_password=rescue_password,
        )
        if not wait:
            print_note(f"Node {node}: {verb} accepted. Follow it with `ironworks node show {node}`.")
            return
        status = wait_for(client, node, provision_watch(verb, node), timeout=timeout, seams=seams_of(ctx))
        print_resource(status, fmt)


def _add_simple_verb(verb: str, help_text: str) -> None:
    def command(
        ctx: typer.Context,
        node: NodeArgument,
        wait: WaitOption = False,
        timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
        url: UrlOption = DEFAULT_URL,
        username: UsernameOption = None,
        password: PasswordOption = None,
        fmt: FormatOption = OutputFormat.TABLE,
    ) -> None:
        _provision(ctx, verb, node, wait=wait, timeout=timeout, conn=(url, username, password), fmt=fmt)

    states_app.command(verb, help=help_text)(command)


def _add_deploy_verb(verb: str, help_text: str) -> None:
    def command(
        ctx: typer.Context,
        node: NodeArgument,
        config_drive: ConfigDriveOption = None,
        deploy_steps: DeployStepsOption = None,
        wait: WaitOption = False,
        timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
        url: UrlOption = DEFAULT_URL,
        username: UsernameOption = None,
        password: PasswordOption = None,
        fmt: FormatOption = OutputFormat.TABLE,
    ) -> None:
        _provision(
            ctx,
            verb,
            node,
            wait=wait,
            timeout=timeout,
            conn=(url, username, password),
            fmt=fmt,
            configdrive=parse_config_drive(config_drive) if config_drive is not None else None,
            deploy_steps=parse_steps(deploy_steps, "--deploy-steps") if deploy_steps is not None else None,
        )

    states_app.command(verb, help=help_text)(command)


def clean(
    ctx: typer.Context,
    node: NodeArgument,
    clean_steps: Annotated[str, typer.Option("--clean-steps", help="The clean steps to run: a JSON list, or @FILE.")],
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Run clean steps on a manageable node (manual cleaning)."""
    steps = parse_steps(clean_steps, "--clean-steps")
    conn = (url, username, password)
    _provision(ctx, "clean", node, wait=wait, timeout=timeout, conn=conn, fmt=fmt, clean_steps=steps)


def service(
    ctx: typer.Context,
    node: NodeArgument,
    service_steps: Annotated[
        str, typer.Option("--service-steps", help="The service steps to run: a JSON list, or @FILE.")
    ],
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Run service steps on an active node (firmware updates and the like)."""
    steps = parse_steps(service_steps, "--service-steps")
    conn = (url, username, password)
    _provision(ctx, "service", node, wait=wait, timeout=timeout, conn=conn, fmt=fmt, service_steps=steps)


def rescue(
    ctx: typer.Context,
    node: NodeArgument,
    rescue_password: Annotated[
        str, typer.Option("--rescue-password", help="Password to log in to the rescue ramdisk.")
    ],
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Boot an active node into the rescue ramdisk."""
    conn = (url, username, password)
    _provision(ctx, "rescue", node, wait=wait, timeout=timeout, conn=conn, fmt=fmt, rescue_password=rescue_password)


# Registered in the order of a node's life, which is the order `--help` lists them in.
_add_simple_verb("manage", "Verify the node's BMC and make it manageable.")
_add_simple_verb("inspect", "Inspect a manageable node's hardware.")
states_app.command("clean")(clean)
_add_simple_verb("provide", "Clean a manageable node and make it available for deployment.")
_add_deploy_verb("deploy", "Deploy an instance on an available node.")
_add_deploy_verb("rebuild", "Redeploy the instance on an active node.")
states_app.command("service")(service)
states_app.command("rescue")(rescue)
_add_simple_verb("unrescue", "Leave rescue mode: boot the node back into its instance.")
_add_simple_verb("undeploy", "Tear down the instance; the node is cleaned and becomes available.")
_add_simple_verb("abort", "Abort the node's current operation (cleaning, inspection, rescue, a held step).")


# -- power ------------------------------------------------------------------------------------------

SoftOption = Annotated[bool, typer.Option("--soft", help="Ask the operating system to shut down (ACPI).")]
PowerTimeoutOption = Annotated[
    int | None,
    typer.Option("--power-timeout", min=1, help="Seconds the BMC may take for the change.", show_default=False),
]


def _power(
    ctx: typer.Context,
    node: str,
    target: str,
    expected: str,
    *,
    power_timeout: int | None,
    wait: bool,
    timeout: int,
    conn: tuple[str, str | None, str | None],
    fmt: OutputFormat,
) -> None:
    with connect(ctx, *conn) as client:
        client.set_power_state(node, target, timeout=power_timeout)
        if not wait:
            print_note(f"Node {node}: {target} accepted. Follow it with `ironworks node show {node}`.")
            return
        status = wait_for(client, node, power_watch(expected, node), timeout=timeout, seams=seams_of(ctx))
        print_resource(status, fmt)


@power_app.command("on")
def power_on(
    ctx: typer.Context,
    node: NodeArgument,
    power_timeout: PowerTimeoutOption = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
    url: UrlOption = DEFAULT_URL,
    username: UsernameOption = None,
    password: PasswordOption = None,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """Power a node on."""
    conn = (url, username, password)
    _power(
        ctx,
        node,
        "power on",
        "power on",
        power_timeout=power_timeout,
        wait=wait,
        timeout=timeout,
        conn=conn,
        fmt=fmt,
    )


def _add_power_verb(name: str, help_text: str, *, hard: str, soft: str, expected: str) -> None:
    def command(
        ctx: typer.Context,
        node: NodeArgument,
        use_soft: SoftOption = False,
        power_timeout: PowerTimeoutOption = None,
        wait: WaitOption = False,
        timeout: TimeoutOption = DEFAULT_WAIT_TIMEOUT,
        url: UrlOption = DEFAULT_URL,
        username: UsernameOption = None,
        password: PasswordOption = None,
        fmt: FormatOption = OutputFormat.TABLE,
    ) -> None:
        target = soft if use_soft else hard
        conn = (url, username, password)
        _power(
            ctx,
            node,
            target,
            expected,
            power_timeout=power_timeout,
            wait=wait,
            timeout=timeout,
            conn=conn,
            fmt=fmt,
        )

    power_app.command(name, help=help_text)(command)


_add_power_verb(
    "off",
    "Power a node off, hard or (--soft) through the operating system.",
    hard="power off",
    soft="soft power off",
    expected="power off",
)
_add_power_verb(
    "reboot",
    "Reboot a node, hard or (--soft) through the operating system.",
    hard="rebooting",
    soft="soft rebooting",
    expected="power on",
)
