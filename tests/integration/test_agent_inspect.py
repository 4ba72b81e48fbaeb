"""In-band inspection (``inspect_interface`` ``agent``) against a scripted agent, on SQLite and PostgreSQL.

The scripted agent answers IPA's ``poll.get_hardware_info`` with a recorded inventory; the test plays
the ramdisk (lookup by MAC, heartbeat with the token) or posts the inventory to
``/v1/continue_inspection`` the way IPA's inspection mode does. The real agent process is exercised in
test_agent_inspect_e2e.py.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Harness, make_config
from tests.integration.test_agent_conductor import ScriptedAgent, settle

MAC = "52:54:00:1a:00:01"
NEW_MAC = "52:54:00:1a:00:02"
GIB = 1 << 30
INVENTORY: dict[str, Any] = {
    "cpu": {"model_name": "Xeon", "count": 8, "architecture": "x86_64", "flags": ["vmx"], "socket_count": 2},
    "memory": {"total": 16 * GIB, "physical_mb": 16384},
    "disks": [
        {"name": "/dev/sda", "size": 500 * 10**9, "rotational": False, "type": "disk"},
        {"name": "/dev/sdb", "size": 120 * 10**9, "rotational": True, "type": "disk"},
    ],
    "interfaces": [
        {"name": "eno1", "mac_address": MAC.upper(), "ipv4_address": None, "has_carrier": True},
        {"name": "eno2", "mac_address": NEW_MAC, "ipv4_address": None, "has_carrier": False},
    ],
    "system_vendor": {"manufacturer": "Dell Inc.", "product_name": "PowerEdge R640", "serial_number": "ABC"},
    "bmc_address": "192.0.2.10",
    "bmc_v6address": None,
    "boot": {"current_boot_mode": "uefi", "pxe_interface": None},
    "hostname": "inspected",
}
#: 500 GB is 465 GiB (rounded down); Ironic reports one GiB less for partitioning
LOCAL_GB = 500 * 10**9 // GIB - 1


class InventoryAgent(ScriptedAgent):
    """A scripted agent whose ``poll.get_hardware_info`` answers at once with ``inventory``."""

    def __init__(self, inventory: dict[str, Any] | None = None, *, status: str = "SUCCEEDED") -> None:
        super().__init__(polls=0)
        self.inventory = copy.deepcopy(INVENTORY if inventory is None else inventory)
        self.status = status

    def result(self, cid: str) -> dict[str, Any]:
        cmd = self.commands[cid]
        if cmd["name"] != "poll.get_hardware_info":
            return super().result(cid)
        ok = self.status == "SUCCEEDED"
        return {
            "id": cid,
            "command_name": cmd["name"],
            "command_status": self.status,
            "command_error": None if ok else {"message": "dmidecode crashed"},
            "command_result": self.inventory if ok else None,
        }


@pytest.fixture
def h(tmp_path: Path, db_url: str) -> Iterator[Harness]:
    harness = Harness(make_config(tmp_path, db_url=db_url, conductor={"agent_poll_interval": 0.05}))
    yield harness
    harness.close()


def inspect_node(h: Harness, *, port: bool = True, **body: Any) -> str:
    body.setdefault("inspect_interface", "agent")
    body.setdefault("properties", {"capabilities": "disk_label:gpt,boot_mode:bios"})
    node = h.create_node(**body)
    if port:
        assert h.client.post("/v1/ports", json={"address": MAC, "node_uuid": node["uuid"]}).status_code == 201
    assert h.provision(node["uuid"], "manage")["provision_state"] == "manageable"
    return str(node["uuid"])


def heartbeat_as_agent(h: Harness, agent: ScriptedAgent, node: str) -> None:
    """The ramdisk: lookup by MAC (gets the token), then heartbeat."""
    r = h.client.get(f"/v1/lookup?addresses={MAC}")
    assert r.status_code == 200, r.text
    agent.token = r.json()["config"]["agent_token"]
    assert agent.token != "******", "a fresh inspection must hand out a fresh token"
    hb = {"callback_url": agent.url, "agent_token": agent.token, "agent_version": "test-1"}
    assert h.client.post(f"/v1/heartbeat/{node}", json=hb).status_code == 202


def port_macs(h: Harness, node: str) -> set[str]:
    return {p["address"] for p in h.client.get(f"/v1/nodes/{node}/ports").json()["ports"]}


def check_inspected(h: Harness, node: str) -> dict[str, Any]:
    n = h.node(node)
    assert n["provision_state"] == "manageable", n["last_error"]
    props = n["properties"]
    assert (props["cpus"], props["cpu_arch"], props["memory_mb"], props["local_gb"]) == (8, "x86_64", 16384, LOCAL_GB)
    assert props["capabilities"] == "disk_label:gpt,boot_mode:uefi"  # boot_mode replaced, the rest kept
    assert port_macs(h, node) == {MAC, NEW_MAC}
    assert n["power_state"] == "power off"  # the ramdisk was torn down
    assert n["inspection_finished_at"] is not None
    assert "agent_secret_token" not in n["driver_internal_info"]
    return n


def test_inspection_through_the_agents_heartbeat(h: Harness) -> None:
    agent = InventoryAgent()
    try:
        u = inspect_node(h)
        n = h.provision(u, "inspect")
        assert n["provision_state"] == "inspect wait" and n["power_state"] == "power on"
        heartbeat_as_agent(h, agent, u)
        settle(h, u, {"manageable", "inspect failed"})
        check_inspected(h, u)
        assert [c[0] for c in agent.calls] == ["poll.get_hardware_info"]
        stored = h.client.get(f"/v1/nodes/{u}/inventory")
        assert stored.status_code == 200, stored.text
        assert stored.json()["inventory"] == agent.inventory
        old = h.client.get(f"/v1/nodes/{u}/inventory", headers={"X-OpenStack-Ironic-API-Version": "1.80"})
        assert old.status_code == 404 and "1.81" in old.text
        # the ramdisk's token died with it
        hb = {"callback_url": agent.url, "agent_token": agent.token}
        assert h.client.post(f"/v1/heartbeat/{u}", json=hb).status_code == 401
    finally:
        agent.stop()


def test_inspection_data_posted_to_continue_inspection(h: Harness) -> None:
    u = inspect_node(h)
    assert h.client.get(f"/v1/nodes/{u}/inventory").status_code == 404
    assert h.provision(u, "inspect")["provision_state"] == "inspect wait"
    data = {"inventory": INVENTORY, "logs": "H4sI" + "A" * 1000, "boot_interface": MAC}
    r = h.client.post("/v1/continue_inspection", json=data)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["uuid"] == u and body["node"]["uuid"] == u
    token = body["config"]["agent_token"]
    assert len(token) > 20 and body["config"]["agent_token_required"] is True
    h.drain()
    check_inspected(h, u)
    stored = h.client.get(f"/v1/nodes/{u}/inventory").json()
    assert stored["inventory"]["interfaces"][1]["mac_address"] == NEW_MAC
    assert stored["plugin_data"] == {"boot_interface": MAC}  # the logs are not kept
    history = h.client.get(f"/v1/nodes/{u}/history").json()["history"]
    assert any("Inventory from the agent: cpus=8" in e["event"] for e in history)
    assert token not in str(history)


def test_continue_inspection_finds_the_node_by_bmc_address_and_speaks_inspector(h: Harness) -> None:
    u = inspect_node(h, port=False, driver_info={"redfish_address": "https://192.0.2.10:8000/redfish/v1"})
    h.provision(u, "inspect")
    # no version header: ironic-inspector's callers get {"uuid"} only, no token
    r = h.client.post(
        "/v1/continue_inspection", json={"inventory": INVENTORY}, headers={"X-OpenStack-Ironic-API-Version": ""}
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"uuid": u}
    h.drain()
    check_inspected(h, u)


def test_continue_inspection_refusals(h: Harness) -> None:
    u = inspect_node(h)
    post = h.client.post
    r = post("/v1/continue_inspection", json={"inventory": INVENTORY})
    assert r.status_code == 400 and "'manageable'" in r.text and "inspect wait" in r.text  # not inspecting
    v183 = {"X-OpenStack-Ironic-API-Version": "1.83"}
    r = post("/v1/continue_inspection", json={"inventory": INVENTORY}, headers=v183)
    assert r.status_code == 404 and "1.84" in r.text
    assert post("/v1/continue_inspection", json={"inv": {}}).status_code == 400
    r = post("/v1/continue_inspection", json={"inventory": {"interfaces": []}})
    assert r.status_code == 400 and "interfaces" in r.text
    r = post("/v1/continue_inspection", json={"inventory": {"interfaces": [{"name": "eth0"}]}})
    assert r.status_code == 400 and "mac_address" in r.text
    stranger = {"interfaces": [{"mac_address": "52:54:00:99:99:99"}], "bmc_address": "198.51.100.7"}
    r = post("/v1/continue_inspection", json={"inventory": stranger})
    assert r.status_code == 404 and "198.51.100.7" in r.text
    r = post("/v1/continue_inspection", json={"inventory": {"interfaces": [{"mac_address": "zz"}]}})
    assert r.status_code == 400 and "identifies no node" in r.text

    fake = h.create_node(inspect_interface="fake")
    h.client.post("/v1/ports", json={"address": "52:54:00:1a:00:09", "node_uuid": fake["uuid"]})
    h.provision(fake["uuid"], "manage")
    with h.rt.db.write() as s:  # a node waiting for a (non-agent) inspection
        from sqlalchemy import update

        from ironworks.db.models import Node

        s.execute(update(Node).where(Node.uuid == fake["uuid"]).values(provision_state="inspect wait"))
    other = {"interfaces": [{"mac_address": "52:54:00:1a:00:09"}]}
    r = post("/v1/continue_inspection", json={"inventory": other})
    assert r.status_code == 400 and "'fake' inspect interface" in r.text
    assert h.node(u)["provision_state"] == "manageable" and port_macs(h, u) == {MAC}


def test_failed_inventory_fails_the_inspection_and_powers_off(h: Harness) -> None:
    agent = InventoryAgent(status="FAILED")
    try:
        u = inspect_node(h)
        h.provision(u, "inspect")
        heartbeat_as_agent(h, agent, u)
        n = settle(h, u, {"manageable", "inspect failed"})
        assert n["provision_state"] == "inspect failed"
        assert "poll.get_hardware_info failed: dmidecode crashed" in n["last_error"]
        assert n["power_state"] == "power off"
        assert h.client.get(f"/v1/nodes/{u}/inventory").status_code == 404
    finally:
        agent.stop()


def test_agent_that_never_comes_times_out_and_a_new_inspection_starts_afresh(tmp_path: Path, db_url: str) -> None:
    config = make_config(tmp_path, db_url=db_url, conductor={"agent_poll_interval": 0.05, "inspect_wait_timeout": 0.3})
    h = Harness(config)
    agent = InventoryAgent()
    try:
        u = inspect_node(h)
        h.provision(u, "inspect")
        # a lookup happened (token handed out), then the ramdisk died before its first heartbeat
        assert h.client.get(f"/v1/lookup?addresses={MAC}").json()["config"]["agent_token"] != "******"
        deadline = time.monotonic() + 20
        while h.conductor.check_timeouts() == 0:
            assert time.monotonic() < deadline, "the inspection never timed out"
            time.sleep(0.1)
        n = h.node(u)
        assert n["provision_state"] == "inspect failed"
        assert "ramdisk did not report back" in n["last_error"] and "inspect_wait_timeout = 0.3s" in n["last_error"]

        assert h.provision(u, "inspect")["provision_state"] == "inspect wait"
        heartbeat_as_agent(h, agent, u)  # a fresh token, not the dead ramdisk's
        settle(h, u, {"manageable", "inspect failed"})
        check_inspected(h, u)
    finally:
        agent.stop()
        h.close()
