"""Conductor behaviour an operator notices: flows reach their states, steps are recorded with timings,
waits resume, holds and aborts work, failures say why, timeouts fire, power sync guards the fleet,
and work survives a conductor dying."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from ironworks.conductor import locks, queue
from ironworks.db.models import Action, Conductor, Node, utcnow
from tests.conftest import Harness, make_config


def history(h: Harness, node: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = h.client.get(f"/v1/nodes/{node}/history").json()["history"]
    return events


def wait_until_state(h: Harness, node: str, state: str, timeout: float = 20) -> dict[str, Any]:
    """Drain repeatedly (timers become due) until the node reaches ``state``."""
    deadline = time.monotonic() + timeout
    while True:
        h.drain()
        n = h.node(node)
        if n["provision_state"] == state or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def test_full_lifecycle_records_steps(harness: Harness) -> None:
    node = harness.available_node(name="life")
    u = node["uuid"]
    assert node["provision_state"] == "available" and node["target_provision_state"] is None
    ev = history(harness, u)
    step_ends = [e for e in ev if e["event_type"] == "step.end"]
    assert step_ends[0]["data"]["step"] == "deploy.erase_devices_metadata"
    assert step_ends[0]["data"]["outcome"] == "done" and "duration_s" in step_ends[0]["data"]
    n = harness.provision(u, "active", configdrive={"meta_data": {"hostname": "life"}})
    assert n["provision_state"] == "active"
    assert n["instance_info"]["configdrive"] == "******"
    n = harness.provision(u, "rebuild")
    assert n["provision_state"] == "active"
    n = harness.provision(u, "deleted")
    assert n["provision_state"] == "available" and n["instance_info"] == {}
    transitions = [(e["data"]["from"], e["data"]["to"]) for e in history(harness, u) if e["event_type"] == "provision"]
    assert ("active", "deleting") in transitions and ("cleaning", "available") in transitions


def test_manage_fails_when_bmc_unreachable(harness: Harness) -> None:
    node = harness.create_node(driver_info={"fake_power_fail": True})
    n = harness.provision(node["uuid"], "manage")
    assert n["provision_state"] == "enroll"
    assert "unreachable" in n["last_error"]


def test_manual_clean_with_wait_and_hold(harness: Harness) -> None:
    node = harness.available_node()
    u = node["uuid"]
    harness.provision(u, "manage")
    steps = [
        {"interface": "deploy", "step": "wait", "args": {"seconds": 0.2}},
        {"interface": "deploy", "step": "hold"},
        {
            "interface": "bios",
            "step": "apply_configuration",
            "args": {"settings": [{"name": "X", "value": "1"}]},
        },
    ]
    n = harness.provision(u, "clean", clean_steps=steps)
    assert n["provision_state"] == "clean wait" and n["target_provision_state"] == "manageable"
    assert n["clean_step"]["step"] == "wait"
    n = wait_until_state(harness, u, "clean hold")
    assert n["clean_step"]["step"] == "hold"
    n = harness.provision(u, "unhold")
    assert n["provision_state"] == "manageable" and n["clean_step"] is None
    bios = harness.client.get(f"/v1/nodes/{u}/bios").json()["bios"]
    assert {"X": "1"}.items() <= {b["name"]: b["value"] for b in bios}.items()


def test_abort_waiting_clean(harness: Harness) -> None:
    node = harness.available_node()
    u = node["uuid"]
    harness.provision(u, "manage")
    n = harness.provision(u, "clean", clean_steps=[{"interface": "deploy", "step": "wait", "args": {"seconds": 600}}])
    assert n["provision_state"] == "clean wait"
    n = harness.provision(u, "abort")
    assert n["provision_state"] == "clean failed" and n["clean_step"] is None
    n = harness.provision(u, "manage")
    assert n["provision_state"] == "manageable"


def test_failed_step_fails_cleaning_with_reason(harness: Harness) -> None:
    node = harness.available_node(driver_info={"fake_fail_steps": ["erase_devices"]})
    u = node["uuid"]
    harness.provision(u, "manage")
    n = harness.provision(u, "clean", clean_steps=[{"interface": "deploy", "step": "erase_devices"}])
    assert n["provision_state"] == "clean failed"
    assert "deploy.erase_devices failed" in n["last_error"]
    assert n["maintenance"] is True and n["fault"] == "clean failure"
    failed = [e for e in history(harness, u) if e["event_type"] == "step.end" and e["severity"] == "ERROR"]
    assert failed and failed[-1]["data"]["reason"] == "fake_step_failed"


def test_deploy_with_slow_fake_waits_then_completes(tmp_path: Path) -> None:
    h = Harness(make_config(tmp_path, fake={"deploy_delay": "0.2"}))
    try:
        node = h.create_node()
        h.provision(node["uuid"], "manage")
        h.provision(node["uuid"], "provide")
        assert wait_until_state(h, node["uuid"], "available")["provision_state"] == "available"
        n = h.provision(node["uuid"], "active")
        assert n["provision_state"] == "wait call-back" and n["deploy_step"]["step"] == "deploy"
        assert n["driver_internal_info"]["progress"]["percent"] == 50.0  # visible while it runs
        progress = [e for e in history(h, node["uuid"]) if e["event_type"] == "step.progress"]
        assert progress and progress[-1]["event"] == "writing image: 50%"
        n = wait_until_state(h, node["uuid"], "active")
        assert n["provision_state"] == "active"
    finally:
        h.close()


def test_service_rescue_inspect_adopt(harness: Harness) -> None:
    node = harness.available_node()
    u = node["uuid"]
    harness.provision(u, "active")
    n = harness.provision(
        u,
        "service",
        service_steps=[{"interface": "deploy", "step": "log_passthrough", "args": {"message": "hi"}}],
    )
    assert n["provision_state"] == "active"
    assert any("fake service step: hi" in e["event"] for e in history(harness, u))
    r = harness.client.put(f"/v1/nodes/{u}/states/provision", json={"target": "rescue"})
    assert r.status_code == 400 and "rescue_password" in r.text
    n = harness.provision(u, "rescue", rescue_password="pw")
    assert n["provision_state"] == "rescue" and n["instance_info"]["rescue_password"] == "******"
    n = harness.provision(u, "unrescue")
    assert n["provision_state"] == "active" and "rescue_password" not in n["instance_info"]
    other = harness.create_node()
    harness.provision(other["uuid"], "manage")
    n = harness.provision(other["uuid"], "inspect")
    assert n["provision_state"] == "manageable" and n["properties"]["memory_mb"] == 16384
    assert n["inspection_finished_at"] is not None
    fw = harness.client.get(f"/v1/nodes/{other['uuid']}/firmware").json()["firmware"]
    assert {c["component"] for c in fw} == {"bios", "bmc"}
    n = harness.provision(other["uuid"], "adopt")
    assert n["provision_state"] == "active"


def test_wait_state_timeout(tmp_path: Path) -> None:
    h = Harness(make_config(tmp_path, conductor={"clean_callback_timeout": 1}))
    try:
        node = h.available_node()
        u = node["uuid"]
        h.provision(u, "manage")
        h.provision(u, "clean", clean_steps=[{"interface": "deploy", "step": "wait", "args": {"seconds": 600}}])
        with h.rt.db.write() as s:
            s.execute(update(Node).values(provision_updated_at=utcnow() - dt.timedelta(seconds=5)))
        assert h.conductor.check_timeouts() == 1
        n = h.node(u)
        assert n["provision_state"] == "clean failed"
        assert "Timeout" in n["last_error"] and "clean_callback_timeout" in n["last_error"]
    finally:
        h.close()


def test_power_sync_sets_and_clears_maintenance(harness: Harness) -> None:
    node = harness.available_node()
    u = node["uuid"]
    patch = [{"op": "add", "path": "/driver_info/fake_power_fail", "value": True}]
    assert harness.client.patch(f"/v1/nodes/{u}", json=patch).status_code == 200
    for _ in range(3):
        harness.conductor.sync_power_states()
    n = harness.node(u)
    assert n["maintenance"] is True and n["fault"] == "power failure"
    assert "BMC" in n["maintenance_reason"] or "unreachable" in n["maintenance_reason"]
    harness.client.patch(f"/v1/nodes/{u}", json=[{"op": "remove", "path": "/driver_info/fake_power_fail"}])
    harness.conductor.sync_power_states()
    n = harness.node(u)
    assert n["maintenance"] is False and n["fault"] is None


def test_power_sync_records_drift(harness: Harness) -> None:
    node = harness.available_node()
    harness.client.put(f"/v1/nodes/{node['uuid']}/states/power", json={"target": "power on"})
    harness.drain()
    with harness.rt.db.write() as s:  # the database believes the machine is off; the BMC says on
        s.execute(update(Node).values(power_state="power off"))
    harness.conductor.sync_power_states()
    assert harness.node(node["uuid"])["power_state"] == "power on"
    assert any("Power sync" in e["event"] for e in history(harness, node["uuid"]))


def test_power_sync_can_force_recorded_state(tmp_path: Path) -> None:
    h = Harness(make_config(tmp_path, conductor={"force_power_state_during_sync": True}))
    try:
        node = h.available_node()
        h.client.put(f"/v1/nodes/{node['uuid']}/states/power", json={"target": "power on"})
        h.drain()
        with h.rt.db.write() as s:
            s.execute(update(Node).values(power_state="power off"))
        h.conductor.sync_power_states()
        h.conductor.sync_power_states()
        assert h.node(node["uuid"])["power_state"] == "power off"
        task = h.conductor.flows.task(1)
        assert task.node.driver_internal_info["fake_power_state"] == "power off"
    finally:
        h.close()


def test_dead_conductor_work_is_recovered(harness: Harness) -> None:
    node = harness.available_node()
    u = node["uuid"]
    db = harness.rt.db
    # another conductor took the deploy, then died mid-flow
    with db.write() as s:
        s.add(Conductor(hostname="dead-host", updated_at=utcnow() - dt.timedelta(hours=1)))
        s.execute(update(Node).values(provision_state="deploying", target_provision_state="active"))
        nid = s.execute(select(Node.id)).scalar_one()
        action_id = queue.enqueue(db, s, node_id=nid, kind="provision", name="deploy").id
    with db.write() as s:
        s.execute(update(Action).where(Action.id == action_id).values(status="running", conductor="dead-host"))
    locks.acquire(db, nid, holder="dead-host")
    harness.conductor._reap_dead()
    n = harness.node(u)
    assert n["reservation"] is None
    assert n["provision_state"] == "deploy failed"
    assert "dead-host" in n["last_error"] and "interrupted" in n["last_error"]
    with db.read() as s:
        assert s.execute(select(Action.status).where(Action.id == action_id)).scalar_one() == "failed"
    assert harness.provision(u, "active")["provision_state"] == "active"


def test_accepted_intent_survives_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    h1 = Harness(cfg)
    node = h1.create_node()
    r = h1.client.put(f"/v1/nodes/{node['uuid']}/states/provision", json={"target": "manage"})
    assert r.status_code == 202
    h1.close()  # the process goes away before any conductor ran the action
    h2 = Harness(cfg)
    try:
        assert h2.node(node["uuid"])["provision_state"] == "verifying"
        h2.drain()
        assert h2.node(node["uuid"])["provision_state"] == "manageable"
    finally:
        h2.close()


def test_many_nodes_deploy_concurrently(harness: Harness) -> None:
    uuids = [harness.create_node(name=f"c{i}")["uuid"] for i in range(30)]
    for target, state in (("manage", "manageable"), ("provide", "available"), ("active", "active")):
        for u in uuids:
            r = harness.client.put(f"/v1/nodes/{u}/states/provision", json={"target": target})
            assert r.status_code == 202, r.text
        harness.drain()
        states = {n["provision_state"] for n in harness.client.get("/v1/nodes?limit=100").json()["nodes"]}
        assert states == {state}


def test_progress_is_recorded_without_flooding_the_timeline(sqlite_harness: Harness) -> None:
    h = sqlite_harness
    node = h.create_node()
    task = h.conductor.flows.task(1)
    for done in range(0, 1001, 7):
        task.progress(done, 1000, message="writing image")
    entries = [e for e in history(h, node["uuid"]) if e["event_type"] == "step.progress"]
    assert 10 <= len(entries) <= 11
    assert h.node(node["uuid"])["driver_internal_info"]["progress"]["done"] == 994
