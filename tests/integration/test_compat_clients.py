"""Unmodified Ironic clients against the real ``ironworks serve``: the ``baremetal`` CLI and openstacksdk.

Each lifecycle runs twice, once without authentication and once with HTTP basic against an htpasswd
file the test writes, and walks a fake-hardware node through enroll → manageable → available →
active → (power, maintenance, validate) → available → manageable → manual clean → deleted, checking
every state a user would look at and that the BMC password never comes back.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import openstack.connection
import openstack.exceptions
import pytest

from ironworks.api.auth import make_htpasswd_line
from tests.integration.conftest import IronworksServer, ServerFactory

# openstacksdk warns from inside itself on every connection and resource, whatever the caller does:
# CloudRegion always receives an influxdb dict (of Nones) and warns about InfluxDB; Resource.__init__
# calls its own deprecated _compute_attributes; the proxy passes service_type to its own metrics hook.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Support for InfluxDB requires the influxdb library:openstack.warnings.RemovedInSDK60Warning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The _compute_attributes method is deprecated:openstack.warnings.RemovedInSDK50Warning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'service_type' parameter is unnecesary:openstack.warnings.RemovedInSDK50Warning"
    ),
]

BAREMETAL = Path(sys.executable).with_name("baremetal")
USERNAME = "operator"
PASSWORD = "correct-horse-battery-staple"
#: the BMC password set on nodes; no answer may ever contain it
BMC_SECRET = "bmc-Pa55word-never-shown"
MASK = "******"
#: bounds for one CLI invocation and for polling; a healthy run is far below them
CLI_BOUND_S = 180.0
POLL_BOUND_S = 60.0
CLEAN_STEPS = [{"interface": "deploy", "step": "erase_devices"}]
CONFIG_DRIVE = {"meta_data": {"hostname": "x"}}


@dataclass(frozen=True)
class Api:
    """A running server and the credentials its clients use (``None``: no authentication)."""

    server: IronworksServer
    credentials: tuple[str, str] | None

    @property
    def auth(self) -> str:
        """``noauth`` or ``http_basic``."""
        return "noauth" if self.credentials is None else "http_basic"

    def os_environ(self, *, password: str | None = None) -> dict[str, str]:
        """The ``OS_*`` variables a user exports for the ``baremetal`` CLI (``password`` overrides)."""
        if self.credentials is None:
            return {"OS_AUTH_TYPE": "none", "OS_ENDPOINT": self.server.url}
        user, good = self.credentials
        return {
            "OS_AUTH_TYPE": "http_basic",
            "OS_USERNAME": user,
            "OS_PASSWORD": good if password is None else password,
            "OS_ENDPOINT": self.server.url,
        }

    def connect(self) -> openstack.connection.Connection:
        """An openstacksdk connection configured the way Bifrost/standalone Ironic users do."""
        common: dict[str, Any] = {
            "baremetal_endpoint_override": self.server.url,
            "load_yaml_config": False,
            "load_envvars": False,
        }
        if self.credentials is None:
            return openstack.connect(auth_type="none", **common)
        user, password = self.credentials
        return openstack.connect(
            auth_type="http_basic",
            auth={"username": user, "password": password, "endpoint": self.server.url},
            **common,
        )


def _start(factory: ServerFactory, tmp_path: Path, auth: str) -> Api:
    if auth == "noauth":
        return Api(server=factory(), credentials=None)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line(USERNAME, PASSWORD) + "\n")
    htpasswd.chmod(0o600)
    server = factory(env={"IRONWORKS_API_AUTH_STRATEGY": "http_basic", "IRONWORKS_API_HTPASSWD": str(htpasswd)})
    return Api(server=server, credentials=(USERNAME, PASSWORD))


@pytest.fixture(params=["noauth", "http_basic"])
def api(request: pytest.FixtureRequest, ironworks_server: ServerFactory, tmp_path: Path) -> Api:
    """A fresh server per test, once without authentication and once with HTTP basic."""
    return _start(ironworks_server, tmp_path, str(request.param))


@pytest.fixture
def noauth_api(ironworks_server: ServerFactory, tmp_path: Path) -> Api:
    """A fresh server without authentication."""
    return _start(ironworks_server, tmp_path, "noauth")


@pytest.fixture
def basic_api(ironworks_server: ServerFactory, tmp_path: Path) -> Api:
    """A fresh server with HTTP basic authentication."""
    return _start(ironworks_server, tmp_path, "http_basic")


# --- the baremetal CLI --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    """What a user saw from one ``baremetal`` command."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return f"{self.stdout}\n{self.stderr}"

    def json(self) -> Any:
        """stdout parsed as JSON (for ``-f json``)."""
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"`{self}` did not print JSON:\n{self.output}")

    def __str__(self) -> str:
        return "baremetal " + " ".join(self.args)


