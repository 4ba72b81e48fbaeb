"""The conductor process: registration, the claim loop, the worker pool and periodic tasks.

* Registration: a row in ``conductors`` with a heartbeat; a conductor silent for ``dead_after``
  seconds is dead. Live conductors form a hash ring that decides who owns which node.
* Recovery: at start, and whenever a dead conductor is found, its node locks are released, the
  actions it was running are failed, and nodes it left mid-flow move along their ``fail`` edge with
  a ``last_error`` that says what happened. Its queued actions are simply claimed by the new owners.
* The claim loop wakes when an action is queued (in-process callback, PostgreSQL ``NOTIFY``) or
  every ``poll_interval`` seconds, claims due actions up to the free worker slots and runs each in
  the pool under the node's lock.
* Periodic tasks: power-state sync and wait-state timeouts.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from sqlalchemy import select, update

from ironworks import states
from ironworks.conductor import locks, queue
from ironworks.conductor.flows import FlowRunner, describe_error
from ironworks.conductor.ring import HashRing
from ironworks.config import Config
from ironworks.db.engine import WAKE_CHANNEL, Database
from ironworks.db.models import Action, Node, utcnow
from ironworks.db.models import Conductor as ConductorRow
from ironworks.drivers.base import PowerInterface
from ironworks.drivers.registry import DriverFactory
from ironworks.errors import NodeLocked
from ironworks.images.cache import ImageCache

LOG = logging.getLogger(__name__)
#: seconds between image cache clean-ups ([images] max_age and max_cache_bytes; partial downloads)
IMAGE_CACHE_CLEANUP_INTERVAL = 600.0
S, E = states.State, states.Event

_TIMEOUT_FIELDS = {
    S.DEPLOY_WAIT: "deploy_callback_timeout",
    S.CLEAN_WAIT: "clean_callback_timeout",
    S.INSPECT_WAIT: "inspect_wait_timeout",
    S.RESCUE_WAIT: "rescue_callback_timeout",
    S.SERVICE_WAIT: "service_callback_timeout",
}


class ConductorService:
    """One conductor: owns nodes through the hash ring and runs their actions."""

    def __init__(self, config: Config, db: Database, drivers: DriverFactory) -> None:
        self.config = config
        self.cc = config.conductor
        self.db = db
        self.drivers = drivers
        self.hostname = self.cc.hostname
        self.flows = FlowRunner(config, db, drivers, hostname=self.hostname, schedule=self._schedule_resume)
        self.pool = ThreadPoolExecutor(max_workers=self.cc.workers, thread_name_prefix="ironworks-worker")
        self._sync_pool = ThreadPoolExecutor(
            max_workers=self.cc.power_sync_workers, thread_name_prefix="ironworks-power-sync"
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._ring = HashRing([self.hostname])
        self._threads: list[threading.Thread] = []
        self._power_failures: dict[int, int] = {}
        db.on_wake(self.wake)

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Register, recover what a previous life (or a dead peer) left, start the loops."""
        self._register()
        self.recover(self.hostname, reason="it restarted")
        self._reap_dead()
        self._refresh_ring()
        for name, target in (
            ("claim", self._claim_loop),
            ("heartbeat", self._heartbeat_loop),
            ("power-sync", self._power_sync_loop),
            ("timeouts", self._timeout_loop),
            ("image-cache", self._image_cache_loop),
        ):
            t = threading.Thread(target=target, name=f"ironworks-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.db.is_postgres:
            t = threading.Thread(target=self._listen_loop, name="ironworks-listen", daemon=True)
            t.start()
            self._threads.append(t)
        LOG.info("conductor %s started with %d workers", self.hostname, self.cc.workers)

    def stop(self) -> None:
        """Stop claiming, let running work finish, unregister."""
        self._stop.set()
        self._wake.set()
        # the claim loop must be out of run_pending before the pool closes: an action it claimed
        # but could not submit would stay "running" for a conductor that never runs it
        for t in self._threads:
            if t.name == "ironworks-claim":
                t.join(timeout=30)
        self.pool.shutdown(wait=True)
        self._sync_pool.shutdown(wait=True)
        with self.db.write() as s:
            s.execute(update(ConductorRow).where(ConductorRow.hostname == self.hostname).values(online=False))
        LOG.info("conductor %s stopped", self.hostname)

    def wake(self) -> None:
        """Something was queued: look at the queue now."""
        self._wake.set()

    # ---- registration and recovery ---------------------------------------------------
    def _register(self) -> None:
        now = utcnow()
        with self.db.write() as s:
            row = s.execute(select(ConductorRow).where(ConductorRow.hostname == self.hostname)).scalar_one_or_none()
            if row is None:
                s.add(
                    ConductorRow(
                        hostname=self.hostname,
                        online=True,
                        hardware_types=list(self.drivers.enabled),
                        started_at=now,
                        updated_at=now,
                    )
                )
            else:
                row.online, row.started_at, row.updated_at = True, now, now
                row.hardware_types = list(self.drivers.enabled)

    def recover(self, hostname: str, *, reason: str) -> int:
        """Release ``hostname``'s locks, fail its running actions and the flows it left; count nodes."""
        error = f"Conductor {hostname} stopped while working on this node ({reason}); the operation was interrupted."
        with self.db.write() as s:
            queue.release_running(self.db, s, conductor=hostname, error=error)
            locked = s.execute(select(Node.id).where(Node.reservation == hostname)).scalars().all()
            s.execute(update(Node).where(Node.reservation == hostname).values(reservation=None))
        for node_id in locked:
            try:
                with locks.node_lock(self.db, node_id, holder=self.hostname, purpose="recovery"):
                    task = self.flows.task(node_id)
                    if S(task.node.provision_state) in states.ACTIVE_FLOW_STATES:
                        self.flows.fail(task, error)
                    else:
                        task.set(target_power_state=None)
                        task.save()
            except NodeLocked:
                continue
            except Exception:  # one broken node must not stop recovery of the others
                LOG.exception("recovery of node %s failed", node_id)
        if locked:
            LOG.warning("released %d node lock(s) held by %s (%s)", len(locked), hostname, reason)
        return len(locked)

    def _reap_dead(self) -> None:
        cutoff = utcnow() - dt.timedelta(seconds=self.cc.dead_after)
        with self.db.write() as s:
            dead = (
                s.execute(
                    select(ConductorRow.hostname).where(
                        ConductorRow.hostname != self.hostname,
                        (ConductorRow.updated_at < cutoff) | (ConductorRow.online.is_(False)),
                    )
                )
                .scalars()
                .all()
            )
            if dead:
                s.execute(update(ConductorRow).where(ConductorRow.hostname.in_(dead)).values(online=False))
        for host in dead:
            self.recover(host, reason="it stopped heartbeating")

    def _refresh_ring(self) -> None:
        cutoff = utcnow() - dt.timedelta(seconds=self.cc.dead_after)
        with self.db.read() as s:
            hosts = (
                s.execute(
                    select(ConductorRow.hostname).where(
                        ConductorRow.online.is_(True), ConductorRow.updated_at >= cutoff
                    )
                )
                .scalars()
                .all()
            )
        self._ring = HashRing(list(hosts) or [self.hostname])

    def owns(self, node_uuid: str) -> bool:
        """Whether this conductor owns the node (by the hash ring)."""
        return self._ring.owner(node_uuid) == self.hostname

    # ---- loops ---------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.cc.heartbeat_interval):
            try:
                with self.db.write() as s:
                    s.execute(
                        update(ConductorRow)
                        .where(ConductorRow.hostname == self.hostname)
                        .values(updated_at=utcnow(), online=True)
                    )
                self._reap_dead()
                self._refresh_ring()
            except Exception:
                LOG.exception("conductor heartbeat failed")

    def _listen_loop(self) -> None:  # pragma: no cover - exercised by the PostgreSQL tests
        import psycopg

        url = self.db.write_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    for _ in conn.notifies(timeout=self.cc.poll_interval * 5, stop_after=None):
                        self._wake.set()
                        if self._stop.is_set():
                            return
            except Exception:
                LOG.warning("LISTEN connection lost; polling until it is back", exc_info=True)
                self._stop.wait(self.cc.poll_interval)

    def _claim_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cc.poll_interval)
            self._wake.clear()
            try:
                self.run_pending()
            except Exception:
                LOG.exception("claiming actions failed")
                self._stop.wait(self.cc.poll_interval)

    def run_pending(self) -> int:
        """Claim due actions up to the free worker slots and hand them to the pool."""
        if self._stop.is_set():
            return 0
        with self._busy_lock:
            free = self.cc.workers - self._busy
        actions = queue.claim(self.db, conductor=self.hostname, limit=free, owns=self.owns)
        for action in actions:
            with self._busy_lock:
                self._busy += 1
            self.pool.submit(self._execute, action)
        return len(actions)

    def _execute(self, action: queue.ClaimedAction) -> None:
        error: str | None = None
        result: dict[str, Any] | None = None
        try:
            with locks.node_lock(self.db, action.node_id, holder=self.hostname, purpose=f"{action.kind}:{action.name}"):
                result = self.flows.run(action)
        except NodeLocked:
            # someone (a periodic task, a dead peer not yet reaped) holds it: retry shortly
            with self.db.write() as s:
                queue.enqueue(
                    self.db,
                    s,
                    node_id=action.node_id,
                    kind=action.kind,
                    name=action.name,
                    args=action.args,
                    delay=0.5,
                    user=action.user,
                    request_id=action.request_id,
                )
            result = {"requeued": True}
        except Exception as exc:
            LOG.exception("action %s (%s %s) on node %s failed", action.id, action.kind, action.name, action.node_uuid)
            error = describe_error(exc)
        finally:
            with self._busy_lock:
                self._busy -= 1
        try:
            queue.finish(self.db, action.id, error=error, result=result)
        except Exception:
            LOG.exception("could not record the end of action %s", action.id)
        self._wake.set()

    def _schedule_resume(self, node_id: int, delay: float, user: str | None) -> None:
        with self.db.write() as s:
            queue.enqueue(self.db, s, node_id=node_id, kind="provision", name="resume", delay=delay, user=user)
        if delay <= 0:
            self._wake.set()

    # ---- power sync ------------------------------------------------------------------------
    def _power_sync_loop(self) -> None:
        while not self._stop.wait(self.cc.power_sync_interval):
            try:
                self.sync_power_states()
            except Exception:
                LOG.exception("power sync failed")

    def sync_power_states(self) -> int:
        """One pass over the owned nodes; returns how many were checked.

        Reading a power state takes a BMC round trip and changes nothing, so the reads run in
        parallel (``power_sync_workers``) without the node lock, from one batch query; only a node
        whose state differs, or whose BMC failed, is locked and written.
        """
        with self.db.read() as s:
            rows = (
                s.execute(
                    select(Node).where(
                        Node.reservation.is_(None),
                        Node.target_power_state.is_(None),
                        Node.provision_state != S.ENROLL.value,
                    )
                )
                .scalars()
                .all()
            )
        todo = [r for r in rows if self.owns(r.uuid) and not (r.maintenance and r.fault != "power failure")]
        checked = 0
        futures = {self._sync_pool.submit(self._read_power, row): row for row in todo}
        for fut in as_completed(futures):
            if self._stop.is_set():
                break
            row = futures[fut]
            try:
                self._apply_power(row, *fut.result())
                checked += 1
            except NodeLocked:
                continue
            except Exception:
                LOG.exception("power sync of node %s failed", row.uuid)
        return checked

    def _read_power(self, row: Node) -> tuple[str | None, BaseException | None]:
        task = self.flows.task(row.id, preloaded=(row, []))
        power = task.driver["power"]
        assert isinstance(power, PowerInterface)
        try:
            return power.get_power_state(task), None
        except Exception as exc:  # the BMC's trouble is data here, counted below
            return None, exc

    def _apply_power(self, row: Node, actual: str | None, error: BaseException | None) -> None:
        if error is not None:
            count = self._power_failures.get(row.id, 0) + 1
            self._power_failures[row.id] = count
            limit = self.cc.power_sync_max_failures
            msg = f"Power state sync failed ({count}/{limit}): {describe_error(error)}"
            LOG.warning("node %s: %s", row.uuid, msg)
            if count >= limit and not row.maintenance:
                reason = (
                    f"Power state could not be read {count} times in a row: {describe_error(error)} "
                    "Check the BMC address and credentials; maintenance is cleared when it answers again."
                )
                with locks.node_lock(self.db, row.id, holder=self.hostname, purpose="power sync"):
                    task = self.flows.task(row.id)
                    task.set(maintenance=True, fault="power failure", maintenance_reason=reason, last_error=msg)
                    task.event("maintenance", f"Maintenance set: {reason}", severity="ERROR")
                    task.save()
            return
        self._power_failures.pop(row.id, None)
        recovered = row.maintenance and row.fault == "power failure"
        if not recovered and actual == row.power_state:
            return  # the common case: nothing to write
        with locks.node_lock(self.db, row.id, holder=self.hostname, purpose="power sync"):
            task = self.flows.task(row.id)
            recorded = task.node.power_state
            if recovered:
                task.set(maintenance=False, fault=None, maintenance_reason=None, last_error=None)
                task.event("maintenance", "The BMC answers again: maintenance (power failure) cleared")
            if recorded is None:
                task.set(power_state=actual)
            elif actual != recorded and recorded == row.power_state:
                if self.cc.force_power_state_during_sync:
                    power = task.driver["power"]
                    assert isinstance(power, PowerInterface)
                    power.set_power_state(task, recorded)
                    task.event("power", f"Power sync: forced the node back to {recorded} (it was {actual})")
                else:
                    task.set(power_state=actual)
                    task.event("power", f"Power sync: node is {actual}, was recorded as {recorded}; recorded it")
            task.save()

    # ---- image cache ------------------------------------------------------------------------
    def _image_cache_loop(self) -> None:
        while not self._stop.wait(IMAGE_CACHE_CLEANUP_INTERVAL):
            try:
                ImageCache.from_config(self.config).clean_up()
            except Exception:
                LOG.exception("image cache clean-up failed")

    # ---- wait-state timeouts -------------------------------------------------------------
    def _timeout_loop(self) -> None:
        while not self._stop.wait(self.cc.timeout_check_interval):
            try:
                self.check_timeouts()
            except Exception:
                LOG.exception("timeout check failed")

    def check_timeouts(self) -> int:
        """Fail owned nodes that waited longer than their state's timeout; return how many."""
        now = utcnow()
        expired: list[tuple[int, str]] = []
        with self.db.read() as s:
            for state, field in _TIMEOUT_FIELDS.items():
                limit = float(getattr(self.cc, field))
                if limit <= 0:
                    continue
                cutoff = now - dt.timedelta(seconds=limit)
                rows = s.execute(
                    select(Node.id, Node.uuid).where(
                        Node.provision_state == state.value,
                        Node.provision_updated_at < cutoff,
                        Node.reservation.is_(None),
                    )
                ).all()
                expired += [(r.id, r.uuid) for r in rows if self.owns(r.uuid)]
        count = 0
        for node_id, _uuid in expired:
            try:
                with locks.node_lock(self.db, node_id, holder=self.hostname, purpose="timeout"):
                    task = self.flows.task(node_id)
                    state = S(task.node.provision_state)
                    if state not in _TIMEOUT_FIELDS:
                        continue
                    field = _TIMEOUT_FIELDS[state]
                    msg = (
                        f"{states.TIMEOUT_MESSAGES[state]} (limit: [conductor] {field} = {getattr(self.cc, field):g}s)"
                    )
                    kind = {S.CLEAN_WAIT: "clean", S.DEPLOY_WAIT: "deploy", S.SERVICE_WAIT: "service"}.get(state)
                    if kind:
                        task.set(**{f"{kind}_step": None})
                    if task.transition(E.TIMEOUT, error=msg, save=False) == S.CLEAN_FAILED:
                        # as after any failed cleaning: not handed out until an operator looks
                        task.set(maintenance=True, fault="clean failure", maintenance_reason=msg)
                    self.flows.clean_up_after_failure(task)
                    task.save()
                    count += 1
            except NodeLocked:
                continue
        return count

    # ---- test helpers ------------------------------------------------------------------------
    def drain(self, timeout: float = 30.0) -> None:
        """Run until the queue holds no due or running action (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.run_pending()
            with self._busy_lock:
                busy = self._busy
            with self.db.read() as s:
                due = s.execute(
                    select(Action.id)
                    .where(
                        Action.status.in_([queue.PENDING, queue.RUNNING]),
                        (Action.not_before.is_(None)) | (Action.not_before <= utcnow()),
                    )
                    .limit(1)
                ).first()
            if not busy and due is None:
                return
            time.sleep(0.01)
        raise TimeoutError("the action queue did not drain")
