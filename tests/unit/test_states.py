"""Walk the provision state table and check what a user of the API would notice."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ironworks.states import (
    ACTIVE_FLOW_STATES,
    FAILURE_STATES,
    HOLD_STATES,
    INTERNAL_EVENTS,
    STABLE_STATES,
    TIMEOUT_MESSAGES,
    TRANSITIONS,
    USER_EVENTS,
    VERBS,
    WAIT_STATES,
    Event,
    InvalidTransitionError,
    State,
    Transition,
    advance,
    allowed_events,
    verb_to_event,
)

S, E = State, Event


def _edges_from(state: State) -> dict[Event, State]:
    return {ev: dst for (src, ev), dst in TRANSITIONS.items() if src is state}


def _reachable(start: State) -> set[State]:
    seen, todo = {start}, deque([start])
    while todo:
        for dst in _edges_from(todo.popleft()).values():
            if dst not in seen:
                seen.add(dst)
                todo.append(dst)
    return seen


# -- the shape of the table ------------------------------------------------------------------------


def test_every_state_is_in_exactly_one_group() -> None:
    groups = [STABLE_STATES, WAIT_STATES, HOLD_STATES, ACTIVE_FLOW_STATES]
    assert sum(len(g) for g in groups) == len(State)
    assert frozenset().union(*groups) == set(State)
    assert FAILURE_STATES <= STABLE_STATES


def test_every_state_is_reachable_from_enroll() -> None:
    assert set(State) - _reachable(S.ENROLL) == set()


@pytest.mark.parametrize("state", list(State), ids=str)
def test_every_state_can_come_to_rest(state: State) -> None:
    assert _reachable(state) & STABLE_STATES, f"{state} can never reach a stable state"


@pytest.mark.parametrize("state", sorted(STABLE_STATES), ids=str)
def test_a_stable_state_leaves_only_on_a_user_request(state: State) -> None:
    assert set(_edges_from(state)) <= USER_EVENTS


def test_every_event_is_used() -> None:
    assert {ev for (_, ev) in TRANSITIONS} == set(Event)


# -- waiting, holding and working states ----------------------------------------------------------


@pytest.mark.parametrize("state", sorted(WAIT_STATES), ids=str)
def test_a_wait_state_can_fail_time_out_and_be_aborted(state: State) -> None:
    edges = _edges_from(state)
    assert edges[E.FAIL] in FAILURE_STATES
    assert edges[E.TIMEOUT] in FAILURE_STATES
    # Ironic allows abort in every wait state; abort lands where a failure would.
    assert edges[E.ABORT] == edges[E.FAIL]


@pytest.mark.parametrize("state", sorted(WAIT_STATES), ids=str)
def test_a_wait_state_resumes_into_the_state_that_entered_it(state: State) -> None:
    (entered_from,) = [src for (src, ev), dst in TRANSITIONS.items() if ev is E.WAIT and dst is state]
    assert _edges_from(state)[E.RESUME] is entered_from


def test_only_wait_states_time_out_and_each_has_a_message() -> None:
    timing_out = {src for (src, ev) in TRANSITIONS if ev is E.TIMEOUT}
    assert timing_out == WAIT_STATES
    assert set(TIMEOUT_MESSAGES) == WAIT_STATES
    for state, message in TIMEOUT_MESSAGES.items():
        assert message.startswith("Timeout reached"), state


@pytest.mark.parametrize("state", sorted(HOLD_STATES), ids=str)
def test_a_hold_state_waits_for_unhold_or_abort(state: State) -> None:
    edges = _edges_from(state)
    assert edges[E.UNHOLD] in WAIT_STATES
    assert edges[E.ABORT] in FAILURE_STATES
    assert E.TIMEOUT not in edges
    # the wait state that the hold releases into is the one that can put the node on hold
    assert TRANSITIONS[(edges[E.UNHOLD], E.HOLD)] is state


@pytest.mark.parametrize("state", sorted(ACTIVE_FLOW_STATES), ids=str)
def test_a_working_state_can_finish_and_can_fail(state: State) -> None:
    edges = _edges_from(state)
    onward = {dst for ev, dst in edges.items() if ev not in {E.FAIL, E.ABORT, E.TIMEOUT} and dst not in FAILURE_STATES}
    assert onward, f"{state} has no way forward"
    # a failing flow comes to rest, so the operator can act on the node
    assert edges[E.FAIL] in STABLE_STATES


# -- the target a user sees in target_provision_state ---------------------------------------------


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (S.ENROLL, E.MANAGE, (S.VERIFYING, S.MANAGEABLE)),
        (S.MANAGEABLE, E.CLEAN, (S.CLEANING, S.MANAGEABLE)),
        (S.MANAGEABLE, E.PROVIDE, (S.CLEANING, S.AVAILABLE)),
        (S.MANAGEABLE, E.INSPECT, (S.INSPECTING, S.MANAGEABLE)),
        (S.MANAGEABLE, E.ADOPT, (S.ADOPTING, S.ACTIVE)),
        (S.AVAILABLE, E.DEPLOY, (S.DEPLOYING, S.ACTIVE)),
        (S.ACTIVE, E.REBUILD, (S.DEPLOYING, S.ACTIVE)),
        (S.ACTIVE, E.DELETE, (S.DELETING, S.AVAILABLE)),
        (S.ACTIVE, E.RESCUE, (S.RESCUING, S.RESCUE)),
        (S.RESCUE, E.UNRESCUE, (S.UNRESCUING, S.ACTIVE)),
        (S.ACTIVE, E.SERVICE, (S.SERVICING, S.ACTIVE)),
    ],
)
def test_a_user_request_sets_the_target(state: State, event: Event, expected: tuple[State, State]) -> None:
    step = advance(state, event)
    assert (step.state, step.target) == expected


def test_a_new_request_replaces_the_target_of_the_flow_it_interrupts() -> None:
    step = advance(S.DEPLOY_WAIT, E.DELETE, target=S.ACTIVE)
    assert (step.state, step.target) == (S.DELETING, S.AVAILABLE)


def test_a_manual_clean_keeps_heading_for_manageable_through_wait_and_hold() -> None:
    step = advance(S.MANAGEABLE, E.CLEAN)
    for event, state in [
        (E.WAIT, S.CLEAN_WAIT),
        (E.HOLD, S.CLEAN_HOLD),
        (E.UNHOLD, S.CLEAN_WAIT),
        (E.RESUME, S.CLEANING),
    ]:
        step = advance(step.state, event, target=step.target)
        assert (step.state, step.target) == (state, S.MANAGEABLE)
    step = advance(step.state, E.MANAGE, target=step.target)
    assert (step.state, step.target) == (S.MANAGEABLE, None)


def test_an_internal_event_without_a_recorded_target_uses_the_default() -> None:
    assert advance(S.CLEANING, E.WAIT).target is S.AVAILABLE


@pytest.mark.parametrize(
    ("state", "event", "target", "rest"),
    [
        (S.DEPLOYING, E.DONE, S.ACTIVE, S.ACTIVE),
        (S.CLEANING, E.DONE, S.AVAILABLE, S.AVAILABLE),
        (S.CLEAN_WAIT, E.TIMEOUT, S.MANAGEABLE, S.CLEAN_FAILED),
        (S.VERIFYING, E.FAIL, S.MANAGEABLE, S.ENROLL),
        (S.DELETING, E.FAIL, S.AVAILABLE, S.ERROR),
    ],
)
def test_coming_to_rest_clears_the_target(state: State, event: Event, target: State, rest: State) -> None:
    assert advance(state, event, target=target) == Transition(rest, None)


# -- refusing what the table does not allow -------------------------------------------------------


def test_an_invalid_request_names_the_state_the_action_and_what_is_allowed() -> None:
    with pytest.raises(InvalidTransitionError) as caught:
        advance(S.ENROLL, E.DEPLOY)
    assert (caught.value.state, caught.value.event) == (S.ENROLL, E.DEPLOY)
    message = str(caught.value)
    assert '"deploy"' in message
    assert '"enroll"' in message
    assert message.endswith("Allowed actions from this state: manage.")


def test_an_invalid_request_on_a_busy_node_says_nothing_is_allowed() -> None:
    with pytest.raises(InvalidTransitionError, match=r'"manage".*"verifying".*actions from this state: none\.'):
        advance(S.VERIFYING, E.MANAGE)


def test_manage_on_a_manageable_node_is_refused_as_in_ironic() -> None:
    with pytest.raises(InvalidTransitionError):
        advance(S.MANAGEABLE, E.MANAGE)


def test_allowed_events_follow_the_table() -> None:
    assert allowed_events(S.ENROLL) == [E.MANAGE]
    assert set(allowed_events(S.CLEAN_HOLD)) == {E.UNHOLD, E.ABORT}


# -- API verbs --------------------------------------------------------------------------------------


def test_every_ironic_verb_maps_to_its_event() -> None:
    assert VERBS == {
        "manage": E.MANAGE,
        "provide": E.PROVIDE,
        "inspect": E.INSPECT,
        "active": E.DEPLOY,
        "deploy": E.DEPLOY,  # alias since API 1.73
        "rebuild": E.REBUILD,
        "deleted": E.DELETE,
        "undeploy": E.DELETE,  # alias since API 1.73
        "clean": E.CLEAN,
        "rescue": E.RESCUE,
        "unrescue": E.UNRESCUE,
        "abort": E.ABORT,
        "adopt": E.ADOPT,
        "service": E.SERVICE,
        "unhold": E.UNHOLD,
    }
    assert verb_to_event("active") is E.DEPLOY
    with pytest.raises(KeyError):
        verb_to_event("explode")


def test_user_events_are_the_verbs_and_the_rest_are_internal() -> None:
    assert frozenset(VERBS.values()) == USER_EVENTS
    assert USER_EVENTS.isdisjoint(INTERNAL_EVENTS)
    assert set(Event) == USER_EVENTS | INTERNAL_EVENTS


# -- any sequence of events -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_any_sequence_of_events_keeps_the_node_in_a_known_state(data: st.DataObject) -> None:
    state, target = S.ENROLL, None
    for _ in range(data.draw(st.integers(min_value=0, max_value=80), label="steps")):
        # mostly events the state accepts, so walks get far; sometimes any event at all
        event = data.draw(st.sampled_from(allowed_events(state)) | st.sampled_from(list(Event)))
        if (state, event) not in TRANSITIONS:
            with pytest.raises(InvalidTransitionError):
                advance(state, event, target=target)
            continue
        step = advance(state, event, target=target)
        state, target = step.state, step.target
        assert state in set(State)
        if state in STABLE_STATES:
            assert target is None
        else:
            assert target in STABLE_STATES
