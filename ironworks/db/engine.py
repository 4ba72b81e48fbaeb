"""The database handle: engines, sessions, schema migrations and wake-ups.

SQLite is the embedded default. It allows one writer at a time, so write transactions start with
``BEGIN IMMEDIATE`` (a deferred transaction that later upgrades to a write can fail at once with
"database is locked" instead of waiting) and, inside one process, queue on a lock rather than in
SQLite's sleep-and-retry busy handler, which backs off in steps up to 100 ms. PostgreSQL is the
scale-out store: plain transactions, row locks, ``SKIP LOCKED`` claims and ``NOTIFY`` wake-ups.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ironworks.db.secrets import SecretBox
from ironworks.errors import ConfigError, ServerError

LOG = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WAKE_CHANNEL = "ironworks_actions"
#: The newest migration in ``migrations/versions`` (a unit test keeps the two in step). Knowing it
#: without Alembic keeps Alembic and Mako (~13 MiB) out of a server whose schema is current.
SCHEMA_HEAD = "0002"


class DatabaseUnavailable(ServerError):
    """The database cannot be reached or is not at the current schema."""

    reason = "database_unavailable"


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


#: JSON columns are (de)serialized with orjson: listing 1,000 nodes parses ~8,000 JSON values.
JSON_ARGS: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **JSON_ARGS)

    @event.listens_for(eng, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(eng, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return eng


class Database:
    """Engines and sessions for one database URL, plus the secret box and in-process wake-ups."""

    def __init__(self, url: str, *, secrets: SecretBox) -> None:
        self.url = url
        self.secrets = secrets
        self.is_sqlite = url.startswith("sqlite")
        self.is_postgres = url.startswith("postgresql")
        if not (self.is_sqlite or self.is_postgres):
            raise ConfigError(
                f"Unsupported database URL scheme in {url.split(':', 1)[0]!r}: use sqlite:///PATH "
                "or postgresql+psycopg://USER@HOST/DB."
            )
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.write_engine = _sqlite_engine(url, immediate=True)
            self.read_engine = _sqlite_engine(url, immediate=False)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
                self.url = url
            self.write_engine = create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True, **JSON_ARGS)
            self.read_engine = self.write_engine
        self._write_sessions = sessionmaker(self.write_engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        # SQLite: one writer at a time; queue in-process instead of in SQLite's busy handler
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        )
        self._wake_listeners: list[Callable[[], None]] = []

    # ---- sessions -------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A read-write transaction, committed on success and rolled back on any error."""
        with self._write_lock, self._write_sessions() as session:
            try:
                with session.begin():
                    yield session
            except OperationalError as exc:
                raise DatabaseUnavailable(f"Database error: {exc.orig}. Check the database.") from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (a consistent snapshot)."""
        with self._read_sessions() as session:
            try:
                with session.begin():
                    yield session
            except OperationalError as exc:
                raise DatabaseUnavailable(f"Database error: {exc.orig}. Check the database.") from exc

    # ---- wake-ups ------------------------------------------------------------------
    def on_wake(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when an action is queued by this process."""
        self._wake_listeners.append(callback)

    def notify_in(self, session: Session) -> None:
        """Within a write transaction that queued an action: wake other processes on commit."""
        if self.is_postgres:
            session.execute(text(f"NOTIFY {WAKE_CHANNEL}"))

    def wake(self) -> None:
        """After the commit that queued an action: wake conductors in this process."""
        for cb in self._wake_listeners:
            cb()

    # ---- schema --------------------------------------------------------------------
    def alembic_config(self) -> Any:
        """An Alembic ``Config`` pointing at the packaged migrations and this database."""
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["engine"] = self.write_engine
        return cfg

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (Alembic is only imported when one is due)."""
        if self.current_revision() == SCHEMA_HEAD:
            return
        from alembic import command

        command.upgrade(self.alembic_config(), "head")

    def current_revision(self) -> str | None:
        """The schema revision the database is at (``None`` when empty)."""
        with self.read_engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            rev = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return str(rev) if rev is not None else None

    def head_revision(self) -> str:
        """The newest migration shipped with this version of Ironworks."""
        return SCHEMA_HEAD

    def check_schema(self) -> None:
        """Fail clearly when the schema is not at the newest migration."""
        try:
            current = self.current_revision()
        except OperationalError as exc:
            raise DatabaseUnavailable(f"Cannot reach the database at {self.safe_url}: {exc.orig}") from exc
        head = self.head_revision()
        if current != head:
            raise DatabaseUnavailable(
                f"The database at {self.safe_url} is at schema revision {current or 'none'}, "
                f"this Ironworks needs {head}: run `ironworks db upgrade`."
            )

    @property
    def safe_url(self) -> str:
        """The URL with any password replaced."""
        return self.write_engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()
