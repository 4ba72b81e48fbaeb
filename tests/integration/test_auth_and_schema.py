"""HTTP basic authentication, the listen policy, and the schema migrations on both stores."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ironworks.api.app import check_listen_policy
from ironworks.api.auth import make_htpasswd_line
from ironworks.db.engine import SCHEMA_HEAD
from ironworks.db.models import Base
from ironworks.errors import ConfigError
from tests.conftest import Harness, make_config


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def basic_harness(tmp_path: Path) -> Harness:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("alice", "wonderland") + "\n")
    return Harness(make_config(tmp_path, api={"auth_strategy": "http_basic", "htpasswd": str(htpasswd)}))


def test_http_basic(basic_harness: Harness) -> None:
    c = basic_harness.client
    try:
        assert c.get("/").status_code == 200  # discovery stays public, as in Ironic
        r = c.get("/v1/nodes")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        wrong_pw = c.get("/v1/nodes", headers=basic("alice", "nope"))
        no_user = c.get("/v1/nodes", headers=basic("mallory", "nope"))
        assert wrong_pw.status_code == no_user.status_code == 401
        assert wrong_pw.json() == no_user.json()  # never says whether the user exists
        ok = c.post("/v1/nodes", json={"driver": "fake-hardware"}, headers=basic("alice", "wonderland"))
        assert ok.status_code == 201
        events = c.get(f"/v1/nodes/{ok.json()['uuid']}/history", headers=basic("alice", "wonderland")).json()
        assert events["history"][0]["user"] == "alice"
    finally:
        basic_harness.close()


def test_bad_htpasswd_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "htpasswd"
    bad.write_text("alice:plaintext\n")
    with pytest.raises(ConfigError, match="line 1"):
        Harness(make_config(tmp_path, api={"auth_strategy": "http_basic", "htpasswd": str(bad)}))


def test_listen_policy(tmp_path: Path) -> None:
    check_listen_policy(make_config(tmp_path, api={"host": "127.0.0.1"}))
    with pytest.raises(ConfigError, match="without authentication"):
        check_listen_policy(make_config(tmp_path, api={"host": "0.0.0.0"}))
    check_listen_policy(make_config(tmp_path, api={"host": "0.0.0.0", "allow_insecure_noauth": True}))
    check_listen_policy(make_config(tmp_path, api={"host": "0.0.0.0", "auth_strategy": "http_basic"}))


def test_serve_refuses_open_noauth_listen(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("ironworks")
    r = subprocess.run(
        [str(exe), "serve", "--host", "0.0.0.0", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "without authentication" in r.stderr


def test_migrations_match_models(harness: Harness) -> None:
    """After `db upgrade` the schema is exactly what the models declare, on SQLite and PostgreSQL."""
    db = harness.rt.db
    assert db.current_revision() == db.head_revision()
    with db.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_db_upgrade_command_and_schema_check(tmp_path: Path, db_url: str) -> None:
    exe = Path(sys.executable).with_name("ironworks")
    env = {"IRONWORKS_DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"} if db_url else {"PATH": "/usr/bin:/bin"}
    # a conductor refuses an empty database and says what to run
    r = subprocess.run(
        [str(exe), "conductor", "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode != 0 and "ironworks db upgrade" in r.stderr
    r = subprocess.run(
        [str(exe), "db", "upgrade", "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0, r.stderr
    assert f"revision {SCHEMA_HEAD}" in r.stdout
