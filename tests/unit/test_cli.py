"""The operator CLI (``ironworks node ...``, ``ironworks port ...``) against a recorded Ironic-style API.

Each test drives the real typer apps through ``CliRunner`` with an ``httpx.MockTransport`` standing in
for the server, and checks what an operator would notice: the request that went out, what was printed
where, and the exit code. ``--wait`` runs on a fake clock, so nothing sleeps.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

from ironworks.cli.connection import Seams
from ironworks.cli.nodes import node_app
from ironworks.cli.ports import port_app

NODE_UUID = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"
PORT_UUID = "4fc4ef65-0bd6-4d8a-8a5e-b4a6d1d3a0b7"
NODE = {
    "uuid": NODE_UUID,
    "name": "rack1-node7",
    "driver": "redfish",
    "power_state": "power off",
    "provision_state": "enroll",
    "maintenance": False,
    "driver_info": {"redfish_address": "https://192.0.2.10", "redfish_password": "******"},
}

app = typer.Typer()
app.add_typer(node_app, name="node")
app.add_typer(port_app, name="port")


def ironic_error(status: int, faultstring: str) -> httpx.Response:
    """An error response shaped like Ironic's (error_message is a JSON string)."""
    inner = json.dumps({"faultcode": "Client", "faultstring": faultstring, "debuginfo": None})
    return httpx.Response(status, json={"error_message": inner})


Reply = dict[str, Any] | httpx.Response | Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeApi:
    """Routes keyed by (method, path); each route replays its replies in order, repeating the last."""

    routes: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *replies: Reply) -> None:
        self.routes[(method, path)] = list(replies)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        replies = self.routes.get((request.method, request.url.path))
        if not replies:
            return ironic_error(404, f"No fake route for {request.method} {request.url.path}.")
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, httpx.Response):
            return reply
        if callable(reply):
            return reply(request)
        status = 201 if request.method == "POST" else 200
        return httpx.Response(status, json=reply)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]