def baremetal(api: Api, *args: str, password: str | None = None, ok: bool = True) -> CliResult:
    """Run the real ``baremetal`` CLI; with ``ok``, fail the test (with the server log) unless it exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(api.os_environ(password=password))
    proc = subprocess.run(
        [str(BAREMETAL), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_BOUND_S,
        check=False,
    )
    result = CliResult(tuple(args), proc.returncode, proc.stdout, proc.stderr)
    if ok and result.returncode != 0:
        pytest.fail(
            f"`{result}` exited {result.returncode} ({api.auth}):\n{result.output}\n"
            f"server log (last lines):\n{api.server.log_tail()}",
            pytrace=False,
        )
    return result


def show(api: Api, node: str) -> dict[str, Any]:
    """``baremetal node show NODE -f json``, checking that the BMC password stays masked."""
    result = baremetal(api, "node", "show", node, "-f", "json")
    assert BMC_SECRET not in result.output, f"`{result}` revealed the BMC password:\n{result.stdout}"
    data: dict[str, Any] = result.json()
    assert data["driver_info"].get("ipmi_password") == MASK, data["driver_info"]
    return data


def eventually(what: str, probe: Callable[[], Any], accept: Callable[[Any], bool]) -> Any:
    """Poll ``probe`` until ``accept`` holds (bounded); the last value, or a failure naming ``what``."""
    deadline = time.monotonic() + POLL_BOUND_S
    value = probe()
    while not accept(value):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} never happened; last seen: {value!r}")
        time.sleep(0.2)
        value = probe()
    return value


def settled_at(power_state: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a node shows ``power_state`` with no power change pending."""
    return lambda node: (node["power_state"], node["target_power_state"]) == (power_state, None)


def assert_provision_state(api: Api, node: str, expected: str) -> dict[str, Any]:
    """The node as ``node show`` prints it, which must be in ``expected`` with no transition pending."""
    data = show(api, node)
    assert (data["provision_state"], data["target_provision_state"]) == (expected, None), (
        f"node {node} should be {expected!r}; last_error: {data['last_error']!r}"
    )
    return data


