"""Shared fixtures: configurations, databases (SQLite file and a private PostgreSQL database), and an
in-process harness of API + conductor whose conductor runs only when the test drains its queue."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from ironworks import server
from ironworks.config import Config, load_config

PG_ADMIN_URL = os.environ.get("IRONWORKS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
API_HEADERS = {"X-OpenStack-Ironic-API-Version": "1.87"}


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"ironworks_t_{uuid.uuid4().hex[:12]}"
    admin = _psycopg_url(PG_ADMIN_URL)
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:  # a failure, not a skip: CI must have PostgreSQL
        pytest.fail(f"PostgreSQL at {admin} is not reachable ({exc}); the DB tests need it (./dev.sh test starts it)")
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_config(tmp_path: Path, *, db_url: str = "", **sections: dict[str, Any]) -> Config:
    """A Config with its state under ``tmp_path`` and quiet periodic tasks."""
    overrides: dict[str, dict[str, Any]] = {
        "": {"state_dir": str(tmp_path / "state")},
        "conductor": {
            "hostname": "conductor-test",
            "power_sync_interval": 3600,
            "timeout_check_interval": 3600,
            "heartbeat_interval": 3600,
        },
        "database": {"url": db_url},
    }
    for name, vals in sections.items():
        overrides.setdefault(name, {}).update(vals)
    return load_config(None, environ={}, overrides=overrides)


class Harness:
    """API (TestClient) + a registered conductor that runs queued actions when ``drain()`` is called."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rt = server.build(config, upgrade=True)
        self.conductor = server.make_conductor(self.rt)
        self.conductor._register()
        self.app = server.make_app(self.rt)
        self.client = TestClient(self.app, raise_server_exceptions=False, headers=API_HEADERS)

    def drain(self) -> None:
        """Run every due action to completion."""
        self.conductor.drain(timeout=30)

    @contextlib.contextmanager
    def conductor_running(self) -> Iterator[None]:
        """Run the conductor in a thread while the API waits for synchronous answers (boot device)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(0.01):
                self.conductor.run_pending()

        t = threading.Thread(target=loop)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    def create_node(self, **body: Any) -> dict[str, Any]:
        """POST /v1/nodes (fake-hardware unless told otherwise) and return the node."""
        body.setdefault("driver", "fake-hardware")
        r = self.client.post("/v1/nodes", json=body)
        assert r.status_code == 201, r.text
        node: dict[str, Any] = r.json()
        return node

    def provision(self, node: str, target: str, expect: int = 202, **body: Any) -> dict[str, Any]:
        """PUT /states/provision, drain, return the node."""
        r = self.client.put(f"/v1/nodes/{node}/states/provision", json={"target": target, **body})
        assert r.status_code == expect, r.text
        self.drain()
        return self.node(node)

    def node(self, node: str) -> dict[str, Any]:
        """GET /v1/nodes/{node}."""
        r = self.client.get(f"/v1/nodes/{node}")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    def available_node(self, **body: Any) -> dict[str, Any]:
        """A node taken through manage and provide."""
        n = self.create_node(**body)
        self.provision(n["uuid"], "manage")
        return self.provision(n["uuid"], "provide")

    def close(self) -> None:
        """Stop the pool and close connections."""
        self.conductor.pool.shutdown(wait=True)
        self.client.close()
        self.rt.db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each DB test runs on both stores: the embedded SQLite file and PostgreSQL."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def harness(tmp_path: Path, db_url: str) -> Iterator[Harness]:
    """An API + conductor harness on SQLite and on PostgreSQL."""
    h = Harness(make_config(tmp_path, db_url=db_url))
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def sqlite_harness(tmp_path: Path) -> Iterator[Harness]:
    """An API + conductor harness on SQLite only (tests of API logic that does not vary by store)."""
    h = Harness(make_config(tmp_path))
    try:
        yield h
    finally:
        h.close()
