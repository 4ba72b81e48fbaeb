"""The composition root: builds the database, drivers, conductor and API from one ``Config``."""

from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from ironworks.config import Config
from ironworks.db.engine import Database, DatabaseUnavailable
from ironworks.db.secrets import SecretBox, load_or_create_key
from ironworks.drivers.registry import DriverFactory

LOG = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What a process runs: the shared pieces, built once."""

    config: Config
    db: Database
    drivers: DriverFactory


def setup_logging(level: str, *, state_dir: str | None = None, name: str = "ironworks") -> None:
    """Log to stderr and, with ``state_dir``, to ``<state_dir>/logs/<name>.log`` (rotated, 5 x 10 MiB).

    Secrets never reach log records: drivers see them, messages name fields, not values.
    """
    from logging.handlers import RotatingFileHandler

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if state_dir:
        logs = os.path.join(state_dir, "logs")
        os.makedirs(logs, exist_ok=True)
        handlers.append(RotatingFileHandler(os.path.join(logs, f"{name}.log"), maxBytes=10 << 20, backupCount=5))
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        handlers=handlers,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def build(config: Config, *, upgrade: bool = False) -> Runtime:
    """Open the database (migrating it when ``upgrade``), load the secret key, enable the drivers."""
    key = load_or_create_key(config.state_path, config.database.secret_key)
    db = Database(config.database_url, secrets=SecretBox(key))
    if upgrade and db.current_revision() != db.head_revision():
        migrate_in_child(config)
    db.check_schema()
    drivers = DriverFactory(config.conductor.enabled_hardware_types, config)
    return Runtime(config, db, drivers)


def migrate_in_child(config: Config) -> None:
    """Run the schema migrations in a short-lived child process.

    Alembic and Mako cost a long-running server ~13 MiB that it never uses again; a child returns
    that memory to the system when it exits.
    """
    import subprocess

    # the URL may hold a database password: pass it in the environment, not on the command line
    env = {**os.environ, "IRONWORKS_MIGRATE_URL": config.database_url}
    done = subprocess.run(
        [sys.executable, "-m", "ironworks.db.migrate"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise DatabaseUnavailable(f"Migrating the database failed: {done.stderr.strip()[-2000:]}")


def make_conductor(rt: Runtime) -> Any:
    """A conductor service for ``rt`` (not started)."""
    from ironworks.conductor.service import ConductorService

    return ConductorService(rt.config, rt.db, rt.drivers)


def make_app(rt: Runtime, conductor: Any = None) -> Any:
    """The ASGI app for ``rt``; with ``conductor``, the app starts and stops it in its lifespan."""
    from ironworks.api.app import create_app

    if conductor is None:
        return create_app(rt.config, rt.db, rt.drivers)
    return create_app(rt.config, rt.db, rt.drivers, on_startup=conductor.start, on_shutdown=conductor.stop)


def start_dhcp_server(config: Config) -> Any:
    """Start and supervise dnsmasq when ``[dhcp] manage_dnsmasq`` is on (its ``stop()`` ends it); else None."""
    if not config.dhcp.manage_dnsmasq:
        return None
    from ironworks.netboot.dnsmasq_process import DnsmasqSupervisor

    supervisor = DnsmasqSupervisor(config)
    supervisor.start()
    return supervisor


@dataclass
class _ConductorAndDhcp:
    conductor: Any
    dhcp: Any

    def start(self) -> None:
        self.conductor.start()

    def stop(self) -> None:
        try:
            self.conductor.stop()
        finally:
            self.dhcp.stop()


def with_dhcp(conductor: Any, dhcp: Any) -> Any:
    """``conductor``, or a wrapper whose ``stop()`` also stops the supervised dnsmasq.

    uvicorn re-raises SIGTERM once its shutdown is done, so code after ``run_uvicorn`` never runs on
    SIGTERM: dnsmasq has to stop in the app's lifespan, with the conductor.
    """
    return conductor if dhcp is None else _ConductorAndDhcp(conductor, dhcp)


def freeze_heap() -> None:
    """Move everything allocated at start-up out of the garbage collector's view.

    About 130,000 objects from imports would otherwise be walked by every full collection (~40 ms
    each, which showed as the p99 of large listings); they live as long as the process anyway.
    """
    gc.collect()
    gc.freeze()


def run_uvicorn(app: Any, config: Config) -> None:
    """Serve ``app`` on the configured host and port until interrupted."""
    import uvicorn

    uvicorn.run(
        app,
        host=config.api.host,
        port=config.api.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