def test_baremetal_cli_lifecycle(api: Api) -> None:
    """The issue's acceptance flow, command by command, as an operator types it."""
    created = baremetal(
        api,
        "node", "create", "--driver", "fake-hardware", "--name", f"cli-{api.auth}",
        "--driver-info", f"ipmi_password={BMC_SECRET}", "--driver-info", "ipmi_username=admin",
        "-f", "json",
    )  # fmt: skip
    assert BMC_SECRET not in created.output
    node: dict[str, Any] = created.json()
    uuid = node["uuid"]
    assert node["provision_state"] == "enroll"
    assert node["driver_info"] == {"ipmi_password": MASK, "ipmi_username": "admin"}
    assert show(api, f"cli-{api.auth}")["uuid"] == uuid  # names resolve like UUIDs

    port = baremetal(api, "port", "create", "52:54:00:12:34:56", "--node", uuid, "-f", "json").json()
    assert (port["address"], port["node_uuid"]) == ("52:54:00:12:34:56", uuid)
    listed = baremetal(api, "port", "list", "--node", uuid, "-f", "json").json()
    assert [p["address"] for p in listed] == ["52:54:00:12:34:56"]

    baremetal(api, "node", "manage", uuid, "--wait", "60")
    assert_provision_state(api, uuid, "manageable")
    baremetal(api, "node", "provide", uuid, "--wait", "60")
    assert_provision_state(api, uuid, "available")
    baremetal(api, "node", "deploy", uuid, "--config-drive", json.dumps(CONFIG_DRIVE), "--wait", "60")
    active = assert_provision_state(api, uuid, "active")
    assert active["last_error"] is None

    for target in ("off", "on"):
        baremetal(api, "node", "power", target, uuid)
        # the API accepts a power request (202) and a conductor carries it out: poll, bounded
        eventually(f"node {uuid} reporting 'power {target}'", lambda: show(api, uuid), settled_at(f"power {target}"))
        power = baremetal(api, "node", "show", uuid, "-f", "json", "-c", "power_state").json()
        assert power == {"power_state": f"power {target}"}

    baremetal(api, "node", "maintenance", "set", "--reason", "test", uuid)
    data = show(api, uuid)
    assert (data["maintenance"], data["maintenance_reason"]) == (True, "test")
    baremetal(api, "node", "maintenance", "unset", uuid)
    data = show(api, uuid)
    assert (data["maintenance"], data["maintenance_reason"]) == (False, None)
    assert data["provision_state"] == "active"

    results = baremetal(api, "node", "validate", uuid, "-f", "json").json()
    by_interface = {r["Interface"]: r for r in results}
    assert {"boot", "deploy", "management", "power"} <= set(by_interface), by_interface
    assert all(r["Result"] is True for r in results), results

    baremetal(api, "node", "undeploy", uuid, "--wait", "60")
    assert_provision_state(api, uuid, "available")
    baremetal(api, "node", "manage", uuid, "--wait", "60")
    assert_provision_state(api, uuid, "manageable")
    baremetal(api, "node", "clean", uuid, "--clean-steps", json.dumps(CLEAN_STEPS), "--wait", "60")
    # manual cleaning returns the node to manageable by itself: no further `node manage` is needed
    cleaned = assert_provision_state(api, uuid, "manageable")
    assert cleaned["last_error"] is None

    deleted = baremetal(api, "node", "delete", uuid)
    assert uuid in deleted.output
    gone = baremetal(api, "node", "show", uuid, ok=False)
    assert gone.returncode != 0 and "could not be found" in gone.output, gone.output
    orphan = baremetal(api, "port", "show", port["uuid"], ok=False)
    assert orphan.returncode != 0 and "could not be found" in orphan.output, orphan.output


