"""The Bare Metal API as a client meets it: shapes, versions, errors, secrets, pagination, patches."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Harness


def fault(resp: Any) -> str:
    """The faultstring of an Ironic error body (asserting the shape)."""
    body = resp.json()
    assert set(body) == {"error_message"}, body
    inner = json.loads(body["error_message"])
    assert {"faultcode", "faultstring", "debuginfo"} <= set(inner)
    return str(inner["faultstring"])


def test_root_and_v1_documents_advertise_versions(sqlite_harness: Harness) -> None:
    c = sqlite_harness.client
    root = c.get("/", headers={"X-OpenStack-Ironic-API-Version": ""})
    assert root.status_code == 200
    assert root.json()["default_version"]["version"] == "1.87"
    assert root.json()["versions"][0]["min_version"] == "1.1"
    assert root.headers["x-openstack-ironic-api-minimum-version"] == "1.1"
    assert root.headers["x-openstack-ironic-api-maximum-version"] == "1.87"
    v1 = c.get("/v1")
    assert v1.json()["id"] == "v1" and v1.json()["nodes"][0]["href"].endswith("/v1/nodes/")
    assert v1.headers["x-openstack-ironic-api-version"] == "1.87"
    assert v1.headers["x-openstack-request-id"].startswith("req-")


def test_version_negotiation(sqlite_harness: Harness) -> None:
    c = sqlite_harness.client
    r = c.get("/v1/nodes", headers={"X-OpenStack-Ironic-API-Version": "1.999"})
    assert r.status_code == 406
    assert "[1.1, 1.87]" in fault(r)
    assert r.headers["x-openstack-ironic-api-maximum-version"] == "1.87"
    assert c.get("/v1/nodes", headers={"X-OpenStack-Ironic-API-Version": "abc"}).status_code == 400
    latest = c.get("/v1/nodes", headers={"X-OpenStack-Ironic-API-Version": "latest"})
    assert latest.headers["x-openstack-ironic-api-version"] == "1.87"
    # no header: the minimum, and fields newer than it are hidden
    node = sqlite_harness.create_node(name="old-client")
    old = c.get(f"/v1/nodes/{node['uuid']}", headers={"X-OpenStack-Ironic-API-Version": "1.1"}).json()
    assert "name" not in old and "service_step" not in old and "uuid" in old


def test_create_node_defaults_and_masks_secrets(harness: Harness) -> None:
    node = harness.create_node(name="n-1", driver_info={"ipmi_password": "s3cret", "ipmi_address": "10.0.0.1"})
    assert node["provision_state"] == "enroll"
    assert node["driver_info"] == {"ipmi_password": "******", "ipmi_address": "10.0.0.1"}
    assert node["power_interface"] == "fake" and node["inspect_interface"] == "fake"
    listed = harness.client.get("/v1/nodes/detail").json()["nodes"][0]
    assert listed["driver_info"]["ipmi_password"] == "******"
    # the secret is not stored in clear either
    with harness.rt.db.read() as s:
        from sqlalchemy import text

        raw = s.execute(text("SELECT driver_info FROM nodes")).scalar_one()
    assert "s3cret" not in str(raw)


def test_create_node_bad_input(sqlite_harness: Harness) -> None:
    c = sqlite_harness.client
    r = c.post("/v1/nodes", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in fault(r)
    r = c.post("/v1/nodes", json={"driver": "fake-hardware", "bogus": 1})
    assert r.status_code == 400 and "unknown field 'bogus'" in fault(r)
    r = c.post("/v1/nodes", json={"driver": "fake-hardware", "provision_state": "active"})
    assert r.status_code == 400 and "provision_state" in fault(r)
    r = c.post("/v1/nodes", json={"driver": "no-such-driver"})
    assert r.status_code == 400 and "not enabled" in fault(r)
    r = c.post("/v1/nodes", json={"driver": "fake-hardware", "power_interface": "redfish"})
    assert r.status_code == 400 and "does not support power_interface" in fault(r)
    r = c.post("/v1/nodes", json={"driver": "fake-hardware", "name": "bad name!"})
    assert r.status_code == 400 and "name" in fault(r)
    r = c.post("/v1/nodes", json={})
    assert r.status_code == 400 and "driver" in fault(r)
    assert c.get("/v1/nodes").json()["nodes"] == []  # nothing half-written


def test_duplicate_name_conflicts(harness: Harness) -> None:
    harness.create_node(name="dup")
    r = harness.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "dup"})
    assert r.status_code == 409 and "dup" in fault(r)


def test_oversized_body_is_refused(tmp_path: Any) -> None:
    from tests.conftest import make_config

    h = Harness(make_config(tmp_path, api={"max_body_bytes": 1024}))
    try:
        r = h.client.post("/v1/nodes", json={"driver": "fake-hardware", "extra": {"x": "y" * 4096}})
        assert r.status_code == 413 and "1024" in fault(r)
    finally:
        h.close()


def test_unknown_node_and_route(sqlite_harness: Harness) -> None:
    r = sqlite_harness.client.get("/v1/nodes/nope")
    assert r.status_code == 404 and "nope" in fault(r)
    r = sqlite_harness.client.get("/v1/nothing-here")
    assert r.status_code == 404 and fault(r)


def test_fields_and_pagination(harness: Harness) -> None:
    uuids = [harness.create_node(name=f"p{i}")["uuid"] for i in range(5)]
    c = harness.client
    page1 = c.get("/v1/nodes?limit=2").json()
    assert [n["uuid"] for n in page1["nodes"]] == uuids[:2]
    assert "marker=" in page1["next"]
    nxt = page1["next"].split("/v1/", 1)[1]
    page2 = c.get(f"/v1/{nxt}").json()
    assert [n["uuid"] for n in page2["nodes"]] == uuids[2:4]
    last = c.get(f"/v1/{page2['next'].split('/v1/', 1)[1]}").json()
    assert [n["uuid"] for n in last["nodes"]] == uuids[4:] and "next" not in last
    only = c.get("/v1/nodes?fields=uuid,provision_state").json()["nodes"][0]
    assert set(only) == {"uuid", "provision_state", "links"}
    r = c.get("/v1/nodes?fields=uuid,nonsense")
    assert r.status_code == 400 and "nonsense" in fault(r)
    desc = c.get("/v1/nodes?sort_key=name&sort_dir=desc&limit=2").json()["nodes"]
    assert [n["name"] for n in desc] == ["p4", "p3"]


def test_filters(harness: Harness) -> None:
    a = harness.create_node(name="fa")
    harness.create_node(name="fb")
    harness.provision(a["uuid"], "manage")
    c = harness.client
    assert [n["name"] for n in c.get("/v1/nodes?provision_state=manageable").json()["nodes"]] == ["fa"]
    c.put(f"/v1/nodes/{a['uuid']}/maintenance", json={"reason": "r"})
    assert [n["name"] for n in c.get("/v1/nodes?maintenance=true").json()["nodes"]] == ["fa"]
    assert c.get("/v1/nodes?maintenance=maybe").status_code == 400


def test_patch_node(harness: Harness) -> None:
    node = harness.create_node(name="pt", driver_info={"ipmi_password": "keep-me", "ipmi_address": "a"})
    c, u = harness.client, node["uuid"]
    r = c.patch(
        f"/v1/nodes/{u}",
        json=[
            {"op": "replace", "path": "/name", "value": "pt2"},
            {"op": "add", "path": "/extra/rack", "value": "r1"},
            {
                "op": "replace",
                "path": "/driver_info",
                "value": {"ipmi_password": "******", "ipmi_address": "b"},
            },
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "pt2" and r.json()["extra"] == {"rack": "r1"}
    # sending back the mask keeps the stored secret
    from ironworks.conductor.task import TaskContext

    t = TaskContext(harness.rt.db, harness.rt.drivers, harness.conductor.flows.task(1).node.id, conductor="t")
    assert t.node.driver_info == {"ipmi_password": "keep-me", "ipmi_address": "b"}
    bad = c.patch(f"/v1/nodes/{u}", json=[{"op": "replace", "path": "/provision_state", "value": "active"}])
    assert bad.status_code == 400 and "read-only" in fault(bad)
    bad = c.patch(f"/v1/nodes/{u}", json=[{"op": "add", "path": "/wat", "value": 1}])
    assert bad.status_code == 400 and "wat" in fault(bad)
    bad = c.patch(f"/v1/nodes/{u}", json=[{"op": "remove", "path": "/extra/missing"}])
    assert bad.status_code == 400
    bad = c.patch(f"/v1/nodes/{u}", json=[{"op": "remove", "path": "/driver"}])
    assert bad.status_code == 400 and "driver" in fault(bad)
    bad = c.patch(f"/v1/nodes/{u}", json={"op": "replace"})
    assert bad.status_code == 400
    assert harness.node(u)["name"] == "pt2"  # failed patches changed nothing


def test_delete_rules(harness: Harness) -> None:
    node = harness.available_node(name="del")
    harness.provision(node["uuid"], "active")
    r = harness.client.delete(f"/v1/nodes/{node['uuid']}")
    assert r.status_code == 400 and "active" in fault(r)
    harness.provision(node["uuid"], "deleted")
    harness.client.post("/v1/ports", json={"address": "52:54:00:00:00:01", "node_uuid": node["uuid"]})
    assert harness.client.delete(f"/v1/nodes/{node['uuid']}").status_code == 204
    assert harness.client.get(f"/v1/nodes/{node['uuid']}").status_code == 404
    assert harness.client.get("/v1/ports").json()["ports"] == []


def test_ports(harness: Harness) -> None:
    node = harness.create_node(name="pn")
    c = harness.client
    r = c.post("/v1/ports", json={"address": "52-54-00-AA-BB-CC", "node_uuid": "pn"})
    assert r.status_code == 201, r.text
    assert r.json()["address"] == "52:54:00:aa:bb:cc" and r.json()["node_uuid"] == node["uuid"]
    dup = c.post("/v1/ports", json={"address": "52:54:00:aa:bb:cc", "node_uuid": node["uuid"]})
    assert dup.status_code == 409 and "52:54:00:aa:bb:cc" in fault(dup)
    bad = c.post("/v1/ports", json={"address": "zz", "node_uuid": node["uuid"]})
    assert bad.status_code == 400 and "MAC" in fault(bad)
    assert c.post("/v1/ports", json={"address": "52:54:00:aa:bb:cd", "node_uuid": "ghost"}).status_code == 404
    assert [p["address"] for p in c.get(f"/v1/nodes/{node['uuid']}/ports").json()["ports"]] == ["52:54:00:aa:bb:cc"]
    p = c.patch(f"/v1/ports/{r.json()['uuid']}", json=[{"op": "add", "path": "/extra/sw", "value": "s1"}])
    assert p.status_code == 200 and p.json()["extra"] == {"sw": "s1"}
    assert c.delete("/v1/ports/52:54:00:aa:bb:cc").status_code == 204


def test_drivers(sqlite_harness: Harness) -> None:
    drivers = sqlite_harness.client.get("/v1/drivers").json()["drivers"]
    assert [d["name"] for d in drivers] == ["fake-hardware", "redfish", "ipmi"]
    assert drivers[0]["hosts"] == ["conductor-test"]
    detail = sqlite_harness.client.get("/v1/drivers/fake-hardware").json()
    assert detail["default_power_interface"] == "fake"
    assert "no-inspect" in detail["enabled_inspect_interfaces"]
    assert sqlite_harness.client.get("/v1/drivers/nope").status_code == 404


def test_openapi_document(sqlite_harness: Harness) -> None:
    doc = sqlite_harness.client.get("/openapi.json").json()
    assert "/v1/nodes/{ident}/states/provision" in doc["paths"]
    assert "put" in doc["paths"]["/v1/nodes/{ident}/states/provision"]


@pytest.mark.parametrize(
    ("target", "state", "message"),
    [("active", "enroll", "enroll"), ("provide", "enroll", "enroll"), ("bogus", "enroll", "valid targets")],
)
def test_invalid_transitions(sqlite_harness: Harness, target: str, state: str, message: str) -> None:
    node = sqlite_harness.create_node()
    r = sqlite_harness.client.put(f"/v1/nodes/{node['uuid']}/states/provision", json={"target": target})
    assert r.status_code == 400 and message in fault(r)
    assert sqlite_harness.node(node["uuid"])["provision_state"] == state


def test_locked_node_gets_409(harness: Harness) -> None:
    node = harness.create_node()
    from ironworks.conductor import locks

    locks.acquire(harness.rt.db, 1, holder="other-host")
    r = harness.client.put(f"/v1/nodes/{node['uuid']}/states/provision", json={"target": "manage"})
    assert r.status_code == 409 and "other-host" in fault(r)
    r = harness.client.patch(f"/v1/nodes/{node['uuid']}", json=[{"op": "add", "path": "/extra/a", "value": 1}])
    assert r.status_code == 409
    assert harness.node(node["uuid"])["provision_state"] == "enroll"


def test_provision_argument_checks(sqlite_harness: Harness) -> None:
    h = sqlite_harness
    node = h.available_node()
    c, u = h.client, node["uuid"]
    r = c.put(f"/v1/nodes/{u}/states/provision", json={"target": "manage"})
    assert r.status_code == 202
    h.drain()
    r = c.put(f"/v1/nodes/{u}/states/provision", json={"target": "clean"})
    assert r.status_code == 400 and "clean_steps" in fault(r)
    r = c.put(
        f"/v1/nodes/{u}/states/provision",
        json={"target": "clean", "clean_steps": [{"interface": "deploy", "step": "no_such_step"}]},
    )
    assert r.status_code == 400 and "no_such_step" in fault(r) and "erase_devices" in fault(r)
    r = c.put(
        f"/v1/nodes/{u}/states/provision",
        json={"target": "clean", "clean_steps": [{"interface": "bios", "step": "apply_configuration"}]},
    )
    assert r.status_code == 400 and "requires argument 'settings'" in fault(r)
    assert h.node(u)["provision_state"] == "manageable"
    r = c.put(f"/v1/nodes/{u}/states/provision", json={"target": "active", "configdrive": "x"})
    assert r.status_code == 400


def test_power_requests(harness: Harness) -> None:
    node = harness.available_node()
    c, u = harness.client, node["uuid"]
    r = c.put(f"/v1/nodes/{u}/states/power", json={"target": "power on", "timeout": 30})
    assert r.status_code == 202 and r.headers["location"].endswith(f"/v1/nodes/{u}/states")
    harness.drain()
    states = c.get(f"/v1/nodes/{u}/states").json()
    assert states["power_state"] == "power on" and states["target_power_state"] is None
    assert c.put(f"/v1/nodes/{u}/states/power", json={"target": "warp"}).status_code == 400
    assert c.put(f"/v1/nodes/{u}/states/power", json={"target": "power off", "timeout": 0}).status_code == 400
    c.put(f"/v1/nodes/{u}/states/power", json={"target": "rebooting"})
    r = c.put(f"/v1/nodes/{u}/states/power", json={"target": "power off"})
    assert r.status_code == 409 and "already changing" in fault(r)
    harness.drain()
    assert harness.node(u)["power_state"] == "power on"


def test_maintenance_and_history(harness: Harness) -> None:
    node = harness.create_node()
    c, u = harness.client, node["uuid"]
    assert c.put(f"/v1/nodes/{u}/maintenance", json={"reason": "disk swap"}).status_code == 202
    n = harness.node(u)
    assert n["maintenance"] is True and n["maintenance_reason"] == "disk swap"
    r = c.put(f"/v1/nodes/{u}/states/provision", json={"target": "manage"})
    assert r.status_code == 202  # manage is allowed in maintenance
    harness.drain()
    r = c.put(f"/v1/nodes/{u}/states/provision", json={"target": "provide"})
    assert r.status_code == 400 and "maintenance" in fault(r)
    assert c.delete(f"/v1/nodes/{u}/maintenance").status_code == 202
    n = harness.node(u)
    assert n["maintenance"] is False and n["maintenance_reason"] is None
    events = c.get(f"/v1/nodes/{u}/history").json()["history"]
    kinds = [e["event_type"] for e in events]
    assert kinds[0] == "node" and "maintenance" in kinds and "provision" in kinds
    one = c.get(f"/v1/nodes/{u}/history/{events[0]['uuid']}").json()
    assert one["uuid"] == events[0]["uuid"]


def test_boot_device_and_validate(harness: Harness) -> None:
    node = harness.create_node()
    c, u = harness.client, node["uuid"]
    with harness.conductor_running():  # answers synchronous requests while the API waits for them
        assert (
            c.put(f"/v1/nodes/{u}/management/boot_device", json={"boot_device": "pxe", "persistent": True}).status_code
            == 204
        )
        assert c.get(f"/v1/nodes/{u}/management/boot_device").json() == {
            "boot_device": "pxe",
            "persistent": True,
        }
        assert "cdrom" in c.get(f"/v1/nodes/{u}/management/boot_device/supported").json()["supported_boot_devices"]
        assert c.put(f"/v1/nodes/{u}/management/boot_device", json={"boot_device": "floppy"}).status_code == 400
    result = c.get(f"/v1/nodes/{u}/validate").json()
    assert result["power"] == {"result": True, "reason": None}
    patched = c.patch(f"/v1/nodes/{u}", json=[{"op": "replace", "path": "/inspect_interface", "value": "no-inspect"}])
    assert patched.status_code == 200, patched.text
    result = c.get(f"/v1/nodes/{u}/validate").json()
    assert result["inspect"]["result"] is False and "no inspect interface" in result["inspect"]["reason"]


def test_list_and_show_render_a_node_identically(harness: Harness) -> None:
    node = harness.create_node(name="same", driver_info={"ipmi_password": "x", "a": {"token": 1}})
    harness.provision(node["uuid"], "manage")
    shown = harness.client.get(f"/v1/nodes/{node['uuid']}").json()
    listed = harness.client.get("/v1/nodes/detail").json()["nodes"][0]
    for extra in ("ports", "portgroups", "states", "volume"):
        shown.pop(extra)
    assert listed == shown
    assert listed["driver_info"] == {"ipmi_password": "******", "a": {"token": "******"}}
    assert listed["conductor"] == "conductor-test"


def test_bmc_errors_keep_their_status_through_the_queue(sqlite_harness: Harness) -> None:
    h = sqlite_harness
    node = h.create_node(driver_info={"fake_power_fail": True})
    with h.conductor_running():
        r = h.client.get(f"/v1/nodes/{node['uuid']}/management/boot_device")
    assert r.status_code == 502 and "unreachable" in fault(r)
