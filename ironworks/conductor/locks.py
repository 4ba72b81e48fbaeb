"""The node lock: an atomic conditional UPDATE of ``nodes.reservation``, and its release.

The lock only locks. Who holds it is the conductor's hostname, so a dead conductor's locks can be
found and released by the survivors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from sqlalchemy import select, update

from ironworks.db.engine import Database
from ironworks.db.models import Node
from ironworks.errors import NodeLocked

LOG = logging.getLogger(__name__)


def acquire(db: Database, node_id: int, *, holder: str) -> None:
    """Take the lock of node ``node_id`` for ``holder``; ``NodeLocked`` if someone has it."""
    with db.write() as s:
        res = s.execute(update(Node).where(Node.id == node_id, Node.reservation.is_(None)).values(reservation=holder))
        if res.rowcount == 0:  # type: ignore[attr-defined]
            row = s.execute(select(Node.uuid, Node.reservation).where(Node.id == node_id)).first()
            raise NodeLocked(row.uuid if row else str(node_id), row.reservation if row else None)


def release(db: Database, node_id: int, *, holder: str) -> None:
    """Give the lock back (only if ``holder`` still has it)."""
    with db.write() as s:
        s.execute(update(Node).where(Node.id == node_id, Node.reservation == holder).values(reservation=None))


@contextlib.contextmanager
def node_lock(db: Database, node_id: int, *, holder: str, purpose: str) -> Iterator[None]:
    """Hold node ``node_id``'s lock for one unit of work (``purpose`` is for the logs)."""
    acquire(db, node_id, holder=holder)
    LOG.debug("node %s locked by %s for %s", node_id, holder, purpose)
    try:
        yield
    finally:
        release(db, node_id, holder=holder)
