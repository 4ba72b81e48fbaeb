"""The composition root: builds the database, drivers, conductor and API from one ``Config``."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from ironworks.config import Config
from ironworks.db.engine import Database
from ironworks.db.secrets import SecretBox, load_or_create_key
from ironworks.drivers.registry import DriverFactory

LOG = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What a process runs: the shared pieces, built once."""

    config: Config
    db: Database
    drivers: DriverFactory


def setup_logging(level: str) -> None:
    """Log to stderr with timestamps; secrets never reach log records (see ironworks.db.secrets)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def build(config: Config, *, upgrade: bool = False) -> Runtime:
    """Open the database (migrating it when ``upgrade``), load the secret key, enable the drivers."""
    key = load_or_create_key(config.state_path, config.database.secret_key)
    db = Database(config.database_url, secrets=SecretBox(key))
    if upgrade:
        db.upgrade()
    else:
        db.check_schema()
    drivers = DriverFactory(config.conductor.enabled_hardware_types, config)
    return Runtime(config, db, drivers)


def make_conductor(rt: Runtime) -> Any:
    """A conductor service for ``rt`` (not started)."""
    from ironworks.conductor.service import ConductorService

    return ConductorService(rt.config, rt.db, rt.drivers)


def make_app(rt: Runtime) -> Any:
    """The ASGI app for ``rt``."""
    from ironworks.api.app import create_app

    return create_app(rt.config, rt.db, rt.drivers)


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
