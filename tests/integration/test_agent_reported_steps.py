"""Steps the agent reports (a vendor hardware manager's), JSON config drives and maintenance during
servicing, driven through the API against the scripted agent of test_agent_conductor, on SQLite and
on PostgreSQL. (The real agent with the example vendor manager: test_agent_e2e.)"""

from __future__ import annotations

import base64
import gzip
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest
from sqlalchemy import update

from ironworks.conductor import engine
from ironworks.db.models import Node
from tests.conftest import Harness, make_config
from tests.integration.test_agent_conductor import (
    GENERIC_STEPS,
    VENDOR_STEP,
    ScriptedAgent,
    _step,
    agent_node,
    boot_as_agent,
    settle,
)

VENDOR_FW = {"interface": "deploy", "step": "update_vendor_firmware", "args": {"version": "2.1"}}


@pytest.fixture
def h(tmp_path: Path, db_url: str) -> Iterator[Harness]:
    harness = Harness(make_config(tmp_path, db_url=db_url, conductor={"agent_poll_interval": 0.05}))
    yield harness
    harness.close()


@pytest.fixture
def vendor_agent() -> Iterator[ScriptedAgent]:
    steps = {k: list(v) for k, v in GENERIC_STEPS.items()}
    steps["clean"].append(VENDOR_STEP)
    steps["service"].append(VENDOR_STEP)
    agent = ScriptedAgent(polls=1, steps=steps)
    yield agent
    agent.stop()


def fault(r: Any) -> str:
    return str(json.loads(r.json()["error_message"])["faultstring"])


def executed(agent: ScriptedAgent) -> list[str]:
    return [c[1]["step"]["step"] for c in agent.calls if c[0].endswith("_step")]


def test_vendor_step_runs_once_the_agent_lists_it_then_the_api_knows_it(
    h: Harness, vendor_agent: ScriptedAgent
) -> None:
    u = agent_node(h)
    # never cached: a deploy step nobody knows yet is accepted for the agent deploy interface
    n = h.provision(u, "clean", clean_steps=[VENDOR_FW])
    assert n["provision_state"] == "clean wait"
    boot_as_agent(h, vendor_agent, u)
    n = settle(h, u, {"manageable", "clean failed"})
    assert n["provision_state"] == "manageable", n["last_error"]
    assert vendor_agent.listings == ["clean.get_clean_steps"]
    assert vendor_agent.calls[-1][0] == "clean.execute_clean_step"
    assert vendor_agent.calls[-1][1]["step"] == {
        "interface": "deploy",
        "step": "update_vendor_firmware",
        "args": {"version": "2.1"},
        "priority": 0,
    }
    info = n["driver_internal_info"]
    cached = info["agent_cached_clean_steps"]["deploy"]
    assert "update_vendor_firmware" in [s["step"] for s in cached]
    assert info["agent_cached_clean_steps_agent_version"] == "test-1"
    assert info["agent_cached_clean_steps_refreshed"].startswith(time.strftime("%Y"))
    assert info["hardware_manager_version"] == {"scripted_manager": "1.0"}
    history = h.client.get(f"/v1/nodes/{u}/history").json()["history"]
    assert any(e["event_type"] == "agent.steps" and "deploy.update_vendor_firmware" in e["event"] for e in history)

    # cached now: a typo and a mistyped argument are refused up front, naming what exists
    before = h.node(u)
    typo = [{"interface": "deploy", "step": "update_vendor_firmwar"}]
    r = h.client.put(f"/v1/nodes/{u}/states/provision", json={"target": "clean", "clean_steps": typo})
    assert r.status_code == 400
    assert "deploy.update_vendor_firmwar is not supported" in fault(r) and "deploy.update_vendor_firmware" in fault(r)
    bad = [{"interface": "deploy", "step": "update_vendor_firmware", "args": {"version": 2}}]
    r = h.client.put(f"/v1/nodes/{u}/states/provision", json={"target": "clean", "clean_steps": bad})
    assert r.status_code == 400 and "argument 'version' must be of type string, got int" in fault(r)
    assert h.node(u)["provision_state"] == before["provision_state"] == "manageable"
    # and a good request still runs
    h.provision(u, "clean", clean_steps=[dict(VENDOR_FW, args={"version": "2.2"})])
    boot_as_agent(h, vendor_agent, u)
    assert settle(h, u, {"manageable", "clean failed"})["provision_state"] == "manageable"
    assert vendor_agent.calls[-1][1]["step"]["args"] == {"version": "2.2"}


def test_a_step_the_agent_does_not_offer_fails_the_flow_listing_what_it_offers(h: Harness) -> None:
    agent = ScriptedAgent(polls=1)  # the generic steps only: no vendor manager in this ramdisk
    try:
        u = agent_node(h)
        h.provision(u, "clean", clean_steps=[VENDOR_FW])
        boot_as_agent(h, agent, u)
        n = settle(h, u, {"manageable", "clean failed"})
        assert n["provision_state"] == "clean failed"
        err = n["last_error"]
        assert "clean step deploy.update_vendor_firmware is not offered by the agent" in err, err
        assert "deploy.erase_devices_metadata" in err and "deploy.update_firmware" in err, err
        assert executed(agent) == []  # nothing ran, not even as a no-op
    finally:
        agent.stop()


