"""``--wait``: poll a node after the API accepted a request, until it settles, showing progress on stderr.

Judging one observed status is a pure function (:func:`judge_provision`, :func:`judge_power`) that
returns an explicit :class:`Verdict`; :func:`wait_for` only polls, shows and sleeps. The verdicts
assume what Ironic guarantees: by the time the API answers 202 the node has a target state (or has
already left its starting state), so a stale stable state is never mistaken for the end of the flow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from ironworks.cli.client import IronicClient, Json
from ironworks.cli.connection import CommandFailed, Seams
from ironworks.cli.output import print_note, stderr_console

PROVISION_FIELDS = (
    "provision_state",
    "target_provision_state",
    "last_error",
    "clean_step",
    "deploy_step",
    "service_step",
    "driver_internal_info",
)
POWER_FIELDS = ("power_state", "target_power_state", "last_error")

#: Provision verb, as the CLI spells it -> the stable state ``--wait`` waits for.
#: ``None`` (abort): whatever state the node settles in, failed states included.
EXPECTED_STATES: dict[str, str | None] = {
    "manage": "manageable",  # enroll -> verifying -> manageable
    "provide": "available",
    "inspect": "manageable",
    "deploy": "active",
    "rebuild": "active",
    "undeploy": "available",  # deleting -> cleaning -> available
    "clean": "manageable",
    "service": "active",
    "rescue": "rescue",
    "unrescue": "active",
    "abort": None,
}


class Verdict(StrEnum):
    """What one observed status means for the wait."""

    WAITING = "waiting"
    REACHED = "reached"
    FAILED = "failed"


def is_failure_state(state: str) -> bool:
    """Whether a provision state is one a flow ends in when it fails."""
    return state == "error" or state.endswith(" failed")


def judge_provision(status: Mapping[str, Any], expected: str | None) -> Verdict:
    """Judge a provision status against the state the wait expects."""
    state = str(status.get("provision_state") or "")
    target = status.get("target_provision_state")
    if expected is None:
        return Verdict.REACHED if not target or is_failure_state(state) else Verdict.WAITING
    if state == expected and not target:
        return Verdict.REACHED
    if is_failure_state(state):
        return Verdict.FAILED
    # A failed verification sends the node back to enroll, not to a "failed" state.
    if expected == "manageable" and state == "enroll" and not target and status.get("last_error"):
        return Verdict.FAILED
    return Verdict.WAITING


def judge_power(status: Mapping[str, Any], expected: str) -> Verdict:
    """Judge a power status against the power state the wait expects."""
    if status.get("target_power_state"):
        return Verdict.WAITING
    if status.get("power_state") == expected:
        return Verdict.REACHED
    # No target any more but not in the expected state: the conductor gave up and said why.
    return Verdict.FAILED if status.get("last_error") else Verdict.WAITING


def current_step(status: Mapping[str, Any]) -> str | None:
    """The step running now, as ``interface.step``, from whichever of the step fields is set."""
    for field in ("deploy_step", "clean_step", "service_step"):
        step = status.get(field)
        if isinstance(step, dict) and step.get("step"):
            interface = step.get("interface")
            return f"{interface}.{step['step']}" if interface else str(step["step"])
    return None


def step_progress(status: Mapping[str, Any]) -> tuple[float, float | None, str] | None:
    """``(done, total, message)`` the running step reported (e.g. bytes of an image written)."""
    if current_step(status) is None:
        return None
    info = status.get("driver_internal_info")
    progress = info.get("progress") if isinstance(info, dict) else None
    if not isinstance(progress, dict) or progress.get("done") is None:
        return None
    total = progress.get("total")
    return float(progress["done"]), float(total) if total else None, str(progress.get("message") or "")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def describe_provision(status: Mapping[str, Any]) -> str:
    """The provision state, where it heads and the current step, as one phrase."""
    text = str(status.get("provision_state"))
    if status.get("target_provision_state"):
        text += f" -> {status['target_provision_state']}"
    step = current_step(status)
    return f"{text} (step {step})" if step else text


class Eta:
    """Estimates the time left of a step from the progress it reports (first sample to now)."""

    def __init__(self) -> None:
        self._first: tuple[float, float, str] | None = None

    def describe(self, progress: tuple[float, float | None, str] | None, now: float) -> str:
        """``"writing image: 45% of 2.0 GiB, ETA 0:31"``, or ``""`` when nothing is reported."""
        if progress is None:
            self._first = None
            return ""
        done, total, message = progress
        if self._first is None or self._first[2] != message or done < self._first[1]:
            self._first = (now, done, message)
        label = f"{message}: " if message else ""
        if not total:
            return f"{label}{_size(done)}"
        text = f"{label}{100 * done / total:.0f}% of {_size(total)}"
        t0, d0, _ = self._first
        if now > t0 and done > d0:
            left = (total - done) / ((done - d0) / (now - t0))
            text += f", ETA {int(left // 60)}:{int(left % 60):02d}"
        return text


def describe_power(status: Mapping[str, Any]) -> str:
    """The power state and where it heads, as one phrase."""
    text = str(status.get("power_state"))
    if status.get("target_power_state"):
        text += f" -> {status['target_power_state']}"
    return text


@dataclass(frozen=True, kw_only=True)
class Watch:
    """What to poll on a node, how to judge and show it, and what to advise when it fails."""

    goal: str
    state_field: str
    fields: tuple[str, ...]
    judge: Callable[[Mapping[str, Any]], Verdict]
    describe: Callable[[Mapping[str, Any]], str]
    advice: str
    progress: Callable[[Mapping[str, Any]], tuple[float, float | None, str] | None] = lambda _status: None


def provision_watch(verb: str, node: str) -> Watch:
    """The watch for a provision verb."""
    expected = EXPECTED_STATES[verb]
    return Watch(
        goal=f"'{expected}'" if expected else "a stable state",
        state_field="provision_state",
        fields=PROVISION_FIELDS,
        judge=lambda status: judge_provision(status, expected),
        describe=describe_provision,
        advice=f"See what ran with `ironworks node history {node}`, fix the cause, then retry.",
        progress=step_progress,
    )


def power_watch(expected: str, node: str) -> Watch:
    """The watch for a power change that ends in ``expected`` (``power on`` or ``power off``)."""
    return Watch(
        goal=f"'{expected}'",
        state_field="power_state",
        fields=POWER_FIELDS,
        judge=lambda status: judge_power(status, expected),
        describe=describe_power,
        advice=f"Check the BMC address and credentials with `ironworks node validate {node}`, then retry.",
    )


def wait_for(client: IronicClient, node: str, watch: Watch, *, timeout: float, seams: Seams) -> Json:
    """Poll ``node`` until ``watch`` judges it reached (returned) or failed or timed out (raised)."""
    console = stderr_console()
    start = seams.clock()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    eta = Eta()
    # A live spinner only on a terminal; in logs and pipes each change is one printed line instead.
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"{node}: waiting for {watch.goal}")
        shown: str | None = None
        while True:
            status = client.get_node(node, fields=watch.fields)
            elapsed = seams.clock() - start
            text = watch.describe(status)
            reported = watch.progress(status)
            detail = eta.describe(reported, elapsed)
            if reported is not None and reported[1]:
                progress.update(task, completed=reported[0], total=reported[1])
            if detail:
                text = f"{text}: {detail}" if not text.endswith(")") else f"{text} {detail}"
            if text != shown:
                progress.console.print(Text(f"[{elapsed:5.0f}s] {node}: {text}"))
                progress.update(task, description=f"{node}: {text}")
                shown = text
            verdict = watch.judge(status)
            if verdict is Verdict.REACHED:
                break
            if verdict is Verdict.FAILED:
                last_error = status.get("last_error") or "none recorded"
                ended_in = status.get(watch.state_field)
                raise CommandFailed(
                    f"Node {node} ended in '{ended_in}' instead of reaching {watch.goal}. "
                    f"Last error: {last_error}. {watch.advice}"
                )
            if elapsed >= timeout:
                raise CommandFailed(
                    f"Node {node} did not reach {watch.goal} within {timeout:g} s; it is still {text}. "
                    f"The operation continues on the server: follow it with `ironworks node show {node}`, "
                    "or wait longer with --timeout."
                )
            seams.sleep(seams.poll_interval)
    print_note(f"Node {node} reached {text} after {elapsed:.0f} s.")
    return status
