"""Collecting, ordering, validating and running steps (clean, deploy, service).

Automated steps are the steps of a node's interfaces with priority > 0, highest first; ties are
broken by interface as Ironic does (``INTERFACE_PRIORITY``: vendor, power, management, deploy,
firmware, bios, raid). Manual steps run in the order given. Reserved steps need no interface
method: ``power_on``, ``power_off``, ``reboot`` (interface ``power``), ``wait`` (``seconds``) and
``hold`` (any interface).
"""

from __future__ import annotations

from typing import Any

from ironworks.drivers.registry import Driver
from ironworks.drivers.steps import StepInfo, check_args, steps_of
from ironworks.errors import InvalidInput

INTERFACE_PRIORITY = {
    "vendor": 7,
    "power": 6,
    "management": 5,
    "deploy": 4,
    "firmware": 3,
    "bios": 2,
    "raid": 1,
}
STEP_INTERFACES = ("deploy", "power", "management", "firmware", "bios", "raid", "vendor")

RESERVED: dict[str, StepInfo] = {
    "power_on": StepInfo(kind="*", name="power_on", priority=0, abortable=True),
    "power_off": StepInfo(kind="*", name="power_off", priority=0, abortable=True),
    "reboot": StepInfo(kind="*", name="reboot", priority=0, abortable=True),
    "wait": StepInfo(
        kind="*",
        name="wait",
        priority=0,
        abortable=True,
        argsinfo={"seconds": {"description": "how long to wait", "required": False, "type": "number"}},
    ),
    "hold": StepInfo(kind="*", name="hold", priority=0, abortable=True),
}
_POWER_ONLY = frozenset({"power_on", "power_off", "reboot"})


def step_dict(interface: str, info: StepInfo, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The wire/DB form of a step."""
    return {
        "interface": interface,
        "step": info.name,
        "priority": info.priority,
        "abortable": info.abortable,
        "argsinfo": info.argsinfo or None,
        "args": dict(args or {}),
    }


def available_steps(driver: Driver, kind: str) -> list[dict[str, Any]]:
    """Every ``kind`` step of the node's interfaces, automated ones first, in run order."""
    found = []
    for iface in STEP_INTERFACES:
        impl = driver.interfaces.get(iface)
        if impl is None:
            continue
        for info in steps_of(impl, kind):
            found.append(step_dict(iface, info))
    found.sort(key=lambda s: (-s["priority"], -INTERFACE_PRIORITY.get(s["interface"], 0), s["step"]))
    return found


def automated_steps(driver: Driver, kind: str) -> list[dict[str, Any]]:
    """The steps automated cleaning/deployment runs: priority > 0, in run order."""
    return [s for s in available_steps(driver, kind) if s["priority"] > 0]


def _find(driver: Driver, kind: str, interface: str, name: str) -> StepInfo | None:
    if name in RESERVED and (name not in _POWER_ONLY or interface == "power"):
        return RESERVED[name]
    impl = driver.interfaces.get(interface)
    if impl is None:
        return None
    return next((i for i in steps_of(impl, kind) if i.name == name), None)


def validate_requested(
    driver: Driver, kind: str, requested: Any, *, with_priority: bool = False
) -> list[dict[str, Any]]:
    """Check operator-given steps (``clean_steps``/``service_steps``/``deploy_steps``); normalized.

    Raises ``InvalidInput`` listing every problem, so the operator can fix them in one go.
    """
    field = f"{kind}_steps"
    if not isinstance(requested, list) or not requested:
        raise InvalidInput(f"{field} must be a non-empty list of {{'interface': ..., 'step': ...}} objects.")
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    for n, item in enumerate(requested):
        if not isinstance(item, dict):
            problems.append(f"{field}[{n}] must be an object, got {type(item).__name__}")
            continue
        unknown = set(item) - {"interface", "step", "args", "priority"}
        if unknown:
            problems.append(f"{field}[{n}] has unknown keys: {', '.join(sorted(unknown))}")
        iface, name, args = item.get("interface"), item.get("step"), item.get("args", {})
        if not isinstance(iface, str) or not isinstance(name, str):
            problems.append(f"{field}[{n}] needs string 'interface' and 'step'")
            continue
        if not isinstance(args, dict):
            problems.append(f"{field}[{n}] 'args' must be an object")
            continue
        info = _find(driver, kind, iface, name)
        if info is None:
            names = [f"{s['interface']}.{s['step']}" for s in available_steps(driver, kind)]
            names += [f"power.{r}" for r in sorted(_POWER_ONLY)] + ["<any>.wait", "<any>.hold"]
            problems.append(
                f"{field}[{n}]: {kind} step {iface}.{name} is not supported by this node's driver; "
                f"available: {', '.join(names)}"
            )
            continue
        problems.extend(check_args(info, args))
        prio = item.get("priority", info.priority)
        if with_priority and (not isinstance(prio, int) or isinstance(prio, bool) or prio < 0):
            problems.append(f"{field}[{n}] priority must be a non-negative integer")
            continue
        d = step_dict(iface, info, args)
        if with_priority:
            d["priority"] = prio
        out.append(d)
    if problems:
        raise InvalidInput("Invalid " + field + ": " + "; ".join(problems) + ".")
    return out


def merge_deploy_steps(driver: Driver, requested: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Automated deploy steps plus operator-requested ones (which override by name), by priority."""
    steps = {(s["interface"], s["step"]): s for s in automated_steps(driver, "deploy")}
    for s in requested or []:
        steps[(s["interface"], s["step"])] = s
    ordered = [s for s in steps.values() if s["priority"] > 0]
    ordered.sort(key=lambda s: (-s["priority"], -INTERFACE_PRIORITY.get(s["interface"], 0)))
    return ordered
