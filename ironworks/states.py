"""The provision state machine: one literal table.

States, events and API verbs are the ones OpenStack Ironic uses on the wire, so existing clients
(``baremetal``, openstacksdk) see the states they expect. Every transition is one line of
``TRANSITIONS``; ``advance()`` is the only function that steps the machine. Maintenance is not a
state: it is a flag on the node (with a reason and a fault).

Events come in two kinds:

* *user* events, requested through the API (``manage``, ``provide``, ``deploy`` ...), which start a
  flow and set the node's ``target_provision_state``;
* *internal* events, raised by the conductor while a flow runs (``done``, ``fail``, ``wait``,
  ``resume``, ``hold``, ``timeout``), which keep the target of the flow in progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """A provision state, spelled as Ironic spells it."""

    ENROLL = "enroll"
    VERIFYING = "verifying"
    MANAGEABLE = "manageable"
    INSPECTING = "inspecting"
    INSPECT_WAIT = "inspect wait"
    INSPECT_FAILED = "inspect failed"
    AVAILABLE = "available"
    DEPLOYING = "deploying"
    DEPLOY_WAIT = "wait call-back"
    DEPLOY_HOLD = "deploy hold"
    DEPLOY_FAILED = "deploy failed"
    ACTIVE = "active"
    DELETING = "deleting"
    CLEANING = "cleaning"
    CLEAN_WAIT = "clean wait"
    CLEAN_HOLD = "clean hold"
    CLEAN_FAILED = "clean failed"
    ERROR = "error"
    RESCUING = "rescuing"
    RESCUE_WAIT = "rescue wait"
    RESCUE = "rescue"
    RESCUE_FAILED = "rescue failed"
    UNRESCUING = "unrescuing"
    UNRESCUE_FAILED = "unrescue failed"
    SERVICING = "servicing"
    SERVICE_WAIT = "service wait"
    SERVICE_HOLD = "service hold"
    SERVICE_FAILED = "service failed"
    ADOPTING = "adopting"
    ADOPT_FAILED = "adopt failed"


class Event(StrEnum):
    """Something that moves a node from one state to another."""

    # user events (API verbs map onto these, see VERBS)
    MANAGE = "manage"
    PROVIDE = "provide"
    INSPECT = "inspect"
    DEPLOY = "deploy"
    REBUILD = "rebuild"
    DELETE = "delete"
    CLEAN = "clean"
    RESCUE = "rescue"
    UNRESCUE = "unrescue"
    ABORT = "abort"
    ADOPT = "adopt"
    SERVICE = "service"
    UNHOLD = "unhold"
    # internal events, raised by the conductor
    DONE = "done"
    FAIL = "fail"
    WAIT = "wait"
    RESUME = "resume"
    HOLD = "hold"
    TIMEOUT = "timeout"


S, E = State, Event

#: Every edge of the machine: (state, event) -> next state. One edge a line.
TRANSITIONS: dict[tuple[State, Event], State] = {
    # enrollment: verify that the BMC answers, then manageable
    (S.ENROLL, E.MANAGE): S.VERIFYING,
    (S.VERIFYING, E.DONE): S.MANAGEABLE,
    (S.VERIFYING, E.FAIL): S.ENROLL,
    # manageable: the operator's workbench
    (S.MANAGEABLE, E.PROVIDE): S.CLEANING,
    (S.MANAGEABLE, E.CLEAN): S.CLEANING,
    (S.MANAGEABLE, E.INSPECT): S.INSPECTING,
    (S.MANAGEABLE, E.ADOPT): S.ADOPTING,
    # inspection
    (S.INSPECTING, E.DONE): S.MANAGEABLE,
    (S.INSPECTING, E.FAIL): S.INSPECT_FAILED,
    (S.INSPECTING, E.WAIT): S.INSPECT_WAIT,
    (S.INSPECT_WAIT, E.RESUME): S.INSPECTING,
    (S.INSPECT_WAIT, E.DONE): S.MANAGEABLE,
    (S.INSPECT_WAIT, E.FAIL): S.INSPECT_FAILED,
    (S.INSPECT_WAIT, E.TIMEOUT): S.INSPECT_FAILED,
    (S.INSPECT_WAIT, E.ABORT): S.INSPECT_FAILED,
    (S.INSPECT_FAILED, E.MANAGE): S.MANAGEABLE,
    (S.INSPECT_FAILED, E.INSPECT): S.INSPECTING,
    # cleaning (automated from provide/undeploy, manual from manageable)
    (S.CLEANING, E.DONE): S.AVAILABLE,
    (S.CLEANING, E.MANAGE): S.MANAGEABLE,
    (S.CLEANING, E.FAIL): S.CLEAN_FAILED,
    (S.CLEANING, E.WAIT): S.CLEAN_WAIT,
    (S.CLEANING, E.HOLD): S.CLEAN_HOLD,
    (S.CLEAN_WAIT, E.RESUME): S.CLEANING,
    (S.CLEAN_WAIT, E.FAIL): S.CLEAN_FAILED,
    (S.CLEAN_WAIT, E.TIMEOUT): S.CLEAN_FAILED,
    (S.CLEAN_WAIT, E.ABORT): S.CLEAN_FAILED,
    (S.CLEAN_WAIT, E.HOLD): S.CLEAN_HOLD,
    (S.CLEAN_HOLD, E.UNHOLD): S.CLEAN_WAIT,
    (S.CLEAN_HOLD, E.ABORT): S.CLEAN_FAILED,
    (S.CLEAN_FAILED, E.MANAGE): S.MANAGEABLE,
    # available: ready for a workload
    (S.AVAILABLE, E.MANAGE): S.MANAGEABLE,
    (S.AVAILABLE, E.DEPLOY): S.DEPLOYING,
    # deployment
    (S.DEPLOYING, E.DONE): S.ACTIVE,
    (S.DEPLOYING, E.FAIL): S.DEPLOY_FAILED,
    (S.DEPLOYING, E.WAIT): S.DEPLOY_WAIT,
    (S.DEPLOYING, E.HOLD): S.DEPLOY_HOLD,
    (S.DEPLOY_WAIT, E.RESUME): S.DEPLOYING,
    (S.DEPLOY_WAIT, E.FAIL): S.DEPLOY_FAILED,
    (S.DEPLOY_WAIT, E.TIMEOUT): S.DEPLOY_FAILED,
    (S.DEPLOY_WAIT, E.ABORT): S.DEPLOY_FAILED,
    (S.DEPLOY_WAIT, E.DELETE): S.DELETING,
    (S.DEPLOY_WAIT, E.HOLD): S.DEPLOY_HOLD,
    (S.DEPLOY_HOLD, E.UNHOLD): S.DEPLOY_WAIT,
    (S.DEPLOY_HOLD, E.ABORT): S.DEPLOY_FAILED,
    (S.DEPLOY_FAILED, E.DEPLOY): S.DEPLOYING,
    (S.DEPLOY_FAILED, E.REBUILD): S.DEPLOYING,
    (S.DEPLOY_FAILED, E.DELETE): S.DELETING,
    # active: a workload runs
    (S.ACTIVE, E.REBUILD): S.DEPLOYING,
    (S.ACTIVE, E.DELETE): S.DELETING,
    (S.ACTIVE, E.RESCUE): S.RESCUING,
    (S.ACTIVE, E.SERVICE): S.SERVICING,
    # undeploy: tear down, then automated cleaning
    (S.DELETING, E.CLEAN): S.CLEANING,
    (S.DELETING, E.FAIL): S.ERROR,
    (S.ERROR, E.REBUILD): S.DEPLOYING,
    (S.ERROR, E.DELETE): S.DELETING,
    # rescue
    (S.RESCUING, E.DONE): S.RESCUE,
    (S.RESCUING, E.WAIT): S.RESCUE_WAIT,
    (S.RESCUING, E.FAIL): S.RESCUE_FAILED,
    (S.RESCUE_WAIT, E.RESUME): S.RESCUING,
    (S.RESCUE_WAIT, E.FAIL): S.RESCUE_FAILED,
    (S.RESCUE_WAIT, E.TIMEOUT): S.RESCUE_FAILED,
    (S.RESCUE_WAIT, E.ABORT): S.RESCUE_FAILED,
    (S.RESCUE_WAIT, E.DELETE): S.DELETING,
    (S.RESCUE, E.RESCUE): S.RESCUING,
    (S.RESCUE, E.UNRESCUE): S.UNRESCUING,
    (S.RESCUE, E.DELETE): S.DELETING,
    (S.RESCUE_FAILED, E.RESCUE): S.RESCUING,
    (S.RESCUE_FAILED, E.UNRESCUE): S.UNRESCUING,
    (S.RESCUE_FAILED, E.DELETE): S.DELETING,
    (S.UNRESCUING, E.DONE): S.ACTIVE,
    (S.UNRESCUING, E.FAIL): S.UNRESCUE_FAILED,
    (S.UNRESCUE_FAILED, E.RESCUE): S.RESCUING,
    (S.UNRESCUE_FAILED, E.UNRESCUE): S.UNRESCUING,
    (S.UNRESCUE_FAILED, E.DELETE): S.DELETING,
    # servicing: steps on an active node
    (S.SERVICING, E.DONE): S.ACTIVE,
    (S.SERVICING, E.FAIL): S.SERVICE_FAILED,
    (S.SERVICING, E.WAIT): S.SERVICE_WAIT,
    (S.SERVICING, E.HOLD): S.SERVICE_HOLD,
    (S.SERVICE_WAIT, E.RESUME): S.SERVICING,
    (S.SERVICE_WAIT, E.FAIL): S.SERVICE_FAILED,
    (S.SERVICE_WAIT, E.TIMEOUT): S.SERVICE_FAILED,
    (S.SERVICE_WAIT, E.ABORT): S.SERVICE_FAILED,
    (S.SERVICE_WAIT, E.HOLD): S.SERVICE_HOLD,
    (S.SERVICE_WAIT, E.DELETE): S.DELETING,
    (S.SERVICE_HOLD, E.UNHOLD): S.SERVICE_WAIT,
    (S.SERVICE_HOLD, E.ABORT): S.SERVICE_FAILED,
    (S.SERVICE_HOLD, E.FAIL): S.SERVICE_FAILED,
    (S.SERVICE_HOLD, E.SERVICE): S.SERVICING,
    (S.SERVICE_FAILED, E.SERVICE): S.SERVICING,
    (S.SERVICE_FAILED, E.ABORT): S.ACTIVE,
    (S.SERVICE_FAILED, E.RESCUE): S.RESCUING,
    (S.SERVICE_FAILED, E.DELETE): S.DELETING,
    # adoption: take over a node that already runs a workload
    (S.ADOPTING, E.DONE): S.ACTIVE,
    (S.ADOPTING, E.FAIL): S.ADOPT_FAILED,
    (S.ADOPT_FAILED, E.ADOPT): S.ADOPTING,
    (S.ADOPT_FAILED, E.MANAGE): S.MANAGEABLE,
}

#: API verbs (``PUT /v1/nodes/{id}/states/provision`` ``target``) -> event.
VERBS: dict[str, Event] = {
    "manage": E.MANAGE,
    "provide": E.PROVIDE,
    "inspect": E.INSPECT,
    "active": E.DEPLOY,
    "deploy": E.DEPLOY,
    "rebuild": E.REBUILD,
    "deleted": E.DELETE,
    "undeploy": E.DELETE,
    "clean": E.CLEAN,
    "rescue": E.RESCUE,
    "unrescue": E.UNRESCUE,
    "abort": E.ABORT,
    "adopt": E.ADOPT,
    "service": E.SERVICE,
    "unhold": E.UNHOLD,
}

USER_EVENTS = frozenset(VERBS.values())
INTERNAL_EVENTS = frozenset({E.DONE, E.FAIL, E.WAIT, E.RESUME, E.HOLD, E.TIMEOUT})

#: States in which no flow runs: the node stays here until someone asks for something.
STABLE_STATES = frozenset(
    {S.ENROLL, S.MANAGEABLE, S.AVAILABLE, S.ACTIVE, S.RESCUE, S.ERROR}
    | {S.INSPECT_FAILED, S.CLEAN_FAILED, S.DEPLOY_FAILED, S.RESCUE_FAILED, S.UNRESCUE_FAILED}
    | {S.SERVICE_FAILED, S.ADOPT_FAILED}
)
FAILURE_STATES = frozenset(
    {S.INSPECT_FAILED, S.CLEAN_FAILED, S.DEPLOY_FAILED, S.RESCUE_FAILED, S.UNRESCUE_FAILED}
    | {S.SERVICE_FAILED, S.ADOPT_FAILED, S.ERROR}
)
#: Waiting for something outside the conductor (the agent, a BMC task, a timer). They time out.
WAIT_STATES = frozenset({S.INSPECT_WAIT, S.CLEAN_WAIT, S.DEPLOY_WAIT, S.RESCUE_WAIT, S.SERVICE_WAIT})
#: Paused by a ``hold`` step until the operator sends ``unhold`` (or ``abort``). They never time out.
HOLD_STATES = frozenset({S.CLEAN_HOLD, S.DEPLOY_HOLD, S.SERVICE_HOLD})
#: A conductor works on the node right now (it holds, or is about to take, the node's lock).
ACTIVE_FLOW_STATES = frozenset(
    {S.VERIFYING, S.INSPECTING, S.DEPLOYING, S.DELETING, S.CLEANING, S.RESCUING, S.UNRESCUING}
    | {S.SERVICING, S.ADOPTING}
)
#: Nodes in these states may be deleted through the API.
DELETE_ALLOWED_STATES = frozenset(
    {S.ENROLL, S.MANAGEABLE, S.AVAILABLE, S.INSPECT_FAILED, S.CLEAN_FAILED, S.ADOPT_FAILED}
)
#: Nodes in these states may have their driver and interfaces changed.
UPDATE_ALLOWED_STATES = frozenset(
    {S.ENROLL, S.MANAGEABLE, S.AVAILABLE, S.INSPECT_FAILED, S.CLEAN_FAILED, S.INSPECT_WAIT}
)

#: Where a flow that enters a state is heading, unless the starting edge says otherwise.
_DEFAULT_TARGET: dict[State, State] = {
    S.VERIFYING: S.MANAGEABLE,
    S.INSPECTING: S.MANAGEABLE,
    S.INSPECT_WAIT: S.MANAGEABLE,
    S.CLEANING: S.AVAILABLE,
    S.CLEAN_WAIT: S.AVAILABLE,
    S.CLEAN_HOLD: S.AVAILABLE,
    S.DEPLOYING: S.ACTIVE,
    S.DEPLOY_WAIT: S.ACTIVE,
    S.DEPLOY_HOLD: S.ACTIVE,
    S.DELETING: S.AVAILABLE,
    S.RESCUING: S.RESCUE,
    S.RESCUE_WAIT: S.RESCUE,
    S.UNRESCUING: S.ACTIVE,
    S.SERVICING: S.ACTIVE,
    S.SERVICE_WAIT: S.ACTIVE,
    S.SERVICE_HOLD: S.ACTIVE,
    S.ADOPTING: S.ACTIVE,
}
#: Starting edges whose target differs from the default of the state they enter.
_EDGE_TARGET: dict[tuple[State, Event], State] = {
    (S.MANAGEABLE, E.CLEAN): S.MANAGEABLE,  # manual cleaning returns to manageable
}

#: User events that release the flow in progress rather than start one: they keep its target, so a
#: manual clean released from ``clean hold`` still returns to manageable.
_RESUMING_USER_EVENTS = frozenset({E.UNHOLD})

#: Where a node in a wait state goes when its timeout expires, and the error it records.
TIMEOUT_MESSAGES: dict[State, str] = {
    S.INSPECT_WAIT: "Timeout reached while inspecting the node: the ramdisk did not report back.",
    S.CLEAN_WAIT: "Timeout reached while cleaning the node: the agent or BMC task did not report back.",
    S.DEPLOY_WAIT: "Timeout reached while waiting for the agent to call back during deployment.",
    S.RESCUE_WAIT: "Timeout reached while waiting for the rescue ramdisk to call back.",
    S.SERVICE_WAIT: "Timeout reached while servicing the node: the agent or BMC task did not report back.",
}


class InvalidTransitionError(ValueError):
    """``event`` is not allowed in ``state``."""

    def __init__(self, state: State, event: Event) -> None:
        self.state, self.event = state, event
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s == state and e in USER_EVENTS)
        super().__init__(
            f'The requested action "{event.value}" can not be performed on a node in state '
            f'"{state.value}". Allowed actions from this state: {", ".join(allowed) or "none"}.'
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """The result of stepping the machine: where the node is now and where it is heading."""

    state: State
    target: State | None


def advance(state: State, event: Event, *, target: State | None = None) -> Transition:
    """Step the machine from ``state`` on ``event``; ``target`` is the current target, if any.

    User events start a flow and compute a new target; internal events (and ``unhold``, which
    releases a held flow) keep the flow's target until the node reaches a stable state, where the
    target is cleared.
    """
    try:
        nxt = TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransitionError(state, event) from None
    if nxt in STABLE_STATES:
        return Transition(nxt, None)
    if event in USER_EVENTS and event not in _RESUMING_USER_EVENTS:
        new_target = _EDGE_TARGET.get((state, event), _DEFAULT_TARGET[nxt])
    else:
        new_target = target or _DEFAULT_TARGET[nxt]
    return Transition(nxt, new_target)


def allowed_events(state: State) -> list[Event]:
    """The events a node in ``state`` accepts, in table order."""
    return [e for (s, e) in TRANSITIONS if s == state]


def verb_to_event(verb: str) -> Event:
    """Map an API ``target`` verb to its event; ``KeyError`` if unknown."""
    return VERBS[verb]


def to_dot() -> str:
    """Graphviz source of the machine, generated from the table (docs/states.dot)."""
    lines = ["digraph provision_states {", '  rankdir="LR";', "  node [shape=box, fontsize=10];"]
    for st in State:
        style = ""
        if st in FAILURE_STATES:
            style = ', color="red"'
        elif st in STABLE_STATES:
            style = ', style="bold"'
        elif st in WAIT_STATES or st in HOLD_STATES:
            style = ', style="dashed"'
        lines.append(f'  "{st.value}" [label="{st.value}"{style}];')
    for (src, ev), dst in TRANSITIONS.items():
        color = "blue" if ev in USER_EVENTS else "gray40"
        lines.append(f'  "{src.value}" -> "{dst.value}" [label="{ev.value}", color="{color}", fontsize=9];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid() -> str:
    """Mermaid state diagram of the machine, generated from the table (embedded in docs/states.md)."""
    ids = {st: st.name.lower() for st in State}
    lines = ["stateDiagram-v2"]
    for st in State:
        lines.append(f'    state "{st.value}" as {ids[st]}')
    lines.append("    [*] --> enroll")
    for (src, ev), dst in TRANSITIONS.items():
        lines.append(f"    {ids[src]} --> {ids[dst]}: {ev.value}")
    return "\n".join(lines) + "\n"
