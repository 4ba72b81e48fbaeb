"""One unit of work on one node: load it, let drivers act, save what changed, step the machine.

``TaskContext`` is what drivers receive as ``Task``. It loads the node with its secrets revealed,
buffers timeline entries, and writes the node back (secrets sealed again) whenever the conductor
saves or moves the provision state, so the API shows progress as it happens.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from sqlalchemy import select, update

from ironworks import states
from ironworks.db.engine import Database
from ironworks.db.models import Node, NodeEvent, Port, utcnow
from ironworks.db.secrets import mask
from ironworks.drivers.base import NodeView, PortView, PowerInterface
from ironworks.drivers.registry import Driver, DriverFactory
from ironworks.errors import NotFound

LOG = logging.getLogger(__name__)


class TaskContext:
    """The node, its ports and driver, and the means to record and save (the conductor holds the lock)."""

    def __init__(
        self,
        db: Database,
        drivers: DriverFactory,
        node_id: int,
        *,
        conductor: str,
        user: str | None = None,
        preloaded: tuple[Node, list[PortView]] | None = None,
    ) -> None:
        """Load node ``node_id`` (or use ``preloaded`` = (row, ports) read by a batch query)."""
        self.db = db
        self.conductor = conductor
        self.user = user
        self._events: list[dict[str, Any]] = []
        self._last_progress: tuple[int | None, str] | None = None
        if preloaded is None:
            with db.read() as s:
                loaded = s.get(Node, node_id)
                if loaded is None:
                    raise NotFound(f"Node {node_id} does not exist (it was deleted).")
                ports = s.execute(select(Port).where(Port.node_id == node_id).order_by(Port.id)).scalars().all()
                preloaded = (loaded, [PortView(p.uuid, p.address, p.pxe_enabled) for p in ports])
        row, self.ports = preloaded
        self.db_node = row
        reveal = db.secrets.reveal
        self.node = NodeView(
            id=row.id,
            uuid=row.uuid,
            name=row.name,
            driver=row.driver,
            driver_info=reveal(row.driver_info),
            driver_internal_info=reveal(copy.deepcopy(row.driver_internal_info or {})),
            instance_info=reveal(row.instance_info),
            properties=dict(row.properties or {}),
            provision_state=row.provision_state,
            power_state=row.power_state,
            boot_mode=row.boot_mode,
            extra=dict(row.extra or {}),
        )
        self.target = row.target_provision_state
        self.driver: Driver = drivers.driver_for(
            row.driver,
            {k: getattr(row, f"{k}_interface") for k in drivers.hardware_type(row.driver).supported},
        )
        # columns the flow changes, written on save()
        self.changes: dict[str, Any] = {}

    # ---- Task protocol ------------------------------------------------------------
    def record(self, message: str, *, severity: str = "INFO", data: dict[str, Any] | None = None) -> None:
        """Add an entry to the node's timeline (written on the next save)."""
        self._events.append(
            {
                "event": message,
                "severity": severity,
                "data": data,
                "event_type": (data or {}).get("type", "log"),
            }
        )

    def progress(self, done: float, total: float | None = None, *, message: str = "") -> None:
        """Record progress of the current step and save it now (the API shows it at once).

        It is kept in ``driver_internal_info["progress"]``; a timeline entry is added each time the
        message changes or another tenth of the total is done, so a long image write leaves ten
        entries, not thousands.
        """
        pct = round(100.0 * done / total, 1) if total else None
        info: dict[str, Any] = {
            "done": done,
            "total": total,
            "percent": pct,
            "message": message,
            "at": utcnow().isoformat(),
        }
        self.node.driver_internal_info["progress"] = info
        mark = (int(pct // 10) if pct is not None else None, message)
        if mark != self._last_progress:
            self._last_progress = mark
            text = f"{message or 'Progress'}: " + (f"{pct:g}%" if pct is not None else f"{done:g}")
            self.event("step.progress", text, done=done, total=total, percent=pct)
        self.save()

    def interface(self, kind: str) -> Any:
        """The node's implementation of interface ``kind``."""
        return self.driver[kind]

    def set_power_state(self, state: str) -> str:
        """Change the power state through the power interface and record the state it reaches."""
        power = self.driver["power"]
        assert isinstance(power, PowerInterface)
        if state == "rebooting":
            power.reboot(self)
        else:
            power.set_power_state(self, state)
        new: str = power.get_power_state(self)
        self.node.power_state = new
        self.set(power_state=new, target_power_state=None)
        return new

    # ---- persistence -----------------------------------------------------------------
    def event(self, event_type: str, message: str, *, severity: str = "INFO", **data: Any) -> None:
        """Add a typed timeline entry (``step.start``, ``provision``, ``power`` ...)."""
        self._events.append({"event": message, "severity": severity, "data": data or None, "event_type": event_type})

    def set(self, **columns: Any) -> None:
        """Change node columns on the next save."""
        self.changes.update(columns)

    def save(self) -> None:
        """Write the node's changed columns, ``driver_internal_info`` and buffered events."""
        seal = self.db.secrets.seal
        values = dict(self.changes)
        values["driver_internal_info"] = seal(self.node.driver_internal_info)
        if "instance_info" in values:
            values["instance_info"] = seal(values["instance_info"])
        values["updated_at"] = utcnow()
        with self.db.write() as s:
            s.execute(update(Node).where(Node.id == self.node.id).values(**values))
            for ev in self._events:
                s.add(
                    NodeEvent(
                        node_id=self.node.id,
                        conductor=self.conductor,
                        user=self.user,
                        event_type=ev["event_type"],
                        severity=ev["severity"],
                        event=ev["event"],
                        data=ev["data"],
                    )
                )
        self._events.clear()
        self.changes.clear()

    def transition(self, event: states.Event, *, error: str | None = None, save: bool = True) -> states.State:
        """Step the provision state machine on ``event`` and save; returns the new state."""
        old = states.State(self.node.provision_state)
        target = states.State(self.target) if self.target else None
        tr = states.advance(old, event, target=target)
        self.node.provision_state = tr.state.value
        self.target = tr.target.value if tr.target else None
        cols: dict[str, Any] = {
            "provision_state": tr.state.value,
            "target_provision_state": self.target,
            "provision_updated_at": utcnow(),
        }
        if error is not None:
            cols["last_error"] = error
        elif event in states.USER_EVENTS or event == states.Event.DONE:
            cols["last_error"] = None
        self.set(**cols)
        severity = "ERROR" if error else "INFO"
        msg = f"Provision state {old.value} -> {tr.state.value} ({event.value})"
        if error:
            msg += f": {error}"
        self.event("provision", msg, severity=severity, **{"from": old.value, "to": tr.state.value})
        if save:
            self.save()
        LOG.info("node %s: %s", self.node.uuid, msg)
        return tr.state

    def masked(self, data: dict[str, Any] | None) -> dict[str, Any]:
        """``data`` with secrets masked, for timeline entries."""
        return mask(data)
