"""What a failed, timed-out or paused agent flow leaves behind: nothing booted, nothing trusted.

Ironic powers a node off when a deploy or cleaning fails and takes the ramdisk's boot configuration
down; a ramdisk that is left up keeps a valid token and can heartbeat into the next flow. These tests
play the ramdisk with the scripted agent of test_agent_conductor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from ironworks.db.models import Node, utcnow
from tests.conftest import Harness, make_config
from tests.integration.test_agent_conductor import MAC, ScriptedAgent, agent_node, boot_as_agent, settle

AGENT_KEYS = ("agent_url", "agent_secret_token", "agent_booting", "agent_last_heartbeat")


@pytest.fixture
def h(tmp_path: Path, db_url: str) -> Iterator[Harness]:
    harness = Harness(
        make_config(tmp_path, db_url=db_url, conductor={"agent_poll_interval": 0.05, "clean_callback_timeout": 1})
    )
    yield harness
    harness.close()


def internal(h: Harness, u: str) -> dict[str, Any]:
    info: dict[str, Any] = h.client.get(f"/v1/nodes/{u}").json()["driver_internal_info"]
    return info


def heartbeat(h: Harness, u: str, agent: ScriptedAgent) -> int:
    body = {"callback_url": agent.url, "agent_token": agent.token, "agent_version": "test-1"}
    return int(h.client.post(f"/v1/heartbeat/{u}", json=body).status_code)


def test_a_failed_agent_step_powers_off_and_forgets_the_ramdisk(h: Harness) -> None:
    agent = ScriptedAgent(polls=1, fail={"update_firmware"})
    try:
        u = agent_node(h)
        steps = [{"interface": "deploy", "step": "update_firmware", "args": {"url": "http://fw/bad.tgz"}}]
        h.provision(u, "clean", clean_steps=steps)
        boot_as_agent(h, agent, u)
        n = settle(h, u, {"manageable", "clean failed"})
        assert n["provision_state"] == "clean failed" and "disk on fire" in n["last_error"]
        assert n["power_state"] == "power off"
        assert not set(AGENT_KEYS) & set(internal(h, u)), internal(h, u)
        assert heartbeat(h, u, agent) != 202  # the old ramdisk's token is no longer honoured
        # the next attempt boots a fresh ramdisk, which gets a fresh token at lookup
        h.client.put(f"/v1/nodes/{u}/maintenance", json={"reason": "x"})
        h.client.delete(f"/v1/nodes/{u}/maintenance")
        h.provision(u, "manage")
        again = ScriptedAgent(polls=1)
        try:
            h.provision(u, "clean", clean_steps=[{"interface": "deploy", "step": "erase_devices_metadata"}])
            boot_as_agent(h, again, u)  # asserts the lookup hands out a new token
            assert again.token != agent.token
            assert settle(h, u, {"manageable", "clean failed"})["provision_state"] == "manageable"
        finally:
            again.stop()
    finally:
        agent.stop()


def test_a_ramdisk_that_never_calls_back_times_out_powered_off_and_in_maintenance(h: Harness) -> None:
    u = agent_node(h)
    n = h.provision(u, "clean", clean_steps=[{"interface": "deploy", "step": "erase_devices_metadata"}])
    assert n["provision_state"] == "clean wait" and n["power_state"] == "power on"
    with h.rt.db.write() as s:
        s.execute(update(Node).values(provision_updated_at=utcnow() - dt.timedelta(seconds=5)))
    assert h.conductor.check_timeouts() == 1
    n = h.node(u)
    assert n["provision_state"] == "clean failed" and "clean_callback_timeout" in n["last_error"]
    assert n["power_state"] == "power off"
    assert n["maintenance"] is True and n["fault"] == "clean failure"
    assert not set(AGENT_KEYS) & set(internal(h, u))
    assert h.client.get(f"/v1/lookup?addresses={MAC}").status_code == 404  # nothing waits for a ramdisk


def test_unsetting_maintenance_resumes_a_paused_flow_at_once(h: Harness) -> None:
    # the paused flow's own re-check is 30 s away: only the unset can bring it on within the bound
    agent = ScriptedAgent(polls=2)
    try:
        u = agent_node(h)
        with h.rt.db.write() as s:
            s.execute(update(Node).values(provision_state="active"))
        fw = [{"interface": "deploy", "step": "update_firmware", "args": {"url": "http://fw/1.tgz"}}]
        h.provision(u, "service", service_steps=fw)
        boot_as_agent(h, agent, u)
        h.drain()
        assert h.client.put(f"/v1/nodes/{u}/maintenance", json={"reason": "PSU swap"}).status_code == 202
        h.drain()
        assert heartbeat(h, u, agent) == 202
        h.drain()
        assert h.node(u)["provision_state"] == "service wait"
        assert h.client.delete(f"/v1/nodes/{u}/maintenance").status_code == 202
        n = settle(h, u, {"active", "service failed"}, bound=10)
        assert n["provision_state"] == "active", n["last_error"]
    finally:
        agent.stop()
