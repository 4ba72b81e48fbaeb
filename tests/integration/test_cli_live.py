"""The `ironworks` operator commands against a real `ironworks serve`."""

from __future__ import annotations

import json
import os
import subprocess

from tests.integration.conftest import ServerFactory, ironworks_executable


def run(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONWORKS_")}
    env["IRONWORKS_URL"] = url
    r = subprocess.run([str(ironworks_executable()), *args], capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_operator_commands_drive_a_node(ironworks_server: ServerFactory) -> None:
    url = ironworks_server().url
    created = json.loads(
        run(
            url,
            "node",
            "create",
            "--driver",
            "fake-hardware",
            "--name",
            "cli-1",
            "--driver-info",
            "ipmi_password=pw",
            "-f",
            "json",
        ).stdout
    )
    assert created["provision_state"] == "enroll" and created["driver_info"]["ipmi_password"] == "******"
    run(url, "port", "create", "52:54:00:00:aa:01", "--node", "cli-1")
    for verb, state in (("manage", "manageable"), ("provide", "available"), ("deploy", "active")):
        r = run(url, "node", verb, "cli-1", "--wait", "-f", "json")
        assert json.loads(r.stdout)["provision_state"] == state
    r = run(
        url,
        "node",
        "clean",
        "cli-1",
        "--clean-steps",
        '[{"interface": "deploy", "step": "erase_devices"}]',
        "--wait",
        check=False,
    )
    assert r.returncode != 0 and "active" in r.stderr  # clean needs a manageable node, and says so
    run(url, "node", "power", "off", "cli-1", "--wait")
    shown = json.loads(run(url, "node", "show", "cli-1", "-f", "json").stdout)
    assert shown["power_state"] == "power off"
    history = json.loads(run(url, "node", "history", "cli-1", "-f", "json").stdout)
    steps = [e for e in (history if isinstance(history, list) else history["history"]) if e["event_type"] == "step.end"]
    assert {e["data"]["step"] for e in steps} >= {"deploy.erase_devices_metadata", "deploy.deploy"}
    run(url, "node", "undeploy", "cli-1", "--wait")
    run(url, "node", "maintenance", "set", "cli-1", "--reason", "swap fans")
    listed = json.loads(run(url, "node", "list", "--maintenance", "-f", "json").stdout)
    assert [n["name"] for n in listed] == ["cli-1"]
    run(url, "node", "delete", "cli-1")
    missing = run(url, "node", "show", "cli-1", check=False)
    assert missing.returncode != 0 and "could not be found" in missing.stderr