@dataclass
class FakeClock:
    """Monotonic time that only moves when the code under test sleeps."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def run(api: FakeApi, clock: FakeClock) -> Callable[..., Result]:
    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        seams = Seams(transport=httpx.MockTransport(api.handle), clock=lambda: clock.now, sleep=clock.sleep)
        return CliRunner().invoke(app, list(args), obj=seams, env={"COLUMNS": "200", **(env or {})})

    return invoke


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


# -- requests and output ----------------------------------------------------------------------------


def test_create_sends_parsed_values_and_prints_the_node_as_json(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("POST", "/v1/nodes", NODE)
    result = run(
        "node", "create", "--driver", "redfish", "--name", "rack1-node7",
        "--driver-info", "redfish_address=https://192.0.2.10",
        "--driver-info", "redfish_verify_ca=false",
        "--property", "cpus=8",
        "--property", 'capabilities={"boot_mode": "uefi"}',
        "--boot-interface", "redfish-virtual-media",
        "-f", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [request] = api.requests
    assert request.headers["X-OpenStack-Ironic-API-Version"] == "1.87"
    assert body(request) == {
        "driver": "redfish",
        "name": "rack1-node7",
        "boot_interface": "redfish-virtual-media",
        "driver_info": {"redfish_address": "https://192.0.2.10", "redfish_verify_ca": False},
        "properties": {"cpus": 8, "capabilities": {"boot_mode": "uefi"}},
    }
    assert json.loads(result.stdout) == NODE


def test_show_prints_a_field_value_table(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("GET", f"/v1/nodes/{NODE_UUID}", NODE)
    result = run("node", "show", NODE_UUID, "--fields", "uuid,name,driver_info")
    assert result.exit_code == 0, result.output
    assert api.requests[0].url.params["fields"] == "uuid,name,driver_info"
    lines = result.stdout.splitlines()
    assert any("Field" in line and "Value" in line for line in lines)
    assert any("name" in line and "rack1-node7" in line for line in lines)
    # dict fields are shown as JSON, markup-looking text is not interpreted
    assert any('"redfish_password": "******"' in line for line in lines)


def test_create_rejects_an_assignment_without_equals_sign(api: FakeApi, run: Callable[..., Result]) -> None:
    result = run("node", "create", "--driver", "ipmi", "--driver-info", "ipmi_address")
    assert result.exit_code == 2
    assert "is not KEY=VALUE" in result.output
    assert api.requests == []


def test_list_follows_next_links_until_the_last_page(api: FakeApi, run: Callable[..., Result]) -> None:
    second = {**NODE, "uuid": "0a0b0c0d-0000-4000-8000-000000000002", "name": "rack1-node8"}
    api.on(
        "GET",
        "/v1/nodes",
        {
            "nodes": [NODE],
            "next": f"http://api.internal:6385/v1/nodes?limit=1&marker={NODE_UUID}&driver=redfish",
        },
        {"nodes": [second]},
    )
    result = run("node", "list", "--driver", "redfish", "--no-maintenance", "-f", "json")
    assert result.exit_code == 0, result.output
    assert [n["name"] for n in json.loads(result.stdout)] == ["rack1-node7", "rack1-node8"]
    first, following = api.requests
    assert dict(first.url.params) == {"driver": "redfish", "maintenance": "false"}
    # the next page goes to the URL the operator gave, with the marker from the link
    assert following.url.host == "127.0.0.1"
    assert following.url.params["marker"] == NODE_UUID


def test_list_with_limit_fetches_one_page_from_detail(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("GET", "/v1/nodes/detail", {"nodes": [NODE], "next": "http://127.0.0.1:6385/v1/nodes/detail?marker=x"})
    result = run("node", "list", "--long", "--limit", "1", "--provision-state", "enroll")
    assert result.exit_code == 0, result.output
    [request] = api.requests
    assert dict(request.url.params) == {"provision_state": "enroll", "limit": "1"}
    header = result.stdout.splitlines()[1]
    assert "Driver" in header and "Provisioning State" in header
    assert NODE_UUID in result.stdout and "redfish" in result.stdout


def test_set_and_unset_send_json_patches(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("PATCH", "/v1/nodes/rack1-node7", NODE)
    result = run(
        "node", "set", "rack1-node7", "--name", "db-01", "--deploy-interface", "ramdisk",
        "--driver-info", "redfish_username=admin", "--extra", "rack/slot=7",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert body(api.requests[-1]) == [
        {"op": "add", "path": "/name", "value": "db-01"},
        {"op": "add", "path": "/deploy_interface", "value": "ramdisk"},
        {"op": "add", "path": "/driver_info/redfish_username", "value": "admin"},
        {"op": "add", "path": "/extra/rack~1slot", "value": 7},
    ]
    result = run("node", "unset", "rack1-node7", "--name", "--property", "cpus", "--instance-info", "image_source")
    assert result.exit_code == 0, result.output
    assert body(api.requests[-1]) == [
        {"op": "remove", "path": "/name"},
        {"op": "remove", "path": "/properties/cpus"},
        {"op": "remove", "path": "/instance_info/image_source"},
    ]


def test_set_without_options_is_a_usage_error(api: FakeApi, run: Callable[..., Result]) -> None:
    result = run("node", "set", "rack1-node7")
    assert result.exit_code == 2
    assert "nothing to set" in result.output
    assert api.requests == []


# -- errors -------------------------------------------------------------------------------------------


def test_an_ironic_error_body_becomes_its_faultstring_on_stderr(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("GET", "/v1/nodes/ghost", ironic_error(404, "Node ghost could not be found."))
    result = run("node", "show", "ghost", "-f", "json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Error: Node ghost could not be found. (GET /v1/nodes/ghost: HTTP 404)" in result.stderr
    assert "error_message" not in result.stderr


def test_unauthorized_says_which_options_to_pass(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("GET", "/v1/nodes", ironic_error(401, "The request you have made requires authentication."))
    result = run("node", "list", env={"IRONWORKS_USERNAME": "admin", "IRONWORKS_PASSWORD": "wrong"})
    assert result.exit_code == 1
    assert api.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"admin:wrong").decode()
    assert "--username and --password" in result.stderr


def test_a_refused_connection_names_the_url_and_suggests_serve(run: Callable[..., Result]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    seams = Seams(transport=httpx.MockTransport(refuse))
    result = CliRunner().invoke(
        app, ["node", "list"], obj=seams, env={"IRONWORKS_URL": "http://127.0.0.1:16385", "COLUMNS": "200"}
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    assert "Cannot connect to the API at http://127.0.0.1:16385" in message
    assert "Connection refused" in message and "ironworks serve" in message


def test_delete_carries_on_past_a_failure_and_exits_non_zero(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("DELETE", "/v1/nodes/busy", ironic_error(409, "Node busy is locked by host c1."))
    api.on("DELETE", "/v1/nodes/idle", httpx.Response(204))
    result = run("node", "delete", "busy", "idle")
    assert result.exit_code == 1
    assert [r.url.path for r in api.requests] == ["/v1/nodes/busy", "/v1/nodes/idle"]
    assert "Node busy was not deleted: Node busy is locked by host c1." in result.stderr
    assert "Deleted node idle." in result.stderr
    assert "1 of 2 nodes were not deleted" in result.stderr


# -- provision verbs and --wait -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "target"),
    [
        ("manage", "manage"),
        ("provide", "provide"),
        ("inspect", "inspect"),
        ("deploy", "active"),
        ("rebuild", "rebuild"),
        ("undeploy", "deleted"),
        ("unrescue", "unrescue"),
        ("abort", "abort"),
    ],
)
def test_a_verb_puts_its_target(api: FakeApi, run: Callable[..., Result], verb: str, target: str) -> None:
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    result = run("node", verb, "n1")
    assert result.exit_code == 0, result.output
    [request] = api.requests
    assert body(request) == {"target": target}
    assert f"Node n1: {verb} accepted" in result.stderr


def test_clean_reads_steps_from_a_file_and_rescue_sends_a_password(
    api: FakeApi, run: Callable[..., Result], tmp_path: Path
) -> None:
    steps = [{"interface": "deploy", "step": "erase_devices_metadata"}]
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    assert run("node", "clean", "n1", "--clean-steps", f"@{tmp_path / 'steps.json'}").exit_code == 0
    assert body(api.requests[-1]) == {"target": "clean", "clean_steps": steps}
    assert run("node", "rescue", "n1", "--rescue-password", "s3cret").exit_code == 0
    assert body(api.requests[-1]) == {"target": "rescue", "rescue_password": "s3cret"}


def test_missing_or_bad_steps_are_usage_errors(api: FakeApi, run: Callable[..., Result]) -> None:
    assert run("node", "clean", "n1").exit_code == 2
    result = run("node", "service", "n1", "--service-steps", "[{not json")
    assert result.exit_code == 2
    assert "not valid JSON" in result.output
    assert run("node", "rescue", "n1").exit_code == 2
    assert api.requests == []


def test_deploy_sends_a_json_config_drive_as_an_object(
    api: FakeApi, run: Callable[..., Result], tmp_path: Path
) -> None:
    drive = {"meta_data": {"hostname": "db-01"}, "user_data": "#cloud-config\n"}
    (tmp_path / "drive.json").write_text(json.dumps(drive))
    (tmp_path / "drive.iso").write_bytes(b"CD001\xff\xfe binary")
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    steps = '[{"interface": "deploy", "step": "install_bootloader", "priority": 0}]'
    cmd = ("node", "deploy", "n1", "--deploy-steps", steps, "--config-drive")
    assert run(*cmd, str(tmp_path / "drive.json")).exit_code == 0
    assert body(api.requests[-1]) == {
        "target": "active",
        "configdrive": drive,
        "deploy_steps": json.loads(steps),
    }
    assert run("node", "rebuild", "n1", "--config-drive", "http://192.0.2.1/cd.iso.gz").exit_code == 0
    assert body(api.requests[-1]) == {"target": "rebuild", "configdrive": "http://192.0.2.1/cd.iso.gz"}
    assert run("node", "deploy", "n1", "--config-drive", str(tmp_path / "drive.iso")).exit_code == 0
    sent = body(api.requests[-1])["configdrive"]
    assert gzip.decompress(base64.b64decode(sent)) == b"CD001\xff\xfe binary"
    encoded = base64.b64encode(gzip.compress(random.Random(0).randbytes(6000))).decode()
    assert len(encoded) > 4096  # longer than any path: must not be taken for a file name
    assert run("node", "deploy", "n1", "--config-drive", encoded).exit_code == 0
    assert body(api.requests[-1])["configdrive"] == encoded
    assert run("node", "deploy", "n1", "--config-drive", json.dumps(drive)).exit_code == 0
    assert body(api.requests[-1])["configdrive"] == drive


def status(state: str, target: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"provision_state": state, "target_provision_state": target, "last_error": None} | fields


def test_deploy_wait_shows_states_and_steps_then_prints_the_final_status(
    api: FakeApi, clock: FakeClock, run: Callable[..., Result]
) -> None:
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    api.on(
        "GET",
        "/v1/nodes/n1",
        status("deploying", "active", deploy_step={"interface": "deploy", "step": "deploy", "priority": 100}),
        status("wait call-back", "active"),
        status(
            "deploying",
            "active",
            deploy_step={"interface": "deploy", "step": "write_image"},
            driver_internal_info={"progress": {"done": 512 << 20, "total": 2 << 30, "message": "writing image"}},
        ),
        status(
            "deploying",
            "active",
            deploy_step={"interface": "deploy", "step": "write_image"},
            driver_internal_info={"progress": {"done": 1 << 30, "total": 2 << 30, "message": "writing image"}},
        ),
        status("active"),
    )
    result = run("node", "deploy", "n1", "--wait", "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["provision_state"] == "active"
    polls = api.sent("GET", "/v1/nodes/n1")
    assert len(polls) == 5
    assert polls[0].url.params["fields"] == (
        "provision_state,target_provision_state,last_error,clean_step,deploy_step,service_step,driver_internal_info"
    )
    assert clock.sleeps == [1.0] * 4
    progress = result.stderr
    assert "n1: deploying -> active (step deploy.deploy)" in progress
    assert "n1: wait call-back -> active" in progress
    assert "(step deploy.write_image) writing image: 25% of 2.0 GiB" in progress
    # 512 MiB more a second later: 1 GiB left at that rate
    assert "(step deploy.write_image) writing image: 50% of 2.0 GiB, ETA 0:02" in progress
    assert "Node n1 reached active after 4 s." in progress


@pytest.mark.parametrize(
    ("verb", "args", "failed_state"),
    [("deploy", [], "deploy failed"), ("clean", ["--clean-steps", "[]"], "clean failed")],
)
def test_wait_fails_with_last_error_when_the_node_lands_in_a_failed_state(
    api: FakeApi, run: Callable[..., Result], verb: str, args: list[str], failed_state: str
) -> None:
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    api.on(
        "GET",
        "/v1/nodes/n1",
        status("clean wait" if verb == "clean" else "deploying", "manageable"),
        status(failed_state, last_error="Agent returned error for step write_image: disk /dev/sda is gone"),
    )
    result = run("node", verb, "n1", *args, "--wait", "-f", "json")
    assert result.exit_code == 1
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    goal = "active" if verb == "deploy" else "manageable"
    assert f"Node n1 ended in '{failed_state}' instead of reaching '{goal}'" in message
    assert "disk /dev/sda is gone" in message
    assert "ironworks node history n1" in message


def test_manage_wait_fails_when_verification_sends_the_node_back_to_enroll(
    api: FakeApi, run: Callable[..., Result]
) -> None:
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    api.on(
        "GET",
        "/v1/nodes/n1",
        status("verifying", "manageable"),
        status("enroll", last_error="Redfish BMC at https://192.0.2.10 refused the credentials"),
    )
    result = run("node", "manage", "n1", "--wait")
    assert result.exit_code == 1
    assert "refused the credentials" in " ".join(result.stderr.split())


def test_manage_wait_succeeds_through_verifying(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    api.on("GET", "/v1/nodes/n1", status("verifying", "manageable"), status("manageable"))
    result = run("node", "manage", "n1", "--wait")
    assert result.exit_code == 0, result.output
    assert "verifying -> manageable" in result.stderr
    assert "provision_state" in result.stdout and "manageable" in result.stdout


def test_wait_gives_up_after_the_timeout_without_sleeping(
    api: FakeApi, clock: FakeClock, run: Callable[..., Result]
) -> None:
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    api.on(
        "GET",
        "/v1/nodes/n1",
        status("clean wait", "available", clean_step={"interface": "deploy", "step": "x"}),
    )
    result = run("node", "provide", "n1", "--wait", "--timeout", "5")
    assert result.exit_code == 1
    assert clock.now == 5
    message = " ".join(result.stderr.split())
    assert "did not reach 'available' within 5 s; it is still clean wait -> available (step deploy.x)" in message
    assert "--timeout" in message


def test_service_wait_does_not_stop_at_the_starting_state_while_a_target_is_set(
    api: FakeApi, run: Callable[..., Result]
) -> None:
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    api.on(
        "GET",
        "/v1/nodes/n1",
        status("active", "active"),
        status("servicing", "active", service_step={"interface": "firmware", "step": "update"}),
        status("active"),
    )
    result = run("node", "service", "n1", "--service-steps", '[{"interface": "firmware", "step": "update"}]', "--wait")
    assert result.exit_code == 0, result.output
    assert len(api.sent("GET", "/v1/nodes/n1")) == 3
    assert "servicing -> active (step firmware.update)" in result.stderr


def test_abort_wait_accepts_the_failed_state_it_lands_in(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("PUT", "/v1/nodes/n1/states/provision", httpx.Response(202))
    api.on("GET", "/v1/nodes/n1", status("clean wait", "available"), status("clean failed", last_error="Aborted"))
    result = run("node", "abort", "n1", "--wait")
    assert result.exit_code == 0, result.output
    assert "reached clean failed" in result.stderr


# -- power, maintenance, validate, history ------------------------------------------------------------


def test_power_commands_send_their_targets(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("PUT", "/v1/nodes/n1/states/power", httpx.Response(202))
    assert run("node", "power", "off", "n1", "--soft", "--power-timeout", "30").exit_code == 0
    assert body(api.requests[-1]) == {"target": "soft power off", "timeout": 30}
    assert run("node", "power", "reboot", "n1", "--soft").exit_code == 0
    assert body(api.requests[-1]) == {"target": "soft rebooting"}
    assert run("node", "power", "on", "n1").exit_code == 0
    assert body(api.requests[-1]) == {"target": "power on"}


def test_power_wait_until_the_target_clears(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("PUT", "/v1/nodes/n1/states/power", httpx.Response(202))
    api.on(
        "GET",
        "/v1/nodes/n1",
        {"power_state": "power off", "target_power_state": "power on", "last_error": None},
        {"power_state": "power on", "target_power_state": None, "last_error": None},
    )
    result = run("node", "power", "on", "n1", "--wait", "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["power_state"] == "power on"
    assert api.sent("GET", "/v1/nodes/n1")[0].url.params["fields"] == "power_state,target_power_state,last_error"


def test_power_wait_fails_when_the_bmc_gives_up(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("PUT", "/v1/nodes/n1/states/power", httpx.Response(202))
    api.on(
        "GET",
        "/v1/nodes/n1",
        {"power_state": "power on", "target_power_state": None, "last_error": "BMC timeout"},
    )
    result = run("node", "power", "off", "n1", "--wait")
    assert result.exit_code == 1
    assert "BMC timeout" in result.stderr


def test_maintenance_set_and_unset(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("PUT", "/v1/nodes/n1/maintenance", httpx.Response(202))
    api.on("DELETE", "/v1/nodes/n1/maintenance", httpx.Response(202))
    assert run("node", "maintenance", "set", "n1", "--reason", "replacing DIMM B2").exit_code == 0
    assert body(api.requests[-1]) == {"reason": "replacing DIMM B2"}
    assert run("node", "maintenance", "unset", "n1").exit_code == 0
    assert api.requests[-1].method == "DELETE"


def test_validate_prints_one_row_per_interface(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on(
        "GET",
        "/v1/nodes/n1/validate",
        {
            "power": {"result": True, "reason": None},
            "deploy": {"result": False, "reason": "Missing [instance_info] image_source"},
        },
    )
    result = run("node", "validate", "n1")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "power" in line or "deploy" in line]
    assert "False" in rows[0] and "Missing [instance_info] image_source" in rows[0]  # not read as markup
    assert "power" in rows[1] and "True" in rows[1]


def test_history_shows_steps_and_durations_when_present(api: FakeApi, run: Callable[..., Result]) -> None:
    events = [
        {
            "uuid": "e1",
            "created_at": "2026-11-23T10:00:00+00:00",
            "severity": "INFO",
            "event": "Step deploy.write_image done",
            "event_type": "deploying",
            "conductor": "c1",
            "user": "admin",
            "data": {"step": {"interface": "deploy", "step": "write_image"}, "duration_s": 42.31},
        }
    ]
    api.on("GET", "/v1/nodes/n1/history", {"history": events})
    result = run("node", "history", "n1")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()[1], result.stdout.splitlines()[3]
    assert "Step" in header and "Duration" in header
    assert "deploy.write_image" in row and "42.3 s" in row
    assert json.loads(run("node", "history", "n1", "-f", "json").stdout) == events


# -- ports ----------------------------------------------------------------------------------------------


def test_port_create_resolves_a_node_name_to_its_uuid(api: FakeApi, run: Callable[..., Result]) -> None:
    api.on("GET", "/v1/nodes/rack1-node7", {"uuid": NODE_UUID})
    api.on("POST", "/v1/ports", {"uuid": PORT_UUID, "address": "52:54:00:12:34:56", "node_uuid": NODE_UUID})
    result = run("port", "create", "52:54:00:12:34:56", "--node", "rack1-node7", "-f", "json")
    assert result.exit_code == 0, result.output
    lookup, create = api.requests
    assert lookup.url.params["fields"] == "uuid"
    assert body(create) == {"address": "52:54:00:12:34:56", "node_uuid": NODE_UUID}
    assert json.loads(result.stdout)["uuid"] == PORT_UUID


def test_port_list_filters_by_node_and_shows_long_columns(api: FakeApi, run: Callable[..., Result]) -> None:
    port = {"uuid": PORT_UUID, "address": "52:54:00:12:34:56", "node_uuid": NODE_UUID, "pxe_enabled": True}
    api.on("GET", "/v1/ports/detail", {"ports": [port]})
    result = run("port", "list", "--node", "rack1-node7", "--long")
    assert result.exit_code == 0, result.output
    assert api.requests[0].url.params["node"] == "rack1-node7"
    assert "PXE Enabled" in result.stdout and "52:54:00:12:34:56" in result.stdout


def test_port_show_and_delete_by_mac_address(api: FakeApi, run: Callable[..., Result]) -> None:
    port = {"uuid": PORT_UUID, "address": "52:54:00:12:34:56"}
    api.on("GET", "/v1/ports/detail", {"ports": [port]})
    api.on("DELETE", f"/v1/ports/{PORT_UUID}", httpx.Response(204))
    result = run("port", "show", "52:54:00:12:34:56", "-f", "json")
    assert json.loads(result.stdout) == port
    assert api.requests[0].url.params["address"] == "52:54:00:12:34:56"
    assert run("port", "delete", "52:54:00:12:34:56").exit_code == 0
    assert api.requests[-1].method == "DELETE"
    api.on("GET", "/v1/ports/detail", {"ports": []})
    result = run("port", "show", "52:54:00:00:00:00")
    assert result.exit_code == 1
    assert "No port has the UUID or MAC address '52:54:00:00:00:00'" in result.stderr
