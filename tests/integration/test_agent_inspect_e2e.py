"""In-band inspection with the REAL agent process against a REAL ``ironworks serve``.

The server runs fake-hardware (fake power, no-op boot) with ``inspect_interface`` ``agent``. When the
node waits for its agent (``inspect wait``) the test "boots the ramdisk": it starts
``python -m ironworks.agent`` on 127.0.0.1 with a ``--root`` tree holding the host's own
``/proc/cpuinfo`` and ``/proc/meminfo`` and two NICs (the node's port MAC and one inspection must
add), and an allowlist naming only the two loop devices this test created. The agent's inventory
must then list exactly those loop devices and none of the host's disks. The operator side is the
unmodified ``baremetal`` CLI: ``node inspect --wait`` and ``node inventory save``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import LOOPBACK, ServerFactory, free_loopback_port
from tests.integration.test_agent_e2e import Agent

MAC = "52:54:00:e2:1a:01"
NEW_MAC = "52:54:00:e2:1a:02"
GIB = 1 << 30
BOUND_S = 120.0  # a bound, never an expectation
SERVER_ENV = {
    "IRONWORKS_CONDUCTOR_AGENT_POLL_INTERVAL": "0.2",
    "IRONWORKS_CONDUCTOR_POWER_SYNC_INTERVAL": "3600",
    "IRONWORKS_CONDUCTOR_AGENT_HEARTBEAT_TIMEOUT": "10",
}


@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[list[str]]:
    """Two loop devices over sparse files (3 GiB and 2 GiB: sizes inspection can tell apart)."""
    if os.geteuid() != 0:  # a failure, not a skip: CI runs this tier as root
        pytest.fail("loop devices need root")
    devices: list[str] = []
    try:
        for gib in (3, 2):
            backing = tmp_path / f"disk{gib}.img"
            with backing.open("wb") as f:
                f.truncate(gib * GIB)
            dev = subprocess.run(
                ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
            ).stdout.strip()
            devices.append(dev)
        yield devices
    finally:
        for dev in devices:
            subprocess.run(["losetup", "-d", dev], check=False)


def host_cpus_and_memory() -> tuple[int, int]:
    """What /proc says: CPU count and MemTotal in MiB."""
    cpus = sum(1 for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("processor"))
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return cpus, int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def start_agent(tmp: Path, api_url: str, allowlist: list[str]) -> Agent:
    root = tmp / "root"
    for name, mac in (("eth0", MAC), ("eth1", NEW_MAC)):
        nic = root / "sys/class/net" / name
        nic.mkdir(parents=True)
        (nic / "address").write_text(mac + "\n")
    (root / "proc").mkdir()
    for name in ("cpuinfo", "meminfo"):  # the host's own figures, read once
        shutil.copyfile(f"/proc/{name}", root / "proc" / name)
    port = free_loopback_port()
    log = tmp / "agent.log"
    argv = [
        sys.executable, "-m", "ironworks.agent",
        "--cmdline-file", os.devnull,
        "--root", str(root),
        "--ipa-api-url", api_url,
        "--ipa-listen-host", LOOPBACK, "--ipa-advertise-host", LOOPBACK, "--ipa-advertise-port", str(port),
        "--ipa-lookup-timeout", str(int(BOUND_S)),
        "--ironworks-device-allowlist", ",".join(allowlist),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IRONWORKS_", "IPA_", "OS_"))}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Agent(proc, log)


def wait_state(api: httpx.Client, uuid: str, until: set[str], explain: Any) -> dict[str, Any]:
    """Poll until the node is in one of ``until`` (a stable one with nothing in progress)."""
    deadline = time.monotonic() + BOUND_S
    while True:
        n: dict[str, Any] = api.get(f"/v1/nodes/{uuid}").json()
        waiting = n["provision_state"] == "inspect wait"  # waits keep the flow's target
        if n["provision_state"] in until and (waiting or n["target_provision_state"] is None):
            return n
        if time.monotonic() > deadline:
            pytest.fail(f"node {uuid} did not reach {sorted(until)} within {BOUND_S:g} s: {n}\n{explain()}")
        time.sleep(0.1)


def test_inspect_with_the_real_agent(ironworks_server: ServerFactory, loop_devices: list[str], tmp_path: Path) -> None:
    server = ironworks_server(env=SERVER_ENV)
    agent: Agent | None = None

    def explain() -> str:
        return f"--- agent:\n{agent.tail() if agent else '<not started>'}\n--- server:\n{server.log_tail(40)}"

    headers = {"X-OpenStack-Ironic-API-Version": "1.87"}
    with httpx.Client(base_url=server.url, timeout=30.0, headers=headers) as api:
        r = api.post("/v1/nodes", json={"driver": "fake-hardware", "inspect_interface": "agent"})
        assert r.status_code == 201, r.text
        uuid = r.json()["uuid"]
        assert api.post("/v1/ports", json={"address": MAC, "node_uuid": uuid}).status_code == 201
        assert api.put(f"/v1/nodes/{uuid}/states/provision", json={"target": "manage"}).status_code == 202
        wait_state(api, uuid, {"manageable"}, explain)

        # the operator's command, unmodified: python-ironicclient's `baremetal node inspect --wait`
        exe = Path(sys.executable).with_name("baremetal")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IRONWORKS_"))}
        env.update(OS_AUTH_TYPE="none", OS_ENDPOINT=server.url)
        cli_log = tmp_path / "baremetal.out"
        with cli_log.open("wb") as out:
            cli = subprocess.Popen(
                [str(exe), "node", "inspect", uuid, "--wait", str(int(BOUND_S))],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        try:
            n = wait_state(api, uuid, {"inspect wait"}, explain)
            assert n["power_state"] == "power on"  # the "machine" boots the ramdisk
            agent = start_agent(tmp_path, server.url, loop_devices)
            try:
                n = wait_state(api, uuid, {"manageable", "inspect failed"}, explain)
            finally:
                agent.stop()
            code = cli.wait(BOUND_S)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert n["provision_state"] == "manageable", f"{n['last_error']}\n{explain()}"
        assert code == 0, f"baremetal node inspect exited {code}:\n{cli_log.read_text(errors='replace')}"

        cpus, memory_mb = host_cpus_and_memory()
        props = n["properties"]
        assert props["cpus"] == cpus and props["memory_mb"] == memory_mb, props
        assert props["cpu_arch"] == platform.machine()
        assert props["local_gb"] == 2  # the 3 GiB loop device, minus one GiB as Ironic reports it
        assert props["capabilities"] == "boot_mode:bios"  # the agent's root has no /sys/firmware/efi
        assert n["power_state"] == "power off"
        ports = {p["address"] for p in api.get(f"/v1/nodes/{uuid}/ports").json()["ports"]}
        assert ports == {MAC, NEW_MAC}

        saved = subprocess.run(
            [str(exe), "node", "inventory", "save", uuid],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        inventory = json.loads(saved.stdout)["inventory"]
        disks = {d["name"]: d["size"] for d in inventory["disks"]}
        assert disks == {loop_devices[0]: 3 * GIB, loop_devices[1]: 2 * GIB}, "only the allowlisted devices count"
        assert [nic["mac_address"] for nic in inventory["interfaces"]] == [MAC, NEW_MAC]
