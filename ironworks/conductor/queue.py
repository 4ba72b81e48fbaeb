"""The durable action queue: an accepted intent is a row, so it survives any process dying.

The API inserts an action in the same transaction as the state change it stands for; a conductor
claims due actions of the nodes it owns (one running action per node), runs them, and marks them
``done`` or ``failed``. Timers are actions with ``not_before`` in the future.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session, aliased

from ironworks.db.engine import Database
from ironworks.db.models import Action, Node, utcnow

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass(frozen=True, slots=True)
class ClaimedAction:
    """An action a conductor is about to run (arguments decrypted)."""

    id: int
    node_id: int
    node_uuid: str
    kind: str
    name: str
    args: dict[str, Any]
    user: str | None
    request_id: str | None


def enqueue(
    db: Database,
    session: Session,
    *,
    node_id: int,
    kind: str,
    name: str,
    args: dict[str, Any] | None = None,
    delay: float | None = None,
    user: str | None = None,
    request_id: str | None = None,
) -> Action:
    """Queue an action inside the caller's transaction (call ``db.wake()`` after the commit)."""
    action = Action(
        node_id=node_id,
        kind=kind,
        name=name,
        args=db.secrets.encrypt_text(json.dumps(args)) if args else None,
        not_before=utcnow() + dt.timedelta(seconds=delay) if delay else None,
        user=user,
        request_id=request_id,
    )
    session.add(action)
    session.flush()
    db.notify_in(session)
    return action


def claim(
    db: Database,
    *,
    conductor: str,
    limit: int,
    owns: Callable[[str], bool] = lambda _uuid: True,
) -> list[ClaimedAction]:
    """Claim up to ``limit`` due actions of owned nodes that have no action running."""
    if limit <= 0:
        return []
    now = utcnow()
    running = aliased(Action)
    stmt = (
        select(Action.id, Action.node_id, Node.uuid)
        .join(Node, Node.id == Action.node_id)
        .where(
            Action.status == PENDING,
            (Action.not_before.is_(None)) | (Action.not_before <= now),
            ~exists().where(and_(running.node_id == Action.node_id, running.status == RUNNING)),
        )
        .order_by(Action.id)
        .limit(limit * 4)
    )
    if db.is_postgres:
        stmt = stmt.with_for_update(of=Action, skip_locked=True)
    claimed: list[ClaimedAction] = []
    with db.write() as s:
        seen_nodes: set[int] = set()
        ids: list[int] = []
        for action_id, node_id, node_uuid in s.execute(stmt):
            if node_id in seen_nodes or not owns(node_uuid):
                continue
            seen_nodes.add(node_id)
            ids.append(action_id)
            if len(ids) >= limit:
                break
        if not ids:
            return []
        s.execute(
            update(Action)
            .where(Action.id.in_(ids), Action.status == PENDING)
            .values(status=RUNNING, conductor=conductor, started_at=now)
        )
        rows = s.execute(
            select(Action, Node.uuid).join(Node, Node.id == Action.node_id).where(Action.id.in_(ids))
        ).all()
        for action, node_uuid in rows:
            if action.status != RUNNING or action.conductor != conductor:
                continue
            args = json.loads(db.secrets.decrypt_text(action.args)) if action.args else {}
            claimed.append(
                ClaimedAction(
                    action.id,
                    action.node_id,
                    node_uuid,
                    action.kind,
                    action.name,
                    args,
                    action.user,
                    action.request_id,
                )
            )
    claimed.sort(key=lambda a: a.id)
    return claimed


def finish(db: Database, action_id: int, *, error: str | None = None, result: dict[str, Any] | None = None) -> None:
    """Mark a claimed action done (or failed with ``error``)."""
    with db.write() as s:
        s.execute(
            update(Action)
            .where(Action.id == action_id)
            .values(status=FAILED if error else DONE, error=error, result=result, finished_at=utcnow())
        )


def release_running(db: Database, session: Session, *, conductor: str, error: str) -> list[int]:
    """Fail the actions a dead conductor was running; return their node ids."""
    rows = session.execute(
        select(Action.id, Action.node_id).where(Action.status == RUNNING, Action.conductor == conductor)
    ).all()
    if rows:
        session.execute(
            update(Action)
            .where(Action.id.in_([r.id for r in rows]))
            .values(status=FAILED, error=error, finished_at=utcnow())
        )
    return [r.node_id for r in rows]
