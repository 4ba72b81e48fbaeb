"""``burnin_network`` between two REAL agent processes, driven through a REAL ``ironworks serve``.

Two fake-hardware nodes with the ``agent`` deploy interface are cleaned manually at the same time:
one runs ``burnin_network`` as the reader, the other as the writer towards 127.0.0.1 (each "machine"
is an agent process on the host with its own ``--root`` NIC). fio's ``net`` engine carries the
traffic over loopback only. Both steps must end with a throughput in their node's timeline; a writer
whose reader never listens must fail the clean with a message that says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ironworks.agent.burnin import burnin_network
from ironworks.agent.errors import AgentError
from tests.integration.conftest import LOOPBACK, IronworksServer, ServerFactory, free_loopback_port
from tests.integration.test_agent_e2e import Agent

BOUND_S = 120.0  # a bound, never an expectation
SERVER_ENV = {
    "IRONWORKS_CONDUCTOR_AGENT_POLL_INTERVAL": "0.2",
    "IRONWORKS_CONDUCTOR_POWER_SYNC_INTERVAL": "3600",
    "IRONWORKS_CONDUCTOR_AGENT_HEARTBEAT_TIMEOUT": "10",
}


class Rig:
    """One server, its API client, and the agents the test started (stopped by PID at the end)."""

    def __init__(self, server: IronworksServer, api: httpx.Client, tmp: Path) -> None:
        self.server, self.api, self.tmp = server, api, tmp
        self.agents: list[Agent] = []

    def node(self, uuid: str) -> dict[str, Any]:
        r = self.api.get(f"/v1/nodes/{uuid}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def create_node(self, mac: str) -> str:
        r = self.api.post("/v1/nodes", json={"driver": "fake-hardware", "deploy_interface": "agent"})
        assert r.status_code == 201, r.text
        uuid = str(r.json()["uuid"])
        assert self.api.post("/v1/ports", json={"address": mac, "node_uuid": uuid}).status_code == 201
        self.provision(uuid, "manage")
        self.wait(uuid, lambda n: n["provision_state"] == "manageable" and n["target_provision_state"] is None)
        return uuid

    def provision(self, uuid: str, target: str, **body: Any) -> None:
        r = self.api.put(f"/v1/nodes/{uuid}/states/provision", json={"target": target, **body})
        assert r.status_code == 202, f"provision {target}: {r.status_code} {r.text}"

    def wait(self, uuid: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + BOUND_S
        while True:
            n = self.node(uuid)
            if done(n):
                return n
            if time.monotonic() > deadline:
                pytest.fail(f"node {uuid} is stuck in {n['provision_state']!r} ({n['last_error']}):\n{self.explain()}")
            time.sleep(0.1)

    def settled(self, uuid: str) -> dict[str, Any]:
        stable = {"manageable", "clean failed"}
        return self.wait(uuid, lambda n: n["provision_state"] in stable and n["target_provision_state"] is None)

    def boot_agent(self, mac: str) -> Agent:
        """The machine boots the ramdisk: an agent whose only NIC carries ``mac``."""
        index = len(self.agents)
        nic = self.tmp / f"root{index}/sys/class/net/eth0"
        nic.mkdir(parents=True)
        (nic / "address").write_text(mac + "\n")
        port = free_loopback_port()
        log = self.tmp / f"agent{index}.log"
        argv = [
            sys.executable, "-m", "ironworks.agent",
            "--cmdline-file", os.devnull,
            "--root", str(self.tmp / f"root{index}"),
            "--ipa-api-url", self.server.url,
            "--ipa-listen-host", LOOPBACK, "--ipa-advertise-host", LOOPBACK, "--ipa-advertise-port", str(port),
            "--ipa-lookup-timeout", str(int(BOUND_S)),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IRONWORKS_", "IPA_", "OS_"))}
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        agent = Agent(proc, log)
        self.agents.append(agent)
        return agent

    def results(self, uuid: str) -> list[dict[str, Any]]:
        r = self.api.get(f"/v1/nodes/{uuid}/history", params={"detail": "true"})
        assert r.status_code == 200, r.text
        return [e for e in r.json()["history"] if e["event_type"] == "agent.result"]

    def explain(self) -> str:
        agents = "\n".join(f"--- agent {i} (pid {a.proc.pid}):\n{a.tail()}" for i, a in enumerate(self.agents))
        return f"{agents or '--- no agent'}\n--- server:\n{self.server.log_tail(40)}"


@pytest.fixture
def rig(ironworks_server: ServerFactory, tmp_path: Path) -> Iterator[Rig]:
    server = ironworks_server(env=SERVER_ENV)
    with httpx.Client(base_url=server.url, timeout=30.0, headers={"X-OpenStack-Ironic-API-Version": "1.87"}) as api:
        the_rig = Rig(server, api, tmp_path)
        try:
            yield the_rig
        finally:
            for agent in the_rig.agents:
                agent.stop()


def network_step(**args: Any) -> list[dict[str, Any]]:
    return [{"interface": "deploy", "step": "burnin_network", "args": args}]


def test_reader_and_writer_agents_both_report_throughput(rig: Rig) -> None:
    reader_mac, writer_mac = "52:54:00:b0:00:01", "52:54:00:b0:00:02"
    reader, writer = rig.create_node(reader_mac), rig.create_node(writer_mac)
    port = free_loopback_port()
    common = {"port": port, "runtime": 2, "timeout": 60, "size": "64m"}
    rig.provision(reader, "clean", clean_steps=network_step(role="reader", **common))
    rig.provision(writer, "clean", clean_steps=network_step(role="writer", partner=LOOPBACK, **common))
    for uuid, mac in ((reader, reader_mac), (writer, writer_mac)):
        rig.wait(uuid, lambda n: n["provision_state"] == "clean wait")
        rig.boot_agent(mac)
    for uuid, role in ((reader, "reader"), (writer, "writer")):
        n = rig.settled(uuid)
        assert n["provision_state"] == "manageable", f"{role}: {n['last_error']}\n{rig.explain()}"
        assert n["power_state"] == "power off"  # cleaning tore the ramdisk down
        results = rig.results(uuid)
        assert results, f"no agent result in the {role}'s timeline"
        figures = results[-1]["data"]["result"]
        assert figures["tool"] == "fio" and figures["role"] == role and figures["port"] == port, figures
        assert figures["bytes"] > 0 and figures["bytes_per_second"] > 0, figures


def test_writer_without_a_reader_fails_clearly(rig: Rig) -> None:
    mac = "52:54:00:b0:00:03"
    uuid = rig.create_node(mac)
    port = free_loopback_port()  # nobody listens there
    steps = network_step(role="writer", partner=LOOPBACK, port=port, runtime=2, timeout=3, size="16m")
    rig.provision(uuid, "clean", clean_steps=steps)
    rig.wait(uuid, lambda n: n["provision_state"] == "clean wait")
    rig.boot_agent(mac)
    n = rig.settled(uuid)
    assert n["provision_state"] == "clean failed", rig.explain()
    err = n["last_error"]
    assert f"reader at {LOOPBACK}:{port} refused the connection for 3 s" in err, err
    assert "role 'reader'" in err and "burnin_network" in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"role": "sender"}, "role must be 'reader'"),
        ({"role": "writer"}, "a writer needs 'partner'"),
        ({"role": "writer", "partner": "a b;rm"}, "is not a host name"),
        ({"role": "reader", "port": 70000}, "port must be 1-65535"),
        ({"role": "reader", "size": "lots"}, "size must be a fio size"),
        ({"role": "reader", "runtime": 0}, "more than 0 seconds"),
    ],
)
def test_bad_network_arguments_are_refused_before_fio_runs(args: dict[str, Any], message: str) -> None:
    with pytest.raises(AgentError, match=message):
        burnin_network(**args)


def test_reader_nobody_connects_to_ends_within_its_bound() -> None:
    port = free_loopback_port()
    with pytest.raises(AgentError, match=f"no writer connected to port {port}"):
        burnin_network(role="reader", port=port, runtime=1, timeout=1, size="16m")
