"""Hardware managers: who does what on this machine, and the steps they offer.

A manager says how well it supports the machine (``evaluate_hardware_support``: NONE, GENERIC,
MAINLINE, VENDOR, SERVICE_PROVIDER). Managers come from entry points in the group
``ironworks.agent.hardware_managers`` (a vendor adds one with ``pip install``); each is built with
the agent's ``HardwareContext``. A call goes to the managers from the most to the least specific;
the first that has the method handles it, unless it raises ``IncompatibleHardwareMethodError``,
which passes the call on to the next one. A step is a method marked with ``@agent_step``; steps are
dispatched by name, so a vendor manager that defines ``erase_devices`` takes that step over while
every other call still reaches the generic manager.

BIOS and RAID are hooks for vendor managers: the generic manager knows no vendor tool, so it offers
none of them. A manager that can configure the machine declares steps on the ``bios`` interface
(``apply_configuration(settings=[{"name", "value"}])``, ``factory_reset()``) or the ``raid`` interface
(``create_configuration(target_raid_config={"logical_disks": [...]})``, ``delete_configuration()``);
the conductor's ``agent`` bios and raid interfaces run them as clean (and BIOS also as service) steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from ironworks.agent import Runner, run_command
from ironworks.agent.errors import AgentError

LOG = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ironworks.agent.hardware_managers"
STEP_KINDS = ("clean", "deploy", "service")
#: the conductor-side interface a step belongs to: the agent's own work, or a vendor hook
STEP_INTERFACES = ("deploy", "bios", "raid")
_STEP_ATTR = "_ironworks_agent_steps"
F = TypeVar("F", bound=Callable[..., Any])


class HardwareSupport(IntEnum):
    """How well a manager supports this machine; the highest wins."""

    NONE = 0
    GENERIC = 1
    MAINLINE = 2
    VENDOR = 3
    SERVICE_PROVIDER = 4


class HardwareError(AgentError):
    """A hardware manager could not do what was asked."""

    reason = "hardware_error"


class IncompatibleHardwareMethodError(HardwareError):
    """Raised by a manager that has a method but cannot run it on this machine: the next one tries."""

    reason = "incompatible_hardware_method"


class HardwareManagerMethodNotFound(HardwareError):
    """No manager handles this method or step."""

    reason = "hardware_method_not_found"


class InvalidStepArgs(HardwareError):
    """A step was given arguments it does not take, or lacks one it needs."""

    reason = "invalid_step_args"


@dataclass(frozen=True, slots=True)
class AgentStep:
    """How a step describes itself to the conductor."""

    kind: str
    name: str
    priority: int
    abortable: bool = False
    argsinfo: dict[str, dict[str, Any]] | None = None
    interface: str = "deploy"

    def as_dict(self) -> dict[str, Any]:
        """The wire shape of the step (IPA's)."""
        return {
            "step": self.name,
            "priority": self.priority,
            "interface": self.interface,
            "reboot_requested": False,
            "abortable": self.abortable,
            "argsinfo": self.argsinfo,
        }


def agent_step(
    kind: str,
    *,
    priority: int = 0,
    abortable: bool = False,
    argsinfo: dict[str, dict[str, Any]] | None = None,
    interface: str = "deploy",
) -> Callable[[F], F]:
    """Mark a manager method as a ``kind`` step; it is called as ``method(node=, ports=, **args)``."""
    if kind not in STEP_KINDS:
        raise ValueError(f"step kind must be one of {STEP_KINDS}, not {kind!r}")
    if interface not in STEP_INTERFACES:
        raise ValueError(f"step interface must be one of {STEP_INTERFACES}, not {interface!r}")

    def mark(func: F) -> F:
        info = AgentStep(kind, func.__name__, priority, abortable, argsinfo, interface)
        setattr(func, _STEP_ATTR, (*getattr(func, _STEP_ATTR, ()), info))
        return func

    return mark


@dataclass
class HardwareContext:
    """What managers may use: where /proc and /sys are, how to run programs, which devices to touch."""

    root: Path = Path("/")
    runner: Runner = run_command
    #: None: every device (ramdisk only); otherwise the only devices the agent may touch
    allowed_devices: list[str] | None = field(default_factory=list)
    ramdisk: bool = False
    #: the node as lookup returned it (properties, instance_info, driver_internal_info)
    node: dict[str, Any] = field(default_factory=dict)
    #: set by the command executor: reports the running command's progress
    progress: Callable[[dict[str, Any]], None] = lambda _update: None


class HardwareManager:
    """Base of every manager: support evaluation and step listing; the work is in subclasses."""

    HARDWARE_MANAGER_NAME = ""
    HARDWARE_MANAGER_VERSION = "1.0"

    def __init__(self, ctx: HardwareContext) -> None:
        self.ctx = ctx

    @property
    def name(self) -> str:
        """The manager's name as step listings show it."""
        return self.HARDWARE_MANAGER_NAME or type(self).__name__

    def evaluate_hardware_support(self) -> int:
        """How well this manager supports the machine (a ``HardwareSupport`` value)."""
        return HardwareSupport.NONE

    def steps(self, kind: str) -> list[AgentStep]:
        """The ``kind`` steps this manager declares, in name order."""
        found: list[AgentStep] = []
        for attr in sorted(dir(type(self))):
            found.extend(i for i in getattr(getattr(type(self), attr, None), _STEP_ATTR, ()) if i.kind == kind)
        return found

    def get_clean_steps(self, node: dict[str, Any], ports: list[Any]) -> list[dict[str, Any]]:
        """Clean steps offered for ``node``."""
        return [s.as_dict() for s in self.steps("clean")]

    def get_deploy_steps(self, node: dict[str, Any], ports: list[Any]) -> list[dict[str, Any]]:
        """Deploy steps offered for ``node``."""
        return [s.as_dict() for s in self.steps("deploy")]

    def get_service_steps(self, node: dict[str, Any], ports: list[Any]) -> list[dict[str, Any]]:
        """Service steps offered for ``node``."""
        return [s.as_dict() for s in self.steps("service")]


_NOT_HANDLED = object()


class Managers:
    """The managers supporting this machine, most specific first, and dispatch over them."""

    def __init__(self, managers: Iterable[HardwareManager]) -> None:
        rated = [(int(m.evaluate_hardware_support()), i, m) for i, m in enumerate(managers)]
        self.ordered = [m for support, _, m in sorted(rated, key=lambda r: (-r[0], r[1])) if support > 0]
        self.support = {m.name: s for s, _, m in rated}

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on the first manager that has it and does not pass it on."""
        for manager in self.ordered:
            func = getattr(manager, method, None)
            if not callable(func):
                continue
            try:
                return func(*args, **kwargs)
            except IncompatibleHardwareMethodError as exc:
                LOG.info("%s passed %s on: %s", manager.name, method, exc)
        names = ", ".join(m.name for m in self.ordered) or "none"
        raise HardwareManagerMethodNotFound(
            f"no hardware manager handles {method!r} on this machine (managers: {names})"
        )

    def get_steps(self, kind: str, node: dict[str, Any], ports: list[Any]) -> dict[str, Any]:
        """IPA's ``get_<kind>_steps`` result: steps per manager (a step name listed once, by the best manager)."""
        seen: set[str] = set()
        per_manager: dict[str, list[dict[str, Any]]] = {}
        for manager in self.ordered:
            steps = getattr(manager, f"get_{kind}_steps")(node, ports)
            mine = [s for s in steps if s["step"] not in seen]
            seen.update(s["step"] for s in mine)
            if mine:
                per_manager[manager.name] = mine
        versions = {m.name: m.HARDWARE_MANAGER_VERSION for m in self.ordered}
        return {f"{kind}_steps": per_manager, "hardware_manager_version": versions}

    def find_step(self, kind: str, name: str, interface: str | None = None) -> AgentStep:
        """The step ``name`` (of ``interface``, when given) as the most specific manager declares it."""
        for manager in self.ordered:
            for info in manager.steps(kind):
                if info.name == name and interface in (None, info.interface):
                    return info
        known = sorted({f"{i.interface}.{i.name}" for m in self.ordered for i in m.steps(kind)})
        what = f"{interface}.{name}" if interface else name
        raise HardwareManagerMethodNotFound(
            f"no {kind} step {what!r} on this machine; known: {', '.join(known) or 'none'}"
        )

    def execute_step(self, kind: str, step: dict[str, Any], node: dict[str, Any], ports: list[Any]) -> Any:
        """Run a step dict (``{"step", "args", ...}``) after checking its arguments."""
        name = step.get("step")
        if not isinstance(name, str):
            raise InvalidStepArgs(f"the {kind} step has no name: {step!r}")
        args = step.get("args") or {}
        if not isinstance(args, dict):
            raise InvalidStepArgs(f"{kind} step {name!r}: args must be an object")
        interface = step.get("interface")
        if interface is not None and not isinstance(interface, str):
            raise InvalidStepArgs(f"{kind} step {name!r}: interface must be a string")
        check_step_args(self.find_step(kind, name, interface), args)
        return self.call(name, node=node, ports=ports, **args)


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def check_step_args(info: AgentStep, args: dict[str, Any]) -> None:
    """Raise ``InvalidStepArgs`` naming every unknown, missing or mistyped argument."""
    spec = info.argsinfo or {}
    problems = [f"unknown argument {a!r}" for a in args if a not in spec]
    for name, rules in spec.items():
        if name not in args:
            if rules.get("required"):
                problems.append(f"missing required argument {name!r}")
            continue
        typ = rules.get("type")
        value = args[name]
        if typ in _JSON_TYPES and (
            not isinstance(value, _JSON_TYPES[typ]) or (typ in ("integer", "number") and isinstance(value, bool))
        ):
            problems.append(f"argument {name!r} must be of type {typ}, got {type(value).__name__}")
    if problems:
        takes = ", ".join(sorted(spec)) or "no arguments"
        raise InvalidStepArgs(f"{info.kind} step {info.name!r}: {'; '.join(problems)} (it takes: {takes})")


def load_managers(ctx: HardwareContext, *, group: str = ENTRY_POINT_GROUP) -> Managers:
    """Every installed manager (a broken plugin is logged and skipped; the generic one is always there)."""
    from ironworks.agent.generic import GenericHardwareManager

    managers: list[HardwareManager] = []
    for ep in metadata.entry_points(group=group):
        try:
            cls = ep.load()
            managers.append(cls(ctx))
        except Exception:
            LOG.exception("hardware manager %s (%s) could not be loaded; skipping it", ep.name, ep.value)
    if not any(isinstance(m, GenericHardwareManager) for m in managers):
        managers.append(GenericHardwareManager(ctx))
    found = Managers(managers)
    LOG.info("hardware managers: %s", ", ".join(f"{m.name} ({found.support[m.name]})" for m in found.ordered))
    return found
