"""Steps: driver methods that clean, deploy or service a node, and what they return.

One decorator marks a method as a step of one or more kinds::

    @step("clean", priority=10, abortable=True)
    @step("service", priority=0, args={"force": {"type": "boolean", "required": False}})
    def erase_devices_metadata(self, task, **kwargs) -> Outcome: ...

A step never sleeps and never returns a magic state string: it returns ``Done`` (optionally with a
result), ``Wait`` (the conductor moves the node to the matching wait state and calls the step again
after ``poll_after`` seconds, or when an outside event such as an agent heartbeat arrives), or
``Failed(reason, message)``. A step called again after ``Wait`` finds what it stored in
``task.node.driver_internal_info`` (steps are idempotent).

Priority 0 means "manual only"; higher priorities run first in automated cleaning and deployment.

Contract with the conductor: while a step runs (across every ``Wait``),
``driver_internal_info["step_started_at"]`` holds the time it started and stays the same; it is
removed when the step ends. A step may key its own saved progress on it, so a later run of the same
step (same name and arguments) starts afresh instead of resuming stale state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

STEP_KINDS = ("clean", "deploy", "service")


@dataclass(frozen=True, slots=True)
class Done:
    """The step finished."""

    result: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """The step continues later: after ``poll_after`` seconds, or on an outside event when None."""

    poll_after: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Hold:
    """Pause the flow until the operator sends ``unhold`` (or ``abort``)."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    """The step failed: ``reason`` is machine-readable, ``message`` says what to do."""

    reason: str
    message: str


Outcome = Done | Wait | Hold | Failed


@dataclass(frozen=True, slots=True)
class StepInfo:
    """How a step describes itself (served by the API, used to order and validate)."""

    kind: str
    name: str
    priority: int
    abortable: bool = False
    argsinfo: dict[str, dict[str, Any]] = field(default_factory=dict)
    requires_ramdisk: bool = False


_ATTR = "_ironworks_steps"
F = TypeVar("F", bound=Callable[..., Any])


def step(
    kind: str,
    *,
    priority: int = 0,
    abortable: bool = False,
    args: dict[str, dict[str, Any]] | None = None,
    requires_ramdisk: bool = False,
) -> Callable[[F], F]:
    """Mark a driver method as a ``kind`` step (``clean``, ``deploy`` or ``service``).

    ``args`` describes accepted arguments, JSON-schema-like per argument:
    ``{"name": {"description": ..., "required": bool, "type": "string|integer|number|boolean|array|object"}}``.
    """
    if kind not in STEP_KINDS:
        raise ValueError(f"step kind must be one of {STEP_KINDS}, not {kind!r}")
    if priority < 0:
        raise ValueError("step priority must be >= 0")

    def mark(func: F) -> F:
        info = StepInfo(
            kind=kind,
            name=func.__name__,
            priority=priority,
            abortable=abortable,
            argsinfo=dict(args or {}),
            requires_ramdisk=requires_ramdisk,
        )
        setattr(func, _ATTR, (*getattr(func, _ATTR, ()), info))
        return func

    return mark


def steps_of(obj: object, kind: str) -> list[StepInfo]:
    """Every ``kind`` step an interface instance (or class) declares."""
    found: list[StepInfo] = []
    cls = obj if isinstance(obj, type) else type(obj)
    for attr in dir(cls):
        member = getattr(cls, attr, None)
        for info in getattr(member, _ATTR, ()):
            if info.kind == kind:
                found.append(info)
    return found


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def check_args(info: StepInfo, args: dict[str, Any]) -> list[str]:
    """Problems with ``args`` for step ``info`` (empty when they are fine)."""
    problems = []
    where = f"step {info.name!r}"
    for name in args:
        if name not in info.argsinfo:
            known = ", ".join(sorted(info.argsinfo)) or "none"
            problems.append(f"{where} does not take argument {name!r} (it takes: {known})")
    for name, spec in info.argsinfo.items():
        if name not in args:
            if spec.get("required"):
                problems.append(f"{where} requires argument {name!r}: {spec.get('description', '')}".rstrip(": "))
            continue
        typ = spec.get("type")
        if typ in _JSON_TYPES:
            val = args[name]
            ok = isinstance(val, _JSON_TYPES[typ]) and not (typ in ("integer", "number") and isinstance(val, bool))
            if not ok:
                problems.append(f"{where} argument {name!r} must be of type {typ}, got {type(val).__name__}")
    return problems
