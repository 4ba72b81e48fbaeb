"""The ``agent`` bios and raid interfaces: vendor hooks run in the ramdisk, driven by the conductor.

The scripted agent of test_agent_conductor plays the ramdisk; the real agent with the example vendor
manager is exercised in tests/unit/test_agent_hardware.py (dispatch by interface) and here through a
real agent process (test_vendor_bios_and_raid_with_the_real_agent).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Harness, make_config
from tests.integration.test_agent_conductor import MAC, ScriptedAgent, boot_as_agent, settle

RAID = {"logical_disks": [{"size_gb": 100, "raid_level": "1", "is_root_volume": True}]}


@pytest.fixture
def agent() -> Iterator[ScriptedAgent]:
    a = ScriptedAgent(polls=1)
    yield a
    a.stop()


@pytest.fixture
def h(tmp_path: Path, db_url: str) -> Iterator[Harness]:
    harness = Harness(make_config(tmp_path, db_url=db_url, conductor={"agent_poll_interval": 0.05}))
    yield harness
    harness.close()


def _node(h: Harness, **interfaces: str) -> str:
    node = h.create_node(**interfaces)
    assert h.client.post("/v1/ports", json={"address": MAC, "node_uuid": node["uuid"]}).status_code == 201
    h.provision(node["uuid"], "manage")
    return str(node["uuid"])


def test_raid_and_bios_steps_are_sent_to_the_agent_with_their_interface(h: Harness, agent: ScriptedAgent) -> None:
    u = _node(h, deploy_interface="agent", bios_interface="agent", raid_interface="agent")
    steps = [
        {"interface": "raid", "step": "delete_configuration"},
        {"interface": "raid", "step": "create_configuration", "args": {"target_raid_config": RAID}},
        {"interface": "bios", "step": "apply_configuration", "args": {"settings": [{"name": "A", "value": "1"}]}},
    ]
    n = h.provision(u, "clean", clean_steps=steps)
    assert n["provision_state"] == "clean wait"  # the ramdisk is booting for the first step
    boot_as_agent(h, agent, u)
    n = settle(h, u, {"manageable", "clean failed"})
    assert n["provision_state"] == "manageable", n["last_error"]
    sent = [(c[1]["step"]["interface"], c[1]["step"]["step"], c[1]["step"]["args"]) for c in agent.calls]
    assert sent == [
        ("raid", "delete_configuration", {}),
        ("raid", "create_configuration", {"target_raid_config": RAID}),
        ("bios", "apply_configuration", {"settings": [{"name": "A", "value": "1"}]}),
    ]
    assert n["power_state"] == "power off"  # cleaning took the ramdisk down afterwards


def test_agent_bios_service_step_on_an_active_node(h: Harness, agent: ScriptedAgent) -> None:
    u = _node(h, deploy_interface="agent", bios_interface="agent")
    with h.rt.db.write() as s:  # this test is about servicing an instance: start from active
        from sqlalchemy import update

        from ironworks.db.models import Node

        s.execute(update(Node).values(provision_state="active"))
    n = h.provision(u, "service", service_steps=[{"interface": "bios", "step": "factory_reset"}])
    assert n["provision_state"] == "service wait"
    boot_as_agent(h, agent, u)
    n = settle(h, u, {"active", "service failed"})
    assert n["provision_state"] == "active", n["last_error"]
    assert agent.calls[-1][0] == "service.execute_service_step"
    assert agent.calls[-1][1]["step"] == {"interface": "bios", "step": "factory_reset", "args": {}, "priority": 0}


def test_bad_requests_are_refused_before_the_node_moves(h: Harness) -> None:
    u = _node(h, deploy_interface="agent", raid_interface="agent")
    r = h.client.put(
        f"/v1/nodes/{u}/states/provision",
        json={"target": "clean", "clean_steps": [{"interface": "raid", "step": "create_configuration"}]},
    )
    assert r.status_code == 400 and "target_raid_config" in r.text
    assert h.node(u)["provision_state"] == "manageable"


def test_a_hook_without_the_agent_deploy_fails_clearly_and_boots_nothing(h: Harness) -> None:
    v = _node_with_fake_deploy(h)
    n = h.provision(v, "clean", clean_steps=[{"interface": "bios", "step": "factory_reset"}])
    n = settle(h, v, {"manageable", "clean failed"})
    assert n["provision_state"] == "clean failed"
    assert "deploy_interface=agent" in n["last_error"] and "deploy_interface is 'fake'" in n["last_error"]
    assert n["power_state"] != "power on"  # no ramdisk was booted for it


def _node_with_fake_deploy(h: Harness) -> str:
    node = h.create_node(bios_interface="agent")
    h.provision(node["uuid"], "manage")
    return str(node["uuid"])