def test_unknown_steps_of_other_interfaces_are_still_refused_up_front(h: Harness) -> None:
    u = agent_node(h)
    steps = [{"interface": "management", "step": "update_vendor_firmware"}]
    r = h.client.put(f"/v1/nodes/{u}/states/provision", json={"target": "clean", "clean_steps": steps})
    assert r.status_code == 400 and "management.update_vendor_firmware is not supported" in fault(r)
    fake = h.create_node()  # a fake deploy interface does not run agent steps
    h.provision(fake["uuid"], "manage")
    r = h.client.put(f"/v1/nodes/{fake['uuid']}/states/provision", json={"target": "clean", "clean_steps": [VENDOR_FW]})
    assert r.status_code == 400 and "deploy.update_vendor_firmware is not supported" in fault(r)


def test_automated_cleaning_honours_the_agents_priorities(h: Harness) -> None:
    steps = {
        "clean": [
            _step("erase_devices_metadata", 99),
            _step("erase_devices", 10),  # the operator's [conductor] automated_clean_full_erase decides
            _step("vendor_scrub", 50),  # a vendor step the agent makes automated
            _step("burnin_memory", 5),  # a manual step of ours the agent makes automated
            _step("burnin_cpu", 0),  # manual stays manual
        ]
    }
    agent = ScriptedAgent(polls=1, steps=steps)
    try:
        u = agent_node(h)
        h.provision(u, "provide")
        boot_as_agent(h, agent, u)
        n = settle(h, u, {"available", "clean failed"})
        assert n["provision_state"] == "available", n["last_error"]
        assert executed(agent) == ["erase_devices_metadata", "vendor_scrub", "burnin_memory"]
    finally:
        agent.stop()


def test_service_runs_a_vendor_service_step(h: Harness, vendor_agent: ScriptedAgent) -> None:
    u = agent_node(h)
    with h.rt.db.write() as s:  # an active node with an instance (deploying is tested elsewhere)
        s.execute(update(Node).values(provision_state="active"))
    n = h.provision(u, "service", service_steps=[VENDOR_FW])
    assert n["provision_state"] == "service wait"
    boot_as_agent(h, vendor_agent, u)
    n = settle(h, u, {"active", "service failed"})
    assert n["provision_state"] == "active", n["last_error"]
    assert vendor_agent.listings == ["service.get_service_steps"]
    assert vendor_agent.calls[-1][0] == "service.execute_service_step"
    assert executed(vendor_agent) == ["update_vendor_firmware"]


def test_maintenance_is_honoured_for_servicing(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAINTENANCE_RECHECK_S", 0.05)  # the paused flow's re-checks come during the test
    agent = ScriptedAgent(polls=4)
    try:
        u = agent_node(h)
        with h.rt.db.write() as s:
            s.execute(update(Node).values(provision_state="active"))
        fw = [{"interface": "deploy", "step": "update_firmware", "args": {"url": "http://fw/1.tgz"}}]
        assert h.client.put(f"/v1/nodes/{u}/maintenance", json={"reason": "rack move"}).status_code == 202
        r = h.client.put(f"/v1/nodes/{u}/states/provision", json={"target": "service", "service_steps": fw})
        assert r.status_code == 400 and "in maintenance (rack move)" in fault(r) and "unset maintenance" in fault(r)
        assert h.node(u)["provision_state"] == "active"
        assert h.client.delete(f"/v1/nodes/{u}/maintenance").status_code == 202

        h.provision(u, "service", service_steps=fw)
        boot_as_agent(h, agent, u)  # the firmware update starts on the agent
        h.drain()
        assert agent.calls and agent.calls[-1][0] == "service.execute_service_step"
        assert h.client.put(f"/v1/nodes/{u}/maintenance", json={"reason": "flaky PSU"}).status_code == 202
        polls = agent.commands[next(iter(agent.commands))]["polls"]
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # timers and heartbeats come; nothing moves on
            h.drain()
            hb = {"callback_url": agent.url, "agent_token": agent.token, "agent_version": "test-1"}
            assert h.client.post(f"/v1/heartbeat/{u}", json=hb).status_code == 202
            time.sleep(0.05)
        h.drain()
        n = h.node(u)
        assert n["provision_state"] == "service wait" and n["service_step"]["step"] == "update_firmware"
        assert agent.commands[next(iter(agent.commands))]["polls"] <= polls + 1  # at most the poll already due
        history = h.client.get(f"/v1/nodes/{u}/history").json()["history"]
        paused = [e for e in history if e["event_type"] == "maintenance" and "paused" in e["event"]]
        assert len(paused) == 1 and "flaky PSU" in paused[0]["event"]

        assert h.client.delete(f"/v1/nodes/{u}/maintenance").status_code == 202
        hb = {"callback_url": agent.url, "agent_token": agent.token, "agent_version": "test-1"}
        assert h.client.post(f"/v1/heartbeat/{u}", json=hb).status_code == 202
        n = settle(h, u, {"active", "service failed"})
        assert n["provision_state"] == "active", n["last_error"]
        history = h.client.get(f"/v1/nodes/{u}/history").json()["history"]
        assert any(e["event_type"] == "maintenance" and "resumed" in e["event"] for e in history)
    finally:
        agent.stop()


def _meta_data(configdrive: str) -> dict[str, Any]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(gzip.decompress(base64.b64decode(configdrive))))
    try:
        assert iso.pvd.volume_identifier.rstrip(b" ") == b"config-2"
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/openstack/latest/meta_data.json")
        meta: dict[str, Any] = json.loads(out.getvalue())
        return meta
    finally:
        iso.close()


