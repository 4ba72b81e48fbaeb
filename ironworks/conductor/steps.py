"""Collecting, ordering, validating and running steps (clean, deploy, service).

Automated steps are the steps of a node's interfaces with priority > 0, highest first; ties are
broken by interface as Ironic does (``INTERFACE_PRIORITY``: vendor, power, management, deploy,
firmware, bios, raid). Manual steps run in the order given. Reserved steps need no interface
method: ``power_on``, ``power_off``, ``reboot`` (interface ``power``), ``wait`` (``seconds``) and
``hold`` (any interface).

Steps the agent reports: when the agent is up in a flow, the deploy interface asks it for its
steps of that kind and caches them in ``driver_internal_info["agent_cached_<kind>_steps"]``
(Ironic's shape: ``{interface: [step, ...]}``). Requested ``deploy`` steps are then checked
against the static steps and that cache; while the cache is empty, a ``deploy`` step nobody knows
yet is accepted for the ``agent`` deploy interface and checked by ``replan`` once the agent
answers. ``replan`` also honours the agent's priorities (> 0) in automated flows.
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


def cached_agent_steps(driver_internal_info: dict[str, Any], kind: str) -> list[dict[str, Any]] | None:
    """The ``kind`` steps the node's agent reported last (flat), or None if it was never asked."""
    cached = driver_internal_info.get(f"agent_cached_{kind}_steps")
    if not isinstance(cached, dict):
        return None
    return [s for steps in cached.values() if isinstance(steps, list) for s in steps if isinstance(s, dict)]


def takes_agent_steps(driver: Driver) -> bool:
    """Whether the node's deploy interface runs steps the agent reports (the ``agent`` deploy)."""
    return bool(getattr(driver.interfaces.get("deploy"), "runs_reported_steps", False))


def reported_info(kind: str, step: dict[str, Any]) -> StepInfo:
    """A step as the agent described it."""
    argsinfo = step.get("argsinfo")
    prio = step.get("priority")
    return StepInfo(
        kind=kind,
        name=str(step.get("step")),
        priority=prio if isinstance(prio, int) and not isinstance(prio, bool) and prio >= 0 else 0,
        abortable=bool(step.get("abortable")),
        argsinfo=dict(argsinfo) if isinstance(argsinfo, dict) else {},
        requires_ramdisk=True,
    )


def _reported(reported: list[dict[str, Any]] | None, interface: str, name: str) -> dict[str, Any] | None:
    return next((s for s in reported or [] if s.get("interface") == interface and s.get("step") == name), None)


def is_static(driver: Driver, kind: str, interface: str, name: str) -> bool:
    """Whether ``interface.name`` is a step the node's driver declares itself (or a reserved one)."""
    return _find(driver, kind, interface, name) is not None


def _find(driver: Driver, kind: str, interface: str, name: str) -> StepInfo | None:
    if name in RESERVED and (name not in _POWER_ONLY or interface == "power"):
        return RESERVED[name]
    impl = driver.interfaces.get(interface)
    if impl is None:
        return None
    return next((i for i in steps_of(impl, kind) if i.name == name), None)


def validate_requested(
    driver: Driver,
    kind: str,
    requested: Any,
    *,
    with_priority: bool = False,
    reported: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Check operator-given steps (``clean_steps``/``service_steps``/``deploy_steps``); normalized.

    ``reported`` is what the node's agent last reported (``cached_agent_steps``), None if never
    asked. Raises ``InvalidInput`` listing every problem, so the operator can fix them in one go.
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
        unverified = False
        if info is None and (agent_step := _reported(reported, iface, name)) is not None:
            info = reported_info(kind, agent_step)
        elif info is None and reported is None and iface == "deploy" and takes_agent_steps(driver):
            # the agent was never asked: its answer decides once it is up (replan), never silently
            info, unverified = StepInfo(kind=kind, name=name, priority=0, requires_ramdisk=True), True
        if info is None:
            names = sorted({f"{s['interface']}.{s['step']}" for s in available_steps(driver, kind)})
            names += sorted({f"{s.get('interface')}.{s.get('step')}" for s in reported or []} - set(names))
            names += [f"power.{r}" for r in sorted(_POWER_ONLY)] + ["<any>.wait", "<any>.hold"]
            source = " or by the agent on it (as it last reported)" if reported is not None else ""
            problems.append(
                f"{field}[{n}]: {kind} step {iface}.{name} is not supported by this node's driver{source}; "
                f"available: {', '.join(names)}"
            )
            continue
        if not unverified:
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


class StepsRejected(InvalidInput):
    """The agent does not offer a requested step, or refuses its arguments."""

    reason = "agent_step_unknown"


def replan(
    driver: Driver,
    kind: str,
    plan: list[dict[str, Any]],
    index: int,
    reported: list[dict[str, Any]],
    *,
    automated: bool,
    overrides: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """The plan once the agent reported its ``kind`` steps; raises ``StepsRejected``.

    Every remaining ``deploy`` step the driver does not declare itself must be one the agent
    reports, with arguments its ``argsinfo`` accepts. In an automated flow (automated cleaning,
    deployment) the agent's priorities > 0 are honoured for the steps it runs (our static defaults
    stay otherwise), agent steps with priority > 0 are added, and ``overrides`` (step name ->
    priority, the operator's configuration) win over both. Steps before ``index`` are done and the
    one at ``index`` has started: neither moves.
    """
    problems: list[str] = []
    rest: list[dict[str, Any]] = []
    for step in plan[index:]:
        iface, name = step["interface"], step["step"]
        if iface != "deploy" or is_static(driver, kind, iface, name):
            rest.append(step)
            continue
        agent_step = _reported(reported, iface, name)
        if agent_step is None:
            problems.append(f"{kind} step {iface}.{name} is not offered by the agent on this machine")
            continue
        info = reported_info(kind, agent_step)
        problems.extend(check_args(info, step.get("args") or {}))
        rest.append(dict(step, abortable=info.abortable, argsinfo=info.argsinfo or None))
    if problems:
        offered = sorted(f"{s.get('interface')}.{s.get('step')}" for s in reported)
        raise StepsRejected(
            f"{'; '.join(problems)}. The agent offers these {kind} steps: {', '.join(offered) or 'none'}. "
            "Request one of them (a vendor step needs its hardware manager installed in the ramdisk)."
        )
    if not automated or not rest:
        return plan[:index] + rest
    current, rest = rest[0], rest[1:]
    taken = {(s["interface"], s["step"]) for s in plan[: index + 1]}
    present = {(s["interface"], s["step"]) for s in rest}
    for agent_step in reported:
        iface, name = str(agent_step.get("interface")), str(agent_step.get("step"))
        info = reported_info(kind, agent_step)
        static = _find(driver, kind, iface, name)
        if static is not None and not static.requires_ramdisk:
            continue  # a conductor-side step of the same name (write_image): ours runs, at our priority
        prio = (overrides or {}).get(name, info.priority)
        if (iface, name) in present and prio > 0:
            rest = [dict(s, priority=prio) if (s["interface"], s["step"]) == (iface, name) else s for s in rest]
        elif (iface, name) not in taken and prio > 0 and (static is not None or iface == "deploy"):
            rest.append(step_dict(iface, static or info) | {"priority": prio, "abortable": info.abortable})
    rest.sort(key=lambda s: (-s["priority"], -INTERFACE_PRIORITY.get(s["interface"], 0), s["step"]))
    return [*plan[:index], current, *rest]