def test_cli_wrong_password_is_unauthorized(basic_api: Api) -> None:
    """A mistyped password is refused with a 401 the user can read, and changes nothing."""
    refused = baremetal(
        basic_api, "node", "create", "--driver", "fake-hardware", "--name", "intruder",
        password="not-the-password", ok=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "401" in refused.output or "unauthorized" in refused.output.lower(), refused.output
    assert baremetal(basic_api, "node", "list", "-f", "json").json() == []


def test_cli_deploy_on_enroll_node_names_the_state(api: Api) -> None:
    """Deploying a node that was never managed fails and says which state it is in."""
    uuid = baremetal(api, "node", "create", "--driver", "fake-hardware", "-f", "json").json()["uuid"]
    refused = baremetal(api, "node", "deploy", uuid, ok=False)
    assert refused.returncode != 0
    assert '"enroll"' in refused.output or "'enroll'" in refused.output, refused.output
    assert "(HTTP 400)" in refused.output, refused.output
    data = baremetal(api, "node", "show", uuid, "-f", "json").json()
    assert (data["provision_state"], data["target_provision_state"]) == ("enroll", None)


def test_cli_duplicate_mac_conflicts(api: Api) -> None:
    """A second port with the same MAC is refused with a conflict naming the MAC."""
    first = baremetal(api, "node", "create", "--driver", "fake-hardware", "-f", "json").json()["uuid"]
    second = baremetal(api, "node", "create", "--driver", "fake-hardware", "-f", "json").json()["uuid"]
    baremetal(api, "port", "create", "52:54:00:ab:cd:ef", "--node", first)
    # ironicclient retries every 409 five times, 2 s apart, before giving up; the answer is the same
    refused = baremetal(api, "--max-retries", "0", "port", "create", "52:54:00:AB:CD:EF", "--node", second, ok=False)
    assert refused.returncode != 0
    assert "(HTTP 409)" in refused.output, refused.output
    assert "52:54:00:ab:cd:ef" in refused.output.lower() and "already exists" in refused.output, refused.output
    ports = baremetal(api, "port", "list", "-f", "json").json()
    assert [p["address"] for p in ports] == ["52:54:00:ab:cd:ef"]


# --- openstacksdk ---------------------------------------------------------------------------------------


@pytest.fixture
def sdk(api: Api) -> Iterator[openstack.connection.Connection]:
    """An openstacksdk connection to ``api``, closed afterwards."""
    conn = api.connect()
    try:
        yield conn
    finally:
        conn.close()


def test_openstacksdk_lifecycle(api: Api, sdk: openstack.connection.Connection) -> None:
    """The same flow through openstacksdk's baremetal proxy; every wait must reach its state."""
    bm = sdk.baremetal
    node = bm.create_node(driver="fake-hardware", name=f"sdk-{api.auth}", driver_info={"ipmi_password": BMC_SECRET})
    assert node.provision_state == "enroll"
    assert node.driver_info == {"ipmi_password": MASK}
    port = bm.create_port(address="52:54:00:65:43:21", node_id=node.id)
    assert (port.address, port.node_id) == ("52:54:00:65:43:21", node.id)

    def reach(target: str, expected: str, **kwargs: Any) -> Any:
        reached = bm.set_node_provision_state(node, target, wait=True, timeout=60, **kwargs)
        assert (reached.provision_state, reached.last_error) == (expected, None), target
        fresh = bm.get_node(node.id)
        assert (fresh.provision_state, fresh.target_provision_state) == (expected, None)
        assert fresh.driver_info["ipmi_password"] == MASK
        return fresh

    reach("manage", "manageable")
    reach("provide", "available")
    reach("active", "active", config_drive=CONFIG_DRIVE)

    for target in ("power off", "power on"):
        bm.set_node_power_state(node, target)
        assert bm.wait_for_node_power_state(node, target, timeout=60).power_state == target
        assert bm.get_node(node.id).power_state == target

    bm.set_node_maintenance(node, reason="test")
    fresh = bm.get_node(node.id)
    assert (fresh.is_maintenance, fresh.maintenance_reason) == (True, "test")
    bm.unset_node_maintenance(node)
    fresh = bm.get_node(node.id)
    assert (fresh.is_maintenance, fresh.maintenance_reason) == (False, None)

    results = bm.validate_node(node, required=("boot", "deploy", "power", "management"))
    assert {"boot", "deploy", "management", "power"} <= set(results), results
    assert {name: r.result for name, r in results.items()} == dict.fromkeys(results, True), {
        name: r.reason for name, r in results.items()
    }

    reach("deleted", "available")
    reach("manage", "manageable")
    cleaned = reach("clean", "manageable", clean_steps=CLEAN_STEPS)
    assert cleaned.last_error is None

    bm.delete_node(node, ignore_missing=False)
    with pytest.raises(openstack.exceptions.NotFoundException):
        bm.get_node(node.id)
    with pytest.raises(openstack.exceptions.NotFoundException):
        bm.get_port(port.id)


# --- stopping the service -------------------------------------------------------------------------------


def test_sigterm_stops_the_conductor_cleanly(noauth_api: Api) -> None:
    """``systemctl stop`` (SIGTERM) lets the conductor finish and unregister, as Ctrl-C does.

    A conductor left registered as online keeps its nodes mapped to a dead process until
    ``[conductor] dead_after`` passes, and work it was running is cut off mid-step.
    """
    uuid = baremetal(noauth_api, "node", "create", "--driver", "fake-hardware", "-f", "json").json()["uuid"]
    baremetal(noauth_api, "node", "manage", uuid, "--wait", "60")  # the conductor did some work
    code = noauth_api.server.stop()
    log = noauth_api.server.log_path.read_text(errors="replace")
    with contextlib.closing(sqlite3.connect(noauth_api.server.state_dir / "ironworks.sqlite")) as db:
        still_online = db.execute("SELECT hostname FROM conductors WHERE online").fetchall()
    assert any("conductor" in line and line.endswith(" stopped") for line in log.splitlines()), (
        f"no 'conductor ... stopped' line after SIGTERM (exit code {code}); log tail:\n{noauth_api.server.log_tail(10)}"
    )
    assert still_online == [], f"conductors still registered online after SIGTERM: {still_online}"