def test_json_configdrive_is_built_for_the_agent(h: Harness, vendor_agent: ScriptedAgent) -> None:
    u = agent_node(h)
    with h.rt.db.write() as s:
        s.execute(update(Node).values(provision_state="available"))
    drive = {"meta_data": {"hostname": "web-7", "public_keys": {"0": "ssh-ed25519 AAAA"}}, "user_data": "#!/bin/sh\n"}
    old = h.client.put(
        f"/v1/nodes/{u}/states/provision",
        json={"target": "active", "configdrive": drive},
        headers={"X-OpenStack-Ironic-API-Version": "1.55"},
    )
    assert old.status_code == 400 and "needs API version 1.56" in fault(old)
    bad = h.client.put(
        f"/v1/nodes/{u}/states/provision", json={"target": "active", "configdrive": {"meta_data": "web-7"}}
    )
    assert bad.status_code == 400 and "meta_data must be an object, not str" in fault(bad)
    assert h.node(u)["provision_state"] == "available"  # nothing half-done

    n = h.provision(u, "active", configdrive=drive)
    assert n["provision_state"] == "wait call-back"
    assert n["instance_info"]["configdrive"] == "******"  # user data may hold secrets
    boot_as_agent(h, vendor_agent, u)
    n = settle(h, u, {"active", "deploy failed"})
    assert n["provision_state"] == "active", n["last_error"]
    sent = vendor_agent.calls[-1]
    assert sent[0] == "standby.prepare_image"
    meta = _meta_data(sent[1]["configdrive"])
    assert meta["hostname"] == "web-7" and meta["public_keys"] == {"0": "ssh-ed25519 AAAA"} and meta["uuid"] == u
    assert vendor_agent.listings == ["deploy.get_deploy_steps"]


def test_vendor_deploy_step_runs_in_priority_order_or_fails_the_deploy(h: Harness) -> None:
    steps = {k: list(v) for k, v in GENERIC_STEPS.items()}
    steps["deploy"].append(_step("vendor_tune"))
    agent = ScriptedAgent(polls=1, steps=steps)
    try:
        u = agent_node(h)
        with h.rt.db.write() as s:
            s.execute(update(Node).values(provision_state="available"))
        tune = {"interface": "deploy", "step": "vendor_tune", "priority": 70, "args": {}}
        h.provision(u, "active", deploy_steps=[tune])
        boot_as_agent(h, agent, u)
        n = settle(h, u, {"active", "deploy failed"})
        assert n["provision_state"] == "active", n["last_error"]
        assert [c[0] for c in agent.calls] == ["standby.prepare_image", "deploy.execute_deploy_step"]
        history = h.client.get(f"/v1/nodes/{u}/history").json()["history"]
        order = [e["data"]["step"] for e in history if e["event_type"] == "step.end"]
        assert (
            order.index("deploy.write_image")
            < order.index("deploy.vendor_tune")
            < order.index("deploy.tear_down_agent")
        )

        h.provision(u, "deleted")  # cleaning runs; then deploy again with a step this agent lacks
        boot_as_agent(h, agent, u)
        assert settle(h, u, {"available", "clean failed"})["provision_state"] == "available"
        typo = dict(tune, step="vendor_tun")
        r = h.client.put(f"/v1/nodes/{u}/states/provision", json={"target": "active", "deploy_steps": [typo]})
        assert r.status_code == 400 and "deploy.vendor_tune" in fault(r)  # cached now: refused up front
        image = {"image_source": "http://images/disk.raw", "image_os_hash_algo": "sha256", "image_os_hash_value": "ab"}
        with h.rt.db.write() as s:  # a node whose agent never listed its deploy steps
            s.execute(update(Node).values(driver_internal_info={}, instance_info=image))
        h.provision(u, "active", deploy_steps=[typo])
        boot_as_agent(h, agent, u)
        n = settle(h, u, {"active", "deploy failed"})
        assert n["provision_state"] == "deploy failed"
        assert "deploy step deploy.vendor_tun is not offered" in n["last_error"], n["last_error"]
        assert "deploy.vendor_tune" in n["last_error"]
        assert [c[0] for c in agent.calls].count("standby.prepare_image") == 1  # no image was written
    finally:
        agent.stop()
