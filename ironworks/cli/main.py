"""The ``ironworks`` command: servers (``serve``, ``api``, ``conductor``), ``db``, and operator commands."""

from __future__ import annotations

import getpass
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from ironworks.cli.ramdisk import ramdisk_app

app = typer.Typer(no_args_is_help=True, help="Ironworks: bare-metal provisioning and fleet maintenance.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema and keys.")
app.add_typer(db_app, name="db")
app.add_typer(ramdisk_app, name="ramdisk")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML configuration file.", envvar="IRONWORKS_CONFIG")
]
StateOpt = Annotated[
    str | None, typer.Option("--state-dir", help="State directory (SQLite, keys). Env: IRONWORKS_STATE_DIR.")
]
HostOpt = Annotated[str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")]
PortOpt = Annotated[int | None, typer.Option("--port", help="Port to listen on (default 6385).")]


def _load(config: Path | None, state_dir: str | None, host: str | None = None, port: int | None = None) -> Any:
    from ironworks.config import load_config
    from ironworks.errors import ConfigError

    try:
        cfg = load_config(
            config,
            overrides={
                "": {"state_dir": state_dir} if state_dir else {},
                "api": {"host": host, "port": port},
            },
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return cfg


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


@app.command()
def serve(config: ConfigOpt = None, state_dir: StateOpt = None, host: HostOpt = None, port: PortOpt = None) -> None:
    """Run the API and a conductor in one process (SQLite by default; migrates the database)."""
    from ironworks import server
    from ironworks.api.app import check_listen_policy
    from ironworks.errors import IronworksError

    cfg = _load(config, state_dir, host, port)
    server.setup_logging(cfg.log_level, state_dir=cfg.state_dir, name="serve")
    try:
        check_listen_policy(cfg)
        rt = server.build(cfg, upgrade=True)
        conductor = server.make_conductor(rt)
        dhcp = server.start_dhcp_server(cfg)  # [dhcp] manage_dnsmasq: dnsmasq runs while serve does
        # the app's lifespan starts and stops the conductor (and then stops dnsmasq)
        app_ = server.make_app(rt, server.with_dhcp(conductor, dhcp))
    except IronworksError as exc:
        _fail(exc)
        return
    typer.echo(
        f"Ironworks on http://{cfg.api.host}:{cfg.api.port} (state: {cfg.state_dir}, database: {rt.db.safe_url}, "
        f"auth: {cfg.api.auth_strategy}, drivers: {', '.join(rt.drivers.enabled)})",
        err=True,
    )
    server.freeze_heap()
    try:
        server.run_uvicorn(app_, cfg)
    finally:
        if dhcp is not None:
            dhcp.stop()


@app.command()
def api(config: ConfigOpt = None, state_dir: StateOpt = None, host: HostOpt = None, port: PortOpt = None) -> None:
    """Run only the API (conductors run apart, on the same database)."""
    from ironworks import server
    from ironworks.api.app import check_listen_policy
    from ironworks.errors import IronworksError

    cfg = _load(config, state_dir, host, port)
    server.setup_logging(cfg.log_level, state_dir=cfg.state_dir, name="api")
    try:
        check_listen_policy(cfg)
        rt = server.build(cfg)
        app_ = server.make_app(rt)
    except IronworksError as exc:
        _fail(exc)
        return
    server.freeze_heap()
    server.run_uvicorn(app_, cfg)


@app.command()
def conductor(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Run only a conductor (needs `ironworks db upgrade` first)."""
    from ironworks import server
    from ironworks.errors import IronworksError

    cfg = _load(config, state_dir)
    server.setup_logging(cfg.log_level, state_dir=cfg.state_dir, name="conductor")
    try:
        rt = server.build(cfg)
        svc = server.make_conductor(rt)
        dhcp = server.start_dhcp_server(cfg)  # [dhcp] manage_dnsmasq: dnsmasq runs while the conductor does
    except IronworksError as exc:
        _fail(exc)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    svc.start()
    stop.wait()
    svc.stop()
    if dhcp is not None:
        dhcp.stop()


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def agent(ctx: typer.Context) -> None:
    """Run the utility-ramdisk agent (its flags: ironworks agent --help)."""
    from ironworks.agent.main import main as agent_main

    raise typer.Exit(agent_main(ctx.args))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Create or migrate the database schema to this version."""
    from ironworks import server
    from ironworks.errors import IronworksError

    cfg = _load(config, state_dir)
    try:
        rt = server.build(cfg, upgrade=True)
    except IronworksError as exc:
        _fail(exc)
        return
    typer.echo(f"database {rt.db.safe_url} is at revision {rt.db.current_revision()}")


@db_app.command("genkey")
def db_genkey() -> None:
    """Print a new secret key for [database] secret_key."""
    from ironworks.db.secrets import SecretBox

    typer.echo(SecretBox.generate_key())


@app.command()
def htpasswd(
    user: str,
    file: Annotated[Path, typer.Option("--file", "-f", help="htpasswd file to add the user to.")],
) -> None:
    """Add or replace a user in an htpasswd file (bcrypt), reading the password from the terminal or stdin."""
    from ironworks.api.auth import make_htpasswd_line

    password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        typer.echo("error: empty password", err=True)
        raise typer.Exit(2)
    lines = [ln for ln in (file.read_text().splitlines() if file.exists() else []) if not ln.startswith(f"{user}:")]
    lines.append(make_htpasswd_line(user, password))
    file.write_text("\n".join(lines) + "\n")
    file.chmod(0o600)
    typer.echo(f"user {user} written to {file}")


def _mount_operator_commands() -> None:
    try:
        from ironworks.cli.nodes import node_app
        from ironworks.cli.ports import port_app
    except ImportError:  # pragma: no cover - during development only
        return
    app.add_typer(node_app, name="node", help="Manage nodes.")
    app.add_typer(port_app, name="port", help="Manage ports.")


SERVER_COMMANDS = frozenset({"serve", "api", "conductor", "db", "htpasswd", "agent"})


def main() -> None:
    """Entry point of the ``ironworks`` command."""
    # a server process does not need the operator commands (and their HTTP client) in memory
    if len(sys.argv) < 2 or sys.argv[1] not in SERVER_COMMANDS:
        _mount_operator_commands()
    app()
